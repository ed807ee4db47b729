"""Anonymizers: one interface, `apply(image, detections) -> image`, several methods.

All methods work in place on the BGR frame (the engine owns it) and return it. Each object is
processed on its own region of interest, so the cost grows with the masked area, not the frame.
Strength is relative to the object: every method first reduces the object to a handful of samples
across (regions.py).

The top of `anonymize/`: `Anonymizer.from_config` picks the method, so the anonymizer of every
method is defined here, on top of the region primitives (regions.py) and the face and plate
replacers (replace.py, faces.py, plates.py), none of which imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from deid_sidecar.anonymize.faces import FaceReplacer
from deid_sidecar.anonymize.plates import PlateReplacer
from deid_sidecar.anonymize.regions import blur_region, pixelate_region
from deid_sidecar.anonymize.replace import ReplaceCounters, face_replacer, plate_replacer
from deid_sidecar.config import AnonymizeConfig, Method, WholeFrameMask, Zone
from deid_sidecar.core import boxes
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.core.image import Image

__all__ = [
    "Anonymizer",
    "ReplacingAnonymizer",
    "ZoneMasker",
    "blur_region",
    "mask_whole_frame",
    "pixelate_region",
]

#: Cells across the whole frame when it is masked because detection cannot vouch for it.
WHOLE_FRAME_CELLS = 24


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


@dataclass(frozen=True)
class ReplacingAnonymizer(Anonymizer):
    """`method: replace`: synthetic faces and synthetic plates instead of blur, with safe fallbacks.

    Whatever cannot be replaced well is still hidden: faces without usable landmarks, too small or in
    profile are blurred, plates without a quadrilateral are filled, persons are blurred. One instance
    per stream: it remembers which track wears which synthetic identity.
    """

    faces: FaceReplacer = field(kw_only=True)
    plates: PlateReplacer = field(kw_only=True)
    counters: ReplaceCounters = field(default_factory=ReplaceCounters, kw_only=True)

    @classmethod
    def create(cls, config: AnonymizeConfig) -> ReplacingAnonymizer:
        faces = face_replacer(config)
        return cls(method=Method.REPLACE, margin=config.margin, faces=faces, plates=plate_replacer(config))

    def apply(self, image: Image, detections: Detections) -> Image:
        self.faces.next_frame()
        self.plates.next_frame()
        if not len(detections):
            return image
        height, width = image.shape[:2]
        rects = boxes.to_int_rects(boxes.expand(detections.xyxy, self.margin), width, height)
        # Each face's decorrelation compares with the frame as it came in, not with a face painted over
        # it a moment ago by an overlapping detection.
        originals = {
            row: image[y1:y2, x1:x2].copy()
            for row, (x1, y1, x2, y2) in enumerate(rects)
            if detections.label[row] == Label.FACE and x2 > x1 and y2 > y1
        }
        # Faces last: a plate or person painted afterwards (a false plate on a face, a person box around
        # one) would cover the synthetic face with detail the decorrelation never saw.
        order = sorted(range(len(rects)), key=lambda row: detections.label[row] == Label.FACE)
        for row in order:
            x1, y1, x2, y2 = rects[row]
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue
            rect = (int(x1), int(y1), int(x2), int(y2))
            label = int(detections.label[row])
            if label == Label.FACE:
                self._face(image, detections, row, rect, originals[row])
            elif label == Label.LICENSE_PLATE:
                self._plate(image, detections, row, rect)
            else:
                roi = image[y1:y2, x1:x2]
                roi[...] = blur_region(roi)
        return image

    def mask_region(self, roi: Image) -> Image:
        """Zones and other whole regions have no face or plate to replace: blur them."""
        return blur_region(roi)

    def _face(
        self, image: Image, detections: Detections, row: int, rect: tuple[int, int, int, int], original: Image
    ) -> None:
        box, track_id = detections.xyxy[row], int(detections.track_id[row])
        found = self.faces.landmarks(track_id, row, box, detections.keypoints[row])
        if found is not None and self.faces.replace(image, box, rect, found[0], found[1], original, track_id):
            self.counters.faces_replaced += 1
            return
        x1, y1, x2, y2 = rect
        roi = image[y1:y2, x1:x2]
        roi[...] = blur_region(roi)
        self.counters.faces_blurred += 1

    def _plate(self, image: Image, detections: Detections, row: int, rect: tuple[int, int, int, int]) -> None:
        x1, y1, x2, y2 = rect
        corners = detections.keypoints[row, :4]
        local = None if np.isnan(corners).any() else (corners - np.array([x1, y1], np.float32))
        painted = self.plates.replace(image[y1:y2, x1:x2], local, int(detections.track_id[row]), row)
        if painted:
            self.counters.plates_replaced += 1
        else:
            self.counters.plates_filled += 1


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
