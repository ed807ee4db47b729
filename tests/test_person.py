"""Person detection: the TF Object Detection API adapter on hand-made outputs, then the real
`ssdlite-person` model (converted from TF at fetch time) on the vtest.avi surveillance clip."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from deid_sidecar.config import parse_config
from deid_sidecar.core.detections import Label
from deid_sidecar.detect.adapters import Letterbox, TfObjectDetectionAdapter
from deid_sidecar.detect.base import Image
from deid_sidecar.detect.detector import MultiDetector, build_detector, make_adapter
from deid_sidecar.models import fetch, registry
from deid_sidecar.models.registry import Conversion, get_model

#: vtest.avi's frame size; the normalized boxes below are scaled by it.
FRAME = Letterbox(scale=1.0, pad_x=0.0, pad_y=0.0, input_w=768, input_h=576)


def tf_outputs(
    rows: list[tuple[float, float, float, float, float, int]], slots: int = 10
) -> list[np.ndarray]:
    """(ymin, xmin, ymax, xmax, score, class) rows padded to `slots` like the graph's fixed-size output."""
    boxes = np.zeros((1, slots, 4), np.float32)
    scores = np.zeros((1, slots), np.float32)
    classes = np.zeros((1, slots), np.float32)
    for i, (*box, score, cls) in enumerate(rows):
        boxes[0, i], scores[0, i], classes[0, i] = box, score, cls
    return [boxes, scores, classes, np.array([len(rows)], np.float32)]


def test_decode_scales_normalized_boxes_to_the_frame() -> None:
    outputs = tf_outputs([(0.25, 0.5, 0.75, 0.625, 0.9, 1), (0.1, 0.1, 0.2, 0.2, 0.2, 1)])
    found = TfObjectDetectionAdapter().decode(outputs, FRAME, 0.3)
    np.testing.assert_allclose(found.xyxy, [[384, 144, 480, 432]])
    np.testing.assert_allclose(found.confidence, [0.9])
    assert (found.label == Label.PERSON).all()
    assert np.isnan(found.keypoints).all()


def test_decode_keeps_only_person_and_counted_rows() -> None:
    outputs = tf_outputs([(0.1, 0.1, 0.5, 0.2, 0.8, 1), (0.1, 0.5, 0.5, 0.6, 0.9, 3)])
    # A confident row past num_detections is padding and must not count.
    outputs[1][0, 5] = 0.99
    outputs[2][0, 5] = 1
    outputs[0][0, 5] = (0.6, 0.6, 0.9, 0.7)
    found = TfObjectDetectionAdapter().decode(outputs, FRAME, 0.3)
    assert len(found) == 1 and found.confidence[0] == pytest.approx(0.8)
    assert len(TfObjectDetectionAdapter(classes=None).decode(outputs, FRAME, 0.3)) == 2
    assert len(TfObjectDetectionAdapter().decode(tf_outputs([]), FRAME, 0.3)) == 0


def test_decode_rejects_other_layouts() -> None:
    with pytest.raises(ValueError, match="unexpected shapes"):
        TfObjectDetectionAdapter().decode([np.zeros((1, 10, 6), np.float32)] * 4, FRAME, 0.3)


def test_prepare_stretches_to_uint8_rgb_300() -> None:
    image = np.zeros((576, 768, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    tensor, meta = TfObjectDetectionAdapter().prepare(image, 640)
    assert tensor.shape == (1, 300, 300, 3) and tensor.dtype == np.uint8
    assert (tensor[0, :, :, 2] == 255).all() and (tensor[0, :, :, 0] == 0).all()
    assert (meta.input_w, meta.input_h, meta.scale) == (768, 576, 1.0)


def test_registry_and_adapter_registration() -> None:
    spec = get_model("ssdlite-person")
    assert spec.task is Label.PERSON and spec.conversion is Conversion.TF_DETECTION
    assert parse_config({}).detection.person.model == spec.id
    session = SimpleNamespace(get_inputs=lambda: [SimpleNamespace(shape=["n", "h", "w", 3])])
    assert isinstance(make_adapter(spec, session), TfObjectDetectionAdapter)


# --- the real model ---


@pytest.fixture(scope="module")
def person_models_dir(models_dir: Path) -> Path:
    # Not a default model: fetching it converts the TF graph (a few minutes once, then cached).
    fetch.fetch_models(["ssdlite-person"], models_dir)
    return models_dir


def vtest_frames(media_dir: Path, indices: set[int]) -> dict[int, Image]:
    frames: dict[int, Image] = {}
    with av.open(str(media_dir / registry.MEDIA["vtest"].filename)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in indices:
                frames[i] = frame.to_ndarray(format="bgr24")
            if i >= max(indices):
                break
    return frames


def person_detector(models_dir: Path) -> MultiDetector:
    """The person detector as a config enables it (threshold 0.3, the default)."""
    config = parse_config(
        {
            "models_dir": str(models_dir),
            "detection": {
                "providers": ["cpu"],
                "person": {"model": "ssdlite-person", "enabled": True, "threshold": 0.3},
            },
        }
    )
    return build_detector(config, {Label.PERSON})


@pytest.mark.slow
def test_finds_pedestrians_in_vtest(person_models_dir: Path, media_dir: Path) -> None:
    detector = person_detector(person_models_dir)
    frames = vtest_frames(media_dir, {0, 100, 200, 300, 400})
    counts: dict[int, int] = {}
    for index, frame in frames.items():
        found = detector.detect(frame)
        counts[index] = len(found)
        assert (found.label == Label.PERSON).all()
        widths = found.xyxy[:, 2] - found.xyxy[:, 0]
        heights = found.xyxy[:, 3] - found.xyxy[:, 1]
        # Pedestrians seen from an elevated camera: upright boxes, 30-200 px tall in a 576-px frame.
        assert ((heights > widths) & (heights > 30) & (heights < 200)).all(), (index, found.xyxy)
    # About 26 people walk through these five frames; the model finds most (6 on frame 100).
    assert counts[100] >= 3
    assert sum(counts.values()) >= 16, counts


@pytest.mark.slow
def test_nothing_on_a_plain_grey_frame(person_models_dir: Path) -> None:
    detector = person_detector(person_models_dir)
    assert len(detector.detect(np.full((576, 768, 3), 128, np.uint8))) == 0
