"""The sidecar's MQTT topic layout and the message type every pure events module returns.

Pure: no paho import. Every topic the sidecar publishes or subscribes to is built here, so the
layout is written down once (see the table in `deid_sidecar.events.mqtt`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

ONLINE = "online"
OFFLINE = "offline"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Message:
    """One MQTT publish: retained state goes out at QoS 1, events and images at QoS 0/1 as given."""

    topic: str
    payload: bytes | str
    qos: int = 0
    retain: bool = False

    @property
    def payload_bytes(self) -> bytes:
        return self.payload.encode("utf-8") if isinstance(self.payload, str) else self.payload


def retained(topic: str, payload: bytes | str) -> Message:
    return Message(topic, payload, qos=1, retain=True)


def safe_id(name: str) -> str:
    """A camera name as an HA object id (`[A-Za-z0-9_-]`), still unique when characters were replaced."""
    cleaned = _UNSAFE.sub("_", name)
    if cleaned == name:
        return name
    digest = hashlib.sha1(name.encode("utf-8"), usedforsecurity=False).hexdigest()[:6]
    return f"{cleaned}_{digest}"


@dataclass(frozen=True)
class Topics:
    """Topic names under the sidecar's own prefix (never `frigate/`)."""

    prefix: str
    discovery_prefix: str = "homeassistant"

    @property
    def available(self) -> str:
        return f"{self.prefix}/available"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    def status(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/status"

    def count(self, camera: str, label: str) -> str:
        return f"{self.prefix}/{camera}/{label}"

    def event(self, camera: str) -> str:
        """Per-camera HA `event` entity payloads (`{"event_type": "new"|"end", ...}`)."""
        return f"{self.prefix}/{camera}/event"

    def snapshot(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/snapshot"

    def stats(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/stats"

    def command(self, camera: str, name: str) -> str:
        return f"{self.prefix}/{camera}/{name}/set"

    def command_filter(self, name: str) -> str:
        """Subscription filter for one command on every camera."""
        return f"{self.prefix}/+/{name}/set"

    def state(self, camera: str, name: str) -> str:
        return f"{self.prefix}/{camera}/{name}/state"

    def parse_command(self, topic: str) -> tuple[str, str] | None:
        """`<prefix>/<cam>/<name>/set` -> (cam, name); None for anything else."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != self.prefix or parts[3] != "set" or not parts[1] or not parts[2]:
            return None
        return parts[1], parts[2]

    @property
    def ha_status(self) -> str:
        """Where Home Assistant publishes its birth (`online`) and will (`offline`)."""
        return f"{self.discovery_prefix}/status"

    def device_id(self, camera: str) -> str:
        return f"{safe_id(self.prefix)}_{safe_id(camera)}"

    def discovery(self, camera: str) -> str:
        return f"{self.discovery_prefix}/device/{self.device_id(camera)}/config"
