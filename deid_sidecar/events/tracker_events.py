"""Event lifecycle: tracked `Detections` in, MQTT messages out. Pure: no paho, no threads, no I/O.

Per camera and track (label, track_id):
- `new` when a tracked object first reaches its label's `event_threshold`;
- `update` at most once per `mqtt.update_interval_s` while it stays tracked and something changed;
- `end` once its track has been missing for more than `END_GRACE_S`.

Payloads follow Frigate's `frigate/events` envelope under the sidecar's own prefix. They carry boxes,
scores and times only: never plate text, crops of the original frame or identities.

Times are the engine's `frame_time` (wall-clock UNIX seconds). `expire()` ends the objects of a camera
that stopped delivering frames, using the injected clock to age them.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deid_sidecar.config import Config, output_name
from deid_sidecar.core.detections import NO_TRACK, Detections, Label
from deid_sidecar.events.topics import Message, Topics, retained

#: A track missing longer than this ends its event (shorter gaps: tracker coasting, a missed frame).
END_GRACE_S = 2.0
#: At most one snapshot per camera in this interval (snapshots encode a JPEG on the video path).
SNAPSHOT_MIN_INTERVAL_S = 10.0

_ID_ALPHABET = string.ascii_lowercase + string.digits


def frigate_style_id(frame_time: float) -> str:
    """`<frame_time>-<6 random chars>`, the shape of Frigate's event ids."""
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(6))
    return f"{frame_time:.6f}-{suffix}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass
class _Track:
    event_id: str
    label: str
    score: float
    top_score: float
    box: list[int]
    start_time: float
    frame_time: float
    last_seen: float
    has_snapshot: bool
    last_sent: float
    published: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Camera:
    tracks: dict[tuple[int, int], _Track] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    last_frame_time: float = 0.0
    last_frame_clock: float = 0.0
    last_snapshot: float | None = None


@dataclass(frozen=True)
class FrameUpdate:
    """What one frame produced: messages to publish, and whether to take a snapshot now."""

    messages: list[Message]
    snapshot_due: bool = False


