"""Camera routes: status, live changes, pause/resume, probing and adding sources, previews, config save.

Who may do what: any logged-in user reads status and previews, stops a camera (the privacy shutter)
and makes changes that mask as much or more; only an admin makes a change that masks LESS (fewer
kinds protected, detection back on, a weaker method, a camera started again), probes or adds
sources. Every change that masks less is recorded in the audit (`GET /api/audit`).
Nothing typed into the API is `${ENV}`-substituted: environment references belong to the config file.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import av
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deid_sidecar.config import (
    MAX_OUTPUT_FPS,
    MAX_OUTPUT_HEIGHT,
    MIN_OUTPUT_FPS,
    MIN_OUTPUT_HEIGHT,
    NAME_PATTERN,
    CameraConfig,
    Config,
    Method,
    format_validation_error,
    output_name,
)
from deid_sidecar.core.detections import Label
from deid_sidecar.core.redact import inline_password, mask_url
from deid_sidecar.engine.fleet import CameraExists
from deid_sidecar.engine.settings import CameraSettings, SettingsValues, StaleSettings
from deid_sidecar.errors import ConfigError, UserError
from deid_sidecar.sources.spec import SourceSpec, parse_source
from deid_sidecar.web.auth import identity_of
from deid_sidecar.web.configfile import save_settings
from deid_sidecar.web.state import ApiError, WebState, state_of

log = logging.getLogger(__name__)

#: Seconds allowed to open a source and to read its first frame while probing it, and in all.
PROBE_OPEN_S = 8.0
PROBE_READ_S = 5.0
PROBE_TOTAL_S = PROBE_OPEN_S + PROBE_READ_S + 2.0
#: Probes running at once; more are refused (429). They get their own threads, so a probe of a
#: silent port never holds up snapshots and previews in the shared executor.
PROBE_CONCURRENCY = 2
#: The one answer for every probe failure: refused, silent, missing and not-video look the same,
#: so the probe is no port scanner or file-existence oracle (the detail goes to the log).
PROBE_FAILED = "the source could not be opened, or gave no video frame"
#: Frames per second the MJPEG preview sends.
MJPEG_FPS = 4.0
MJPEG_BOUNDARY = "frame"
#: Sources the API takes, exactly as the OpenAPI spec's pattern says (a test compares the two):
#: narrower than the config file's forms, with no credentials, no `${`, no blanks, ASCII only.
#: Cameras with credentials are read through go2rtc (go2rtc:<name>) or put in the config file.
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
API_SOURCE_PATTERN = (
    r"^(go2rtc:[A-Za-z0-9_.-]{1,64}"
    rf"|(rtsps?|https?)://[A-Za-z0-9.-]{{1,253}}(:{_PORT})?(/[A-Za-z0-9._~%/?&=+,;:!*()-]*)?"
    r"|file:/[!-#%-~]*"
    r"|/dev/video[0-9]{1,3})$"
)
_API_SOURCE = re.compile(API_SOURCE_PATTERN)
#: How much each method hides; a change to a lower rank masks less (admin only).
METHOD_STRENGTH = {Method.FILL: 2, Method.PIXELATE: 1, Method.BLUR: 1, Method.REPLACE: 1}

_PROBE_POOL = ThreadPoolExecutor(PROBE_CONCURRENCY, thread_name_prefix="probe")

Protect = Literal["face", "license_plate", "person"]
_T = TypeVar("_T", bound=BaseModel)


class _Body(BaseModel):
    # strict: "10" is not a number and true is not 1; JSON strings still name enum values.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _unique(value: list[str] | None) -> list[str] | None:
    if value is not None and len(set(value)) != len(value):
        raise ValueError("each kind only once")
    return value


class CameraPatch(_Body):
    method: Method | None = Field(None, description="blur, pixelate, fill or replace.")
    detection: bool | None = Field(None, description="Detection off masks whole frames.")
    protect: list[Protect] | None = Field(None, min_length=1, description="Labels to anonymize.")
    fps: float | None = Field(None, ge=MIN_OUTPUT_FPS, le=MAX_OUTPUT_FPS, description="Output fps (live).")
    height: int | None = Field(
        None,
        ge=MIN_OUTPUT_HEIGHT,
        le=MAX_OUTPUT_HEIGHT,
        description="Output height (applies live, at a new keyframe).",
    )

    _protect_unique = field_validator("protect")(_unique)


class ProbeBody(_Body):
    source: str = Field(min_length=1, max_length=2000)


class NewCamera(_Body):
    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(min_length=1, max_length=2000)
    protect: list[Protect] = Field(default_factory=lambda: ["face", "license_plate"], min_length=1)  # type: ignore[arg-type]
    method: Method | None = None
    fps: float = Field(15.0, ge=MIN_OUTPUT_FPS, le=MAX_OUTPUT_FPS)
    height: int | None = Field(None, ge=MIN_OUTPUT_HEIGHT, le=MAX_OUTPUT_HEIGHT)
    loop: bool = False

    _protect_unique = field_validator("protect")(_unique)


async def parse_body(request: web.Request, model: type[_T]) -> _T:
    """The JSON body as `model`; ApiError 400 naming every wrong key (also for null values)."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "the body must be a JSON object")
    try:
        # pydantic's own JSON parser: bounded nesting, no recursion error from deep input.
        body = model.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(400, format_validation_error(exc)) from None
    nulls = [key for key in sorted(body.model_fields_set) if getattr(body, key) is None]
    if nulls:
        raise ApiError(400, "; ".join(f"{key}: null is no value (leave the key out)" for key in nulls))
    return body


