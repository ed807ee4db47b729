"""integration/homeassistant/*.yaml parse, and agree with the topics, payloads and entities the code produces."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deid_sidecar.config import parse_config
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.events.discovery import device_payload
from deid_sidecar.events.topics import Topics
from deid_sidecar.events.tracker_events import EventTracker

HA_DIR = Path(__file__).resolve().parents[1] / "integration" / "homeassistant"
CAMERA = "front_door"
CONFIG = parse_config({"mqtt": {"enabled": True}, "cameras": {CAMERA: {"source": f"go2rtc:{CAMERA}"}}})
PLATFORM_DOMAIN = {
    "sensor": "sensor",
    "binary_sensor": "binary_sensor",
    "image": "image",
    "event": "event",
    "switch": "switch",
    "select": "select",
}
README = Path(__file__).resolve().parents[1] / "README.md"


def load(name: str) -> Any:
    return yaml.safe_load((HA_DIR / name).read_text(encoding="utf-8"))


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def discovered_entity_ids() -> set[str]:
    payload = device_payload(CONFIG, CAMERA)
    device = slugify(payload["dev"]["name"])
    return {
        f"{PLATFORM_DOMAIN[c['p']]}.{device}_{slugify(c['name'])}"
        for c in payload["cmps"].values()
        if c["p"] in PLATFORM_DOMAIN and "name" in c
    }


def cards(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [card for view in dashboard["views"] for card in view["cards"]]


def test_dashboard_has_webrtc_card_on_the_anonymized_stream() -> None:
    dashboard = load("dashboard.yaml")
    webrtc = [c for c in cards(dashboard) if c["type"] == "custom:webrtc-camera"]
    assert webrtc, "a custom:webrtc-camera card"
    urls = [stream["url"] for card in webrtc for stream in card["streams"]]
    assert urls == [f"{CAMERA}_anon"]  # never the raw stream name


def test_dashboard_generic_camera_and_discovered_entities() -> None:
    dashboard = load("dashboard.yaml")
    entity_cards = [c for c in cards(dashboard) if c["type"] == "picture-entity"]
    assert any(c["entity"].startswith("camera.") and c["entity"].endswith("_anon") for c in entity_cards)
    known = discovered_entity_ids()
    used = {c["entity"] for c in entity_cards if not c["entity"].startswith("camera.")}
    for card in cards(dashboard):
        used |= {e["entity"] if isinstance(e, dict) else e for e in card.get("entities", [])}
    assert used and used <= known, f"not created by discovery: {used - known}"


def _payload_fields(template: str) -> list[list[str]]:
    return [m.split(".") for m in re.findall(r"trigger\.payload_json((?:\.[a-z_]+)+)", template)]


def _resolve(payload: dict[str, Any], path: list[str]) -> bool:
    node: Any = payload
    for part in [p for p in path if p]:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def sample_payloads() -> dict[str, dict[str, Any]]:
    """A `new` payload for each topic (or wildcard) an automation may subscribe to."""
    tracker = EventTracker(CONFIG)
    dets = Detections.from_boxes([[0, 0, 10, 10]], Label.LICENSE_PLATE, 0.9).with_track_ids(np.array([1]))
    topics = Topics(CONFIG.mqtt.prefix)
    wildcard = {topics.events: topics.events, topics.event(CAMERA): topics.event("+")}
    return {
        wildcard[m.topic]: json.loads(m.payload)
        for m in tracker.update(CAMERA, 100.0, dets).messages
        if m.topic in wildcard
    }


def test_automations_match_topics_and_payloads() -> None:
    automations = load("automations.yaml")
    assert isinstance(automations, list) and len(automations) == 2
    assert len({a["id"] for a in automations}) == 2
    payloads = sample_payloads()
    for automation in automations:
        assert automation["alias"] and automation["actions"]
        for trigger in automation["triggers"]:
            assert trigger["trigger"] == "mqtt"
            topic = trigger["topic"]
            assert topic.startswith("deid/") and not topic.startswith("frigate/")
            assert topic in payloads, f"{topic} is not a topic the sidecar publishes events on"
            for condition in automation["conditions"]:
                if condition["condition"] != "template":
                    continue
                for path in _payload_fields(condition["value_template"]):
                    assert _resolve(payloads[topic], path), f"{'.'.join(path)} missing from {topic} payloads"


def test_face_at_night_and_plate_counter() -> None:
    by_id = {a["id"]: a for a in load("automations.yaml")}
    night = by_id["deid_face_at_night"]
    assert any(
        c.get("entity_id") == "sun.sun" and c.get("state") == "below_horizon" for c in night["conditions"]
    )
    assert "'face'" in night["conditions"][0]["value_template"]
    counter = by_id["deid_count_plate_events"]
    assert counter["actions"][0]["action"] == "counter.increment"
    assert "'license_plate'" in counter["conditions"][0]["value_template"]
    assert "'new'" in counter["conditions"][0]["value_template"]


def notify_actions(automation: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in automation["actions"] if str(a.get("action", "")).startswith("notify.")]


def test_notifications_use_a_service_a_default_install_has() -> None:
    """`notify.notify` only exists with a legacy notify platform; `notify.send_message` (to a notify
    entity) is there on every install, or a mobile_app target."""
    automations = load("automations.yaml")
    notifying = [a for a in automations if notify_actions(a)]
    assert notifying, "the face-at-night example notifies"
    for automation in notifying:
        for action in notify_actions(automation):
            assert action["action"] != "notify.notify", automation["id"]
            if action["action"] == "notify.send_message":
                assert action["target"]["entity_id"].startswith("notify.")
                assert action["data"]["message"]
            else:
                assert action["action"].startswith("notify.mobile_app_"), action["action"]


def _seconds(delay: Any) -> float:
    if isinstance(delay, dict):
        return 3600 * delay.get("hours", 0) + 60 * delay.get("minutes", 0) + delay.get("seconds", 0)
    hours, minutes, seconds = (float(part) for part in str(delay).split(":"))
    return 3600 * hours + 60 * minutes + seconds


def test_notifications_are_rate_limited() -> None:
    """A busy scene starts several face events a second: each notifying automation runs one at a time
    (`mode: single`, extra triggers dropped silently) and ends with a delay of a minute or more."""
    for automation in load("automations.yaml"):
        if not notify_actions(automation):
            continue
        assert automation["mode"] == "single", automation["id"]
        assert automation.get("max_exceeded") == "silent", automation["id"]
        last = automation["actions"][-1]
        assert "delay" in last and _seconds(last["delay"]) >= 60, automation["id"]


def test_device_and_control_entity_ids_read_well() -> None:
    payload = device_payload(CONFIG, CAMERA)
    assert payload["dev"]["name"] == "Front door privacy"
    ids = discovered_entity_ids()
    assert "switch.front_door_privacy_detection" in ids
    assert "select.front_door_privacy_masking_method" in ids
    assert "sensor.front_door_privacy_faces" in ids
    assert all(len(entity_id) <= 60 for entity_id in ids), sorted(ids, key=len)[-1]


def readme_topic_rows() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## MQTT and Home Assistant") :]
    section = section[: section.index("\n## ", 1)]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_readme_topic_table_lists_every_topic_the_sidecar_publishes() -> None:
    topics = Topics(CONFIG.mqtt.prefix, CONFIG.mqtt.discovery_prefix)
    cam = "<cam>"
    first_cells = [row.split("|")[1] for row in readme_topic_rows()]
    for topic in (
        topics.available,
        topics.events,
        topics.status(cam),
        topics.event(cam),
        topics.snapshot(cam),
        topics.stats(cam),
        topics.count(cam, "face"),
        f"{topics.discovery_prefix}/device/{topics.prefix}_{cam}/config",
    ):
        assert any(f"`{topic}`" in cell for cell in first_cells), (
            f"{topic} missing from the README's topic table"
        )
    assert any("/set`" in cell and "detection" in cell for cell in first_cells)
    assert any("/state`" in cell for cell in first_cells)