class EventTracker:
    """Turns per-frame tracked detections into new/update/end events and retained counts."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[float], str] = frigate_style_id,
    ) -> None:
        self._config = config
        self._topics = Topics(config.mqtt.prefix, config.mqtt.discovery_prefix)
        self._clock = clock
        self._new_id = new_id
        self._cameras: dict[str, _Camera] = {}
        self._thresholds = {
            Label.FACE.key: config.detection.face.event_threshold,
            Label.LICENSE_PLATE.key: config.detection.license_plate.event_threshold,
            Label.PERSON.key: config.detection.person.event_threshold,
        }

    # -- queries (tests, diagnostics) -------------------------------------------------------------

    def active_ids(self, camera: str) -> list[str]:
        state = self._cameras.get(camera)
        return [] if state is None else [t.event_id for t in state.tracks.values()]

    def counts(self, camera: str) -> dict[str, int]:
        state = self._cameras.get(camera)
        return {} if state is None else dict(state.counts)

    # -- feeding ------------------------------------------------------------------------------------

    def update(self, camera: str, frame_time: float, tracked: Detections) -> FrameUpdate:
        state = self._cameras.setdefault(camera, _Camera())
        state.last_frame_time = frame_time
        state.last_frame_clock = self._clock()
        labels = self._labels(camera)
        messages: list[Message] = []

        thresholds = np.array(
            [self._thresholds.get(Label(int(v)).key, 1.0) for v in tracked.label], np.float32
        ).reshape(-1)
        reportable = tracked.confidence >= thresholds if len(tracked) else np.zeros(0, np.bool_)
        messages += self._update_counts(camera, state, tracked, reportable, labels)

        new_tracks: list[_Track] = []
        new_keys: set[tuple[int, int]] = set()
        seen: set[tuple[int, int]] = set()
        for i in range(len(tracked)):
            track_id = int(tracked.track_id[i])
            label = Label(int(tracked.label[i])).key
            if track_id == NO_TRACK or label not in labels:
                continue
            key = (int(tracked.label[i]), track_id)
            score = float(tracked.confidence[i])
            box = [round(float(v)) for v in tracked.xyxy[i]]
            track = state.tracks.get(key)
            if track is None:
                # A new event needs the event threshold; an existing one is kept alive by its track alone,
                # so a score dipping around the threshold does not flap new/end.
                if not reportable[i] or key in seen:
                    continue
                track = _Track(
                    event_id=self._unique_id(state, frame_time),
                    label=label,
                    score=score,
                    top_score=score,
                    box=box,
                    start_time=frame_time,
                    frame_time=frame_time,
                    last_seen=frame_time,
                    has_snapshot=False,
                    last_sent=frame_time,
                )
                state.tracks[key] = track
                new_tracks.append(track)
                new_keys.add(key)
            else:
                track.score = score
                track.top_score = max(track.top_score, score)
                track.box = box
                track.frame_time = frame_time
                track.last_seen = frame_time
            seen.add(key)

        snapshot_due = False
        if new_tracks and self._config.mqtt.snapshots and self._snapshot_allowed(state, frame_time):
            snapshot_due = True
            state.last_snapshot = frame_time
            for track in new_tracks:
                track.has_snapshot = True

        interval = self._config.mqtt.update_interval_s
        for key, track in list(state.tracks.items()):
            if key in new_keys:
                messages += self._new(camera, track)
            elif key in seen:
                if frame_time - track.last_sent >= interval:
                    messages += self._update(camera, track, frame_time)
            elif frame_time - track.last_seen > END_GRACE_S:
                messages += self._end(camera, track)
                del state.tracks[key]
        return FrameUpdate(messages, snapshot_due)

    def expire(self, now: float | None = None) -> list[Message]:
        """End the objects of cameras that stopped delivering frames (call about once a second)."""
        wall = self._clock() if now is None else now
        messages: list[Message] = []
        for camera, state in self._cameras.items():
            # Age in the camera's own frame-time base: frame_time may lag the wall clock (look-ahead delay).
            effective = state.last_frame_time + max(0.0, wall - state.last_frame_clock)
            for key, track in list(state.tracks.items()):
                if effective - track.last_seen > END_GRACE_S:
                    messages += self._end(camera, track)
                    del state.tracks[key]
        return messages

    def end_camera(self, camera: str) -> list[Message]:
        """The camera went offline or stopped: end its objects now and set its counts to zero."""
        state = self._cameras.get(camera)
        if state is None:
            return []
        messages: list[Message] = []
        for track in state.tracks.values():
            messages += self._end(camera, track)
        state.tracks.clear()
        for label, count in state.counts.items():
            if count:
                state.counts[label] = 0
                messages.append(retained(self._topics.count(camera, label), "0"))
        return messages

    def end_all(self) -> list[Message]:
        messages: list[Message] = []
        for camera in list(self._cameras):
            messages += self.end_camera(camera)
        return messages

    # -- internals ----------------------------------------------------------------------------------

    def _labels(self, camera: str) -> list[str]:
        cam = self._config.cameras.get(camera)
        return list(cam.protect) if cam is not None else [label.key for label in Label]

    def _stream(self, camera: str) -> str:
        cam = self._config.cameras.get(camera)
        return output_name(camera, cam) if cam is not None else f"{camera}_anon"

    def _unique_id(self, state: _Camera, frame_time: float) -> str:
        used = {t.event_id for t in state.tracks.values()}
        while True:
            event_id = self._new_id(frame_time)
            if event_id not in used:
                return event_id

    def _snapshot_allowed(self, state: _Camera, frame_time: float) -> bool:
        last = state.last_snapshot
        return last is None or abs(frame_time - last) >= SNAPSHOT_MIN_INTERVAL_S

    def _update_counts(
        self,
        camera: str,
        state: _Camera,
        tracked: Detections,
        reportable: np.ndarray[Any, np.dtype[np.bool_]],
        labels: list[str],
    ) -> list[Message]:
        messages = []
        for label in labels:
            value = int(Label.parse(label))
            count = int(np.count_nonzero(reportable & (tracked.label == value))) if len(tracked) else 0
            if state.counts.get(label) != count:
                state.counts[label] = count
                messages.append(retained(self._topics.count(camera, label), str(count)))
        return messages

    def _object(self, camera: str, track: _Track, end_time: float | None) -> dict[str, Any]:
        return {
            "id": track.event_id,
            "camera": camera,
            "label": track.label,
            "score": round(track.score, 3),
            "top_score": round(track.top_score, 3),
            "box": list(track.box),
            "start_time": track.start_time,
            "end_time": end_time,
            "frame_time": track.frame_time,
            "stream": self._stream(camera),
            "has_snapshot": track.has_snapshot,
        }

    def _envelope(self, kind: str, before: dict[str, Any], after: dict[str, Any]) -> Message:
        return Message(self._topics.events, _dumps({"type": kind, "before": before, "after": after}), qos=1)

    def _ha_event(self, camera: str, kind: str, obj: dict[str, Any]) -> Message:
        payload = {"event_type": kind, **{k: obj[k] for k in ("id", "label", "score", "top_score", "stream")}}
        payload["has_snapshot"] = obj["has_snapshot"]
        return Message(self._topics.event(camera), _dumps(payload), qos=1)

    def _new(self, camera: str, track: _Track) -> list[Message]:
        after = self._object(camera, track, None)
        track.published = after
        track.last_sent = track.frame_time
        return [self._envelope("new", after, after), self._ha_event(camera, "new", after)]

    def _update(self, camera: str, track: _Track, frame_time: float) -> list[Message]:
        after = self._object(camera, track, None)
        unchanged = {k: v for k, v in after.items() if k != "frame_time"} == {
            k: v for k, v in track.published.items() if k != "frame_time"
        }
        if unchanged:
            return []
        before, track.published = track.published, after
        track.last_sent = frame_time
        return [self._envelope("update", before, after)]

    def _end(self, camera: str, track: _Track) -> list[Message]:
        after = self._object(camera, track, track.last_seen)
        before = track.published or after
        return [self._envelope("end", before, after), self._ha_event(camera, "end", after)]
