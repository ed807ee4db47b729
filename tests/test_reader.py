"""FrameReader: what counts as a (re)connect, a recovery and a lost frame."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from livekit import write_clip

from deid_sidecar.sources.reader import FLOWING_AFTER_S, Frame, FrameQueue, FrameReader
from deid_sidecar.sources.spec import SourceSpec
from deid_sidecar.stats import CameraStats

pytestmark = pytest.mark.slow

FPS = 15


def looping_file(path: Path) -> SourceSpec:
    """A `file:` source as the config makes it (`loop: true`), even for a path not there yet."""
    return SourceSpec("file", str(path), None, {}, loop=True, realtime=True)


def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def drain(queue: FrameQueue) -> list[Frame]:
    frames = []
    while (frame := queue.take(timeout=0)) is not None:
        frames.append(frame)
    return frames


def test_a_looping_file_starting_over_is_not_a_reconnect(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "one_second.mp4", seconds=1, fps=FPS)
    stats = CameraStats("cam", "cam_anon")
    queue = FrameQueue(10 * FPS)
    reader = FrameReader(looping_file(clip), queue, stats)
    reader.start()
    try:
        assert eventually(lambda: stats.frames_in >= 3 * FPS + 5, timeout=10), "three loops"
    finally:
        reader.stop()
    frames = drain(queue)
    assert len(frames) >= 3 * FPS
    assert {f.generation for f in frames} == {1}, "one stream, however often the file starts over"
    assert [f.index for f in frames] == sorted(f.index for f in frames)
    assert stats.reconnects == 0 and stats.last_error == ""


def test_last_error_is_cleared_once_frames_flow_again(tmp_path: Path) -> None:
    clip = tmp_path / "camera.mp4"  # not there yet: the camera is down
    stats = CameraStats("cam", "cam_anon")
    reader = FrameReader(looping_file(clip), FrameQueue(4), stats)
    reader.start()
    try:
        assert eventually(lambda: stats.reconnects >= 1, timeout=5)
        assert "No such file" in stats.last_error
        write_clip(tmp_path / "incoming.mp4", seconds=3, fps=FPS)
        os.replace(tmp_path / "incoming.mp4", clip)  # the camera is back
        assert eventually(lambda: stats.frames_in > 0, timeout=5)
        first_frame_at = time.monotonic()
        assert stats.last_error, "one frame is not a recovery yet"
        assert eventually(lambda: stats.last_error == "", timeout=5), "frames flow again: error cleared"
        assert time.monotonic() - first_frame_at >= FLOWING_AFTER_S - 0.2
    finally:
        reader.stop()
    assert stats.reconnects >= 1, "the history stays counted"
    assert reader.generation == 1 + stats.reconnects, (
        "each failed open and the reconnect: one generation each"
    )


def test_a_queue_overflow_counts_frames_as_dropped_not_skipped(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "one_second.mp4", seconds=1, fps=FPS)
    stats = CameraStats("cam", "cam_anon")
    queue = FrameQueue(2)  # nobody takes: every frame past two pushes the oldest out
    reader = FrameReader(SourceSpec("file", str(clip), realtime=True), queue, stats)
    reader.start()
    try:
        assert eventually(lambda: stats.frames_in == FPS, timeout=5)
    finally:
        reader.stop()
    snapshot = stats.snapshot()
    assert snapshot["frames_dropped"] == FPS - 2
    assert snapshot["frames_skipped"] == 0
    assert [f.index for f in drain(queue)] == [FPS - 1, FPS]


def test_a_looping_file_without_video_steps_back_and_keeps_trying(tmp_path: Path) -> None:
    path = tmp_path / "audio_only.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    stats = CameraStats("cam", "cam_anon")
    reader = FrameReader(looping_file(path), FrameQueue(), stats)
    reader.start()
    try:
        assert eventually(lambda: stats.reconnects >= 2, timeout=5), "it keeps trying (the thread lives)"
        time.sleep(1.0)
        assert reader._thread.is_alive()
    finally:
        reader.stop()
    assert stats.reconnects <= 5, "stepping back (1 s), not spinning"
    assert "no video" in stats.last_error
