"""ONNX detectors: a session plus an adapter behind the `Detector` contract, and several merged as one."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deid_sidecar.config import Config, DetectionConfig, DetectorConfig
from deid_sidecar.core.boxes import Rect, clip
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.detect import runtime
from deid_sidecar.detect.adapters import (
    Adapter,
    CenterFaceAdapter,
    InputTensor,
    RetinaPlateAdapter,
    ScrfdAdapter,
    TfObjectDetectionAdapter,
    YoloAdapter,
)
from deid_sidecar.detect.base import Image
from deid_sidecar.detect.zoom import Infer, ZoomRecheck, settle_unsure
from deid_sidecar.errors import ConfigError
from deid_sidecar.models.registry import AdapterName, ModelSpec, get_model, model_path

log = logging.getLogger(__name__)

#: A region's input is at least this many model pixels on its long side (the adapters pad to 32).
MIN_REGION_INPUT = 32
#: A box this large a share of its region's width and height means the region was too tight.
FILLS_REGION = 0.9

AdapterFactory = Callable[[Label, "tuple[int, int] | None"], Adapter]

_ADAPTERS: dict[AdapterName, AdapterFactory] = {
    "centerface": lambda label, _size: CenterFaceAdapter(label=label),
    "yolo": lambda label, size: YoloAdapter(label=label, fixed_size=size),
    "scrfd": lambda label, size: ScrfdAdapter(label=label, fixed_size=size),
    "retinaplate": lambda label, _size: RetinaPlateAdapter(label=label),
    "tfod": lambda label, _size: TfObjectDetectionAdapter(label=label),
}


def fixed_input_size(session: Any) -> tuple[int, int] | None:
    """(w, h) when the model's input has static H and W, else None."""
    shape = session.get_inputs()[0].shape
    height, width = shape[2], shape[3]
    if isinstance(height, int) and isinstance(width, int):
        return width, height
    return None


def make_adapter(spec: ModelSpec, session: Any, label: Label | None = None) -> Adapter:
    return _ADAPTERS[spec.adapter](label if label is not None else spec.task, fixed_input_size(session))


@dataclass
class _Stopwatch:
    seconds: float = 0.0


