"""`method: replace`: synthetic faces and synthetic plates instead of blur, with safe fallbacks.

Faces get a k-anonymous averaged face aligned on their landmarks (see faces.py); plates get a plate
that cannot exist, warped onto the plate's quadrilateral (see plates.py). Whatever cannot be replaced
well is still hidden: faces without usable landmarks, too small or in profile are blurred, plates
without a quadrilateral are filled, persons are blurred. One instance per stream: it remembers which
track wears which synthetic identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from deid_sidecar.anonymize.faces import FaceReplacer, SourceFace, load_sources
from deid_sidecar.anonymize.font import TrueTypeFont
from deid_sidecar.anonymize.masks import Anonymizer, blur_region
from deid_sidecar.anonymize.plates import PlateReplacer
from deid_sidecar.config import AnonymizeConfig, Method
from deid_sidecar.core import boxes
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.core.image import Image

#: Bundled data: source faces and the plate font (the repository's data/ folder).
# Package data: installed with the package (pip, the container image), not read from a checkout.
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SOURCE_FACES_DIR = DATA_DIR / "source_faces"
FONT_FILE = DATA_DIR / "fonts" / "DejaVuSansMono-Bold.ttf"


@dataclass
class ReplaceCounters:
    """What happened to each object since start: replaced, or hidden by the fallback."""

    faces_replaced: int = 0
    faces_blurred: int = 0
    plates_replaced: int = 0
    plates_filled: int = 0


@lru_cache(maxsize=4)
def _sources(folder: Path, k: int) -> tuple[SourceFace, ...]:
    # Cached: a method switch on a live camera builds a new anonymizer, not a new set of faces.
    return tuple(load_sources(folder, k))


@lru_cache(maxsize=2)
def _font(path: Path) -> TrueTypeFont:
    return TrueTypeFont.load(path)


@dataclass(frozen=True)
class ReplacingAnonymizer(Anonymizer):
    faces: FaceReplacer = field(kw_only=True)
    plates: PlateReplacer = field(kw_only=True)
    counters: ReplaceCounters = field(default_factory=ReplaceCounters, kw_only=True)

    @classmethod
    def create(cls, config: AnonymizeConfig) -> ReplacingAnonymizer:
        folder = Path(config.replace_sources) if config.replace_sources else SOURCE_FACES_DIR
        faces = FaceReplacer(
            list(_sources(folder, config.replace_k)), config.replace_min_size, config.replace_smoothing
        )
        return cls(
            method=Method.REPLACE,
            margin=config.margin,
            faces=faces,
            plates=PlateReplacer(_font(FONT_FILE), config.plate_style),
        )

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
        if found is not None and self.faces.replace(image, box, rect, found[0], found[1], original):
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
