"""The two ways a detector is built: for live cameras, and for files and uploads.

Models are imported only when a detector is built (onnxruntime takes a while to import), so the
modules that hand these factories around stay cheap to import.
"""

from __future__ import annotations

from deid_sidecar.config import Config
from deid_sidecar.core.detections import Label
from deid_sidecar.detect.base import Detector


def live_detector(config: Config, labels: set[Label]) -> Detector:
    """Each model at its `input_width`: a camera has a frame budget."""
    from deid_sidecar.detect.detector import build_detector

    detector: Detector = build_detector(config, labels)
    return detector


def file_detector(config: Config, labels: set[Label]) -> Detector:
    """Each model at its `file_input_width` and `file_every_pass`: offline, small faces matter more."""
    from deid_sidecar.detect.detector import build_detector

    detector: Detector = build_detector(config, labels, file_mode=True)
    return detector
