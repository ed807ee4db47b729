"""The int8 copies against the float models on the leak benchmark's clips: what each finds, and how fast.

    .venv/bin/python bench/int8_check.py [--every 2] [--seeds 0]

Each model runs as live detection runs it (OnnxDetector at its default threshold and live input
width, the face model with its zoomed second look; one inference thread) on every `--every`-th
frame of leakgen's clips. Per model: the share of visible ground-truth objects found (a box with
IoU >= 0.3, or one holding the object's centre), boxes matching no ground truth (the clips' background
video has real people whose faces are found too), and the median ms per frame. The int8 copies
come from `deid-sidecar models fetch` (deid_sidecar/models/quantize.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import leakgen
import leakmetric

from deid_sidecar.config import DetectionConfig, DetectorConfig
from deid_sidecar.core.boxes import iou_matrix
from deid_sidecar.core.detections import Label
from deid_sidecar.detect.detector import OnnxDetector, load_detector

ROOT = Path(__file__).resolve().parents[1]
FACE_MOTIONS = ["walk_across", "approach", "pop_in", "edge_in", "fast", "occlusion", "small"]
MATCH_IOU = 0.3


@dataclass
class Tally:
    found: int = 0
    visible: int = 0
    unmatched_boxes: int = 0
    ms: list[float] = field(default_factory=list)

    def row(self, name: str) -> str:
        share = self.found / max(1, self.visible)
        return (
            f"| {name} | {self.found}/{self.visible} ({100 * share:.1f} %) | {self.unmatched_boxes} "
            f"| {statistics.median(self.ms):.1f} ms |"
        )


def score(detector: OnnxDetector, frame: np.ndarray, truth: list[dict[str, object]], tally: Tally) -> None:
    key = "face" if detector.adapter.label is Label.FACE else "license_plate"
    boxes = np.array([o["box"] for o in truth if o["label"] == key and o["visible"]], np.float32)
    started = time.perf_counter()
    found = detector.detect(frame)
    tally.ms.append((time.perf_counter() - started) * 1000)
    tally.visible += len(boxes)
    if not len(boxes):
        tally.unmatched_boxes += len(found)
        return
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for box, centre in zip(boxes, centres, strict=True):
        inside = (found.xyxy[:, :2] <= centre).all(axis=1) & (found.xyxy[:, 2:] >= centre).all(axis=1)
        overlap = iou_matrix(box[None], found.xyxy)[0] >= MATCH_IOU if len(found) else inside
        tally.found += bool((overlap | inside).any())
    tally.unmatched_boxes += int(np.count_nonzero(iou_matrix(found.xyxy, boxes).max(axis=1) <= 0.1))


def check(label: Label, settings: DetectorConfig, motions: list[str], args: argparse.Namespace) -> None:
    models = ROOT / "models"
    detectors = {
        "float": load_detector(label, settings, models, ["cpu"], 1),
        "int8": load_detector(label, settings, models, ["cpu"], 1, int8=True),
    }
    tallies = {name: Tally() for name in detectors}
    for motion in motions:
        for seed in args.seeds:
            clip, truth_path = leakgen.generate(leakgen.ClipSpec(motion, seed, 120), args.media, args.clips)
            truth = json.loads(truth_path.read_text())["frames"]
            for index, frame in enumerate(leakmetric.read_frames(clip)):
                if index % args.every == 0:
                    for name, detector in detectors.items():
                        score(detector, frame, truth[index], tallies[name])
    print(f"\n{settings.model} at {settings.input_width} px ({', '.join(motions)}):")
    print("| weights | visible objects found | boxes on no ground truth | median per frame |")
    print("| --- | --- | --- | --- |")
    for name, tally in tallies.items():
        print(tally.row(name))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--clips", type=Path, default=ROOT / "bench" / "out" / "clips")
    parser.add_argument("--media", type=Path, default=ROOT / "data" / "media")
    args = parser.parse_args()
    defaults = DetectionConfig()
    check(Label.FACE, defaults.face, FACE_MOTIONS, args)
    check(Label.LICENSE_PLATE, defaults.license_plate, ["plate_on_car"], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
