"""Per-camera counters shared by the API, the web page, the log and MQTT.

Every method locks internally: the camera's reader and worker threads write, the web and MQTT
threads read (`snapshot()`), all at once.

Frames not published are counted by why: `frames_skipped` on purpose (the camera is faster than
the output fps: a 15 fps camera published at 10 fps skips 5 frames a second, all healthy), and
`frames_dropped` lost (the worker fell behind and the reader's queue overflowed, a frame failed to
process, or `on_failure: hold` held back a frame that would have been masked whole).
"""

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
    """Events per second over a sliding window; safe to tick and read from different threads."""

    def __init__(self, window_s: float = 5.0) -> None:
        self._window = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        t = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(t)
            self._trim(t)

    def rate(self, now: float | None = None) -> float:
        t = time.monotonic() if now is None else now
        with self._lock:
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
    """Counters written by one camera's threads; every method, `snapshot()` included, is thread-safe.

    Write through the methods. `lock` (re-entrant) stays public for code that sets a plain field
    itself (the stream hub's reader counts); nothing may hold it for long.
    """

    name: str
    output: str
    state: str = "starting"  # starting | online | offline | degraded | stopped
    encoder: str = ""
    frames_in: int = 0
    frames_out: int = 0
    #: Lost: the reader's queue overflowed, a frame failed, or a frame was held back (on_failure: hold).
    frames_dropped: int = 0
    #: Skipped on purpose: more camera frames than output frames (the output fps is lower).
    frames_skipped: int = 0
    frames_masked_whole: int = 0
    detections_run: int = 0
    detector_errors: int = 0
    reconnects: int = 0
    readers: int = 0
    readers_dropped: int = 0
    last_frame_time: float = 0.0
    #: Why the camera last failed (masked); cleared once frames flow again.
    last_error: str = ""
    #: The output's registration in go2rtc (outputs/go2rtc.py STREAM_STATES); "" when not registering.
    go2rtc: str = ""
    stage_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    #: Recent end-to-end latencies (frame decoded -> packet muxed), for percentiles.
    latency_samples: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    fps_in: RateMeter = field(default_factory=RateMeter)
    fps_out: RateMeter = field(default_factory=RateMeter)
    #: Detector runs per second (runs that returned; failures and timeouts are `detector_errors`).
    fps_detect: RateMeter = field(default_factory=RateMeter)
    lock: threading.RLock = field(default_factory=threading.RLock)

    # --- writers ---------------------------------------------------------------------------------

    def frame_in(self, now: float | None = None) -> None:
        """One frame decoded from the camera."""
        t = time.monotonic() if now is None else now
        with self.lock:
            self.frames_in += 1
            self.last_frame_time = t
            self.fps_in.tick(t)

    def frame_out(self, now: float | None = None) -> None:
        """One frame published."""
        with self.lock:
            self.frames_out += 1
            self.fps_out.tick(now)

    def frame_dropped(self, count: int = 1) -> None:
        """Frames lost (see `frames_dropped`)."""
        with self.lock:
            self.frames_dropped += count

    def frame_skipped(self, count: int = 1) -> None:
        """Frames left out on purpose to keep to the output fps."""
        with self.lock:
            self.frames_skipped += count

    def detection_ran(self, count: int = 1, now: float | None = None) -> None:
        """`count` detector runs just returned (ticks `fps_detect`)."""
        t = time.monotonic() if now is None else now
        with self.lock:
            for _ in range(count):
                self.fps_detect.tick(t)

    def set_detector_counters(
        self, detections_run: int, detector_errors: int, frames_masked_whole: int
    ) -> None:
        """The processor's running totals."""
        with self.lock:
            self.detections_run = detections_run
            self.detector_errors = detector_errors
            self.frames_masked_whole = frames_masked_whole

    def reconnecting(self, error: str) -> None:
        """The camera failed with `error` (already masked) and is being reconnected."""
        with self.lock:
            self.reconnects += 1
            self.last_error = error

    def recovered(self) -> None:
        """Frames flow again: the last failure no longer describes the camera."""
        with self.lock:
            self.last_error = ""

    def set_state(self, state: str) -> bool:
        """Set the state; True when it changed."""
        with self.lock:
            if self.state == state:
                return False
            self.state = state
            return True

    def set_go2rtc(self, state: str) -> None:
        with self.lock:
            self.go2rtc = state

    def set_encoder(self, encoder: str) -> None:
        with self.lock:
            self.encoder = encoder

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

    # --- readers ---------------------------------------------------------------------------------

    def stage(self, name: str) -> float:
        """A stage's moving-average cost in ms (0 before it was measured)."""
        with self.lock:
            return self.stage_ms.get(name, 0.0)

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
                "frames_skipped": self.frames_skipped,
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
                "go2rtc": self.go2rtc,
            }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
