"""The frame type: H x W x 3 uint8 BGR (OpenCV's order), C-contiguous."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]


def as_image(array: Any) -> Image:
    """View an OpenCV/PyAV result as an `Image` (no copy when it already is uint8)."""
    return np.asarray(array, dtype=np.uint8)
