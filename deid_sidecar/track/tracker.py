"""Multi-object tracking for masking: ids, prediction and coasting. Pure numpy, no I/O.

The tracker serves privacy, not analytics: every raw detection gets an id on its FIRST frame (no
confirmation step, which would leave a new face clear), and a track that the detector misses keeps
being masked for `hold_s`, predicted forward with its velocity and grown because its position
becomes less certain with every frame it is not seen.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from deid_sidecar.core.boxes import iou_matrix
from deid_sidecar.core.detections import NO_TRACK, Detections

Vec = npt.NDArray[np.float64]

#: Weight of the newest velocity measurement: detector boxes jitter by a few pixels, which at
#: 15 fps is tens of pixels per second, so one measurement alone would make coasting boxes wander.
VELOCITY_SMOOTHING = 0.6
#: Fraction of the speed by which a coasting box grows per second on each side: the velocity
#: estimate can be wrong by about this much (the object may turn, brake or speed up).
VELOCITY_UNCERTAINTY = 0.3
#: A track seen once has no velocity yet: it may be moving in any direction, so it grows faster.
UNKNOWN_VELOCITY_FACTOR = 2.0
#: Fallback matching gate when boxes do not overlap: center distance in units of object size.
CENTER_GATE = 1.5
#: Sizes of the two boxes in a center-distance match may differ at most by this factor.
MAX_SIZE_RATIO = 2.0
#: A predicted box keeps at least this fraction of its last size, and at most its inverse times it.
SIZE_CLAMP = 0.5


@dataclass
class _Track:
    track_id: int
    label: int
    center: Vec
    size: Vec
    velocity: Vec
    size_velocity: Vec
    last_t: float
    confidence: float
    hits: int = 1

    def predicted(self, t: float) -> tuple[Vec, Vec]:
        """Center and size at time t under constant velocity (never earlier than the last update)."""
        dt = max(0.0, t - self.last_t)
        center = self.center + self.velocity * dt
        size = np.clip(self.size + self.size_velocity * dt, self.size * SIZE_CLAMP, self.size / SIZE_CLAMP)
        return center, size

    def box(self, t: float, growth_per_s: float, grow: bool) -> Vec:
        center, size = self.predicted(t)
        half = size / 2
        if grow:
            dt = max(0.0, t - self.last_t)
            growth = growth_per_s * (UNKNOWN_VELOCITY_FACTOR if self.hits == 1 else 1.0)
            half = half + size * growth * dt + np.abs(self.velocity) * VELOCITY_UNCERTAINTY * dt
        return np.concatenate([center - half, center + half])

    def observe(self, center: Vec, size: Vec, t: float, confidence: float) -> None:
        dt = t - self.last_t
        if dt > 0:
            velocity = (center - self.center) / dt
            size_velocity = (size - self.size) / dt
            # The first measurement is all we know; later ones are blended to damp box jitter.
            weight = 1.0 if self.hits == 1 else VELOCITY_SMOOTHING
            self.velocity = weight * velocity + (1 - weight) * self.velocity
            self.size_velocity = weight * size_velocity + (1 - weight) * self.size_velocity
        self.center, self.size = center, size
        self.last_t = max(self.last_t, t)
        self.confidence = confidence
        self.hits += 1


def _centers_sizes(xyxy: npt.NDArray[np.float32]) -> tuple[Vec, Vec]:
    boxes = xyxy.astype(np.float64)
    return (boxes[:, :2] + boxes[:, 2:]) / 2, np.maximum(boxes[:, 2:] - boxes[:, :2], 1e-3)


def _greedy(score: Vec, valid: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """Pairs (row, col) taken best score first, each row and column at most once."""
    rows, cols = np.nonzero(valid)
    order = np.argsort(-score[rows, cols], kind="stable")
    used_rows: set[int] = set()
    used_cols: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r not in used_rows and c not in used_cols:
            pairs.append((r, c))
            used_rows.add(r)
            used_cols.add(c)
    return pairs


class Tracker:
    """Associates per-frame detections into tracks and predicts tracks the detector missed."""

    def __init__(self, hold_s: float = 1.0, iou_match: float = 0.2, growth_per_s: float = 0.5) -> None:
        self.hold_s = hold_s
        self.iou_match = iou_match
        self.growth_per_s = growth_per_s
        self._tracks: list[_Track] = []
        # Ids are never reused, not even after reset(): events downstream key on them.
        self._ids = itertools.count(1)
        self._born: set[int] = set()

    def update(self, detections: Detections, t: float) -> Detections:
        """Associate this frame's RAW detections (all labels, any confidence) at time t (monotonic s).

        Returns the same rows with track_id set; unmatched rows start a new track at once.
        """
        self._tracks = [tr for tr in self._tracks if t - tr.last_t <= self.hold_s]
        self._born = set()
        ids = np.full(len(detections), NO_TRACK, np.int64)
        centers, sizes = _centers_sizes(detections.xyxy)
        for label in np.unique(detections.label):
            rows = np.flatnonzero(detections.label == label)
            tracks = [tr for tr in self._tracks if tr.label == int(label) and tr.last_t < t]
            for ti, di in self._match(tracks, detections.xyxy[rows], t):
                row = int(rows[di])
                tracks[ti].observe(centers[row], sizes[row], t, float(detections.confidence[row]))
                ids[row] = tracks[ti].track_id
        for new_row in np.flatnonzero(ids == NO_TRACK):
            ids[new_row] = self._start(detections, int(new_row), centers, sizes, t)
        return detections.with_track_ids(ids)

    def _start(self, detections: Detections, row: int, centers: Vec, sizes: Vec, t: float) -> int:
        track = _Track(
            track_id=next(self._ids),
            label=int(detections.label[row]),
            center=centers[row],
            size=sizes[row],
            velocity=np.zeros(2),
            size_velocity=np.zeros(2),
            last_t=t,
            confidence=float(detections.confidence[row]),
        )
        self._tracks.append(track)
        self._born.add(track.track_id)
        return track.track_id

    def _match(self, tracks: list[_Track], boxes: npt.NDArray[np.float32], t: float) -> list[tuple[int, int]]:
        """IoU against predicted boxes first; center distance for what is left (small, fast objects)."""
        if not tracks or not len(boxes):
            return []
        predicted = np.array([tr.box(t, self.growth_per_s, grow=False) for tr in tracks], np.float32)
        iou = iou_matrix(predicted, boxes).astype(np.float64)
        pairs = _greedy(iou, iou >= self.iou_match)
        done_t = {p[0] for p in pairs}
        done_d = {p[1] for p in pairs}
        p_centers, p_sizes = _centers_sizes(predicted)
        d_centers, d_sizes = _centers_sizes(boxes)
        scale = np.maximum(p_sizes.mean(axis=1)[:, None], d_sizes.mean(axis=1)[None, :])
        distance = np.linalg.norm(p_centers[:, None, :] - d_centers[None, :, :], axis=2) / scale
        ratio = p_sizes.mean(axis=1)[:, None] / d_sizes.mean(axis=1)[None, :]
        valid = (distance <= CENTER_GATE) & (ratio <= MAX_SIZE_RATIO) & (ratio >= 1 / MAX_SIZE_RATIO)
        valid[list(done_t), :] = False
        valid[:, list(done_d)] = False
        return pairs + _greedy(-distance, valid)

    def coasting(self, t: float) -> Detections:
        """Tracks not updated at t but seen within hold_s: predicted to t, grown with uncertainty."""
        return self._as_detections([tr for tr in self._live(t) if tr.last_t < t], t)

    def predict(self, t: float) -> Detections:
        """All live tracks predicted to t (for frames on which the detector did not run)."""
        return self._as_detections(self._live(t), t)

    def new_track_ids(self) -> set[int]:
        """Ids born in the last update()."""
        return set(self._born)

    def reset(self) -> None:
        """Forget every track (after a reconnect or a scene cut)."""
        self._tracks = []
        self._born = set()

    def __len__(self) -> int:
        return len(self._tracks)

    def _live(self, t: float) -> list[_Track]:
        return [tr for tr in self._tracks if t - tr.last_t <= self.hold_s]

    def _as_detections(self, tracks: list[_Track], t: float) -> Detections:
        if not tracks:
            return Detections.empty()
        return Detections(
            xyxy=np.array([tr.box(t, self.growth_per_s, grow=True) for tr in tracks], np.float32),
            confidence=np.array([tr.confidence for tr in tracks], np.float32),
            label=np.array([tr.label for tr in tracks], np.int64),
            track_id=np.array([tr.track_id for tr in tracks], np.int64),
        )


def mask_union(raw: Detections, tracker: Tracker, t: float) -> Detections:
    """What to mask on a detected frame: `raw` (the rows tracker.update(raw, t) returned) + coasting tracks.

    Never only confirmed tracks: a face found for the first time is masked on that very frame.
    """
    return Detections.merge([raw, tracker.coasting(t)])
