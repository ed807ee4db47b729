"""Build deid_sidecar/data/source_faces/: synthetic faces for `method: replace`, each the AVERAGE of k real faces.

k-Same style (Newton, Sweeney, Malin 2005): the real faces are aligned on their 5 landmarks, split into
disjoint clusters of at least k similar faces, and each cluster is averaged. A source face therefore
stands for no single person: it is k-anonymous over the input set. Only the averages are written.

Inputs (fetched with the project's pinned fetchers, never committed):
- scikit-image 0.26.0 `skimage/data/lfw_subset.npy`: 100 grey 25x25 LFW face crops (luminance);
- the registry's test media t1 (6 faces), astronaut and messi, and insightface 2.1's Tom_Hanks png:
  their aligned faces join the luminance pool, and the colour ones give one averaged chroma map.

Landmarks come from the real CenterFace model. Deterministic: same inputs, same outputs.

    .venv/bin/python scripts/build_source_faces.py [--k 5] [--out deid_sidecar/data/source_faces]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from deid_sidecar.anonymize.faces import CANONICAL_LANDMARKS, CANONICAL_SIZE, inner_face_mask
from deid_sidecar.config import parse_config
from deid_sidecar.core.detections import Label
from deid_sidecar.detect.detector import build_detector
from deid_sidecar.models import fetch, registry
from deid_sidecar.models.registry import PypiMember

ROOT = Path(__file__).resolve().parents[1]
LFW = PypiMember("scikit-image", "0.26.0", "skimage/data/lfw_subset.npy")
TOM_HANKS = PypiMember("insightface", "2.1", "insightface/data/images/Tom_Hanks_54745.png")
COLOUR_MEDIA = ("t1", "astronaut", "messi")
LFW_FACES = 100  # the first 100 entries are faces, the other 100 are not
LFW_UPSCALE = 4  # 25 px crops are too small for CenterFace; 100 px with context works
SHARPEN = 0.6  # averages are soft; a mild unsharp mask makes them look like a face again


def detect_landmarks(detector: object, image: np.ndarray) -> list[np.ndarray]:
    found = detector.detect(image)  # type: ignore[attr-defined]
    order = np.argsort(-found.confidence)
    return [found.keypoints[i] for i in order if not np.isnan(found.keypoints[i]).any()]


def align(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    matrix, _ = cv2.estimateAffinePartial2D(landmarks, CANONICAL_LANDMARKS, method=cv2.LMEDS)
    size = (CANONICAL_SIZE, CANONICAL_SIZE)
    return cv2.warpAffine(image, matrix, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def lfw_faces(detector: object, cache: Path) -> list[np.ndarray]:
    crops = np.load(fetch._obtain(LFW, cache))[:LFW_FACES]
    aligned = []
    for crop in crops:
        grey = (crop * 255).astype(np.uint8)
        big = cv2.resize(grey, None, fx=LFW_UPSCALE, fy=LFW_UPSCALE, interpolation=cv2.INTER_CUBIC)
        pad = big.shape[0] // 2
        framed = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        bgr = cv2.cvtColor(framed, cv2.COLOR_GRAY2BGR)
        found = detect_landmarks(detector, bgr)
        if found:
            aligned.append(align(bgr, found[0]))
    return aligned


def colour_faces(detector: object, media_dir: Path, cache: Path) -> list[np.ndarray]:
    fetch.fetch_media(list(COLOUR_MEDIA), media_dir)
    paths = [media_dir / registry.get_media(m).filename for m in COLOUR_MEDIA]
    aligned = []
    for path in paths:
        image = cv2.imread(str(path))
        aligned += [align(image, lm) for lm in detect_landmarks(detector, image)]
    hanks = cv2.imread(str(fetch._obtain(TOM_HANKS, cache)))
    aligned += [align(hanks, lm) for lm in detect_landmarks(detector, hanks)[:1]]
    return aligned


def k_same_clusters(faces: np.ndarray, k: int) -> list[list[int]]:
    """Disjoint clusters of >= k faces: each takes the first free face and its k-1 nearest free faces."""
    inside = inner_face_mask(0.0) > 0.5
    vectors = faces[:, inside].astype(np.float32)
    vectors -= vectors.mean(axis=1, keepdims=True)
    vectors /= vectors.std(axis=1, keepdims=True) + 1e-6
    free = list(range(len(faces)))
    clusters = []
    while len(free) >= 2 * k:
        seed = free[0]
        distance = np.linalg.norm(vectors[free] - vectors[seed], axis=1)
        members = [free[i] for i in np.argsort(distance, kind="stable")[:k]]
        clusters.append(members)
        free = [i for i in free if i not in members]
    clusters.append(free)  # the remainder (k..2k-1 faces) forms the last cluster
    return clusters


def mean_chroma(colour: list[np.ndarray]) -> np.ndarray:
    lab = np.stack([cv2.cvtColor(face, cv2.COLOR_BGR2LAB) for face in colour]).astype(np.float32)
    return lab[..., 1:].mean(axis=0)


def average_face(luma: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    mean = luma.mean(axis=0)
    soft = cv2.GaussianBlur(mean, (0, 0), 2.0)
    sharp = np.clip(mean + SHARPEN * (mean - soft), 0, 255)
    lab = np.dstack([sharp, chroma]).astype(np.uint8)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=5, help="faces averaged into each source (>= 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "deid_sidecar" / "data" / "source_faces")
    args = parser.parse_args()
    config = parse_config({"models_dir": str(ROOT / "models"), "detection": {"providers": ["cpu"]}})
    fetch.fetch_models(["centerface"], ROOT / "models")
    detector = build_detector(config, {Label.FACE})
    media_dir = ROOT / "data" / "media"
    cache = fetch.cache_dir(media_dir)
    colour = colour_faces(detector, media_dir, cache)
    pool = lfw_faces(detector, cache) + colour
    if len(colour) < args.k:
        raise SystemExit(f"only {len(colour)} colour faces for the chroma map; need k={args.k}")
    luma = np.stack([cv2.cvtColor(face, cv2.COLOR_BGR2LAB)[..., 0] for face in pool]).astype(np.float32)
    chroma = mean_chroma(colour)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("face_*.png"):
        old.unlink()
    manifest = []
    for index, members in enumerate(k_same_clusters(luma, args.k)):
        name = f"face_{index:02d}.png"
        cv2.imwrite(
            str(args.out / name), average_face(luma[members], chroma), [cv2.IMWRITE_PNG_COMPRESSION, 9]
        )
        manifest.append({"file": name, "k": len(members)})
    meta = {
        "canonical_size": CANONICAL_SIZE,
        "landmarks": CANONICAL_LANDMARKS.tolist(),
        "pool_faces": len(pool),
        "chroma_faces": len(colour),
        "sources": manifest,
    }
    (args.out / "manifest.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(manifest)} source faces from {len(pool)} aligned faces (k >= {args.k}) in {args.out}")


if __name__ == "__main__":
    main()
