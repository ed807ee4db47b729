"""MqttEvents against a real Mosquitto on loopback: availability, LWT, reconnect, HA birth, commands, queue."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mosquitto import Broker, Received, Recorder, free_port, retained_now, running_broker

from deid_sidecar.app import MqttWiring
from deid_sidecar.config import Config, Method, Zone, parse_config
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.engine.fleet import CameraFleet
from deid_sidecar.events import mqtt as mqtt_module
from deid_sidecar.events.control import SettingsControl
from deid_sidecar.events.mqtt import MqttEvents, Outbox
from deid_sidecar.events.topics import Message

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
JPEG = b"\xff\xd8\xff\xe0fake-anonymized-jpeg\xff\xd9"
USERNAME = "mqtt-user-qzx"
PASSWORD = "pw-Secr3t-9731"
STREAM_TOKEN = "st-0123456789abcdef"
PLATE_TEXT = re.compile(r"\b[A-Z]{1,3}[- ]?\d{2,4}[- ]?[A-Z]{0,3}\b")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with running_broker(tmp_path) as running:
        yield running


@pytest.fixture(autouse=True)
def fast_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqtt_module, "RECONNECT_MAX_S", 2)


def make_config(port: int, **mqtt: Any) -> Config:
    return parse_config(
        {
            "mqtt": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": port,
                "client_id": f"deid-test-{os.getpid()}",
                "update_interval_s": 0.1,
                **mqtt,
            },
            "cameras": {"front": {"source": "go2rtc:front"}, "back": {"source": "go2rtc:back"}},
        }
    )


def faces(n: int, track_start: int = 1) -> Detections:
    boxes = np.array([[10.0 * i, 0, 10.0 * i + 8, 8] for i in range(n)], np.float32).reshape(-1, 4)
    return Detections(
        xyxy=boxes,
        confidence=np.full(n, 0.9, np.float32),
        label=np.full(n, int(Label.FACE), np.int64),
        track_id=np.arange(track_start, track_start + n, dtype=np.int64),
    )


def wait_connected(events: MqttEvents, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not events.connected:
        assert time.monotonic() < deadline, "MqttEvents did not connect"
        time.sleep(0.02)


@pytest.fixture
def recorder(broker: Broker) -> Iterator[Recorder]:
    rec = Recorder(broker.port, ["deid/#", "homeassistant/#"])
    yield rec
    rec.close()


@pytest.fixture
def events(broker: Broker) -> Iterator[MqttEvents]:
    instance = MqttEvents(make_config(broker.port))
    instance.start()
    wait_connected(instance)
    yield instance
    instance.stop()


def test_availability_discovery_events_counts(recorder: Recorder, events: MqttEvents, broker: Broker) -> None:
    online = recorder.wait_topic("deid/available", b"online")
    recorder.wait_topic("homeassistant/device/deid_front/config")
    recorder.wait_topic("homeassistant/device/deid_back/config")
    recorder.wait_topic("deid/front/privacy/state", b"ON")
    assert online is not None

    events.on_status("front", "online")
    t0 = time.time()
    events.on_frame("front", t0, faces(2), lambda: JPEG)
    snap = recorder.wait_topic("deid/front/snapshot")
    assert snap.payload == JPEG and not snap.retain
    new = recorder.wait_for(lambda m: m.topic == "deid/events" and json.loads(m.payload)["type"] == "new")
    assert json.loads(new.payload)["after"]["has_snapshot"] is True
    recorder.wait_topic("deid/front/face", b"2")
    recorder.wait_topic("deid/front/event")

    events.on_frame("front", t0 + 0.5, faces(1), lambda: JPEG)
    recorder.wait_topic("deid/front/face", b"1")
    events.on_frame("front", t0 + 5.0, Detections.empty(), lambda: JPEG)
    recorder.wait_for(lambda m: m.topic == "deid/events" and json.loads(m.payload)["type"] == "end")
    recorder.wait_topic("deid/front/face", b"0")

    events.on_stats("front", {"fps_out": 15.0, "latency_ms": 80.0, "frames_dropped": 0})
    recorder.wait_topic("deid/front/stats")

    # A late subscriber gets the retained state.
    late = Recorder(broker.port, ["deid/front/face", "deid/front/status", "deid/available"], client_id="late")
    try:
        assert late.wait_topic("deid/front/face").payload == b"0"
        assert late.wait_topic("deid/front/status").payload == b"online"
        assert all(m.retain for m in late.messages)
    finally:
        late.close()
    assert not any(m.topic.startswith("frigate/") for m in recorder.messages)


def test_stop_publishes_offline(broker: Broker, recorder: Recorder) -> None:
    instance = MqttEvents(make_config(broker.port))
    instance.start()
    wait_connected(instance)
    recorder.wait_topic("deid/available", b"online")
    instance.on_frame("front", time.time(), faces(1), lambda: JPEG)
    mark = recorder.mark()
    instance.stop()
    recorder.wait_topic("deid/available", b"offline", start=mark)
    # The open event was ended before going offline.
    recorder.wait_for(
        lambda m: m.topic == "deid/events" and json.loads(m.payload)["type"] == "end", start=mark
    )


@pytest.mark.parametrize("as_in_the_app", [True, False], ids=["app", "mqtt-on-its-own"])
def test_a_camera_the_config_disables_gets_no_home_assistant_device(
    broker: Broker, recorder: Recorder, as_in_the_app: bool
) -> None:
    config = make_config(broker.port).model_copy(deep=True)
    config.cameras["back"].enabled = False
    if as_in_the_app:
        # The app's composition: MQTT speaks for the cameras its fleet runs.
        events = MqttEvents(config, settings={})
        fleet = CameraFleet(config, observer=events)
        fleet.build_configured()
        fleet.wire(MqttWiring(events))
    else:
        events = MqttEvents(config)
    events.start()
    try:
        wait_connected(events)
        # `online` closes the (re)connect's resync: a subscriber that joins earlier sees the rest live,
        # not as retained.
        recorder.wait_topic("deid/available", b"online")
        kept = retained_now(broker.port, ["homeassistant/#", "deid/#"])
    finally:
        events.stop()
    assert "homeassistant/device/deid_front/config" in kept
    assert "deid/front/privacy/state" in kept
    assert not [topic for topic in kept if "back" in topic]


PUBLISHER = textwrap.dedent(
    """
    import sys, time
    from deid_sidecar.config import parse_config
    from deid_sidecar.events.mqtt import MqttEvents
    config = parse_config({"mqtt": {"enabled": True, "host": "127.0.0.1", "port": int(sys.argv[1]),
                                    "client_id": "deid-lwt-test"},
                           "cameras": {"front": {"source": "go2rtc:front"}}})
    events = MqttEvents(config)
    events.start()
    while not events.connected:
        time.sleep(0.02)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def test_last_will_on_sigkill(broker: Broker, recorder: Recorder) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(broker.port)], stdout=subprocess.PIPE, env=env, cwd=REPO
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        recorder.wait_topic("deid/available", b"online")
        mark = recorder.mark()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        recorder.wait_topic("deid/available", b"offline", start=mark)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_broker_restart_resends_availability_and_discovery(broker: Broker) -> None:
    events = MqttEvents(make_config(broker.port))
    events.start()
    try:
        before_restart = Recorder(broker.port, ["deid/#"], client_id="before-restart")
        try:
            before_online(before_restart, 0)
            events.on_status("front", "degraded")
            before_restart.wait_topic("deid/front/status", b"degraded")  # nothing left in flight
        finally:
            before_restart.close()
        broker.restart()  # persistence false: every retained message is gone
        rec = Recorder(broker.port, ["deid/#", "homeassistant/#"], client_id="after-restart")
        try:
            before = before_online(rec, 0, timeout=15)
            rec.wait_topic("homeassistant/device/deid_front/config", timeout=15)
            # The current status, before `online`: HA never shows an old one as available.
            assert [m.payload for m in before if m.topic == "deid/front/status"] == [b"degraded"]
            assert events.connects >= 2
        finally:
            rec.close()
    finally:
        events.stop()


