"""Push mode: POST /api/stream.ts?dst= into the go2rtc stand-in."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from go2rtc_standin import Go2rtcStandin
from pydantic import SecretStr

from deid_sidecar.config import output_name, parse_config
from deid_sidecar.outputs import push, retry
from deid_sidecar.outputs.encoder import H264Encoder
from deid_sidecar.outputs.go2rtc_api import Go2rtcClient
from deid_sidecar.outputs.http_ts import StreamHub
from deid_sidecar.outputs.push import Pusher, pusher_for

HINT_URL = "http://deid-sidecar:8080/streams/front_anon.ts"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "BACKOFF_S", (0.05, 0.1))
    monkeypatch.setattr(push, "RETRY_AFTER_S", 0.2)


class Camera:
    """Publishes 15 fps synthetic H.264 into a hub from a thread."""

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        encoder = H264Encoder(160, 120, 15.0, 300, "libx264")
        i = 0
        while not self._stop.wait(1 / 15):
            image = np.full((120, 160, 3), (i * 9) % 255, np.uint8)
            self.hub.publish(encoder.encode(image, i * 6000))
            i += 1

    def __enter__(self) -> Camera:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


async def eventually(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_push_into_declared_stream_decodes() -> None:
    async def main() -> None:
        standin = Go2rtcStandin(username="u", password="p", require_auth=True)
        standin.streams["front_anon"] = []  # declared empty in go2rtc.yaml
        await standin.start()
        hub = StreamHub("front_anon")
        async with aiohttp.ClientSession() as session:
            client = Go2rtcClient(standin.url, "u", SecretStr("p"), session)
            pusher = Pusher(client, hub, "front_anon", HINT_URL, session)
            with Camera(hub):
                task = asyncio.create_task(pusher.run())
                await eventually(lambda: len(standin.pushed.get("front_anon", b"")) > 20_000)
                assert pusher.status.connected
                await pusher.close()
                await asyncio.wait_for(task, 5)
        await standin.stop()
        hub.close()
        with av.open(io.BytesIO(standin.pushed["front_anon"]), format="mpegts") as container:
            frames = list(container.decode(video=0))
        assert frames and frames[0].key_frame, "the push starts at a keyframe"
        assert ("GET", "/api/streams", "src=front_anon") in standin.requests, "checked before pushing"

    run(main())


def test_undeclared_stream_explains_the_yaml_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        standin = Go2rtcStandin()
        await standin.start()
        hub = StreamHub("front_anon")
        async with aiohttp.ClientSession() as session:
            pusher = Pusher(
                Go2rtcClient(standin.url, None, None, session), hub, "front_anon", HINT_URL, session
            )
            with Camera(hub):
                task = asyncio.create_task(pusher.run())
                await eventually(lambda: "no stream 'front_anon'" in pusher.status.last_error)
                assert "front_anon:" in pusher.status.last_error  # standalone YAML line
                assert f"front_anon: {HINT_URL}" in pusher.status.last_error  # Frigate form
                assert not any(method == "POST" for method, _, _ in standin.requests)
                standin.streams["front_anon"] = []  # the user declares it
                await eventually(lambda: len(standin.pushed.get("front_anon", b"")) > 5_000)
                await pusher.close()
                await asyncio.wait_for(task, 5)
        await standin.stop()
        hub.close()

    with caplog.at_level(logging.ERROR, logger=push.__name__):
        run(main())
    assert len([r for r in caplog.records if "no stream" in r.message]) == 1, "reported once, not every retry"


def test_push_reconnects_after_go2rtc_restart() -> None:
    async def main() -> None:
        standin = Go2rtcStandin()
        standin.streams["front_anon"] = []
        await standin.start()
        port = standin.port
        hub = StreamHub("front_anon")
        async with aiohttp.ClientSession() as session:
            pusher = Pusher(
                Go2rtcClient(standin.url, None, None, session), hub, "front_anon", HINT_URL, session
            )
            with Camera(hub):
                task = asyncio.create_task(pusher.run())
                await eventually(lambda: pusher.status.connects == 1 and bool(standin.pushed))
                await standin.stop()
                standin.pushed.clear()
                await standin.start(port)
                await eventually(lambda: len(standin.pushed.get("front_anon", b"")) > 2_000)
                assert pusher.status.connects >= 2
                await pusher.close()
                await asyncio.wait_for(task, 5)
        await standin.stop()
        hub.close()

    run(main())


def test_a_pusher_for_each_camera_that_pushes() -> None:
    config = parse_config(
        {
            "cameras": {
                "a": {"source": "go2rtc:a", "output": {"push": "http"}},
                "b": {"source": "go2rtc:b", "output": {"push": "http", "name": "b_out"}},
                "c": {"source": "go2rtc:c"},
            },
            "server": {"stream_token": "secret-token-0123456789"},
        }
    )

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            made = [
                pusher_for(config, output_name(name, camera), camera, StreamHub(name), session)
                for name, camera in config.cameras.items()
            ]
        pushers = [p for p in made if p is not None]
        assert [p.name for p in pushers] == ["a_anon", "b_out"]
        assert all("secret-token-0123456789" not in p.hint_url for p in pushers)

    run(main())