class OnnxDetector:
    """One model: prepare -> onnxruntime -> decode. Safe to call from several threads."""

    def __init__(
        self,
        spec: ModelSpec,
        session: Any,
        threshold: float,
        input_width: int,
        label: Label | None = None,
        zoom: ZoomRecheck | None = None,
    ) -> None:
        self.spec = spec
        self.session = session
        self.threshold = threshold
        self.input_width = input_width
        self.zoom = zoom if zoom is not None and zoom.threshold < threshold else None
        self.adapter = make_adapter(spec, session, label)
        self.input_name: str = session.get_inputs()[0].name
        #: The model takes a batch of images in one run (a symbolic batch dimension, batch-first outputs).
        self.batched = self.adapter.batch_first and not isinstance(session.get_inputs()[0].shape[0], int)
        #: Wall time of the last frame's inferences alone (ms, zoomed re-checks included), for stats.
        self.last_inference_ms = 0.0

    def detect(self, image: Image) -> Detections:
        spent = _Stopwatch()  # per call: several threads may detect at once
        infer = functools.partial(self._infer, spent=spent)
        candidates = infer(image, self.input_width, self._floor)
        found = self._settle(image, candidates, infer)
        self.last_inference_ms = spent.seconds * 1000.0
        return found

    def detect_regions(self, image: Image, regions: Sequence[Rect]) -> Detections:
        """`detect` on `regions` of `image` only, each seen at the scale the whole frame would be."""
        if not self.adapter.scales_by_long_side:
            return self.detect(image)
        spent = _Stopwatch()
        infer = functools.partial(self._infer, spent=spent)
        scale = self.input_width / max(image.shape[:2])
        parts = []
        for x1, y1, x2, y2 in regions:
            crop = np.ascontiguousarray(image[y1:y2, x1:x2])
            width = max(MIN_REGION_INPUT, round(max(crop.shape[:2]) * scale))
            found = infer(crop, width, self._floor)
            if _fills(found, x2 - x1, y2 - y1):
                # The region is too tight to judge what is in it (the plate model boxed a whole
                # 388 x 352 crop at 0.36, and its track kept the region that small): the whole frame.
                return self.detect(image)
            parts.append(found.translated(x1, y1))
        found = self._settle(image, Detections.merge(parts), infer)
        self.last_inference_ms = spent.seconds * 1000.0
        return found

    def detect_batch(self, images: Sequence[Image]) -> list[Detections]:
        """`detect` for each image; those whose tensors share a shape go through the model in ONE run
        when it takes a batch (CenterFace does; a GPU needs that to be busy)."""
        if len(images) < 2 or not self.batched:
            return [self.detect(image) for image in images]
        spent = _Stopwatch()
        infer = functools.partial(self._infer, spent=spent)
        prepared = [self.adapter.prepare(image, self.input_width) for image in images]
        same_shape: dict[tuple[int, ...], list[int]] = {}
        for index, (tensor, _meta) in enumerate(prepared):
            same_shape.setdefault(tensor.shape, []).append(index)
        found: dict[int, Detections] = {}
        for indices in same_shape.values():
            tensor = np.concatenate([prepared[i][0] for i in indices])
            outputs = self._run(tensor, spent)
            for row, i in enumerate(indices):
                own = [np.asarray(output)[row : row + 1] for output in outputs]
                candidates = self.adapter.decode(own, prepared[i][1], self._floor)
                found[i] = self._settle(images[i], candidates, infer)
        self.last_inference_ms = spent.seconds * 1000.0
        return [found[i] for i in range(len(images))]

    @property
    def _floor(self) -> float:
        """The lowest score decoded: the zoomed look's threshold when it is on."""
        return self.zoom.threshold if self.zoom is not None else self.threshold

    def _settle(self, image: Image, candidates: Detections, infer: Infer) -> Detections:
        found = candidates
        if self.zoom is not None:
            found = settle_unsure(image, candidates, self.threshold, self.zoom, infer)
        if not len(found):
            return found
        height, width = image.shape[:2]
        return Detections(
            clip(found.xyxy, width, height), found.confidence, found.label, keypoints=found.keypoints
        )

    def _infer(self, image: Image, input_width: int, threshold: float, spent: _Stopwatch) -> Detections:
        tensor, meta = self.adapter.prepare(image, input_width)
        return self.adapter.decode(self._run(tensor, spent), meta, threshold)

    def _run(self, tensor: InputTensor, spent: _Stopwatch) -> Any:
        started = time.perf_counter()
        outputs = self.session.run(None, {self.input_name: tensor})
        spent.seconds += time.perf_counter() - started
        return outputs

    def warm_up(self) -> None:
        """One inference on a blank frame, so the first real frame does not pay for allocation."""
        height = max(32, self.input_width * 9 // 16)
        self.detect(np.zeros((height, self.input_width, 3), np.uint8))


def _fills(found: Detections, width: int, height: int) -> bool:
    """True when a box covers nearly all of a `width` x `height` crop."""
    if not len(found):
        return False
    sizes = found.xyxy[:, 2:] - found.xyxy[:, :2]
    return bool(np.any((sizes[:, 0] >= FILLS_REGION * width) & (sizes[:, 1] >= FILLS_REGION * height)))


class MultiDetector:
    """Runs several detectors on the same frame and merges what they find.

    `every` (by position) runs a detector on every Nth call only, the first call included: between
    its passes its objects are followed by the tracker (and, in file mode, the look-ahead).
    """

    def __init__(self, detectors: Iterable[OnnxDetector], every: Sequence[int] | None = None) -> None:
        self.detectors: Sequence[OnnxDetector] = tuple(detectors)
        self.every: Sequence[int] = tuple(every) if every is not None else (1,) * len(self.detectors)
        self._calls = 0

    def detect(self, image: Image) -> Detections:
        return Detections.merge(detector.detect(image) for detector in self._due())

    def detect_regions(self, image: Image, regions: Sequence[Rect]) -> Detections:
        return Detections.merge(detector.detect_regions(image, regions) for detector in self._due())

    def _due(self) -> list[OnnxDetector]:
        calls, self._calls = self._calls, self._calls + 1
        return [d for d, n in zip(self.detectors, self.every, strict=True) if calls % max(1, n) == 0]

    def last_inference_ms(self) -> dict[str, float]:
        """Model id -> the last inference time in milliseconds."""
        return {d.spec.id: d.last_inference_ms for d in self.detectors}

    @property
    def labels(self) -> set[Label]:
        return {d.adapter.label for d in self.detectors}


def load_detector(
    label: Label,
    settings: DetectorConfig,
    models_dir: Path,
    providers: Sequence[str],
    threads: int,
    input_width: int | None = None,
    *,
    int8: bool = False,
) -> OnnxDetector:
    """Load, check and warm up the model configured for one label (`input_width` overrides it;
    `int8`: its int8 copy)."""
    width = input_width or settings.input_width
    spec = get_model(settings.model)
    if spec.task is not label:
        raise ConfigError(
            f"detection.{label.key}.model: {spec.id!r} detects {spec.task.key}, not {label.key}"
        )
    path = model_path(models_dir, spec.id, int8=int8)  # ModelMissingError names the fetch command
    session = runtime.shared_session(path, providers, threads)
    zoom = (
        ZoomRecheck(settings.zoom_threshold, settings.zoom_below_px)
        if settings.zoom_threshold is not None
        else None
    )
    detector = OnnxDetector(spec, session, settings.threshold, width, label, zoom)
    detector.warm_up()
    log.info(
        "%s: %s%s loaded (threshold %.2f, input width %d)",
        label.key,
        spec.id,
        " (int8)" if int8 else "",
        settings.threshold,
        width,
    )
    return detector


def configured_detector(
    config: Config, label: Label, *, file_mode: bool = False, threads: int | None = None
) -> OnnxDetector:
    """The detector `config.detection` sets up for `label` (file mode: its `file_input_width`;
    `threads` overrides `detection.threads`)."""
    detection = config.detection
    settings: DetectorConfig = getattr(detection, label.key)
    if not settings.enabled:
        # Protecting something nobody looks for would pass it through in the clear.
        raise ConfigError(f"detection.{label.key}.enabled is false, but a camera protects {label.key}")
    width = (settings.file_input_width or settings.input_width) if file_mode else settings.input_width
    models_dir = Path(config.models_dir)
    return load_detector(
        label,
        settings,
        models_dir,
        detection.providers,
        detection.threads if threads is None else threads,
        width,
        int8=uses_int8(detection, get_model(settings.model), models_dir, file_mode=file_mode),
    )


def uses_int8(detection: DetectionConfig, spec: ModelSpec, models_dir: Path, *, file_mode: bool) -> bool:
    """Whether `spec` runs from its int8 copy (`detection.precision`; auto: live cameras on the CPU,
    the only place it is measured, and only where `models fetch` made one)."""
    if detection.precision != "auto":
        return detection.precision == "int8"  # model_path names what is missing
    if file_mode or spec.int8 is None or not runtime.runs_on_cpu(detection.providers):
        return False
    if not (models_dir / spec.int8_filename).is_file():
        log.warning(
            "%s: no int8 copy in %s/ (made by: deid-sidecar models fetch %s); running the float model",
            spec.id,
            models_dir,
            spec.id,
        )
        return False
    return True


def build_detector(config: Config, protect: set[Label], *, file_mode: bool = False) -> MultiDetector:
    """The detectors for `protect`, as configured in `config.detection`.

    `file_mode` uses each detector's `file_input_width` and `file_every_pass`: offline, small faces
    matter more than speed.
    """
    labels = sorted(protect)
    every = [getattr(config.detection, label.key).file_every_pass if file_mode else 1 for label in labels]
    return MultiDetector([configured_detector(config, label, file_mode=file_mode) for label in labels], every)
