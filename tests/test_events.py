"""Pure event logic: lifecycle (new -> update -> end), counts, snapshots, and the command table."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import wait_applied, write_clip
from webkit import file_camera

from deid_sidecar.config import Config, Method, Zone, parse_config
from deid_sidecar.core.detections import NO_TRACK, Detections, Label
from deid_sidecar.engine.settings import CameraSettings
from deid_sidecar.events import tracker_events
from deid_sidecar.events.commands import COMMANDS, CommandHandler, subscriptions
from deid_sidecar.events.control import SettingsControl
from deid_sidecar.events.topics import Message, Topics, safe_id
from deid_sidecar.events.tracker_events import END_GRACE_S, EventTracker, frigate_style_id

OBJECT_KEYS = {
    "id",
    "camera",
    "label",
    "score",
    "top_score",
    "box",
    "start_time",
    "end_time",
    "frame_time",
    "stream",
    "has_snapshot",
}


def make_config(**mqtt: Any) -> Config:
    return parse_config(
        {
            "mqtt": {"enabled": True, **mqtt},
            "cameras": {
                "front": {
                    "source": "go2rtc:front",
                    "zones": [{"name": "window", "points": [[0, 0], [1, 0], [1, 1]]}],
                },
                "back": {"source": "go2rtc:back", "protect": ["face"], "output": {"name": "back_private"}},
            },
        }
    )


def dets(rows: Sequence[tuple[Label, int, float, tuple[float, float, float, float]]]) -> Detections:
    """rows: (label, track_id, confidence, box)."""
    if not rows:
        return Detections.empty()
    return Detections(
        xyxy=np.array([r[3] for r in rows], np.float32),
        confidence=np.array([r[2] for r in rows], np.float32),
        label=np.array([int(r[0]) for r in rows], np.int64),
        track_id=np.array([r[1] for r in rows], np.int64),
    )


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def events_of(messages: list[Message]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic == "deid/events"]


def test_frigate_style_id_shape() -> None:
    event_id = frigate_style_id(1700000000.123456)
    stamp, suffix = event_id.split("-")
    assert stamp == "1700000000.123456" and len(suffix) == 6 and suffix.isalnum()


def test_lifecycle_new_update_rate_limited_end() -> None:
    config = make_config(update_interval_s=1.0)
    clock = Clock()
    tracker = EventTracker(config, clock=clock)
    t0 = clock.t
    face = (Label.FACE, 7, 0.9, (10.4, 20.6, 50.0, 80.0))

    first = tracker.update("front", t0, dets([face]))
    (new,) = events_of(first.messages)
    assert new["type"] == "new"
    after = new["after"]
    assert set(after) == OBJECT_KEYS
    assert after["camera"] == "front" and after["label"] == "face" and after["stream"] == "front_anon"
    assert after["box"] == [10, 21, 50, 80] and all(isinstance(v, int) for v in after["box"])
    assert after["end_time"] is None and after["start_time"] == t0 and after["has_snapshot"] is True
    assert first.snapshot_due
    ha_new = [json.loads(m.payload) for m in first.messages if m.topic == "deid/front/event"]
    assert ha_new[0]["event_type"] == "new" and ha_new[0]["id"] == after["id"]

    # Frames within the update interval: no update, even though the box moves.
    updates = []
    for i in range(1, 10):
        moved = (Label.FACE, 7, 0.9 + i * 0.001, (10.0 + i, 20.0, 50.0 + i, 80.0))
        result = tracker.update("front", t0 + i * 0.1, dets([moved]))
        updates += events_of(result.messages)
        assert not result.snapshot_due
    assert updates == []
    # After the interval: exactly one update, before = last published.
    result = tracker.update("front", t0 + 1.05, dets([(Label.FACE, 7, 0.95, (30.0, 20.0, 70.0, 80.0))]))
    (update,) = events_of(result.messages)
    assert update["type"] == "update" and update["before"] == after
    assert update["after"]["id"] == after["id"] and update["after"]["top_score"] == pytest.approx(0.95)
    assert update["after"]["box"] == [30, 20, 70, 80]

    # Track disappears: nothing within the grace, then end.
    t_last = t0 + 1.05
    assert events_of(tracker.update("front", t_last + END_GRACE_S * 0.5, dets([])).messages) == []
    result = tracker.update("front", t_last + END_GRACE_S + 0.1, dets([]))
    (end,) = events_of(result.messages)
    assert end["type"] == "end" and end["after"]["end_time"] == t_last
    assert end["after"]["id"] == after["id"]
    assert tracker.active_ids("front") == []
    ha_end = [json.loads(m.payload) for m in result.messages if m.topic == "deid/front/event"]
    assert ha_end[0]["event_type"] == "end"


def test_gap_shorter_than_grace_keeps_one_event() -> None:
    tracker = EventTracker(make_config(), clock=Clock())
    face = dets([(Label.FACE, 3, 0.8, (0, 0, 10, 10))])
    kinds = []
    for t, frame in [(0.0, face), (0.5, Detections.empty()), (1.5, Detections.empty()), (2.0, face)]:
        kinds += [e["type"] for e in events_of(tracker.update("front", 100 + t, frame).messages)]
    assert kinds == ["new"]


def test_threshold_counts_and_untracked() -> None:
    config = make_config()  # face event_threshold 0.5 by default
    tracker = EventTracker(config, clock=Clock())
    frame = dets(
        [
            (Label.FACE, 1, 0.9, (0, 0, 10, 10)),
            (Label.FACE, 2, 0.3, (20, 0, 30, 10)),  # masked but below the event threshold
            (Label.FACE, NO_TRACK, 0.7, (40, 0, 50, 10)),  # counted, but no event without a track
            (Label.LICENSE_PLATE, 5, 0.6, (0, 50, 40, 60)),
            (Label.PERSON, 9, 0.99, (0, 0, 100, 200)),  # not protected on this camera
        ]
    )
    result = tracker.update("front", 10.0, frame)
    counts = {m.topic: m.payload for m in result.messages if m.retain}
    assert counts == {"deid/front/face": "2", "deid/front/license_plate": "1"}
    assert all(m.qos == 1 for m in result.messages if m.retain)
    news = events_of(result.messages)
    assert sorted(e["after"]["label"] for e in news) == ["face", "license_plate"]
    # Same counts again: nothing re-published (only on change).
    again = tracker.update("front", 10.1, frame)
    assert [m for m in again.messages if m.retain] == []


def test_event_ids_unique_and_cameras_independent() -> None:
    fixed = iter(["dup", "dup", "other", "third"])
    tracker = EventTracker(make_config(), clock=Clock(), new_id=lambda t: next(fixed))
    r = tracker.update(
        "front", 1.0, dets([(Label.FACE, 1, 0.9, (0, 0, 9, 9)), (Label.FACE, 2, 0.9, (0, 0, 9, 9))])
    )
    ids = [e["after"]["id"] for e in events_of(r.messages)]
    assert len(set(ids)) == 2
    r = tracker.update("back", 1.0, dets([(Label.FACE, 1, 0.9, (0, 0, 9, 9))]))
    (event,) = events_of(r.messages)
    assert event["after"]["camera"] == "back" and event["after"]["stream"] == "back_private"


def test_snapshot_rate_limited_and_optional() -> None:
    tracker = EventTracker(make_config(), clock=Clock())
    assert tracker.update("front", 0.0, dets([(Label.FACE, 1, 0.9, (0, 0, 9, 9))])).snapshot_due
    second = tracker.update(
        "front", 1.0, dets([(Label.FACE, 1, 0.9, (0, 0, 9, 9)), (Label.FACE, 2, 0.9, (5, 5, 9, 9))])
    )
    assert not second.snapshot_due
    assert [e["after"]["has_snapshot"] for e in events_of(second.messages) if e["type"] == "new"] == [False]
    later = tracker_events.SNAPSHOT_MIN_INTERVAL_S + 1
    assert tracker.update("front", later, dets([(Label.FACE, 3, 0.9, (0, 0, 9, 9))])).snapshot_due

    off = EventTracker(make_config(snapshots=False), clock=Clock())
    result = off.update("front", 0.0, dets([(Label.FACE, 1, 0.9, (0, 0, 9, 9))]))
    assert not result.snapshot_due and events_of(result.messages)[0]["after"]["has_snapshot"] is False


def test_expire_ends_events_of_a_silent_camera() -> None:
    clock = Clock(1000.0)
    tracker = EventTracker(make_config(), clock=clock)
    # frame_time lags the wall clock by 3 s (look-ahead delay): must not matter.
    tracker.update("front", 997.0, dets([(Label.FACE, 1, 0.9, (0, 0, 9, 9))]))
    clock.t = 1000.0 + END_GRACE_S / 2
    assert tracker.expire() == []
    clock.t = 1000.0 + END_GRACE_S + 0.5
    ended = events_of(tracker.expire())
    assert [e["type"] for e in ended] == ["end"]


def test_end_camera_ends_events_and_zeroes_counts() -> None:
    tracker = EventTracker(make_config(), clock=Clock())
    tracker.update("front", 1.0, dets([(Label.FACE, 1, 0.9, (0, 0, 9, 9))]))
    messages = tracker.end_camera("front")
    assert [e["type"] for e in events_of(messages)] == ["end"]
    assert {m.topic: m.payload for m in messages if m.retain} == {"deid/front/face": "0"}
    assert tracker.end_camera("front") == []


def test_payloads_carry_no_identity_fields() -> None:
    tracker = EventTracker(make_config(), clock=Clock())
    result = tracker.update("front", 1.0, dets([(Label.LICENSE_PLATE, 1, 0.9, (0, 0, 9, 9))]))
    for event in events_of(result.messages):
        for obj in (event["before"], event["after"]):
            assert set(obj) == OBJECT_KEYS  # no plate text, no crops, no identity


# -- topics ---------------------------------------------------------------------------------------------


def test_topics_and_safe_ids() -> None:
    topics = Topics("deid")
    assert topics.parse_command("deid/front/privacy/set") == ("front", "privacy")
    assert topics.parse_command("deid/front/privacy/state") is None
    assert topics.parse_command("frigate/front/privacy/set") is None
    assert safe_id("front_door") == "front_door"
    assert safe_id("a.b") != safe_id("a_b")
    assert topics.discovery("front") == "homeassistant/device/deid_front/config"


# -- commands -------------------------------------------------------------------------------------------


class RecordingControl(SettingsControl):
    """The real control over real settings owners, recording what reached it (and able to refuse)."""

    def __init__(self, settings: dict[str, CameraSettings], config: Config, accept: bool = True) -> None:
        super().__init__(settings, config)
        self.accept = accept
        self.calls: list[tuple[str, str, Any]] = []

    def set_privacy(self, camera: str, on: bool) -> bool:
        self.calls.append(("privacy", camera, on))
        return self.accept and super().set_privacy(camera, on)

    def set_zones(self, camera: str, zones: list[Zone]) -> bool:
        self.calls.append(("zones", camera, zones))
        return self.accept and super().set_zones(camera, zones)

    def set_method(self, camera: str, method: Method) -> bool:
        self.calls.append(("method", camera, method))
        return self.accept and super().set_method(camera, method)

    def set_detection(self, camera: str, on: bool) -> bool:
        self.calls.append(("detection", camera, on))
        return self.accept and super().set_detection(camera, on)


def owners(config: Config) -> dict[str, CameraSettings]:
    return {name: CameraSettings.from_camera(name, camera, config) for name, camera in config.cameras.items()}


class Wired:
    """A CommandHandler over real settings owners, collecting what MQTT would publish: the handler's
    own reply (a refusal) and the owners' observer echo (an accepted change)."""

    def __init__(self, config: Config, accept: bool = True) -> None:
        self.settings = owners(config)
        self.control = RecordingControl(self.settings, config, accept)
        self.handler = CommandHandler(config, self.settings, self.control)
        self.echoed: list[Message] = []
        for owner in self.settings.values():
            owner.subscribe(lambda change: self.echoed.extend(self.handler.state_changed(change)))

    def send(self, topic: str, payload: bytes) -> list[Message]:
        self.echoed.clear()
        return self.handler.handle(topic, payload) + self.echoed


