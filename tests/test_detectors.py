"""Real models on real media (fetched by the session fixtures; nothing is skipped)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from deid_sidecar.config import parse_config
from deid_sidecar.core.boxes import iou_matrix
from deid_sidecar.core.detections import Label
from deid_sidecar.detect import runtime
from deid_sidecar.detect.base import Image
from deid_sidecar.detect.detector import MultiDetector, OnnxDetector, build_detector
from deid_sidecar.errors import ConfigError, ModelMissingError, UserError
from deid_sidecar.models.registry import get_model, model_path

#: The Czech plate in fast-alpr's test_image.png, read off a zoomed crop once.
CAR_PLATE_BOX = np.array([[306, 190, 388, 211]], np.float32)


def load(media_dir: Path, name: str) -> Image:
    image = cv2.imread(str(media_dir / name))
    assert image is not None, name
    return image


def detector(models_dir: Path, model_id: str, threshold: float, input_width: int = 640) -> OnnxDetector:
    session = runtime.shared_session(model_path(models_dir, model_id), ["cpu"], 0)
    return OnnxDetector(get_model(model_id), session, threshold, input_width)


def test_centerface_finds_all_six_faces_in_the_group_photo(models_dir: Path, media_dir: Path) -> None:
    image = load(media_dir, "t1.jpg")
    faces = detector(models_dir, "centerface", 0.5).detect(image)
    assert len(faces) == 6
    widths = faces.xyxy[:, 2] - faces.xyxy[:, 0]
    heights = faces.xyxy[:, 3] - faces.xyxy[:, 1]
    assert ((widths > 60) & (widths < 160) & (heights > 80) & (heights < 200)).all()
    assert (faces.label == Label.FACE).all()
    # Eyes (first two landmarks) lie inside their face box.
    eyes = faces.keypoints[:, :2]
    assert ((eyes[..., 0] > faces.xyxy[:, None, 0]) & (eyes[..., 0] < faces.xyxy[:, None, 2])).all()


def test_centerface_finds_the_astronaut_and_nothing_on_grey(models_dir: Path, media_dir: Path) -> None:
    face_detector = detector(models_dir, "centerface", 0.5)
    faces = face_detector.detect(load(media_dir, "astronaut.png"))
    assert len(faces) == 1
    x1, y1, x2, y2 = faces.xyxy[0]
    assert 150 < x1 < 220 and 40 < y1 < 100 and 240 < x2 < 300 and 150 < y2 < 210
    assert len(face_detector.detect(np.full((480, 640, 3), 128, np.uint8))) == 0


@pytest.mark.parametrize(("model_id", "threshold"), [("yolov8n-plate", 0.25), ("retina-plate", 0.5)])
def test_plate_detectors_find_the_plate(
    models_dir: Path, media_dir: Path, model_id: str, threshold: float
) -> None:
    plates = detector(models_dir, model_id, threshold).detect(load(media_dir, "test_image.png"))
    assert len(plates) >= 1
    assert iou_matrix(CAR_PLATE_BOX, plates.xyxy).max() > 0.5
    assert (plates.label == Label.LICENSE_PLATE).all()


def test_retina_plate_gives_corners(models_dir: Path, media_dir: Path) -> None:
    plates = detector(models_dir, "retina-plate", 0.5).detect(load(media_dir, "test_image.png"))
    corners = plates.keypoints[0, :4]
    assert not np.isnan(corners).any() and np.isnan(plates.keypoints[0, 4]).all()
    box = plates.xyxy[0]
    assert (corners[:, 0] > box[0] - 8).all() and (corners[:, 0] < box[2] + 8).all()
    top_left, top_right, bottom_right, bottom_left = corners
    assert top_left[0] < top_right[0] and top_left[1] < bottom_left[1] and bottom_right[1] > top_right[1]


@pytest.mark.parametrize("name", ["astronaut.png", "t1.jpg", "messi5.jpg"])
def test_plate_detector_false_boxes_are_rare(models_dir: Path, media_dir: Path, name: str) -> None:
    plates = detector(models_dir, "yolov8n-plate", 0.25).detect(load(media_dir, name))
    assert len(plates) <= 1


def test_build_detector_from_config_merges_labels(models_dir: Path, media_dir: Path) -> None:
    config = parse_config({"models_dir": str(models_dir), "detection": {"providers": ["cpu"]}})
    multi = build_detector(config, {Label.FACE, Label.LICENSE_PLATE})
    assert isinstance(multi, MultiDetector) and multi.labels == {Label.FACE, Label.LICENSE_PLATE}
    found = multi.detect(load(media_dir, "test_image.png"))
    assert found.counts()[Label.LICENSE_PLATE] >= 1
    assert set(multi.last_inference_ms()) == {"centerface", "yolov8n-plate"}
    assert all(ms > 0 for ms in multi.last_inference_ms().values())


def test_build_detector_errors(tmp_path: Path) -> None:
    empty = parse_config({"models_dir": str(tmp_path)})
    with pytest.raises(ModelMissingError, match="deid-sidecar models fetch centerface"):
        build_detector(empty, {Label.FACE})
    with pytest.raises(ConfigError, match=r"detection\.person\.enabled"):
        build_detector(empty, {Label.PERSON})
    wrong = parse_config({"models_dir": str(tmp_path), "detection": {"face": {"model": "retina-plate"}}})
    with pytest.raises(ConfigError, match="detects license_plate"):
        build_detector(wrong, {Label.FACE})


def test_sessions_are_shared_and_providers_explicit(models_dir: Path) -> None:
    path = model_path(models_dir, "centerface")
    assert runtime.shared_session(path, ["cpu"], 1) is runtime.shared_session(path, ["cpu"], 1)
    assert runtime.resolve_providers(
        ["tensorrt", "cuda", "cpu"], ["AzureExecutionProvider", "CPUExecutionProvider"]
    ) == ["CPUExecutionProvider"]
    assert runtime.resolve_providers(["cuda"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(UserError, match="cannot load model"):
        runtime.create_session(models_dir / "README.md", ["cpu"])


def test_openvino_is_used_where_installed_and_skipped_for_the_cpu_elsewhere(models_dir: Path) -> None:
    """The `openvino` extra (onnxruntime-openvino) is measured by bench/openvino_check.py; here, with
    plain onnxruntime, a config that prefers it runs on the CPU, and an NVIDIA batch is not assumed."""
    assert runtime.resolve_providers(
        ["openvino", "cpu"], ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    ) == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    session = runtime.create_session(model_path(models_dir, "centerface"), ["openvino", "cpu"], 1)
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert runtime.openvino_device() == "CPU"
    assert not runtime.uses_gpu(["openvino", "cpu"])


def test_file_mode_runs_plates_on_every_other_pass(models_dir: Path, media_dir: Path) -> None:
    detector = build_detector(
        parse_config({"models_dir": str(models_dir)}), {Label.FACE, Label.LICENSE_PLATE}, file_mode=True
    )
    image = cv2.imread(str(media_dir / "test_image.png"))
    passes = [detector.detect(image).counts()[Label.LICENSE_PLATE] for _ in range(4)]
    assert [n > 0 for n in passes] == [True, False, True, False]
    face = next(d for d in detector.detectors if d.adapter.label is Label.FACE)
    assert face.input_width == 960, "file mode detects faces at file_input_width"
