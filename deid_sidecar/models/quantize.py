"""int8 copies of the detectors, for live cameras on the CPU: made at fetch time, never while detecting.

Why: on a small CPU the detectors are most of the work (4 cameras on 2 cores: the two inference
workers used 96 % of the 176 % CPU the process used). With 8-bit weights and activations CenterFace
at 960 px runs 1.6x faster and the plate YOLO at 640 px 1.4x (VNNI), and on the leak benchmark's
clips both find the same objects as the float models (README, "int8 detectors").

How: onnxruntime's static QDQ quantization, weights per channel, activation ranges from the
calibration media (none of which the leak benchmark's clips are made of), each prepared by the
model's own adapter at its live input width, so the ranges are those of what detection feeds it.
The result is checked before it is installed: on the check photos every box the float model is sure
of must be found by the int8 copy too, else the fetch fails and the float model stays the only one.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from deid_sidecar.core.boxes import iou_matrix
from deid_sidecar.core.detections import Detections
from deid_sidecar.errors import UserError
from deid_sidecar.models.registry import Int8Recipe, ModelSpec

log = logging.getLogger(__name__)

#: Calibration media (registry ids), none of them in the leak benchmark's clips: faces big and
#: small, a crowd, plates sharp and blurred, dash-cam frames.
CALIBRATION_MEDIA = ("messi", "basketball", "megamind", "car-show", "dashcam", "plate-motion")
#: Check photos: the float model's sure boxes on them must all be found by the int8 copy.
CHECK_MEDIA = ("t1", "astronaut", "car-plate")
#: Frames taken from each calibration video or animation, spread over it.
FRAMES_PER_VIDEO = 8
#: "Sure" boxes of the float model; an int8 box that scores CHECK_FIND_SCORE (the default masking
#: thresholds are 0.2-0.3) and overlaps one by CHECK_MIN_IOU finds it.
CHECK_SURE_SCORE = 0.5
CHECK_FIND_SCORE = 0.3
CHECK_MIN_IOU = 0.5
#: Per-axis weight scales need opset 13 (CenterFace ships at opset 9).
MIN_OPSET = 13
STILL_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def read_media(path: Path) -> list[np.ndarray]:
    """BGR frames of a photo, or FRAMES_PER_VIDEO frames spread over a video or animation."""
    if path.suffix.lower() in STILL_SUFFIXES:
        image = cv2.imread(str(path))
        if image is None:
            raise UserError(f"cannot read the calibration image {path.name}")
        return [image]
    try:
        with av.open(str(path)) as container:
            # Only the frames kept are converted (Megamind.avi whole is 300 MB of BGR); a stream
            # that does not say its length (a GIF) is a short one: all of it.
            step = max(1, container.streams.video[0].frames // FRAMES_PER_VIDEO)
            frames = [
                frame.to_ndarray(format="bgr24")
                for index, frame in enumerate(container.decode(video=0))
                if index % step == 0
            ]
    except (av.FFmpegError, OSError) as exc:
        raise UserError(f"cannot read the calibration video {path.name}: {exc}") from None
    step = max(1, len(frames) // FRAMES_PER_VIDEO)
    return frames[::step][:FRAMES_PER_VIDEO]


def quantize_model(
    spec: ModelSpec, source: Path, dest: Path, calibration: Sequence[np.ndarray], check: Sequence[np.ndarray]
) -> str:
    """Write the int8 copy of `source` to `dest` (checked; nothing is written when the check fails).

    Returns a one-line summary of the check for the fetch log.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    recipe = spec.int8
    if recipe is None:
        raise UserError(f"model {spec.id!r} has no int8 recipe")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".quantize-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / dest.name
        _prepare(source, prepared)
        detector = _detector(spec, source, recipe.width, CHECK_SURE_SCORE)
        reader = _Calibration(detector.input_name, _tensors(detector, calibration, recipe.width))
        quantize_static(
            str(prepared),
            str(quantized),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_float_nodes(prepared, recipe),
        )
        found, sure = _agreement(detector, _detector(spec, quantized, recipe.width, CHECK_FIND_SCORE), check)
        if found < sure:
            raise UserError(
                f"the int8 copy of {spec.id} found {found} of the {sure} objects the float model is sure "
                "of on the check photos; keeping the float model only"
            )
        quantized.replace(dest)
    return f"int8 copy finds all {sure} sure objects of the float model on the check photos"


def _prepare(source: Path, dest: Path) -> None:
    """Opset >= 13 and onnxruntime's pre-processing (shape inference, folded constants)."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import quant_pre_process

    model = onnx.load(str(source))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        upgraded = Path(tmp) / "upgraded.onnx"
        if opset < MIN_OPSET:
            model = version_converter.convert_version(model, MIN_OPSET)
        onnx.save(model, str(upgraded))
        # Symbolic shape inference wants sympy; the plain ONNX shape inference is enough here.
        quant_pre_process(str(upgraded), str(dest), skip_symbolic_shape=True)


def _float_nodes(model_path: Path, recipe: Int8Recipe) -> list[str]:
    import onnx

    nodes = onnx.load(str(model_path)).graph.node
    tail = recipe.float_tail
    return [
        node.name
        for node in nodes
        if node.name in recipe.float_convs
        or (tail is not None and node.name.startswith(tail) and node.op_type != "Conv")
    ]


def _detector(spec: ModelSpec, path: Path, width: int, threshold: float) -> Any:
    from deid_sidecar.detect import runtime
    from deid_sidecar.detect.detector import OnnxDetector

    return OnnxDetector(spec, runtime.create_session(path, ["cpu"]), threshold, width)


def _tensors(detector: Any, images: Sequence[np.ndarray], width: int) -> Iterator[np.ndarray]:
    for image in images:
        tensor, _meta = detector.adapter.prepare(image, width)
        yield tensor


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over prepared input tensors."""

    def __init__(self, input_name: str, tensors: Iterator[np.ndarray]) -> None:
        self.input_name = input_name
        self._tensors = tensors

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._tensors, None)
        return None if tensor is None else {self.input_name: tensor}


def _agreement(reference: Any, candidate: Any, images: Sequence[np.ndarray]) -> tuple[int, int]:
    """(sure boxes of `reference` that `candidate` finds too, sure boxes of `reference`)."""
    found = sure = 0
    for image in images:
        expected: Detections = reference.detect(image)
        got: Detections = candidate.detect(image)
        sure += len(expected)
        if len(expected) and len(got):
            found += int(np.count_nonzero(iou_matrix(expected.xyxy, got.xyxy).max(axis=1) >= CHECK_MIN_IOU))
    return found, sure
