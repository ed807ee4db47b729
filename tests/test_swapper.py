"""`anonymize.replace_swapper`: a face-swap ONNX model the user supplies paints the faces, behind the same
blend and leak guard as the k-Same faces. Small stand-in models, built here with onnx.helper, take the
place of a real inswapper: one paints a flat colour chosen by the identity latent, one echoes the
original face back (the worst a swapper can do), one has the wrong inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deid_sidecar.anonymize.masks import Anonymizer, ReplacingAnonymizer
from deid_sidecar.config import AnonymizeConfig, Method, parse_config, preflight
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.detect.detector import MultiDetector, build_detector
from deid_sidecar.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import leakmetric

SIZE, LATENT = 128, 16


def _model(path: Path, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> Path:
    graph = helper.make_graph(
        nodes,
        "stand-in",
        [
            helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, SIZE, SIZE]),
            helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, LATENT]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def flat_colour_swapper(path: Path) -> Path:
    """output = sigmoid(source @ W) as one RGB colour over the whole face: the identity picks the colour."""
    weights = np.random.default_rng(1).standard_normal((LATENT, 3)).astype(np.float32) * 3
    nodes = [
        helper.make_node("MatMul", ["source", "W"], ["rgb"]),
        helper.make_node("Sigmoid", ["rgb"], ["colour"]),
        helper.make_node("Reshape", ["colour", "shape"], ["colour4"]),
        helper.make_node("Mul", ["target", "zero"], ["blank"]),
        helper.make_node("Add", ["blank", "colour4"], ["output"]),
    ]
    initializers = [
        helper.make_tensor("W", TensorProto.FLOAT, [LATENT, 3], weights.ravel().tolist()),
        helper.make_tensor("shape", TensorProto.INT64, [4], [1, 3, 1, 1]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
    ]
    return _model(path, nodes, initializers)


def echo_swapper(path: Path) -> Path:
    """output = target: the original face handed straight back."""
    return _model(path, [helper.make_node("Identity", ["target"], ["output"])], [])


@pytest.fixture(scope="module")
def faces(media_dir: Path, models_dir: Path) -> tuple[np.ndarray, Detections]:
    config = parse_config({"models_dir": str(models_dir), "detection": {"providers": ["cpu"]}})
    detector: MultiDetector = build_detector(config, {Label.FACE})
    image = cv2.imread(str(media_dir / "t1.jpg"))
    found = detector.detect(image)
    assert len(found) >= 2
    return image, found.with_track_ids(np.arange(1, len(found) + 1, dtype=np.int64))


def _replacer(model: Path) -> ReplacingAnonymizer:
    config = AnonymizeConfig(method=Method.REPLACE, replace_swapper=str(model))
    anonymizer = Anonymizer.from_config(config)
    assert isinstance(anonymizer, ReplacingAnonymizer)
    return anonymizer


def _centre(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    cx, cy, r = int((x1 + x2) / 2), int((y1 + y2) / 2), max(2, int((x2 - x1) / 10))
    return np.asarray(image[cy - r : cy + r, cx - r : cx + r].reshape(-1, 3).mean(axis=0))


def test_the_swapper_paints_each_track_with_its_own_anonymous_face(
    tmp_path: Path, faces: tuple[np.ndarray, Detections]
) -> None:
    image, found = faces
    anonymizer = _replacer(flat_colour_swapper(tmp_path / "flat.onnx"))
    out = anonymizer.apply(image.copy(), found)
    assert anonymizer.counters.faces_replaced == len(found)
    swapper = anonymizer.faces.painter
    assert swapper is not None
    colours = []
    for row, box in enumerate(found.xyxy):
        identity = anonymizer.faces.source_for(int(found.track_id[row]), row)
        latent = swapper.latents[identity % len(swapper.latents)]  # type: ignore[attr-defined]
        rgb = 1 / (1 + np.exp(-(latent @ np.random.default_rng(1).standard_normal((LATENT, 3)) * 3)))
        expected_bgr = (rgb[::-1] * 255).astype(np.float32)
        colours.append(tuple(np.round(expected_bgr)))
        assert np.abs(_centre(out, box) - expected_bgr).max() < 12, "the face is not the swapper's"
        assert not leakmetric.is_leaked(image, out, list(map(float, box)))
    assert len(set(colours)) == len(colours), "two tracks wear the same anonymous face"


def test_a_swapper_that_echoes_the_original_face_still_leaks_nothing(
    tmp_path: Path, faces: tuple[np.ndarray, Detections]
) -> None:
    image, found = faces
    anonymizer = _replacer(echo_swapper(tmp_path / "echo.onnx"))
    out = anonymizer.apply(image.copy(), found)
    assert anonymizer.counters.faces_replaced == len(found)
    for box in found.xyxy:
        assert not leakmetric.is_leaked(image, out, list(map(float, box))), f"original detail left at {box}"


def test_a_model_without_the_swapper_inputs_is_a_config_error(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["output"])],
        "wrong",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(wrong))
    with pytest.raises(ConfigError, match=r"anonymize.replace_swapper: wrong.onnx expects inputs 'target'"):
        _replacer(wrong)


def test_a_missing_swapper_file_is_named_by_the_config_check(tmp_path: Path) -> None:
    config = parse_config(
        {"anonymize": {"method": "replace", "replace_swapper": str(tmp_path / "nothing.onnx")}}
    )
    with pytest.raises(ConfigError, match=r"anonymize.replace_swapper: file .*nothing.onnx does not exist"):
        preflight(config)