def test_ha_birth_resends_discovery(recorder: Recorder, events: MqttEvents) -> None:
    recorder.wait_topic("homeassistant/device/deid_front/config")
    mark = recorder.mark()
    recorder.publish("homeassistant/status", "offline")
    recorder.publish("homeassistant/status", "online")
    recorder.wait_topic("homeassistant/device/deid_front/config", start=mark)
    recorder.wait_topic("homeassistant/device/deid_back/config", start=mark)
    recorder.wait_topic("deid/front/privacy/state", start=mark)


class RecordingControl(SettingsControl):
    """The real control over the events' settings owners, recording what reached it."""

    def __init__(self, events: MqttEvents, config: Config) -> None:
        super().__init__(events.settings, config)
        self.calls: list[tuple[str, str, Any]] = []

    def set_privacy(self, camera: str, on: bool) -> bool:
        self.calls.append(("privacy", camera, on))
        return super().set_privacy(camera, on)

    def set_zones(self, camera: str, zones: list[Zone]) -> bool:
        self.calls.append(("zones", camera, zones))
        return super().set_zones(camera, zones)

    def set_method(self, camera: str, method: Method) -> bool:
        self.calls.append(("method", camera, method))
        return super().set_method(camera, method)

    def set_detection(self, camera: str, on: bool) -> bool:
        self.calls.append(("detection", camera, on))
        return super().set_detection(camera, on)


