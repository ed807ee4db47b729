"""The output clock: a steady camera keeps every frame even when its frames come unevenly, a faster
camera is skipped down to the output fps, and timestamps always increase."""

from __future__ import annotations

import numpy as np

from deid_sidecar.engine.publisher import EARLY_SLOTS, TICKS_PER_S, OutputClock

FPS = 15.0


def publish(clock: OutputClock, times: list[float]) -> list[int]:
    """The pts of the frames published, skipping those the clock says are too many."""
    return [clock.next_pts(t) for t in times if clock.is_free(t)]


def test_a_steady_camera_delivered_unevenly_keeps_every_frame() -> None:
    rng = np.random.default_rng(0)
    # Every other frame 40 ms late: a loaded reader hands them over in uneven pairs.
    times = [k / FPS + (0.04 if k % 2 else 0.0) + rng.uniform(0, 0.005) for k in range(150)]
    pts = publish(OutputClock(FPS, 0.0), times)
    assert len(pts) == len(times)


def test_a_camera_twice_as_fast_as_the_output_is_skipped_down_to_it() -> None:
    times = [k / 30.0 for k in range(300)]  # 10 s at 30 fps
    pts = publish(OutputClock(FPS, 0.0), times)
    assert abs(len(pts) - 150) <= 2


def test_timestamps_increase_and_never_run_far_ahead_of_the_frames() -> None:
    clock = OutputClock(FPS, 0.0)
    published = []
    for t in [k / 30.0 for k in range(300)]:
        if clock.is_free(t):
            pts = clock.next_pts(t)
            assert pts / TICKS_PER_S * FPS - t * FPS <= EARLY_SLOTS + 0.5 + 1e-9  # slots ahead
            published.append(pts)
    assert np.all(np.diff(published) > 0)