async def in_executor(func: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


def require_admin(request: web.Request, what: str) -> None:
    if not identity_of(request).admin:
        raise ApiError(403, f"only an admin may {what}")


# --- status -------------------------------------------------------------------------------------


async def list_cameras(request: web.Request) -> web.Response:
    state = state_of(request)
    return web.json_response({"cameras": [state.camera_json(name) for name in state.pipelines]})


async def get_camera(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).camera_json(request.match_info["name"]))


async def stats(request: web.Request) -> web.Response:
    state = state_of(request)
    cameras = {name: state.camera_json(name)["stats"] for name in state.pipelines}
    for name, pipeline in state.pipelines.items():
        if pipeline.paused:
            cameras[name]["state"] = "paused"
    return web.json_response({"cameras": cameras, "jobs": state.jobs.counts()})


# --- changes ------------------------------------------------------------------------------------


def masks_less(settings: SettingsValues, patch: CameraPatch) -> list[str]:
    """What in `patch` would hide less than the camera hides now (empty: nothing)."""
    less = []
    if patch.protect is not None and not set(patch.protect) >= set(settings.protect):
        less.append(f"protect {sorted(settings.protect)} -> {sorted(patch.protect)}")
    if patch.detection is True and not settings.detection:
        less.append("detection back on (whole frames no longer masked)")
    if patch.method is not None and METHOD_STRENGTH[patch.method] < METHOD_STRENGTH[settings.method]:
        less.append(f"method {settings.method.value} -> {patch.method.value}")
    return less


def _check_detectors(config: Config, protect: Sequence[str]) -> None:
    disabled = [kind for kind in protect if not getattr(config.detection, kind).enabled]
    if disabled:
        # 409: the request is well-formed; this server's config cannot serve it.
        needs = ", ".join(f"detection.{kind}.enabled: true" for kind in disabled)
        raise ApiError(409, f"protect: {', '.join(disabled)} needs {needs} in the config")


def changed_by(request: web.Request) -> str:
    """How the settings owner records a change made through the web API."""
    return f"web:{identity_of(request).user}"


def _submit(settings: CameraSettings, by: str, checked_version: int, changes: dict[str, Any]) -> int:
    """Submit changes checked against `checked_version`; 409 when the camera changed meanwhile."""
    try:
        return settings.update(by, if_version=checked_version, **changes)
    except StaleSettings:
        message = "the camera's settings changed meanwhile (another user or MQTT); reload and try again"
        raise ApiError(409, message) from None


