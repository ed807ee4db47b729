"""The two ways a detector is built: for live cameras, and for files and uploads.

Models are imported only when a detector is built (onnxruntime takes a while to import), so the
modules that hand these factories around stay cheap to import.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol

from deid_sidecar.config import Config
from deid_sidecar.core.detections import Label
from deid_sidecar.detect.base import Detector, DetectorFactory
from deid_sidecar.detect.service import DetectionClient, InferenceService

#: `detection.max_batch: 0` on a GPU: frames of this many cameras go through a model in one run.
GPU_BATCH = 4


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


class CameraDetectors(Protocol):
    """Where a fleet's cameras get their detectors (blocking: models load in seconds)."""

    def for_camera(self, name: str, labels: set[Label]) -> Detector: ...

    def release(self, detector: Detector | None) -> None:
        """The camera stopped, or its detector was replaced."""

    def close(self) -> None: ...


class SharedDetection:
    """The live cameras' detectors: clients of ONE inference service (detect/service.py), each model
    loaded once for them all."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._service: InferenceService | None = None

    def for_camera(self, name: str, labels: set[Label]) -> Detector:
        from deid_sidecar.detect import runtime
        from deid_sidecar.detect.detector import configured_detector

        detection = self.config.detection
        cores = os.cpu_count() or 1
        workers = detection.workers or cores
        # The workers already keep every core busy: each run on its share of them. Two runs of one
        # thread each on 2 cores got through 29 % more passes than two runs of two threads each.
        threads = detection.threads or max(1, cores // workers)
        with self._lock:
            if self._service is None:
                max_batch = detection.max_batch or (GPU_BATCH if runtime.uses_gpu(detection.providers) else 1)
                self._service = InferenceService({}, max_batch, workers).start()
            for label in sorted(labels - set(self._service.detectors)):
                self._service.add_model(label, configured_detector(self.config, label, threads=threads))
            return self._service.client(name, labels, self.config.privacy.detect_budget_ms / 1000.0)

    def release(self, detector: Detector | None) -> None:
        if isinstance(detector, DetectionClient):
            detector.close()

    def close(self) -> None:
        with self._lock:
            service, self._service = self._service, None
        if service is not None:
            service.close()


class DetectorPerCamera:
    """Each camera its own detector from `factory` (tests, and web apps served on their own)."""

    def __init__(self, config: Config, factory: DetectorFactory) -> None:
        self.config, self.factory = config, factory

    def for_camera(self, name: str, labels: set[Label]) -> Detector:
        return self.factory(self.config, labels)

    def release(self, detector: Detector | None) -> None:
        pass

    def close(self) -> None:
        pass
