"""Home Assistant MQTT device discovery payloads. Pure builders: no paho, no I/O.

One retained message per camera on `<discovery_prefix>/device/<prefix>_<cam>/config` with `dev`, `o`
(origin) and `cmps` (components, each with `p` and `unique_id`). Options at the root (availability,
qos) are shared by every component. A component that the config turns off is sent as `{"p": ...}`
alone, which is how HA removes a component it created earlier; an empty retained payload removes the
whole device (`removal_messages`), and `stale_device_removal` also clears the retained state topics of
a camera that is gone.

HA names entities `<device name> <entity name>`, slugified: device "Front door privacy" + switch
"Detection" is `switch.front_door_privacy_detection`. Names stay short so the ids read well; what an
entity does in detail is in the README.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from deid_sidecar import __version__
from deid_sidecar.config import CameraConfig, Config, Method
from deid_sidecar.core.detections import Label
from deid_sidecar.events.commands import COMMANDS
from deid_sidecar.events.topics import OFFLINE, ONLINE, Message, Topics, retained, safe_id

ORIGIN_NAME = "deid-sidecar"
MANUFACTURER = "deid-sidecar"
MODEL = "Privacy sidecar (face and plate anonymizer)"
CAMERA_STATES = ["starting", "online", "offline", "degraded", "stopped"]

_LABEL_NAMES = {"face": "Faces", "license_plate": "License plates", "person": "Persons"}
_PRESENT_NAMES = {"face": "Face present", "license_plate": "Plate present", "person": "Person present"}
_ICONS = {"face": "mdi:face-recognition", "license_plate": "mdi:card-text-outline", "person": "mdi:account"}


@dataclass(frozen=True)
class StatSensor:
    key: str
    name: str
    unit: str | None = None
    state_class: str | None = "measurement"  # None: a text state (HA refuses text in a measurement)
    device_class: str | None = None
    template: str | None = None  # the value_template when not simply value_json.<key>


#: Diagnostic sensors read from the stats JSON (`CameraStats.snapshot()` keys).
STAT_SENSORS: tuple[StatSensor, ...] = (
    StatSensor("fps_out", "Output FPS", "fps"),
    StatSensor("fps_detect", "Detection FPS", "fps"),
    StatSensor("latency_ms", "Latency", "ms", device_class="duration"),
    StatSensor("frames_dropped", "Frames dropped", state_class="total_increasing"),
    StatSensor("frames_masked_whole", "Frames masked whole", state_class="total_increasing"),
    # registering | registered | not_persisted | refused | unreachable; none without registration
    StatSensor(
        "go2rtc", "go2rtc registration", state_class=None, template="{{ value_json.go2rtc or 'none' }}"
    ),
)


def device_name(camera: str) -> str:
    """The HA device name of a camera: `front_door` -> "Front door privacy" (underscores to spaces, the
    first letter upper-case, the rest as written)."""
    words = " ".join(camera.replace("_", " ").split()) or camera
    return f"{words[:1].upper()}{words[1:]} privacy"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def device_payload(
    config: Config,
    camera: str,
    *,
    camera_config: CameraConfig | None = None,
    version: str = __version__,
    support_url: str | None = None,
) -> dict[str, Any]:
    """The device discovery payload of one camera (`camera_config`: one not in `config`, added at runtime)."""
    topics = Topics(config.mqtt.prefix, config.mqtt.discovery_prefix)
    device_id = topics.device_id(camera)
    cam = camera_config or config.cameras.get(camera)
    protect = list(cam.protect) if cam is not None else ["face", "license_plate"]

    def uid(key: str) -> str:
        return f"{device_id}_{key}"

    cmps: dict[str, dict[str, Any]] = {}
    for label in protect:
        cmps[f"{label}_count"] = {
            "p": "sensor",
            "unique_id": uid(f"{label}_count"),
            "name": _LABEL_NAMES[label],
            "icon": _ICONS[label],
            "state_topic": topics.count(camera, label),
            "state_class": "measurement",
            "unit_of_measurement": "objects",
        }
        cmps[f"{label}_present"] = {
            "p": "binary_sensor",
            "unique_id": uid(f"{label}_present"),
            "name": _PRESENT_NAMES[label],
            "device_class": "occupancy",
            "state_topic": topics.count(camera, label),
            "value_template": "{{ 'ON' if (value | int(0)) > 0 else 'OFF' }}",
            "payload_on": "ON",
            "payload_off": "OFF",
        }
    cmps["event"] = {
        "p": "event",
        "unique_id": uid("event"),
        "name": "Object",
        "state_topic": topics.event(camera),
        "event_types": ["new", "end"],
    }
    if config.mqtt.snapshots:
        cmps["snapshot"] = {
            "p": "image",
            "unique_id": uid("snapshot"),
            "name": "Last snapshot",
            "image_topic": topics.snapshot(camera),
            "content_type": "image/jpeg",
        }
    else:
        cmps["snapshot"] = {"p": "image"}
    cmps["status"] = {
        "p": "sensor",
        "unique_id": uid("status"),
        "name": "Status",
        "state_topic": topics.status(camera),
        "device_class": "enum",
        "options": CAMERA_STATES,
        "entity_category": "diagnostic",
    }
    cmps["masking_degraded"] = {
        "p": "binary_sensor",
        "unique_id": uid("masking_degraded"),
        "name": "Whole-frame masking",
        "device_class": "problem",
        "state_topic": topics.status(camera),
        "value_template": "{{ 'ON' if value in ['degraded', 'offline'] else 'OFF' }}",
        "entity_category": "diagnostic",
    }
    for stat in STAT_SENSORS:
        component: dict[str, Any] = {
            "p": "sensor",
            "unique_id": uid(stat.key),
            "name": stat.name,
            "state_topic": topics.stats(camera),
            "value_template": stat.template or f"{{{{ value_json.{stat.key} }}}}",
            "entity_category": "diagnostic",
        }
        if stat.state_class:
            component["state_class"] = stat.state_class
        if stat.unit:
            component["unit_of_measurement"] = stat.unit
        if stat.device_class:
            component["device_class"] = stat.device_class
        cmps[stat.key] = component
    cmps["detection"] = {
        "p": "switch",
        "unique_id": uid("detection"),
        "name": "Detection",  # off: every frame masked whole (README, "MQTT and Home Assistant")
        "command_topic": topics.command(camera, "detection"),
        "state_topic": topics.state(camera, "detection"),
        "payload_on": "ON",
        "payload_off": "OFF",
        "entity_category": "config",
    }
    if config.mqtt.allow_remote_unmask:
        cmps["privacy"] = {
            "p": "switch",
            "unique_id": uid("privacy"),
            "name": "Privacy masking",
            "command_topic": topics.command(camera, "privacy"),
            "state_topic": topics.state(camera, "privacy"),
            "payload_on": "ON",
            "payload_off": "OFF",
            "icon": "mdi:incognito",
            "entity_category": "config",
        }
    else:
        cmps["privacy"] = {"p": "switch"}
    cmps["method"] = {
        "p": "select",
        "unique_id": uid("method"),
        "name": "Masking method",
        "command_topic": topics.command(camera, "method"),
        "state_topic": topics.state(camera, "method"),
        "options": [method.value for method in Method],
        "entity_category": "config",
    }

    origin: dict[str, Any] = {"name": ORIGIN_NAME, "sw": version}
    if support_url:
        origin["url"] = support_url
    return {
        "dev": {
            "ids": [device_id],
            # HA builds entity ids from device + entity name: sensor.<cam>_privacy_faces, ...
            "name": device_name(camera),
            "mf": MANUFACTURER,
            "mdl": MODEL,
            "sw": version,
        },
        "o": origin,
        "availability": [
            {"topic": topics.available, "payload_available": ONLINE, "payload_not_available": OFFLINE}
        ],
        "qos": 1,
        "cmps": cmps,
    }


def discovery_messages(
    config: Config,
    cameras: Mapping[str, CameraConfig] | None = None,
    *,
    version: str = __version__,
    support_url: str | None = None,
) -> list[Message]:
    """The retained discovery config of each camera (default: the config's cameras)."""
    topics = Topics(config.mqtt.prefix, config.mqtt.discovery_prefix)
    cams = config.cameras if cameras is None else cameras
    return [
        retained(
            topics.discovery(name),
            _dumps(device_payload(config, name, camera_config=cam, version=version, support_url=support_url)),
        )
        for name, cam in cams.items()
    ]


def stale_device_removal(
    config: Config, topic: str, payload: bytes, cameras: Iterable[str] | None = None
) -> list[Message]:
    """For a retained discovery config that this sidecar published for a camera it no longer has
    (`cameras`: the current ones, default the config's): the empty config that deletes the HA device,
    then empty retained payloads on that camera's retained state topics (`state_topics`), so nothing of
    it stays on the broker. Nothing for current cameras, other publishers' devices and anything
    unparsable."""
    topics = Topics(config.mqtt.prefix, config.mqtt.discovery_prefix)
    current = {topics.discovery(camera) for camera in (config.cameras if cameras is None else cameras)}
    ours = f"{config.mqtt.discovery_prefix}/device/{safe_id(config.mqtt.prefix)}_"
    if not payload or topic in current or not topic.startswith(ours) or not topic.endswith("/config"):
        return []
    try:
        document = json.loads(payload)
        origin = document.get("o", {}).get("name")
        components = document.get("cmps", {})
    except (ValueError, AttributeError):
        return []
    if origin != ORIGIN_NAME:
        return []
    camera = _camera_of(topics, components)
    cleared = [] if camera is None else state_topics(topics, camera)
    return [retained(topic, b""), *(retained(state, b"") for state in cleared)]


def state_topics(topics: Topics, camera: str) -> list[str]:
    """Every retained topic the sidecar may have published for `camera`: status, stats, a count per
    label, the `.../state` echo of every command (events and snapshots are not retained)."""
    return [
        topics.status(camera),
        topics.stats(camera),
        *(topics.count(camera, label.key) for label in Label),
        *(topics.state(camera, spec.name) for spec in COMMANDS),
    ]


def _camera_of(topics: Topics, components: Any) -> str | None:
    """The camera a discovery payload was for, read back from its status sensor's state topic."""
    if not isinstance(components, dict):
        return None
    status = components.get("status")
    state_topic = status.get("state_topic") if isinstance(status, dict) else None
    head, tail = f"{topics.prefix}/", "/status"
    if not isinstance(state_topic, str) or not state_topic.startswith(head) or not state_topic.endswith(tail):
        return None
    camera = state_topic[len(head) : -len(tail)]
    return camera if camera and topics.status(camera) == state_topic else None


def removal_messages(config: Config, cameras: Iterable[str]) -> list[Message]:
    """Empty retained configs: HA deletes the devices and their entities."""
    topics = Topics(config.mqtt.prefix, config.mqtt.discovery_prefix)
    return [retained(topics.discovery(camera), b"") for camera in cameras]
