"""Region primitives: hide a whole region of interest, whatever is in it.

The bottom layer of `anonymize/`: the methods (masks.py, faces.py, plates.py) build on these and
nothing here knows about detections, configuration or methods. Strength is relative to the region:
a fixed 5x5 kernel leaves a 100 px face recognizable, so each primitive first reduces the region to
a handful of samples across.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from deid_sidecar.core.image import Image, as_image

#: Samples across an object for blur: a face reduced to 6 samples keeps no identity (eyes, nose and
#: mouth fall into one or two cells), and a plate's characters (about 1/8 of its width) vanish too.
BLUR_SAMPLES = 6

#: `rounded_blur`'s shape: a superellipse of this exponent, radius 1 on the edge midpoints of the rect
#: grown by its halo, blurred fully up to the first radius and not at all from the second. Without a
#: halo the object box's corners lie at 2 ** (1 / ROUNDED_EXPONENT) / (1 + 2 * margin), 0.79 at the
#: default margin 0.25; a halo of 0.12 or more puts the rect's own edges (1 / (1 + 2 * halo)) inside.
ROUNDED_EXPONENT = 4.0
ROUNDED_FADE = (0.82, 0.98)

#: Smallest cell in pixels: on a tiny object, 8 cells across would be 1-pixel cells, i.e. no change.
MIN_CELL_PX = 4


def _reduce(roi: Image, samples_across: int) -> Image:
    """Area-average `roi` down to about `samples_across` cells on its long side, cells >= MIN_CELL_PX."""
    h, w = roi.shape[:2]
    samples = max(1, min(samples_across, max(h, w) // MIN_CELL_PX))
    scale = samples / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return as_image(cv2.resize(roi, size, interpolation=cv2.INTER_AREA))


def blur_region(roi: Image) -> Image:
    """Smooth blob: reduce to a few samples, then interpolate back (cost independent of kernel size)."""
    h, w = roi.shape[:2]
    small = _reduce(roi, BLUR_SAMPLES)
    small = as_image(cv2.GaussianBlur(small, (3, 3), 0))
    return as_image(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR))


def rounded_blur(image: Image, rect: tuple[int, int, int, int], halo: float = 0.0) -> None:
    """`blur_region` in place over a rounded square around `rect`, fading out towards its edges.

    For what is painted over afterwards (a synthetic face or plate): a hard blurred rectangle around
    it looks like a sticker. Without a halo the fade lies inside `rect` (its corners and edges stay as
    they were); with a halo (a share of the rect's size on every side, clipped to the image) the fade
    lies outside it and `rect` is blurred whole, as the blur method does.
    """
    x1, y1, x2, y2 = rect
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = (x2 - x1) / 2 * (1 + 2 * halo), (y2 - y1) / 2 * (1 + 2 * halo)
    height, width = image.shape[:2]
    ox1, oy1 = max(0, math.floor(cx - half_w)), max(0, math.floor(cy - half_h))
    ox2, oy2 = min(width, math.ceil(cx + half_w)), min(height, math.ceil(cy + half_h))
    if ox2 <= ox1 or oy2 <= oy1:
        return
    roi = image[oy1:oy2, ox1:ox2]
    ys, xs = np.ogrid[oy1:oy2, ox1:ox2]
    p = ROUNDED_EXPONENT
    radius = (np.abs((xs + 0.5 - cx) / half_w) ** p + np.abs((ys + 0.5 - cy) / half_h) ** p) ** (1 / p)
    alpha = np.clip((ROUNDED_FADE[1] - radius) / (ROUNDED_FADE[1] - ROUNDED_FADE[0]), 0.0, 1.0)[..., None]
    roi[...] = (alpha * blur_region(roi) + (1 - alpha) * roi).astype(np.uint8)


def pixelate_region(roi: Image, blocks: int) -> Image:
    h, w = roi.shape[:2]
    return as_image(cv2.resize(_reduce(roi, blocks), (w, h), interpolation=cv2.INTER_NEAREST))
