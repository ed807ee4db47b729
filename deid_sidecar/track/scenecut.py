"""Cheap scene-cut detection: tells the scheduler to detect now and the tracker to forget.

A tiny grey thumbnail is compared with the previous one; after a cut (camera switch, PTZ jump,
edited video) every track prediction is wrong, and waiting for the next scheduled detection would
leave new faces clear for several frames.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

THUMB_SIZE = (64, 36)  # width, height: 16:9 like most cameras, a few microseconds to compare
HIST_BINS = 32
#: A thumbnail this flat (black, grey test card) has no structure to correlate.
FLAT_STD = 0.02


class SceneCutDetector:
    def __init__(self, threshold: float = 0.35) -> None:
        self.threshold = threshold
        self._previous: npt.NDArray[np.float32] | None = None
        self._previous_hist: npt.NDArray[np.float32] | None = None

    def update(self, image_bgr: npt.NDArray[np.uint8]) -> bool:
        """True when this frame differs from the previous one like a cut (False on the first frame)."""
        grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY) if image_bgr.ndim == 3 else image_bgr
        thumb = cv2.resize(grey, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        hist = np.histogram(thumb, bins=HIST_BINS, range=(0.0, 1.0))[0].astype(np.float32)
        hist /= max(float(hist.sum()), 1.0)
        previous, previous_hist = self._previous, self._previous_hist
        self._previous, self._previous_hist = thumb, hist
        if previous is None or previous_hist is None:
            return False
        # Histogram distance catches cuts between similar layouts; one minus the normalized
        # correlation catches cuts between scenes of similar brightness and ignores exposure changes.
        hist_distance = 0.5 * float(np.abs(hist - previous_hist).sum())
        return max(hist_distance, _structure_distance(thumb, previous)) >= self.threshold


def _structure_distance(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """1 - normalized cross-correlation in [0, 1]; mean difference when a thumbnail is flat."""
    std_a, std_b = float(a.std()), float(b.std())
    if min(std_a, std_b) < FLAT_STD:
        return 2.0 * float(np.abs(a - b).mean())
    ncc = float(((a - a.mean()) * (b - b.mean())).mean()) / (std_a * std_b)
    return min(1.0, max(0.0, 1.0 - ncc))
