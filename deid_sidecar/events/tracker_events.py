"""Event lifecycle: tracked `Detections` in, MQTT messages out. Pure: no paho, no threads, no I/O.

One object, one event. Per camera and object:
- `new` once a track that reached its label's `event_threshold` has been in view for `mqtt.min_event_s`
  (tracker coasting included): a blip shorter than that never becomes an event;
- `update` at most once per `mqtt.update_interval_s` while it stays tracked and something changed;
- `end` once it has been missing for more than `END_GRACE_S` or `mqtt.event_merge_s`, whichever is longer.

The tracker gives an object a new track id when it loses and finds it again (a missed detection, a
detection interval longer than `privacy.hold_s`, an occlusion). So a NEW track id continues the event
of an object of the same label that went missing at most `mqtt.event_merge_s` ago, when it appears
near where that object was heading (its last center moved on with its velocity; see `LINK_GATE`):
same event id, no second `new`, no `end` in between. Candidates are taken nearest first; one lost
object continues in at most one new track.

Measured on the demo clip (six heads and one car per 12 s loop; tests/test_event_linking.py) with the
detector at its budget, every 19th frame, 1.27 s apart and so longer than `privacy.hold_s`: 60 `new`
per loop (8.6 per object) without re-linking, 9 (1.3) with it; the rest are passers-by in the
background video. `min_event_s` is 0 by default (`new` at first sight, as automations expect): the
tracker keeps a single detection in view for `hold_s`, so only a longer value, such as 1.2 s (7 `new`
per demo loop), drops blips, and then every `new` comes that much later.

Counts (the retained `<prefix>/<cam>/<label>` topics behind HA's count and presence sensors) are not
events: they are this frame's reportable objects, published on every change, at once.

Payloads follow Frigate's `frigate/events` envelope under the sidecar's own prefix. They carry boxes,
scores and times only: never plate text, crops of the original frame or identities.

Times are the engine's `frame_time` (wall-clock UNIX seconds). `expire()` ends the objects of a camera
that stopped delivering frames, using the injected clock to age them.
"""

from __future__ import annotations

import json
import math
import secrets
import string
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deid_sidecar.config import Config, output_name
from deid_sidecar.core.detections import NO_TRACK, Detections, Label
from deid_sidecar.events.topics import Message, Topics, retained

#: A track missing longer than this ends its event (shorter gaps: tracker coasting, a missed frame);
#: `mqtt.event_merge_s`, when longer, holds the end back too, since an ended event cannot continue.
END_GRACE_S = 2.0
#: Re-linking gate: a new track's center may be this many object sizes from the predicted center...
#: (on the demo, of 1 to 2 this links the most lost objects right and the fewest wrong: a link missed
#: leaves the lost object's prediction drifting until it catches another object's track)
LINK_GATE = 2.0
#: ...plus this fraction of how far the object was predicted to move since it was last in view (its
#: velocity is measured on coasting boxes too, so it may be off by about this much)...
LINK_VELOCITY_UNCERTAINTY = 0.5
#: ...but never more than this many object sizes: a face across the room is another face.
LINK_MAX_GATE = 4.0
#: An object's velocity is measured over its sightings of the last VELOCITY_WINDOW_S seconds.
VELOCITY_WINDOW_S = 2.0
#: At most one snapshot per camera in this interval (snapshots encode a JPEG on the video path).
SNAPSHOT_MIN_INTERVAL_S = 10.0
#: Frame times are float sums: an object seen from 0.1 to 0.6 s has been in view for 0.5 s.
TIME_EPSILON = 1e-6

_ID_ALPHABET = string.ascii_lowercase + string.digits


def frigate_style_id(frame_time: float) -> str:
    """`<frame_time>-<6 random chars>`, the shape of Frigate's event ids."""
    suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(6))
    return f"{frame_time:.6f}-{suffix}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _center(box: list[int]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _size(box: list[int]) -> float:
    """Mean side length, at least one pixel."""
    return max(1.0, (box[2] - box[0] + box[3] - box[1]) / 2)