async def patch_camera(request: web.Request) -> web.Response:
    state = state_of(request)
    name = request.match_info["name"]
    pipeline = state.pipeline(name)
    patch = await parse_body(request, CameraPatch)
    version, current = pipeline.settings.snapshot()
    less = masks_less(current, patch)
    if less:
        require_admin(request, f"make a change that masks less ({'; '.join(less)})")
    if patch.protect is not None:
        _check_detectors(state.config, patch.protect)
    by = changed_by(request)
    changes = patch.model_dump(exclude_none=True, exclude={"protect"})
    if changes:  # the camera's worker applies them before its next frame
        version = _submit(pipeline.settings, by, version, changes)
    if patch.protect is not None and sorted(patch.protect) != sorted(current.protect):
        # Loading models takes seconds: off the loop. The old detector keeps masking meanwhile; the
        # new one goes in only together with the protect it was built for.
        labels = {Label.parse(p) for p in patch.protect}
        detector = await in_executor(state.fleet.detector_for, name, labels)
        _submit(pipeline.settings, by, version, {"protect": list(patch.protect)})
        state.fleet.replace_detector(pipeline, detector)
    for change in less:  # recorded once made: a refused change (409) is no unmasking
        state.record_audit(identity_of(request).user, name, f"masks less: {change}")
    return web.json_response(state.camera_json(name))


async def start_camera(request: web.Request) -> web.Response:
    """Lift the privacy shutter: masks less, so admins only, audited."""
    state = state_of(request)
    name = request.match_info["name"]
    pipeline = state.pipeline(name)
    if pipeline.paused:
        require_admin(request, "start a stopped camera (it shows more)")
        state.record_audit(identity_of(request).user, name, "masks less: started (shutter lifted)")
    pipeline.resume(by=changed_by(request))  # detection as last set (web or MQTT) applies again
    return web.json_response(state.camera_json(name))


async def stop_camera(request: web.Request) -> web.Response:
    state = state_of(request)
    name = request.match_info["name"]
    state.pipeline(name).pause(by=changed_by(request))
    return web.json_response(state.camera_json(name))


async def delete_camera(request: web.Request) -> web.Response:
    """Remove a camera added at runtime (cameras from the config file are removed there)."""
    state = state_of(request)
    name = request.match_info["name"]
    state.pipeline(name)  # 404 for an unknown camera
    require_admin(request, "remove cameras")
    if name not in state.fleet.added:
        raise ApiError(409, f"camera {name!r} is defined in the config file: remove it there")
    state.previews.pop(name, None)
    await state.fleet.remove(name)  # also from go2rtc and MQTT
    log.info("camera %s removed by %s", name, identity_of(request).user)
    return web.json_response({"removed": name})


# --- probing and adding -------------------------------------------------------------------------


def source_spec(state: WebState, source: str, loop: bool = False) -> SourceSpec:
    """The source typed into the API as a SourceSpec; ApiError 400 naming what is wrong.

    Never `${ENV}`-substituted (that would read out the server's secrets), never with an inline
    password (it would be saved in clear), `file:` only inside `server.media_dirs`.
    """
    if "${" in source:
        raise ApiError(400, "source: ${...} references are expanded in the config file only, never in "
                            "API input; put this camera in the config file, or read it via go2rtc:<name>")  # fmt: skip
    if inline_password(source):  # it would be saved in clear
        raise ApiError(400, "source: no password in the URL (it would be saved in clear); read the "
                            "camera via go2rtc:<name>, or put it in the config file with ${ENV}")  # fmt: skip
    if not _API_SOURCE.fullmatch(source):
        raise ApiError(400, "source: use go2rtc:<name>, rtsp(s)://host[:port]/path, http(s)://host[:port]/path, "
                            "file:/path or /dev/videoN (ASCII, no blanks, no credentials)")  # fmt: skip
    if source.startswith("file:"):
        _check_media_path(state, source.removeprefix("file:"))
    try:
        return parse_source(source, state.config.go2rtc, loop)
    except (ConfigError, UserError) as exc:
        if source.startswith("file:"):  # inside media_dirs, but no file: as unreadable as any other
            raise SourceUnreadable from None
        raise ApiError(400, f"source: {mask_url(str(exc))}") from None


class SourceUnreadable(Exception):
    """A source that passed every check of its form but cannot be read (answered like a failed probe)."""


def _check_media_path(state: WebState, path: str) -> None:
    folders = [Path(d).resolve() for d in state.config.server.media_dirs]
    target = Path(path).resolve()
    if not any(target.is_relative_to(folder) for folder in folders):
        raise ApiError(403, "source: file: sources from the web UI must lie inside server.media_dirs "
                            f"({', '.join(state.config.server.media_dirs) or 'none configured'})")  # fmt: skip


