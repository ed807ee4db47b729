"""Where to look: the parts of a frame that changed since the detector last looked at them.

A surveillance picture is mostly still. Between two FULL looks (at most `full_every_s` apart, so
nothing still is missed for longer), a detection pass looks only at:
  - the regions whose pixels differ from what the detector saw there when it last looked,
  - every tracked object's predicted box, grown, so a track that stands still is seen again (and
    kept alive) instead of coasting out, and
  - every box found in the last `full_every_s`, so an object that a flaky pass missed (and whose
    track ran out) is still looked at while it stands still.
Everything else is, to the threshold, the picture the detector already vouched for. When nothing
changed and nothing is tracked, the pass needs no model at all; when the regions cover most of the
frame, it is a full pass anyway.

The reference is a small grey copy of the frame that is updated only where the detector looked, and
only once it answered (`looked`): a region that drifts slowly still differs from what was last
examined there. Pure per-frame logic, no clocks (callers pass timestamps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from deid_sidecar.core.boxes import Rect
from deid_sidecar.core.detections import Detections
from deid_sidecar.core.image import Image

#: The small copy takes every Nth pixel so that it is about this wide (a subsample, like EdgeGuard's).
WORK_WIDTH = 320
#: Grey levels (after a 5x5 blur) a pixel must differ from the reference to count as changed: above
#: camera noise and codec flicker (2-6) and small exposure steps, below a person against a wall.
THRESHOLD = 18.0
#: Changed pixels are gathered in cells of this many small-copy pixels (a face of 24 frame px is ~1).
CELL = 4
#: A changed region's box grows by this many frame pixels on each side, and a track's by this share
#: of its size (at least TRACK_MIN_GROW_PX): a face moves between two passes.
CHANGE_MARGIN_PX = 24
TRACK_GROW = 0.3
TRACK_MIN_GROW_PX = 16
#: Regions covering more than this share of the frame: a full pass costs about the same.
MAX_SHARE = 0.5


@dataclass(frozen=True)
class LookPlan:
    """One detection pass: the whole frame (`regions` None) or only these regions (maybe none)."""

    regions: list[Rect] | None

    @property
    def full(self) -> bool:
        return self.regions is None


class ChangedRegions:
    def __init__(self, full_every_s: float, max_share: float = MAX_SHARE) -> None:
        """`full_every_s`: the longest time between two full passes (0: every pass is full)."""
        self.full_every_s = full_every_s
        self.max_share = max_share
        self._reference: npt.NDArray[np.float32] | None = None
        self._last_full_t: float | None = None
        self._pending: tuple[npt.NDArray[np.float32], LookPlan, int] | None = None
        #: What the detector found in the last `full_every_s` seconds: (when, boxes in frame pixels).
        self._found: list[tuple[float, Detections]] = []

    def reset(self) -> None:
        """A new stream or a scene cut: the next pass is full."""
        self._reference = None
        self._last_full_t = None
        self._pending = None
        self._found = []

    def plan(self, image: Image, t: float, tracked: Detections) -> LookPlan:
        """What the pass about to run on `image` looks at; call `looked` once the detector answered."""
        height, width = image.shape[:2]
        step = max(1, width // WORK_WIDTH)
        small = _small_grey(image, step)
        full = LookPlan(None)
        due = self._last_full_t is None or t - self._last_full_t >= self.full_every_s
        if self.full_every_s <= 0 or due or self._reference is None or self._reference.shape != small.shape:
            self._pending = (small, full, step)
            return full
        changed = _changed_boxes(small, self._reference, step, width, height)
        found = [boxes for when, boxes in self._found if t - when <= self.full_every_s]
        remembered = _grown_boxes(Detections.merge([tracked, *found]), width, height)
        regions = merge_rects(changed + remembered, width, height)
        area = sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in regions)
        plan = full if area > self.max_share * width * height else LookPlan(regions)
        self._pending = (small, plan, step)
        return plan

    def looked(self, t: float, found: Detections) -> None:
        """The detector answered for the last plan and found `found`: what it looked at is now the
        reference there."""
        if self._pending is None:
            return
        small, plan, step = self._pending
        self._pending = None
        self._remember(t, found)
        if plan.regions is None or self._reference is None:
            self._reference = small
            self._last_full_t = t
            return
        for x1, y1, x2, y2 in plan.regions:
            sx1, sy1 = x1 // step, y1 // step
            sx2, sy2 = -(-x2 // step), -(-y2 // step)
            self._reference[sy1:sy2, sx1:sx2] = small[sy1:sy2, sx1:sx2]

    def _remember(self, t: float, found: Detections) -> None:
        """`found` on the frame of time `t`: looked at again by every pass for `full_every_s`, so an
        object that stands still is not lost when one pass misses it (and its track runs out)."""
        self._found = [(when, boxes) for when, boxes in self._found if t - when <= self.full_every_s]
        if len(found):
            self._found.append((t, found))


def _small_grey(image: Image, step: int) -> npt.NDArray[np.float32]:
    small = np.ascontiguousarray(image[::step, ::step])
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
    return cv2.GaussianBlur(grey, (5, 5), 0).astype(np.float32)


def _changed_boxes(
    small: npt.NDArray[np.float32], reference: npt.NDArray[np.float32], step: int, width: int, height: int
) -> list[Rect]:
    """Boxes (frame pixels, grown by CHANGE_MARGIN_PX) around the cells that changed."""
    moved = cv2.absdiff(small, reference) > THRESHOLD
    rows, cols = -(-moved.shape[0] // CELL), -(-moved.shape[1] // CELL)
    padded = np.zeros((rows * CELL, cols * CELL), bool)  # the ragged last row and column fill up
    padded[: moved.shape[0], : moved.shape[1]] = moved
    cells = np.asarray(padded.reshape(rows, CELL, cols, CELL).any(axis=(1, 3)), np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(cells, connectivity=8)
    scale = CELL * step
    boxes = []
    for i in range(1, count):
        cx, cy, cw, ch = (int(v) for v in stats[i][:4])
        boxes.append(
            _clipped(
                cx * scale - CHANGE_MARGIN_PX,
                cy * scale - CHANGE_MARGIN_PX,
                (cx + cw) * scale + CHANGE_MARGIN_PX,
                (cy + ch) * scale + CHANGE_MARGIN_PX,
                width,
                height,
            )
        )
    return boxes


def _grown_boxes(tracked: Detections, width: int, height: int) -> list[Rect]:
    boxes = []
    for x1, y1, x2, y2 in tracked.xyxy.astype(np.float64):
        grow_x = max(TRACK_MIN_GROW_PX, TRACK_GROW * (x2 - x1))
        grow_y = max(TRACK_MIN_GROW_PX, TRACK_GROW * (y2 - y1))
        box = _clipped(x1 - grow_x, y1 - grow_y, x2 + grow_x, y2 + grow_y, width, height)
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
    return boxes


def _clipped(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> Rect:
    return (
        max(0, int(np.floor(x1))),
        max(0, int(np.floor(y1))),
        min(width, int(np.ceil(x2))),
        min(height, int(np.ceil(y2))),
    )


def merge_rects(rects: Sequence[Rect], width: int, height: int) -> list[Rect]:
    """The rectangles, with every two that overlap or touch replaced by their bounding box, until
    none do (so no object is cut between two regions that overlap)."""
    merged = [r for r in rects if r[2] > r[0] and r[3] > r[1]]
    changed = True
    while changed:
        changed = False
        out: list[Rect] = []
        for rect in merged:
            for k, other in enumerate(out):
                if _touch(rect, other):
                    out[k] = _union(rect, other)
                    changed = True
                    break
            else:
                out.append(rect)
        merged = out
    return [_clipped(*r, width, height) for r in merged]


def _touch(a: Rect, b: Rect) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _union(a: Rect, b: Rect) -> Rect:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
