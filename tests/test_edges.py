"""The edge guard: in live mode, a face crossing the frame's edge is hidden while only part of it is
in view, before any detector can find it, and nothing else in the picture is touched."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from deid_sidecar.anonymize.masks import Anonymizer, ZoneMasker
from deid_sidecar.config import Method, PrivacyConfig
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.engine.processor import FrameProcessor
from deid_sidecar.track.edges import EdgeGuard

W, H = 640, 360
FACE_W, FACE_H = 80, 96
STEP = 6  # px per frame: 90 px/s at 15 fps, a walking pace
WARM_UP = 15  # frames of the empty scene first, as a camera shows before anyone comes
FPS = 15.0

Box = tuple[int, int, int, int]


def _scene() -> np.ndarray:
    rng = np.random.default_rng(1)
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), (0, 0), 25)
    return cv2.normalize(smooth, None, 40, 200, cv2.NORM_MINMAX)


SCENE = _scene()


def background() -> np.ndarray:
    return SCENE.copy()


FACE = np.random.default_rng(2).integers(0, 255, (FACE_H, FACE_W, 3), dtype=np.uint8)  # all detail


def frame_with_face(x: int, y: int) -> tuple[np.ndarray, Box]:
    """The scene with the face's top-left corner at (x, y), and the part of the face in view."""
    image = background()
    x1, y1, x2, y2 = max(0, x), max(0, y), min(W, x + FACE_W), min(H, y + FACE_H)
    if x2 > x1 and y2 > y1:
        image[y1:y2, x1:x2] = FACE[y1 - y : y2 - y, x1 - x : x2 - x]
    return image, (x1, y1, x2, y2)


class WholeFacesOnly:
    """A detector that, like real ones, finds a face only once all of it is in view."""

    def __init__(self) -> None:
        self.truth: Box = (0, 0, 0, 0)
        self.whole = False

    def detect(self, image: np.ndarray) -> Detections:
        if not self.whole:
            return Detections.empty()
        return Detections.from_boxes([self.truth], Label.FACE, 0.9)


PAUSE = 30  # frames (2 s, longer than the tracker's hold) a leaving face stands half out of view


def crossing(edge: str, entering: bool) -> list[tuple[int, int]]:
    """Top-left corners of a face crossing `edge` from just outside to inside; or the reverse, with a
    pause half out of view (someone stopping in the doorway), when the detector has long lost it."""
    steps = range(-FACE_W + STEP, 40, STEP) if edge in ("left", "right") else range(-FACE_H + STEP, 40, STEP)
    path = []
    for s in steps:
        x, y = {
            "left": (s, 130),
            "right": (W - FACE_W - s, 130),
            "top": (280, s),
            "bottom": (280, H - FACE_H - s),
        }[edge]
        path.append((x, y))
    if entering:
        return path
    out = path[::-1]
    half = len(out) // 2
    return out[:half] + [out[half]] * PAUSE + out[half:]


def detail_kept(original: np.ndarray, masked: np.ndarray, box: Box) -> float:
    """Share of the fine detail inside `box` that is still there after masking."""
    x1, y1, x2, y2 = box

    def high_pass(image: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY).astype(np.float32)
        return grey - cv2.GaussianBlur(grey, (0, 0), 2)

    return float(high_pass(masked).std() / max(high_pass(original).std(), 1e-6))


def replay(path: list[tuple[int, int]], edge_band: float) -> list[float]:
    """Live, causal (delay 0): the detail kept of the face's visible part on each frame that shows
    at least a quarter of it."""
    detector = WholeFacesOnly()
    anonymizer = Anonymizer(Method.BLUR)
    privacy = PrivacyConfig(edge_band=edge_band, detect_every=1, delay_ms=0)  # causal: no look-back
    processor = FrameProcessor(
        detector, privacy, anonymizer, ZoneMasker([], False, anonymizer), realtime=True
    )
    kept = []
    frames = [(-1000, -1000)] * WARM_UP + path
    try:
        for index, (x, y) in enumerate(frames):
            image, visible = frame_with_face(x, y)
            x1, y1, x2, y2 = visible
            share = max(0, x2 - x1) * max(0, y2 - y1) / (FACE_W * FACE_H)
            detector.truth, detector.whole = visible, share >= 1.0
            original = image.copy()
            (out,) = processor.process(image, index / FPS, index)
            if share >= 0.25:
                kept.append(detail_kept(original, out.image, visible))
    finally:
        processor.close()
    return kept


@pytest.mark.parametrize("edge", ["left", "right", "top", "bottom"])
@pytest.mark.parametrize("entering", [True, False], ids=["entering", "leaving"])
def test_a_face_crossing_an_edge_is_hidden_from_a_quarter_in_view(edge: str, entering: bool) -> None:
    path = crossing(edge, entering)
    guarded = replay(path, edge_band=PrivacyConfig().edge_band)  # the default
    assert guarded and max(guarded) < 0.35, [round(k, 2) for k in guarded]
    unguarded = replay(path, edge_band=0.0)  # the same detector without the guard shows the part face
    assert max(unguarded) > 0.9


def guard_regions(frames: list[np.ndarray]) -> list[list[tuple[int, int, int, int]]]:
    guard = EdgeGuard(band=PrivacyConfig().edge_band)
    return [guard.regions(frame) for frame in frames]


def test_a_still_scene_hides_nothing() -> None:
    regions = guard_regions([background() for _ in range(WARM_UP + 10)])
    assert all(not r for r in regions[WARM_UP:])


def test_what_moves_away_from_the_edges_is_left_alone() -> None:
    frames = [frame_with_face(280 + 4 * i, 130)[0] for i in range(WARM_UP)]
    frames = [background()] * WARM_UP + frames
    assert all(not r for r in guard_regions(frames)[WARM_UP:])


def test_regions_reach_the_edge_and_cover_the_part_in_view() -> None:
    frames: list[np.ndarray] = [background()] * WARM_UP
    image, visible = frame_with_face(-FACE_W // 2, 130)  # half the face in view at the left edge
    frames.append(image)
    regions = guard_regions(frames)[-1]
    _, y1, x2, y2 = visible
    # From the frame's left edge over all of the face that is in view.
    assert any(r[0] == 0 and r[1] <= y1 and r[2] >= x2 and r[3] >= y2 for r in regions), (regions, visible)
