"""Leak and over-masking metrics: compare an anonymized video with its input and the ground truth.

An object-frame LEAKS when the output still carries the input's fine detail inside the object's box:
more than LEAK_RETAINED of the input's high-pass (grey minus its Gaussian blur) over the inner 80% of
the box is still in the output (regression slope of output on input high-pass), in the whole box or in
any cell of a grid over it (so a box half masked still leaks through its clear half). Blurred, pixelated
or filled boxes lose that detail; an untouched or barely blurred one keeps it even after re-encoding
(calibrated on the generated clips: a re-encode keeps 0.95-1.0, a box blur of a third of the box 0.0-0.15).

Over-masking: pixels changed by more than CHANGE_THRESHOLD grey levels outside the ground-truth boxes
(grown by 30%), divided by the ground-truth area: 0 when only the objects are masked, 1 when as much
again is masked around them. Codec noise rarely reaches the threshold at normal bitrates.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

LEAK_RETAINED = 0.5
INNER = 0.8  # evaluate the inner 80% of the box: edges of a box are ambiguous for any masker
GRID = 3  # cells per side for the partial-mask check (2 for small boxes)
MIN_CELL_PX = 8
MIN_TEXTURE = 2.0  # grey-level std of the input high-pass below which a cell has no detail to leak
CHANGE_THRESHOLD = 12.0
GT_GROWTH = 0.3


def grey(image: np.ndarray) -> np.ndarray:
    return (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image).astype(np.float32)


def high_pass(crop: np.ndarray, sigma: float) -> np.ndarray:
    return crop - cv2.GaussianBlur(crop, (0, 0), sigma)


def inner_box(box: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * (1 - INNER) / 2, (y2 - y1) * (1 - INNER) / 2
    ix1, iy1 = max(0, round(x1 + mx)), max(0, round(y1 + my))
    ix2, iy2 = min(width, round(x2 - mx)), min(height, round(y2 - my))
    return ix1, iy1, ix2, iy2


def _retained(a: np.ndarray, b: np.ndarray) -> float | None:
    """Share of the input cell's detail still in the output: the regression slope of output high-pass
    on input high-pass (1 = untouched, ~0 = blurred, filled or pixelated); None when the input cell has
    no detail. A plain correlation is not enough: a strong edge blurred to a faint ramp stays correlated."""
    if float(a.std()) < MIN_TEXTURE:
        return None
    return float((a * b).sum()) / max(float((a * a).sum()), 1e-6)


def leak_score(inp: np.ndarray, out: np.ndarray, box: list[float]) -> float:
    """Highest retained detail over the inner box and its grid cells (0 = nothing of the input left)."""
    h, w = inp.shape[:2]
    x1, y1, x2, y2 = inner_box(box, w, h)
    if x2 - x1 < 4 or y2 - y1 < 4:
        return 0.0
    sigma = float(np.clip(min(x2 - x1, y2 - y1) / 30, 1.0, 3.0))
    a = high_pass(grey(inp[y1:y2, x1:x2]), sigma)
    b = high_pass(grey(out[y1:y2, x1:x2]), sigma)
    scores = [_retained(a, b)]
    cells = GRID if min(x2 - x1, y2 - y1) >= GRID * MIN_CELL_PX else 2
    ys = np.linspace(0, y2 - y1, cells + 1).astype(int)
    xs = np.linspace(0, x2 - x1, cells + 1).astype(int)
    for r in range(cells):
        for c in range(cells):
            cell = (slice(ys[r], ys[r + 1]), slice(xs[c], xs[c + 1]))
            scores.append(_retained(a[cell], b[cell]))
    known = [s for s in scores if s is not None]
    return max(known) if known else 0.0


def is_leaked(inp: np.ndarray, out: np.ndarray, box: list[float]) -> bool:
    return leak_score(inp, out, box) > LEAK_RETAINED


def changed_outside(inp: np.ndarray, out: np.ndarray, boxes: list[list[float]]) -> tuple[int, float]:
    """(changed pixels outside the grown GT boxes, GT box area) for one frame."""
    h, w = inp.shape[:2]
    diff = cv2.blur(np.abs(grey(inp) - grey(out)), (3, 3)) > CHANGE_THRESHOLD
    allowed = np.zeros((h, w), bool)
    gt_area = 0.0
    for x1, y1, x2, y2 in boxes:
        gt_area += max(0.0, x2 - x1) * max(0.0, y2 - y1)
        gx, gy = (x2 - x1) * GT_GROWTH, (y2 - y1) * GT_GROWTH
        allowed[
            max(0, int(y1 - gy)) : min(h, int(y2 + gy) + 1), max(0, int(x1 - gx)) : min(w, int(x2 + gx) + 1)
        ] = True
    return int(np.count_nonzero(diff & ~allowed)), gt_area


@dataclass
class Tally:
    leaked: int = 0
    visible: int = 0

    @property
    def rate(self) -> float | None:
        return self.leaked / self.visible if self.visible else None


@dataclass
class ClipScore:
    by_label: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    by_motion: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    changed_outside_px: int = 0
    gt_area_px: float = 0.0
    frame_area_px: int = 0
    frames: int = 0
    frames_missing: int = 0

    def add(self, other: ClipScore) -> None:
        for key, tally in other.by_label.items():
            self.by_label[key].leaked += tally.leaked
            self.by_label[key].visible += tally.visible
        for key, tally in other.by_motion.items():
            self.by_motion[key].leaked += tally.leaked
            self.by_motion[key].visible += tally.visible
        self.changed_outside_px += other.changed_outside_px
        self.gt_area_px += other.gt_area_px
        self.frame_area_px += other.frame_area_px
        self.frames += other.frames
        self.frames_missing += other.frames_missing

    @property
    def over_mask_ratio(self) -> float | None:
        return self.changed_outside_px / self.gt_area_px if self.gt_area_px else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "leak_by_label": {
                k: {"leaked": t.leaked, "visible": t.visible, "rate": t.rate}
                for k, t in self.by_label.items()
            },
            "leak_by_motion": {
                k: {"leaked": t.leaked, "visible": t.visible, "rate": t.rate}
                for k, t in self.by_motion.items()
            },
            "over_mask_ratio": self.over_mask_ratio,
            "changed_outside_frac": self.changed_outside_px / self.frame_area_px
            if self.frame_area_px
            else None,
            "frames": self.frames,
            "frames_missing": self.frames_missing,
        }


def score_frame(score: ClipScore, inp: np.ndarray, out: np.ndarray, objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if not obj.get("visible", True):
            continue
        leaked = is_leaked(inp, out, obj["box"])
        for tally in (score.by_label[obj["label"]], score.by_motion[obj["motion"]]):
            tally.visible += 1
            tally.leaked += int(leaked)
    changed, gt_area = changed_outside(inp, out, [o["box"] for o in objects])
    score.changed_outside_px += changed
    score.gt_area_px += gt_area
    score.frame_area_px += inp.shape[0] * inp.shape[1]
    score.frames += 1


def read_frames(path: Path) -> Iterator[np.ndarray]:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="bgr24")


def score_clip(input_video: Path, output_video: Path, truth_path: Path) -> ClipScore:
    """Frames are paired by index; output frames missing at the end count every visible object as leaked
    (a mode that drops frames must not look better for it) and are reported in frames_missing."""
    truth = json.loads(truth_path.read_text())["frames"]
    score = ClipScore()
    outputs = read_frames(output_video)
    for index, inp in enumerate(read_frames(input_video)):
        objects = truth[index] if index < len(truth) else []
        out = next(outputs, None)
        if out is None or out.shape != inp.shape:
            score.frames_missing += 1
            out = inp
        score_frame(score, inp, out, objects)
    return score
