"""Masking policy between tracker and anonymizer: when to detect, and the privacy delay buffer.

Pure: no I/O, no clocks (callers pass frame indices and timestamps), so tests drive it frame by frame.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from deid_sidecar.core.detections import Detections

T = TypeVar("T")

#: Largest detection interval the scheduler hands out (config `privacy.detect_every` allows up to 30).
MAX_EVERY = 30
#: Share of the frame interval the pipeline may plan to use; the rest absorbs jitter and GC pauses.
BUDGET_HEADROOM = 0.8
#: Back-filled boxes grow by this fraction of their size on each side, plus BACKFILL_GROWTH_PER_S per
#: second of distance from the birth frame: the object was somewhere near, we do not know exactly where.
BACKFILL_GROWTH = 0.1
BACKFILL_GROWTH_PER_S = 0.5
BACKFILL_MAX_GROWTH = 0.6
#: Interpolated boxes between two sightings grow by this fraction of the object size on each side.
INTERPOLATION_GROWTH = 0.1
#: Sightings further apart than this are not joined (and older sightings are forgotten).
MAX_INTERPOLATION_GAP_S = 2.0
#: Without a delay the back-fill window defaults to this (file mode look-ahead by frame count).
DEFAULT_BACKFILL_S = 1.0
#: Timestamps are float sums of frame intervals: 0.6 - 0.4 must count as 0.2 s.
TIME_EPSILON = 1e-6


class DetectionScheduler:
    """Decides per frame whether the full detector runs.

    Under a CPU budget the detector runs every `every`-th frame, but it is forced at start, after
    reset() (reconnect), on a scene cut, and for `burst` consecutive frames after a new track appears
    (a new object's velocity is unknown, so prediction alone cannot follow it yet). When the budget
    allows only every third frame or fewer, a burst is a single extra detection: consecutive bursts
    for every new object would double the detector's load and starve the output.

    A fractional `every` (4.4) makes gaps of 4 and 5 frames at random in that proportion, so cameras
    that share inference workers at the same spacing do not all detect on the same frames.
    """

    def __init__(self, every: float = 1, burst: int = 3, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._every = 0.0
        self._gap = 1
        self.every = every
        self.burst = burst
        self._force = True
        self._burst_left = 0
        self._last_detect: int | None = None

    def should_detect(self, frame_index: int, scene_cut: bool = False) -> bool:
        forced = self._force or scene_cut or self._burst_left > 0 or self._last_detect is None
        due = self._last_detect is not None and frame_index - self._last_detect >= self._gap
        if not (forced or due):
            return False
        self._force = False
        self._burst_left = max(0, self._burst_left - 1)
        self._last_detect = frame_index
        self._gap = self._next_gap()
        return True

    def _next_gap(self) -> int:
        every = max(1.0, self.every)
        whole = math.floor(every)
        return whole + (1 if self._rng.random() < every - whole else 0)

    def note_new_tracks(self, count: int) -> None:
        if count > 0:
            burst = self.burst if self.every <= 2 else min(self.burst, 1)
            self._burst_left = max(self._burst_left, burst)

    def reset(self) -> None:
        self._force = True
        self._burst_left = 0
        self._last_detect = None

    @property
    def every(self) -> float:
        return self._every

    @every.setter
    def every(self, value: float) -> None:
        """A new spacing applies from the next frame (not only after the next detection)."""
        if value != self._every:
            self._every = value
            self._gap = self._next_gap()

    @staticmethod
    def every_for_budget(
        detect_ms: float, frame_interval_ms: float, other_ms: float, cores: float = 1.0
    ) -> int:
        """Smallest N such that detecting every N-th frame fits the per-frame time budget.

        Per frame, `other_ms` (decode, anonymize, encode) is always spent and the detector's cost is
        spread over N frames; `cores` scales the time available when stages run in parallel.
        """
        available = frame_interval_ms * max(cores, 0.0) * BUDGET_HEADROOM - max(other_ms, 0.0)
        if detect_ms <= 0:
            return 1
        if available <= 0:
            return MAX_EVERY
        return int(min(MAX_EVERY, max(1, math.ceil(detect_ms / available))))


class SharedLoadSpacing:
    """Frames between detections that keep inference workers shared by several cameras from saturating.

    Near saturation a request waits behind the other cameras' and latency grows without bound (four
    cameras on 2 cores, each spacing its detections by its own frame budget alone: the workers were
    90 % busy and frames waited up to 320 ms for theirs). Every camera applies the same rule to the
    same measured load, once per `step_s`: spacing x sqrt(load / target), at most MAX_STEP either way.
    Together they scale the workers' load towards `target` (the square root damps the overshoot of
    all cameras stepping at once on a load measured over the last seconds).
    """

    MAX_STEP = 1.5

    def __init__(self, target: float, step_s: float = 1.0) -> None:
        self.target = target
        self.step_s = step_s
        self.spacing = 1.0
        self._stepped_at: float | None = None

    def update(self, load: float, now: float) -> float:
        """The spacing for the workers' `load` (0..1, their busy share lately) at time `now`."""
        if self._stepped_at is not None and now - self._stepped_at < self.step_s:
            return self.spacing
        self._stepped_at = now
        factor = min(self.MAX_STEP, max(1.0 / self.MAX_STEP, math.sqrt(max(load, 0.0) / self.target)))
        self.spacing = min(float(MAX_EVERY), max(1.0, self.spacing * factor))
        return self.spacing


