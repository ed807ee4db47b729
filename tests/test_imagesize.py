"""Image sizes from header bytes alone: every accepted type, real encoder output, and refusals."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from imagebombs import png_bomb

from deid_sidecar.core.imagesize import (
    MAX_IMAGE_PIXELS,
    ImageSize,
    ImageTooLargeError,
    UnreadableImageError,
    check_image_size,
    image_format,
    read_image_size,
)

WIDTH, HEIGHT = 37, 23  # odd and different, so a swapped or rounded size shows


def encoded(suffix: str, params: list[int] | None = None, channels: int = 3) -> bytes:
    rng = np.random.default_rng(7)
    picture = rng.integers(0, 255, (HEIGHT, WIDTH, channels), dtype=np.uint8)
    ok, data = cv2.imencode(suffix, picture, params or [])
    assert ok
    return data.tobytes()


REAL_FILES = {
    "jpeg baseline": lambda: encoded(".jpg"),
    "jpeg progressive": lambda: encoded(".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    "png": lambda: encoded(".png"),
    "png with alpha": lambda: encoded(".png", channels=4),
    "bmp": lambda: encoded(".bmp"),
    "webp lossy": lambda: encoded(".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
    "webp lossless": lambda: encoded(".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
    "webp with alpha (VP8X)": lambda: encoded(".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], channels=4),
    "tiff": lambda: encoded(".tiff"),
}


@pytest.mark.parametrize("make", REAL_FILES.values(), ids=REAL_FILES.keys())
def test_the_header_gives_the_size_opencv_decodes(make) -> None:  # type: ignore[no-untyped-def]
    data = make()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape[:2] == (HEIGHT, WIDTH)
    assert read_image_size(data) == ImageSize(WIDTH, HEIGHT) == (WIDTH, HEIGHT)


def test_a_seekable_file_is_read_like_bytes(tmp_path: Path) -> None:
    path = tmp_path / "x.tiff"
    path.write_bytes(encoded(".tiff"))
    with path.open("rb") as handle:
        assert read_image_size(handle) == (WIDTH, HEIGHT)


def jpeg_with_metadata_first() -> bytes:
    """An EXIF-like APP1 segment, fill bytes and stray bytes before the frame header."""
    data = encoded(".jpg")
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 5000) + b"Exif\x00" + bytes(4995)
    return data[:2] + app1 + b"\x00\x13\xff\xff" + data[2:]


def big_endian_tiff(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 3, 1, height << 16)]  # a SHORT sits left-justified
    ifd = struct.pack(">H", len(entries)) + b"".join(struct.pack(">HHII", *e) for e in entries)
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + bytes(4)


def bigtiff(width: int, height: int) -> bytes:
    entries = [(256, 16, 1, width), (257, 16, 1, height)]
    ifd = struct.pack("<Q", len(entries)) + b"".join(struct.pack("<HHQQ", *e) for e in entries)
    return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + ifd + bytes(8)


def os2_bmp(width: int, height: int) -> bytes:
    return b"BM" + bytes(12) + struct.pack("<IHHHH", 12, width, height, 1, 24)


def top_down_bmp(width: int, height: int) -> bytes:
    return b"BM" + bytes(12) + struct.pack("<Iii", 40, width, -height) + bytes(28)


def vp8x(width: int, height: int) -> bytes:
    payload = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(payload)) + b"WEBPVP8X" + struct.pack("<I", 10) + payload


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (jpeg_with_metadata_first(), (WIDTH, HEIGHT)),
        (big_endian_tiff(70000, 300), (70000, 300)),
        (bigtiff(5, 3_000_000), (5, 3_000_000)),
        (os2_bmp(640, 480), (640, 480)),
        (top_down_bmp(640, 480), (640, 480)),
        (vp8x(16_000_000, 2), (16_000_000, 2)),
        (png_bomb(20000, 20000)[:33], (20000, 20000)),  # the header is all it needs
    ],
    ids=[
        "jpeg-app1-stray-bytes",
        "tiff-big-endian",
        "bigtiff",
        "bmp-os2",
        "bmp-top-down",
        "webp-vp8x",
        "png-header-only",
    ],
)
def test_hand_made_headers(data: bytes, size: tuple[int, int]) -> None:
    assert read_image_size(data) == size


def test_a_png_bomb_is_refused_from_its_header_at_once() -> None:
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 500_000  # 1.2 GB once decoded as BGR
    started = time.perf_counter()
    with pytest.raises(
        ImageTooLargeError, match=r"20000x20000 pixels \(400\.0 megapixels\).*limit of 40 megapixels"
    ):
        check_image_size(bomb)
    assert time.perf_counter() - started < 0.5


def test_the_limit_is_inclusive() -> None:
    side = int(MAX_IMAGE_PIXELS**0.5)
    assert check_image_size(png_bomb(side, side)[:33]) == (side, side)
    with pytest.raises(ImageTooLargeError):
        check_image_size(png_bomb(side + 1, side + 1)[:33])
    assert check_image_size(png_bomb(100, 100)[:33], limit=10_000) == (100, 100)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a JPEG, PNG, BMP, WebP or TIFF"),
        (b"hello, world", "not a JPEG, PNG, BMP, WebP or TIFF"),
        (b"P6\n20000 20000\n255\n", "not a JPEG, PNG, BMP, WebP or TIFF"),  # PPM: OpenCV would decode it
        (b"GIF89a" + bytes(20), "not a JPEG, PNG, BMP, WebP or TIFF"),
        (b"\x76\x2f\x31\x01" + bytes(20), "not a JPEG, PNG, BMP, WebP or TIFF"),  # OpenEXR
        (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG header is truncated"),
        (b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sII", 13, b"tEXt", 1, 1), "does not start with its IHDR"),
        (png_bomb(0, 10)[:33], r"gives no size \(0x10\)"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG header is truncated"),
        (b"\xff\xd8\xff\xda\x00\x08" + bytes(20), "JPEG has no frame header"),
        (b"\xff\xd8\xff\x00" + bytes(70_000), "too many stray bytes"),
        (b"BM" + bytes(10), "BMP header is truncated"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(14), "VP8 frame has no start code"),
        (b"RIFF\x00\x00\x00\x00WEBPALPH" + bytes(14), "unknown first chunk"),
        (b"II*\x00" + struct.pack("<I", 1 << 30), "TIFF header is truncated"),
        (b"II*\x00" + struct.pack("<IH", 8, 0) + bytes(4), "no image width or length"),
        (b"II*\x00" + struct.pack("<IH", 8, 60000), "claims 60000 entries"),
    ],
)
def test_unreadable_headers_are_refused_never_guessed(data: bytes, message: str) -> None:
    with pytest.raises(UnreadableImageError, match=message):
        read_image_size(data)


def test_the_format_comes_from_the_signature_not_the_name() -> None:
    assert image_format(encoded(".png")) == "png"
    assert image_format(encoded(".jpg")) == "jpeg"
    assert image_format(b"P6\n") is None
    assert read_image_size(io.BytesIO(encoded(".bmp"))) == (WIDTH, HEIGHT)
