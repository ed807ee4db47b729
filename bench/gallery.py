"""Before/after gallery for `method: replace` (docs/gallery/*.png) and its cost per replaced object.

Real faces from the test media never appear clear in the committed gallery: the astronaut portrait
(public domain, NASA) is the only clear "before"; other before images are shown blurred.

    .venv/bin/python bench/gallery.py [--out docs/gallery] [--calls 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from deid_sidecar.anonymize.masks import Anonymizer, blur_region
from deid_sidecar.config import AnonymizeConfig, Method, parse_config
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.detect.detector import MultiDetector, build_detector
from deid_sidecar.models import fetch, registry

ROOT = Path(__file__).resolve().parents[1]
PNG = [cv2.IMWRITE_PNG_COMPRESSION, 9]
MAX_WIDTH = 560  # gallery images are downscaled to this width (PNG under 300 KB)


def detectors() -> tuple[MultiDetector, MultiDetector]:
    fetch.fetch_models(registry.default_model_ids(), ROOT / "models")
    config = parse_config({"models_dir": str(ROOT / "models"), "detection": {"providers": ["cpu"]}})
    return build_detector(config, {Label.FACE}), build_detector(config, {Label.LICENSE_PLATE})


def replaced(image: np.ndarray, found: Detections, style: str = "eu") -> np.ndarray:
    anonymizer = Anonymizer.from_config(AnonymizeConfig(method=Method.REPLACE, plate_style=style))  # type: ignore[arg-type]
    return anonymizer.apply(image.copy(), found)


def side_by_side(before: np.ndarray, after: np.ndarray, blur_before: bool) -> np.ndarray:
    if blur_before:
        # A blurred thumbnail: the layout is visible, the real people in it are not.
        small = cv2.resize(before, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
        before = cv2.resize(cv2.GaussianBlur(small, (0, 0), 3), before.shape[1::-1])
    pair = np.hstack([before, np.full((before.shape[0], 8, 3), 255, np.uint8), after])
    scale = min(1.0, MAX_WIDTH / pair.shape[1])
    return cv2.resize(pair, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def write_gallery(out: Path, faces: MultiDetector, plates: MultiDetector) -> None:
    media = ROOT / "data" / "media"
    fetch.fetch_media(["astronaut", "t1", "car-plate"], media)
    out.mkdir(parents=True, exist_ok=True)
    astronaut = cv2.imread(str(media / "astronaut.png"))
    crop = astronaut[:300, 80:400]
    cv2.imwrite(
        str(out / "replace_face_astronaut.png"),
        side_by_side(crop, replaced(crop, faces.detect(crop)), False),
        PNG,
    )
    cv2.imwrite(str(out / "replace_face_poses.png"), poses(astronaut, faces), PNG)
    group = cv2.imread(str(media / "t1.jpg"))
    cv2.imwrite(
        str(out / "replace_faces_group.png"),
        side_by_side(group, replaced(group, faces.detect(group)), True),
        PNG,
    )
    car = cv2.imread(str(media / "test_image.png"))
    found = plates.detect(car)
    x1, y1, x2, y2 = found.xyxy[0].astype(int)
    window = (slice(max(0, y1 - 80), y2 + 80), slice(max(0, x1 - 120), x2 + 120))
    for style in ("eu", "us", "generic"):
        after = replaced(car, found, style)[window]
        before = blur_region(car[window].copy()) if style == "eu" else None
        if before is not None:
            cv2.imwrite(str(out / "replace_plate_before_blurred.png"), before, PNG)
        cv2.imwrite(str(out / f"replace_plate_{style}.png"), after, PNG)
    cv2.imwrite(str(out / "replace_plate_angled.png"), angled_plate(car, plates), PNG)
    for path in sorted(out.glob("replace_*.png")):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB")


def poses(astronaut: np.ndarray, faces: MultiDetector) -> np.ndarray:
    """The astronaut's head tilted (-20, 0, +20 degrees) and at 60 and 150 px: before above, after below."""
    head = astronaut[:300, 80:400]
    tiles = []
    for angle, face_px in ((-20, 100), (0, 60), (0, 150), (20, 100)):
        scale = face_px / 95.0  # the face box in the full portrait is about 95 px wide
        turn = cv2.getRotationMatrix2D((160, 150), angle, scale)
        tile = cv2.warpAffine(head, turn, (320, 300), borderMode=cv2.BORDER_REFLECT)
        tiles.append(
            np.vstack([tile, np.full((6, 320, 3), 255, np.uint8), replaced(tile, faces.detect(tile))])
        )
    strip = np.hstack([np.hstack([t, np.full((t.shape[0], 6, 3), 255, np.uint8)]) for t in tiles])[:, :-6]
    scale = min(1.0, MAX_WIDTH / strip.shape[1])
    return cv2.resize(strip, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def angled_plate(car: np.ndarray, plates: MultiDetector) -> np.ndarray:
    """The car seen from one side (a perspective warp): the synthetic plate follows the plate's outline.

    The "before" shows the real plate blurred, so the committed gallery never carries its number.
    """
    h, w = car.shape[:2]
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    dst = np.array([[0, 0.12 * h], [w, 0], [w, h], [0, 0.88 * h]], np.float32)
    turn = cv2.getPerspectiveTransform(src, dst)
    view = cv2.warpPerspective(car, turn, (w, h), borderMode=cv2.BORDER_REPLICATE)
    found = plates.detect(view)
    if not len(found):
        raise RuntimeError("the plate detector found no plate on the angled view")
    x1, y1, x2, y2 = found.xyxy[0].astype(int)
    before = view.copy()
    before[y1:y2, x1:x2] = blur_region(before[y1:y2, x1:x2].copy())
    after = replaced(view, found)
    window = (slice(max(0, y1 - 60), y2 + 60), slice(max(0, x1 - 90), x2 + 90))
    pair = np.hstack([before[window], np.full((y2 - y1 + 120, 8, 3), 255, np.uint8), after[window]])
    return cv2.resize(pair, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_CUBIC)


def median_ms(anonymizer: Anonymizer, frame: np.ndarray, found: Detections, calls: int) -> float:
    times = []
    for _ in range(calls):
        image = frame.copy()
        started = time.perf_counter()
        anonymizer.apply(image, found)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def timing(faces: MultiDetector, plates: MultiDetector, calls: int) -> None:
    """ms per replaced object on a 720p frame, 100 px face; blur on the same boxes for comparison."""
    media = ROOT / "data" / "media"
    astronaut = cv2.imread(str(media / "astronaut.png"))
    box = faces.detect(astronaut).xyxy[0]
    scale = 100.0 / float(box[2] - box[0])
    frame = np.full((720, 1280, 3), 120, np.uint8)
    small = cv2.resize(astronaut, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame[: small.shape[0], 360 : 360 + small.shape[1]] = small[:720]
    face = faces.detect(frame).with_track_ids(np.array([1], np.int64))
    car = cv2.resize(cv2.imread(str(media / "test_image.png")), (1280, 720))
    plate = plates.detect(car).with_track_ids(np.array([1], np.int64))
    for name, image, found in (("face", frame, face[:1]), ("plate", car, plate[:1])):
        width = float(found.xyxy[0, 2] - found.xyxy[0, 0])
        replace = Anonymizer.from_config(AnonymizeConfig(method=Method.REPLACE))
        blur = Anonymizer(Method.BLUR)
        print(
            f"{name} ({width:.0f} px wide, 720p): replace {median_ms(replace, image, found, calls):.2f} ms, "
            f"blur {median_ms(blur, image, found, calls):.2f} ms (median of {calls})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gallery")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    faces, plates = detectors()
    write_gallery(args.out, faces, plates)
    timing(faces, plates, args.calls)


if __name__ == "__main__":
    main()
