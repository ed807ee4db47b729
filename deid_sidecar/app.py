"""`deid-sidecar run`: wires cameras, the HTTP server, go2rtc registration and MQTT; owns start and stop.

Start-up order keeps the privacy promise: cameras start publishing at once with whole-frame
masking, and get their detector only when its models are loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from deid_sidecar.config import Config
from deid_sidecar.engine.fleet import CameraFleet
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.errors import UserError
from deid_sidecar.events.control import SettingsControl
from deid_sidecar.events.mqtt import MqttEvents
from deid_sidecar.outputs.go2rtc import Registrar, registrar_for, stream_url
from deid_sidecar.outputs.push import Pusher, pusher_for
from deid_sidecar.stats import CameraStats
from deid_sidecar.web.auth import WebUser
from deid_sidecar.web.server import build_app

log = logging.getLogger(__name__)

#: Seconds allowed for a clean stop before the process exits anyway.
STOP_TIMEOUT_S = 8.0


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def check_models(config: Config) -> None:
    """Fail at start-up, with the fetch command, when a model the cameras need is missing."""
    from deid_sidecar.models.registry import model_path

    needed = {kind for name, camera in config.cameras.items() if camera.enabled for kind in camera.protect}
    for kind in sorted(needed):
        detector = getattr(config.detection, kind)
        if detector.enabled:
            model_path(Path(config.models_dir), detector.model)
            if config.detection.precision == "int8":
                model_path(Path(config.models_dir), detector.model, int8=True)


#: Seconds before a background task that failed (go2rtc registrar, a pusher) is started again.
TASK_RESTART_S = 5.0


def supervise(name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """`run()` as a task that is started again whenever it fails: a bug in a background loop is
    logged whole and never silently ends registration or pushing."""

    async def supervisor() -> None:
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; starting it again in %.0f s", name, TASK_RESTART_S)
                await asyncio.sleep(TASK_RESTART_S)

    return asyncio.create_task(supervisor(), name=name)


class Go2rtcWiring:
    """Every running camera's output is registered in go2rtc; a removed camera's is deleted again."""

    def __init__(self, config: Config, registrar: Registrar) -> None:
        self.config, self.registrar = config, registrar
        self._stats: dict[str, CameraStats] = {}  # output -> its camera's stats (shows the state)
        registrar.on_state = self._on_state

    def camera_added(self, pipeline: CameraPipeline) -> None:
        self._stats[pipeline.output] = pipeline.stats
        self.registrar.add(pipeline.output, [stream_url(self.config, pipeline.output)])

    async def camera_removed(self, pipeline: CameraPipeline) -> None:
        self._stats.pop(pipeline.output, None)
        await self.registrar.remove(pipeline.output)

    def _on_state(self, output: str, state: str) -> None:
        if output in self._stats:
            self._stats[output].set_go2rtc(state)


class MqttWiring:
    """Every running camera has its Home Assistant device, events, commands and state."""

    def __init__(self, events: MqttEvents) -> None:
        self.events = events

    def camera_added(self, pipeline: CameraPipeline) -> None:
        self.events.add_camera(pipeline.name, pipeline.camera, pipeline.settings)

    async def camera_removed(self, pipeline: CameraPipeline) -> None:
        self.events.remove_cameras([pipeline.name])


class PushWiring:
    """Cameras with `output.push: http` push into go2rtc, each from its own supervised task."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config, self.session = config, session
        self.pushers: dict[str, tuple[Pusher, asyncio.Task[None]]] = {}

    def camera_added(self, pipeline: CameraPipeline) -> None:
        pusher = pusher_for(self.config, pipeline.output, pipeline.camera, pipeline.hub, self.session)
        if pusher is not None:
            self.pushers[pipeline.name] = (pusher, supervise(f"push-{pusher.name}", pusher.run))

    async def camera_removed(self, pipeline: CameraPipeline) -> None:
        if pipeline.name in self.pushers:
            await self._end(*self.pushers.pop(pipeline.name))

    async def close(self) -> None:
        while self.pushers:
            await self._end(*self.pushers.popitem()[1])

    @staticmethod
    async def _end(pusher: Pusher, task: asyncio.Task[None]) -> None:
        await pusher.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class App:
    """The composition root: the cameras (one fleet), the web server, go2rtc registration, push, MQTT."""

    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        # MQTT speaks for the fleet's cameras (wired below), not for the config's list.
        self.events = MqttEvents(config, settings={}) if config.mqtt.enabled else None
        self.fleet = CameraFleet(config, observer=self.events)
        self.fleet.build_configured()
        self._registrar: Registrar | None = None
        self._registrar_task: asyncio.Task[None] | None = None
        self._push: PushWiring | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def pipelines(self) -> dict[str, CameraPipeline]:
        return self.fleet.pipelines

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        runner = await self._serve_web()
        self._session = aiohttp.ClientSession()
        if self.events is not None:
            self.fleet.wire(MqttWiring(self.events))
            self.events.set_control(SettingsControl(self.events.settings, self.config))
            self.events.start()
        self.fleet.start_all()
        self._announce()
        detectors = loop.run_in_executor(None, self.fleet.load_detectors)
        if self.config.go2rtc.register_streams:
            self._registrar = registrar_for(self.config, self._session, wanted={})
            self.fleet.wire(Go2rtcWiring(self.config, self._registrar))
            self._registrar_task = supervise("go2rtc-registrar", self._registrar.run)
        self._push = PushWiring(self.config, self._session)
        self.fleet.wire(self._push)
        try:
            await stop.wait()
        finally:
            await self._shutdown(runner, detectors)

    async def _serve_web(self) -> web.AppRunner:
        server = self.config.server
        # Listening beyond loopback without a token turns auth on with a generated one (logged once).
        web_app = build_app(
            self.fleet,
            _secret(server.token),
            _secret(server.stream_token),
            config=self.config,
            config_path=self.config_path,
            host=server.host,
            users={
                name: WebUser(name, user.password.get_secret_value(), user.admin)
                for name, user in server.users.items()
            },
            allow_original_view=server.allow_original_view,
            jobs_dir=Path(server.jobs_dir) if server.jobs_dir else None,
            job_limit=server.job_concurrency,
            job_ttl_s=server.job_ttl_s,
            max_upload_bytes=server.max_upload_mb << 20,
        )
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, server.host, server.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise UserError(f"cannot listen on {server.host}:{server.port}: {exc.strerror}") from None
        return runner

    def _announce(self) -> None:
        server = self.config.server
        host = "localhost" if server.host in ("0.0.0.0", "127.0.0.1", "::") else server.host  # noqa: S104
        log.info("status page: http://%s:%d/", host, server.port)
        for pipeline in self.pipelines.values():
            log.info("%s: anonymized stream at http://%s:%d/streams/%s.ts", pipeline.name, host,
                     server.port, pipeline.output)  # fmt: skip

    async def _shutdown(self, runner: web.AppRunner, detectors: asyncio.Future[None]) -> None:
        log.info("stopping")
        loop = asyncio.get_running_loop()
        if self._registrar is not None:
            await self._registrar.close(remove=self.config.go2rtc.remove_on_exit)
        if self._registrar_task is not None:
            self._registrar_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._registrar_task
        if self._push is not None:
            await self._push.close()
        if self._session is not None:
            await self._session.close()
        await self.fleet.stop_all()
        if self.events is not None:
            await loop.run_in_executor(None, self.events.stop)
        await runner.cleanup()
        with contextlib.suppress(Exception):
            detectors.cancel()


async def _main(config: Config, config_path: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    app = App(config, config_path)
    await app.run(stop)


def run_app(config: Config, config_path: Path | None = None) -> int:
    """Run until SIGINT/SIGTERM. `config_path` is where the web UI saves settings (none: demo)."""
    if not config.cameras:
        raise UserError("the config has no cameras")
    check_models(config)
    logging.getLogger().setLevel(config.log_level.upper())
    asyncio.run(_main(config, config_path))
    return 0
