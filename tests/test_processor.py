"""The privacy core: every frame leaves either with its objects masked or masked whole (fail closed)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from deid_sidecar.anonymize.masks import Anonymizer, ZoneMasker
from deid_sidecar.config import Method, PrivacyConfig, Zone
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.engine.processor import FrameProcessor

BOX = (40.0, 30.0, 100.0, 90.0)


def textured_frame(seed: int = 0, size: tuple[int, int] = (240, 320)) -> np.ndarray:
    """Random texture: any masking method visibly removes its detail."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def detail_kept(before: np.ndarray, after: np.ndarray, box: tuple[float, ...]) -> float:
    """Fraction of the box's pixels that came through unchanged."""
    x1, y1, x2, y2 = (int(v) for v in box)
    same = np.all(before[y1:y2, x1:x2] == after[y1:y2, x1:x2], axis=2)
    return float(same.mean())


class BoxDetector:
    """Finds one face at BOX (or at `boxes[i]` on the i-th call)."""

    def __init__(self, boxes: list[tuple[float, ...]] | None = None) -> None:
        self.calls = 0
        self.boxes = boxes

    def detect(self, image: np.ndarray) -> Detections:
        box = self.boxes[min(self.calls, len(self.boxes) - 1)] if self.boxes else BOX
        self.calls += 1
        return Detections.from_boxes([box], Label.FACE, 0.9)


class RaisingDetector:
    def detect(self, image: np.ndarray) -> Detections:
        raise RuntimeError("CUDA error: device lost")


class StallingDetector:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.release = threading.Event()

    def detect(self, image: np.ndarray) -> Detections:
        self.release.wait(self.seconds)
        return Detections.from_boxes([BOX], Label.FACE, 0.9)


def make_processor(detector: object, **privacy: object) -> FrameProcessor:
    """Causal (no privacy delay) unless told otherwise: each frame comes out as it goes in."""
    privacy.setdefault("delay_ms", 0)
    anonymizer = Anonymizer(Method.PIXELATE, margin=0.0)
    return FrameProcessor(
        detector,  # type: ignore[arg-type]
        PrivacyConfig(**privacy),  # type: ignore[arg-type]
        anonymizer,
        ZoneMasker([], False, anonymizer),
        realtime=True,
    )


def run_one(processor: FrameProcessor, t: float = 0.0, index: int = 1, generation: int = 1):  # type: ignore[no-untyped-def]
    frame = textured_frame()  # the same scene each time: no scene cut forces a detection
    original = frame.copy()
    (out,) = processor.process(frame, t, index, generation)
    return original, out


def test_detected_object_is_masked_and_the_rest_is_untouched() -> None:
    processor = make_processor(BoxDetector())
    original, out = run_one(processor)
    assert not out.whole_frame
    assert detail_kept(original, out.image, BOX) < 0.05
    assert detail_kept(original, out.image, (200, 150, 300, 230)) == 1.0


@pytest.mark.parametrize(
    ("why", "detector", "enabled"),
    [
        ("detector raised", RaisingDetector(), True),
        ("models not loaded yet", None, True),
        ("detection switched off", BoxDetector(), False),
    ],
)
def test_frame_is_masked_whole_when_no_detection_vouches_for_it(
    why: str, detector: object, enabled: bool
) -> None:
    processor = make_processor(detector)
    processor.detection_enabled = enabled
    original, out = run_one(processor)
    assert out.whole_frame, why
    assert detail_kept(original, out.image, (0, 0, 320, 240)) < 0.05, why


def test_stalled_detector_masks_whole_frames_within_its_budget() -> None:
    detector = StallingDetector(seconds=5.0)
    processor = make_processor(detector, detect_budget_ms=100)
    started = time.monotonic()
    _, first = run_one(processor, t=0.0, index=1)
    _, second = run_one(processor, t=0.07, index=2)
    waited = time.monotonic() - started
    detector.release.set()
    assert first.whole_frame and second.whole_frame
    assert waited < 2.0, "the stalled detector must not hold the stream"
    assert processor.counters.detector_timeouts == 1


def test_frames_between_detections_are_masked_from_tracks() -> None:
    # Detect every 3rd frame: frames 2 and 3 rely on the tracker's prediction.
    processor = make_processor(BoxDetector(), detect_every=3)
    processor.scheduler.burst = 0
    results = [run_one(processor, t=i / 15, index=i) for i in range(1, 7)]
    assert all(not out.whole_frame for _, out in results)
    for original, out in results:
        assert detail_kept(original, out.image, BOX) < 0.05


def test_reconnect_forgets_tracks_and_requires_a_new_detection() -> None:
    detector = BoxDetector()
    processor = make_processor(detector)
    run_one(processor, t=0.0, index=1, generation=1)
    processor.detector = RaisingDetector()  # type: ignore[assignment]
    _, out = run_one(processor, t=0.1, index=2, generation=2)
    assert out.whole_frame


