"""Face replacement: paint a k-anonymous synthetic face over each face, aligned on its 5 landmarks.

Source faces (deid_sidecar/data/source_faces/, built by scripts/build_source_faces.py) are averages of k real
faces in a canonical 128x128 frame. Per face: the whole grown box is blurred first, as the blur method
does, fading out in a halo around it (hair, ears and anything the synthetic face does not cover must not
stay clear, and no hard blurred rectangle frames the face). Then the source's detail, over the target's
own shading (the target blurred harder than the blur method blurs), is warped onto the landmarks with
alpha = 1 over the whole face oval (forehead, cheeks, jaw) and a wide feathered edge. No original pixel
of the face survives. Wherever the synthetic face's detail happens to follow the original's (both are
aligned on the same landmarks), it is toned down band by band (`decorrelate`), so the output carries
none of the original's edges; last, a fixed skin grain per source is added over the oval.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from deid_sidecar.anonymize.regions import rounded_blur
from deid_sidecar.core.detections import NO_TRACK
from deid_sidecar.core.image import Image, as_image

FloatArray = npt.NDArray[np.float32]

CANONICAL_SIZE = 128
#: ArcFace's 112 px five-point template: left eye, right eye, nose, left and right mouth corner.
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    np.float32,
)
#: The same template moved into the 128 px canvas. A common template keeps the sources interchangeable.
CANONICAL_LANDMARKS = ARCFACE_112 + 8.0
#: The inner face (brows to below the mouth) as an ellipse in canonical pixels: colour statistics and
#: the sharp part of the source's detail live here.
INNER_CENTER = (64.0, 76.0)
INNER_AXES = (37.0, 46.0)
#: The whole face oval (hairline to chin, cheek to cheek): the synthetic face covers it at alpha = 1, so
#: no blurred band of the original's cheeks and jaw is left between the face and the head around it.
FACE_CENTER = (64.0, 74.0)
FACE_AXES = (43.0, 53.0)
#: Feathered band outside the face oval, as a fraction of its radius.
FEATHER = 0.35
#: The head's blur covers the whole grown box, as the blur method does (a detector's box can sit lower
#: or higher on the head than the face itself, and a fade inside the box left forehead or chin clear),
#: and fades out over this share of its size around it.
HEAD_HALO = 0.12
#: Lighting: the synthetic face keeps only its detail finer than this Gaussian (canonical pixels, a
#: sixth of the face) and takes its shading and colour below it from the target, so it is lit like the
#: scene and meets the blurred head around it without a seam. That Gaussian is stronger than the blur
#: method (the grown box in 6 samples, about an eighth of the face as a Gaussian), so the shading
#: reveals no more than blurring would.
SHADING_SIGMA = 14.0
#: Target contrast may differ from the source's by at most this factor: a very flat (dark, blurred)
#: target would otherwise give a flat face, a very busy one a harsh one.
CONTRAST_RANGE = (0.6, 1.6)
#: Profile test: eyes closer than this fraction of the box width, or the nose further from the eyes'
#: midpoint than this fraction of the eye distance, means the face is turned too far to replace.
MIN_EYE_RATIO = 0.2
MAX_NOSE_OFFSET = 0.6
#: A track that is being replaced keeps its synthetic face until it turns this much further: without
#: the hysteresis a face turning near the limit flips between a synthetic face and a blur every frame.
TURN_LEEWAY = 1.35
#: Source detail is full inside RIM[0] (normalized inner-ellipse radius) and blurred by RIM_SIGMA
#: canonical pixels beyond RIM[1]: eyes, nose and mouth stay sharp, the outline does not.
RIM = (0.6, 0.9)
RIM_SIGMA = 5.0
#: Decorrelation guard. The synthetic face is aligned on the original's landmarks, so its own edges
#: (nose, brows, eyes) can land on the original's: no original pixel is left, yet the output's detail
#: would still follow the original's there. Per band of detail (between Gaussian blurs at these
#: fractions of the face width, the finest one at least GUARD_MIN_SIGMA px) and over windows of
#: GUARD_WINDOW x the face width, the output's band is scaled down wherever its regression on the
#: original's same band exceeds GUARD_MAX in magnitude; detail that does not follow the original's is
#: left alone, so the face keeps its texture. Two bands: the fine edges the eye reads identity from,
#: and the coarser shapes of brows, eyes and mouth.
GUARD_SIGMAS = (1 / 30, 1 / 15)
#: A learned swapper keeps the original's pose and expression by design, so its output can follow the
#: original's coarse shapes too: its faces get a third, coarser band (a k-Same face's coarse shapes are
#: its source's, and guarding them would only flatten the face).
GUARD_SIGMAS_LEARNED = (1 / 30, 1 / 15, 1 / 7)
GUARD_MIN_SIGMA = 1.0
GUARD_WINDOW = 0.07
GUARD_MAX = 0.1
#: Skin grain: fixed noise (grey-level std, correlation length in canonical pixels) added over the face
#: oval last: after the colour match, so a contrasty scene does not turn it into speckle, and after the
#: guard, which would otherwise tone it down wherever it happens to line up with the original's detail
#: (seeded per source, it carries nothing of the original). An average of k faces is smoother than any
#: real skin; the grain is the same for every frame of a source, so it moves with the face.
GRAIN_STD = 3.5
GRAIN_SIGMA = 0.8
#: Grey-level variance added to the original's local detail energy: flat areas have nothing to follow.
GUARD_FLOOR = 0.25


def _ellipse_radius(
    center: tuple[float, float] = INNER_CENTER, axes: tuple[float, float] = INNER_AXES
) -> FloatArray:
    """Normalized radius of every canonical pixel in an ellipse (1 on its rim; the inner face's by default)."""
    ys, xs = np.mgrid[0:CANONICAL_SIZE, 0:CANONICAL_SIZE].astype(np.float32)
    radius = np.sqrt(((xs - center[0]) / axes[0]) ** 2 + ((ys - center[1]) / axes[1]) ** 2)
    return np.asarray(radius, np.float32)


def inner_face_mask(feather: float = 0.0) -> FloatArray:
    """(S, S) in canonical pixels: 1 inside the inner face ellipse, linear ramp to 0 over `feather`."""
    return _ramp(_ellipse_radius(), feather)


def face_oval_mask(feather: float = FEATHER) -> FloatArray:
    """(S, S) alpha in canonical pixels: 1 inside the whole face oval, linear ramp to 0 over `feather`."""
    return _ramp(_ellipse_radius(FACE_CENTER, FACE_AXES), feather)


def _ramp(radius: FloatArray, feather: float) -> FloatArray:
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


def is_frontal(landmarks: FloatArray, box_width: float, leeway: float = 1.0) -> bool:
    """Turned little enough to replace; `leeway` > 1 widens both limits."""
    left_eye, right_eye, nose = landmarks[0], landmarks[1], landmarks[2]
    eye_distance = float(np.linalg.norm(right_eye - left_eye))
    if eye_distance < MIN_EYE_RATIO / leeway * box_width:
        return False
    offset = abs(float(nose[0] - (left_eye[0] + right_eye[0]) / 2))
    return offset <= MAX_NOSE_OFFSET * leeway * eye_distance


def _grey(image: npt.NDArray[np.float32]) -> FloatArray:
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), np.float32)


