"""Box geometry on (N, 4) xyxy float arrays: pure numpy, no I/O."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
#: One integer rectangle in frame pixels, (x1, y1, x2, y2), x2 and y2 exclusive.
Rect = tuple[int, int, int, int]


def area(xyxy: FloatArray) -> FloatArray:
    wh = np.clip(xyxy[:, 2:4] - xyxy[:, 0:2], 0, None)
    result: FloatArray = (wh[:, 0] * wh[:, 1]).astype(np.float32)
    return result


def iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """Pairwise IoU, shape (len(a), len(b))."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a)[:, None] + area(b)[None, :] - inter
    result: FloatArray = (inter / np.maximum(union, 1e-9)).astype(np.float32)
    return result


def nms(xyxy: FloatArray, scores: FloatArray, iou_threshold: float) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression; returns kept indices, best score first. No cap on the count."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while len(order):
        best = int(order[0])
        keep.append(best)
        if len(order) == 1:
            break
        overlaps = iou_matrix(xyxy[best : best + 1], xyxy[order[1:]])[0]
        order = order[1:][overlaps <= iou_threshold]
    return np.asarray(keep, np.intp)


def expand(xyxy: FloatArray, margin: float) -> FloatArray:
    """Grow each box by `margin` of its width/height on every side."""
    wh = xyxy[:, 2:4] - xyxy[:, 0:2]
    pad = np.concatenate([wh, wh], axis=1) * np.float32(margin)
    return (xyxy + pad * np.array([-1, -1, 1, 1], np.float32)).astype(np.float32)


def clip(xyxy: FloatArray, width: int, height: int) -> FloatArray:
    limits = np.array([width, height, width, height], np.float32)
    return np.clip(xyxy, 0, limits).astype(np.float32)


def to_int_rects(xyxy: FloatArray, width: int, height: int) -> npt.NDArray[np.int32]:
    """Outward-rounded integer boxes clipped to the frame; never shrinks a box."""
    rounded = np.concatenate([np.floor(xyxy[:, :2]), np.ceil(xyxy[:, 2:])], axis=1)
    return clip(rounded.astype(np.float32), width, height).astype(np.int32)