def test_subscriptions_come_from_the_table() -> None:
    assert subscriptions(Topics("deid")) == [f"deid/+/{spec.name}/set" for spec in COMMANDS]
    assert {spec.name for spec in COMMANDS} == {"privacy", "zones", "method", "detection"}


def test_initial_state_messages() -> None:
    config = make_config()
    handler = CommandHandler(config, owners(config))
    states = {m.topic: m.payload for m in handler.initial_messages()}
    assert states["deid/front/privacy/state"] == "ON"
    assert states["deid/front/detection/state"] == "ON"
    assert states["deid/front/method/state"] == "blur"
    assert json.loads(states["deid/front/zones/state"])[0]["name"] == "window"


@pytest.mark.parametrize(
    ("allow", "payload", "applied", "state"),
    [
        (False, b"OFF", False, "ON"),
        (False, b"ON", True, "ON"),
        (True, b"OFF", True, "OFF"),
        (True, b"off", True, "OFF"),
    ],
)
def test_privacy_off_needs_allow_remote_unmask(
    allow: bool, payload: bytes, applied: bool, state: str
) -> None:
    wired = Wired(make_config(allow_remote_unmask=allow))
    out = wired.send("deid/front/privacy/set", payload)
    assert [(m.topic, m.payload, m.retain) for m in out] == [("deid/front/privacy/state", state, True)]
    assert bool(wired.control.calls) is applied
    assert wired.settings["front"].values.masking is (state == "ON")


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("deid/front/method/set", b"pixelate", "pixelate"),
        ("deid/front/method/set", b" FILL \n", "fill"),
        ("deid/front/detection/set", b"OFF", "OFF"),
        ("deid/back/detection/set", b"ON", "ON"),
    ],
)
def test_accepted_commands_echo_state(topic: str, payload: bytes, expected: str) -> None:
    wired = Wired(make_config())
    out = wired.send(topic, payload)
    assert [(m.topic, m.payload) for m in out] == [(topic.replace("/set", "/state"), expected)]
    assert len(wired.control.calls) == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        b'{"name": "x"}',
        b'[{"name": "x", "points": [[0, 0], [2, 2], [1, 0]]}]',
        b'[{"name": "x", "points": [[0, 0]]}]',
        b"\xff\xfe",
        b"x" * 70_000,
    ],
)
def test_bad_zones_are_logged_never_raised(payload: bytes, caplog: pytest.LogCaptureFixture) -> None:
    wired = Wired(make_config(allow_remote_unmask=True))
    with caplog.at_level(logging.ERROR):
        assert wired.send("deid/front/zones/set", payload) == []
    assert wired.control.calls == []
    assert "zones/set refused" in caplog.text


