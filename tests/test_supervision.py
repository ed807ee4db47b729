"""Nobody watched the threads: a reader or worker that hit an unexpected error died silently and
the camera showed the slate forever while /healthz said ok. Now each starts over by itself, and
/healthz answers 503 naming the camera until frames flow again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from webkit import file_camera, make_app, run, serve

from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.sources.reader import Frame, FrameReader


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def crashing_reader(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Readers raise RuntimeError on every frame while time.monotonic() < window['until']."""
    window = {"until": 0.0}
    frames = FrameReader._frames

    def crashing(self: FrameReader) -> Iterator[Frame]:
        for frame in frames(self):
            if time.monotonic() < window["until"]:
                raise RuntimeError("injected bug")
            yield frame

    monkeypatch.setattr(FrameReader, "_frames", crashing)
    return window


def test_a_reader_killed_by_a_bug_starts_over_and_healthz_says_503_meanwhile(
    clip: Path, crashing_reader: dict[str, float]
) -> None:

    pipeline = file_camera(clip)

    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:

            async def health() -> tuple[int, dict[str, Any]]:
                reply = await client.get("/healthz")
                return reply.status, await reply.json()

            for _ in range(100):
                if (await health())[0] == 200 and pipeline.stats.snapshot()["state"] == "online":
                    break
                await asyncio.sleep(0.1)
            crashing_reader["until"] = time.monotonic() + 4.0
            statuses = []
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline:
                status, answer = await health()
                statuses.append(status)
                if status == 503:
                    assert "cam" in answer["problems"] and answer["status"] == "unhealthy"
                if status == 200 and 503 in statuses:
                    break
                await asyncio.sleep(0.1)
            assert 503 in statuses, "an offline camera must make /healthz unhealthy"
            assert statuses[-1] == 200, "frames flow again: healthy again"
            assert not pipeline.reader.dead and pipeline.stats.snapshot()["reconnects"] >= 1

    try:
        run(body)
    finally:
        pipeline.stop()


def test_a_worker_bug_outside_the_frame_guard_does_not_stop_the_camera(
    clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    calls = {"n": 0}
    apply = CameraPipeline._apply_settings

    def fails_once(self: CameraPipeline) -> None:
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("injected bug")
        apply(self)

    monkeypatch.setattr(CameraPipeline, "_apply_settings", fails_once)
    pipeline = file_camera(clip)
    try:
        wait_for(lambda: calls["n"] > 20, 10.0, "the worker to pass the injected failure")
        published = pipeline.stats.snapshot()["frames_out"]
        wait_for(lambda: pipeline.stats.snapshot()["frames_out"] > published + 5, 10.0, "frames after it")
        assert pipeline.problem() is None
    finally:
        pipeline.stop()
