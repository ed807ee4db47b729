"""A live camera's counters mean what they say: detections per second where detection runs, frames
skipped on purpose apart from frames lost, the stats /metrics and the HA sensors read."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from livekit import SecretDetector, write_clip

from deid_sidecar.config import parse_config
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.web.metrics import render

pytestmark = pytest.mark.slow

CAMERA_FPS = 15


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("counters") / "secret.mp4", seconds=8, fps=CAMERA_FPS)


def run_camera(
    clip: Path, seconds: float, fps: float, **privacy: object
) -> tuple[CameraPipeline, dict[str, object]]:
    """Run a looping file camera for `seconds`; the pipeline and its stats snapshot while it ran."""
    config = parse_config(
        {
            "anonymize": {"method": "blur"},
            "privacy": privacy,
            "cameras": {"cam": {"source": f"file:{clip}", "loop": True, "output": {"fps": fps}}},
        }
    )
    pipeline = CameraPipeline("cam", config.cameras["cam"], config)
    pipeline.set_detector(SecretDetector())
    pipeline.start()
    try:
        time.sleep(seconds)
        snapshot = pipeline.stats.snapshot()
    finally:
        pipeline.stop()
    return pipeline, snapshot


def test_fps_detect_counts_the_detections_that_run(clip: Path) -> None:
    pipeline, snapshot = run_camera(clip, seconds=4, fps=10, detect_every=2)
    fps_detect, fps_out = snapshot["fps_detect"], snapshot["fps_out"]
    assert isinstance(fps_detect, float) and isinstance(fps_out, float)
    assert fps_detect > 0, "detection runs: fps_detect says so"
    assert 0.35 * fps_out <= fps_detect <= 0.65 * fps_out, f"every 2nd frame: {fps_detect} of {fps_out} fps"
    assert 0 < snapshot["detections_run"] <= pipeline.processor.counters.detections_run
    samples = render({"cam": snapshot}, set(), {}).splitlines()
    value = next(line for line in samples if line.startswith('deid_camera_fps_detect{camera="cam"}'))
    assert float(value.split()[-1]) > 0, "what /metrics (and the HA sensor) read"


def test_fps_detect_is_zero_when_no_detection_runs(clip: Path) -> None:
    config = parse_config(
        {"cameras": {"cam": {"source": f"file:{clip}", "loop": True, "output": {"fps": 10}}}}
    )
    pipeline = CameraPipeline("cam", config.cameras["cam"], config)  # no detector yet: masked whole
    pipeline.start()
    try:
        time.sleep(2)
        snapshot = pipeline.stats.snapshot()
    finally:
        pipeline.stop()
    assert snapshot["fps_out"] > 0 and snapshot["fps_detect"] == 0.0


def test_frames_skipped_to_reach_the_output_fps_are_not_counted_as_dropped(clip: Path) -> None:
    _, snapshot = run_camera(clip, seconds=4, fps=10)  # a healthy 15 fps camera published at 10 fps
    frames_in, skipped = snapshot["frames_in"], snapshot["frames_skipped"]
    assert isinstance(frames_in, int) and isinstance(skipped, int)
    assert frames_in >= 45
    assert 0.2 * frames_in <= skipped <= 0.45 * frames_in, f"about 5 of 15 skipped: {skipped} of {frames_in}"
    assert snapshot["frames_dropped"] == 0, "nothing was lost"
