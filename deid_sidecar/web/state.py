"""What the web handlers share: the cameras, jobs, auth and options.

A camera's runtime settings are not kept here: its pipeline's `settings` owns them (MQTT changes them
too), and the web view reads them from there.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from deid_sidecar.config import Config
from deid_sidecar.core.redact import mask_url
from deid_sidecar.engine.fleet import CameraFleet
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.engine.settings import CameraSettings
from deid_sidecar.jobs import JobManager
from deid_sidecar.outputs.http_ts import StreamHub
from deid_sidecar.web.auth import Auth
from deid_sidecar.web.preview import CameraPreview

log = logging.getLogger(__name__)

#: Audit records kept for `GET /api/audit` (older ones stay in the log).
AUDIT_KEEP = 1000


@dataclass
class WebState:
    config: Config
    config_path: Path | None
    fleet: CameraFleet  # the cameras: built, wired and removed there
    owns_fleet: bool  # served on its own: cameras added here are stopped with the web app
    jobs: JobManager
    auth: Auth
    allow_original_view: bool
    max_upload_bytes: int
    preview_viewers: int = 10
    probes_running: int = 0
    audit: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=AUDIT_KEEP))
    previews: dict[str, CameraPreview] = field(default_factory=dict)

    @property
    def pipelines(self) -> dict[str, CameraPipeline]:
        return self.fleet.pipelines

    @property
    def hubs(self) -> dict[str, StreamHub]:
        return self.fleet.hubs

    def pipeline(self, name: str) -> CameraPipeline:
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            raise ApiError(404, f"unknown camera {name!r}")
        return pipeline

    def settings(self, name: str) -> CameraSettings:
        """The owner of the camera's runtime settings (404 for an unknown camera)."""
        return self.pipeline(name).settings

    def preview(self, name: str) -> CameraPreview:
        self.pipeline(name)
        return self.previews.setdefault(name, CameraPreview(self.preview_viewers))

    def record_audit(self, user: str, camera: str, event: str) -> None:
        """Actions that show or mask less: the original view, and changes that unmask."""
        entry = {"user": user, "camera": camera, "event": event, "time": time.time()}
        self.audit.append(entry)
        log.warning("PRIVACY AUDIT %s: %s by %s", camera, event, user)

    def camera_json(self, name: str) -> dict[str, Any]:
        pipeline = self.pipeline(name)
        settings = pipeline.settings.values
        stats = pipeline.stats.snapshot()
        stats = {k: mask_url(v) if isinstance(v, str) else v for k, v in stats.items()}
        return {
            "name": name,
            "output": pipeline.output,
            "source": pipeline.spec.display,
            "state": "paused" if settings.paused else stats.get("state"),
            "paused": settings.paused,
            "method": settings.method.value,
            "protect": list(settings.protect),
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