def probe_source(spec: SourceSpec) -> dict[str, Any]:
    """Open the source and decode one frame (blocking; run in an executor)."""
    started = time.monotonic()
    failed = {"ok": False, "source": spec.display, "error": PROBE_FAILED}
    try:
        with av.open(spec.url, format=spec.format, options=dict(spec.options),
                     timeout=(PROBE_OPEN_S, PROBE_READ_S)) as container:  # fmt: skip
            if not container.streams.video:
                log.info("probe of %s: no video stream", spec.display)
                return failed
            stream = container.streams.video[0]
            frame = next(container.decode(stream), None)
            if frame is None:
                log.info("probe of %s: no frame decoded", spec.display)
                return failed
            rate = stream.average_rate or stream.guessed_rate
            return {
                "ok": True,
                "source": spec.display,
                "codec": stream.codec_context.name,
                "width": frame.width,
                "height": frame.height,
                "fps": round(float(rate), 2) if rate else None,
                "seconds": round(time.monotonic() - started, 2),
            }
    except (av.FFmpegError, OSError, StopIteration, ValueError) as exc:
        log.info("probe of %s failed: %s", spec.display, mask_url(str(exc)))
        return failed


async def run_probe(state: WebState, spec: SourceSpec) -> dict[str, Any]:
    """probe_source on the probe threads, at most PROBE_CONCURRENCY at once and PROBE_TOTAL_S long."""
    if state.probes_running >= PROBE_CONCURRENCY:
        raise ApiError(429, f"{PROBE_CONCURRENCY} probes are running already; try again shortly")
    state.probes_running += 1
    future = asyncio.get_running_loop().run_in_executor(_PROBE_POOL, probe_source, spec)

    def finished(_: Any) -> None:
        state.probes_running -= 1  # only when the thread is free again, even after a timeout

    future.add_done_callback(finished)
    try:
        result: dict[str, Any] = await asyncio.wait_for(asyncio.shield(future), PROBE_TOTAL_S)
    except TimeoutError:
        log.info("probe of %s: no answer within %.0f s", spec.display, PROBE_TOTAL_S)
        return {"ok": False, "source": spec.display, "error": PROBE_FAILED}
    return result


async def probe(request: web.Request) -> web.Response:
    state = state_of(request)
    require_admin(request, "probe sources")
    body = await parse_body(request, ProbeBody)
    try:
        result = await run_probe(state, source_spec(state, body.source))
    except SourceUnreadable:
        result = {"ok": False, "source": mask_url(body.source), "error": PROBE_FAILED}
    return web.json_response(result, status=200 if result["ok"] else 422)


async def add_camera(request: web.Request) -> web.Response:
    state = state_of(request)
    require_admin(request, "add cameras")
    body = await parse_body(request, NewCamera)
    try:
        spec: SourceSpec | None = source_spec(state, body.source, body.loop)
    except SourceUnreadable:
        spec = None
    camera = _new_camera_config(state, body)
    if spec is None:
        failed = {"ok": False, "source": mask_url(body.source), "error": PROBE_FAILED}
        return web.json_response(failed, status=422)
    result = await run_probe(state, spec)
    if not result["ok"]:
        return web.json_response(result, status=422)
    try:
        # Built, wired (go2rtc, MQTT, push) and started like a configured camera; until its detector
        # is loaded it masks whole frames (fail closed).
        await state.fleet.add(body.name, camera, raw_source=body.source, by=changed_by(request))
    except CameraExists:  # added by a request that finished while this one probed
        raise ApiError(409, f"name: a camera called {body.name!r} exists already") from None
    log.info("camera %s added by %s: %s", body.name, identity_of(request).user, spec.display)
    return web.json_response({**state.camera_json(body.name), "probe": result}, status=201)


def _new_camera_config(state: WebState, body: NewCamera) -> CameraConfig:
    """The new camera, checked with every other camera by the config's own rules (so it also saves)."""
    if body.name in state.pipelines or body.name in state.config.cameras:
        raise ApiError(409, f"name: a camera called {body.name!r} exists already")
    _check_detectors(state.config, body.protect)
    entry = {
        "source": body.source,
        "loop": body.loop,
        "protect": body.protect,
        "method": body.method,
        "output": {"fps": body.fps, "height": body.height},
    }
    cameras = {name: p.camera.model_dump() for name, p in state.pipelines.items()}
    try:
        candidate = Config.model_validate(
            {**state.config.model_dump(), "cameras": {**cameras, body.name: entry}}
        )
    except ValidationError as exc:
        # The body itself was valid: what fails is how it fits the cameras there are (a name taken).
        raise ApiError(409, format_validation_error(exc)) from None
    camera = candidate.cameras[body.name]
    out = output_name(body.name, camera)
    if out in state.hubs:
        raise ApiError(409, f"name: its output stream {out!r} is in use")
    return camera


