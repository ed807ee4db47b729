"""The one detection type that flows detector -> tracker -> anonymizer -> events.

A struct of arrays, in frame pixels: every stage takes a `Detections` and returns one, so no
stage knows a model's raw output format (only the adapters in `detect/` do).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: Keypoints per object: five face landmarks (eyes, nose, mouth corners) or four plate corners.
NUM_KEYPOINTS = 5


class Label(IntEnum):
    """What an object is. The values are stored in `Detections.label`."""

    FACE = 0
    LICENSE_PLATE = 1
    PERSON = 2

    @property
    def key(self) -> str:
        """The lower-case name used in config files, MQTT topics and the API."""
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Label:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            known = ", ".join(label.key for label in cls)
            raise ValueError(f"unknown label {name!r} (known: {known})") from None


NO_TRACK = -1


@dataclass(frozen=True)
class Detections:
    """N objects in one frame.

    xyxy: (N, 4) float32 boxes in frame pixels.
    confidence: (N,) float32 scores in [0, 1].
    label: (N,) int64 `Label` values.
    track_id: (N,) int64, `NO_TRACK` for objects no tracker has seen.
    keypoints: (N, 5, 2) float32, NaN where a model gives none (plates use the first four).
    """

    xyxy: FloatArray
    confidence: FloatArray
    label: IntArray
    track_id: IntArray = field(default_factory=lambda: np.empty(0, np.int64))
    keypoints: FloatArray = field(default_factory=lambda: np.empty((0, NUM_KEYPOINTS, 2), np.float32))

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        # Empty defaults are expanded to N rows so callers may omit the optional columns.
        if len(self.track_id) == 0 and n:
            object.__setattr__(self, "track_id", np.full(n, NO_TRACK, np.int64))
        if len(self.keypoints) == 0 and n:
            object.__setattr__(self, "keypoints", np.full((n, NUM_KEYPOINTS, 2), np.nan, np.float32))
        self._check_shape("xyxy", self.xyxy, (n, 4), np.float32)
        self._check_shape("confidence", self.confidence, (n,), np.float32)
        self._check_shape("label", self.label, (n,), np.int64)
        self._check_shape("track_id", self.track_id, (n,), np.int64)
        self._check_shape("keypoints", self.keypoints, (n, NUM_KEYPOINTS, 2), np.float32)

    @staticmethod
    def _check_shape(name: str, array: npt.NDArray[np.generic], shape: tuple[int, ...], dtype: type) -> None:
        if array.shape != shape or array.dtype != dtype:
            raise ValueError(
                f"Detections.{name} must be {np.dtype(dtype).name}{shape}, got {array.dtype.name}{array.shape}"
            )

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            xyxy=np.empty((0, 4), np.float32),
            confidence=np.empty(0, np.float32),
            label=np.empty(0, np.int64),
        )

    @classmethod
    def from_boxes(
        cls,
        boxes: Sequence[Sequence[float]] | FloatArray,
        label: Label,
        confidence: float | Sequence[float] = 1.0,
    ) -> Detections:
        """Build from plain boxes of one label (tests, zones, the audit reader)."""
        xyxy = np.asarray(boxes, np.float32).reshape(-1, 4)
        conf = np.broadcast_to(np.asarray(confidence, np.float32), (len(xyxy),)).copy()
        return cls(xyxy=xyxy, confidence=conf, label=np.full(len(xyxy), int(label), np.int64))

    @classmethod
    def merge(cls, parts: Iterable[Detections]) -> Detections:
        items = [p for p in parts if len(p)]
        if not items:
            return cls.empty()
        if len(items) == 1:
            return items[0]
        return cls(
            xyxy=np.concatenate([p.xyxy for p in items]),
            confidence=np.concatenate([p.confidence for p in items]),
            label=np.concatenate([p.label for p in items]),
            track_id=np.concatenate([p.track_id for p in items]),
            keypoints=np.concatenate([p.keypoints for p in items]),
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: npt.NDArray[np.bool_] | npt.NDArray[np.intp] | slice) -> Detections:
        """Select rows with a boolean mask, an index array or a slice."""
        return Detections(
            xyxy=self.xyxy[index],
            confidence=self.confidence[index],
            label=self.label[index],
            track_id=self.track_id[index],
            keypoints=self.keypoints[index],
        )

    def with_label(self, label: Label) -> Detections:
        return self[self.label == int(label)]

    def with_track_ids(self, track_id: IntArray) -> Detections:
        return Detections(self.xyxy, self.confidence, self.label, track_id.astype(np.int64), self.keypoints)

    def scaled(self, sx: float, sy: float) -> Detections:
        """Boxes and keypoints multiplied by (sx, sy): maps between detect and output resolutions."""
        scale = np.array([sx, sy, sx, sy], np.float32)
        return Detections(
            xyxy=self.xyxy * scale,
            confidence=self.confidence,
            label=self.label,
            track_id=self.track_id,
            keypoints=self.keypoints * np.array([sx, sy], np.float32),
        )

    def translated(self, dx: float, dy: float) -> Detections:
        """Boxes and keypoints moved by (dx, dy): maps a crop's detections back into its frame."""
        return Detections(
            xyxy=self.xyxy + np.array([dx, dy, dx, dy], np.float32),
            confidence=self.confidence,
            label=self.label,
            track_id=self.track_id,
            keypoints=self.keypoints + np.array([dx, dy], np.float32),
        )

    def counts(self) -> dict[Label, int]:
        return {label: int(np.count_nonzero(self.label == int(label))) for label in Label}
