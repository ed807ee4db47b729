"""Detection where the picture changed: between two full passes a live camera's detector looks only
at what changed since it last looked there and around its tracks, through a mosaic that the models
see at the frame's own scale, and nothing it has not vouched for goes out unmasked."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from deid_sidecar.anonymize.masks import Anonymizer, ZoneMasker
from deid_sidecar.config import Method, PrivacyConfig
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.engine.processor import FrameProcessor
from deid_sidecar.track.changes import ChangedRegions

W, H = 1280, 720


def still_scene() -> np.ndarray:
    rng = np.random.default_rng(3)
    smooth = cv2.GaussianBlur(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), (0, 0), 20)
    return cv2.normalize(smooth, None, 40, 200, cv2.NORM_MINMAX)


SCENE = still_scene()
PATCH = np.random.default_rng(4).integers(0, 255, (80, 64, 3), dtype=np.uint8)


def with_patch(x: int, y: int, scene: np.ndarray = SCENE) -> np.ndarray:
    image = scene.copy()
    image[y : y + PATCH.shape[0], x : x + PATCH.shape[1]] = PATCH
    return image


def inside(box: tuple[int, int, int, int], regions: list[tuple[int, int, int, int]]) -> bool:
    return any(r[0] <= box[0] and r[1] <= box[1] and box[2] <= r[2] and box[3] <= r[3] for r in regions)


# --- looking at regions ----------------------------------------------------------------------


def test_a_real_face_detector_finds_the_same_face_in_a_region_as_in_the_whole_frame(
    models_dir: Path, media_dir: Path
) -> None:
    from deid_sidecar.config import DetectorConfig
    from deid_sidecar.detect.detector import load_detector

    face = cv2.resize(cv2.imread(str(media_dir / "astronaut.png")), (240, 240))
    frame = SCENE.copy()
    frame[300:540, 800:1040] = face
    settings = DetectorConfig(model="centerface", threshold=0.5)
    detector = load_detector(Label.FACE, settings, models_dir, ["cpu"], 1, 960)
    whole = detector.detect(frame)
    seen = detector.detect_regions(frame, [(50, 50, 250, 250), (760, 260, 1080, 580)])
    assert len(whole) == 1 and len(seen) == 1
    assert np.abs(seen.xyxy[0] - whole.xyxy[0]).max() < 4  # the same scale: the same box
    assert abs(float(seen.confidence[0]) - float(whole.confidence[0])) < 0.05
    assert len(detector.detect_regions(frame, [(50, 50, 250, 250)])) == 0  # not where it is not


def test_a_box_that_fills_its_region_sends_the_pass_to_the_whole_frame(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A region too tight to judge (the plate model boxed a whole crop at 0.36): the whole frame."""
    from deid_sidecar.config import DetectorConfig
    from deid_sidecar.detect.detector import load_detector

    detector = load_detector(Label.FACE, DetectorConfig(model="centerface"), models_dir, ["cpu"], 1, 960)
    whole = Detections.from_boxes([(10, 10, 50, 60)], Label.FACE, 0.9)
    monkeypatch.setattr(detector, "detect", lambda image: whole)
    fills = Detections.from_boxes([(1, 1, 199, 149)], Label.FACE, 0.4)
    monkeypatch.setattr(detector, "_infer", lambda image, width, threshold, spent: fills)
    assert detector.detect_regions(SCENE, [(600, 300, 800, 450)]) is whole


def test_only_models_that_keep_the_aspect_look_at_regions() -> None:
    from deid_sidecar.detect.adapters import CenterFaceAdapter, TfObjectDetectionAdapter, YoloAdapter

    assert CenterFaceAdapter().scales_by_long_side
    assert YoloAdapter().scales_by_long_side
    assert not YoloAdapter(fixed_size=(640, 640)).scales_by_long_side  # letterboxed to a fixed size
    assert not TfObjectDetectionAdapter().scales_by_long_side  # stretched to 300 x 300


# --- what changed ------------------------------------------------------------------------------


def test_the_first_pass_and_one_a_second_after_the_last_full_one_look_at_the_whole_frame() -> None:
    changes = ChangedRegions(full_every_s=1.0)
    assert changes.plan(SCENE, 0.0, Detections.empty()).full
    changes.looked(0.0, Detections.empty())
    assert not changes.plan(SCENE, 0.5, Detections.empty()).full
    changes.looked(0.5, Detections.empty())
    assert changes.plan(SCENE, 1.0, Detections.empty()).full


