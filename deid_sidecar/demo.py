"""The embedded default: a looping demo camera built from real test media.

`deid-sidecar run` without a config serves one camera, `demo`, whose source is a clip composed at
first use from media fetched by `deid-sidecar media fetch`: real faces (insightface's t1.jpg group
photo) and a real car with a readable plate (fast-alpr's test image) moving over a real
surveillance video (OpenCV's vtest.avi).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from deid_sidecar.config import Config, parse_config
from deid_sidecar.core.image import Image, as_image
from deid_sidecar.errors import UserError

log = logging.getLogger(__name__)

MEDIA_DIR = Path("data/media")
DEMO_CLIP = "demo.mp4"
SIZE = (1280, 720)
FPS = 15
SECONDS = 12

#: The six faces in t1.jpg (1280x886), as CenterFace boxes them; each is pasted with its whole head.
FACES = ((60, 269, 168, 394), (274, 155, 371, 268), (464, 267, 572, 412), (746, 345, 847, 480),
         (903, 61, 1010, 204), (1135, 270, 1226, 395))  # fmt: skip
#: Hair and neck around each face, as a fraction of the face size on each side.
HEAD_MARGIN = 0.35
HEAD_SCALE = 0.8
#: The car and its plate in fast-alpr's test_image.png (518x331).
CAR = (40, 40, 455, 275)
PLATE = (305, 189, 388, 210)

GroundTruth = list[tuple[str, tuple[int, int, int, int]]]


def _media(media_dir: Path, name: str) -> Path:
    path = media_dir / name
    if not path.is_file():
        raise UserError(f"demo media {path} is missing; fetch it with: deid-sidecar media fetch")
    return path


def _read(path: Path) -> Image:
    image = cv2.imread(str(path))
    if image is None:
        raise UserError(f"{path} is not a readable image; fetch it again with: deid-sidecar media fetch")
    return as_image(image)


@dataclass(frozen=True)
class _Head:
    image: Image
    face: tuple[int, int, int, int]  # the face inside `image`


def _head(group: Image, face: tuple[int, int, int, int]) -> _Head:
    x1, y1, x2, y2 = face
    mx, my = round((x2 - x1) * HEAD_MARGIN), round((y2 - y1) * HEAD_MARGIN)
    hx1, hy1 = max(0, x1 - mx), max(0, y1 - my)
    crop = group[hy1 : y2 + my, hx1 : x2 + mx]
    inner = (x1 - hx1, y1 - hy1, x2 - hx1, y2 - hy1)
    image = as_image(cv2.resize(crop, None, fx=HEAD_SCALE, fy=HEAD_SCALE, interpolation=cv2.INTER_AREA))
    return _Head(image, tuple(round(v * HEAD_SCALE) for v in inner))  # type: ignore[arg-type]


def _soft_alpha(height: int, width: int) -> np.ndarray:
    """Elliptical alpha with a feathered edge, so pasted heads look like part of the scene."""
    alpha = np.zeros((height, width), np.float32)
    cv2.ellipse(alpha, (width // 2, height // 2), (width // 2 - 2, height // 2 - 2), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(alpha, (0, 0), max(1.0, width / 20))[..., None]


def _paste(frame: np.ndarray, patch: np.ndarray, alpha: np.ndarray | None, x: int, y: int) -> bool:
    """Blend `patch` in at (x, y); False when it is entirely outside the frame."""
    h, w = patch.shape[:2]
    fh, fw = frame.shape[:2]
    x1, y1, x2, y2 = max(0, x), max(0, y), min(fw, x + w), min(fh, y + h)
    if x2 <= x1 or y2 <= y1:
        return False
    src = patch[y1 - y : y2 - y, x1 - x : x2 - x].astype(np.float32)
    dst = frame[y1:y2, x1:x2].astype(np.float32)
    a = 1.0 if alpha is None else alpha[y1 - y : y2 - y, x1 - x : x2 - x]
    frame[y1:y2, x1:x2] = (src * a + dst * (1 - a)).astype(np.uint8)
    return True


def _background_frames(path: Path) -> list[np.ndarray]:
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            h, w = image.shape[:2]
            crop_h = w * SIZE[1] // SIZE[0]  # 4:3 -> 16:9, keep the middle
            top = (h - crop_h) // 2
            frames.append(cv2.resize(image[top : top + crop_h], SIZE, interpolation=cv2.INTER_LINEAR))
            if len(frames) >= FPS * SECONDS:
                break
    return frames


def build_demo_clip(
    media_dir: Path = MEDIA_DIR, target: Path | None = None, seconds: float = SECONDS
) -> tuple[Path, list[GroundTruth]]:
    """Compose the demo clip (about 10 s of CPU once); returns its path and per-frame true boxes."""
    target = target or media_dir / DEMO_CLIP
    group = _read(_media(media_dir, "t1.jpg"))
    car_image = _read(_media(media_dir, "test_image.png"))
    backgrounds = _background_frames(_media(media_dir, "vtest.avi"))[: round(seconds * FPS)]
    heads = [_head(group, face) for face in FACES]
    x1, y1, x2, y2 = CAR
    car = car_image[y1:y2, x1:x2]
    truth: list[GroundTruth] = []
    tmp = target.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for index, background in enumerate(backgrounds):
            frame = background.copy()
            truth.append(_compose(frame, index, heads, car))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    tmp.replace(target)
    log.info("demo clip written to %s", target)
    return target, truth


def _compose(frame: np.ndarray, index: int, heads: list[_Head], car: np.ndarray) -> GroundTruth:
    t = index / FPS
    width, height = SIZE
    truth: GroundTruth = []
    # The car drives along the bottom; heads pass in front of it, so a plate may be hidden.
    car_x = int(width - (t / SECONDS) * (width + car.shape[1]))
    car_y = height - car.shape[0] - 10
    plate: tuple[int, int, int, int] | None = None
    if _paste(frame, car, None, car_x, car_y):
        dx, dy = car_x - CAR[0], car_y - CAR[1]
        plate = (PLATE[0] + dx, PLATE[1] + dy, PLATE[2] + dx, PLATE[3] + dy)
    heads_at: list[tuple[int, int, int, int]] = []
    for n, head in enumerate(heads):
        phase = n / len(heads)
        h, w = head.image.shape[:2]
        # Heads drift across the frame along different lanes, bobbing a little like walkers.
        x = int(((phase + t / SECONDS) % 1.0) * (width + w)) - w
        y = int(60 + (n % 3) * 190 + 12 * math.sin(2 * math.pi * (t + phase)))
        if _paste(frame, head.image, _soft_alpha(h, w), x, y):
            fx1, fy1, fx2, fy2 = head.face
            truth.append(("face", (x + fx1, y + fy1, x + fx2, y + fy2)))
            heads_at.append((x, y, x + w, y + h))
    if plate is not None and not any(_overlap(plate, head) for head in heads_at):
        truth.append(("license_plate", plate))
    return truth


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def demo_config(media_dir: Path = MEDIA_DIR) -> Config:
    """The embedded default config: one looping demo camera, no go2rtc, no MQTT."""
    clip = media_dir / DEMO_CLIP
    if not clip.is_file():
        build_demo_clip(media_dir)
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 8080},
            "cameras": {"demo": {"source": f"file:{clip}", "loop": True, "output": {"fps": FPS}}},
        }
    )
