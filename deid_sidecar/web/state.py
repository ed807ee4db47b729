"""What the web handlers share: the cameras, their runtime settings, jobs, auth and options."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from deid_sidecar.config import CameraConfig, Config, Method
from deid_sidecar.core.redact import mask_url
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.jobs import DetectorFactory, JobManager
from deid_sidecar.outputs.http_ts import StreamHub
from deid_sidecar.web.auth import Auth
from deid_sidecar.web.preview import CameraPreview

log = logging.getLogger(__name__)

#: Audit records kept for `GET /api/audit` (older ones stay in the log).
AUDIT_KEEP = 1000


@dataclass
class CameraSettings:
    """A camera's settings as changed at runtime (the pipeline applies them; the config save writes them)."""

    method: Method
    protect: list[str]
    detection: bool = True
    fps: float = 15.0
    height: int | None = None
    raw_source: str | None = None  # set for cameras added at runtime: the source as typed (${ENV} kept)

    @classmethod
    def from_camera(cls, camera: CameraConfig, config: Config) -> CameraSettings:
        return cls(
            method=camera.method or config.anonymize.method,
            protect=list(camera.protect),
            fps=camera.output.fps,
            height=camera.output.height,
        )


@dataclass
class WebState:
    config: Config
    config_path: Path | None
    pipelines: dict[str, CameraPipeline]
    hubs: dict[str, StreamHub]
    settings: dict[str, CameraSettings]
    jobs: JobManager
    auth: Auth
    detector_factory: DetectorFactory
    allow_original_view: bool
    max_upload_bytes: int
    preview_viewers: int = 10
    probes_running: int = 0
    added: set[str] = field(default_factory=set)  # cameras this app started (and must stop)
    audit: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=AUDIT_KEEP))
    previews: dict[str, CameraPreview] = field(default_factory=dict)

    def pipeline(self, name: str) -> CameraPipeline:
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            raise ApiError(404, f"unknown camera {name!r}")
        return pipeline

    def preview(self, name: str) -> CameraPreview:
        self.pipeline(name)
        return self.previews.setdefault(name, CameraPreview(self.preview_viewers))

    def record_audit(self, user: str, camera: str, event: str) -> None:
        """Actions that show or mask less: the original view, and changes that unmask."""
        entry = {"user": user, "camera": camera, "event": event, "time": time.time()}
        self.audit.append(entry)
        log.warning("PRIVACY AUDIT %s: %s by %s", camera, event, user)

    def camera_json(self, name: str) -> dict[str, Any]:
        pipeline, settings = self.pipeline(name), self.settings[name]
        stats = pipeline.stats.snapshot()
        stats = {k: mask_url(v) if isinstance(v, str) else v for k, v in stats.items()}
        return {
            "name": name,
            "output": pipeline.output,
            "source": pipeline.spec.display,
            "state": "paused" if pipeline.paused else stats.get("state"),
            "paused": pipeline.paused,
            "method": settings.method.value,
            "protect": settings.protect,
            "detection": settings.detection,
            "fps": settings.fps,
            "height": settings.height,
            "stream": f"/streams/{pipeline.output}.ts",
            "stats": stats,
        }


class ApiError(Exception):
    """Turned into `{"error": message}` with `status` by the error middleware."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


STATE_KEY = web.AppKey("web_state", WebState)


def state_of(request: web.Request) -> WebState:
    return request.app[STATE_KEY]


Blocking = Callable[[], Any]
