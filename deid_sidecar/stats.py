"""Per-camera counters shared by the API, the web page, the log and MQTT."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

LATENCY_SAMPLES = 300


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class RateMeter:
    """Events per second over a sliding window."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        self._times.append(t)
        self._trim(t)

    def rate(self, now: float | None = None) -> float:
        t = time.monotonic() if now is None else now
        self._trim(t)
        if len(self._times) < 2:
            return 0.0
        span = max(t - self._times[0], 1e-6)
        return round((len(self._times) - 1) / span, 2)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()


@dataclass
class CameraStats:
    """Counters written by one camera's threads; `snapshot()` is safe to call from anywhere."""

    name: str
    output: str
    state: str = "starting"  # starting | online | offline | degraded | stopped
    encoder: str = ""
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    frames_masked_whole: int = 0
    detections_run: int = 0
    detector_errors: int = 0
    reconnects: int = 0
    readers: int = 0
    readers_dropped: int = 0
    last_frame_time: float = 0.0
    last_error: str = ""
    stage_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    #: Recent end-to-end latencies (frame decoded -> packet muxed), for percentiles.
    latency_samples: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    fps_in: RateMeter = field(default_factory=RateMeter)
    fps_out: RateMeter = field(default_factory=RateMeter)
    fps_detect: RateMeter = field(default_factory=RateMeter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record_stage(self, stage: str, seconds: float) -> None:
        """Exponential moving average of a pipeline stage's cost."""
        ms = seconds * 1000.0
        with self.lock:
            previous = self.stage_ms.get(stage)
            self.stage_ms[stage] = ms if previous is None else 0.9 * previous + 0.1 * ms

    def record_latency(self, ms: float) -> None:
        with self.lock:
            self.latency_ms = ms
            self.latency_samples.append(ms)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self.lock:
            latencies = list(self.latency_samples)
            age = now - self.last_frame_time if self.last_frame_time else None
            return {
                "camera": self.name,
                "output": self.output,
                "state": self.state,
                "encoder": self.encoder,
                "fps_in": self.fps_in.rate(now),
                "fps_detect": self.fps_detect.rate(now),
                "fps_out": self.fps_out.rate(now),
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "frames_dropped": self.frames_dropped,
                "frames_masked_whole": self.frames_masked_whole,
                "detections_run": self.detections_run,
                "detector_errors": self.detector_errors,
                "reconnects": self.reconnects,
                "readers": self.readers,
                "readers_dropped": self.readers_dropped,
                "last_frame_age_s": None if age is None else round(age, 3),
                "latency_ms": round(self.latency_ms, 1),
                "latency_p50_ms": _rounded(percentile(latencies, 50)),
                "latency_p95_ms": _rounded(percentile(latencies, 95)),
                "stage_ms": {k: round(v, 2) for k, v in self.stage_ms.items()},
                "last_error": self.last_error,
            }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