def test_zones_change_may_only_grow_masking_by_default() -> None:
    wired = Wired(make_config())
    window = {"name": "window", "points": [[0, 0], [1, 0], [1, 1]]}
    door = {"name": "door", "points": [[0, 0], [0.5, 0], [0.5, 0.5]]}
    grown = wired.send("deid/front/zones/set", json.dumps([window, door]).encode())
    assert len(json.loads(grown[0].payload)) == 2
    shrunk = wired.send("deid/front/zones/set", json.dumps([door]).encode())
    assert len(json.loads(shrunk[0].payload)) == 2  # refused: state re-published unchanged
    assert len(wired.control.calls) == 1
    assert [zone.name for zone in wired.settings["front"].values.zones] == ["window", "door"]


def test_unknown_camera_bad_method_no_control_and_failing_control() -> None:
    config = make_config()
    settings = owners(config)
    handler = CommandHandler(config, settings)
    assert handler.handle("deid/nope/method/set", b"blur") == []
    refused = handler.handle("deid/front/method/set", b"fill")  # no control wired yet
    assert [m.payload for m in refused] == ["blur"]
    handler.control = RecordingControl(settings, config)
    assert handler.handle("deid/front/method/set", b"sharpen") == []
    handler.control = RecordingControl(settings, config, accept=False)
    assert [m.payload for m in handler.handle("deid/front/detection/set", b"OFF")] == ["ON"]

    class Broken(RecordingControl):
        def set_method(self, camera: str, method: Method) -> bool:
            raise RuntimeError("bug in the app")

    handler.control = Broken(settings, config)
    assert handler.handle("deid/front/method/set", b"fill") == []
    assert settings["front"].values.method is Method.BLUR


