"""The sidecar's HTTP server: anonymized streams, the web UI and its JSON API, health and metrics.

Only ANONYMIZED pictures are served, except the admin-only original view, which is off unless
`allow_original_view` is given and audits every viewing. `/healthz` and the stream URLs are open
(go2rtc and the container health check read them; streams can carry their own token); everything
else needs auth when auth is on (see `auth.py`). The routes are documented in `openapi.yaml`;
a test checks both lists match.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from deid_sidecar import __version__
from deid_sidecar.config import Config, parse_config
from deid_sidecar.detect.base import DetectorFactory
from deid_sidecar.detect.factories import file_detector
from deid_sidecar.engine.fleet import CameraFleet
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.jobs import JobError, JobManager
from deid_sidecar.outputs.http_ts import stream_routes
from deid_sidecar.web import auth, cameras, metrics, pages, uploads
from deid_sidecar.web.state import STATE_KEY, ApiError, WebState

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: How often finished jobs past their ttl are deleted.
EXPIRE_EVERY_S = 60.0
DEFAULT_UPLOAD_BYTES = 500 << 20


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answer is JSON naming what is wrong; never a traceback."""
    try:
        return await handler(request)
    except (ApiError, JobError) as exc:
        return _json_error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        response = _json_error(exc.status, exc.reason)
        if "Allow" in exc.headers:  # 405 must say which methods the path takes
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _json_error(500, "internal error (see the server log)")


class _BadRequestLog(logging.Filter):
    """aiohttp logs a malformed request (a NUL in a header, a broken request line) with a traceback;
    it is the client's error, answered 400: one warning line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "bad HTTP request refused (400): %s", (exc.message,)
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, 30, "WARNING"
        return True


_BAD_REQUEST_LOG = _BadRequestLog()


async def healthz(request: web.Request) -> web.Response:
    """200 while every camera works; 503 naming each camera that does not (offline, a dead thread)."""
    state = request.app[STATE_KEY]
    cameras_state = {
        name: "paused" if p.paused else p.stats.snapshot()["state"] for name, p in state.pipelines.items()
    }
    problems = {name: why for name, p in state.pipelines.items() if (why := p.problem()) is not None}
    body: dict[str, object] = {"status": "unhealthy" if problems else "ok", "version": __version__,
                               "cameras": cameras_state}  # fmt: skip
    if problems:
        body["problems"] = problems
    return web.json_response(body, status=503 if problems else 200)


async def openapi(request: web.Request) -> web.Response:
    text = resources.files("deid_sidecar.web").joinpath("static", "openapi.yaml").read_text(encoding="utf-8")
    return web.Response(text=text, content_type="application/yaml")


def _routes() -> list[web.RouteDef]:
    return [
        web.get("/", pages.cameras_page),
        web.get("/jobs", pages.jobs_page),
        web.get("/login", auth.login_page),
        web.post("/login", auth.login),
        web.post("/logout", auth.logout),
        web.get("/static/{name}", pages.static_file),
        web.get("/healthz", healthz),
        web.get("/metrics", metrics.metrics),
        web.get("/api/openapi.yaml", openapi),
        web.get("/api/session", pages.session_info),
        web.get("/api/stats", cameras.stats),
        web.get("/api/cameras", cameras.list_cameras),
        web.post("/api/cameras", cameras.add_camera),
        web.get("/api/cameras/{name}", cameras.get_camera),
        web.patch("/api/cameras/{name}", cameras.patch_camera),
        web.delete("/api/cameras/{name}", cameras.delete_camera),
        web.post("/api/cameras/{name}/start", cameras.start_camera),
        web.post("/api/cameras/{name}/stop", cameras.stop_camera),
        web.get("/api/cameras/{name}/snapshot.jpg", cameras.snapshot),
        web.get("/api/cameras/{name}/mjpeg", cameras.mjpeg),
        web.get("/api/cameras/{name}/original.mjpeg", cameras.original_mjpeg),
        web.get("/api/audit", cameras.audit),
        web.post("/api/probe", cameras.probe),
        web.post("/api/config/save", cameras.save_config),
        web.post("/api/jobs", uploads.create_job),
        web.get("/api/jobs", uploads.list_jobs),
        web.get("/api/jobs/{id}", uploads.get_job),
        web.get("/api/jobs/{id}/result", uploads.job_result),
        web.get("/api/jobs/{id}/audit", uploads.job_audit),
        web.post("/api/image", uploads.anonymize_one_image),
    ]


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Expire old jobs while the app runs; on shutdown stop what this app started."""
    state = app[STATE_KEY]

    async def expire_loop() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            await loop.run_in_executor(None, state.jobs.expire)  # rmtree is blocking

    task = asyncio.create_task(expire_loop(), name="jobs-expiry")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    loop = asyncio.get_running_loop()
    if state.owns_fleet:  # served on its own (tests): the cameras added here are stopped here
        for name in list(state.fleet.added):
            await state.fleet.remove(name)
        state.fleet.detectors.close()
    await loop.run_in_executor(None, state.jobs.close)


def build_app(
    pipelines: Mapping[str, CameraPipeline] | CameraFleet,
    api_token: str | None,
    stream_token: str | None,
    *,
    config: Config | None = None,
    config_path: Path | None = None,
    host: str = "127.0.0.1",
    users: Mapping[str, auth.WebUser] | None = None,
    allow_original_view: bool = False,
    jobs_dir: Path | None = None,
    job_limit: int = 1,
    job_ttl_s: float = 3600.0,
    max_upload_bytes: int = DEFAULT_UPLOAD_BYTES,
    detector_factory: DetectorFactory | None = None,
) -> web.Application:
    """The web app for `pipelines`: the app's fleet, or pipelines served on their own (tests).

    `host` is where the server listens: beyond loopback, auth turns on by itself (a generated
    token) when neither `api_token` nor `users` is given. `config_path` is the file
    `POST /api/config/save` writes into; `jobs_dir` defaults to a temporary folder.
    `detector_factory` replaces both the live and the upload detector (tests); by default cameras
    get the fleet's live detector and uploads the file mode's (each model's file_input_width).
    """
    config = config if config is not None else parse_config({})
    if isinstance(pipelines, CameraFleet):
        fleet, owns_fleet = pipelines, False
    else:
        fleet, owns_fleet = CameraFleet.of(dict(pipelines), config, detector_factory), True
    access = auth.Auth(api_token, users, host, config.server.allowed_hosts)
    logging.getLogger("aiohttp.server").addFilter(_BAD_REQUEST_LOG)  # a set: added once
    state = WebState(
        config=config,
        config_path=config_path,
        fleet=fleet,
        owns_fleet=owns_fleet,
        jobs=JobManager(config, detector_factory or file_detector, jobs_dir, job_limit, job_ttl_s),
        auth=access,
        allow_original_view=allow_original_view,
        max_upload_bytes=max_upload_bytes,
        preview_viewers=config.server.preview_viewers,
    )
    app = web.Application(middlewares=[error_middleware, auth.auth_middleware(access)])
    app[STATE_KEY] = state
    app[auth.IDENTITY_KEY] = access
    app.add_routes(stream_routes(state.hubs, stream_token))  # reads the dict: added cameras appear
    app.add_routes(_routes())
    app.cleanup_ctx.append(_background)
    return app


def generated_token(app: web.Application) -> str | None:
    """The token made up at start (auth on by default), for tests and the CLI; else None."""
    access = app[auth.IDENTITY_KEY]
    return access.token if access.generated else None
