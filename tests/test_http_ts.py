"""StreamHub fan-out and the /streams/{name}.ts route, against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import io
import itertools
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import av
import numpy as np
from aiohttp import web

from deid_sidecar.outputs.encoder import H264Encoder
from deid_sidecar.outputs.http_ts import StreamHub, stream_routes
from deid_sidecar.stats import CameraStats

FPS = 15.0
TICKS = 6000  # 90 kHz ticks per frame at 15 fps
WIDTH, HEIGHT = 320, 240


def frame(i: int) -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    left = (i * 5) % (WIDTH - 32)
    image[100:132, left : left + 32] = 255
    return image


class Publisher:
    """Encodes synthetic frames in a thread at a fixed rate, like a camera worker."""

    def __init__(
        self, hub: StreamHub, fps: float = FPS, bitrate_kbps: int = 600, noise: bool = False
    ) -> None:
        self.hub, self.fps, self.bitrate, self.noise = hub, fps, bitrate_kbps, noise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        encoder = H264Encoder(WIDTH, HEIGHT, self.fps, self.bitrate, "libx264")
        rng = np.random.default_rng(0)
        start, i = time.monotonic(), 0
        while not self._stop.is_set():
            image = rng.integers(0, 255, (HEIGHT, WIDTH, 3), np.uint8) if self.noise else frame(i)
            # pts from the publisher's own clock (frame count), as the engine does.
            self.hub.publish(encoder.encode(image, 1_000_000 + i * TICKS))
            i += 1
            self._stop.wait(max(0.0, start + i / self.fps - time.monotonic()))

    def __enter__(self) -> Publisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@asynccontextmanager
async def serve(hubs: dict[str, StreamHub], token: str | None = None) -> AsyncIterator[str]:
    app = web.Application()
    app.add_routes(stream_routes(hubs, token))
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


async def read_for(session: aiohttp.ClientSession, url: str, seconds: float) -> bytes:
    data = bytearray()
    async with session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "video/mp2t"
        assert "no-cache" in response.headers["Cache-Control"]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            data += await asyncio.wait_for(response.content.read(65536), 5)
    return bytes(data)


def decode(data: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(data), format="mpegts") as container:
        return list(container.decode(video=0))


def check_stream(data: bytes, seconds: float) -> None:
    assert data[0] == 0x47 and len(data) >= 188, "starts on a TS packet"
    frames = decode(data)
    assert frames, "decodes"
    assert frames[0].key_frame, "a reader starts at a keyframe"
    # ~1 s may pass before the first keyframe; the rest must arrive at the publisher's rate.
    assert len(frames) >= (seconds - 1.2) * FPS * 0.8
    steps = {b.pts - a.pts for a, b in itertools.pairwise(frames) if a.pts and b.pts}
    assert steps == {TICKS}, "timestamps continuous, one frame apart"


def test_two_readers_decode_at_full_rate() -> None:
    async def main() -> None:
        stats = CameraStats(name="front", output="front_anon")
        hub = StreamHub("front_anon", stats)
        async with serve({"front_anon": hub}) as base, aiohttp.ClientSession() as session:
            with Publisher(hub):
                url = f"{base}/streams/front_anon.ts"
                first, second = await asyncio.gather(read_for(session, url, 3.0), read_for(session, url, 2.5))
            check_stream(first, 3.0)
            check_stream(second, 2.5)
            await wait_for(lambda: stats.readers == 0, 3.0)  # noticed without any new chunk
            assert stats.readers_dropped == 0
        hub.close()

    run(main())


def test_late_joiner_starts_at_a_keyframe() -> None:
    async def main() -> None:
        hub = StreamHub("cam_anon")
        async with serve({"cam_anon": hub}) as base, aiohttp.ClientSession() as session:
            with Publisher(hub):
                await asyncio.sleep(1.4)  # join mid-GOP
                data = await read_for(session, f"{base}/streams/cam_anon.ts", 2.0)
            check_stream(data, 2.0)
        hub.close()

    run(main())


def stalled_reader(base: str, path: str) -> socket.socket:
    """A client that asks for the stream and never reads: tiny receive window, full buffers."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


async def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_slow_reader_is_dropped_and_others_keep_going() -> None:
    async def main() -> None:
        stats = CameraStats(name="yard", output="yard_anon")
        hub = StreamHub("yard_anon", stats, reader_queue=10)
        async with serve({"yard_anon": hub}) as base, aiohttp.ClientSession() as session:
            # Fast, big frames so the stalled socket's buffers fill within a few seconds.
            with Publisher(hub, fps=60.0, bitrate_kbps=40_000, noise=True):
                sock = stalled_reader(base, "/streams/yard_anon.ts")
                good = asyncio.create_task(read_for(session, f"{base}/streams/yard_anon.ts", 6.0))
                await wait_for(lambda: stats.readers_dropped == 1, 10.0)
                assert stats.readers == 1, "the healthy reader stays"
                data = await good
            sock.close()
            assert decode(data)[0].key_frame
            assert len(decode(data)) > 100
            assert stats.readers_dropped == 1
        hub.close()

    run(main())


def test_unknown_stream_and_token() -> None:
    async def main() -> None:
        hub = StreamHub("a_anon")
        async with serve({"a_anon": hub}, token="s3cret") as base, aiohttp.ClientSession() as session:
            async with session.get(f"{base}/streams/nope.ts?token=s3cret") as response:
                assert response.status == 404
                assert "nope" in (await response.json())["error"]
            for query in ("", "?token=wrong", "?token="):
                async with session.get(f"{base}/streams/a_anon.ts{query}") as response:
                    assert response.status == 401
            async with session.head(f"{base}/streams/a_anon.ts?token=s3cret") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "video/mp2t"
            with Publisher(hub):
                data = await read_for(session, f"{base}/streams/a_anon.ts?token=s3cret", 1.5)
            assert decode(data)
        hub.close()

    run(main())


def test_close_ends_readers_and_timestamps_survive_a_new_encoder() -> None:
    async def main() -> None:
        hub = StreamHub("b_anon")
        async with serve({"b_anon": hub}) as base, aiohttp.ClientSession() as session:
            async with session.get(f"{base}/streams/b_anon.ts") as response:
                await wait_for(lambda: hub.reader_count == 1, 5.0)

                def publish() -> None:
                    # Two encoders in a row (a camera reconnect) on one continuous output clock.
                    for part in range(2):
                        encoder = H264Encoder(WIDTH, HEIGHT, FPS, 600, "libx264")
                        for i in range(part * 20, part * 20 + 20):
                            hub.publish(encoder.encode(frame(i), i * TICKS))
                    hub.close()

                await asyncio.to_thread(publish)
                data = await asyncio.wait_for(response.read(), 5)  # ends: close() finished the reader
            frames = decode(data)
            assert len(frames) == 40
            assert [f.pts for f in frames] == [i * TICKS for i in range(40)]
            assert hub.packets_rejected == 0

    run(main())


def test_backwards_timestamps_are_dropped_not_fatal() -> None:
    hub = StreamHub("c_anon")
    encoder = H264Encoder(WIDTH, HEIGHT, FPS, 600, "libx264")
    hub.publish(encoder.encode(frame(0), 10 * TICKS))
    hub.publish(H264Encoder(WIDTH, HEIGHT, FPS, 600, "libx264").encode(frame(1), 5 * TICKS))
    assert hub.packets_rejected == 1 and hub.chunks_published == 1
    hub.close()
    hub.publish(encoder.encode(frame(2), 11 * TICKS))  # after close: ignored
    assert hub.chunks_published == 1