@dataclass
class _Event:
    """One object: its event, carried on by each track id it is given (the key in `_Camera.tracks`)."""

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
    announced: bool = False  # `new` was published (else: still shorter than min_event_s)
    published: dict[str, Any] = field(default_factory=dict)
    history: deque[tuple[float, float, float]] = field(default_factory=deque)  # (t, cx, cy)

    def observe(self, frame_time: float, score: float, box: list[int]) -> None:
        self.score = score
        self.top_score = max(self.top_score, score)
        self.box = box
        self.frame_time = frame_time
        self.last_seen = frame_time
        self.history.append((frame_time, *_center(box)))
        while frame_time - self.history[0][0] > VELOCITY_WINDOW_S:
            self.history.popleft()

    def velocity(self) -> tuple[float, float]:
        """Pixels per second over the recent sightings (zero from a single one)."""
        (t0, x0, y0), (t1, x1, y1) = self.history[0], self.history[-1]
        if t1 <= t0:
            return 0.0, 0.0
        return (x1 - x0) / (t1 - t0), (y1 - y0) / (t1 - t0)

    def link_distance(self, box: list[int], frame_time: float) -> float | None:
        """How far (in object sizes) `box` is from where this object was heading; None outside the gate."""
        gap = max(0.0, frame_time - self.last_seen)
        vx, vy = self.velocity()
        cx, cy = _center(self.box)
        nx, ny = _center(box)
        # The smaller size: a coasting box has grown, and a tiny new box must be close to count.
        scale = min(_size(self.box), _size(box))
        distance = math.hypot(nx - (cx + vx * gap), ny - (cy + vy * gap)) / scale
        gate = LINK_GATE + LINK_VELOCITY_UNCERTAINTY * math.hypot(vx, vy) * gap / scale
        return distance if distance <= min(gate, LINK_MAX_GATE) else None


