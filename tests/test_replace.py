"""`method: replace` on real media with the real detectors: nothing of the original survives, the result
is still a face (CenterFace finds it again), identities follow tracks, and the fallbacks still hide."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from deid_sidecar.anonymize.faces import load_sources
from deid_sidecar.anonymize.masks import Anonymizer, ReplacingAnonymizer, blur_region
from deid_sidecar.anonymize.plates import PREFIX, find_quad, plate_text
from deid_sidecar.anonymize.replace import SOURCE_FACES_DIR
from deid_sidecar.config import AnonymizeConfig, Method, parse_config
from deid_sidecar.core.boxes import iou_matrix
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.detect.detector import MultiDetector, build_detector

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import leakmetric

#: A replaced face or plate must carry real texture: high-pass std well above a flat fill's 0.
MIN_TEXTURE = 2.0


def _replacer(**options: object) -> ReplacingAnonymizer:
    anonymizer = Anonymizer.from_config(AnonymizeConfig(method=Method.REPLACE, **options))  # type: ignore[arg-type]
    assert isinstance(anonymizer, ReplacingAnonymizer)
    return anonymizer


def _detector(models_dir: Path, label: Label) -> MultiDetector:
    """The float models, as files and uploads (where replacement is mostly used) run them. The int8
    plate box on the fast-alpr car is 4 px taller, and the outline finder then falls back to a fill."""
    config = parse_config(
        {"models_dir": str(models_dir), "detection": {"providers": ["cpu"], "precision": "float"}}
    )
    return build_detector(config, {label})


def _texture(image: np.ndarray, box: np.ndarray) -> float:
    """Grey-level std of the high-pass over the inner 80% of the box (0 for a flat fill)."""
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * 0.1, (y2 - y1) * 0.1
    crop = image[round(y1 + my) : round(y2 - my), round(x1 + mx) : round(x2 - mx)]
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return float((grey - cv2.GaussianBlur(grey, (0, 0), 1.5)).std())


@pytest.fixture(scope="module")
def face_detector(models_dir: Path) -> MultiDetector:
    return _detector(models_dir, Label.FACE)


@pytest.mark.parametrize("media", ["t1.jpg", "astronaut.png"])
def test_faces_replaced_without_leak_and_still_faces(
    media_dir: Path, face_detector: MultiDetector, media: str
) -> None:
    image = cv2.imread(str(media_dir / media))
    found = face_detector.detect(image)
    assert len(found) >= 1
    anonymizer = _replacer()
    out = anonymizer.apply(image.copy(), found)
    assert anonymizer.counters.faces_replaced == len(found)
    again = face_detector.detect(out)
    overlap = iou_matrix(found.xyxy, again.xyxy)
    for i, box in enumerate(found.xyxy):
        assert not leakmetric.is_leaked(image, out, list(map(float, box)))
        assert _texture(out, box) > MIN_TEXTURE, "replaced face is flat"
        assert overlap[i].max() > 0.5, f"no face found again at {box}"


def test_plate_replaced_without_leak(media_dir: Path, models_dir: Path) -> None:
    image = cv2.imread(str(media_dir / "test_image.png"))
    found = _detector(models_dir, Label.LICENSE_PLATE).detect(image)
    assert len(found) == 1
    anonymizer = _replacer(plate_style="eu")
    out = anonymizer.apply(image.copy(), found)
    assert anonymizer.counters.plates_replaced == 1
    box = found.xyxy[0]
    assert not leakmetric.is_leaked(image, out, list(map(float, box)))
    assert _texture(out, box) > MIN_TEXTURE, "replaced plate is flat"


def test_plate_corners_from_the_detector_are_used() -> None:
    image = np.full((120, 200, 3), 90, np.uint8)
    corners = np.array([[50, 40], [150, 45], [148, 80], [48, 75]], np.float32)
    keypoints = np.full((1, 5, 2), np.nan, np.float32)
    keypoints[0, :4] = corners
    plates = Detections.from_boxes([[45, 35, 155, 85]], Label.LICENSE_PLATE)
    plates = Detections(plates.xyxy, plates.confidence, plates.label, keypoints=keypoints)
    anonymizer = _replacer()
    out = anonymizer.apply(image.copy(), plates)
    assert anonymizer.counters.plates_replaced == 1
    assert _texture(out, plates.xyxy[0]) > MIN_TEXTURE


def _clip_faces(media_dir: Path, face_detector: MultiDetector) -> tuple[np.ndarray, Detections]:
    image = cv2.imread(str(media_dir / "t1.jpg"))
    return image, face_detector.detect(image)[np.array([0, 1])]


def test_identity_follows_tracks(media_dir: Path, face_detector: MultiDetector) -> None:
    image, two = _clip_faces(media_dir, face_detector)
    anonymizer = _replacer()
    seen: dict[int, set[int]] = {7: set(), 9: set()}
    for step in range(6):
        # A short clip: both faces drift right by 3 px a frame, the rows swap order halfway.
        shift = np.array([3 * step, 0], np.float32)
        order = np.array([0, 1]) if step < 3 else np.array([1, 0])
        frame = Detections(
            two.xyxy[order] + np.tile(shift, 2),
            two.confidence[order],
            two.label[order],
            np.array([7, 9], np.int64)[order],
            two.keypoints[order] + shift,
        )
        anonymizer.apply(np.roll(image, 3 * step, axis=1), frame)
        for row, track in enumerate(frame.track_id):
            seen[int(track)].add(anonymizer.faces.source_for(int(track), row))
    assert len(seen[7]) == 1 and len(seen[9]) == 1
    assert seen[7] != seen[9]


def test_untracked_rows_get_a_deterministic_choice(media_dir: Path, face_detector: MultiDetector) -> None:
    image, two = _clip_faces(media_dir, face_detector)
    first = _replacer().apply(image.copy(), two)
    second = _replacer().apply(image.copy(), two)
    assert np.array_equal(first, second)


def _blurred(image: np.ndarray, detections: Detections) -> np.ndarray:
    # The fallback blurs the box grown by the configured margin, as the blur method does.
    return Anonymizer(Method.BLUR, margin=AnonymizeConfig().margin).apply(image.copy(), detections)


def test_missing_landmarks_fall_back_to_blur(media_dir: Path, face_detector: MultiDetector) -> None:
    image = cv2.imread(str(media_dir / "astronaut.png"))
    found = face_detector.detect(image)
    no_landmarks = Detections(found.xyxy, found.confidence, found.label)
    anonymizer = _replacer()
    out = anonymizer.apply(image.copy(), no_landmarks)
    assert anonymizer.counters.faces_blurred == len(found) and anonymizer.counters.faces_replaced == 0
    assert np.array_equal(out, _blurred(image, no_landmarks))


def test_tiny_face_falls_back_to_blur(media_dir: Path, face_detector: MultiDetector) -> None:
    image = cv2.imread(str(media_dir / "astronaut.png"))
    found = face_detector.detect(image)
    anonymizer = _replacer(replace_min_size=int(found.xyxy[0, 2] - found.xyxy[0, 0]) + 1)
    out = anonymizer.apply(image.copy(), found)
    assert anonymizer.counters.faces_blurred == 1
    assert np.array_equal(out, _blurred(image, found))


def test_profile_face_falls_back_to_blur(media_dir: Path, face_detector: MultiDetector) -> None:
    image = cv2.imread(str(media_dir / "astronaut.png"))
    found = face_detector.detect(image)
    squeezed = found.keypoints.copy()
    squeezed[:, 1] = squeezed[:, 0] + 2.0  # both eyes on one spot: a face seen from the side
    profile = Detections(found.xyxy, found.confidence, found.label, keypoints=squeezed)
    anonymizer = _replacer()
    anonymizer.apply(image.copy(), profile)
    assert anonymizer.counters.faces_blurred == 1


def test_a_face_turning_near_the_limit_keeps_its_synthetic_face(
    media_dir: Path, face_detector: MultiDetector
) -> None:
    image = cv2.imread(str(media_dir / "astronaut.png"))
    found = face_detector.detect(image)[:1]
    eyes = found.keypoints[0, :2]
    eye_distance = float(np.linalg.norm(eyes[1] - eyes[0]))

    def turned(nose_offset: float) -> Detections:
        keypoints = found.keypoints.copy()
        keypoints[0, 2, 0] = eyes[:, 0].mean() + nose_offset * eye_distance
        return Detections(found.xyxy, found.confidence, found.label, np.array([3], np.int64), keypoints)

    anonymizer = _replacer(replace_smoothing=0.0)
    anonymizer.apply(image.copy(), turned(0.3))
    for offset in (0.65, 0.7, 0.65, 0.7):  # just past the limit a new face would get, for a few frames
        anonymizer.apply(image.copy(), turned(offset))
    assert (anonymizer.counters.faces_replaced, anonymizer.counters.faces_blurred) == (5, 0)
    anonymizer.apply(image.copy(), turned(1.0))  # turned well away: blurred
    assert anonymizer.counters.faces_blurred == 1
    fresh = _replacer(replace_smoothing=0.0)
    fresh.apply(image.copy(), turned(0.7))  # the same pose on a track seen for the first time: blurred
    assert fresh.counters.faces_blurred == 1


def test_plate_without_quadrilateral_is_filled() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (100, 160, 3), dtype=np.uint8)  # noise: no bright plate shape
    plates = Detections.from_boxes([[40, 30, 120, 60]], Label.LICENSE_PLATE)
    anonymizer = _replacer()
    out = anonymizer.apply(image.copy(), plates)
    assert anonymizer.counters.plates_filled == 1
    x1, y1, x2, y2 = 28, 26, 132, 64  # the box grown by the 15% margin
    roi = out[y1:y2, x1:x2].reshape(-1, 3)
    assert (roi == roi[0]).all()


def test_coasting_track_keeps_its_replacement(media_dir: Path, face_detector: MultiDetector) -> None:
    image = cv2.imread(str(media_dir / "astronaut.png"))
    found = face_detector.detect(image).with_track_ids(np.array([3], np.int64))
    anonymizer = _replacer()
    anonymizer.apply(image.copy(), found)
    coasting = Detections(found.xyxy, found.confidence, found.label, found.track_id)  # keypoints NaN
    anonymizer.apply(image.copy(), coasting)
    assert anonymizer.counters.faces_replaced == 2


def test_plate_text_is_reserved_and_per_track() -> None:
    assert plate_text(5, 0, "eu").startswith(PREFIX)
    assert plate_text(5, 0, "us") == plate_text(5, 3, "us")
    assert plate_text(5, 0, "eu") != plate_text(6, 0, "eu")


def test_flat_box_has_no_quadrilateral() -> None:
    assert find_quad(np.full((30, 90, 3), 128, np.uint8)) is None


@pytest.mark.parametrize("k", [5, 10, 20])
def test_larger_k_averages_sources_further(k: int) -> None:
    sources = load_sources(SOURCE_FACES_DIR, k)
    assert sources and min(s.k for s in sources) >= k


def test_method_replace_from_config() -> None:
    config = parse_config({"anonymize": {"method": "replace", "replace_k": 10, "plate_style": "us"}})
    anonymizer = Anonymizer.from_config(config.anonymize)
    assert isinstance(anonymizer, ReplacingAnonymizer)
    assert anonymizer.mask_region(np.zeros((8, 8, 3), np.uint8)).shape == (8, 8, 3)
    assert np.array_equal(
        anonymizer.mask_region(np.full((8, 8, 3), 7, np.uint8)), blur_region(np.full((8, 8, 3), 7, np.uint8))
    )
