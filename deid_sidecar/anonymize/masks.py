"""Anonymizers: one interface, `apply(image, detections) -> image`, several methods.

All methods work in place on the BGR frame (the engine owns it) and return it. Each object is
processed on its own region of interest, so the cost grows with the masked area, not the frame.
Strength is relative to the object: a fixed 5x5 kernel leaves a 100 px face recognizable, so every
method first reduces the object to a handful of samples across.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from deid_sidecar.config import AnonymizeConfig, Method, WholeFrameMask, Zone
from deid_sidecar.core import boxes
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.core.image import Image, as_image

#: Samples across an object for blur: a face reduced to 6 samples keeps no identity (eyes, nose and
#: mouth fall into one or two cells), and a plate's characters (about 1/8 of its width) vanish too.
BLUR_SAMPLES = 6
#: Cells across the whole frame when it is masked because detection cannot vouch for it.
WHOLE_FRAME_CELLS = 24


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


def pixelate_region(roi: Image, blocks: int) -> Image:
    h, w = roi.shape[:2]
    return as_image(cv2.resize(_reduce(roi, blocks), (w, h), interpolation=cv2.INTER_NEAREST))


@dataclass(frozen=True)
class Anonymizer:
    """Hides every object in `detections` (no cap on the count) with one method."""

    method: Method
    margin: float = 0.15
    shape: str = "box"
    blocks: int = 8
    fill_bgr: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def from_config(cls, config: AnonymizeConfig, method: Method | None = None) -> Anonymizer:
        chosen = method or config.method
        if chosen is Method.REPLACE:
            # Imported here: replace.py builds on this module (blur fallback, this class).
            from deid_sidecar.anonymize.replace import ReplacingAnonymizer

            return ReplacingAnonymizer.create(config)
        r, g, b = config.fill_color
        return cls(
            method=chosen,
            margin=config.margin,
            shape=config.shape,
            blocks=config.blocks,
            fill_bgr=(b, g, r),
        )

    def apply(self, image: Image, detections: Detections) -> Image:
        if not len(detections):
            return image
        height, width = image.shape[:2]
        rects = boxes.to_int_rects(boxes.expand(detections.xyxy, self.margin), width, height)
        for (x1, y1, x2, y2), label in zip(rects, detections.label, strict=True):
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            roi = image[y1:y2, x1:x2]
            masked = self.mask_region(roi)
            if self.shape == "ellipse" and label == Label.FACE:
                masked = _inside_ellipse(roi, masked)
            roi[...] = masked
        return image

    def mask_region(self, roi: Image) -> Image:
        """The whole `roi` hidden with this method."""
        if self.method is Method.PIXELATE:
            return pixelate_region(roi, self.blocks)
        if self.method is Method.FILL:
            return np.full_like(roi, self.fill_bgr)
        return blur_region(roi)


def _inside_ellipse(original: Image, masked: Image) -> Image:
    """Masked pixels inside the ellipse inscribed in the box, original pixels in the corners."""
    h, w = original.shape[:2]
    inside = np.zeros((h, w), np.uint8)
    cv2.ellipse(inside, (w // 2, h // 2), (max(1, w // 2), max(1, h // 2)), 0, 0, 360, 255, -1)
    return np.where(inside[..., None] > 0, masked, original)


def mask_whole_frame(image: Image, how: WholeFrameMask) -> Image:
    """Hide everything: used when detection is missing, late or failed (fail closed)."""
    if how is WholeFrameMask.BLACK:
        image[...] = 0
    elif how is WholeFrameMask.BLUR:
        image[...] = blur_region(image)
    else:
        image[...] = pixelate_region(image, WHOLE_FRAME_CELLS)
    return image


class ZoneMasker:
    """Static privacy zones: polygons that are always masked, or (inverted) everything outside them."""

    def __init__(self, zones: list[Zone], invert: bool, anonymizer: Anonymizer) -> None:
        self._zones = zones
        self._invert = invert
        self._anonymizer = anonymizer
        self._cache: tuple[tuple[int, int], npt.NDArray[np.bool_]] | None = None

    def __bool__(self) -> bool:
        return bool(self._zones)

    def mask_for(self, width: int, height: int) -> npt.NDArray[np.bool_]:
        """Boolean (H, W) map of the pixels to hide; cached per resolution."""
        if self._cache and self._cache[0] == (width, height):
            return self._cache[1]
        canvas = np.zeros((height, width), np.uint8)
        scale = np.array([width, height], np.float64)
        for zone in self._zones:
            polygon = np.round(np.asarray(zone.points, np.float64) * scale).astype(np.int32)
            cv2.fillPoly(canvas, [polygon], 255)
        hide = canvas == 0 if self._invert else canvas > 0
        self._cache = ((width, height), hide)
        return hide

    def apply(self, image: Image) -> Image:
        if not self._zones:
            return image
        height, width = image.shape[:2]
        hide = self.mask_for(width, height)
        ys, xs = np.nonzero(hide)
        if not len(ys):
            return image
        y1, y2, x1, x2 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        roi = image[y1:y2, x1:x2]
        masked = self._anonymizer.mask_region(roi)
        roi[hide[y1:y2, x1:x2]] = masked[hide[y1:y2, x1:x2]]
        return image
