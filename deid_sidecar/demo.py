"""The embedded default: a looping demo camera built from real test media.

`deid-sidecar run` without a config serves one camera, `demo`, whose source is a clip composed at
first use from media fetched by `deid-sidecar media fetch`: real faces (insightface's t1.jpg group
photo) and a real car with a readable plate (fast-alpr's test image) moving over a real
surveillance video (OpenCV's vtest.avi).
"""

from __future__ import annotations

import logging
import math
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

#: Head crops in t1.jpg (1280x886): six people around a table.
HEADS = ((40, 230, 190, 430), (280, 110, 410, 270), (450, 220, 610, 430), (730, 290, 880, 450),
         (880, 10, 1060, 220), (1120, 240, 1260, 420))  # fmt: skip
#: The car and its plate in fast-alpr's test_image.png (518x331).
CAR = (40, 40, 455, 275)


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


def _soft_alpha(height: int, width: int) -> np.ndarray:
    """Elliptical alpha with a feathered edge, so pasted heads look like part of the scene."""
    alpha = np.zeros((height, width), np.float32)
    cv2.ellipse(alpha, (width // 2, height // 2), (width // 2 - 2, height // 2 - 2), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(alpha, (0, 0), max(1.0, width / 20))[..., None]


def _paste(frame: np.ndarray, patch: np.ndarray, alpha: np.ndarray | None, x: int, y: int) -> None:
    h, w = patch.shape[:2]
    fh, fw = frame.shape[:2]
    x1, y1, x2, y2 = max(0, x), max(0, y), min(fw, x + w), min(fh, y + h)
    if x2 <= x1 or y2 <= y1:
        return
    src = patch[y1 - y : y2 - y, x1 - x : x2 - x].astype(np.float32)
    dst = frame[y1:y2, x1:x2].astype(np.float32)
    a = 1.0 if alpha is None else alpha[y1 - y : y2 - y, x1 - x : x2 - x]
    frame[y1:y2, x1:x2] = (src * a + dst * (1 - a)).astype(np.uint8)


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


def build_demo_clip(media_dir: Path = MEDIA_DIR) -> Path:
    """Compose the demo clip (about 10 s of CPU once); returns its path."""
    target = media_dir / DEMO_CLIP
    group = _read(_media(media_dir, "t1.jpg"))
    car_image = _read(_media(media_dir, "test_image.png"))
    backgrounds = _background_frames(_media(media_dir, "vtest.avi"))
    heads = [cv2.resize(group[y1:y2, x1:x2], None, fx=0.8, fy=0.8) for x1, y1, x2, y2 in HEADS]
    x1, y1, x2, y2 = CAR
    car = car_image[y1:y2, x1:x2]
    tmp = target.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for index, background in enumerate(backgrounds):
            frame = background.copy()
            _compose(frame, index, heads, car)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    tmp.replace(target)
    log.info("demo clip written to %s", target)
    return target


def _compose(frame: np.ndarray, index: int, heads: list[np.ndarray], car: np.ndarray) -> None:
    t = index / FPS
    width, height = SIZE
    for n, head in enumerate(heads):
        phase = n / len(heads)
        # Heads drift across the frame along different lanes, bobbing a little like walkers.
        x = int(((phase + t / SECONDS) % 1.0) * (width + head.shape[1])) - head.shape[1]
        y = int(60 + (n % 3) * 190 + 12 * math.sin(2 * math.pi * (t + phase)))
        _paste(frame, head, _soft_alpha(*head.shape[:2]), x, y)
    car_x = int(width - (t / SECONDS) * (width + car.shape[1]))
    _paste(frame, car, None, car_x, height - car.shape[0] - 10)


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
