"""Upload routes: file jobs (queued, with progress, result and audit downloads) and one-shot images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
from aiohttp import BodyPartReader, web

from deid_sidecar.config import Method
from deid_sidecar.core.detections import Label
from deid_sidecar.engine.filemode import FileOptions, anonymize_image
from deid_sidecar.jobs import Job, JobError, media_kind, probe_upload, sanitize_filename
from deid_sidecar.web.auth import identity_of
from deid_sidecar.web.cameras import in_executor
from deid_sidecar.web.state import ApiError, WebState, state_of

log = logging.getLogger(__name__)

#: Bytes gathered before one write to disk (each write runs in an executor, off the event loop).
WRITE_CHUNK = 1 << 20
#: Largest image `POST /api/image` takes (it is held in memory).
MAX_IMAGE_BYTES = 50 << 20
MAX_FIELD_BYTES = 1024
PROTECT_CHOICES = ("face", "license_plate", "person")


def parse_options(fields: dict[str, str]) -> tuple[list[str], Method | None]:
    """`protect` (comma-separated) and `method` from form fields or the query; ApiError 400 if wrong."""
    protect = [p.strip() for p in fields.get("protect", "face,license_plate").split(",") if p.strip()]
    if not protect or any(p not in PROTECT_CHOICES for p in protect):
        raise ApiError(400, f"protect: give one or more of {', '.join(PROTECT_CHOICES)}, comma-separated")
    method_name = fields.get("method", "")
    try:
        method = Method(method_name) if method_name else None
    except ValueError:
        raise ApiError(400, "method: use blur, pixelate or fill") from None
    return sorted(set(protect)), method


def _check_length(request: web.Request, limit: int) -> None:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"upload is larger than the limit of {limit // (1 << 20)} MB")


async def _multipart(request: web.Request) -> Any:
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "send multipart/form-data with a `file` part")
    try:
        return await request.multipart()
    except (ValueError, AssertionError):
        raise ApiError(400, "malformed multipart body") from None


async def _save_part(part: BodyPartReader, path: Path, limit: int) -> int:
    """Stream one part to `path` in ~1 MB writes done in an executor; ApiError 413 past `limit`."""
    size = 0
    buffer = bytearray()
    handle: BinaryIO = await in_executor(path.open, "wb")
    try:
        while chunk := await part.read_chunk(256 * 1024):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"upload is larger than the limit of {limit // (1 << 20)} MB")
            buffer += chunk
            if len(buffer) >= WRITE_CHUNK:
                await in_executor(handle.write, bytes(buffer))
                buffer.clear()
        await in_executor(handle.write, bytes(buffer))
    finally:
        await in_executor(handle.close)
    return size


async def _read_field(part: BodyPartReader) -> str:
    data = await part.read()
    if len(data) > MAX_FIELD_BYTES:
        raise ApiError(400, f"form field {part.name!r} is too long")
    return data.decode("utf-8", "replace")


async def create_job(request: web.Request) -> web.Response:
    state = state_of(request)
    _check_length(request, state.max_upload_bytes)
    reader = await _multipart(request)
    fields: dict[str, str] = {}
    upload: tuple[str, Path, str, str] | None = None  # job id, path, filename, kind
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "nested multipart is not accepted")
            if part.name == "file" and upload is None:
                upload = await _receive_file(state, part)
            elif part.name in ("protect", "method"):
                fields[part.name] = await _read_field(part)
            else:
                raise ApiError(400, f"unexpected form field {part.name!r} (use file, protect, method)")
        if upload is None:
            raise ApiError(400, "the form has no `file` part")
        protect, method = parse_options(fields)
        job_id, path, filename, kind = upload
        await in_executor(probe_upload, path, kind)
    except (ApiError, JobError):
        if upload is not None:
            state.jobs.discard_upload(upload[0])
        raise
    job = Job(job_id, filename, kind, protect, method, identity_of(request).user)
    state.jobs.submit(job, path)
    log.info("job %s queued by %s: %s (%s)", job.id, job.owner, filename, kind)
    return web.json_response(job.to_json(), status=202)


async def _receive_file(state: WebState, part: BodyPartReader) -> tuple[str, Path, str, str]:
    filename = sanitize_filename(part.filename or "")
    kind = media_kind(filename)  # by extension first: nothing is written for a wrong type
    job_id, path = state.jobs.new_upload(filename)
    try:
        await _save_part(part, path, state.max_upload_bytes)
    except ApiError:
        state.jobs.discard_upload(job_id)
        raise
    return job_id, path, filename, kind


async def list_jobs(request: web.Request) -> web.Response:
    jobs = state_of(request).jobs
    return web.json_response(
        {"jobs": [job.to_json() for job in jobs.list()], "limit": jobs.limit, "ttl_s": jobs.ttl_s}
    )


async def get_job(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).jobs.get(request.match_info["id"]).to_json())


def _finished_job(request: web.Request) -> Job:
    job = state_of(request).jobs.get(request.match_info["id"])
    if job.state == "failed":
        raise ApiError(409, f"job {job.id} failed: {job.error}")
    if job.state != "done":
        raise ApiError(409, f"job {job.id} is {job.state}; poll GET /api/jobs/{job.id} until done")
    return job


async def job_result(request: web.Request) -> web.StreamResponse:
    job = _finished_job(request)
    path = state_of(request).jobs.result_path(job)
    headers = {"Content-Disposition": f'attachment; filename="{job.result_name}"'}
    return web.FileResponse(path, headers=headers)


async def job_audit(request: web.Request) -> web.StreamResponse:
    job = _finished_job(request)
    path = state_of(request).jobs.audit_path(job)
    headers = {
        "Content-Disposition": f'attachment; filename="{job.result_name}.audit.json"',
        "Content-Type": "application/json",
    }
    return web.FileResponse(path, headers=headers)


# --- one image, synchronously ---------------------------------------------------------------------


async def _image_bytes(request: web.Request) -> bytes:
    """The image from a multipart `file` part or a raw `image/*` body, at most MAX_IMAGE_BYTES."""
    limit = min(MAX_IMAGE_BYTES, state_of(request).max_upload_bytes)
    _check_length(request, limit)
    if request.content_type.startswith("image/"):
        data = bytearray()
        while chunk := await request.content.read(256 * 1024):
            data += chunk
            if len(data) > limit:
                raise ApiError(413, f"image is larger than the limit of {limit // (1 << 20)} MB")
        return bytes(data)
    reader = await _multipart(request)
    while (part := await reader.next()) is not None:
        if isinstance(part, BodyPartReader) and part.name == "file":
            media_kind(sanitize_filename(part.filename or "image.jpg"))
            data = bytearray()
            while chunk := await part.read_chunk(256 * 1024):
                data += chunk
                if len(data) > limit:
                    raise ApiError(413, f"image is larger than the limit of {limit // (1 << 20)} MB")
            return bytes(data)
    raise ApiError(400, "send the image as a multipart `file` part or a raw image/* body")


async def anonymize_one_image(request: web.Request) -> web.Response:
    state = state_of(request)
    protect, method = parse_options(dict(request.query))
    data = await _image_bytes(request)
    labels = {Label.parse(p) for p in protect}

    def work() -> tuple[bytes, str]:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise JobError(415, "the body is not a readable image")
        image = np.ascontiguousarray(image)
        anonymize_image(image, state.config, FileOptions(protect=protect, method=method),
                        state.jobs.detector(labels))  # fmt: skip
        png = data[:8] == b"\x89PNG\r\n\x1a\n"
        ok, encoded = cv2.imencode(".png" if png else ".jpg", image)
        if not ok:
            raise JobError(500, "could not encode the result")
        return encoded.tobytes(), "image/png" if png else "image/jpeg"

    body, content_type = await in_executor(work)
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "no-store"})
