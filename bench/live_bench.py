"""Live pipeline benchmark: one 720p15 camera with real faces and a plate, on this machine.

Runs the real CameraPipeline on the looping demo clip (file: source, paced at 15 fps like a camera)
in two modes, each in its own process so CPU and memory are its own:
  anonymize    decode -> detect/track -> mask -> encode -> MPEG-TS hub (the product)
  passthrough  decode -> encode -> MPEG-TS hub (the floor any restreamer pays)
and reports sustained output fps, added latency (frame decoded -> packet muxed, p50/p95), CPU% (of
one core) and peak RSS. Usage:

    .venv/bin/python bench/live_bench.py [--seconds 40] [--out bench/out]

Timings on a shared machine are noisy: compare the two modes of ONE run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WARMUP_S = 8.0


def run_mode(mode: str, seconds: float) -> dict[str, Any]:
    from deid_sidecar.config import parse_config
    from deid_sidecar.core.detections import Detections, Label
    from deid_sidecar.demo import DEMO_CLIP, MEDIA_DIR, build_demo_clip
    from deid_sidecar.detect.detector import build_detector
    from deid_sidecar.engine.live import CameraPipeline
    from deid_sidecar.engine.processor import Processed

    clip = ROOT / MEDIA_DIR / DEMO_CLIP
    if not clip.is_file():
        build_demo_clip(ROOT / MEDIA_DIR)
    config = parse_config(
        {"cameras": {"cam": {"source": f"file:{clip}", "loop": True, "output": {"fps": 15}}}}
    )
    pipeline = CameraPipeline("cam", config.cameras["cam"], config)
    if mode == "anonymize":
        pipeline.set_detector(build_detector(config, {Label.FACE, Label.LICENSE_PLATE}))
    else:

        def passthrough(image: Any, t: float, index: int, *_: Any) -> list[Processed]:
            return [Processed(image, t, index, Detections.empty(), False)]

        pipeline.processor.process = passthrough  # type: ignore[method-assign]
    pipeline.start()
    time.sleep(WARMUP_S)
    stats = pipeline.stats
    with stats.lock:
        stats.latency_samples.clear()
        out0, in0 = stats.frames_out, stats.frames_in
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(seconds)
    cpu1, wall1 = time.process_time(), time.monotonic()
    snapshot = stats.snapshot()
    with stats.lock:
        latencies = sorted(stats.latency_samples)
        frames_out, frames_in = stats.frames_out - out0, stats.frames_in - in0
    pipeline.stop()
    wall = wall1 - wall0
    return {
        "mode": mode,
        "seconds": round(wall, 1),
        "fps_in": round(frames_in / wall, 2),
        "fps_out": round(frames_out / wall, 2),
        "latency_p50_ms": _pct(latencies, 50),
        "latency_p95_ms": _pct(latencies, 95),
        "cpu_percent": round(100 * (cpu1 - cpu0) / wall, 1),
        "rss_peak_mb": _peak_rss_mb(),
        "detect_every": pipeline.processor.scheduler.every,
        "detect_ms": round(pipeline.processor.counters.detect_ms, 1),
        "frames_masked_whole": snapshot["frames_masked_whole"],
        "stage_ms": snapshot["stage_ms"],
    }


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak (here the
    benchmark that built the demo clip) across fork and exec."""
    with open("/proc/self/status", encoding="ascii") as status:
        kb = next(line for line in status if line.startswith("VmHWM")).split()[1]
    return round(int(kb) / 1024, 1)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q / 100 * len(values)))], 1)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| mode | fps out | latency p50 / p95 (ms) | CPU % (of one core) | peak RSS (MB) | detect every | detect ms |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['fps_out']} | {r['latency_p50_ms']} / {r['latency_p95_ms']} | {r['cpu_percent']} | "
            f"{r['rss_peak_mb']} | {r['detect_every'] if r['mode'] == 'anonymize' else '-'} | "
            f"{r['detect_ms'] if r['mode'] == 'anonymize' else '-'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--mode", choices=["anonymize", "passthrough"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.seconds)))
        return 0
    rows = []
    for mode in ("passthrough", "anonymize"):
        result = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--seconds", str(args.seconds)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "live_bench.json").write_text(json.dumps(rows, indent=1))
    table = markdown(rows)
    (args.out / "live_bench.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
