"""Leak-rate benchmark: generate clips (cached), run every mode on them, report leak / over-mask / fps.

    python bench/leak_bench.py [--quick] [--out bench/results] [--modes file,deface,...]

Modes are a table of callables `(input, output, workdir) -> frames processed`; a mode that fails is
reported with its error and the run goes on. See bench/README.md for the modes and targets.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import leakgen
import leakmetric

from deid_sidecar.config import AnonymizeConfig

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DEFACE_VENV = REPO / "bench" / "out" / "venv-deface"
MEDIA_IDS = ["t1", "astronaut", "car-plate", "vtest"]
BASELINE_MARGIN = AnonymizeConfig().margin  # the engine's default anonymize.margin

ModeFn = Callable[[Path, Path, Path], int]


# --- modes ---------------------------------------------------------------------------------------


def mode_engine_file(clip: Path, out: Path, work: Path, method: str | None = None) -> int:
    """(a) the shipped CLI in file mode, as a user would run it (default method, or `method`)."""
    audit = work / f"{out.stem}.audit.json"
    cli = VENV_BIN / "deid-sidecar"
    extra = ["--method", method] if method else []
    run = subprocess.run(
        [str(cli), "file", str(clip), "-o", str(out), "--audit", str(audit), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"deid-sidecar file exited {run.returncode}: {run.stderr.strip()[-400:]}")
    return _count_frames(out)


def mode_per_frame(clip: Path, out: Path, work: Path) -> int:
    """(b) the same detector on every frame, raw boxes blurred, no tracking: what tracking adds."""
    from deid_sidecar.config import Config
    from deid_sidecar.core.boxes import expand, to_int_rects
    from deid_sidecar.core.detections import Label
    from deid_sidecar.detect.detector import build_detector  # type: ignore[import-not-found]

    detector = build_detector(Config(), {Label.FACE, Label.LICENSE_PLATE})
    frames = []
    for image in leakmetric.read_frames(clip):
        dets = detector.detect(np.ascontiguousarray(image))
        h, w = image.shape[:2]
        for x1, y1, x2, y2 in to_int_rects(expand(dets.xyxy, BASELINE_MARGIN), w, h):
            if x2 > x1 and y2 > y1:
                k = max(3, (x2 - x1) // 3) | 1
                image[y1:y2, x1:x2] = cv2.blur(cv2.blur(image[y1:y2, x1:x2], (k, k)), (k, k))
        frames.append(image)
    leakgen.write_video(out, frames)
    return len(frames)


def _deface_bin() -> Path:
    for candidate in (DEFACE_VENV / "bin" / "deface", os.environ.get("DEFACE_BIN"), shutil.which("deface")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise RuntimeError(
        f"deface not installed: python -m venv {DEFACE_VENV} && {DEFACE_VENV}/bin/pip install deface==1.5.0"
    )


def mode_deface(clip: Path, out: Path, work: Path) -> int:
    """(c) deface 1.5.0 with its defaults (faces only): the reference to beat."""
    run = subprocess.run(
        [
            str(_deface_bin()),
            str(clip),
            "-o",
            str(out),
            "--ffmpeg-config",
            '{"codec": "libx264", "quality": 9}',
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"deface exited {run.returncode}: {run.stderr.strip()[-400:]}")
    return _count_frames(out)


def _live_mode(delay_ms: int) -> ModeFn:
    """(d) live: frames fed at the clip's real rate to the engine's live-simulation hook."""

    def run(clip: Path, out: Path, work: Path) -> int:
        from deid_sidecar import engine

        simulate = _find_live_hook(engine)
        return int(simulate(clip, out, delay_ms=delay_ms))

    return run


def _find_live_hook(engine: Any) -> Callable[..., int]:
    """`deid_sidecar.engine.simulate.simulate_live(input, output, *, delay_ms) -> frames` (README)."""
    import importlib

    for module_name in ("deid_sidecar.engine.simulate", "deid_sidecar.engine.filemode"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        hook = getattr(module, "simulate_live", None)
        if callable(hook):
            return hook  # type: ignore[no-any-return]
    raise RuntimeError(
        "deid_sidecar.engine.simulate.simulate_live(input, output, *, delay_ms) does not exist yet"
    )


def mode_identity(clip: Path, out: Path, work: Path) -> int:
    """Control: a plain re-encode. Must score ~100% leaked, ~0 over-mask (checks the metric itself)."""
    frames = list(leakmetric.read_frames(clip))
    leakgen.write_video(out, frames, crf=23)
    return len(frames)


def mode_oracle(clip: Path, out: Path, work: Path) -> int:
    """Control: the ground-truth boxes blurred like the baseline. Must score ~0% leaked."""
    truth = json.loads(clip.with_suffix(".json").read_text())["frames"]
    frames = []
    for image, objects in zip(leakmetric.read_frames(clip), truth, strict=False):
        h, w = image.shape[:2]
        for obj in objects:
            x1, y1, x2, y2 = obj["box"]
            gx, gy = (x2 - x1) * BASELINE_MARGIN, (y2 - y1) * BASELINE_MARGIN
            ix1, iy1, ix2, iy2 = (
                max(0, int(x1 - gx)),
                max(0, int(y1 - gy)),
                min(w, int(x2 + gx) + 1),
                min(h, int(y2 + gy) + 1),
            )
            if ix2 > ix1 and iy2 > iy1:
                k = max(3, (ix2 - ix1) // 3) | 1
                image[iy1:iy2, ix1:ix2] = cv2.blur(cv2.blur(image[iy1:iy2, ix1:ix2], (k, k)), (k, k))
        frames.append(image)
    leakgen.write_video(out, frames)
    return len(frames)


MODES: dict[str, ModeFn] = {
    "control_identity": mode_identity,
    "control_oracle": mode_oracle,
    "file": mode_engine_file,
    "file_replace": lambda clip, out, work: mode_engine_file(clip, out, work, method="replace"),
    "per_frame": mode_per_frame,
    "deface": mode_deface,
    "live_causal": _live_mode(0),
    "live_delay_200ms": _live_mode(200),
    "live_delay_1s": _live_mode(1000),
}
#: deface only masks faces: its plate figures are not a failure of deface and are left out.
FACES_ONLY = {"deface"}


def _count_frames(path: Path) -> int:
    return sum(1 for _ in leakmetric.read_frames(path))


# --- running and reporting -----------------------------------------------------------------------


@dataclass
class ModeResult:
    name: str
    score: leakmetric.ClipScore = field(default_factory=leakmetric.ClipScore)
    frames: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.name,
            **self.score.as_dict(),
            "fps": self.frames / self.seconds if self.seconds else None,
            "errors": self.errors,
        }


def run_mode(name: str, clips: list[tuple[Path, Path]], out_dir: Path) -> ModeResult:
    result = ModeResult(name)
    work = out_dir / name
    work.mkdir(parents=True, exist_ok=True)
    for clip, truth in clips:
        out = work / clip.name
        out.unlink(missing_ok=True)
        started = time.perf_counter()
        try:
            frames = MODES[name](clip, out, work)
        except Exception as exc:  # a broken mode is a row in the table, not a crash
            result.errors.append(f"{clip.stem}: {type(exc).__name__}: {exc}")
            (work / f"{clip.stem}.error.txt").write_text(traceback.format_exc())
            if len(result.errors) >= 2 and result.frames == 0:
                break  # failing on every clip: do not spend the whole run on it
            continue
        result.seconds += time.perf_counter() - started
        result.frames += frames
        clip_score = leakmetric.score_clip(clip, out, truth)
        if name in FACES_ONLY:
            clip_score.by_label.pop("license_plate", None)
            clip_score.by_motion.pop("plate_on_car", None)
        result.score.add(clip_score)
        print(f"  {name} {clip.stem}: {frames} frames", flush=True)
    return result


def _pct(tally: dict[str, Any] | None) -> str:
    if not tally or tally["rate"] is None:
        return "-"
    return f"{100 * tally['rate']:.1f}% ({tally['leaked']}/{tally['visible']})"


def markdown(rows: list[dict[str, Any]], motions: list[str]) -> str:
    head = ["mode", "face leak", "plate leak", "over-mask x GT", "fps", *motions, "errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        over = row["over_mask_ratio"]
        cells = [
            row["mode"],
            _pct(row["leak_by_label"].get("face")),
            _pct(row["leak_by_label"].get("license_plate")),
            f"{over:.2f}" if over is not None else "-",
            f"{row['fps']:.1f}" if row["fps"] else "-",
            *[_pct(row["leak_by_motion"].get(m)) for m in motions],
            "; ".join(row["errors"])[:200].replace("|", "/") or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ensure_media(media: Path) -> None:
    if all(any(media.rglob(name)) for name in ("t1.jpg", "astronaut.png", "test_image.png", "vtest.avi")):
        return
    print(f"fetching media into {media}", flush=True)
    cmd = [str(VENV_BIN / "deid-sidecar"), "media", "fetch", *MEDIA_IDS, "--dir", str(media)]
    subprocess.run(cmd, check=True, cwd=REPO)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one seed, 4 s clips")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "results")
    parser.add_argument("--clips", type=Path, default=REPO / "bench" / "out" / "clips")
    parser.add_argument("--media", type=Path, default=REPO / "data" / "media")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list from: {', '.join(MODES)}")
    args = parser.parse_args()
    ensure_media(args.media)
    specs = leakgen.clip_specs(args.quick)
    clips = [leakgen.generate(spec, args.media, args.clips) for spec in specs]
    rows = []
    for name in args.modes.split(","):
        print(f"mode {name}", flush=True)
        rows.append(run_mode(name.strip(), clips, args.out).as_dict())
    args.out.mkdir(parents=True, exist_ok=True)
    report = markdown(rows, list(leakgen.MOTIONS))
    (args.out / "leak_bench.json").write_text(json.dumps({"quick": args.quick, "modes": rows}, indent=2))
    (args.out / "leak_bench.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
