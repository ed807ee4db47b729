"""One camera's anonymized stream as live MPEG-TS over HTTP (`GET /streams/<name>.ts`).

go2rtc consumes this URL as an ordinary HTTP source: it connects when its first viewer arrives and
disconnects when the last one leaves, so readers come and go all the time while the muxer keeps running.

Threads: `StreamHub.publish()` runs on the camera's worker thread and never blocks on readers. Every
reader lives on an asyncio loop and owns a BOUNDED queue filled through `loop.call_soon_threadsafe`;
a reader that falls behind by a full queue is dropped (its response ends) and counted, like go2rtc
does with its own consumers. A new reader starts at the next keyframe, never mid-GOP.

Timestamps come from the caller's output clock, so the single muxer runs for the life of the hub:
a camera reconnect never restarts it (go2rtc consumers break when timestamps jump backwards).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import av
from aiohttp import web

from deid_sidecar.outputs.encoder import TIME_BASE
from deid_sidecar.stats import CameraStats

log = logging.getLogger(__name__)

READER_QUEUE_CHUNKS = 90
"""Chunks (one per frame) a reader may lag behind before it is dropped: ~6 s at 15 fps."""

IDLE_CHECK_S = 1.0
"""While no chunk arrives, a reader checks this often whether its client disconnected."""

CONTENT_TYPE = "video/mp2t"
# Re-emit PAT/PMT before every video frame: a reader starting at any keyframe chunk can demux it
# at once (costs 2 TS packets per frame). flush_packets makes each mux call write through
# immediately, so one packet is exactly one chunk.
MUXER_OPTIONS = {"mpegts_flags": "pat_pmt_at_frames", "flush_packets": "1"}


class _Sink:
    """File-like object the muxer writes into; `take()` returns what one mux call wrote."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class StreamReader:
    """One HTTP reader. All methods run on the reader's event loop."""

    def __init__(self, maxsize: int, on_drop: Callable[[], None] | None) -> None:
        self.loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize)
        self._on_drop = on_drop
        self.started = False  # set at the first keyframe chunk
        self.closed = False

    def offer(self, chunk: bytes, keyframe: bool) -> bool:
        """Queue a chunk; False when the queue is full (the caller then drops this reader)."""
        if self.closed:
            return True
        if not self.started:
            if not keyframe:
                return True  # joining mid-GOP would give the decoder nothing to start from
            self.started = True
        try:
            self._queue.put_nowait(chunk)
        except asyncio.QueueFull:
            return False
        return True

    def end(self, dropped: bool = False) -> None:
        """Finish the reader: `get()` returns what is queued (nothing if dropped), then None."""
        if self.closed:
            return
        self.closed = True
        if dropped:
            while not self._queue.empty():
                self._queue.get_nowait()
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            self._queue.get_nowait()  # make room for the end marker: one chunk less for a lagging reader
            self._queue.put_nowait(None)
        if dropped and self._on_drop is not None:
            self._on_drop()

    async def get(self, timeout: float | None = None) -> bytes | None:  # noqa: ASYNC109 (a poll period)
        """Next bytes to send (everything queued, joined), None when the reader is finished.

        Raises TimeoutError when nothing arrived within `timeout` seconds.
        """
        async with asyncio.timeout(timeout):
            first = await self._queue.get()
        if first is None:
            return None
        parts = [first]
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is None:
                self._queue.put_nowait(None)  # deliver the end after these bytes
                break
            parts.append(item)
        return b"".join(parts)