def test_commands_over_the_broker(
    broker: Broker, recorder: Recorder, events: MqttEvents, caplog: pytest.LogCaptureFixture
) -> None:
    control = RecordingControl(events, make_config(broker.port))
    events.set_control(control)
    recorder.wait_topic("deid/front/privacy/state", b"ON")

    mark = recorder.mark()
    with caplog.at_level(logging.WARNING):
        recorder.publish("deid/front/privacy/set", "OFF")
        recorder.wait_topic("deid/front/privacy/state", b"ON", start=mark)
    assert "refused" in caplog.text and control.calls == []

    mark = recorder.mark()
    recorder.publish("deid/front/zones/set", "{this is not json")
    recorder.publish("deid/front/method/set", "pixelate")
    recorder.wait_topic("deid/front/method/state", b"pixelate", start=mark)
    assert control.calls == [("method", "front", Method.PIXELATE)]
    assert "not valid JSON" in caplog.text
    assert recorder.on_topic("deid/front/zones/state")[-1].payload == b"[]"

    mark = recorder.mark()
    recorder.publish("deid/back/detection/set", "OFF")
    recorder.wait_topic("deid/back/detection/state", b"OFF", start=mark)


def test_remote_unmask_allowed_when_configured(broker: Broker, recorder: Recorder) -> None:
    config = make_config(broker.port, allow_remote_unmask=True)
    events = MqttEvents(config)
    control = RecordingControl(events, config)
    events.set_control(control)
    events.start()
    try:
        wait_connected(events)
        recorder.wait_topic("deid/front/privacy/state", b"ON")
        mark = recorder.mark()
        recorder.publish("deid/front/privacy/set", "OFF")
        recorder.wait_topic("deid/front/privacy/state", b"OFF", start=mark)
        assert control.calls == [("privacy", "front", False)]
        config = json.loads(recorder.wait_topic("homeassistant/device/deid_front/config").payload)
        assert config["cmps"]["privacy"]["command_topic"] == "deid/front/privacy/set"
    finally:
        events.stop()


def test_queue_is_bounded_and_counts_drops_while_broker_is_down() -> None:
    dead_port = free_port()  # nothing listens here
    events = MqttEvents(make_config(dead_port, queue_size=10))
    events.start()
    try:
        t0 = time.time()
        for i in range(1000):
            # Alternate 1 and 2 faces: every frame changes the retained count and emits events.
            events.on_frame("front", t0 + i * 0.2, faces(1 + i % 2, track_start=i), lambda: JPEG)
            events.on_status("back", "online" if i % 2 else "degraded")
            events.on_stats("front", {"fps_out": i})
            assert len(events.outbox) <= 10
        assert not events.connected
        assert events.outbox.high_water <= 10
        assert events.dropped > 1000
        assert events.stats()["dropped"] == events.dropped
    finally:
        events.stop()


def test_queued_state_converges_after_the_broker_comes_back(tmp_path: Path) -> None:
    with running_broker(tmp_path) as broker:
        broker.stop()
        events = MqttEvents(make_config(broker.port, queue_size=10))
        events.start()
        try:
            for i in range(200):
                events.on_frame("front", 1000.0 + i * 0.2, faces(1 + i % 3, track_start=i), lambda: JPEG)
            assert events.dropped > 0
            broker.start()
            wait_connected(events, timeout=15)
            rec = Recorder(broker.port, ["deid/front/face"], client_id="converge")
            try:
                # The newest count wins, even though older ones were dropped from the queue.
                expected = str(1 + 199 % 3).encode()
                rec.wait_for(lambda m: m.payload == expected)
            finally:
                rec.close()
        finally:
            events.stop()


