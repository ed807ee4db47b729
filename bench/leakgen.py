"""Generate benchmark clips with EXACT ground truth: real faces and plates composited over real video.

Background: OpenCV's `vtest.avi` (a real surveillance clip) upscaled to 1280x720 at 15 fps. Objects:
whole-head crops from insightface's `t1.jpg` (6 faces) and scikit-image's `astronaut.png`, and the car
with its plate from fast-alpr's `test_image.png`, pasted with a soft alpha edge and moved along one
motion type per clip. The ground truth box is the FACE (or the plate) inside the pasted patch.

    python bench/leakgen.py --media data/media --out bench/out/clips [--quick]

Media comes from `deid-sidecar media fetch t1 astronaut car-plate vtest` (data/media/).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

WIDTH, HEIGHT, FPS = 1280, 720, 15
CRF = 18
HEAD_MARGIN = 0.45  # the pasted patch reaches this far beyond the face box: hair, ears, chin
FEATHER = 0.12  # soft alpha edge, as a fraction of the patch's smaller side
MIN_VISIBLE = 0.5  # a box counts only while this share of it lies inside the frame and is not hidden
#: Faces crossing an edge count from a QUARTER visible: a quarter face (an eye, half a mouth) identifies.
EDGE_MIN_VISIBLE = 0.25
EDGE_MOTIONS = ("edge_in", "edge_out")
MOTIONS = ("walk_across", "approach", "pop_in", *EDGE_MOTIONS, "fast", "occlusion", "small", "plate_on_car")
#: A face box is about this much taller than wide (the GT boxes of the source photos).
FACE_ASPECT = 1.2

#: Face boxes (x1, y1, x2, y2) in the source photos, checked by eye.
FACE_BOXES = {
    "t1.jpg": [
        (45, 255, 145, 390),
        (290, 140, 400, 270),
        (448, 271, 587, 410),
        (729, 356, 843, 470),
        (1114, 277, 1232, 395),
        (895, 55, 1030, 205),
    ],
    "astronaut.png": [(177, 66, 272, 161)],
}
#: The car crop and the plate inside test_image.png (fast-alpr).
CAR_CROP = (40, 40, 455, 275)
PLATE_BOX = (304, 189, 389, 211)


@dataclass
class Sprite:
    """A patch to paste, its alpha, and the ground-truth box inside it (patch pixels)."""

    image: np.ndarray  # h x w x 3 BGR
    alpha: np.ndarray  # h x w float32 0..1
    box: tuple[float, float, float, float]
    label: str

    def scaled(self, box_width: float) -> Sprite:
        """The sprite resized so that its ground-truth box is `box_width` pixels wide."""
        factor = box_width / (self.box[2] - self.box[0])
        h, w = self.image.shape[:2]
        size = (max(2, round(w * factor)), max(2, round(h * factor)))
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
        image = cv2.resize(self.image, size, interpolation=interp)
        alpha = cv2.resize(self.alpha, size, interpolation=cv2.INTER_LINEAR)
        fx, fy = size[0] / w, size[1] / h
        box = (self.box[0] * fx, self.box[1] * fy, self.box[2] * fx, self.box[3] * fy)
        return Sprite(image, alpha, box, self.label)


def find_media(media_dir: Path, name: str) -> Path:
    hits = sorted(media_dir.rglob(name))
    if not hits:
        raise FileNotFoundError(
            f"{name} not found under {media_dir}: run `deid-sidecar media fetch t1 astronaut car-plate vtest`"
        )
    return hits[0]


def soft_alpha(h: int, w: int) -> np.ndarray:
    """Opaque centre, edges fading to zero: no hard seam a detector or the metric could key on."""
    edge = max(2, round(FEATHER * min(h, w)))
    ramp_y = np.clip(np.minimum(np.arange(h), np.arange(h)[::-1]) / edge, 0, 1)
    ramp_x = np.clip(np.minimum(np.arange(w), np.arange(w)[::-1]) / edge, 0, 1)
    return np.outer(ramp_y, ramp_x).astype(np.float32)


def crop_sprite(image: np.ndarray, box: tuple[int, int, int, int], margin: float, label: str) -> Sprite:
    x1, y1, x2, y2 = box
    mw, mh = (x2 - x1) * margin, (y2 - y1) * margin
    cx1, cy1 = max(0, int(x1 - mw)), max(0, int(y1 - mh))
    cx2, cy2 = min(image.shape[1], int(x2 + mw)), min(image.shape[0], int(y2 + mh))
    patch = image[cy1:cy2, cx1:cx2].copy()
    inner = (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1)
    return Sprite(patch, soft_alpha(*patch.shape[:2]), tuple(float(v) for v in inner), label)  # type: ignore[arg-type]


def load_sprites(media_dir: Path) -> tuple[list[Sprite], Sprite]:
    faces: list[Sprite] = []
    for name, boxes in FACE_BOXES.items():
        image = cv2.imread(str(find_media(media_dir, name)), cv2.IMREAD_COLOR)
        faces += [crop_sprite(image, box, HEAD_MARGIN, "face") for box in boxes]
    car_image = cv2.imread(str(find_media(media_dir, "test_image.png")), cv2.IMREAD_COLOR)
    x1, y1, x2, y2 = CAR_CROP
    car = car_image[y1:y2, x1:x2].copy()
    plate = (PLATE_BOX[0] - x1, PLATE_BOX[1] - y1, PLATE_BOX[2] - x1, PLATE_BOX[3] - y1)
    return faces, Sprite(car, soft_alpha(*car.shape[:2]), tuple(float(v) for v in plate), "license_plate")  # type: ignore[arg-type]


def load_background(media_dir: Path, frames: int, start: int) -> list[np.ndarray]:
    """vtest.avi (10 fps) resampled to 15 fps and stretched to 1280x720."""
    needed = start + math.ceil(frames * 10 / FPS) + 1
    source: list[np.ndarray] = []
    with av.open(str(find_media(media_dir, "vtest.avi"))) as container:
        for frame in container.decode(video=0):
            source.append(frame.to_ndarray(format="bgr24"))
            if len(source) >= needed:
                break
    out = []
    for i in range(frames):
        index = min(len(source) - 1, start + int(i * 10 / FPS))
        out.append(cv2.resize(source[index], (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC))
    return out


# --- motion: position (centre of the GT box) and GT box width at frame i -------------------------

Path_ = Callable[[int], tuple[float, float, float] | None]


@dataclass
class Actor:
    sprite: Sprite
    motion: str
    path: Path_  # frame -> (cx, cy, box width) or None when absent
    actor_id: int


def _linear(x0: float, y0: float, vx: float, vy: float, width: float, start: int = 0) -> Path_:
    def at(i: int) -> tuple[float, float, float] | None:
        if i < start:
            return None
        s = (i - start) / FPS
        return x0 + vx * s, y0 + vy * s, width

    return at


def _edge_path(edge: str, entering: bool, width: float, speed: float, lane: float, start: int) -> Path_:
    """A face crossing `edge`: entering from just outside (5% of its box in view), or leaving from
    just inside (whole, 20 px from the edge) until it is gone."""
    half_w, half_h = width / 2, width * FACE_ASPECT / 2
    outside = {
        "left": -0.9 * half_w,
        "right": WIDTH + 0.9 * half_w,
        "top": -0.9 * half_h,
        "bottom": HEIGHT + 0.9 * half_h,
    }
    inside = {
        "left": half_w + 20,
        "right": WIDTH - half_w - 20,
        "top": half_h + 20,
        "bottom": HEIGHT - half_h - 20,
    }
    outward = {"left": -1.0, "right": 1.0, "top": -1.0, "bottom": 1.0}[edge]
    along = (-outward if entering else outward) * speed
    at = outside[edge] if entering else inside[edge]
    if edge in ("left", "right"):
        return _linear(at, lane, along, 0, width, start)
    return _linear(lane, at, 0, along, width, start)


def _edge_actors(
    motion: str, rng: np.random.Generator, face: Callable[[int], Sprite], duration: float
) -> list[Actor]:
    """One face per edge, staggered in time, at walking speeds."""
    actors = []
    for k, edge in enumerate(("left", "right", "top", "bottom")):
        width = float(rng.uniform(60, 110))
        lane = float(rng.uniform(160, 560)) if edge in ("left", "right") else float(rng.uniform(250, 1030))
        start = int(k * duration * FPS / 5)
        path = _edge_path(edge, motion == "edge_in", width, float(rng.uniform(80, 160)), lane, start)
        actors.append(Actor(face(k), motion, path, k))
    return actors


def make_actors(
    motion: str, rng: np.random.Generator, faces: list[Sprite], car: Sprite, frames: int
) -> list[Actor]:
    duration = frames / FPS
    pick = rng.permutation(len(faces))
    actors: list[Actor] = []

    def face(k: int) -> Sprite:
        return faces[int(pick[k % len(faces)])]

    lanes = rng.permutation([180.0, 330.0, 480.0, 600.0])
    if motion == "walk_across":
        for k in range(2):
            width = float(rng.uniform(55, 90))
            direction = 1 if k % 2 == 0 else -1
            speed = (WIDTH + 200) / duration * direction
            x0 = -80.0 if direction > 0 else WIDTH + 80.0
            actors.append(Actor(face(k), motion, _linear(x0, lanes[k], speed, 0, width), k))
    elif motion == "approach":
        for k in range(2):
            x = 320.0 + 640 * k + rng.uniform(-60, 60)
            grow = (150 - 30) / duration

            def at(
                i: int, x: float = x, y: float = float(lanes[k]), grow: float = grow
            ) -> tuple[float, float, float]:
                return x, min(y, HEIGHT - 120.0), 30 + grow * i / FPS

            actors.append(Actor(face(k), motion, at, k))
    elif motion == "pop_in":
        for k in range(3):
            start = int(rng.integers(frames // 6, frames * 2 // 3))
            x, y = float(rng.uniform(200, WIDTH - 200)), float(lanes[k])
            actors.append(
                Actor(face(k), motion, _linear(x, y, rng.uniform(-20, 20), 0, rng.uniform(50, 90), start), k)
            )
    elif motion in EDGE_MOTIONS:
        actors += _edge_actors(motion, rng, face, duration)
    elif motion == "fast":
        for k in range(2):
            speed = float(rng.uniform(500, 700)) * (1 if k == 0 else -1)
            x0 = -60.0 if speed > 0 else WIDTH + 60.0
            actors.append(Actor(face(k), motion, _linear(x0, lanes[k], speed, 0, rng.uniform(55, 75)), k))
    elif motion == "occlusion":
        speed = (WIDTH - 200) / duration
        actors.append(Actor(face(0), motion, _linear(100.0, lanes[0], speed, 0, 70.0), 0))
        actors.append(Actor(face(1), motion, _linear(WIDTH - 100.0, lanes[1], -speed, 0, 80.0), 1))
    elif motion == "small":
        for k in range(5):
            y = 120.0 + 110 * k
            x0 = float(rng.uniform(100, WIDTH - 300))
            actors.append(
                Actor(face(k), motion, _linear(x0, y, rng.uniform(-60, 60), 0, rng.uniform(20, 40)), k)
            )
    elif motion == "plate_on_car":
        width = float(rng.uniform(90, 130))
        speed = (WIDTH + 600) / duration
        actors.append(Actor(car, motion, _linear(-250.0, float(rng.uniform(420, 520)), speed, 0, width), 0))
    else:
        raise ValueError(f"unknown motion {motion}")
    return actors


def occluder(motion: str) -> tuple[int, int, int, int] | None:
    """A static grey pillar in the middle of the frame for the occlusion clips."""
    return (WIDTH // 2 - 70, 0, WIDTH // 2 + 70, HEIGHT) if motion == "occlusion" else None


def paste(frame: np.ndarray, sprite: Sprite, cx: float, cy: float, width: float) -> tuple[float, ...]:
    """Alpha-paste the sprite so its GT box is centred on (cx, cy); returns the GT box in frame pixels."""
    s = sprite.scaled(width)
    bx = (s.box[0] + s.box[2]) / 2
    by = (s.box[1] + s.box[3]) / 2
    ox, oy = round(cx - bx), round(cy - by)
    h, w = s.image.shape[:2]
    fx1, fy1, fx2, fy2 = max(0, ox), max(0, oy), min(WIDTH, ox + w), min(HEIGHT, oy + h)
    if fx1 < fx2 and fy1 < fy2:
        patch = s.image[fy1 - oy : fy2 - oy, fx1 - ox : fx2 - ox].astype(np.float32)
        alpha = s.alpha[fy1 - oy : fy2 - oy, fx1 - ox : fx2 - ox, None]
        region = frame[fy1:fy2, fx1:fx2].astype(np.float32)
        frame[fy1:fy2, fx1:fx2] = np.clip(alpha * patch + (1 - alpha) * region, 0, 255).astype(np.uint8)
    return (s.box[0] + ox, s.box[1] + oy, s.box[2] + ox, s.box[3] + oy)


def _visible_share(box: tuple[float, ...], hidden: tuple[int, int, int, int] | None) -> float:
    x1, y1, x2, y2 = box
    area = max(1e-6, (x2 - x1) * (y2 - y1))
    ix1, iy1, ix2, iy2 = max(0, x1), max(0, y1), min(WIDTH, x2), min(HEIGHT, y2)
    inside = max(0, ix2 - ix1) * max(0, iy2 - iy1)
    if hidden is not None:
        hx1, hy1, hx2, hy2 = hidden
        ox = max(0, min(ix2, hx2) - max(ix1, hx1))
        oy = max(0, min(iy2, hy2) - max(iy1, hy1))
        inside -= ox * oy
    return inside / area


def render(
    background: list[np.ndarray], actors: list[Actor], motion: str
) -> tuple[list[np.ndarray], list[list[dict[str, object]]]]:
    bar = occluder(motion)
    frames, truth = [], []
    for i, base in enumerate(background):
        frame = base.copy()
        objects: list[dict[str, object]] = []
        for actor in actors:
            where = actor.path(i)
            if where is None:
                continue
            box = paste(frame, actor.sprite, *where)
            share = _visible_share(box, bar)
            if share <= 0:
                continue
            clipped = [max(0.0, box[0]), max(0.0, box[1]), min(WIDTH, box[2]), min(HEIGHT, box[3])]
            objects.append(
                {
                    "label": actor.sprite.label,
                    "box": [round(v, 1) for v in clipped],
                    "motion": motion,
                    "id": actor.actor_id,
                    "visible": share >= (EDGE_MIN_VISIBLE if motion in EDGE_MOTIONS else MIN_VISIBLE),
                }
            )
        if bar is not None:
            cv2.rectangle(frame, bar[:2], bar[2:], (90, 95, 100), thickness=-1)
        frames.append(frame)
        truth.append(objects)
    return frames, truth


def write_video(path: Path, frames: list[np.ndarray], crf: int = CRF) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "fast"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@dataclass(frozen=True)
class ClipSpec:
    motion: str
    seed: int
    frames: int

    @property
    def name(self) -> str:
        # The length is in the name: quick and full clips of one seed are different clips (cached apart).
        return f"{self.motion}_s{self.seed}_{self.frames}f"


def clip_specs(quick: bool) -> list[ClipSpec]:
    seeds, frames = ((0,), 60) if quick else ((0, 1, 2), 120)
    return [ClipSpec(m, s, frames) for m in MOTIONS for s in seeds]


def generate(spec: ClipSpec, media_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write <name>.mp4 and <name>.json unless both exist (clips are cached)."""
    video, truth_path = out_dir / f"{spec.name}.mp4", out_dir / f"{spec.name}.json"
    if video.exists() and truth_path.exists():
        return video, truth_path
    rng = np.random.default_rng(1000 + spec.seed * 31 + MOTIONS.index(spec.motion))
    faces, car = load_sprites(media_dir)
    start = int(rng.integers(0, 600))
    background = load_background(media_dir, spec.frames, start)
    frames, truth = render(background, make_actors(spec.motion, rng, faces, car, spec.frames), spec.motion)
    write_video(video, frames)
    truth_path.write_text(json.dumps({"fps": FPS, "size": [WIDTH, HEIGHT], "frames": truth}))
    return video, truth_path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--media", default="data/media", type=Path)
    parser.add_argument("--out", default="bench/out/clips", type=Path)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for spec in clip_specs(args.quick):
        video, _ = generate(spec, args.media, args.out)
        print(video)


if __name__ == "__main__":
    main()
