"""Plate replacement: a synthetic plate that cannot exist, warped onto the plate's quadrilateral.

Every synthetic plate reads `ZZ#` followed by digits. No issuing authority puts `#` on a plate, and
ZZ is no EU country or US state code, so a rendered plate can never match a real vehicle (and an
ANPR system reading the output cannot confuse it with one). The box is always filled first, so the
original characters are gone whether or not a quadrilateral is found.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from deid_sidecar.anonymize.font import TrueTypeFont
from deid_sidecar.anonymize.regions import rounded_blur
from deid_sidecar.core.detections import NO_TRACK
from deid_sidecar.core.image import Image, as_image

PlateStyle = Literal["eu", "us", "generic"]
FloatArray = npt.NDArray[np.float32]

#: The reserved prefix every synthetic plate starts with (see the module docstring).
PREFIX = "ZZ#"
#: Quadrilateral search: the bright plate region must cover this share of the box, and its sides
#: this aspect ratio (plates are 2:1 (US) to 5:1 (EU)); otherwise there is no plate shape to warp onto.
MIN_FILL = 0.3
#: A blob filling (nearly) the whole grown box is not separated from its surroundings (noise, glare).
MAX_FILL = 0.9
#: Blob area / its rotated bounding rectangle: plates are rectangles, ragged blobs are not plates.
MIN_RECTANGULARITY = 0.75
ASPECT_RANGE = (1.3, 7.0)
#: The 4-point outline is used over the blob's bounding rectangle only while no corner is further
#: from the rectangle's than this share of the rectangle's short side.
MAX_CORNER_SHIFT = 0.35
#: Rendered templates kept (one per track and style): enough for a busy street, bounded memory.
CACHE_SIZE = 256
#: Template height in pixels: above any plate size seen in 1080p frames, so warping only shrinks it.
TEMPLATE_HEIGHT = 120
#: A plate whose outline is more than this factor wider or narrower than the style's own shape gets a
#: template laid out at its own aspect (rounded to ASPECT_STEP), so the characters are never stretched.
ASPECT_TOLERANCE = 1.25
ASPECT_STEP = 0.25
#: Blur levels (Gaussian sigma, px) tried on the warped template to match the plate's own sharpness.
BLUR_LEVELS = (0.0, 0.6, 1.0, 1.5, 2.2, 3.0)


@dataclass(frozen=True)
class _Style:
    aspect: float  # width / height
    background: tuple[int, int, int]  # BGR
    ink: tuple[int, int, int]
    digits: int
    band: bool  # EU blue band on the left
    caption: str  # small text above the number (US state-name line)


STYLES: dict[str, _Style] = {
    "eu": _Style(4.7, (245, 245, 245), (20, 20, 20), 4, band=True, caption=""),
    "us": _Style(2.0, (240, 240, 235), (110, 40, 20), 3, band=False, caption="SYNTHETIC"),
    "generic": _Style(3.5, (60, 210, 250), (20, 20, 20), 3, band=False, caption=""),
}


def plate_text(track_id: int, row: int, style: PlateStyle) -> str:
    """Deterministic per track (or per row without one): the same car keeps the same plate."""
    key = f"{track_id}" if track_id != NO_TRACK else f"row{row}"
    number = zlib.crc32(key.encode()) % 10 ** STYLES[style].digits
    return f"{PREFIX}{number:0{STYLES[style].digits}d}"


def render_plate(font: TrueTypeFont, text: str, style: PlateStyle, aspect: float | None = None) -> Image:
    """The plate as a BGR image, TEMPLATE_HEIGHT tall, at the style's aspect or the one given."""
    spec = STYLES[style]
    height = TEMPLATE_HEIGHT
    width = round(height * (aspect or spec.aspect))
    plate = np.full((height, width, 3), spec.background, np.uint8)
    left = 0
    if spec.band:
        left = round(height * 0.38)
        plate[:, :left] = (150, 50, 0)
    cv2.rectangle(plate, (1, 1), (width - 2, height - 2), spec.ink, max(2, height // 40))
    top, text_height = round(height * 0.2), round(height * 0.6)
    if spec.caption:
        caption = font.text_mask(spec.caption, round(height * 0.14))
        _stamp(plate, caption, (width - caption.shape[1]) // 2, round(height * 0.06), (40, 40, 190))
        top, text_height = round(height * 0.3), round(height * 0.52)
    mask = font.text_mask(text, text_height, spacing=0.05)
    room = width - left - round(height * 0.3)
    if mask.shape[1] > room:
        mask = np.asarray(cv2.resize(mask, (room, mask.shape[0]), interpolation=cv2.INTER_AREA), np.uint8)
    _stamp(plate, mask, left + (width - left - mask.shape[1]) // 2, top, spec.ink)
    return plate


def _stamp(plate: Image, mask: npt.NDArray[np.uint8], x: int, y: int, colour: tuple[int, int, int]) -> None:
    h, w = mask.shape
    region = plate[y : y + h, x : x + w]
    alpha = (mask[: region.shape[0], : region.shape[1]].astype(np.float32) / 255.0)[..., None]
    region[...] = (alpha * np.array(colour, np.float32) + (1 - alpha) * region).astype(np.uint8)


def order_corners(points: FloatArray) -> FloatArray:
    """Top-left, top-right, bottom-right, bottom-left (the order getPerspectiveTransform gets)."""
    centre = points.mean(axis=0)
    angles = np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0])
    ordered = points[np.argsort(angles)]  # from the left side, clockwise in image coordinates
    start = int(np.argmin(ordered.sum(axis=1)))
    return np.roll(ordered, -start, axis=0).astype(np.float32)


def find_quad(roi: Image) -> FloatArray | None:
    """The plate's corners in `roi` pixels, or None when no plate-shaped region is there.

    Two candidate masks: the bright region (Otsu, closed over the characters) and the region inside
    the strongest edges (Canny, closed); the first that gives a plausible rectangle wins.
    """
    grey = cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY)
    h, w = grey.shape
    if h < 6 or w < 12 or float(grey.std()) < 8.0:
        return None  # flat: nothing to separate the plate from
    smooth = cv2.GaussianBlur(grey, (3, 3), 0)
    # Close over the characters so the plate is one blob, not a frame with holes.
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (max(3, w // 8) | 1, max(3, h // 4) | 1))
    _, bright = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    edges = cv2.Canny(smooth, 60, 180)
    for mask in (bright, edges):
        quad = _plate_shape(np.asarray(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel), np.uint8), h * w)
        if quad is not None:
            return quad
    return None


def _plate_shape(mask: npt.NDArray[np.uint8], roi_area: int) -> FloatArray | None:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    blob = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(blob)
    if not MIN_FILL * roi_area <= area <= MAX_FILL * roi_area:
        return None
    (_, _), (rw, rh), _ = rect = cv2.minAreaRect(blob)
    aspect = max(rw, rh) / max(min(rw, rh), 1.0)
    if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1] or area < MIN_RECTANGULARITY * rw * rh:
        return None
    box = order_corners(cv2.boxPoints(rect).astype(np.float32))
    approx = cv2.approxPolyDP(blob, 0.04 * cv2.arcLength(blob, True), True)
    if len(approx) == 4 and cv2.isContourConvex(approx):
        quad = order_corners(approx.reshape(4, 2).astype(np.float32))
        # A perspective view moves corners a little off the rectangle; a corner far off is a blob
        # that ran into the surroundings (a bright recess, a bumper edge): the template would shear.
        if float(np.linalg.norm(quad - box, axis=1).max()) <= MAX_CORNER_SHIFT * min(rw, rh):
            return quad
    return box


class PlateReplacer:
    """Replaces plates; one per stream (the per-track template cache lives here)."""

    def __init__(self, font: TrueTypeFont, style: PlateStyle) -> None:
        self.font = font
        self.style = style
        self._cache: dict[tuple[str, float | None], Image] = {}
        self._frame = 0

    def next_frame(self) -> None:
        self._frame += 1

    def template(self, text: str, aspect: float | None = None) -> Image:
        key = (text, aspect)
        if key not in self._cache:
            if len(self._cache) >= CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))  # oldest first (dicts keep insertion order)
            self._cache[key] = render_plate(self.font, text, self.style, aspect)
        return self._cache[key]

    def replace(self, roi: Image, corners: FloatArray | None, track_id: int, row: int) -> bool:
        """Hide the plate in `roi`; True when a synthetic plate was painted, False when only filled."""
        original = roi.copy()
        quad = corners if corners is not None else find_quad(original)
        if quad is None:
            roi[...] = _border_colour(original)
            return False
        rounded_blur(roi, (0, 0, roi.shape[1], roi.shape[0]))
        quad = order_corners(quad)
        text = plate_text(track_id, row, self.style)
        template = _shrink(self.template(text, template_aspect(quad, STYLES[self.style].aspect)), quad)
        th, tw = template.shape[:2]
        source = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], np.float32)
        matrix = cv2.getPerspectiveTransform(source, quad)
        size = (roi.shape[1], roi.shape[0])
        styled = _match_scene(template, original, quad)
        warped = cv2.warpPerspective(styled, matrix, size, flags=cv2.INTER_LINEAR)
        cover = cv2.warpPerspective(np.full((th, tw), 255, np.uint8), matrix, size, flags=cv2.INTER_LINEAR)
        alpha = (cover.astype(np.float32) / 255.0)[..., None]
        warped = _match_sharpness(as_image(warped), original, cover > 128)
        rng = np.random.default_rng(self._frame)
        noise = rng.normal(0.0, _noise_level(original), roi.shape).astype(np.float32)
        painted = alpha * (warped.astype(np.float32) + noise) + (1 - alpha) * roi
        roi[...] = np.clip(painted, 0, 255).astype(np.uint8)
        return True


