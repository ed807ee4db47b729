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
from deid_sidecar.core.detections import Label
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.engine.observer import FrameObserver
from deid_sidecar.engine.settings import CameraSettings
from deid_sidecar.errors import UserError
from deid_sidecar.web.auth import WebUser
from deid_sidecar.web.server import build_app

log = logging.getLogger(__name__)

#: Seconds allowed for a clean stop before the process exits anyway.
STOP_TIMEOUT_S = 8.0


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def build_settings(config: Config) -> dict[str, CameraSettings]:
    """The one owner of each enabled camera's runtime settings (shared by pipeline, web and MQTT)."""
    return {
        name: CameraSettings.from_camera(name, camera, config)
        for name, camera in config.cameras.items()
        if camera.enabled
    }


def build_pipelines(
    config: Config, observer: FrameObserver | None, settings: dict[str, CameraSettings]
) -> dict[str, CameraPipeline]:
    return {
        name: CameraPipeline(name, config.cameras[name], config, observer=observer, settings=owner)
        for name, owner in settings.items()
    }


def check_models(config: Config) -> None:
    """Fail at start-up, with the fetch command, when a model the cameras need is missing."""
    from deid_sidecar.models.registry import model_path

    needed = {kind for name, camera in config.cameras.items() if camera.enabled for kind in camera.protect}
    for kind in sorted(needed):
        detector = getattr(config.detection, kind)
        if detector.enabled:
            model_path(Path(config.models_dir), detector.model)


def _load_detectors(config: Config, pipelines: dict[str, CameraPipeline]) -> None:
    """Runs in a worker thread: model loading takes seconds and must not delay the streams."""
    from deid_sidecar.detect.detector import build_detector

    for name, pipeline in pipelines.items():
        labels = {Label.parse(kind) for kind in config.cameras[name].protect}
        try:
            pipeline.set_detector(build_detector(config, labels))
        except Exception:  # the camera stays fail-closed (whole frames masked), and says why
            log.exception("%s: detector could not be loaded; every frame stays masked whole", name)
            continue
        log.info("%s: detector ready (%s)", name, ", ".join(sorted(label.key for label in labels)))


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


class App:
    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.settings = build_settings(config)
        self.events: Any = None
        if config.mqtt.enabled:
            from deid_sidecar.events.mqtt import MqttEvents

            self.events = MqttEvents(config, self.settings)
        self.pipelines = build_pipelines(config, self.events, self.settings)
        self._tasks: list[asyncio.Task[Any]] = []
        self._registrar: Any = None
        self._pushers: list[Any] = []
        self._session: aiohttp.ClientSession | None = None

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        server = self.config.server
        # Listening beyond loopback without a token turns auth on with a generated one (logged once).
        web_app = build_app(
            self.pipelines,
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
        self._start_events()
        for pipeline in self.pipelines.values():
            pipeline.start()
        self._announce()
        detectors = loop.run_in_executor(None, _load_detectors, self.config, self.pipelines)
        if self.config.go2rtc.register_streams:
            await self._start_registrar()
        self._start_pushers()
        try:
            await stop.wait()
        finally:
            await self._shutdown(runner, detectors)

    def _start_events(self) -> None:
        if self.events is None:
            return
        from deid_sidecar.events.control import SettingsControl

        self.events.set_control(SettingsControl(self.settings, self.config))
        self.events.start()

    async def _start_registrar(self) -> None:
        from deid_sidecar.outputs.go2rtc import registrar_for

        self._session = aiohttp.ClientSession()
        self._registrar = registrar_for(self.config, self._session)
        self._tasks.append(supervise("go2rtc-registrar", self._registrar.run))

    def _start_pushers(self) -> None:
        """Push mode: stream into go2rtc streams the user declared (`output.push`)."""
        from deid_sidecar.outputs.push import pushers_for

        hubs = {p.output: p.hub for p in self.pipelines.values()}
        self._session = self._session or aiohttp.ClientSession()
        for pusher in pushers_for(self.config, hubs, self._session):
            self._pushers.append(pusher)
            self._tasks.append(supervise(f"push-{pusher.name}", pusher.run))

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
        for pusher in self._pushers:
            await pusher.close()
        for task in self._tasks:
            task.cancel()
        for task, result in zip(
            self._tasks, await asyncio.gather(*self._tasks, return_exceptions=True), strict=True
        ):
            if isinstance(result, Exception):
                log.error("%s ended with %s", task.get_name(), result)
        if self._session is not None:
            await self._session.close()
        stops = await asyncio.gather(
            *(loop.run_in_executor(None, p.stop) for p in self.pipelines.values()), return_exceptions=True
        )
        for name, result in zip(self.pipelines, stops, strict=True):
            if isinstance(result, Exception):
                log.error("%s: stopping failed: %s", name, result)
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
