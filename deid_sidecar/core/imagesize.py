"""An image's size from its header bytes alone, so a decompression bomb is refused before decoding.

A 400 KB PNG can claim 20000x20000 pixels and take gigabytes and tens of seconds to decode. The
readers here look only at the header of the formats the sidecar accepts (JPEG, PNG, BMP, WebP,
TIFF) and find the format by its signature, not by the file name: OpenCV picks its decoder the same
way, so a `.png` that is really a PPM or an OpenEXR must not slip past as "unknown". Anything
whose header cannot be read is refused, never guessed. No decoding, no third-party code.
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO, NamedTuple

#: Largest image accepted, in pixels (width x height): 40 megapixels, about 120 MB once decoded to BGR.
MAX_IMAGE_PIXELS = 40_000_000
#: Segments of a JPEG walked while looking for its frame header (EXIF, ICC and other metadata come first).
JPEG_MAX_SEGMENTS = 1024
#: Stray bytes between JPEG segments skipped in all before the file counts as unreadable.
JPEG_MAX_GARBAGE = 64 << 10
#: IFD entries read from a TIFF (real files have a few dozen).
TIFF_MAX_ENTRIES = 4096

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers: baseline, extended, progressive, lossless, hierarchical and arithmetic.
# (0xC4 is DHT, 0xC8 reserved, 0xCC DAC: not frames.)
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


class UnreadableImageError(ValueError):
    """The bytes are not an image of an accepted type, or its header is cut short or inconsistent."""


class ImageTooLargeError(ValueError):
    """The header claims more pixels than the limit."""

    def __init__(self, width: int, height: int, limit: int) -> None:
        super().__init__(
            f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels) is above "
            f"the limit of {limit / 1e6:g} megapixels"
        )
        self.width = width
        self.height = height
        self.limit = limit


class ImageSize(NamedTuple):
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def image_format(head: bytes) -> str | None:
    """`jpeg`, `png`, `bmp`, `webp` or `tiff` from the first 12 bytes; None for anything else."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def read_image_size(source: bytes | BinaryIO) -> ImageSize:
    """(width, height) from the header of an image held in `source` (bytes or a seekable binary file).

    Raises UnreadableImageError when the type is not accepted or the header is not readable.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    stream.seek(0)
    kind = image_format(stream.read(12))
    stream.seek(0)
    if kind is None:
        raise UnreadableImageError("not a JPEG, PNG, BMP, WebP or TIFF image")
    reader = {"jpeg": _jpeg, "png": _png, "bmp": _bmp, "webp": _webp, "tiff": _tiff}[kind]
    try:
        width, height = reader(stream)
    except struct.error:  # a read came back short: the header is cut off
        raise UnreadableImageError(f"the {kind.upper()} header is truncated") from None
    if width <= 0 or height <= 0:
        raise UnreadableImageError(f"the {kind.upper()} header gives no size ({width}x{height})")
    return ImageSize(width, height)


def check_image_size(source: bytes | BinaryIO, limit: int = MAX_IMAGE_PIXELS) -> ImageSize:
    """`read_image_size`, and ImageTooLargeError when the image has more than `limit` pixels."""
    size = read_image_size(source)
    if size.pixels > limit:
        raise ImageTooLargeError(size.width, size.height, limit)
    return size


# --- one reader per format ------------------------------------------------------------------------


def _read(stream: BinaryIO, count: int) -> bytes:
    data = stream.read(count)
    if len(data) < count:
        raise struct.error("short read")
    return data


def _png(stream: BinaryIO) -> tuple[int, int]:
    # Signature, then the IHDR chunk, which must come first: length 13, "IHDR", width, height (big endian).
    header = _read(stream, 24)
    length, kind, width, height = struct.unpack(">I4sII", header[8:24])
    if kind != b"IHDR" or length != 13:
        raise UnreadableImageError("the PNG does not start with its IHDR header")
    return width, height


def _jpeg(stream: BinaryIO) -> tuple[int, int]:
    # Walk the markers from SOI to the first start-of-frame; skip stray bytes the way libjpeg does.
    _read(stream, 2)
    garbage = 0
    for _ in range(JPEG_MAX_SEGMENTS):
        while _read(stream, 1) != b"\xff":
            garbage += 1  # stray bytes between segments: libjpeg warns and scans on for a marker
            if garbage > JPEG_MAX_GARBAGE:
                raise UnreadableImageError("the JPEG has too many stray bytes between its segments")
        marker = _read(stream, 1)[0]
        while marker == 0xFF:  # fill bytes
            marker = _read(stream, 1)[0]
        if marker == 0x00 or marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            break
        (length,) = struct.unpack(">H", _read(stream, 2))
        if length < 2:
            raise UnreadableImageError("the JPEG has a segment shorter than its length field")
        if marker in _JPEG_SOF:
            _precision, height, width = struct.unpack(">BHH", _read(stream, 5))
            return width, height
        stream.seek(length - 2, io.SEEK_CUR)
    raise UnreadableImageError("the JPEG has no frame header")


def _bmp(stream: BinaryIO) -> tuple[int, int]:
    header = _read(stream, 26)
    (dib_size,) = struct.unpack("<I", header[14:18])
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", header[18:22])
        return width, height
    if dib_size < 16:
        raise UnreadableImageError(f"the BMP has an unknown header size {dib_size}")
    width, height = struct.unpack("<ii", header[18:26])
    return width, abs(height)  # a negative height means rows are stored top-down


def _webp(stream: BinaryIO) -> tuple[int, int]:
    header = _read(stream, 30)
    chunk, payload = header[12:16], header[20:30]
    if chunk == b"VP8 ":  # lossy: 3-byte frame tag, start code, 14-bit sizes (2 scale bits above)
        if payload[3:6] != b"\x9d\x01\x2a":
            raise UnreadableImageError("the WebP VP8 frame has no start code")
        width, height = struct.unpack("<HH", payload[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature byte, then 14-bit width-1 and height-1
        if payload[0] != 0x2F:
            raise UnreadableImageError("the WebP VP8L stream has no signature")
        (bits,) = struct.unpack("<I", payload[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended (animation, alpha, metadata): 24-bit canvas width-1 and height-1
        width = int.from_bytes(payload[4:7], "little") + 1
        height = int.from_bytes(payload[7:10], "little") + 1
        return width, height
    raise UnreadableImageError(f"the WebP has an unknown first chunk {chunk!r}")


def _tiff(stream: BinaryIO) -> tuple[int, int]:
    # The first image file directory (the one a decoder reads): ImageWidth (256) and ImageLength (257).
    head = _read(stream, 8)
    order = "<" if head[:2] == b"II" else ">"
    big = struct.unpack(f"{order}H", head[2:4])[0] == 43
    if big:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        offset_size, reserved, ifd = struct.unpack(f"{order}HHQ", head[4:8] + _read(stream, 8))
        if offset_size != 8 or reserved != 0:
            raise UnreadableImageError("the BigTIFF header is not valid")
    else:
        (ifd,) = struct.unpack(f"{order}I", head[4:8])
    stream.seek(ifd)
    if big:
        (entries,) = struct.unpack(f"{order}Q", _read(stream, 8))
    else:
        (entries,) = struct.unpack(f"{order}H", _read(stream, 2))
    if entries > TIFF_MAX_ENTRIES:
        raise UnreadableImageError(f"the TIFF directory claims {entries} entries")
    entry_size = 20 if big else 12
    table = _read(stream, entries * entry_size)
    sizes: dict[int, int] = {}
    for index in range(entries):
        entry = table[index * entry_size : (index + 1) * entry_size]
        tag, kind = struct.unpack(f"{order}HH", entry[:4])
        if tag not in (256, 257):
            continue
        value = entry[12:] if big else entry[8:]
        if kind == 3:  # SHORT, left-justified in the value field
            sizes[tag] = struct.unpack(f"{order}H", value[:2])[0]
        elif kind == 4:  # LONG
            sizes[tag] = struct.unpack(f"{order}I", value[:4])[0]
        elif kind == 16 and big:  # LONG8
            sizes[tag] = struct.unpack(f"{order}Q", value[:8])[0]
        else:
            raise UnreadableImageError(f"the TIFF size tag {tag} has type {kind}")
    if 256 not in sizes or 257 not in sizes:
        raise UnreadableImageError("the TIFF directory has no image width or length")
    return sizes[256], sizes[257]
