"""HA device-discovery payloads checked against the keys HA's MQTT platforms document."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deid_sidecar.config import Config, Method, parse_config
from deid_sidecar.events.discovery import (
    CAMERA_STATES,
    STAT_SENSORS,
    device_name,
    device_payload,
    discovery_messages,
    removal_messages,
    stale_device_removal,
)

# Required options per platform (HA core components/mqtt/<platform>.py schemas).
REQUIRED: dict[str, set[str]] = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "event": {"state_topic", "event_types"},
    "image": set(),  # exactly one of image_topic / url_topic, checked below
    "switch": {"command_topic"},
    "select": {"command_topic", "options"},
}
COMMON = {"p", "unique_id", "name", "icon", "entity_category", "availability", "device_class", "qos"}
ALLOWED: dict[str, set[str]] = {
    "sensor": COMMON | {"state_topic", "value_template", "unit_of_measurement", "state_class", "options"},
    "binary_sensor": COMMON | {"state_topic", "value_template", "payload_on", "payload_off", "off_delay"},
    "event": COMMON | {"state_topic", "event_types", "value_template"},
    "image": COMMON | {"image_topic", "url_topic", "content_type", "image_encoding"},
    "switch": COMMON | {"command_topic", "state_topic", "payload_on", "payload_off", "state_on", "state_off"},
    "select": COMMON | {"command_topic", "state_topic", "options", "value_template"},
}
DEVICE_KEYS = {"ids", "name", "mf", "mdl", "sw", "hw", "sn", "cu", "via_device"}
ORIGIN_KEYS = {"name", "sw", "url"}


def make_config(**mqtt: Any) -> Config:
    return parse_config(
        {
            "mqtt": {"enabled": True, **mqtt},
            "detection": {"person": {"model": "ssdlite-person", "enabled": True}},
            "cameras": {
                "front": {"source": "go2rtc:front"},
                "back.yard": {"source": "go2rtc:back", "protect": ["face", "license_plate", "person"]},
                "back_yard": {"source": "go2rtc:back2", "protect": ["license_plate"]},
            },
        }
    )


def check_payload(payload: dict[str, Any]) -> None:
    assert set(payload) >= {"dev", "o", "cmps"}
    assert set(payload["dev"]) <= DEVICE_KEYS and payload["dev"]["ids"] and payload["dev"]["name"]
    assert set(payload["o"]) <= ORIGIN_KEYS and payload["o"]["name"] == "deid-sidecar" and payload["o"]["sw"]
    for avail in payload["availability"]:
        assert avail["topic"] == "deid/available"
        assert (avail["payload_available"], avail["payload_not_available"]) == ("online", "offline")
    for key, cmp in payload["cmps"].items():
        platform = cmp.get("p")
        assert platform in REQUIRED, f"{key}: platform {platform!r}"
        if set(cmp) == {"p"}:
            continue  # removal stub for a component the config turned off
        assert "unique_id" in cmp and cmp["name"], key
        missing = REQUIRED[platform] - set(cmp)
        assert not missing, f"{key}: missing {missing}"
        unknown = set(cmp) - ALLOWED[platform]
        assert not unknown, f"{key}: keys HA does not know: {unknown}"
        if platform == "image":
            assert ("image_topic" in cmp) != ("url_topic" in cmp)
        if "entity_category" in cmp:
            assert cmp["entity_category"] in {"config", "diagnostic"}
        for option, value in cmp.items():
            if option.endswith("_topic"):
                assert value.startswith("deid/") and "+" not in value and "#" not in value, (key, value)


def test_every_camera_payload_matches_the_schema() -> None:
    config = make_config()
    for camera in config.cameras:
        check_payload(device_payload(config, camera))


def test_unique_ids_unique_across_cameras_and_topics() -> None:
    config = make_config()
    ids: list[str] = []
    device_ids: list[str] = []
    messages = discovery_messages(config)
    for message in messages:
        payload = json.loads(message.payload)
        device_ids += payload["dev"]["ids"]
        ids += [c["unique_id"] for c in payload["cmps"].values() if "unique_id" in c]
        assert message.retain and message.qos == 1
        assert message.topic.startswith("homeassistant/device/") and message.topic.endswith("/config")
    assert len(ids) == len(set(ids))
    assert len(device_ids) == len(set(device_ids)) == 3  # "back.yard" and "back_yard" do not collide
    assert len({m.topic for m in messages}) == 3
    assert messages[0].topic == "homeassistant/device/deid_front/config"


def test_components_per_camera() -> None:
    config = make_config()
    cmps = device_payload(config, "back.yard")["cmps"]
    for label in ("face", "license_plate", "person"):
        assert cmps[f"{label}_count"]["state_topic"] == f"deid/back.yard/{label}"
        assert cmps[f"{label}_present"]["state_topic"] == f"deid/back.yard/{label}"
    assert cmps["face_present"]["name"] == "Face present"
    assert cmps["license_plate_present"]["name"] == "Plate present"
    assert cmps["event"]["event_types"] == ["new", "end"]
    assert cmps["event"]["state_topic"] == "deid/back.yard/event"
    assert cmps["snapshot"]["image_topic"] == "deid/back.yard/snapshot"
    assert cmps["snapshot"]["content_type"] == "image/jpeg"
    assert cmps["status"]["options"] == CAMERA_STATES
    for stat in STAT_SENSORS:
        assert cmps[stat.key]["entity_category"] == "diagnostic"
        assert stat.key in cmps[stat.key]["value_template"]
    assert {"fps_out", "latency_ms", "frames_dropped"} <= set(cmps)
    assert cmps["detection"]["command_topic"] == "deid/back.yard/detection/set"
    assert cmps["method"]["options"] == [m.value for m in Method]
    # Only what is protected gets a sensor.
    assert "face_count" not in device_payload(config, "back_yard")["cmps"]


@pytest.mark.parametrize("allow", [False, True])
def test_privacy_switch_only_when_remote_unmask_allowed(allow: bool) -> None:
    cmps = device_payload(make_config(allow_remote_unmask=allow), "front")["cmps"]
    if allow:
        assert cmps["privacy"]["command_topic"] == "deid/front/privacy/set"
        assert cmps["privacy"]["state_topic"] == "deid/front/privacy/state"
    else:
        assert cmps["privacy"] == {"p": "switch"}  # removes an entity created while it was allowed


def test_snapshots_off_removes_image_entity() -> None:
    assert device_payload(make_config(snapshots=False), "front")["cmps"]["snapshot"] == {"p": "image"}


def test_custom_prefixes_and_origin_url() -> None:
    config = make_config(prefix="anon", discovery_prefix="ha")
    payload = device_payload(config, "front", version="9.9", support_url="https://example.invalid/help")
    assert payload["o"] == {"name": "deid-sidecar", "sw": "9.9", "url": "https://example.invalid/help"}
    assert payload["availability"][0]["topic"] == "anon/available"
    assert discovery_messages(config)[0].topic == "ha/device/anon_front/config"
    assert all(c.get("state_topic", "anon/").startswith("anon/") for c in payload["cmps"].values())


def test_removal_is_empty_retained() -> None:
    (message,) = removal_messages(make_config(), ["front"])
    assert message.topic == "homeassistant/device/deid_front/config"
    assert message.payload == b"" and message.retain


@pytest.mark.parametrize(
    ("topic", "payload", "removed"),
    [
        ("homeassistant/device/deid_old_cam/config", {"o": {"name": "deid-sidecar"}}, True),
        (
            "homeassistant/device/deid_front/config",
            {"o": {"name": "deid-sidecar"}},
            False,
        ),  # still configured
        ("homeassistant/device/deid_old_cam/config", {"o": {"name": "frigate"}}, False),  # not ours
        ("homeassistant/device/frigate_cam/config", {"o": {"name": "deid-sidecar"}}, False),  # other prefix
        ("homeassistant/device/deid_old_cam/config", None, False),  # already removed (empty payload)
    ],
)
def test_stale_devices_of_removed_cameras_are_cleared(topic: str, payload: object, removed: bool) -> None:
    config = parse_config({"mqtt": {"enabled": True}, "cameras": {"front": {"source": "go2rtc:front"}}})
    raw = b"" if payload is None else json.dumps(payload).encode()
    messages = stale_device_removal(config, topic, raw)
    assert bool(messages) == removed
    if messages:
        assert messages[0].topic == topic and messages[0].retain and messages[0].payload_bytes == b""


def test_stale_device_removal_clears_the_cameras_retained_state_topics() -> None:
    """The removed camera's device goes, and so does everything of it the broker kept: status, stats,
    counts, command state; the current camera's topics and non-retained ones are left alone."""
    old = make_config(allow_remote_unmask=True)
    (config_message, *_) = discovery_messages(old, {"back.yard": old.cameras["back.yard"]})
    now = parse_config({"mqtt": {"enabled": True}, "cameras": {"front": {"source": "go2rtc:front"}}})
    messages = stale_device_removal(now, config_message.topic, config_message.payload_bytes)
    assert messages[0].topic == config_message.topic  # the device first, its state after
    assert all(m.retain and m.qos == 1 and m.payload_bytes == b"" for m in messages)
    cleared = {m.topic for m in messages[1:]}
    assert cleared == {
        "deid/back.yard/status",
        "deid/back.yard/stats",
        "deid/back.yard/face",
        "deid/back.yard/license_plate",
        "deid/back.yard/person",
        "deid/back.yard/privacy/state",
        "deid/back.yard/zones/state",
        "deid/back.yard/method/state",
        "deid/back.yard/detection/state",
    }
    # Every retained topic the old payload pointed HA at is among them (snapshot and event are not retained).
    pointed = {
        value
        for cmp in json.loads(config_message.payload)["cmps"].values()
        for key, value in cmp.items()
        if key in {"state_topic"}
    }
    assert pointed - {"deid/back.yard/event"} <= cleared


