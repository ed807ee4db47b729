"""Edge guard: hide what moves in from (or out through) the frame's edges before a detector can see it.

A face entering the picture is only partly in view for its first frames, and face detectors find
half faces late or never: a live camera without look-ahead (privacy.delay_ms 0) would show the part
in view, an eye and half a mouth, until the face is far enough in. The guard keeps a cheap model of
the background on a small grey copy of each frame and, in a band along each edge, hides every
region whose pixels differ from it, from the edge inward. A face standing still in the band stays
hidden until the background model learns it (tens of seconds); a face leaving is hidden as it goes.

What it costs: the band's moving regions (people's bodies, cars) are masked too while they cross it;
nothing outside the band is touched. Pure per-frame logic, no clocks.
"""

from __future__ import annotations

import cv2
import numpy as np

from deid_sidecar.core.boxes import Rect
from deid_sidecar.core.image import Image

#: The small grey copy takes every Nth pixel so that it is about this wide (a subsample, no filtering:
#: tenths of a millisecond where a proper resize of 720p costs milliseconds).
WORK_WIDTH = 320
#: Weight of each new frame in the background average; a still object fades into the background over
#: about 1 / RATE frames (20 s at 15 fps), so a face pausing in the band stays hidden that long.
RATE = 1 / 300
#: Grey levels a pixel must differ from the background to count as moving (camera noise is 2-6).
THRESHOLD = 20.0
#: A moving region that reaches into the band is followed this many band widths inward.
REACH = 2
#: Foreground pixels in a region smaller than this share of the searched area are noise.
MIN_REGION_SHARE = 0.002
#: A hidden region reaches this far (fraction of its size, at least MIN_MARGIN_PX) beyond what moved.
MARGIN = 0.15
MIN_MARGIN_PX = 12


class EdgeGuard:
    """`regions(frame)` -> rectangles (full-frame pixels) to hide in this frame."""

    def __init__(self, band: float) -> None:
        """`band`: width of the guarded band along each edge, as a fraction of the frame's height."""
        self.band = band
        self._background: np.ndarray | None = None  # float32 grey average of the small copies

    def reset(self) -> None:
        """A new stream: what was background before may not be now."""
        self._background = None

    def regions(self, image: Image) -> list[Rect]:
        if self.band <= 0:
            return []
        height, width = image.shape[:2]
        step = max(1, width // WORK_WIDTH)
        small = np.ascontiguousarray(image[::step, ::step])
        grey = (cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small).astype(np.float32)
        if self._background is None or self._background.shape != grey.shape:
            self._background = grey  # the first frame (or a new size): nothing is known to move yet
            return []
        moving = (cv2.absdiff(grey, self._background) > THRESHOLD).astype(np.uint8)
        cv2.accumulateWeighted(grey, self._background, RATE)
        scale = 1 / step
        band_px = max(2, round(self.band * grey.shape[0]))
        rects = []
        for edge in ("left", "right", "top", "bottom"):
            for x1, y1, x2, y2 in _band_regions(moving, edge, band_px):
                rects.append(_to_frame((x1, y1, x2, y2), scale, width, height))
        return rects


def _band_regions(moving: np.ndarray, edge: str, band_px: int) -> list[Rect]:
    """Moving regions that reach into one edge band, each stretched to the edge (small-image pixels).

    A region is followed up to REACH band widths inward, so a face already further in than the band
    when a detector still cannot see it whole stays covered.
    """
    h, w = moving.shape[:2]
    depth = min(REACH * band_px, w if edge in ("left", "right") else h)
    x0, y0, x1, y1 = {
        "left": (0, 0, depth, h),
        "right": (w - depth, 0, w, h),
        "top": (0, 0, w, depth),
        "bottom": (0, h - depth, w, h),
    }[edge]
    area = cv2.dilate(moving[y0:y1, x0:x1], np.ones((5, 5), np.uint8))  # join a face's pieces
    count, _, stats, _ = cv2.connectedComponentsWithStats((area > 0).astype(np.uint8), connectivity=8)
    min_area = MIN_REGION_SHARE * area.size
    out = []
    for i in range(1, count):
        bx, by, bw, bh, pixels = (int(v) for v in stats[i])
        rx1, ry1, rx2, ry2 = bx + x0, by + y0, bx + bw + x0, by + bh + y0
        in_band = {
            "left": rx1 < band_px,
            "right": rx2 > w - band_px,
            "top": ry1 < band_px,
            "bottom": ry2 > h - band_px,
        }
        if pixels < min_area or not in_band[edge]:
            continue
        # From the edge inward: the part of the object still outside the frame is what comes in next.
        if edge == "left":
            rx1 = 0
        elif edge == "right":
            rx2 = w
        elif edge == "top":
            ry1 = 0
        else:
            ry2 = h
        out.append((rx1, ry1, rx2, ry2))
    return out


def _to_frame(rect: Rect, scale: float, width: int, height: int) -> Rect:
    """A small-image rectangle in frame pixels, grown by the margin and clipped to the frame."""
    x1, y1, x2, y2 = (v / scale for v in rect)
    grow_x = max(MIN_MARGIN_PX, MARGIN * (x2 - x1))
    grow_y = max(MIN_MARGIN_PX, MARGIN * (y2 - y1))
    return (
        max(0, int(x1 - grow_x)),
        max(0, int(y1 - grow_y)),
        min(width, int(np.ceil(x2 + grow_x))),
        min(height, int(np.ceil(y2 + grow_y))),
    )
