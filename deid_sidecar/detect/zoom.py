"""A second, zoomed look at small candidates a detector is unsure of.

A 20 px face in a 720p frame shrinks to 15 px at a 960 px model input, where CenterFace scores it
0.1-0.2: under any threshold that keeps the background clean. Zoomed in 2x on a crop around it, the
same model scores it 0.8. So the full pass keeps candidates down to `ZoomRecheck.threshold`, and every
small one under the detector's threshold is run again on its own crop, at a zoom that makes it
`TARGET_PX` wide. A crop costs ~2 ms on this CPU (a 96-192 px input) against ~60 ms for the frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deid_sidecar.core.boxes import nms
from deid_sidecar.core.detections import Detections
from deid_sidecar.detect.base import Image

#: Zoom so the candidate is about this wide (px): CenterFace is sure of faces from ~30 px.
TARGET_PX = 32.0
MIN_ZOOM, MAX_ZOOM = 2.0, 4.0
#: The crop spans this many candidate widths (context: hair, the other eye), at least MIN_CROP_PX.
CROP_SPAN = 2.5
MIN_CROP_PX = 40
#: A zoomed detection confirms the candidate when its centre lies within the candidate's box grown
#: by this fraction on every side.
CENTRE_SLACK = 0.5
#: Boxes overlapping more than this after the second look are one face.
DUPLICATE_IOU = 0.3

#: (image, input width, threshold) -> detections in that image's pixels.
Infer = Callable[[Image, int, float], Detections]


@dataclass(frozen=True)
class ZoomRecheck:
    """Which candidates get a second look: score >= `threshold` and long side < `below_px`."""

    threshold: float
    below_px: float
    #: At most this many crops per frame; candidates beyond it are masked as they are (fail closed).
    limit: int = 24


def settle_unsure(
    image: Image, found: Detections, sure_at: float, zoom: ZoomRecheck, infer: Infer
) -> Detections:
    """Sure detections as they are; small unsure ones replaced by what a zoomed look confirms, scored
    `sure_at` (masked, under any event threshold above it).

    Unsure candidates that are not small are dropped: the full pass saw them well and found them
    wanting. Those over the crop limit are kept unverified: a missed face is a leak, a spare mask is not.
    """
    sure = found.confidence >= sure_at
    sides = np.maximum(found.xyxy[:, 2] - found.xyxy[:, 0], found.xyxy[:, 3] - found.xyxy[:, 1])
    unsure = np.flatnonzero(~sure & (sides < zoom.below_px))
    order = unsure[np.argsort(-found.confidence[unsure], kind="stable")]
    confirmed = [_look_closer(image, found.xyxy[i], sure_at, infer) for i in order[: zoom.limit]]
    settled = Detections.merge([found[sure], *confirmed])
    # Two candidates around one face, or a candidate beside a sure box, confirm the same face twice.
    settled = settled[nms(settled.xyxy, settled.confidence, DUPLICATE_IOU)]
    return Detections.merge([settled, found[order[zoom.limit :]]])


def _look_closer(image: Image, box: np.ndarray, threshold: float, infer: Infer) -> Detections:
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0)
    half = max(MIN_CROP_PX, CROP_SPAN * side) / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = max(0, round(cx - half)), max(0, round(cy - half))
    right, bottom = min(width, round(cx + half)), min(height, round(cy + half))
    if right - left < 8 or bottom - top < 8:
        return Detections.empty()
    crop = np.ascontiguousarray(image[top:bottom, left:right])
    zoom = min(MAX_ZOOM, max(MIN_ZOOM, TARGET_PX / side))
    found = infer(crop, round(max(crop.shape[:2]) * zoom), threshold).translated(left, top)
    if not len(found):
        return found
    centre_x = (found.xyxy[:, 0] + found.xyxy[:, 2]) / 2
    centre_y = (found.xyxy[:, 1] + found.xyxy[:, 3]) / 2
    slack_x, slack_y = (x2 - x1) * CENTRE_SLACK, (y2 - y1) * CENTRE_SLACK
    near = (
        (centre_x >= x1 - slack_x)
        & (centre_x <= x2 + slack_x)
        & (centre_y >= y1 - slack_y)
        & (centre_y <= y2 + slack_y)
    )
    confirmed = found[near]
    # Masked, but not reported: the full pass was unsure of them, and a 15 px face found on some
    # frames only would open an event each time (the demo's loop went from 1.5 to 2.4 per object).
    confirmed.confidence[:] = threshold
    return confirmed
