"""int8 copies of the detectors: made by `models fetch`, checked against the float model before they
are installed, and run where `detection.precision` says (auto: live cameras on the CPU)."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from deid_sidecar.config import DetectionConfig, DetectorConfig
from deid_sidecar.core.boxes import iou_matrix
from deid_sidecar.core.detections import Label
from deid_sidecar.detect import runtime
from deid_sidecar.detect.detector import OnnxDetector, load_detector, uses_int8
from deid_sidecar.errors import ConfigError, ModelMissingError, UserError
from deid_sidecar.models import fetch, quantize, registry

CENTERFACE = registry.MODELS["centerface"]
PLATE_YOLO = registry.MODELS["yolov8n-plate"]


def float_and_int8(
    label: Label, settings: DetectorConfig, models_dir: Path
) -> tuple[OnnxDetector, OnnxDetector]:
    return (
        load_detector(label, settings, models_dir, ["cpu"], 1),
        load_detector(label, settings, models_dir, ["cpu"], 1, int8=True),
    )


def test_the_int8_face_model_finds_the_faces_the_float_one_finds(models_dir: Path, media_dir: Path) -> None:
    group = cv2.imread(str(media_dir / "t1.jpg"))
    reference, candidate = float_and_int8(Label.FACE, DetectionConfig().face, models_dir)
    expected, found = reference.detect(group), candidate.detect(group)
    assert len(expected) == 6  # the six people of the group photo
    assert len(found) == 6
    assert iou_matrix(expected.xyxy, found.xyxy).max(axis=1).min() >= 0.7
    assert np.abs(np.sort(expected.confidence) - np.sort(found.confidence)).max() < 0.1


def test_the_int8_plate_model_finds_the_plate_the_float_one_finds(models_dir: Path, media_dir: Path) -> None:
    car = cv2.imread(str(media_dir / "test_image.png"))
    reference, candidate = float_and_int8(Label.LICENSE_PLATE, DetectionConfig().license_plate, models_dir)
    expected, found = reference.detect(car), candidate.detect(car)
    sure = expected[expected.confidence >= 0.5]
    assert len(sure) == 1
    assert iou_matrix(sure.xyxy, found.xyxy).max() >= 0.7


def test_a_quantization_that_loses_objects_is_refused_and_installs_nothing(
    models_dir: Path, media_dir: Path, tmp_path: Path
) -> None:
    # The plate YOLO quantized whole, its box decoding included: one 8-bit scale for pixel
    # coordinates and 0..1 scores wipes the scores out (what the recipe's float tail avoids).
    whole = dataclasses.replace(PLATE_YOLO, int8=registry.Int8Recipe(width=640))
    calibration = [
        *quantize.read_media(media_dir / "car_image.webp"),
        *quantize.read_media(media_dir / "alpr.gif"),
    ]
    check = quantize.read_media(media_dir / "test_image.png")
    dest = tmp_path / PLATE_YOLO.int8_filename
    with pytest.raises(UserError, match=r"int8 copy of yolov8n-plate found 0 of the 1 objects"):
        quantize.quantize_model(whole, models_dir / PLATE_YOLO.filename, dest, calibration, check)
    assert list(tmp_path.iterdir()) == []  # no copy, no scratch files left


def test_the_int8_copy_is_made_again_when_the_float_model_is_newer(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    made: list[Path] = []

    def fake_quantize(spec: registry.ModelSpec, source: Path, dest: Path, *_: object) -> str:
        made.append(dest)
        dest.write_bytes(b"int8")
        return "checked"

    monkeypatch.setattr(quantize, "quantize_model", fake_quantize)
    monkeypatch.setattr(quantize, "read_media", lambda path: [])
    monkeypatch.setattr(fetch, "_media", lambda media_id, cache: Path(media_id))
    shutil.copy(models_dir / CENTERFACE.filename, tmp_path / CENTERFACE.filename)

    fetch.fetch_models(["centerface"], tmp_path)
    fetch.fetch_models(["centerface"], tmp_path)
    copy = tmp_path / CENTERFACE.int8_filename
    later = copy.stat().st_mtime + 10
    os.utime(tmp_path / CENTERFACE.filename, (later, later))  # the float model fetched again
    fetch.fetch_models(["centerface"], tmp_path)

    assert made == [copy, copy]
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [
        "centerface: ok (cached)",
        lines[1],
        "centerface: ok (cached)",
        "centerface int8: ok (cached)",
    ]
    assert lines[1].startswith("centerface int8: made in") and lines[1].endswith("(checked)")


def test_auto_precision_is_int8_for_live_cameras_on_the_cpu_only(
    models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    auto = DetectionConfig()
    assert auto.precision == "auto"
    assert uses_int8(auto, CENTERFACE, models_dir, file_mode=False)
    assert not uses_int8(auto, CENTERFACE, models_dir, file_mode=True)  # files have no frame budget
    assert not uses_int8(DetectionConfig(precision="float"), CENTERFACE, models_dir, file_mode=False)
    assert uses_int8(DetectionConfig(precision="int8"), CENTERFACE, models_dir, file_mode=True)
    assert not uses_int8(auto, registry.MODELS["retina-plate"], models_dir, file_mode=False)  # no recipe

    # A models folder fetched before int8 copies existed still runs, on the float model, and says how.
    (tmp_path / CENTERFACE.filename).write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert not uses_int8(auto, CENTERFACE, tmp_path, file_mode=False)
    assert "deid-sidecar models fetch centerface" in caplog.text

    # On a GPU the float model: int8 there is not measured.
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: gpu)
    assert not uses_int8(auto, CENTERFACE, models_dir, file_mode=False)


def test_int8_precision_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match=r"int8 copy of 'centerface' .* models fetch centerface"):
        registry.model_path(tmp_path, "centerface", int8=True)
    with pytest.raises(ConfigError, match="'retina-plate' has no int8 copy"):
        registry.model_path(tmp_path, "retina-plate", int8=True)