class StreamHub:
    """MPEG-TS muxer for one output stream, fanned out to any number of asyncio readers."""

    def __init__(
        self, name: str, stats: CameraStats | None = None, *, reader_queue: int = READER_QUEUE_CHUNKS
    ) -> None:
        self.name = name
        self.stats = stats
        self._reader_queue = reader_queue
        self._readers: list[StreamReader] = []
        self._readers_lock = threading.Lock()  # publisher thread reads the list, loops change it
        self._mux_lock = threading.Lock()
        self._sink = _Sink()
        self._container: Any = None
        self._stream: Any = None
        self._last_dts: int | None = None
        self._closed = False
        self.chunks_published = 0
        self.packets_rejected = 0

    # --- publisher side (camera worker thread) -------------------------------------------------

    def publish(self, packets: Iterable[av.Packet[Any]]) -> None:
        """Mux encoder packets (pts in 1/90000 s, increasing) and hand each chunk to the readers."""
        with self._mux_lock:
            if self._closed:
                return
            for packet in packets:
                chunk = self._mux(packet)
                if chunk:
                    self.chunks_published += 1
                    self._dispatch(chunk, bool(packet.is_keyframe))

    def _open_muxer(self) -> None:
        self._container = av.open(self._sink, "w", format="mpegts", options=MUXER_OPTIONS)
        # The muxer needs a stream with an encoder context that PyAV opens at the first mux.
        # Packets are already encoded, so that encoder is a 16x16 single-thread dummy (~0.5 MB);
        # MPEG-TS carries no dimensions, readers take them from the in-band SPS.
        stream = self._container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.options = {"preset": "ultrafast", "threads": "1"}
        self._stream = stream

    def _mux(self, packet: av.Packet[Any]) -> bytes:
        if packet.pts is None:
            return self._reject("packet without pts")
        dts = packet.dts if packet.dts is not None else packet.pts
        if self._last_dts is not None and dts <= self._last_dts:
            # The muxer would refuse it anyway; keeping the stream going matters more than one frame.
            return self._reject(f"timestamp went backwards ({dts} after {self._last_dts})")
        if self._container is None:
            self._open_muxer()
        packet.dts = dts
        packet.time_base = TIME_BASE
        packet.stream = self._stream
        try:
            self._container.mux(packet)
        except av.FFmpegError as exc:
            return self._reject(f"muxer error: {exc}")
        self._last_dts = dts
        return self._sink.take()

    def _reject(self, why: str) -> bytes:
        self.packets_rejected += 1
        if self.packets_rejected == 1 or self.packets_rejected % 100 == 0:
            log.warning("%s: packet dropped (%d so far): %s", self.name, self.packets_rejected, why)
        return b""

    def _dispatch(self, chunk: bytes, keyframe: bool) -> None:
        with self._readers_lock:
            readers = list(self._readers)
        by_loop: dict[asyncio.AbstractEventLoop, list[StreamReader]] = {}
        for reader in readers:
            by_loop.setdefault(reader.loop, []).append(reader)
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._deliver, group, chunk, keyframe)
            except RuntimeError:  # that loop is closed: its readers are gone
                for reader in group:
                    self._remove(reader)

    # --- reader side (event loop) ---------------------------------------------------------------

    def _deliver(self, readers: list[StreamReader], chunk: bytes, keyframe: bool) -> None:
        for reader in readers:
            if not reader.offer(chunk, keyframe):
                log.warning("%s: reader too slow (%d chunks behind), dropped", self.name, self._reader_queue)
                self._remove(reader)
                reader.end(dropped=True)
                if self.stats is not None:
                    with self.stats.lock:
                        self.stats.readers_dropped += 1

    def subscribe(self, on_drop: Callable[[], None] | None = None) -> StreamReader:
        """New reader on the running loop; it receives chunks from the next keyframe on.

        `on_drop` runs (on the loop) when the reader is dropped for being slow, e.g. to abort its socket.
        """
        reader = StreamReader(self._reader_queue, on_drop)
        with self._readers_lock:
            if self._closed:
                reader.end()
                return reader
            self._readers.append(reader)
        self._count_readers()
        return reader

    def unsubscribe(self, reader: StreamReader) -> None:
        self._remove(reader)
        reader.end()

    def _remove(self, reader: StreamReader) -> None:
        with self._readers_lock:
            if reader not in self._readers:
                return
            self._readers.remove(reader)
        self._count_readers()

    def _count_readers(self) -> None:
        if self.stats is not None:
            with self.stats.lock:
                self.stats.readers = self.reader_count

    @property
    def reader_count(self) -> int:
        with self._readers_lock:
            return len(self._readers)

    def close(self) -> None:
        """End every reader and close the muxer. Safe from any thread; publish() is then a no-op."""
        with self._readers_lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for reader in readers:
            with contextlib.suppress(RuntimeError):  # that loop is already closed
                reader.loop.call_soon_threadsafe(reader.end)
        self._count_readers()
        with self._mux_lock:
            if self._container is not None:
                self._container.close()
                self._container = None


# --- HTTP -------------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STREAM_HEADERS = {
    "Content-Type": CONTENT_TYPE,
    "Cache-Control": "no-cache, no-store, must-revalidate",  # live bytes: never cache
    "X-Content-Type-Options": "nosniff",
}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _token_ok(request: web.Request, token: str | None) -> bool:
    if token is None:
        return True
    given = request.query.get("token", "")
    # compare_digest: the time taken does not reveal how much of the token matched.
    return hmac.compare_digest(given.encode(), token.encode())


async def _stream_to(request: web.Request, hub: StreamHub) -> web.StreamResponse:
    response = web.StreamResponse(headers=STREAM_HEADERS)
    response.enable_chunked_encoding()
    await response.prepare(request)
    transport = request.transport

    def abort() -> None:
        # A slow reader's socket buffers are full, so a graceful close would wait forever.
        if transport is not None:
            transport.abort()

    reader = hub.subscribe(on_drop=abort)
    try:
        while (data := await _next_chunk(request, reader)) is not None:
            await response.write(data)
    except ConnectionResetError:
        log.debug("%s: reader went away", hub.name)
    finally:
        hub.unsubscribe(reader)
    return response


async def _next_chunk(request: web.Request, reader: StreamReader) -> bytes | None:
    """Next bytes for this reader; None when the hub ended it or the client has gone."""
    while True:
        try:
            return await reader.get(timeout=IDLE_CHECK_S)
        except TimeoutError:
            # aiohttp does not cancel the handler when the client leaves, and while the publisher
            # is idle no failed write would tell us: look at the connection ourselves.
            transport = request.transport
            if transport is None or transport.is_closing():
                return None


def stream_routes(hubs: Mapping[str, StreamHub], token: str | None) -> list[web.RouteDef]:
    """`GET`/`HEAD /streams/{name}.ts`; `token`, when set, must be given as `?token=`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if not _token_ok(request, token):
            return _error(401, "missing or wrong ?token=")
        name = request.match_info["name"]
        hub = hubs.get(name)
        if hub is None:
            return _error(404, f"unknown stream {name!r}")
        if request.method == "HEAD":
            return web.Response(headers=STREAM_HEADERS)
        return await _stream_to(request, hub)

    return [web.get("/streams/{name}.ts", handle)]  # web.get also answers HEAD