def decorrelate(
    painted: Image, original: Image, face_width: float, bands: tuple[float, ...] = GUARD_SIGMAS
) -> Image:
    """`painted` with each band of its detail scaled down wherever it follows `original`'s (see GUARD_*)."""
    window = max(2.0, GUARD_WINDOW * face_width)
    sigmas = sorted({max(GUARD_MIN_SIGMA, fraction * face_width) for fraction in bands})
    out = painted.astype(np.float32)
    grey_original = _grey(original.astype(np.float32))
    finer_out, finer_original = out, grey_original
    kept = np.zeros_like(out)
    for sigma in sigmas:
        coarser_out = np.asarray(cv2.GaussianBlur(out, (0, 0), sigma), np.float32)
        coarser_original = np.asarray(cv2.GaussianBlur(grey_original, (0, 0), sigma), np.float32)
        band = finer_out - coarser_out
        a, b = finer_original - coarser_original, _grey(band)
        slope = cv2.GaussianBlur(a * b, (0, 0), window) / (
            cv2.GaussianBlur(a * a, (0, 0), window) + GUARD_FLOOR
        )
        kept += (GUARD_MAX / np.maximum(np.abs(slope), GUARD_MAX))[..., None] * band
        finer_out, finer_original = coarser_out, coarser_original
    return as_image(np.clip(finer_out + kept + 0.5, 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class SourceFace:
    detail: FloatArray  # (S, S, 3) float32 LAB minus its shading (Gaussian at SHADING_SIGMA)
    std: FloatArray  # (3,) of the detail inside the inner ellipse
    k: int  # real faces averaged into it
    grain: FloatArray  # (S, S) grey-level noise, added after the guard (it cannot follow the original)


def _inner_std(lab: FloatArray, weight: FloatArray) -> FloatArray:
    """(3,) weighted std per channel (the weight: the inner face ellipse)."""
    total = float(weight.sum())
    mean = (lab * weight[..., None]).sum((0, 1)) / total
    var = (((lab - mean) ** 2) * weight[..., None]).sum((0, 1)) / total
    return np.asarray(np.sqrt(var), np.float32)


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
        detail = lab - np.asarray(cv2.GaussianBlur(lab, (0, 0), SHADING_SIGMA), np.float32)
        std = _inner_std(detail, weight)
        sources.append(SourceFace(detail, std, sum(k for _, k in group), _grain(start)))
    if not sources or min(s.k for s in sources) < min_k:
        raise ValueError(f"{folder}: not enough source faces for k={min_k}")
    return sources


class FacePainter(Protocol):
    """Paints the replacement face itself (e.g. a learned swapper, swapper.py) instead of a k-Same source."""

    def paint(self, image: Image, landmarks: FloatArray, identity: int) -> Image:
        """The new face for the one at `landmarks`, BGR in the canonical frame; `identity` is per track."""
        ...


@dataclass
class _Track:
    source: int
    relative: FloatArray  # smoothed landmarks as fractions of the box: follows the box, not the jitter
    last_seen: int
    replaced: bool = False  # wore its synthetic face on the last frame it was painted


class FaceReplacer:
    """Replaces faces; keeps per-track identity and landmark smoothing between calls (one per stream)."""

    def __init__(
        self,
        sources: list[SourceFace],
        min_size: int,
        smoothing: float,
        forget_after: int = 30,
        painter: FacePainter | None = None,
    ) -> None:
        self.sources = sources
        self.painter = painter
        self.min_size = min_size
        self.smoothing = smoothing
        self.forget_after = forget_after
        self._tracks: dict[int, _Track] = {}
        self._frame = 0
        self._alpha = face_oval_mask()
        self._inner = inner_face_mask()

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
        track_id: int = NO_TRACK,
    ) -> bool:
        """Replace the face in `rect` (the grown box); False (nothing changed) when it cannot be done well.

        `original` is the rect's content before anything was painted in this frame (defaults to what is
        there now): an overlapping face painted first must not count as the original.
        """
        box_width = float(box[2] - box[0])
        state = self._tracks.get(track_id) if track_id != NO_TRACK else None
        leeway = TURN_LEEWAY if state is not None and state.replaced else 1.0
        usable = box_width >= self.min_size and is_frontal(landmarks, box_width, leeway)
        if state is not None:
            state.replaced = usable
        if not usable:
            return False
        x1, y1, x2, y2 = rect
        to_frame = similarity(CANONICAL_LANDMARKS, landmarks)
        if self.painter is not None:
            face = self.painter.paint(image, landmarks, source)
        else:
            face = self._matched(image, to_frame, self.sources[source])
        roi = image[y1:y2, x1:x2]
        if original is None:
            original = roi.copy()
        rounded_blur(image, rect, HEAD_HALO)
        to_roi = to_frame.copy()
        to_roi[:, 2] -= (x1, y1)
        size = (x2 - x1, y2 - y1)
        warped = cv2.warpAffine(face, to_roi, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(self._alpha, to_roi, size, flags=cv2.INTER_LINEAR, borderValue=0.0)[..., None]
        painted = as_image((alpha * warped + (1.0 - alpha) * roi).astype(np.uint8))
        if self.painter is not None:
            roi[...] = decorrelate(painted, original, box_width, GUARD_SIGMAS_LEARNED)
            return True
        guarded = decorrelate(painted, original, box_width).astype(np.float32)
        grain = cv2.warpAffine(self.sources[source].grain, to_roi, size, flags=cv2.INTER_LINEAR)[..., None]
        roi[...] = np.clip(guarded + alpha * grain + 0.5, 0, 255).astype(np.uint8)
        return True

    def _matched(self, image: Image, to_frame: npt.NDArray[np.float64], source: SourceFace) -> Image:
        """The source's detail in canonical pixels over the target's own shading (see SHADING_SIGMA)."""
        size = (CANONICAL_SIZE, CANONICAL_SIZE)
        target = cv2.warpAffine(
            image,
            to_frame,
            size,
            flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        target_lab = cv2.cvtColor(target, cv2.COLOR_BGR2LAB).astype(np.float32)
        shading = cv2.GaussianBlur(target_lab, (0, 0), SHADING_SIGMA)
        std = _inner_std(target_lab - shading, self._inner)
        ratio = np.where(source.std > 1.0, std / np.maximum(source.std, 1.0), 0.0)
        ratio[0] = np.clip(ratio[0], *CONTRAST_RANGE)
        lab = source.detail * np.minimum(ratio, CONTRAST_RANGE[1]) + shading
        return as_image(cv2.cvtColor(np.clip(lab, 0, 255).astype(np.uint8), cv2.COLOR_LAB2BGR))