def _border_colour(roi: Image) -> npt.NDArray[np.uint8]:
    """Mean colour of the roi's outer ring: the fill blends with what surrounds the plate."""
    ring = np.concatenate([roi[0], roi[-1], roi[:, 0], roi[:, -1]])
    return np.asarray(ring.mean(axis=0), np.uint8)


def _match_scene(template: Image, original: Image, quad: FloatArray) -> Image:
    """Template recoloured to the plate's lighting (its bright and dark levels)."""
    inside = np.zeros(original.shape[:2], np.uint8)
    cv2.fillConvexPoly(inside, np.round(quad).astype(np.int32), 255)
    pixels = original[inside > 0].astype(np.float32)
    if len(pixels) < 8:
        pixels = original.reshape(-1, 3).astype(np.float32)
    luma = pixels.mean(axis=1)
    bright = pixels[luma >= np.percentile(luma, 70)].mean(axis=0)
    dark = pixels[luma <= np.percentile(luma, 10)].mean(axis=0)
    # Map template white -> the plate's bright level and black -> its dark level, per channel.
    scale = np.maximum(bright - dark, 30.0) / 255.0
    styled = template.astype(np.float32) * scale + np.minimum(dark, bright - 30.0).clip(0)
    return as_image(np.clip(styled, 0, 255).astype(np.uint8))