def test_settings_control_refuses_unmask_and_submits_changes_to_the_owner() -> None:
    config = make_config()
    settings = owners(config)
    changes: list[tuple[str, frozenset[str]]] = []
    settings["front"].subscribe(lambda change: changes.append((change.by, change.changed)))
    control = SettingsControl(settings, config)
    assert not control.set_privacy("front", False)
    assert control.set_privacy("front", True)  # already on: nothing changes
    assert not control.set_detection("nope", False)
    zone = Zone(name="door", points=[(0, 0), (1, 0), (1, 1)])
    assert control.set_zones("front", [zone])
    assert control.set_method("front", Method.FILL)
    assert changes == [("mqtt", frozenset({"zones"})), ("mqtt", frozenset({"method"}))]
    assert settings["front"].values.zones == (zone,) and settings["front"].values.method is Method.FILL
    allowed = SettingsControl(settings, make_config(allow_remote_unmask=True))
    assert allowed.set_privacy("front", False) and settings["front"].values.masking is False


def test_detection_on_from_mqtt_during_stop_keeps_every_frame_masked_whole(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "cam.mp4", seconds=1.0, fps=10)
    pipeline = file_camera(clip, "front")
    try:
        pipeline.set_detection(False)
        pipeline.pause()  # the web UI's Stop
        config = make_config()
        handler = CommandHandler(
            config, {"front": pipeline.settings}, SettingsControl({"front": pipeline.settings}, config)
        )
        echo: list[Message] = []
        pipeline.settings.subscribe(lambda change: echo.extend(handler.state_changed(change)))
        handler.handle("deid/front/detection/set", b"ON")
        assert [(m.topic, m.payload) for m in echo] == [("deid/front/detection/state", "ON")]  # the wish
        wait_applied(pipeline)
        masked_before = pipeline.processor.counters.frames_masked_whole
        frames_before = pipeline.stats.snapshot()["frames_out"]
        wait_for(lambda: pipeline.stats.snapshot()["frames_out"] >= frames_before + 5)
        assert pipeline.paused and pipeline.processor.detection_enabled is False  # still masked whole
        masked = pipeline.processor.counters.frames_masked_whole - masked_before
        assert masked >= pipeline.stats.snapshot()["frames_out"] - frames_before - 1  # one may be in flight
        pipeline.resume()  # an admin starts the camera: the stored wish takes effect
        wait_applied(pipeline)
        assert pipeline.processor.detection_enabled is True
    finally:
        pipeline.stop()


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
