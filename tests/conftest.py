"""Shared pytest fixtures."""

from __future__ import annotations

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