def test_what_a_pass_found_is_remembered_for_full_detect_s() -> None:
    changes = ChangedRegions(full_every_s=1.0)
    changes.plan(SCENE, 0.0, Detections.empty())
    changes.looked(0.0, Detections.empty())
    changes.plan(SCENE, 0.2, Detections.empty())
    changes.looked(0.2, Detections.from_boxes([(600, 300, 660, 370)], Label.FACE, 0.3))
    plan = changes.plan(SCENE, 0.9, Detections.empty())
    assert plan.regions is not None and inside((600, 300, 660, 370), plan.regions)
    changes.looked(0.9, Detections.empty())
    changes.plan(SCENE, 1.0, Detections.empty())  # full
    changes.looked(1.0, Detections.empty())
    assert changes.plan(SCENE, 1.3, Detections.empty()).regions == []  # 1.1 s after it was found


def test_a_still_picture_with_nothing_tracked_needs_no_look() -> None:
    changes = ChangedRegions(full_every_s=1.0)
    changes.plan(SCENE, 0.0, Detections.empty())
    changes.looked(0.0, Detections.empty())
    assert changes.plan(SCENE.copy(), 0.2, Detections.empty()).regions == []


def test_flicker_and_camera_noise_are_not_change() -> None:
    """Exposure steps of a few grey levels (and capacity.py's band stamps, +-6) leave it still."""
    changes = ChangedRegions(full_every_s=1.0)
    changes.plan(SCENE, 0.0, Detections.empty())
    changes.looked(0.0, Detections.empty())
    noise = np.random.default_rng(5).integers(-4, 5, SCENE.shape)
    flickered = np.clip(SCENE.astype(int) + 6 + noise, 0, 255).astype(np.uint8)
    assert changes.plan(flickered, 0.2, Detections.empty()).regions == []


def test_what_moved_is_looked_at_with_a_margin_and_nothing_else() -> None:
    changes = ChangedRegions(full_every_s=1.0)
    changes.plan(SCENE, 0.0, Detections.empty())
    changes.looked(0.0, Detections.empty())
    plan = changes.plan(with_patch(400, 300), 0.2, Detections.empty())
    assert plan.regions is not None and len(plan.regions) == 1
    assert inside((400 - 16, 300 - 16, 464 + 16, 380 + 16), plan.regions)
    x1, y1, x2, y2 = plan.regions[0]
    assert (x2 - x1) * (y2 - y1) < 0.05 * W * H


def test_a_tracked_object_is_looked_at_even_when_it_stands_still() -> None:
    changes = ChangedRegions(full_every_s=1.0)
    changes.plan(SCENE, 0.0, Detections.empty())
    changes.looked(0.0, Detections.empty())
    tracked = Detections.from_boxes([(1000, 100, 1060, 170)], Label.FACE, 0.9)
    plan = changes.plan(SCENE, 0.2, tracked)
    assert plan.regions is not None and inside((1000, 100, 1060, 170), plan.regions)


def test_a_change_stays_due_until_the_detector_has_answered_for_it() -> None:
    """A pass that failed (refused, late) did not look: the same change is looked at next time."""
    changes = ChangedRegions(full_every_s=1.0)
    changes.plan(SCENE, 0.0, Detections.empty())
    changes.looked(0.0, Detections.empty())
    moved = with_patch(400, 300)
    first = changes.plan(moved, 0.2, Detections.empty())  # ... and the detector failed: no looked()
    assert changes.plan(moved, 0.3, Detections.empty()).regions == first.regions
    changes.looked(0.3, Detections.empty())
    assert changes.plan(moved, 0.4, Detections.empty()).regions == []


def test_a_slow_drift_is_compared_with_what_was_last_looked_at_not_with_the_last_frame() -> None:
    changes = ChangedRegions(full_every_s=10.0)
    changes.plan(SCENE, 0.0, Detections.empty())
    changes.looked(0.0, Detections.empty())
    regions = []
    for step in range(1, 9):  # the patch fades in by 1/8 a frame: each frame alone is below threshold
        blend = cv2.addWeighted(SCENE, 1 - step / 8, with_patch(400, 300), step / 8, 0)
        regions = changes.plan(blend, step * 0.1, Detections.empty()).regions or []
    assert inside((400, 300, 464, 380), regions)


