"""Upload routes: file jobs (queued, with progress, result and audit downloads) and one-shot images.

A job is its owner's: other users neither list it nor reach it by id (404, as for an unknown id);
admins (and the API token) see every job. Bad input of any kind, including a multipart body that
breaks the format, is a 4xx naming the problem: only the server's own faults are 5xx.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError, InvalidHeader, LineTooLong

from deid_sidecar.config import Method
from deid_sidecar.core.detections import Label
from deid_sidecar.engine.filemode import FileOptions, anonymize_image
from deid_sidecar.errors import UserError
from deid_sidecar.jobs import (
    Job,
    JobError,
    check_image_header,
    media_kind,
    probe_upload,
    sanitize_filename,
)
from deid_sidecar.web.auth import identity_of
from deid_sidecar.web.cameras import in_executor
from deid_sidecar.web.state import ApiError, WebState, state_of

log = logging.getLogger(__name__)

#: Bytes gathered before one write to disk (each write runs in an executor, off the event loop).
WRITE_CHUNK = 1 << 20
#: Largest image `POST /api/image` takes (it is held in memory).
MAX_IMAGE_BYTES = 50 << 20
MAX_FIELD_BYTES = 1024
#: Parts of one multipart form read before it is refused (a job form has at most 3).
MAX_PARTS = 16
PROTECT_CHOICES = ("face", "license_plate", "person")
#: The `protect` option exactly as the OpenAPI spec's pattern says (a test compares the two).
PROTECT_LIST = re.compile(r"(face|license_plate|person)(,(face|license_plate|person))*")
#: What aiohttp raises for a body that breaks the format: part headers that are not `Name: value`
#: (a non-ASCII or empty header name, a NUL), a line too long, a missing boundary, a body cut short.
_MALFORMED = (ValueError, AssertionError, HttpProcessingError)


def parse_options(fields: dict[str, str]) -> tuple[list[str], Method | None]:
    """`protect` (comma-separated) and `method` from form fields or the query; ApiError 400 if wrong."""
    raw = fields.get("protect", "face,license_plate")
    if not PROTECT_LIST.fullmatch(raw):
        raise ApiError(400, f"protect: give one or more of {', '.join(PROTECT_CHOICES)}, comma-separated")
    method_name = fields.get("method")
    try:
        method = Method(method_name) if method_name is not None else None
    except ValueError:
        raise ApiError(400, f"method: use one of {', '.join(m.value for m in Method)}") from None
    return sorted(set(raw.split(","))), method


def _check_length(request: web.Request, limit: int) -> None:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"upload is larger than the limit of {limit // (1 << 20)} MB")


def _malformed(exc: BaseException) -> ApiError:
    if isinstance(exc, InvalidHeader):
        detail = "a part has an invalid header line (header names are ASCII, followed by a colon)"
    elif isinstance(exc, LineTooLong):
        detail = "a part has a header line that is too long"
    elif isinstance(exc, HttpProcessingError):
        detail = exc.message
    elif "EOF" in str(exc):
        detail = "the body ends before its closing boundary"
    else:
        detail = str(exc) or type(exc).__name__
    return ApiError(400, f"malformed multipart body: {detail[:200]}")


async def _multipart(request: web.Request) -> MultipartReader:
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "send multipart/form-data with a `file` part")
    try:
        return await request.multipart()
    except _MALFORMED as exc:
        raise _malformed(exc) from None


async def _parts(reader: MultipartReader) -> AsyncIterator[BodyPartReader]:
    """The form's parts, one at a time; ApiError 400 for a nested multipart, too many parts or a
    body that breaks the format (never an exception that would become a 500)."""
    for _ in range(MAX_PARTS):
        try:
            part = await reader.next()
        except _MALFORMED as exc:
            raise _malformed(exc) from None
        if part is None:
            return
        if not isinstance(part, BodyPartReader):
            raise ApiError(400, "nested multipart is not accepted")
        yield part
    raise ApiError(400, f"the form has more than {MAX_PARTS} parts")


async def _chunk(part: BodyPartReader) -> bytes:
    try:
        return await part.read_chunk(256 * 1024)
    except _MALFORMED as exc:
        raise _malformed(exc) from None


async def _save_part(part: BodyPartReader, path: Path, limit: int) -> int:
    """Stream one part to `path` in ~1 MB writes done in an executor; ApiError 413 past `limit`."""
    size = 0
    buffer = bytearray()
    handle: BinaryIO = await in_executor(path.open, "wb")
    try:
        while chunk := await _chunk(part):
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
    data = bytearray()
    while chunk := await _chunk(part):  # bounded as it is read: a chunked body has no length to check
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise ApiError(400, f"form field {part.name!r} is too long")
    return data.decode("utf-8", "replace")


def _owner_filter(request: web.Request) -> str | None:
    """The user whose jobs this request may see; None (all jobs) for admins."""
    identity = identity_of(request)
    return None if identity.admin else identity.user


async def create_job(request: web.Request) -> web.Response:
    state = state_of(request)
    _check_length(request, state.max_upload_bytes)
    reader = await _multipart(request)
    fields: dict[str, str] = {}
    upload: tuple[str, Path, str, str] | None = None  # job id, path, filename, kind
    try:
        async for part in _parts(reader):
            if part.name == "file" and upload is None:
                upload = await _receive_file(state, part)
            elif part.name in ("protect", "method"):
                fields[part.name] = await _read_field(part)
            else:
                raise ApiError(400, f"unexpected form field {part.name!r} (use file, protect, method)")
        if upload is None:
            raise ApiError(400, "the form has no `file` part")
        protect, method = parse_options(fields)
        state.jobs.check_protect(protect)
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
    mine = jobs.list(_owner_filter(request))
    return web.json_response(
        {"jobs": [job.to_json() for job in mine], "limit": jobs.limit, "ttl_s": jobs.ttl_s}
    )


def _visible_job(request: web.Request) -> Job:
    return state_of(request).jobs.get(request.match_info["id"], _owner_filter(request))


async def get_job(request: web.Request) -> web.Response:
    return web.json_response(_visible_job(request).to_json())


def _finished_job(request: web.Request) -> Job:
    job = _visible_job(request)
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
        while True:
            try:
                chunk = await request.content.read(256 * 1024)
            except HttpProcessingError as exc:  # e.g. a broken chunked encoding
                raise ApiError(400, f"malformed request body: {exc.message[:200]}") from None
            if not chunk:
                break
            data += chunk
            if len(data) > limit:
                raise ApiError(413, f"image is larger than the limit of {limit // (1 << 20)} MB")
        return bytes(data)
    reader = await _multipart(request)
    image: bytes | None = None
    async for part in _parts(reader):
        if part.name != "file" or image is not None:
            raise ApiError(400, f"unexpected form field {part.name!r} (send the image as one `file` part)")
        media_kind(sanitize_filename(part.filename or "image.jpg"))
        data = bytearray()
        while chunk := await _chunk(part):
            data += chunk
            if len(data) > limit:
                raise ApiError(413, f"image is larger than the limit of {limit // (1 << 20)} MB")
        image = bytes(data)
    if image is None:
        raise ApiError(400, "send the image as a multipart `file` part or a raw image/* body")
    return image


async def anonymize_one_image(request: web.Request) -> web.Response:
    state = state_of(request)
    protect, method = parse_options(dict(request.query))
    state.jobs.check_protect(protect)
    data = await _image_bytes(request)
    check_image_header(data)  # the header alone: a decompression bomb is refused before decoding
    labels = {Label.parse(p) for p in protect}

    def work() -> tuple[bytes, str]:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise JobError(415, "the body is not a readable image")
        image = np.ascontiguousarray(image)
        try:
            detector = state.jobs.detector(labels)
        except UserError as exc:  # the server's models or config, not the request: no traceback
            log.error("POST /api/image: cannot load the detector for %s: %s", ", ".join(protect), exc)
            raise JobError(
                503, f"the detector for {', '.join(protect)} cannot be loaded (see the server log)"
            ) from None
        anonymize_image(image, state.config, FileOptions(protect=protect, method=method), detector)
        png = data[:8] == b"\x89PNG\r\n\x1a\n"
        ok, encoded = cv2.imencode(".png" if png else ".jpg", image)
        if not ok:
            raise JobError(500, "could not encode the result")
        return encoded.tobytes(), "image/png" if png else "image/jpeg"

    body, content_type = await in_executor(work)
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "no-store"})
