"""Face replacement: paint a k-anonymous synthetic face over each face, aligned on its 5 landmarks.

Source faces (deid_sidecar/data/source_faces/, built by scripts/build_source_faces.py) are averages of k real
faces in a canonical 128x128 frame. Per face: the whole box is blurred first (hair, ears and anything
the synthetic face does not cover must not stay clear), then the source, colour-matched to the target
in LAB, is warped onto the landmarks with alpha = 1 over the inner face ellipse (brows, eyes, nose,
mouth) and a feathered edge around it. No original pixel of the inner face survives. Last, wherever
the synthetic face's fine detail happens to follow the original's (both are aligned on the same
landmarks), it is toned down (`decorrelate`), so the output carries none of the original's edges.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from deid_sidecar.anonymize.regions import blur_region
from deid_sidecar.core.detections import NO_TRACK
from deid_sidecar.core.image import Image, as_image

FloatArray = npt.NDArray[np.float32]

CANONICAL_SIZE = 128
#: ArcFace's 112 px five-point template moved into the 128 px canvas: left eye, right eye, nose,
#: left and right mouth corner. A common template keeps the sources interchangeable.
CANONICAL_LANDMARKS = (
    np.array(
        [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
        np.float32,
    )
    + 8.0
)
#: The inner face (brows to below the mouth) as an ellipse in canonical pixels: alpha is 1 inside.
INNER_CENTER = (64.0, 76.0)
INNER_AXES = (37.0, 46.0)
#: Feathered band outside the inner ellipse, as a fraction of its radius.
FEATHER = 0.25
#: Target contrast may differ from the source's by at most this factor: a very flat (dark, blurred)
#: target would otherwise give a flat face, a very busy one a harsh one.
CONTRAST_RANGE = (0.6, 1.6)
#: Profile test: eyes closer than this fraction of the box width, or the nose further from the eyes'
#: midpoint than this fraction of the eye distance, means the face is turned too far to replace.
MIN_EYE_RATIO = 0.2
MAX_NOSE_OFFSET = 0.6
#: Base blur over the grown box: full up to this normalized radius, none beyond the second. The
#: detection box's own corners (radius 1/(1 + margin) * sqrt(2), about 1.09 at margin 0.3) stay inside.
BLUR_FADE = (1.1, 1.4)
#: Source detail is full inside RIM[0] (normalized inner-ellipse radius) and blurred by RIM_SIGMA
#: canonical pixels beyond RIM[1]: eyes, nose and mouth stay sharp, the outline does not.
RIM = (0.6, 0.9)
RIM_SIGMA = 5.0
#: Decorrelation guard. The synthetic face is aligned on the original's landmarks, so its own edges
#: (nose, brows, eyes) can land on the original's: no original pixel is left, yet the output's fine
#: detail would still follow the original's there. Over windows of GUARD_WINDOW x the face width, the
#: output's detail (high-pass at GUARD_SIGMA x the face width) is scaled down wherever its regression
#: on the original's detail exceeds GUARD_MAX in magnitude; detail that does not follow the original's
#: is left alone, so the face keeps its texture.
GUARD_SIGMA = 1 / 15
GUARD_WINDOW = 0.07
GUARD_MAX = 0.25
#: Skin grain: fixed noise (LAB L std, correlation length in canonical pixels) added to each source.
#: An average of k faces is smoother than any real skin, and the guard smooths it further where it
#: follows the original; the grain is the same for every frame of a source, so it moves with the face.
GRAIN_STD = 4.0
GRAIN_SIGMA = 0.7
#: Grey-level variance added to the original's local detail energy: flat areas have nothing to follow.
GUARD_FLOOR = 0.25


def _ellipse_radius() -> FloatArray:
    """Normalized radius of every canonical pixel in the inner ellipse (1 on its rim)."""
    ys, xs = np.mgrid[0:CANONICAL_SIZE, 0:CANONICAL_SIZE].astype(np.float32)
    radius = np.sqrt(
        ((xs - INNER_CENTER[0]) / INNER_AXES[0]) ** 2 + ((ys - INNER_CENTER[1]) / INNER_AXES[1]) ** 2
    )
    return np.asarray(radius, np.float32)


def inner_face_mask(feather: float = FEATHER) -> FloatArray:
    """(S, S) alpha in canonical pixels: 1 inside the inner ellipse, linear ramp to 0 over `feather`."""
    radius = _ellipse_radius()
    if feather <= 0:
        return (radius <= 1.0).astype(np.float32)
    return np.asarray(np.clip((1.0 + feather - radius) / feather, 0.0, 1.0), np.float32)


def similarity(src: FloatArray, dst: FloatArray) -> npt.NDArray[np.float64]:
    """2x3 least-squares similarity transform mapping `src` points onto `dst` (Umeyama, no reflection).

    Closed form: deterministic and cheaper than cv2.estimateAffinePartial2D's robust fit, which five
    clean landmarks do not need.
    """
    src64, dst64 = src.astype(np.float64), dst.astype(np.float64)
    src_mean, dst_mean = src64.mean(0), dst64.mean(0)
    s, d = src64 - src_mean, dst64 - dst64.mean(0)
    u, sigma, vt = np.linalg.svd(d.T @ s / len(s))
    fix = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ fix @ vt
    scale = float(np.trace(np.diag(sigma) @ fix) / max(float((s**2).sum() / len(s)), 1e-9))
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def is_frontal(landmarks: FloatArray, box_width: float) -> bool:
    left_eye, right_eye, nose = landmarks[0], landmarks[1], landmarks[2]
    eye_distance = float(np.linalg.norm(right_eye - left_eye))
    if eye_distance < MIN_EYE_RATIO * box_width:
        return False
    offset = abs(float(nose[0] - (left_eye[0] + right_eye[0]) / 2))
    return offset <= MAX_NOSE_OFFSET * eye_distance


def soft_blur(roi: Image) -> Image:
    """Blur over an ellipse that still covers the whole detection box, fading out in the margin's corners.

    A hard blurred rectangle around a pasted face looks like a sticker; the fade hides its corners.
    """
    h, w = roi.shape[:2]
    ys, xs = np.ogrid[0:h, 0:w]
    radius = np.sqrt(((xs + 0.5) / (w / 2) - 1) ** 2 + ((ys + 0.5) / (h / 2) - 1) ** 2)
    alpha = np.clip((BLUR_FADE[1] - radius) / (BLUR_FADE[1] - BLUR_FADE[0]), 0.0, 1.0)[..., None]
    return as_image((alpha * blur_region(roi) + (1 - alpha) * roi).astype(np.uint8))


def _grey(image: npt.NDArray[np.float32]) -> FloatArray:
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), np.float32)


def decorrelate(painted: Image, original: Image, face_width: float) -> Image:
    """`painted` with its fine detail scaled down wherever it follows `original`'s (see GUARD_*)."""
    sigma = max(1.0, GUARD_SIGMA * face_width)
    window = max(2.0, GUARD_WINDOW * face_width)
    out = painted.astype(np.float32)
    low = cv2.GaussianBlur(out, (0, 0), sigma)
    detail = out - low
    grey_original = _grey(original.astype(np.float32))
    a = grey_original - cv2.GaussianBlur(grey_original, (0, 0), sigma)
    b = _grey(detail)
    slope = cv2.GaussianBlur(a * b, (0, 0), window) / (cv2.GaussianBlur(a * a, (0, 0), window) + GUARD_FLOOR)
    keep = GUARD_MAX / np.maximum(np.abs(slope), GUARD_MAX)
    return as_image(np.clip(low + keep[..., None] * detail + 0.5, 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class SourceFace:
    lab: FloatArray  # (S, S, 3) float32 LAB
    mean: FloatArray  # (3,) inside the inner ellipse
    std: FloatArray  # (3,)
    k: int  # real faces averaged into it


def _inner_stats(lab: FloatArray, weight: FloatArray) -> tuple[FloatArray, FloatArray]:
    total = float(weight.sum())
    mean = (lab * weight[..., None]).sum((0, 1)) / total
    var = (((lab - mean) ** 2) * weight[..., None]).sum((0, 1)) / total
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def _soften_rim(lab: FloatArray) -> FloatArray:
    """Detail fades out towards the ellipse rim: the average's cheek outline would otherwise land on the
    target's own outline (both are aligned), and an edge kept in place reads as the original's detail."""
    radius = _ellipse_radius()
    keep = np.clip((RIM[1] - radius) / (RIM[1] - RIM[0]), 0.0, 1.0)[..., None]
    soft = cv2.GaussianBlur(lab, (0, 0), RIM_SIGMA)
    return np.asarray(keep * lab + (1 - keep) * soft, np.float32)


def _grain(seed: int) -> FloatArray:
    """(S, S) zero-mean noise of std GRAIN_STD, the same for the same seed."""
    white = np.random.default_rng(seed).standard_normal((CANONICAL_SIZE, CANONICAL_SIZE)).astype(np.float32)
    noise = cv2.GaussianBlur(white, (0, 0), GRAIN_SIGMA)
    return np.asarray(noise * (GRAIN_STD / max(float(noise.std()), 1e-6)), np.float32)


def load_sources(folder: Path, min_k: int) -> list[SourceFace]:
    """The source faces in `folder`, averaged further in disjoint groups until each covers >= `min_k`."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    weight = inner_face_mask(0.0)
    faces: list[tuple[FloatArray, int]] = []
    for entry in manifest["sources"]:
        bgr = cv2.imread(str(folder / entry["file"]), cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape[:2] != (CANONICAL_SIZE, CANONICAL_SIZE):
            raise ValueError(f"{folder / entry['file']}: missing or not {CANONICAL_SIZE}x{CANONICAL_SIZE}")
        faces.append((bgr.astype(np.float32), int(entry["k"])))
    # Averaging disjoint k-anonymous averages gives a (sum of k)-anonymous one: a larger k at run time
    # needs no access to the real faces.
    per_group = max(1, math.ceil(min_k / min(k for _, k in faces)))
    sources = []
    for start in range(0, len(faces) - per_group + 1, per_group):
        group = faces[start : start + per_group]
        bgr = np.mean([f for f, _ in group], axis=0).astype(np.uint8)
        lab = _soften_rim(cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB).astype(np.float32))
        lab[..., 0] += _grain(start)
        mean, std = _inner_stats(lab, weight)
        sources.append(SourceFace(lab, mean, std, sum(k for _, k in group)))
    if not sources or min(s.k for s in sources) < min_k:
        raise ValueError(f"{folder}: not enough source faces for k={min_k}")
    return sources


@dataclass
class _Track:
    source: int
    relative: FloatArray  # smoothed landmarks as fractions of the box: follows the box, not the jitter
    last_seen: int


class FaceReplacer:
    """Replaces faces; keeps per-track identity and landmark smoothing between calls (one per stream)."""

    def __init__(
        self, sources: list[SourceFace], min_size: int, smoothing: float, forget_after: int = 30
    ) -> None:
        self.sources = sources
        self.min_size = min_size
        self.smoothing = smoothing
        self.forget_after = forget_after
        self._tracks: dict[int, _Track] = {}
        self._frame = 0
        self._alpha = inner_face_mask()
        self._inner = inner_face_mask(0.0)

    def next_frame(self) -> None:
        self._frame += 1
        stale = [t for t, s in self._tracks.items() if self._frame - s.last_seen > self.forget_after]
        for track_id in stale:
            del self._tracks[track_id]

    def source_for(self, track_id: int, row: int) -> int:
        """Same track -> same source; a new track takes a source no live track uses, when there is one."""
        if track_id != NO_TRACK and track_id in self._tracks:
            return self._tracks[track_id].source
        used = {s.source for s in self._tracks.values()}
        free = [i for i in range(len(self.sources)) if i not in used] or list(range(len(self.sources)))
        key = track_id if track_id != NO_TRACK else row
        return free[key % len(free)]

    def landmarks(
        self, track_id: int, row: int, box: FloatArray, raw: FloatArray
    ) -> tuple[FloatArray, int] | None:
        """Smoothed landmarks and source for this face; None when there are none to use."""
        origin, size = box[:2], np.maximum(box[2:] - box[:2], 1.0)
        state = self._tracks.get(track_id) if track_id != NO_TRACK else None
        if np.isnan(raw).any():
            if state is None:
                return None
            # A coasting track: the last landmarks, carried by the predicted box.
            state.last_seen = self._frame
            return state.relative * size + origin, state.source
        relative = ((raw - origin) / size).astype(np.float32)
        source = self.source_for(track_id, row)
        if track_id == NO_TRACK:
            return raw, source
        if state is None:
            state = self._tracks[track_id] = _Track(source, relative, self._frame)
        else:
            state.relative = (self.smoothing * state.relative + (1 - self.smoothing) * relative).astype(
                np.float32
            )
            state.last_seen = self._frame
        return state.relative * size + origin, state.source

    def replace(
        self,
        image: Image,
        box: FloatArray,
        rect: tuple[int, int, int, int],
        landmarks: FloatArray,
        source: int,
        original: Image | None = None,
    ) -> bool:
        """Replace the face in `rect` (the grown box); False (nothing changed) when it cannot be done well.

        `original` is the rect's content before anything was painted in this frame (defaults to what is
        there now): an overlapping face painted first must not count as the original.
        """
        box_width = float(box[2] - box[0])
        if box_width < self.min_size or not is_frontal(landmarks, box_width):
            return False
        x1, y1, x2, y2 = rect
        to_frame = similarity(CANONICAL_LANDMARKS, landmarks)
        face = self._matched(image, to_frame, self.sources[source])
        roi = image[y1:y2, x1:x2]
        if original is None:
            original = roi.copy()
        roi[...] = soft_blur(roi)
        to_roi = to_frame.copy()
        to_roi[:, 2] -= (x1, y1)
        size = (x2 - x1, y2 - y1)
        warped = cv2.warpAffine(face, to_roi, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(self._alpha, to_roi, size, flags=cv2.INTER_LINEAR, borderValue=0.0)[..., None]
        painted = as_image((alpha * warped + (1.0 - alpha) * roi).astype(np.uint8))
        roi[...] = decorrelate(painted, original, box_width)
        return True

    def _matched(self, image: Image, to_frame: npt.NDArray[np.float64], source: SourceFace) -> Image:
        """The source in canonical pixels, recoloured to the target face's LAB mean and contrast."""
        size = (CANONICAL_SIZE, CANONICAL_SIZE)
        target = cv2.warpAffine(
            image,
            to_frame,
            size,
            flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        target_lab = cv2.cvtColor(target, cv2.COLOR_BGR2LAB).astype(np.float32)
        mean, std = _inner_stats(target_lab, self._inner)
        ratio = np.where(source.std > 1.0, std / np.maximum(source.std, 1.0), 0.0)
        ratio[0] = np.clip(ratio[0], *CONTRAST_RANGE)
        lab = (source.lab - source.mean) * np.minimum(ratio, CONTRAST_RANGE[1]) + mean
        return as_image(cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR))