def test_a_change_over_most_of_the_frame_makes_a_full_pass() -> None:
    changes = ChangedRegions(full_every_s=1.0)
    changes.plan(SCENE, 0.0, Detections.empty())
    changes.looked(0.0, Detections.empty())
    assert changes.plan(255 - SCENE, 0.2, Detections.empty()).full


# --- in the processor ----------------------------------------------------------------------------


class PatchFinder:
    """Finds the patch wherever it is (exact pixels), in a whole frame or in regions of it."""

    def __init__(self) -> None:
        self.looked_at: list[int] = []  # pixels looked at, per call

    def detect(self, image: np.ndarray) -> Detections:
        self.looked_at.append(image.shape[0] * image.shape[1])
        return self._find(image)

    def detect_regions(self, image: np.ndarray, regions: list[tuple[int, int, int, int]]) -> Detections:
        self.looked_at.append(sum((x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in regions))
        return Detections.merge(
            self._find(image[y1:y2, x1:x2]).translated(x1, y1) for x1, y1, x2, y2 in regions
        )

    @staticmethod
    def _find(image: np.ndarray) -> Detections:
        if image.shape[0] < PATCH.shape[0] or image.shape[1] < PATCH.shape[1]:
            return Detections.empty()
        found = cv2.matchTemplate(image, PATCH, cv2.TM_SQDIFF)
        _, _, (x, y), _ = cv2.minMaxLoc(found)
        if found[y, x] > 1.0:
            return Detections.empty()
        return Detections.from_boxes([(x, y, x + PATCH.shape[1], y + PATCH.shape[0])], Label.FACE, 0.9)


class WholeFramePatchFinder:
    """The same, for a detector that has no detect_regions."""

    def __init__(self) -> None:
        self.finder = PatchFinder()

    def detect(self, image: np.ndarray) -> Detections:
        return self.finder.detect(image)


def live_processor(detector: object, full_detect_s: float = 1.0) -> FrameProcessor:
    privacy = PrivacyConfig(detect_every=1, full_detect_s=full_detect_s, edge_band=0.0)
    anonymizer = Anonymizer(Method.FILL, margin=0.0)
    return FrameProcessor(detector, privacy, anonymizer, ZoneMasker([], False, anonymizer), realtime=True)  # type: ignore[arg-type]


def test_between_full_passes_the_detector_looks_at_small_regions_and_every_face_is_masked() -> None:
    detector = PatchFinder()
    processor = live_processor(detector)
    t = 0.0
    for index in range(20):  # still scene, then a face appears mid-frame and walks
        x = 300 + 12 * (index - 5)
        image = SCENE.copy() if index < 5 else with_patch(x, 320)
        [out] = processor.process(image, t, index)
        assert not out.whole_frame
        if index >= 5:
            assert np.all(out.image[320:400, x : x + 64] == out.image[320, x]), f"frame {index}: face clear"
        t += 1 / 15
    # The first pass and the one a second later are full; the still frames after the first need no
    # model run at all, and the face is found in regions a few percent of the frame.
    assert detector.looked_at.count(W * H) == 2
    assert len(detector.looked_at) == 2 + 14
    assert max(a for a in detector.looked_at if a != W * H) < 0.06 * W * H


def test_a_detector_that_cannot_look_at_regions_only_ever_sees_whole_frames() -> None:
    detector = WholeFramePatchFinder()
    processor = live_processor(detector)
    for index in range(6):
        processor.process(with_patch(300 + 10 * index, 320), index / 15, index)
    assert detector.finder.looked_at == [W * H] * 6


def test_full_detect_s_0_looks_at_every_frame_whole() -> None:
    detector = PatchFinder()
    processor = live_processor(detector, full_detect_s=0.0)
    for index in range(4):
        processor.process(SCENE.copy(), index / 15, index)
    assert detector.looked_at == [W * H] * 4


def test_what_a_pass_found_is_looked_at_again_even_after_its_track_ran_out() -> None:
    """A still face that one flaky pass missed, its track gone (hold_s short): the next passes
    still look where it was found, until a full pass."""
    changes = ChangedRegions(full_every_s=1.0)
    changes.plan(SCENE, 0.0, Detections.empty())
    changes.looked(0.0, Detections.from_boxes([(600, 300, 660, 370)], Label.FACE, 0.9))
    changes.plan(SCENE, 0.2, Detections.empty())
    changes.looked(0.2, Detections.empty())  # missed, and nothing tracked any more
    plan = changes.plan(SCENE, 0.4, Detections.empty())
    assert plan.regions is not None and inside((600, 300, 660, 370), plan.regions)