async def save_config(request: web.Request) -> web.Response:
    state = state_of(request)
    require_admin(request, "save the config")
    if state.config_path is None:
        raise ApiError(409, "the server was started without a config file (run -c FILE) to save into")
    try:
        current = {name: pipeline.settings.values for name, pipeline in state.pipelines.items()}
        changed = await in_executor(save_settings, state.config_path, state.config, current)
    except ConfigError as exc:
        raise ApiError(422, f"not saved: {mask_url(str(exc))}") from None
    return web.json_response({"saved": state.config_path.name, "cameras": changed})


# --- previews -------------------------------------------------------------------------------------


async def snapshot(request: web.Request) -> web.Response:
    """JPEG of the newest ANONYMIZED frame (encoded off the event loop, once for all askers)."""
    state = state_of(request)
    name = request.match_info["name"]
    encode = state.pipeline(name).latest_jpeg
    data = None if encode is None else await state.preview(name).output.get(encode)
    if not data:
        raise ApiError(503, "no frame published yet")
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


def _max_frames(request: web.Request) -> int:
    raw = request.query.get("frames", "0")
    if not raw.isdigit():
        raise ApiError(400, "frames must be a whole number (0 = endless)")
    return int(raw)


async def mjpeg(request: web.Request) -> web.StreamResponse:
    """multipart/x-mixed-replace of the ANONYMIZED output, a few frames per second."""
    state = state_of(request)
    name = request.match_info["name"]
    pipeline, shared = state.pipeline(name), state.preview(name).output

    async def next_jpeg(last: Any) -> tuple[Any, bytes | None]:
        encode = pipeline.latest_jpeg
        if encode is None or encode is last:
            return last, None
        return encode, await shared.get(encode)

    return await _viewed(request, name, next_jpeg)


async def original_mjpeg(request: web.Request) -> web.StreamResponse:
    """The camera BEFORE anonymization: admins only, only when enabled, every viewing audited."""
    state = state_of(request)
    identity = identity_of(request)
    if not state.allow_original_view:
        raise ApiError(404, "the original view is disabled in this server's configuration")
    require_admin(request, "see the original view")
    name = request.match_info["name"]
    pipeline = state.pipeline(name)
    state.record_audit(identity.user, name, "original view start")
    pipeline.raw_viewers += 1

    async def next_jpeg(last: Any) -> tuple[Any, bytes | None]:
        return None, await in_executor(pipeline.latest_raw_jpeg)

    try:
        return await _viewed(request, name, next_jpeg)
    finally:
        pipeline.raw_viewers -= 1
        state.record_audit(identity.user, name, "original view end")


async def audit(request: web.Request) -> web.Response:
    state = state_of(request)
    require_admin(request, "read the audit")
    return web.json_response(
        {"original_view_enabled": state.allow_original_view, "entries": list(state.audit)}
    )


async def _viewed(request: web.Request, name: str, next_jpeg: Any) -> web.StreamResponse:
    """An MJPEG stream counted against the camera's viewer limit."""
    frames = _max_frames(request)
    preview = state_of(request).preview(name)
    if not preview.join():
        raise ApiError(429, f"{name}: {preview.limit} preview viewers watch already (server.preview_viewers)")
    try:
        return await _mjpeg_stream(request, next_jpeg, frames)
    finally:
        preview.leave()


async def _mjpeg_stream(request: web.Request, next_jpeg: Any, max_frames: int) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}",
            "Cache-Control": "no-store",
        }
    )
    await response.prepare(request)
    last: Any = None
    sent = 0
    try:
        while max_frames == 0 or sent < max_frames:
            last, data = await next_jpeg(last)
            if data:
                head = (
                    f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                )
                await response.write(head.encode() + data + b"\r\n")
                sent += 1
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            await asyncio.sleep(1.0 / MJPEG_FPS)
    except ConnectionResetError:
        log.debug("mjpeg viewer went away")
    return response
