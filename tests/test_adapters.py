"""Adapters decode hand-made raw outputs with known answers; prepare keeps geometry invertible."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deid_sidecar.core.boxes import nms
from deid_sidecar.core.detections import Label
from deid_sidecar.detect.adapters import (
    CenterFaceAdapter,
    Letterbox,
    RetinaPlateAdapter,
    ScrfdAdapter,
    YoloAdapter,
    fit_dynamic,
    fit_fixed,
    retina_priors,
)

IDENTITY = Letterbox(scale=1.0, pad_x=0.0, pad_y=0.0, input_w=64, input_h=64)


def centerface_outputs(h: int, w: int) -> list[np.ndarray]:
    return [
        np.zeros((1, 1, h, w), np.float32),
        np.zeros((1, 2, h, w), np.float32),
        np.zeros((1, 2, h, w), np.float32),
        np.zeros((1, 10, h, w), np.float32),
    ]


def test_centerface_one_peak_gives_one_box_with_landmarks() -> None:
    heat, scale, offset, lms = centerface_outputs(16, 16)
    heat[0, 0, 5, 7] = 0.9  # row 5, col 7 at stride 4
    scale[0, 0, 5, 7] = math.log(40 / 4)  # height 40
    scale[0, 1, 5, 7] = math.log(20 / 4)  # width 20
    offset[0, 0, 5, 7] = 0.25  # y
    lms[0, 0, 5, 7], lms[0, 1, 5, 7] = 0.5, 0.25  # first landmark: y half-way, x a quarter in
    found = CenterFaceAdapter().decode([heat, scale, offset, lms], IDENTITY, threshold=0.5)
    cx, cy = (7 + 0.5) * 4, (5 + 0.25 + 0.5) * 4
    np.testing.assert_allclose(found.xyxy[0], [cx - 10, cy - 20, cx + 10, cy + 20], atol=1e-4)
    np.testing.assert_allclose(found.keypoints[0, 0], [cx - 10 + 5, cy - 20 + 20], atol=1e-4)
    assert found.label.tolist() == [Label.FACE]
    assert found.confidence[0] == pytest.approx(0.9)


def test_centerface_below_threshold_and_neighbours_suppressed() -> None:
    heat, scale, offset, lms = centerface_outputs(16, 16)
    scale[:] = math.log(10)  # 40 px boxes everywhere
    heat[0, 0, 8, 8], heat[0, 0, 8, 9] = 0.8, 0.7  # neighbours: one face
    heat[0, 0, 2, 2] = 0.2  # below threshold
    found = CenterFaceAdapter().decode([heat, scale, offset, lms], IDENTITY, threshold=0.5)
    assert len(found) == 1
    assert found.confidence[0] == pytest.approx(0.8)


def test_letterbox_maps_back_to_image_pixels() -> None:
    meta = Letterbox(scale=0.5, pad_x=10, pad_y=20, input_w=64, input_h=64)
    heat, scale, offset, lms = centerface_outputs(16, 16)
    heat[0, 0, 10, 10] = 0.9
    scale[0, :, 10, 10] = math.log(2)  # 8x8 box
    found = CenterFaceAdapter().decode([heat, scale, offset, lms], meta, 0.5)
    center = (10.5 * 4 - np.array([10, 20])) / 0.5
    np.testing.assert_allclose(found.xyxy[0], [*(center - 8), *(center + 8)], atol=1e-4)


def test_yolo_raw_head() -> None:
    head = np.zeros((1, 5, 6), np.float32)
    head[0, :, 0] = [100, 50, 40, 20, 0.9]
    head[0, :, 1] = [102, 51, 40, 20, 0.8]  # duplicate of the first
    head[0, :, 2] = [300, 200, 10, 10, 0.1]  # below threshold
    found = YoloAdapter().decode([head], IDENTITY, 0.25)
    np.testing.assert_allclose(found.xyxy, [[80, 40, 120, 60]])
    assert found.label.tolist() == [Label.LICENSE_PLATE]
    assert np.isnan(found.keypoints).all()


def test_yolo_class_filter() -> None:
    head = np.zeros((1, 6, 2), np.float32)
    head[0, :, 0] = [10, 10, 4, 4, 0.9, 0.0]  # class 0
    head[0, :, 1] = [50, 50, 4, 4, 0.0, 0.9]  # class 1
    found = YoloAdapter(label=Label.PERSON, classes=(1,)).decode([head], IDENTITY, 0.5)
    np.testing.assert_allclose(found.xyxy, [[48, 48, 52, 52]])


@pytest.mark.parametrize(
    "rows",
    [
        np.array([[[10, 20, 30, 40, 0.9, 0], [0, 0, 5, 5, 0.1, 0]] + [[0, 0, 0, 0, 0, 0]] * 6], np.float32),
        np.array([[0, 10, 20, 30, 40, 0, 0.9], [0, 0, 0, 5, 5, 0, 0.1]], np.float32),
    ],
    ids=["1xNx6", "Nx7"],
)
def test_yolo_end_to_end_layouts(rows: np.ndarray) -> None:
    found = YoloAdapter().decode([rows], IDENTITY, 0.5)
    np.testing.assert_allclose(found.xyxy, [[10, 20, 30, 40]])


def test_yolo_prepare_letterboxes_grey_and_centred() -> None:
    image = np.full((100, 200, 3), 255, np.uint8)
    tensor, meta = YoloAdapter(fixed_size=(64, 64)).prepare(image, 640)
    assert tensor.shape == (1, 3, 64, 64)
    assert meta.scale == pytest.approx(64 / 200)
    assert tensor[0, 0, 0, 0] == pytest.approx(114 / 255)
    assert tensor[0, 0, 32, 32] == pytest.approx(1.0)
    np.testing.assert_allclose(
        meta.boxes_to_image(np.array([[0, meta.pad_y, 64, 64 - meta.pad_y]], np.float32)),
        [[0, 0, 200, 100]],
        atol=2,
    )


def test_fit_dynamic_pads_to_multiples_of_32() -> None:
    canvas, meta = fit_dynamic(np.zeros((360, 640, 3), np.uint8), 640, 0, center=False)
    assert canvas.shape == (384, 640, 3)
    assert (meta.input_w, meta.input_h, meta.scale) == (640, 384, 1.0)
    canvas, meta = fit_fixed(np.zeros((360, 640, 3), np.uint8), (320, 320), 0, center=True)
    assert canvas.shape == (320, 320, 3) and meta.pad_y == 70


def test_scrfd_one_anchor() -> None:
    meta = Letterbox(1.0, 0.0, 0.0, input_w=64, input_h=32)
    strides = (8, 16, 32)
    counts = [(32 // s) * (64 // s) * 2 for s in strides]
    scores = [np.zeros((n, 1), np.float32) for n in counts]
    boxes = [np.zeros((n, 4), np.float32) for n in counts]
    kps = [np.zeros((n, 10), np.float32) for n in counts]
    # stride 8 grid is 4 rows x 8 cols; cell (row 1, col 3), second anchor -> index (1*8+3)*2+1
    index = (1 * 8 + 3) * 2 + 1
    scores[0][index] = 0.95
    boxes[0][index] = [1, 1, 2, 2]  # l, t, r, b in strides
    kps[0][index, :2] = [0.5, -0.5]
    found = ScrfdAdapter().decode([*scores, *boxes, *kps], meta, 0.5)
    cx, cy = 3 * 8, 1 * 8
    np.testing.assert_allclose(found.xyxy, [[cx - 8, cy - 8, cx + 16, cy + 16]])
    np.testing.assert_allclose(found.keypoints[0, 0], [cx + 4, cy - 4])


def test_scrfd_without_keypoints_and_wrong_grid() -> None:
    meta = Letterbox(1.0, 0.0, 0.0, input_w=32, input_h=32)
    counts = [(32 // s) ** 2 * 2 for s in (8, 16, 32)]
    outputs = [np.zeros((n, 1), np.float32) for n in counts] + [np.zeros((n, 4), np.float32) for n in counts]
    assert len(ScrfdAdapter().decode(outputs, meta, 0.5)) == 0
    with pytest.raises(ValueError, match="grid"):
        ScrfdAdapter().decode(outputs, Letterbox(1.0, 0, 0, input_w=64, input_h=32), 0.5)


def test_retina_priors_layout() -> None:
    priors = retina_priors(64, 64)
    assert len(priors) == (8 * 8 + 4 * 4 + 2 * 2) * 2
    np.testing.assert_allclose(priors[:2], [[4, 4, 24, 24], [4, 4, 48, 48]])
    np.testing.assert_allclose(priors[2], [12, 4, 24, 24])


def test_retina_plate_zero_offsets_give_the_prior_and_corners() -> None:
    meta = Letterbox(1.0, 0.0, 0.0, input_w=64, input_h=64)
    n = len(retina_priors(64, 64))
    loc = np.zeros((1, n, 4), np.float32)
    conf = np.zeros((1, n, 2), np.float32)
    landms = np.zeros((1, n, 8), np.float32)
    conf[0, 0, 1] = 0.9
    landms[0, 0, :2] = [-5, 0]  # first corner: 5 * 0.1 * 24 = 12 px left of the centre
    found = RetinaPlateAdapter().decode([loc, conf, landms], meta, 0.5)
    np.testing.assert_allclose(found.xyxy, [[-8, -8, 16, 16]])  # the 24 px prior at (4, 4); detectors clip
    np.testing.assert_allclose(found.keypoints[0, 2], [4 - 12, 4])  # the model's first corner is bottom-right
    assert np.isnan(found.keypoints[0, 4]).all()


def test_nms_keeps_best_and_distinct_without_a_cap() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.5, 0.9, 0.7], np.float32), 0.4).tolist() == [1, 2]
    many = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(500)], np.float32)
    assert len(nms(many, np.ones(500, np.float32), 0.3)) == 500
