"""deid-sidecar against a real Home Assistant (scripts/setup-ha.sh installs it into .venv-ha) and a real
Mosquitto: `deid-sidecar run` with a looping demo camera and MQTT, HA onboarded through its REST API
and given the MQTT integration through the config-flow API. Every assertion reads HA's own registries,
states and log: the device and all its entities exist with no discovery warning, counts change, the
image entity serves the anonymized JPEG the sidecar published, a switch and a select command from HA
reach the camera, entities go unavailable within 2 s of a SIGKILL and come back after a restart
(never showing a stale status) and after a broker restart, and a removed camera's device disappears,
its retained state with it. The example automations load, notify once (rate-limited) through
notify.send_message at night, and count plate events.

The measured figures (HA start, unavailable after SIGKILL, recoveries) are printed to the terminal.
Without `.venv-ha` these tests FAIL naming the set-up step, unless DEID_SKIP_HA=1 is set.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from hakit import HomeAssistant, ha_version, hass_binary, night_location, running_home_assistant, wait_for
from livekit import api_request, free_port
from mosquitto import Broker, Recorder, retained_now, running_broker

from deid_sidecar.config import Config, parse_config
from deid_sidecar.demo import build_demo_clip
from deid_sidecar.events.discovery import MANUFACTURER, MODEL, device_name, device_payload
from deid_sidecar.events.topics import Topics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
AUTOMATIONS = ROOT / "integration" / "homeassistant" / "automations.yaml"
CAMERA = "front_door"
EXTRA = "side_gate"
NOTIFY_TOPIC = "test/notify/my_phone"
DOMAINS = {"sensor", "binary_sensor", "image", "event", "switch", "select"}
#: The SIGKILL -> unavailable bound the issue asks for.
UNAVAILABLE_WITHIN_S = 2.0
#: HA's MQTT client retries the broker every 10 s (components/mqtt/client.py RECONNECT_INTERVAL_SECONDS).
BROKER_RECOVERY_S = 45.0
#: HA logs these while the broker is away on purpose (only the broker test allows them).
BROKER_AWAY = re.compile(
    r"Disconnected from MQTT server|Error re-connecting|Unable to connect to the MQTT broker"
    r"|Error returned from MQTT server: The connection was lost"
    # HA's own birth-message task when its first connection after the restart drops at once.
    r"|Error talking to MQTT: The client is not currently connected"
)


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def report(request: pytest.FixtureRequest, line: str) -> None:
    """A measured figure, to the terminal even while output is captured."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"[home-assistant] {line}")


