"""Camera routes: status, live changes, pause/resume, probing and adding sources, previews, config save."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Literal, TypeVar

import av
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deid_sidecar.config import (
    NAME_PATTERN,
    CameraConfig,
    Method,
    format_validation_error,
    output_name,
    substitute_env,
)
from deid_sidecar.core.detections import Label
from deid_sidecar.core.redact import mask_url
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.errors import ConfigError, UserError
from deid_sidecar.sources.spec import parse_source
from deid_sidecar.web.auth import identity_of
from deid_sidecar.web.configfile import save_settings
from deid_sidecar.web.state import ApiError, CameraSettings, WebState, state_of

log = logging.getLogger(__name__)

#: Seconds allowed to open a source and to read its first frame while probing it.
PROBE_OPEN_S = 8.0
PROBE_READ_S = 5.0
#: Frames per second the MJPEG preview sends (each one is a JPEG encode in an executor).
MJPEG_FPS = 4.0
MJPEG_BOUNDARY = "frame"
# `scheme://user:password@`: a password typed into a source must be an ${ENV} reference instead.
_INLINE_PASSWORD = re.compile(r"://[^/@\s:]*:(?!\$\{)[^/@\s]+@")

Protect = Literal["face", "license_plate", "person"]
_T = TypeVar("_T", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CameraPatch(_Body):
    method: Method | None = Field(None, description="blur, pixelate or fill.")
    detection: bool | None = Field(None, description="Detection off masks whole frames.")
    protect: list[Protect] | None = Field(None, min_length=1, description="Labels to anonymize.")
    fps: float | None = Field(None, gt=0, le=60, description="Output fps (applies live).")
    height: int | None = Field(
        None, ge=90, le=2160, description="Output height (applies live, at a new keyframe)."
    )


class ProbeBody(_Body):
    source: str = Field(min_length=1, max_length=2000)


class NewCamera(_Body):
    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(min_length=1, max_length=2000)
    protect: list[Protect] = Field(default_factory=lambda: ["face", "license_plate"], min_length=1)  # type: ignore[arg-type]
    method: Method | None = None
    fps: float = Field(15.0, gt=0, le=60)
    height: int | None = Field(None, ge=90, le=2160)
    loop: bool = False


async def parse_body(request: web.Request, model: type[_T]) -> _T:
    try:
        data = await request.json()
    except ValueError:
        raise ApiError(400, "the body must be JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(400, format_validation_error(exc)) from None


async def in_executor(func: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


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


async def patch_camera(request: web.Request) -> web.Response:
    state = state_of(request)
    name = request.match_info["name"]
    pipeline, settings = state.pipeline(name), state.settings[name]
    patch = await parse_body(request, CameraPatch)
    if patch.method is not None:
        pipeline.set_method(patch.method)
        settings.method = patch.method
    if patch.detection is not None:
        settings.detection = patch.detection
        if not pipeline.paused:
            pipeline.set_detection(patch.detection)
    if patch.protect is not None and sorted(patch.protect) != sorted(settings.protect):
        # Loading models takes seconds: off the loop. The old detector keeps masking meanwhile.
        labels = {Label.parse(p) for p in patch.protect}
        detector = await in_executor(state.detector_factory, state.config, labels)
        pipeline.set_detector(detector)
        settings.protect = list(patch.protect)
    if patch.fps is not None or patch.height is not None:
        pipeline.apply_output(fps=patch.fps, height=patch.height)
        settings.fps = patch.fps if patch.fps is not None else settings.fps
        settings.height = patch.height if patch.height is not None else settings.height
    log.info("%s: settings changed by %s: %s", name, identity_of(request).user,
             patch.model_dump(exclude_none=True))  # fmt: skip
    return web.json_response(state.camera_json(name))


async def start_camera(request: web.Request) -> web.Response:
    state = state_of(request)
    name = request.match_info["name"]
    state.pipeline(name).resume(detection=state.settings[name].detection)
    return web.json_response(state.camera_json(name))


async def stop_camera(request: web.Request) -> web.Response:
    state = state_of(request)
    name = request.match_info["name"]
    state.pipeline(name).pause()
    return web.json_response(state.camera_json(name))


# --- probing and adding -------------------------------------------------------------------------


def _resolve_source(state: WebState, source: str, loop: bool = False) -> tuple[str, Any]:
    """(source with ${ENV} substituted, SourceSpec); ApiError 400 naming what is wrong."""
    if _INLINE_PASSWORD.search(source):
        raise ApiError(400, "source: put the password in an environment variable and write ${NAME} instead")
    try:
        resolved = substitute_env(source)
        return resolved, parse_source(resolved, state.config.go2rtc, loop)
    except (ConfigError, UserError) as exc:
        raise ApiError(400, f"source: {mask_url(str(exc))}") from None


def probe_source(spec: Any) -> dict[str, Any]:
    """Open the source and decode one frame (blocking; run in an executor)."""
    started = time.monotonic()
    try:
        with av.open(spec.url, format=spec.format, options=dict(spec.options),
                     timeout=(PROBE_OPEN_S, PROBE_READ_S)) as container:  # fmt: skip
            if not container.streams.video:
                return {"ok": False, "source": spec.display, "error": "the source has no video stream"}
            stream = container.streams.video[0]
            frame = next(container.decode(stream), None)
            if frame is None:
                return {"ok": False, "source": spec.display, "error": "no frame could be decoded"}
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
    except (av.FFmpegError, OSError, StopIteration) as exc:
        return {"ok": False, "source": spec.display, "error": mask_url(str(exc))}


async def probe(request: web.Request) -> web.Response:
    state = state_of(request)
    body = await parse_body(request, ProbeBody)
    _, spec = _resolve_source(state, body.source)
    result = await in_executor(probe_source, spec)
    return web.json_response(result, status=200 if result["ok"] else 422)


async def add_camera(request: web.Request) -> web.Response:
    state = state_of(request)
    if not identity_of(request).admin:
        raise ApiError(403, "only an admin may add cameras")
    body = await parse_body(request, NewCamera)
    camera = _new_camera_config(state, body)
    _, spec = _resolve_source(state, body.source, body.loop)
    result = await in_executor(probe_source, spec)
    if not result["ok"]:
        return web.json_response(result, status=422)
    pipeline = await in_executor(CameraPipeline, body.name, camera, state.config)
    state.pipelines[body.name] = pipeline
    state.hubs[pipeline.output] = pipeline.hub
    settings = CameraSettings.from_camera(camera, state.config)
    settings.raw_source = body.source
    state.settings[body.name] = settings
    state.added.add(body.name)
    await in_executor(pipeline.start)
    # Until its detector is loaded the new camera masks whole frames (fail closed).
    labels = {Label.parse(p) for p in body.protect}
    pipeline.set_detector(await in_executor(state.detector_factory, state.config, labels))
    log.info("camera %s added by %s: %s", body.name, identity_of(request).user, spec.display)
    return web.json_response({**state.camera_json(body.name), "probe": result}, status=201)


def _new_camera_config(state: WebState, body: NewCamera) -> CameraConfig:
    if body.name in state.pipelines or body.name in state.config.cameras:
        raise ApiError(409, f"name: a camera called {body.name!r} exists already")
    resolved, _ = _resolve_source(state, body.source, body.loop)
    try:
        camera = CameraConfig.model_validate(
            {
                "source": resolved,
                "loop": body.loop,
                "protect": body.protect,
                "method": body.method,
                "output": {"fps": body.fps, "height": body.height},
            }
        )
    except ValidationError as exc:
        raise ApiError(400, format_validation_error(exc)) from None
    out = output_name(body.name, camera)
    if out in state.hubs or out in state.pipelines:
        raise ApiError(409, f"name: its output stream {out!r} is in use")
    return camera


async def save_config(request: web.Request) -> web.Response:
    state = state_of(request)
    if not identity_of(request).admin:
        raise ApiError(403, "only an admin may save the config")
    if state.config_path is None:
        raise ApiError(409, "the server was started without a config file (run -c FILE) to save into")
    try:
        changed = await in_executor(save_settings, state.config_path, state.config, state.settings)
    except ConfigError as exc:
        raise ApiError(422, f"not saved: {mask_url(str(exc))}") from None
    return web.json_response({"saved": state.config_path.name, "cameras": changed})


# --- previews -------------------------------------------------------------------------------------


async def snapshot(request: web.Request) -> web.Response:
    """JPEG of the newest ANONYMIZED frame (encoded off the event loop)."""
    encode = state_of(request).pipeline(request.match_info["name"]).latest_jpeg
    if encode is None:
        raise ApiError(503, "no frame published yet")
    data = await in_executor(encode)
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


def _max_frames(request: web.Request) -> int:
    raw = request.query.get("frames", "0")
    if not raw.isdigit():
        raise ApiError(400, "frames must be a whole number (0 = endless)")
    return int(raw)


async def mjpeg(request: web.Request) -> web.StreamResponse:
    """multipart/x-mixed-replace of the ANONYMIZED output, a few frames per second."""
    pipeline = state_of(request).pipeline(request.match_info["name"])
    return await _mjpeg_stream(request, lambda: pipeline.latest_jpeg, _max_frames(request))


async def original_mjpeg(request: web.Request) -> web.StreamResponse:
    """The camera BEFORE anonymization: admins only, only when enabled, every viewing audited."""
    state = state_of(request)
    identity = identity_of(request)
    if not state.allow_original_view:
        raise ApiError(404, "the original view is disabled in this server's configuration")
    if not identity.admin:
        raise ApiError(403, "only an admin may see the original view")
    name = request.match_info["name"]
    pipeline = state.pipeline(name)
    frames = _max_frames(request)
    state.record_original_view(identity.user, name, "start")
    pipeline.raw_viewers += 1
    try:
        return await _mjpeg_stream(request, lambda: pipeline.latest_raw_jpeg, frames)
    finally:
        pipeline.raw_viewers -= 1
        state.record_original_view(identity.user, name, "end")


async def original_views(request: web.Request) -> web.Response:
    state = state_of(request)
    if not identity_of(request).admin:
        raise ApiError(403, "only an admin may read the original-view audit")
    return web.json_response({"enabled": state.allow_original_view, "views": list(state.original_views)})


async def _mjpeg_stream(request: web.Request, source: Any, max_frames: int) -> web.StreamResponse:
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
            encode = source()
            if encode is not None and encode is not last:
                last = encode
                data = await in_executor(encode)
                if data:
                    head = f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                    await response.write(head.encode() + data + b"\r\n")
                    sent += 1
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            await asyncio.sleep(1.0 / MJPEG_FPS)
    except ConnectionResetError:
        log.debug("mjpeg viewer went away")
    return response
