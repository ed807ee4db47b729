"""Background tasks of `run` (go2rtc registrar, pushers) start again after a failure."""

from __future__ import annotations

import asyncio

import pytest

from deid_sidecar import app


def test_a_background_task_that_fails_is_started_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app, "TASK_RESTART_S", 0.01)
    runs = []

    async def registrar() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("go2rtc answered something unexpected")

    async def body() -> None:
        await asyncio.wait_for(app.supervise("go2rtc-registrar", registrar), 5)

    asyncio.run(body())
    assert runs == [0, 1, 2]
    assert caplog.text.count("go2rtc-registrar failed; starting it again") == 2


def test_a_supervised_task_still_stops_when_cancelled() -> None:
    async def forever() -> None:
        await asyncio.sleep(3600)

    async def body() -> None:
        task = app.supervise("push-x", forever)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(body())