@dataclass
class PendingFrame(Generic[T]):
    payload: T  # the engine's frame object, opaque here
    t: float
    mask: Detections  # what will be masked when it is released


@dataclass
class _Birth:
    """A track born recently, kept until its velocity is known (its second sighting) or it is too old."""

    track_id: int
    t: float
    row: Detections  # one row: the first box


class DelayBuffer(Generic[T]):
    """Privacy delay / look-ahead.

    Holds frames for `delay_s` (live) or `max_frames` (file mode); when a track is BORN at time t its
    box is back-filled into the held frames of the last `backfill_s` seconds, so a face first detected
    at frame t is also masked on frames t-k. First the birth box grown a little; once the track is seen
    again its velocity is known and the box extrapolated backward along it is added too.

    With delay_s = 0 and no max_frames, push() returns the frame at once (default live mode). With
    max_frames set and delay_s = 0, only the frame count holds frames back.
    """

    def __init__(
        self, delay_s: float, backfill_s: float | None = None, max_frames: int | None = None
    ) -> None:
        self.delay_s = delay_s
        self.max_frames = max_frames
        self.backfill_s = backfill_s if backfill_s is not None else max(delay_s, DEFAULT_BACKFILL_S)
        self._held: deque[PendingFrame[T]] = deque()
        self._births: list[_Birth] = []
        self._last_seen: dict[int, tuple[float, np.ndarray]] = {}

    @property
    def _interpolation_gap_s(self) -> float:
        return min(self.backfill_s, MAX_INTERPOLATION_GAP_S)

    @property
    def passthrough(self) -> bool:
        return self.delay_s <= 0 and self.max_frames is None

    def push(
        self,
        payload: T,
        t: float,
        mask: Detections,
        born: Detections,
        observed: Detections | None = None,
    ) -> list[PendingFrame[T]]:
        """Add a frame; `born` = rows of `mask` whose track ids are new this frame; `observed` = the
        rows a detector actually saw on it (not predictions).

        Returns the frames now due, oldest first, with their final masks.
        """
        frame = PendingFrame(payload, t, mask)
        if self.passthrough:
            return [frame]
        self._refine_births(mask, t)
        if observed is not None:
            self._interpolate(observed, t)
        for i in range(len(born)):
            row = born[np.array([i])]
            self._backfill(row, t, velocity=None)
            self._births.append(_Birth(int(row.track_id[0]), t, row))
        self._held.append(frame)
        return self._release(t)

    def drain(self) -> list[PendingFrame[T]]:
        """Everything still held, oldest first (end of file, shutdown)."""
        out = list(self._held)
        self._held.clear()
        self._births = []
        self._last_seen.clear()
        return out

    def _interpolate(self, observed: Detections, t: float) -> None:
        """Between two sightings of a track, the held frames get the box interpolated between them.

        Frames between detections were masked with boxes predicted from the past only; once the next
        sighting is known, the straight path between the two sightings covers a fast or turning
        object that the prediction missed.
        """
        for i in range(len(observed)):
            track = int(observed.track_id[i])
            box = observed.xyxy[i].astype(np.float64)
            previous = self._last_seen.get(track)
            self._last_seen[track] = (t, box)
            if previous is None or t - previous[0] > self._interpolation_gap_s:
                continue
            t0, box0 = previous
            size = np.maximum(box0[2:] - box0[:2], box[2:] - box[:2])
            grow = np.tile(size, 2) * INTERPOLATION_GROWTH * np.array([-1.0, -1.0, 1.0, 1.0])
            row = observed[np.array([i])]
            for frame in self._held:
                if not t0 < frame.t < t:
                    continue
                share = (frame.t - t0) / (t - t0)
                between = box0 + (box - box0) * share + grow
                frame.mask = Detections.merge([frame.mask, _row_with_box(row, between)])
        cutoff = t - self._interpolation_gap_s
        self._last_seen = {k: v for k, v in self._last_seen.items() if v[0] >= cutoff}

    def __len__(self) -> int:
        return len(self._held)

    def _release(self, now: float) -> list[PendingFrame[T]]:
        out: list[PendingFrame[T]] = []
        while self._held:
            oldest = self._held[0]
            by_time = self.delay_s > 0 and now - oldest.t >= self.delay_s - TIME_EPSILON
            by_count = self.max_frames is not None and len(self._held) > self.max_frames
            if not (by_time or by_count):
                break
            out.append(self._held.popleft())
        return out

    def _refine_births(self, mask: Detections, t: float) -> None:
        """Second sighting of a recent birth: back-fill again along its now known velocity."""
        keep: list[_Birth] = []
        for birth in self._births:
            hit = np.flatnonzero(mask.track_id == birth.track_id)
            dt = t - birth.t
            if len(hit) and dt > 0:
                first = birth.row.xyxy[0].astype(np.float64)
                velocity = (mask.xyxy[hit[0]].astype(np.float64) - first) / dt
                self._backfill(birth.row, birth.t, velocity)
            elif t - birth.t <= self.backfill_s and self._held and self._held[0].t < birth.t:
                keep.append(birth)  # still frames before its birth to fill (backfill_s may be infinite)
        self._births = keep

    def _backfill(self, row: Detections, t_birth: float, velocity: np.ndarray | None) -> None:
        first = row.xyxy[0].astype(np.float64)
        size = np.tile(first[2:] - first[:2], 2)
        for frame in self._held:
            back = t_birth - frame.t
            if back <= 0 or back > self.backfill_s:
                continue
            box = first if velocity is None else first - velocity * back
            grow = min(BACKFILL_MAX_GROWTH, BACKFILL_GROWTH + BACKFILL_GROWTH_PER_S * back)
            grown = box + size * grow * np.array([-1.0, -1.0, 1.0, 1.0])
            if grown[2] <= 0 or grown[3] <= 0:
                continue  # extrapolated entirely off the top/left edge: nothing to hide there
            frame.mask = Detections.merge([frame.mask, _row_with_box(row, grown)])


def _row_with_box(row: Detections, box: np.ndarray) -> Detections:
    """`row` (one object) moved to `box`; keypoints dropped (they belonged to the old place)."""
    return Detections(
        xyxy=box[None, :].astype(np.float32),
        confidence=row.confidence,
        label=row.label,
        track_id=row.track_id,
        keypoints=np.full_like(row.keypoints, np.nan),
    )