def test_stale_device_without_a_readable_status_topic_is_removed_alone() -> None:
    config = parse_config({"mqtt": {"enabled": True}, "cameras": {"front": {"source": "go2rtc:front"}}})
    topic = "homeassistant/device/deid_gone/config"
    for cmps in ({}, {"status": {"state_topic": "other/gone/status"}}, {"status": "x"}, []):
        payload = json.dumps({"o": {"name": "deid-sidecar"}, "cmps": cmps}).encode()
        assert [m.topic for m in stale_device_removal(config, topic, payload)] == [topic]


@pytest.mark.parametrize(
    ("camera", "name"),
    [
        ("front_door", "Front door privacy"),
        ("garage", "Garage privacy"),
        ("back.yard", "Back.yard privacy"),
        ("side__gate_", "Side gate privacy"),
        ("GarageCam", "GarageCam privacy"),
    ],
)
def test_device_name_reads_as_words(camera: str, name: str) -> None:
    assert device_name(camera) == name
    config = parse_config({"mqtt": {"enabled": True}, "cameras": {camera: {"source": "go2rtc:x"}}})
    assert device_payload(config, camera)["dev"]["name"] == name


def test_entity_names_are_short_so_entity_ids_read_well() -> None:
    """HA's entity id is slugify("<device name> <entity name>"): no parenthesised explanations."""
    cmps = device_payload(make_config(allow_remote_unmask=True), "front")["cmps"]
    assert cmps["detection"]["name"] == "Detection"
    for key, cmp in cmps.items():
        if "name" in cmp:
            assert len(cmp["name"]) <= 24 and not set("()") & set(cmp["name"]), (key, cmp["name"])


def test_the_go2rtc_registration_state_is_a_text_diagnostic() -> None:
    """HA refuses text in a measurement sensor: the registration state has no state_class."""
    sensor = device_payload(make_config(), "front")["cmps"]["go2rtc"]
    assert sensor["entity_category"] == "diagnostic" and "state_class" not in sensor
    assert sensor["value_template"] == "{{ value_json.go2rtc or 'none' }}"
    assert sensor["state_topic"] == "deid/front/stats"