def template_aspect(quad: FloatArray, style_aspect: float) -> float | None:
    """None (the style's own shape) unless the outline's aspect is far from it; then the outline's."""
    width = float(np.linalg.norm(quad[1] - quad[0]) + np.linalg.norm(quad[2] - quad[3])) / 2
    height = max(float(np.linalg.norm(quad[3] - quad[0]) + np.linalg.norm(quad[2] - quad[1])) / 2, 1.0)
    aspect = width / height
    if 1 / ASPECT_TOLERANCE <= aspect / style_aspect <= ASPECT_TOLERANCE:
        return None
    return max(1.0, round(aspect / ASPECT_STEP) * ASPECT_STEP)


def _sharpness(grey: npt.NDArray[np.float32], inside: npt.NDArray[np.bool_]) -> float:
    """Edge strength relative to contrast: the Laplacian's std over the grey-level spread."""
    laplacian = cv2.Laplacian(grey, cv2.CV_32F)[inside]
    return float(laplacian.std() / max(float(grey[inside].std()), 4.0))


def _match_sharpness(warped: Image, original: Image, inside: npt.NDArray[np.bool_]) -> Image:
    """The warped template blurred as much as the plate itself is: a crisp plate on a soft car is fake."""
    # Away from the outline: the template's own border against the blurred box is no plate detail.
    inside = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    if np.count_nonzero(inside) < 16:
        return warped
    target = _sharpness(cv2.cvtColor(original, cv2.COLOR_BGR2GRAY).astype(np.float32), inside)
    # Tried on the grey template (blur and grey conversion commute); only the chosen level is applied.
    grey = cv2.cvtColor(warped, cv2.COLOR_BGR2GRAY).astype(np.float32)

    def gap(sigma: float) -> float:
        blurred = grey if sigma == 0 else np.asarray(cv2.GaussianBlur(grey, (0, 0), sigma), np.float32)
        return abs(_sharpness(blurred, inside) - target)

    sigma = min(BLUR_LEVELS, key=gap)
    return warped if sigma == 0 else as_image(cv2.GaussianBlur(warped, (0, 0), sigma))


def _shrink(template: Image, quad: FloatArray) -> Image:
    """The template at about the plate's size: one warp from 120 px onto a 20 px plate would alias."""
    quad_height = max(float(np.linalg.norm(quad[3] - quad[0])), float(np.linalg.norm(quad[2] - quad[1])), 4.0)
    scale = min(1.0, quad_height / template.shape[0])
    if scale >= 1.0:
        return template
    size = (max(8, round(template.shape[1] * scale)), max(4, round(template.shape[0] * scale)))
    return as_image(cv2.resize(template, size, interpolation=cv2.INTER_AREA))


def _noise_level(original: Image) -> float:
    """Sensor noise of the scene: grey-level std of what a 3x3 median removes, capped."""
    grey = cv2.cvtColor(original, cv2.COLOR_BGR2GRAY)
    residual = grey.astype(np.float32) - cv2.medianBlur(grey, 3).astype(np.float32)
    return float(np.clip(residual.std() * 0.7, 0.0, 6.0))
