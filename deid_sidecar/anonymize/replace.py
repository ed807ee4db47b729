"""`method: replace`: what the replacing anonymizer (masks.py) is built from.

Faces get a k-anonymous averaged face aligned on their landmarks (see faces.py), or the output of a
learned swapper the user supplies (see swapper.py); plates get a plate
that cannot exist, warped onto the plate's quadrilateral (see plates.py). This module holds their
bundled data and builds both replacers from the configuration; `ReplacingAnonymizer` in masks.py
applies them per frame and hides what they cannot replace.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from deid_sidecar.anonymize.faces import FaceReplacer, SourceFace, load_sources
from deid_sidecar.anonymize.font import TrueTypeFont
from deid_sidecar.anonymize.plates import PlateReplacer
from deid_sidecar.anonymize.swapper import LearnedSwapper
from deid_sidecar.config import AnonymizeConfig

#: Bundled data: source faces and the plate font (the repository's data/ folder).
# Package data: installed with the package (pip, the container image), not read from a checkout.
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
SOURCE_FACES_DIR = DATA_DIR / "source_faces"
FONT_FILE = DATA_DIR / "fonts" / "DejaVuSansMono-Bold.ttf"


@dataclass
class ReplaceCounters:
    """What happened to each object since start: replaced, or hidden by the fallback."""

    faces_replaced: int = 0
    faces_blurred: int = 0
    plates_replaced: int = 0
    plates_filled: int = 0


@lru_cache(maxsize=4)
def _sources(folder: Path, k: int) -> tuple[SourceFace, ...]:
    # Cached: a method switch on a live camera builds a new anonymizer, not a new set of faces.
    return tuple(load_sources(folder, k))


@lru_cache(maxsize=2)
def _font(path: Path) -> TrueTypeFont:
    return TrueTypeFont.load(path)


@lru_cache(maxsize=2)
def _swapper(path: Path, identities: int) -> LearnedSwapper:
    # One session per model file for the whole process: every camera's replacer shares it.
    return LearnedSwapper.load(path, ["cuda", "cpu"], identities)


def face_replacer(config: AnonymizeConfig) -> FaceReplacer:
    """A new face replacer (it keeps per-stream state) over the cached source faces (or swapper)."""
    folder = Path(config.replace_sources) if config.replace_sources else SOURCE_FACES_DIR
    sources = list(_sources(folder, config.replace_k))
    painter = _swapper(Path(config.replace_swapper), len(sources)) if config.replace_swapper else None
    return FaceReplacer(sources, config.replace_min_size, config.replace_smoothing, painter=painter)


def plate_replacer(config: AnonymizeConfig) -> PlateReplacer:
    """A new plate replacer (it keeps per-stream state) with the cached bundled font."""
    return PlateReplacer(_font(FONT_FILE), config.plate_style)