def test_no_secrets_or_plate_text_in_payloads(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(broker.port, ["#"], client_id="scanner")
    config = make_config(broker.port, username=USERNAME, password=PASSWORD, allow_remote_unmask=True)
    events = MqttEvents(config)
    try:
        with caplog.at_level(logging.DEBUG):
            events.start()
            wait_connected(events)
            t0 = time.time()
            plates = Detections.from_boxes([[0, 0, 40, 12]], Label.LICENSE_PLATE, 0.9).with_track_ids(
                np.array([4], np.int64)
            )
            for i in range(10):
                events.on_frame("front", t0 + i * 0.3, Detections.merge([plates, faces(1)]), lambda: JPEG)
            events.on_frame("front", t0 + 10, Detections.empty(), lambda: JPEG)
            events.on_stats(
                "front",
                {
                    # The query value ends the string: masking the encoded JSON would run past its quote.
                    "last_error": f"open failed: rtsp://admin:{PASSWORD}@10.0.0.2/stream?token={STREAM_TOKEN}",
                    "fps_out": 1.0,
                },
            )
            events.on_status("front", "offline")
            recorder.wait_topic("deid/front/status", b"offline")
            stats = recorder.wait_topic("deid/front/stats")
            # Masked value by value: the payload is still JSON, its other fields intact.
            assert json.loads(stats.payload) == {
                "last_error": "open failed: rtsp://***@10.0.0.2/stream?token=***",
                "fps_out": 1.0,
            }
            events.stop()
        assert recorder.messages
        for message in recorder.messages:
            if message.topic.endswith("/snapshot"):
                continue
            text = message.payload.decode("utf-8")
            assert PASSWORD not in text and USERNAME not in text, message.topic
            assert STREAM_TOKEN not in text, message.topic
            assert not PLATE_TEXT.search(text), (message.topic, text)
        assert PASSWORD not in caplog.text and USERNAME not in caplog.text
        assert STREAM_TOKEN not in caplog.text
    finally:
        events.stop()
        recorder.close()


def test_remove_cameras_clears_device_and_retained_state(recorder: Recorder, events: MqttEvents) -> None:
    recorder.wait_topic("homeassistant/device/deid_back/config")
    events.on_status("back", "online")
    recorder.wait_topic("deid/back/status", b"online")
    mark = recorder.mark()
    events.remove_cameras(["back"])
    recorder.wait_topic("homeassistant/device/deid_back/config", b"", start=mark)
    recorder.wait_topic("deid/back/status", b"", start=mark)
    recorder.wait_topic("deid/back/privacy/state", b"", start=mark)
    # HA restarts: only the remaining camera is discovered again.
    mark = recorder.mark()
    recorder.publish("homeassistant/status", "online")
    recorder.wait_topic("homeassistant/device/deid_front/config", start=mark)
    recorder.wait_topic("deid/front/detection/state", start=mark)  # the resync has gone through
    time.sleep(0.3)
    assert not any(
        m.payload
        for m in recorder.messages[mark:]
        if m.topic.startswith(("deid/back/", "homeassistant/device/deid_back"))
    )


def test_outbox_bounds_items_and_bytes() -> None:
    box = Outbox(max_items=10, max_bytes=1000)
    box.put(Message("t", b"x" * 400) for _ in range(5))
    assert len(box) == 2 and box.dropped == 3  # bytes bound: 2 x 400 <= 1000
    box.put(Message("t", "s") for _ in range(20))
    assert len(box) == 10 and box.high_water == 10
    assert box.dropped == 3 + 12


def test_devices_of_cameras_removed_from_the_config_are_cleared(broker: Broker) -> None:
    recorder = Recorder(broker.port, ["homeassistant/device/+/config"])
    old = make_config(broker.port, client_id="deid-old")
    old = old.model_copy(update={"cameras": {**old.cameras, "garage": old.cameras["front"]}})
    first = MqttEvents(old)
    first.start()
    recorder.wait_topic("homeassistant/device/deid_garage/config")
    first.stop()
    mark = recorder.mark()
    events = MqttEvents(make_config(broker.port))  # garage is gone from the config
    events.start()
    try:
        recorder.wait_topic("homeassistant/device/deid_garage/config", payload=b"", start=mark)
        current = recorder.on_topic("homeassistant/device/deid_front/config")
        assert current[-1].payload, "configured cameras keep their device"
    finally:
        events.stop()
        recorder.close()


def before_online(recorder: Recorder, start: int, timeout: float = 10.0) -> list[Received]:
    """The live messages from `start` up to the next `deid/available online`."""
    recorder.wait_topic("deid/available", b"online", start=start, timeout=timeout)
    messages = recorder.messages[start:]
    end = next(i for i, m in enumerate(messages) if m.topic == "deid/available" and m.payload == b"online")
    # Live messages only (the old run's retained ones reached the recorder when it subscribed).
    return [m for m in messages[:end] if not m.retain]


def test_status_and_state_go_out_before_online(broker: Broker) -> None:
    """After a restart the broker still has the old run's retained status (and the last will's
    `offline`). Every retained state of the new run goes out before `online`, and a camera whose
    pipeline has not reported yet says `starting`: HA never shows the stale status as available."""
    stale = Recorder(broker.port, ["old-run/unused"], client_id="old-run")
    stale.publish("deid/front/status", "degraded", retain=True)
    stale.publish("deid/available", "offline", retain=True)
    stale.close()
    recorder = Recorder(broker.port, ["deid/#", "homeassistant/#"])
    events = MqttEvents(make_config(broker.port))
    events.start()
    try:
        before = before_online(recorder, 0)
        topics = [m.topic for m in before]
        assert [m.payload for m in before if m.topic == "deid/front/status"] == [b"starting"]
        assert [m.payload for m in before if m.topic == "deid/back/status"] == [b"starting"]
        assert {"deid/front/detection/state", "deid/front/method/state", "deid/back/privacy/state"} <= set(
            topics
        )
        assert topics.index("homeassistant/device/deid_front/config") < topics.index("deid/front/status")

        # A pipeline's own report replaces the seed, and the next resync (HA's birth) keeps the order.
        events.on_status("front", "online")
        recorder.wait_topic("deid/front/status", b"online")
        mark = recorder.mark()
        recorder.publish("homeassistant/status", "online")
        before = before_online(recorder, mark)
        assert [m.payload for m in before if m.topic == "deid/front/status"] == [b"online"]
        assert "deid/back/status" in [m.topic for m in before]
    finally:
        events.stop()
        recorder.close()


def test_camera_added_at_runtime_starts_as_starting(recorder: Recorder, events: MqttEvents) -> None:
    from deid_sidecar.engine.settings import CameraSettings

    config = make_config(1)
    camera = config.cameras["front"]
    mark = recorder.mark()
    events.add_camera("yard", camera, CameraSettings.from_camera("yard", camera, config))
    recorder.wait_topic("homeassistant/device/deid_yard/config", start=mark)
    assert recorder.wait_topic("deid/yard/status", start=mark).payload == b"starting"
    events.on_status("yard", "online")
    recorder.wait_topic("deid/yard/status", b"online", start=mark)


def test_stale_device_removal_clears_the_cameras_retained_state(broker: Broker) -> None:
    """A camera gone from the config: its HA device is deleted and none of its retained state stays on
    the broker (status, stats, counts, command state); the configured cameras keep theirs."""
    recorder = Recorder(broker.port, ["homeassistant/device/+/config", "deid/#"])
    old = make_config(broker.port, client_id="deid-old")
    old = old.model_copy(update={"cameras": {**old.cameras, "garage": old.cameras["front"]}})
    first = MqttEvents(old)
    first.start()
    try:
        wait_connected(first)
        first.on_status("garage", "online")
        first.on_stats("garage", {"fps_out": 5.0})
        first.on_frame("garage", time.time(), faces(1), lambda: JPEG)
        recorder.wait_topic("deid/garage/face", b"1")
        recorder.wait_topic("deid/garage/stats")
        recorder.wait_topic("deid/garage/method/state")
    finally:
        first.stop()
    kept = retained_now(broker.port, ["deid/garage/#"])
    assert {"deid/garage/status", "deid/garage/face", "deid/garage/stats", "deid/garage/method/state"} <= set(
        kept
    )

    mark = recorder.mark()
    events = MqttEvents(make_config(broker.port))  # garage is gone from the config
    events.start()
    try:
        recorder.wait_topic("homeassistant/device/deid_garage/config", payload=b"", start=mark)
        recorder.wait_topic("deid/garage/status", payload=b"", start=mark)
        recorder.wait_topic("deid/garage/detection/state", payload=b"", start=mark)
        assert retained_now(broker.port, ["deid/garage/#", "homeassistant/device/deid_garage/config"]) == {}
        still = retained_now(broker.port, ["deid/front/#", "homeassistant/device/deid_front/config"])
        assert {
            "deid/front/status",
            "deid/front/method/state",
            "homeassistant/device/deid_front/config",
        } <= set(still)
    finally:
        events.stop()
        recorder.close()
