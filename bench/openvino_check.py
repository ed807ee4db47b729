"""onnxruntime's OpenVINO execution provider against its CPU provider, with the project's models.

    .venv/bin/python bench/openvino_check.py [--frames 40]

OpenVINO is the runtime of Intel's iGPUs, which most small NVRs have. PyPI's `onnxruntime-openvino`
must never be installed beside another onnxruntime flavour (they share files), so this builds its
own venv under bench/out/venv-openvino (the pinned wheel, the project's other dependencies and the
project itself, editable) and runs there. On THIS machine there is no Intel GPU: OpenVINO runs on
the CPU, which says whether the provider gives the same detections and what it costs, not what an
iGPU would do.

It reports, per model (CenterFace at 960 px, the plate YOLO at 640 px) on real 720p frames of the
leak benchmark's clips: the share of the CPU provider's detections that OpenVINO also finds (same
label, IoU >= 0.5) and the largest confidence difference, the median time of a whole frame, and the
time of a first run at a new input size (region passes bring many sizes; OpenVINO compiles each).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "bench" / "out" / "venv-openvino"
WHEEL = "onnxruntime-openvino==1.24.1"
OTHER_DEPS = ["av>=14,<19", "numpy>=1.26", "opencv-python-headless>=4.9,<5", "pydantic>=2.7,<3", "PyYAML>=6"]
DEPS_MORE = ["aiohttp>=3.9,<4", "paho-mqtt>=2.0,<3", "onnx>=1.16"]
CLIPS = ["walk_across_s0_120f.mp4", "approach_s0_120f.mp4", "plate_on_car_s0_120f.mp4"]
MODELS = [("face", "centerface", 960), ("license_plate", "yolov8n-plate", 640)]
#: Region sizes a pass might bring (model input pixels), each new to the session.
NEW_SIZES = [(96, 96), (160, 128), (224, 192), (320, 256)]


def build_venv() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / "ok").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "pip"), "install", "-q"]
        subprocess.run([*pip, WHEEL, *OTHER_DEPS, *DEPS_MORE], check=True)
        subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
        (VENV / "ok").write_text(WHEEL)
    return python


def frames(count: int) -> list[object]:
    import av

    clips = ROOT / "bench" / "out" / "clips"
    per_clip = max(1, count // len(CLIPS))
    out = []
    for name in CLIPS:
        with av.open(str(clips / name)) as container:
            decoded = container.decode(video=0)
            out += [f.to_ndarray(format="bgr24") for f in itertools.islice(decoded, 0, per_clip * 3, 3)]
    return out


def matched(reference: object, other: object) -> tuple[int, int, float]:
    """(reference detections, those the other run found too, largest confidence difference)."""
    from deid_sidecar.core.boxes import iou_matrix
    from deid_sidecar.core.detections import Detections

    assert isinstance(reference, Detections) and isinstance(other, Detections)
    if not len(reference):
        return 0, 0, 0.0
    if not len(other):
        return len(reference), 0, 1.0
    ious = iou_matrix(reference.xyxy, other.xyxy)
    best = ious.argmax(axis=1)
    hits = [i for i in range(len(reference)) if ious[i, best[i]] >= 0.5]
    diff = max((abs(float(reference.confidence[i] - other.confidence[best[i]])) for i in hits), default=0.0)
    return len(reference), len(hits), diff


def inside(count: int) -> int:
    import numpy as np
    import onnxruntime as ort

    from deid_sidecar.config import DetectorConfig
    from deid_sidecar.core.detections import Label
    from deid_sidecar.detect.detector import load_detector

    print("onnxruntime", ort.__version__, "providers", ort.get_available_providers())
    images = frames(count)
    models = ROOT / "models"
    print(
        "| model | CPU detections | found by OpenVINO too | max confidence diff | CPU ms/frame | OpenVINO ms/frame | OpenVINO first run at a new size (ms) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key, model, width in MODELS:
        label = Label[key.upper()]
        settings = DetectorConfig(model=model, threshold=0.5 if key == "face" else 0.2)
        cpu = load_detector(label, settings, models, ["cpu"], 0, width)
        ov = load_detector(label, settings, models, ["openvino", "cpu"], 0, width)
        if "OpenVINOExecutionProvider" not in ov.session.get_providers():
            raise RuntimeError("the OpenVINO provider was not used")
        seen = found = 0
        worst = 0.0
        times: dict[str, list[float]] = {"cpu": [], "ov": []}
        for image in images:
            results = {}
            for name, detector in (("cpu", cpu), ("ov", ov)):
                started = time.perf_counter()
                results[name] = detector.detect(image)
                times[name].append((time.perf_counter() - started) * 1000)
            n, hit, diff = matched(results["cpu"], results["ov"])
            seen, found, worst = seen + n, found + hit, max(worst, diff)
        first = []
        for w, h in NEW_SIZES:
            started = time.perf_counter()
            ov.detect(np.zeros((h * 4 // 3, w * 4 // 3, 3), np.uint8))
            first.append((time.perf_counter() - started) * 1000)
        share = f"{found}/{seen} ({100 * found / max(seen, 1):.0f}%)"
        print(
            f"| {model} @ {width} | {seen} | {share} | {worst:.3f} | {statistics.median(times['cpu']):.1f} "
            f"| {statistics.median(times['ov']):.1f} | {statistics.median(first):.0f} |"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        return inside(args.frames)
    python = build_venv()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [str(python), __file__, "--inside", "--frames", str(args.frames)], env=env
    ).returncode


if __name__ == "__main__":
    sys.exit(main())
