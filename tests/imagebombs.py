"""Decompression bombs made on the spot: small files whose headers claim huge pictures.

`png_bomb(20000, 20000)` is a real, valid PNG (every row filtered and all-zero, so it decodes to a
black 20000x20000 picture: 1.2 GB as BGR) that takes about 400 KB on disk and milliseconds to make:
one block of zero rows is deflated once and its bytes repeated (a full flush makes every repetition
identical), and the zlib checksum of N zero bytes is simply (N mod 65521) << 16 | 1.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from fractions import Fraction
from pathlib import Path

import av

ROWS_PER_BLOCK = 256


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit greyscale PNG of `width` x `height` black pixels, a few hundred KB at most."""
    row = bytes(1 + width)  # filter byte 0, then one zero byte per pixel
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    full, rest = divmod(height, ROWS_PER_BLOCK)
    block = compressor.compress(row * ROWS_PER_BLOCK) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.compress(row * rest) + compressor.flush(zlib.Z_FINISH)
    raw_size = len(row) * height
    adler = ((raw_size % 65521) << 16) | 1
    stream = b"\x78\xda" + block * full + tail + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")
    )


def video_bomb(path: Path, width: int, height: int) -> Path:
    """A Matroska file declaring one `width` x `height` PNG-coded frame (the frame is `png_bomb`)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "gray"
        stream.time_base = Fraction(1, 1)
        packet = av.Packet(png_bomb(width, height))
        packet.pts = packet.dts = 0
        packet.time_base = Fraction(1, 1)
        packet.stream = stream
        out.mux(packet)
    return path


class PeakRss:
    """The largest resident set size of this process while the block runs, minus the size at entry
    (sampled every 5 ms from /proc/self/statm: independent of what earlier tests allocated)."""

    def __init__(self) -> None:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 1e6

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