def test_old_detection_stops_vouching_after_the_budget() -> None:
    processor = make_processor(BoxDetector(), detect_every=30, detect_budget_ms=200)
    processor.scheduler.burst = 0
    run_one(processor, t=0.0, index=1)
    _, fresh = run_one(processor, t=0.1, index=2)
    _, stale = run_one(processor, t=0.5, index=3)
    assert not fresh.whole_frame
    assert stale.whole_frame


def test_hundreds_of_objects_are_all_masked() -> None:
    boxes = [(x, y, x + 8, y + 8) for x in range(0, 320, 10) for y in range(0, 240, 10)]
    detector = BoxDetector()
    detector.detect = lambda image: Detections.from_boxes(boxes, Label.FACE, 0.9)  # type: ignore[method-assign]
    processor = make_processor(detector)
    original, out = run_one(processor)
    assert len(out.objects) >= len(boxes)
    for box in boxes:
        assert detail_kept(original, out.image, box) < 0.2


def test_zones_are_masked_even_with_nothing_detected() -> None:
    anonymizer = Anonymizer(Method.FILL, margin=0.0)
    zone = Zone(name="door", points=[(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)])
    empty = BoxDetector()
    empty.detect = lambda image: Detections.empty()  # type: ignore[method-assign]
    processor = FrameProcessor(
        empty, PrivacyConfig(delay_ms=0), anonymizer, ZoneMasker([zone], False, anonymizer), realtime=True
    )
    original, out = run_one(processor)
    assert (out.image[:120, :160] == 0).all()
    assert detail_kept(original, out.image, (170, 130, 320, 240)) == 1.0


def test_inverted_zone_masks_everything_outside() -> None:
    anonymizer = Anonymizer(Method.FILL, margin=0.0)
    zone = Zone(name="drive", points=[(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)])
    zones = ZoneMasker([zone], True, anonymizer)
    frame = textured_frame()
    original = frame.copy()
    zones.apply(frame)
    assert (frame[130:, 170:] == 0).all()
    assert detail_kept(original, frame, (0, 0, 150, 110)) == 1.0


def test_look_ahead_masks_an_object_before_it_was_first_detected() -> None:
    # The detector only sees the face from frame 4 on; with look-ahead frames 2-3 are masked too.
    calls = {"n": 0}

    def late_detect(image: np.ndarray) -> Detections:
        calls["n"] += 1
        return Detections.from_boxes([BOX], Label.FACE, 0.9) if calls["n"] >= 4 else Detections.empty()

    anonymizer = Anonymizer(Method.PIXELATE, margin=0.0)
    detector = BoxDetector()
    detector.detect = late_detect  # type: ignore[method-assign]
    processor = FrameProcessor(
        detector,
        PrivacyConfig(),
        anonymizer,
        ZoneMasker([], False, anonymizer),
        realtime=False,
        lookahead_frames=10,
    )
    originals = {}
    released = []
    for i in range(1, 7):
        frame = textured_frame(i)
        originals[i] = frame.copy()
        released += processor.process(frame, i / 15, i)
    released += processor.drain()
    assert [p.index for p in released] == [1, 2, 3, 4, 5, 6]
    for p in released[1:]:
        assert detail_kept(originals[p.index], p.image, BOX) < 0.05, f"frame {p.index}"


def test_detections_on_a_sub_stream_are_scaled_to_the_main_frame() -> None:
    half_box = tuple(v / 2 for v in BOX)
    seen_shapes: list[tuple[int, ...]] = []

    def detect_on_sub_stream(image: np.ndarray) -> Detections:
        seen_shapes.append(image.shape)
        return Detections.from_boxes([half_box], Label.FACE, 0.9)

    detector = BoxDetector()
    detector.detect = detect_on_sub_stream  # type: ignore[method-assign]
    processor = make_processor(detector)
    frame = textured_frame()
    original = frame.copy()
    (out,) = processor.process(frame, 0.0, 1, 1, detect_image=textured_frame(size=(120, 160)))
    assert seen_shapes == [(120, 160, 3)]
    assert np.allclose(out.objects.xyxy[0], BOX)
    assert detail_kept(original, out.image, BOX) < 0.05


def test_a_fast_plate_is_masked_on_every_frame_between_detections() -> None:
    """A plate crossing at 450 px/s (30 px a frame at 15 fps) with detection every 3rd frame: the
    tracker follows it on its velocity, so no frame between two detections shows it."""
    width, speed = 80.0, 30.0
    boxes = [(10.0 + speed * i, 100.0, 10.0 + speed * i + width, 130.0) for i in range(9)]
    detector = BoxDetector()
    detector.detect = lambda image: Detections.from_boxes(  # type: ignore[method-assign]
        [boxes[frame["i"]]], Label.LICENSE_PLATE, 0.9
    )
    frame = {"i": 0}
    processor = make_processor(detector, detect_every=3)
    for i, box in enumerate(boxes):
        frame["i"] = i
        image = textured_frame(size=(240, 400))
        original = image.copy()
        (out,) = processor.process(image, i / 15, i, 1)
        assert not out.whole_frame
        assert detail_kept(original, out.image, box) < 0.05, f"frame {i}: the plate shows"
