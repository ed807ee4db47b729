"""Minimal TrueType reader and text rasterizer, so plates use the bundled open font with OpenCV alone.

Reads only what plate text needs: the character map (format 4), advance widths and simple glyph
outlines (quadratic contours, flattened to polygons and filled with cv2.fillPoly). Composite glyphs
(accented letters) are not supported: plate text uses A-Z, 0-9 and a few symbols, all simple glyphs
in DejaVu. Pillow would do this too, but it would be a runtime dependency for one feature.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

#: Straight segments per quadratic curve: enough for glyphs rendered at plate sizes (< 200 px tall).
CURVE_STEPS = 6
#: Sub-pixel bits for cv2.fillPoly: smoother outlines than whole-pixel vertices.
SHIFT = 4

Polygon = npt.NDArray[np.float64]


def _u16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from(">H", data, offset)[0])


def _i16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from(">h", data, offset)[0])


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from(">I", data, offset)[0])


@dataclass(frozen=True)
class Glyph:
    advance: int  # font units
    contours: tuple[Polygon, ...]  # closed polygons in font units, y up


class TrueTypeFont:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._tables = {
            data[12 + 16 * i : 16 + 16 * i].decode("latin-1"): _u32(data, 20 + 16 * i)
            for i in range(_u16(data, 4))
        }
        head = self._tables["head"]
        self.units_per_em = _u16(data, head + 18)
        self._long_loca = _i16(data, head + 50) == 1
        self._metrics_count = _u16(data, self._tables["hhea"] + 34)
        self._glyphs: dict[str, Glyph] = {}

    @classmethod
    def load(cls, path: Path) -> TrueTypeFont:
        return cls(path.read_bytes())

    @cached_property
    def _cmap(self) -> dict[int, int]:
        """Code point -> glyph index from the Unicode BMP (format 4) subtable, first 256 code points."""
        data, base = self._data, self._tables["cmap"]
        for i in range(_u16(data, base + 2)):
            platform, encoding = _u16(data, base + 4 + 8 * i), _u16(data, base + 6 + 8 * i)
            sub = base + _u32(data, base + 8 + 8 * i)
            if (platform, encoding) in ((3, 1), (0, 3)) and _u16(data, sub) == 4:
                return self._format4(sub)
        raise ValueError("font has no Unicode format-4 character map")

    def _format4(self, sub: int) -> dict[int, int]:
        data = self._data
        segments = _u16(data, sub + 6) // 2
        ends, starts = sub + 14, sub + 16 + 2 * segments
        deltas, ranges = starts + 2 * segments, starts + 4 * segments
        mapping = {}
        for s in range(segments):
            start, end = _u16(data, starts + 2 * s), _u16(data, ends + 2 * s)
            delta, range_offset = _i16(data, deltas + 2 * s), _u16(data, ranges + 2 * s)
            for code in range(start, min(end, 255) + 1):
                if range_offset:
                    glyph = _u16(data, ranges + 2 * s + range_offset + 2 * (code - start))
                    mapping[code] = (glyph + delta) % 65536 if glyph else 0
                else:
                    mapping[code] = (code + delta) % 65536
        return mapping

    def glyph(self, char: str) -> Glyph:
        if char not in self._glyphs:
            index = self._cmap.get(ord(char), 0)
            self._glyphs[char] = Glyph(self._advance(index), self._outline(index))
        return self._glyphs[char]

    def _advance(self, index: int) -> int:
        hmtx = self._tables["hmtx"]
        return _u16(self._data, hmtx + 4 * min(index, self._metrics_count - 1))

    def _outline(self, index: int) -> tuple[Polygon, ...]:
        data, loca = self._data, self._tables["loca"]
        if self._long_loca:
            start, end = _u32(data, loca + 4 * index), _u32(data, loca + 4 * index + 4)
        else:
            start, end = 2 * _u16(data, loca + 2 * index), 2 * _u16(data, loca + 2 * index + 2)
        if start == end:
            return ()  # blank glyph (space)
        offset = self._tables["glyf"] + start
        contours = _i16(data, offset)
        if contours < 0:
            raise ValueError(f"glyph {index} is composite; not supported")
        return _simple_glyph(data, offset, contours)

    def text_mask(self, text: str, height: int, spacing: float = 0.0) -> npt.NDArray[np.uint8]:
        """Anti-aliased coverage mask (uint8, 0..255) of `text`: cap height fills `height` pixels."""
        glyphs = [self.glyph(c) for c in text]
        cap = max((float(p[:, 1].max()) for g in glyphs for p in g.contours), default=1.0)
        scale = height / cap
        gap = spacing * self.units_per_em
        width = round(scale * (sum(g.advance for g in glyphs) + gap * (len(glyphs) - 1))) + 2
        polygons, pen = [], 1.0 / scale
        for glyph in glyphs:
            for contour in glyph.contours:
                xy = np.column_stack([contour[:, 0] + pen, cap - contour[:, 1]]) * scale
                polygons.append(np.round(xy * (1 << SHIFT)).astype(np.int32))
            pen += glyph.advance + gap
        mask = np.zeros((height + 2, width), np.uint8)
        # One call with all contours: the even-odd fill leaves the holes of O, 0, 8, A open.
        cv2.fillPoly(mask, polygons, 255, lineType=cv2.LINE_AA, shift=SHIFT)
        return mask


def _simple_glyph(data: bytes, offset: int, contours: int) -> tuple[Polygon, ...]:
    ends = [_u16(data, offset + 10 + 2 * i) for i in range(contours)]
    count = ends[-1] + 1 if ends else 0
    cursor = offset + 10 + 2 * contours
    cursor += 2 + _u16(data, cursor)  # skip the hinting instructions
    flags: list[int] = []
    while len(flags) < count:
        flag = data[cursor]
        cursor += 1
        repeat = 1
        if flag & 8:
            repeat += data[cursor]
            cursor += 1
        flags += [flag] * repeat
    xs, cursor = _coordinates(data, cursor, flags, short_bit=2, same_bit=16)
    ys, _ = _coordinates(data, cursor, flags, short_bit=4, same_bit=32)
    on_curve = [bool(f & 1) for f in flags]
    result, first = [], 0
    for last in ends:
        points = np.column_stack([xs[first : last + 1], ys[first : last + 1]]).astype(np.float64)
        result.append(_flatten(points, on_curve[first : last + 1]))
        first = last + 1
    return tuple(result)


def _coordinates(
    data: bytes, cursor: int, flags: list[int], short_bit: int, same_bit: int
) -> tuple[list[int], int]:
    """Delta-encoded coordinates: 1 byte when `short_bit` (sign in `same_bit`), else 2 bytes or repeat."""
    values, value = [], 0
    for flag in flags:
        if flag & short_bit:
            delta = data[cursor]
            cursor += 1
            value += delta if flag & same_bit else -delta
        elif not flag & same_bit:
            value += _i16(data, cursor)
            cursor += 2
        values.append(value)
    return values, cursor


def _flatten(points: Polygon, on_curve: list[bool]) -> Polygon:
    """A closed quadratic B-spline contour as a polygon (implied on-curve points between off-curve ones)."""
    n = len(points)
    if not any(on_curve):
        start_point = (points[0] + points[1]) / 2
        start = 0
    else:
        start = on_curve.index(True)
        start_point = points[start]
    out = [start_point]
    control: npt.NDArray[np.float64] | None = None
    for step in range(1, n + 1):
        index = (start + step) % n
        point = points[index]
        if on_curve[index]:
            if control is None:
                out.append(point)
            else:
                out += _quadratic(out[-1], control, point)
            control = None
        elif control is None:
            control = point
        else:
            middle = (control + point) / 2
            out += _quadratic(out[-1], control, middle)
            control = point
    if control is not None:
        out += _quadratic(out[-1], control, start_point)
    return np.asarray(out, np.float64)


def _quadratic(
    p0: npt.NDArray[np.float64], p1: npt.NDArray[np.float64], p2: npt.NDArray[np.float64]
) -> list[npt.NDArray[np.float64]]:
    t = np.linspace(0, 1, CURVE_STEPS + 1)[1:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    return list(curve)
