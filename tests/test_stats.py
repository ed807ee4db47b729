"""CameraStats: counters that mean what they say, safe to write from the camera's threads while the
web and MQTT threads read them."""

from __future__ import annotations

import threading
import time

from deid_sidecar.stats import CameraStats, RateMeter

SNAPSHOT_KEYS_USED_ELSEWHERE = {
    # events/discovery.py, events/mqtt.py, web/metrics.py, web/static/cameras.js read these
    "state",
    "encoder",
    "fps_in",
    "fps_detect",
    "fps_out",
    "frames_in",
    "frames_out",
    "frames_dropped",
    "frames_masked_whole",
    "detections_run",
    "detector_errors",
    "reconnects",
    "readers",
    "readers_dropped",
    "last_frame_age_s",
    "latency_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "stage_ms",
    "last_error",
}


def test_frames_skipped_on_purpose_are_counted_apart_from_frames_lost() -> None:
    stats = CameraStats("cam", "cam_anon")
    for _ in range(5):
        stats.frame_skipped()  # 15 fps camera, 10 fps output: one second of healthy skipping
    stats.frame_dropped()  # the worker fell behind once
    snapshot = stats.snapshot()
    assert snapshot["frames_skipped"] == 5
    assert snapshot["frames_dropped"] == 1


def test_the_snapshot_keeps_every_key_other_modules_read() -> None:
    assert SNAPSHOT_KEYS_USED_ELSEWHERE | {"frames_skipped"} <= set(CameraStats("cam", "cam_anon").snapshot())


def test_fps_detect_is_the_rate_of_detector_runs() -> None:
    stats = CameraStats("cam", "cam_anon")
    now = time.monotonic()
    for i in range(11):  # 10 intervals over one second
        stats.detection_ran(now=now - 1.0 + i * 0.1)
    assert 9.0 <= stats.snapshot()["fps_detect"] <= 10.5


def test_last_error_is_cleared_on_recovery_and_the_reconnects_stay_counted() -> None:
    stats = CameraStats("cam", "cam_anon")
    stats.reconnecting("Connection refused")
    assert stats.snapshot()["last_error"] == "Connection refused"
    stats.recovered()
    snapshot = stats.snapshot()
    assert snapshot["last_error"] == ""
    assert snapshot["reconnects"] == 1


def test_set_state_tells_whether_the_state_changed() -> None:
    stats = CameraStats("cam", "cam_anon")
    assert stats.set_state("online") is True
    assert stats.set_state("online") is False
    assert stats.snapshot()["state"] == "online"


def test_counters_written_from_many_threads_while_read_stay_exact() -> None:
    stats = CameraStats("cam", "cam_anon")
    writes, writers = 5000, 4
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for _ in range(writes):
                stats.frame_in()
                stats.frame_out()
                stats.frame_skipped()
                stats.frame_dropped()
                stats.detection_ran()
                stats.record_stage("encode", 0.001)
                stats.record_latency(5.0)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def read() -> None:
        try:
            while not done.is_set():
                stats.snapshot()
        except BaseException as exc:  # reported below
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join()
    assert not errors, errors
    snapshot = stats.snapshot()
    total = writes * writers
    assert (snapshot["frames_in"], snapshot["frames_out"]) == (total, total)
    assert (snapshot["frames_skipped"], snapshot["frames_dropped"]) == (total, total)


def test_a_rate_meter_ticked_and_read_from_different_threads_never_fails() -> None:
    meter = RateMeter(window_s=0.001)  # a tiny window: every tick trims, the deque keeps emptying
    errors: list[BaseException] = []
    done = threading.Event()

    def tick() -> None:
        while not done.is_set():
            meter.tick()

    def read() -> None:
        try:
            for _ in range(20000):
                meter.rate()
        except BaseException as exc:  # reported below
            errors.append(exc)

    ticker = threading.Thread(target=tick)
    ticker.start()
    read()
    done.set()
    ticker.join()
    assert not errors, errors
