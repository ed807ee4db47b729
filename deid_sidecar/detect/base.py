"""The detector contract every stage relies on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from deid_sidecar.config import Config
from deid_sidecar.core.boxes import Rect
from deid_sidecar.core.detections import Detections, Label

Image = npt.NDArray[np.uint8]  # H x W x 3, BGR (OpenCV order), C-contiguous


class DetectionRefused(RuntimeError):
    """A detector declined to look at this frame (a shared service overloaded, replaced by a newer
    frame, or stopped). Like any detector error, the frame is then masked whole."""


class Detector(Protocol):
    """Finds objects in one BGR frame. Boxes come back in that frame's pixels.

    Implementations must be safe to call from several threads (onnxruntime sessions are).
    """

    def detect(self, image: Image) -> Detections: ...


@runtime_checkable
class RegionDetector(Detector, Protocol):
    """A detector that can also look at only some regions of a frame, each at the frame's own scale
    (so it finds there what it would find in the whole frame, at a fraction of the cost). Boxes come
    back in the frame's pixels. A model that cannot (one that stretches its input to a fixed size)
    looks at the whole frame instead."""

    def detect_regions(self, image: Image, regions: Sequence[Rect]) -> Detections: ...


@runtime_checkable
class SharedDetector(Detector, Protocol):
    """A detector whose models other cameras use too (detect/service.py)."""

    def load(self) -> float:
        """The share of the shared workers' time spent running models lately, 0..1."""
        ...


#: (config, labels to find) -> a detector. Loading models takes seconds: call it in the executor.
DetectorFactory = Callable[[Config, set[Label]], Detector]