class Sidecar:
    """`deid-sidecar run` as a separate process; its config is rewritten between starts."""

    def __init__(self, work: Path, broker_port: int, clip: Path, models_dir: Path) -> None:
        self.work, self.broker_port, self.clip, self.models_dir = work, broker_port, clip, models_dir
        self.port = free_port()
        self.config_file = work / "sidecar.yml"
        self.log = work / "sidecar.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cameras: list[str] = [CAMERA]

    def camera(self, protect: list[str] | None = None) -> dict[str, Any]:
        cam: dict[str, Any] = {"source": f"file:{self.clip}", "loop": True, "output": {"fps": 8}}
        if protect is not None:
            cam["protect"] = protect
        return cam

    def raw_config(self) -> dict[str, Any]:
        cameras = {name: self.camera(None if name == CAMERA else ["license_plate"]) for name in self.cameras}
        return {
            "models_dir": str(self.models_dir),
            "server": {"host": "127.0.0.1", "port": self.port, "media_dirs": [str(self.work)]},
            "mqtt": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": self.broker_port,
                "client_id": f"deid-ha-test-{os.getpid()}",
                "update_interval_s": 0.5,
            },
            "cameras": cameras,
        }

    def config(self) -> Config:
        return parse_config(self.raw_config())

    def start(self, cameras: list[str] | None = None) -> float:
        if cameras is not None:
            self.cameras = cameras
        self.config_file.write_text(yaml.safe_dump(self.raw_config()))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deid_sidecar.cli", "run", "-c", str(self.config_file)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return time.time()

    def kill(self) -> float:
        assert self.proc is not None and self.proc.poll() is None, self.log_tail()
        self.proc.send_signal(signal.SIGKILL)
        at = time.time()
        self.proc.wait(10)
        self.proc = None
        return at

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def api(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        return api_request(self.port, method, path, body)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Stack:
    ha: HomeAssistant
    broker: Broker
    sidecar: Sidecar
    mqtt: Recorder
    figures: dict[str, float] = field(default_factory=dict)
    #: What HA may log during the current test (the broker test stops the broker on purpose).
    expected_log: re.Pattern[str] | None = None

    def device(self, camera: str) -> dict[str, Any] | None:
        return self.ha.device_by_identifier(Topics("deid").device_id(camera))

    def expected_entities(self, camera: str, config: Config | None = None) -> dict[str, str]:
        """unique_id -> entity_id, as HA names them: slugify(device name + entity name)."""
        config = config or self.sidecar.config()
        camera_config = config.cameras.get(camera)
        payload = device_payload(config, camera, camera_config=camera_config)
        device = slugify(payload["dev"]["name"])
        return {
            c["unique_id"]: f"{c['p']}.{device}_{slugify(c['name'])}"
            for c in payload["cmps"].values()
            if "unique_id" in c
        }

    def entity_ids(self, camera: str) -> list[str]:
        return sorted(self.expected_entities(camera).values())

    def states_of(self, camera: str) -> dict[str, str | None]:
        states = self.ha.states()
        return {e: (states[e]["state"] if e in states else None) for e in self.entity_ids(camera)}

    def all_available(self, camera: str) -> bool:
        return all(s not in (None, "unavailable") for s in self.states_of(camera).values())

    def all_unavailable(self, camera: str) -> bool:
        return all(s == "unavailable" for s in self.states_of(camera).values())

    def ensure_running(self) -> None:
        """The sidecar up with the configured camera, and HA showing it (a failed test may leave it down)."""
        if not self.sidecar.running() or self.sidecar.cameras != [CAMERA]:
            self.sidecar.stop()
            self.sidecar.start([CAMERA])
        wait_for(lambda: self.all_available(CAMERA), 120, "the camera's entities available in HA")


def automation_config() -> str:
    """The example automations' file (filled and reloaded once MQTT is set up: their MQTT triggers need
    it), and what they need: the sun (night) and the plate counter."""
    return (
        "automation: !include automations.yaml\n"
        "sun:\n"  # the face-at-night condition (default_config has it)
        "counter:\n  plate_events:\n    name: Plate events\n    step: 1\n"
    )


# Module scope: one Home Assistant for every scenario here, gone (with the looping camera) before the
# rest of the suite runs on the same two cores.
@pytest.fixture(scope="module")
def home_assistant_stack(
    tmp_path_factory: pytest.TempPathFactory,
    media_dir: Path,
    models_dir: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Stack]:
    hass_binary()  # fails naming scripts/setup-ha.sh when it was not run
    work = tmp_path_factory.mktemp("home-assistant")
    clip, _ = build_demo_clip(media_dir, work / "door.mp4", seconds=6)
    config_dir = work / "ha-config"
    config_dir.mkdir()
    (config_dir / "automations.yaml").write_text("[]\n")
    with running_broker(work) as broker:
        started = time.monotonic()
        # Night where HA is: the example's face-at-night automation can notify whenever this runs.
        location = night_location()
        with running_home_assistant(
            config_dir, free_port(), broker.port, automation_config(), location
        ) as ha:
            report(
                request,
                f"Home Assistant {ha_version()}: started in {ha.start_s:.1f} s, onboarded with MQTT "
                f"in {time.monotonic() - started:.1f} s",
            )
            recorder = Recorder(
                broker.port, ["deid/#", "homeassistant/#", f"{NOTIFY_TOPIC}/#"], client_id="ha-test-recorder"
            )
            # The notify entity the example sends to (`notify.my_phone`): an MQTT notify entity whose
            # every message the recorder sees.
            recorder.publish(
                "homeassistant/notify/deid_test_phone/config",
                json.dumps(
                    {
                        "name": "My phone",
                        "object_id": "my_phone",
                        "unique_id": "deid_test_my_phone",
                        "command_topic": NOTIFY_TOPIC,
                    }
                ),
                retain=True,
            )
            wait_for(lambda: ha.state("notify.my_phone") is not None, 30, "the test's notify entity")
            # The examples, as a user adds them: after the MQTT integration, then reloaded.
            (config_dir / "automations.yaml").write_text(AUTOMATIONS.read_text())
            ha.service("automation", "reload")
            sidecar = Sidecar(work, broker.port, clip, models_dir)
            stack = Stack(ha, broker, sidecar, recorder, {"ha_start_s": ha.start_s})
            sidecar.start([CAMERA])
            try:
                yield stack
            finally:
                sidecar.stop()
                recorder.close()
                report(request, "figures: " + ", ".join(f"{k}={v:.2f}" for k, v in stack.figures.items()))


@pytest.fixture
def stack(home_assistant_stack: Stack) -> Iterator[Stack]:
    """The module's stack, the camera running and shown; no MQTT problem in HA's log meanwhile."""
    stack = home_assistant_stack
    stack.ensure_running()
    stack.expected_log = None
    mark = stack.ha.log_mark()
    yield stack
    expected = stack.expected_log
    problems = [p for p in stack.ha.log_problems(mark) if expected is None or not expected.search(p)]
    assert not problems, "Home Assistant logged:\n" + "\n".join(problems)


@pytest.mark.parametrize("skip", [False, True])
def test_missing_home_assistant_fails_naming_the_set_up_step(
    skip: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without .venv-ha the tests fail (never a silent skip), unless DEID_SKIP_HA=1 says so."""
    import hakit

    monkeypatch.setattr(hakit, "HA_VENV", tmp_path / "no-venv-ha")
    if skip:
        monkeypatch.setenv(hakit.SKIP_ENV, "1")
    else:
        monkeypatch.delenv(hakit.SKIP_ENV, raising=False)
    expected = pytest.skip.Exception if skip else pytest.fail.Exception
    with pytest.raises(expected) as raised:
        hakit.hass_binary()
    assert ("DEID_SKIP_HA=1" if skip else "run scripts/setup-ha.sh") in str(raised.value)


def test_device_and_all_entities_discovered_without_warnings(
    home_assistant_stack: Stack, request: pytest.FixtureRequest
) -> None:
    stack = home_assistant_stack
    ha = stack.ha
    started = time.monotonic()
    device = wait_for(lambda: stack.device(CAMERA), 120, "the camera's device in HA's device registry")
    expected = stack.expected_entities(CAMERA)
    registered = wait_for(
        lambda: (found := ha.entities_of(device["id"])) and len(found) >= len(expected) and found,
        60,
        "every entity of the device in HA's entity registry",
    )
    wait_for(lambda: stack.all_available(CAMERA), 60, "every entity available")
    stack.figures["discovered_s"] = time.monotonic() - started
    report(
        request,
        f"device and {len(expected)} entities available {stack.figures['discovered_s']:.1f} s after start",
    )

    assert device["name"] == device_name(CAMERA) == "Front door privacy"
    assert device["manufacturer"] == MANUFACTURER and device["model"] == MODEL
    assert device["sw_version"]
    by_unique = {e["unique_id"]: e for e in registered}
    assert set(by_unique) == set(expected), set(by_unique) ^ set(expected)
    for unique_id, entity_id in expected.items():
        entity = by_unique[unique_id]
        assert entity["platform"] == "mqtt"
        assert entity["entity_id"] == entity_id, (unique_id, entity["entity_id"])
        assert entity_id.split(".")[0] in DOMAINS
    # The ids the README and integration/homeassistant/dashboard.yaml use.
    ids = set(expected.values())
    assert {
        "switch.front_door_privacy_detection",
        "select.front_door_privacy_masking_method",
        "image.front_door_privacy_last_snapshot",
        "sensor.front_door_privacy_faces",
        "binary_sensor.front_door_privacy_whole_frame_masking",
    } <= ids
    # Whole frames are masked (degraded) until the detector has loaded, then the camera is online.
    wait_for(lambda: ha.value("sensor.front_door_privacy_status") == "online", 90, "the camera online")
    states = ha.states()
    assert states["select.front_door_privacy_masking_method"]["state"] == "blur"
    assert states["switch.front_door_privacy_detection"]["state"] == "on"

    problems = ha.log_problems()
    assert not problems, "Home Assistant logged:\n" + "\n".join(problems)


def test_counts_change_and_the_image_entity_serves_the_anonymized_snapshot(stack: Stack) -> None:
    ha = stack.ha
    counts = ["sensor.front_door_privacy_faces", "sensor.front_door_privacy_license_plates"]
    mark = ha.ws.mark() if ha.ws else 0

    def seen_values() -> dict[str, set[str]]:
        assert ha.ws is not None
        return {e: {c.state for c in ha.ws.changes_of(e, mark) if c.state} for e in counts}

    wait_for(
        lambda: any(len({v for v in values if v.isdigit()}) >= 2 for values in seen_values().values()),
        90,
        "a count sensor changing value",
    )
    assert any(int(v) > 0 for values in seen_values().values() for v in values if v.isdigit())
    present = [
        "binary_sensor.front_door_privacy_face_present",
        "binary_sensor.front_door_privacy_plate_present",
    ]

    def present_seen() -> bool:
        assert ha.ws is not None
        return any(
            ha.value(e) == "on" or any(c.state == "on" for c in ha.ws.changes_of(e, mark)) for e in present
        )

    wait_for(present_seen, 60, "a present binary sensor on")

    # The image entity: HA serves, through its own image proxy, a JPEG the sidecar published.
    entity = "image.front_door_privacy_last_snapshot"
    wait_for(
        lambda: ha.value(entity) not in (None, "unknown", "unavailable"), 90, "a snapshot in the image entity"
    )
    published = {m.payload for m in stack.mqtt.on_topic(f"deid/{CAMERA}/snapshot")}
    assert published, "the sidecar published snapshots"
    content_type, jpeg = ha.request("GET", f"/api/image_proxy/{entity}", raw=True)
    assert content_type.startswith("image/jpeg"), content_type
    assert jpeg[:3] == b"\xff\xd8\xff"
    # HA may already hold a newer one than our first read of the recorder.
    published = {m.payload for m in stack.mqtt.on_topic(f"deid/{CAMERA}/snapshot")}
    assert jpeg in published, "HA's image is not one the sidecar published"
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 0


def test_switch_and_select_from_home_assistant_reach_the_camera(stack: Stack) -> None:
    ha, sidecar = stack.ha, stack.sidecar
    switch, select = "switch.front_door_privacy_detection", "select.front_door_privacy_masking_method"
    whole = "binary_sensor.front_door_privacy_whole_frame_masking"

    def camera() -> dict[str, Any]:
        status, body = sidecar.api("GET", f"/api/cameras/{CAMERA}")
        assert status == 200, body
        return dict(body)

    try:
        ha.service("switch", "turn_off", entity_id=switch)
        wait_for(lambda: camera()["detection"] is False, 15, "detection off in the sidecar's API")
        wait_for(lambda: ha.value(switch) == "off", 15, "the switch echoed off")
        # Detection off masks every frame whole: HA's diagnostics say so.
        wait_for(lambda: ha.value(whole) == "on", 15, "whole-frame masking shown on")
        assert ha.value("sensor.front_door_privacy_status") == "degraded"
        ha.service("select", "select_option", entity_id=select, option="fill")
        wait_for(lambda: camera()["method"] == "fill", 15, "method fill in the sidecar's API")
        wait_for(lambda: ha.value(select) == "fill", 15, "the select echoed fill")
    finally:
        ha.service("switch", "turn_on", entity_id=switch)
        ha.service("select", "select_option", entity_id=select, option="blur")
    wait_for(lambda: camera()["detection"] is True and camera()["method"] == "blur", 15, "settings restored")
    wait_for(lambda: ha.value(switch) == "on", 15, "the switch echoed on")
    wait_for(lambda: ha.value(select) == "blur", 15, "the select echoed blur")
    wait_for(lambda: ha.value(whole) == "off", 30, "whole-frame masking off again")


def test_sigkill_makes_entities_unavailable_and_a_restart_shows_no_stale_status(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    ha, sidecar = stack.ha, stack.sidecar
    assert ha.ws is not None
    entities = stack.entity_ids(CAMERA)
    status = "sensor.front_door_privacy_status"
    mark = ha.ws.mark()
    killed_at = sidecar.kill()
    wait_for(lambda: stack.all_unavailable(CAMERA), 10, "every entity unavailable after SIGKILL")
    # Measured from HA's own state change (its last_changed), per entity.
    delays = []
    for entity in entities:
        change = next(c for c in ha.ws.changes_of(entity, mark) if c.state == "unavailable")
        assert change.last_changed is not None
        delays.append(change.last_changed - killed_at)
    stack.figures["unavailable_after_sigkill_s"] = max(delays)
    report(request, f"unavailable {max(delays):.3f} s after SIGKILL (all {len(entities)} entities; LWT)")
    assert max(delays) < UNAVAILABLE_WITHIN_S, delays

    # The broker keeps the killed run's retained status; make it one the new run never sends while it
    # starts (`degraded` it may: whole frames are masked until its detector has loaded).
    stack.mqtt.publish(f"deid/{CAMERA}/status", "stopped", retain=True)
    time.sleep(0.5)
    mark = ha.ws.mark()
    started_at = sidecar.start()
    wait_for(lambda: stack.all_available(CAMERA), 120, "every entity available after the restart")
    back = max(
        next(c for c in ha.ws.changes_of(e, mark) if c.state not in (None, "unavailable")).last_changed or 0.0
        for e in entities
        if any(c.state not in (None, "unavailable") for c in ha.ws.changes_of(e, mark))
    )
    stack.figures["available_after_restart_s"] = back - started_at
    report(request, f"available again {back - started_at:.1f} s after the restarted process started")
    shown = [c.state for c in ha.ws.changes_of(status, mark)]
    assert "stopped" not in shown, f"HA showed the stale retained status: {shown}"
    assert shown and set(shown) <= {"unavailable", "starting", "degraded", "online"}, shown


def test_entities_recover_after_a_broker_restart(stack: Stack, request: pytest.FixtureRequest) -> None:
    ha = stack.ha
    assert ha.ws is not None

    def method() -> Any:
        return stack.sidecar.api("GET", f"/api/cameras/{CAMERA}")[1]["method"]

    mark = ha.ws.mark()
    stack.expected_log = BROKER_AWAY
    stack.broker.stop()
    wait_for(lambda: stack.all_unavailable(CAMERA), 30, "entities unavailable while the broker is down")
    stack.broker.start()
    restarted_at = time.time()
    wait_for(
        lambda: stack.all_available(CAMERA), BROKER_RECOVERY_S, "entities available after the broker restart"
    )
    recovered = time.time() - restarted_at
    stack.figures["available_after_broker_restart_s"] = recovered
    report(request, f"available again {recovered:.1f} s after the broker restarted (HA retries every 10 s)")
    assert any(c.state == "unavailable" for c in ha.ws.changes_of("sensor.front_door_privacy_status", mark))
    # Commands still reach the camera over the new connections.
    ha.service(
        "select", "select_option", entity_id="select.front_door_privacy_masking_method", option="pixelate"
    )
    try:
        wait_for(lambda: method() == "pixelate", 20, "a command after the broker restart")
    finally:
        ha.service(
            "select", "select_option", entity_id="select.front_door_privacy_masking_method", option="blur"
        )
    wait_for(lambda: method() == "blur", 20, "blur again")


def test_a_camera_removed_in_the_web_ui_disappears_from_home_assistant(stack: Stack) -> None:
    ha, sidecar = stack.ha, stack.sidecar
    new = {"name": EXTRA, "source": f"file:{sidecar.clip}", "loop": True, "protect": ["license_plate"]}
    status, body = sidecar.api("POST", "/api/cameras", new)
    assert status == 201, body
    device = wait_for(lambda: stack.device(EXTRA), 60, "the added camera's device in HA")
    assert device["name"] == "Side gate privacy"
    wait_for(lambda: len(ha.entities_of(device["id"])) >= 10, 30, "its entities")
    assert sidecar.api("DELETE", f"/api/cameras/{EXTRA}")[0] == 200
    wait_for(lambda: stack.device(EXTRA) is None, 30, "the removed camera's device gone from HA")
    assert not ha.entities_of(device["id"])
    assert stack.device(CAMERA) is not None
    assert (
        retained_now(stack.broker.port, [f"deid/{EXTRA}/#", f"homeassistant/device/deid_{EXTRA}/config"])
        == {}
    )


def test_a_camera_removed_from_the_config_disappears_with_its_retained_state(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    ha, sidecar = stack.ha, stack.sidecar
    sidecar.stop()
    sidecar.start([CAMERA, EXTRA])
    device = wait_for(lambda: stack.device(EXTRA), 120, "the second camera's device in HA")
    wait_for(lambda: stack.all_available(EXTRA), 60, "its entities available")
    wait_for(lambda: ha.value("sensor.side_gate_privacy_status") == "online", 60, "it online")
    kept = retained_now(stack.broker.port, [f"deid/{EXTRA}/#"])
    assert f"deid/{EXTRA}/status" in kept and f"deid/{EXTRA}/detection/state" in kept

    sidecar.stop()
    started_at = sidecar.start([CAMERA])  # side_gate is gone from the config
    wait_for(lambda: stack.device(EXTRA) is None, 60, "the stale device gone from HA")
    stack.figures["stale_device_removed_s"] = time.time() - started_at
    report(request, f"stale device removed {stack.figures['stale_device_removed_s']:.1f} s after the restart")
    assert not ha.entities_of(device["id"])
    assert (
        retained_now(stack.broker.port, [f"deid/{EXTRA}/#", f"homeassistant/device/deid_{EXTRA}/config"])
        == {}
    )
    wait_for(lambda: stack.all_available(CAMERA), 120, "the configured camera available again")


def test_example_automations_notify_at_most_once_and_count_plate_events(stack: Stack) -> None:
    """integration/homeassistant/automations.yaml as a user loads it: both automations on; it is night
    where this HA is, so the face automation sends one notification through `notify.send_message` and,
    rate-limited, no second one while face events go on; the plate counter counts real plate events."""
    ha = stack.ha
    states = ha.states()
    assert states["sun.sun"]["state"] == "below_horizon"
    for automation in yaml.safe_load(AUTOMATIONS.read_text()):
        entity = f"automation.{slugify(automation['alias'])}"
        assert states[entity]["state"] == "on", (entity, states.get(entity))
        assert states[entity]["attributes"]["id"] == automation["id"]
    assert states["automation.privacy_camera_face_seen_at_night"]["attributes"]["mode"] == "single"

    wait_for(lambda: stack.mqtt.on_topic(NOTIFY_TOPIC), 120, "a notification")
    first = stack.mqtt.on_topic(NOTIFY_TOPIC)[0]
    assert first.payload.startswith(b"Face on front_door (score "), first.payload
    assert b"front_door_anon" in first.payload and b"anonymized" in first.payload
    notified_at = stack.mqtt.messages.index(first)

    def faces_since() -> int:
        events = [
            json.loads(m.payload)
            for m in stack.mqtt.messages[notified_at:]
            if m.topic == f"deid/{CAMERA}/event"
        ]
        return sum(1 for e in events if e.get("label") == "face" and e.get("event_type") == "new")

    wait_for(lambda: faces_since() >= 3, 120, "more face events after the notification")
    assert len(stack.mqtt.on_topic(NOTIFY_TOPIC)) == 1, "not rate-limited"
    # The plate counter counts the sidecar's real `new` plate events.
    wait_for(lambda: int(ha.value("counter.plate_events") or 0) > 0, 90, "a plate event counted")
    problems = ha.log_problems(pattern=r"automation|counter|notify|template|script")
    assert not problems, "\n".join(problems)
