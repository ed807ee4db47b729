"""Preview load benchmark: does a crowd of MJPEG preview viewers slow the camera down?

Starts the real `deid-sidecar run` process with one looping 720p camera (data/media/vtest.avi at
10 fps, faces protected), then measures in ONE run:
  idle      no viewers
  crowd     N viewers asking for /api/cameras/<cam>/mjpeg at once (above the per-camera limit,
            server.preview_viewers, the rest are refused with 429)
and reports the camera's output fps, frames masked whole (detection late), and the viewers'
answers. Before previews shared one JPEG encode per frame, 200 viewers took a camera from 10.4 to
3.7 fps. Usage:

    .venv/bin/python bench/preview_viewers.py [--viewers 200] [--seconds 15] [--limit 200]

Timings on a shared machine are noisy: compare the two phases of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef"
WARMUP_S = 10.0


async def stats(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(f"{base}/api/stats") as reply:
        camera: dict[str, Any] = (await reply.json())["cameras"]["cam"]
        return camera


async def sample(session: aiohttp.ClientSession, base: str, seconds: float) -> dict[str, float]:
    """Median output fps, and frames masked whole, over `seconds`."""
    first = await stats(session, base)
    rates = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        rates.append((await stats(session, base))["fps_out"])
    last = await stats(session, base)
    return {
        "fps_out_median": round(statistics.median(rates), 2),
        "masked_whole": last["frames_masked_whole"] - first["frames_masked_whole"],
    }


async def viewer(session: aiohttp.ClientSession, url: str, seconds: float, answers: list[int]) -> int:
    """Watch for `seconds`; the number of JPEG bytes received."""
    received = 0
    try:
        async with session.get(url) as reply:
            answers.append(reply.status)
            if reply.status != 200:
                return 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                chunk = await reply.content.read(64 * 1024)
                if not chunk:
                    break
                received += len(chunk)
    except (aiohttp.ClientError, TimeoutError):
        answers.append(-1)
    return received


async def measure(base: str, viewers: int, seconds: float) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        idle = await sample(session, base, seconds)
        answers: list[int] = []
        url = f"{base}/api/cameras/cam/mjpeg"
        crowd = [asyncio.ensure_future(viewer(session, url, seconds + 2, answers)) for _ in range(viewers)]
        await asyncio.sleep(1.0)
        loaded = await sample(session, base, seconds)
        received = await asyncio.gather(*crowd)
    watching = [r for r in received if r > 0]
    return {
        "idle": idle,
        "crowd": loaded,
        "viewers": viewers,
        "served": answers.count(200),
        "refused_429": answers.count(429),
        "median_mb_per_viewer": round(statistics.median(watching) / 1e6, 2) if watching else 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--limit", type=int, default=10, help="server.preview_viewers (1..100)")
    parser.add_argument("--port", type=int, default=18181)
    args = parser.parse_args()
    clip = ROOT / "data" / "media" / "vtest.avi"
    if not clip.is_file():
        print(f"{clip} is missing: run .venv/bin/deid-sidecar media fetch", file=sys.stderr)
        return 2
    config = {
        "models_dir": str(ROOT / "models"),
        "server": {"host": "127.0.0.1", "port": args.port, "token": TOKEN, "preview_viewers": args.limit},
        "cameras": {
            "cam": {"source": f"file:{clip}", "loop": True, "protect": ["face"], "output": {"fps": 10}}
        },
    }
    with tempfile.TemporaryDirectory() as scratch:
        config_file = Path(scratch) / "config.yml"
        config_file.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "deid_sidecar.cli", "run", "-c", str(config_file)]
        server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(WARMUP_S)
            result = asyncio.run(measure(f"http://127.0.0.1:{args.port}", args.viewers, args.seconds))
        finally:
            server.terminate()
            server.wait(15)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