@dataclass
class _Camera:
    tracks: dict[tuple[int, int], _Event] = field(default_factory=dict)
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
        # An event that may still be continued by a new track must not have ended.
        self._end_after = max(END_GRACE_S, config.mqtt.event_merge_s)
        self._thresholds = {
            Label.FACE.key: config.detection.face.event_threshold,
            Label.LICENSE_PLATE.key: config.detection.license_plate.event_threshold,
            Label.PERSON.key: config.detection.person.event_threshold,
        }

    # -- queries (tests, diagnostics) -------------------------------------------------------------

    def active_ids(self, camera: str) -> list[str]:
        """Ids of the events announced (`new` sent) and not ended yet."""
        state = self._cameras.get(camera)
        return [] if state is None else [e.event_id for e in state.tracks.values() if e.announced]

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
        # Counts come first and from this frame alone: presence reacts at once, events or not.
        messages += self._update_counts(camera, state, tracked, reportable, labels)

        seen: set[tuple[int, int]] = set()
        newcomers: dict[tuple[int, int], tuple[float, list[int], bool]] = {}  # key: score, box, reportable
        for i in range(len(tracked)):
            track_id = int(tracked.track_id[i])
            label = Label(int(tracked.label[i])).key
            if track_id == NO_TRACK or label not in labels:
                continue
            key = (int(tracked.label[i]), track_id)
            score = float(tracked.confidence[i])
            box = [round(float(v)) for v in tracked.xyxy[i]]
            event = state.tracks.get(key)
            if event is not None:
                event.observe(frame_time, score, box)
                seen.add(key)
            elif key not in newcomers:
                newcomers[key] = (score, box, bool(reportable[i]))

        for key, event in self._link(state, newcomers, seen, frame_time):
            score, box, _ = newcomers.pop(key)
            event.observe(frame_time, score, box)
            seen.add(key)
        for key, (score, box, report) in newcomers.items():
            # A new event needs the event threshold; an existing one is kept alive by its track alone,
            # so a score dipping around the threshold does not flap new/end.
            if not report:
                continue
            event = _Event(
                event_id=self._unique_id(state, frame_time),
                label=Label(key[0]).key,
                score=score,
                top_score=score,
                box=box,
                start_time=frame_time,
                frame_time=frame_time,
                last_seen=frame_time,
                has_snapshot=False,
                last_sent=frame_time,
            )
            event.observe(frame_time, score, box)
            state.tracks[key] = event
            seen.add(key)

        min_event_s = self._config.mqtt.min_event_s
        due = {
            key
            for key in seen
            if not state.tracks[key].announced
            and frame_time - state.tracks[key].start_time >= min_event_s - TIME_EPSILON
        }
        snapshot_due = False
        if due and self._config.mqtt.snapshots and self._snapshot_allowed(state, frame_time):
            snapshot_due = True
            state.last_snapshot = frame_time
            for key in due:
                state.tracks[key].has_snapshot = True

        interval = self._config.mqtt.update_interval_s
        for key, event in list(state.tracks.items()):
            if key in due:
                messages += self._new(camera, event)
            elif key in seen:
                if event.announced and frame_time - event.last_sent >= interval:
                    messages += self._update(camera, event, frame_time)
            elif frame_time - event.last_seen > self._end_after:
                messages += self._end(camera, event)
                del state.tracks[key]
        return FrameUpdate(messages, snapshot_due)

    def _link(
        self,
        state: _Camera,
        newcomers: dict[tuple[int, int], tuple[float, list[int], bool]],
        seen: set[tuple[int, int]],
        frame_time: float,
    ) -> list[tuple[tuple[int, int], _Event]]:
        """New track keys that continue a lost object's event, nearest first; each event moves to its key.

        Any score links: like an event's own track, a track continuing it needs no event threshold.
        """
        merge_s = self._config.mqtt.event_merge_s
        lost = [
            (key, event)
            for key, event in state.tracks.items()
            if key not in seen and frame_time - event.last_seen <= merge_s + TIME_EPSILON
        ]
        pairs = []
        for new_key, (_, box, _) in newcomers.items():
            for old_key, event in lost:
                if old_key[0] == new_key[0]:
                    distance = event.link_distance(box, frame_time)
                    if distance is not None:
                        pairs.append((distance, new_key, old_key))
        linked = []
        taken: set[tuple[int, int]] = set()
        for _, new_key, old_key in sorted(pairs):
            if new_key in taken or old_key in taken:
                continue
            taken |= {new_key, old_key}
            event = state.tracks.pop(old_key)
            state.tracks[new_key] = event
            linked.append((new_key, event))
        return linked

    def expire(self, now: float | None = None) -> list[Message]:
        """End the objects of cameras that stopped delivering frames (call about once a second)."""
        wall = self._clock() if now is None else now
        messages: list[Message] = []
        for camera, state in self._cameras.items():
            # Age in the camera's own frame-time base: frame_time may lag the wall clock (look-ahead delay).
            effective = state.last_frame_time + max(0.0, wall - state.last_frame_clock)
            for key, event in list(state.tracks.items()):
                if effective - event.last_seen > self._end_after:
                    messages += self._end(camera, event)
                    del state.tracks[key]
        return messages

    def end_camera(self, camera: str) -> list[Message]:
        """The camera went offline or stopped: end its objects now and set its counts to zero."""
        state = self._cameras.get(camera)
        if state is None:
            return []
        messages: list[Message] = []
        for event in state.tracks.values():
            messages += self._end(camera, event)
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

    def _object(self, camera: str, event: _Event, end_time: float | None) -> dict[str, Any]:
        return {
            "id": event.event_id,
            "camera": camera,
            "label": event.label,
            "score": round(event.score, 3),
            "top_score": round(event.top_score, 3),
            "box": list(event.box),
            "start_time": event.start_time,
            "end_time": end_time,
            "frame_time": event.frame_time,
            "stream": self._stream(camera),
            "has_snapshot": event.has_snapshot,
        }

    def _envelope(self, kind: str, before: dict[str, Any], after: dict[str, Any]) -> Message:
        return Message(self._topics.events, _dumps({"type": kind, "before": before, "after": after}), qos=1)

    def _ha_event(self, camera: str, kind: str, obj: dict[str, Any]) -> Message:
        payload = {"event_type": kind, **{k: obj[k] for k in ("id", "label", "score", "top_score", "stream")}}
        payload["has_snapshot"] = obj["has_snapshot"]
        return Message(self._topics.event(camera), _dumps(payload), qos=1)

    def _new(self, camera: str, event: _Event) -> list[Message]:
        after = self._object(camera, event, None)
        event.announced = True
        event.published = after
        event.last_sent = event.frame_time
        return [self._envelope("new", after, after), self._ha_event(camera, "new", after)]

    def _update(self, camera: str, event: _Event, frame_time: float) -> list[Message]:
        after = self._object(camera, event, None)
        unchanged = {k: v for k, v in after.items() if k != "frame_time"} == {
            k: v for k, v in event.published.items() if k != "frame_time"
        }
        if unchanged:
            return []
        before, event.published = event.published, after
        event.last_sent = frame_time
        return [self._envelope("update", before, after)]

    def _end(self, camera: str, event: _Event) -> list[Message]:
        """`end` of an announced event; one never announced (a blip) goes without a word."""
        if not event.announced:
            return []
        after = self._object(camera, event, event.last_seen)
        return [self._envelope("end", event.published, after), self._ha_event(camera, "end", after)]
