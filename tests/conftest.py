"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


# --- models and media ---
# Real models and media, fetched once per session into the repo's models/ and data/media/ (both
# gitignored; later runs find them cached). A failed fetch errors the tests that need it: nothing skips.


@pytest.fixture(scope="session")
def models_dir() -> Path:
    from deid_sidecar.models import fetch, registry

    path = REPO_ROOT / "models"
    fetch.fetch_models([*registry.default_model_ids(), "retina-plate"], path)
    return path


@pytest.fixture(scope="session")
def media_dir() -> Path:
    from deid_sidecar.models import fetch, registry

    path = REPO_ROOT / "data" / "media"
    fetch.fetch_media(list(registry.MEDIA), path)
    return path


# --- a live camera for the web tests ---


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 s synthetic 320x240 clip whose only detail is the secret checkerboard (tests/livekit.py)."""
    from livekit import write_clip

    return write_clip(tmp_path_factory.mktemp("clip") / "cam.mp4", seconds=2.0, fps=10)


@pytest.fixture
def pipeline(clip: Path) -> Iterator[object]:
    """A running pipeline of the looping `clip` camera called `cam`."""
    from webkit import file_camera

    pipe = file_camera(clip)
    yield pipe
    pipe.stop()
