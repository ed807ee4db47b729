"""The leak metric on synthetic frames: what counts as leaked and what as anonymized."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import leakmetric

H, W = 360, 640
BOX = [200.0, 100.0, 296.0, 212.0]


def textured_frame(seed: int = 0) -> np.ndarray:
    """A smooth background with a detailed 'face' (multi-scale texture and strong edges) in BOX."""
    rng = np.random.default_rng(seed)
    frame = cv2.resize(
        rng.integers(60, 200, (9, 16, 3), dtype=np.uint8), (W, H), interpolation=cv2.INTER_CUBIC
    )
    x1, y1, x2, y2 = (int(v) for v in BOX)
    noise = rng.normal(128, 50, (y2 - y1, x2 - x1, 3))
    detail = 1.5 * cv2.GaussianBlur(noise, (0, 0), 1.2) + 0.5 * cv2.GaussianBlur(noise, (0, 0), 3) - 128
    frame[y1:y2, x1:x2] = np.clip(detail, 0, 255).astype(np.uint8)
    cv2.circle(frame, (x1 + 30, y1 + 40), 8, (20, 20, 20), -1)
    cv2.circle(frame, (x1 + 66, y1 + 40), 8, (20, 20, 20), -1)
    cv2.line(frame, (x1 + 25, y1 + 85), (x1 + 70, y1 + 85), (240, 240, 240), 4)
    return frame


def codec_noise(image: np.ndarray) -> np.ndarray:
    """Roughly what a good re-encode does to detail of this scale: small noise (measured on the generated
    clips, a crf 23 re-encode keeps 95-100% of the high-pass)."""
    noisy = image.astype(np.float32) + np.random.default_rng(1).normal(0, 2.0, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def region(box: list[float], grow: float = 0.15) -> tuple[slice, slice]:
    x1, y1, x2, y2 = box
    gx, gy = (x2 - x1) * grow, (y2 - y1) * grow
    return slice(int(y1 - gy), int(y2 + gy)), slice(int(x1 - gx), int(x2 + gx))


def blur_box(image: np.ndarray, box: list[float]) -> np.ndarray:
    out = image.copy()
    ys, xs = region(box)
    k = max(3, (xs.stop - xs.start) // 3) | 1
    out[ys, xs] = cv2.blur(cv2.blur(out[ys, xs], (k, k)), (k, k))
    return out


def pixelate_box(image: np.ndarray, box: list[float], blocks: int = 8) -> np.ndarray:
    out = image.copy()
    ys, xs = region(box)
    patch = out[ys, xs]
    small = cv2.resize(patch, (blocks, blocks), interpolation=cv2.INTER_AREA)
    out[ys, xs] = cv2.resize(small, patch.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    return out


def fill_box(image: np.ndarray, box: list[float]) -> np.ndarray:
    out = image.copy()
    out[region(box)] = 0
    return out


def half_mask(image: np.ndarray, box: list[float]) -> np.ndarray:
    left = [box[0], box[1], (box[0] + box[2]) / 2, box[3]]
    masked = blur_box(image, box)
    _, xs = region(left, grow=0.0)
    masked[:, xs.stop :] = image[:, xs.stop :]  # right half and beyond untouched
    return masked


def light_blur(image: np.ndarray, box: list[float]) -> np.ndarray:
    out = image.copy()
    ys, xs = region(box)
    out[ys, xs] = cv2.GaussianBlur(out[ys, xs], (0, 0), 0.8)
    return out


Transform = Callable[[np.ndarray, list[float]], np.ndarray]


@pytest.mark.parametrize(
    ("name", "transform", "leaked"),
    [
        ("untouched", lambda im, b: im.copy(), True),
        ("untouched after re-encode", lambda im, b: codec_noise(im), True),
        ("light blur keeps the face", light_blur, True),
        ("strong blur", blur_box, False),
        ("strong blur after re-encode", lambda im, b: codec_noise(blur_box(im, b)), False),
        ("pixelate 8 blocks", pixelate_box, False),
        ("fill", fill_box, False),
        ("half masked", half_mask, True),
    ],
)
def test_leak_classification(name: str, transform: Transform, leaked: bool) -> None:
    frame = textured_frame()
    assert leakmetric.is_leaked(frame, transform(frame, BOX), BOX) is leaked, name


@pytest.mark.parametrize("size", [20, 30, 40])
def test_small_boxes(size: int) -> None:
    frame = textured_frame(2)
    box = [210.0, 110.0, 210.0 + size, 110.0 + size]  # inside the textured area
    assert leakmetric.is_leaked(frame, codec_noise(frame), box)
    assert not leakmetric.is_leaked(frame, fill_box(frame, box), box)
    assert not leakmetric.is_leaked(frame, blur_box(frame, box), box)


def test_flat_box_has_nothing_to_leak() -> None:
    frame = np.full((H, W, 3), 120, np.uint8)
    assert not leakmetric.is_leaked(frame, frame.copy(), BOX)


def objects(visible: bool = True) -> list[dict[str, object]]:
    return [{"label": "face", "box": BOX, "motion": "walk_across", "id": 0, "visible": visible}]


def test_score_counts_by_label_and_motion_and_skips_hidden() -> None:
    frame = textured_frame()
    score = leakmetric.ClipScore()
    leakmetric.score_frame(score, frame, frame.copy(), objects())
    leakmetric.score_frame(score, frame, fill_box(frame, BOX), objects())
    leakmetric.score_frame(score, frame, frame.copy(), objects(visible=False))
    assert score.by_label["face"].visible == 2
    assert score.by_label["face"].leaked == 1
    assert score.by_motion["walk_across"].rate == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("transform", "low", "high"),
    [
        (lambda im: im.copy(), 0.0, 0.01),
        (lambda im: fill_box(im, BOX), 0.0, 0.5),  # grown-by-15% fill stays inside the 30% allowance
        (lambda im: cv2.blur(im, (41, 41)) // 2, 5.0, 1000.0),  # whole frame masked
    ],
)
def test_over_mask_ratio(transform: Callable[[np.ndarray], np.ndarray], low: float, high: float) -> None:
    frame = textured_frame()
    score = leakmetric.ClipScore()
    leakmetric.score_frame(score, frame, transform(frame), objects())
    assert score.over_mask_ratio is not None
    assert low <= score.over_mask_ratio <= high
