"""Upload jobs: anonymize uploaded videos and images in worker threads, keep results for a while.

A job's files live in `<jobs_dir>/<id>/`: the upload (deleted as soon as the job ends: originals
must not linger), the anonymized result and the audit JSON (deleted when the job expires).
Ids are random uuid4 hex and every id from outside is checked against `JOB_ID` before it touches
the file system, so no id can name a path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote

import av
import cv2

from deid_sidecar.config import Config, Method
from deid_sidecar.core.detections import Label
from deid_sidecar.core.imagesize import (
    ImageSize,
    ImageTooLargeError,
    UnreadableImageError,
    check_image_size,
)
from deid_sidecar.detect.base import Detector, DetectorFactory
from deid_sidecar.engine.filemode import (
    IMAGE_SUFFIXES,
    FileOptions,
    VideoTooLargeError,
    anonymize_file,
    anonymize_image_file,
    open_video,
)
from deid_sidecar.errors import UserError

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi", ".ts", ".webm", ".m4v"})
#: Jobs waiting for a worker beyond this are refused (the queue is bounded like every other one).
MAX_QUEUED = 32
#: Seconds allowed to open an upload while probing it.
PROBE_TIMEOUT_S = 10.0


class JobError(Exception):
    """A request the jobs manager refuses; `status` is the HTTP status that fits."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def sanitize_filename(name: str) -> str:
    """A safe base name: no folders, no control or shell characters, at most 100 characters."""
    # Some clients percent-encode the name in the multipart header; undo it before cutting folders.
    base = re.split(r"[\\/]", unquote(name))[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    stem = stem[:80] or "upload"
    return f"{stem}.{suffix[:10].lower()}" if suffix else stem


def media_kind(filename: str) -> str:
    """`video` or `image` by extension; JobError 415 for anything else."""
    suffix = Path(filename).suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    allowed = ", ".join(sorted(VIDEO_SUFFIXES | IMAGE_SUFFIXES))
    raise JobError(415, f"file type {suffix or '(none)'!r} is not accepted; use one of {allowed}")


def check_image_header(source: bytes | BinaryIO) -> ImageSize:
    """The image's size from its header, before anything decodes it: JobError 415 when it is not a
    readable image of an accepted type, 413 when it has more than MAX_IMAGE_PIXELS."""
    try:
        return check_image_size(source)
    except UnreadableImageError as exc:
        raise JobError(415, f"the upload is not a readable image: {exc}") from None
    except ImageTooLargeError as exc:
        raise JobError(413, f"the image is refused: {exc}") from None


def probe_upload(path: Path, kind: str) -> dict[str, Any]:
    """Open the file the way the job will (blocking: call in an executor); JobError 415 if unreadable,
    413 if its pictures are above the pixel limits (checked before any decoding)."""
    if kind == "image":
        with path.open("rb") as handle:
            check_image_header(handle)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise JobError(415, "the upload is not a readable image")
        return {"width": int(image.shape[1]), "height": int(image.shape[0])}
    try:
        container = open_video(path, timeout=PROBE_TIMEOUT_S)
    except UserError as exc:  # the message names the server's path: say "the upload" instead
        status = 413 if isinstance(exc, VideoTooLargeError) else 415
        raise JobError(status, str(exc).replace(str(path), "the upload")) from None
    try:
        with container:
            stream = container.streams.video[0]
            frame = next(container.decode(stream), None)
            if frame is None:
                raise JobError(415, "the upload's video stream has no decodable frame")
            return {"width": frame.width, "height": frame.height, "codec": stream.codec_context.name}
    except av.FFmpegError:
        raise JobError(415, "the upload is not a readable video") from None


@dataclass
class Job:
    id: str
    filename: str  # sanitized
    kind: str  # video | image
    protect: list[str]
    method: Method | None
    owner: str
    created: float = field(default_factory=time.time)
    state: str = "queued"  # queued | running | done | failed
    frames: int = 0
    total: int = 0
    error: str | None = None
    finished: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def result_name(self) -> str:
        stem, _, suffix = self.filename.rpartition(".")
        return f"{stem}_anon.{'mp4' if self.kind == 'video' else suffix}"

    def to_json(self) -> dict[str, Any]:
        progress = 1.0 if self.state == "done" else (self.frames / self.total if self.total else 0.0)
        return {
            "id": self.id,
            "filename": self.filename,
            "kind": self.kind,
            "protect": self.protect,
            "method": self.method.value if self.method else None,
            "owner": self.owner,
            "state": self.state,
            "frames": self.frames,
            "total_frames": self.total,
            "progress": round(min(progress, 1.0), 3),
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
            "summary": self.summary,
        }


class JobManager:
    """Queues jobs onto at most `limit` worker threads; results expire `ttl_s` after they finish."""

    def __init__(
        self,
        config: Config,
        detector_factory: DetectorFactory,
        jobs_dir: Path | None = None,
        limit: int = 1,
        ttl_s: float = 3600.0,
    ) -> None:
        self.config = config
        self._factory = detector_factory
        self._own_dir = jobs_dir is None
        self.dir = Path(tempfile.mkdtemp(prefix="deid-jobs-")) if jobs_dir is None else jobs_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.limit = limit
        self.ttl_s = ttl_s
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._detectors: dict[frozenset[Label], Detector] = {}
        self._detector_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(limit, thread_name_prefix="job")

    # --- queries ---------------------------------------------------------------------------------

    def get(self, job_id: str, user: str | None = None) -> Job:
        """The job `job_id`; with `user`, only when that user owns it: someone else's job answers the
        same 404 as an unknown id, so ids cannot be probed. Admins pass no user."""
        if not JOB_ID.fullmatch(job_id):
            raise JobError(400, "job id must be 32 lowercase hex digits")
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or (user is not None and job.owner != user):
            raise JobError(404, f"no job {job_id} (it may have expired)")
        return job

    def list(self, user: str | None = None) -> list[Job]:
        """Newest first; with `user`, only that user's jobs."""
        with self._lock:
            jobs = [job for job in self._jobs.values() if user is None or job.owner == user]
        return sorted(jobs, key=lambda job: job.created, reverse=True)

    def counts(self) -> dict[str, int]:
        counts = {"queued": 0, "running": 0, "done": 0, "failed": 0}
        for job in self.list():
            counts[job.state] = counts.get(job.state, 0) + 1
        return counts

    def job_dir(self, job: Job) -> Path:
        return self.dir / job.id  # job.id matched JOB_ID when the job was made

    def result_path(self, job: Job) -> Path:
        return self.job_dir(job) / job.result_name

    def audit_path(self, job: Job) -> Path:
        return self.job_dir(job) / "audit.json"

    def check_protect(self, protect: Iterable[str]) -> None:
        """JobError 409 (the request is fine, this server's config cannot serve it) when a kind to
        protect has its detector disabled: the job could only fail (or, worse, pass that kind through)."""
        for name in protect:
            if not getattr(self.config.detection, Label.parse(name).key).enabled:
                raise JobError(
                    409,
                    f"protect: {name} is not available on this server "
                    f"(detection.{name}.enabled is false in its config)",
                )

    # --- lifecycle ---------------------------------------------------------------------------------

    def new_upload(self, filename: str) -> tuple[str, Path]:
        """A fresh job id and the path its upload is written to (the caller streams into it)."""
        if self.counts()["queued"] >= MAX_QUEUED:
            raise JobError(429, f"{MAX_QUEUED} jobs are already waiting; try again later")
        job_id = uuid.uuid4().hex
        folder = self.dir / job_id
        folder.mkdir()
        return job_id, folder / f"input{Path(sanitize_filename(filename)).suffix}"

    def discard_upload(self, job_id: str) -> None:
        if JOB_ID.fullmatch(job_id):
            shutil.rmtree(self.dir / job_id, ignore_errors=True)

    def submit(self, job: Job, upload: Path) -> Job:
        with self._lock:
            self._jobs[job.id] = job
        self._pool.submit(self._run, job, upload)
        return job

    def expire(self, now: float | None = None) -> int:
        """Delete finished jobs older than the ttl; returns how many went."""
        now = time.time() if now is None else now
        with self._lock:
            old = [j for j in self._jobs.values() if j.finished is not None and now - j.finished > self.ttl_s]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            shutil.rmtree(self.job_dir(job), ignore_errors=True)
        return len(old)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- worker ------------------------------------------------------------------------------------

    def detector(self, labels: set[Label]) -> Detector:
        """One detector per label set, shared by jobs (detectors are thread-safe; loading takes seconds)."""
        key = frozenset(labels)
        with self._detector_lock:
            if key not in self._detectors:
                self._detectors[key] = self._factory(self.config, set(labels))
            return self._detectors[key]

    def _run(self, job: Job, upload: Path) -> None:
        job.state = "running"
        try:
            self._anonymize(job, upload)
            job.state = "done"
        except UserError as exc:
            job.error, job.state = str(exc).replace(str(self.dir), "<jobs>"), "failed"
        except Exception:  # a job must never take the worker down; the log has the details
            log.exception("job %s failed", job.id)
            job.error, job.state = "internal error while anonymizing (see the server log)", "failed"
        finally:
            upload.unlink(missing_ok=True)  # the original is never kept past its job
            job.finished = time.time()

    def _anonymize(self, job: Job, upload: Path) -> None:
        labels = {Label.parse(name) for name in job.protect}
        detector = self.detector(labels)

        def progress(frames: int, total: int) -> None:
            job.frames, job.total = frames, total

        options = FileOptions(
            protect=job.protect,
            method=job.method,
            audit_path=self.audit_path(job),
            on_progress=progress,
        )
        output = self.result_path(job)
        if job.kind == "image":
            count = anonymize_image_file(upload, output, self.config, options, detector)
            job.frames = job.total = 1
            job.summary = {"frames": 1, "objects": count}
            self._write_image_audit(job, upload, count)
            return
        summary = anonymize_file(upload, output, self.config, options, detector)
        job.frames = summary.frames
        job.total = max(job.total, summary.frames)
        job.summary = {"frames": summary.frames, "objects": summary.objects, "seconds": summary.seconds}
        self._relabel_audit(job)

    def _relabel_audit(self, job: Job) -> None:
        """The audit names server paths; replace them with the names the user knows."""
        path = self.audit_path(job)
        document = json.loads(path.read_text(encoding="utf-8"))
        document["input"]["path"] = job.filename
        document["output"]["path"] = job.result_name
        path.write_text(json.dumps(document, indent=1), encoding="utf-8")

    def _write_image_audit(self, job: Job, upload: Path, count: int) -> None:
        document = {
            "input": {"path": job.filename, "sha256": _sha256(upload)},
            "output": {"path": job.result_name, "sha256": _sha256(self.result_path(job))},
            "protect": job.protect,
            "objects": count,
        }
        self.audit_path(job).write_text(json.dumps(document, indent=1), encoding="utf-8")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
