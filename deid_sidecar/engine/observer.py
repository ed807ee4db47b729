"""What the engine tells the outside world (MQTT, web) about each camera.

The engine only knows this protocol; `events/` and `web/` implement it, so nothing below the
engine imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from deid_sidecar.core.detections import Detections


class FrameObserver(Protocol):
    def on_frame(
        self,
        camera: str,
        frame_time: float,
        tracked: Detections,
        snapshot: Callable[[], bytes],
    ) -> None:
        """Called after each published frame with the tracked objects (track ids set) on it.

        `frame_time` is wall-clock UNIX seconds. `snapshot()` returns a JPEG of the ANONYMIZED
        frame; call it only when needed (it encodes). Must return quickly: never block the video path.
        """

    def on_status(self, camera: str, state: str) -> None:
        """Camera state changed: starting | online | offline | degraded | stopped."""

    def on_stats(self, camera: str, stats: dict[str, Any]) -> None:
        """Periodic stats snapshot (about every 5 s)."""
