"""MQTT connection: events, camera state, stats and Home Assistant discovery (paho-mqtt 2.x).

Topics (prefix = `mqtt.prefix`, default `deid`; never `frigate`):

| topic                                   | payload                                    | qos | retained |
|-----------------------------------------|--------------------------------------------|-----|----------|
| `<prefix>/available`                    | `online` / `offline` (offline is the LWT)  | 1   | yes      |
| `<prefix>/<cam>/status`                 | starting/online/offline/degraded/stopped   | 1   | yes      |
| `<prefix>/<cam>/<label>`                | count at or above the event threshold      | 1   | yes      |
| `<prefix>/events`                       | Frigate envelope `{"type","before","after"}` | 1 | no       |
| `<prefix>/<cam>/event`                  | HA event entity `{"event_type": new|end}`  | 1   | no       |
| `<prefix>/<cam>/snapshot`               | JPEG of the ANONYMIZED frame at a new event | 0  | no       |
| `<prefix>/<cam>/stats`                  | camera stats JSON                          | 1   | yes      |
| `<prefix>/<cam>/{privacy,zones,method,detection}/set`   | commands (subscribed)      | 1   |          |
| `<prefix>/<cam>/{privacy,zones,method,detection}/state` | accepted state echo        | 1   | yes      |
| `<discovery_prefix>/device/<prefix>_<cam>/config` | HA device discovery              | 1   | yes      |
| `<discovery_prefix>/status`             | HA birth `online` -> discovery + state re-sent | | (sub) |

The video path never waits for the broker: `on_frame`/`on_status`/`on_stats` do the pure event logic
and append to a bounded outbox (oldest dropped and counted when full). A publisher thread drains it while
connected; paho's own network thread (`loop_start`) handles connect, reconnect with backoff and keepalive.
On every successful CONNACK and on HA's birth message, discovery, the last retained state and then
availability are published again: `online` goes out last, so Home Assistant never shows, as available, a
stale value the broker kept from before a restart (a camera's status starts as `starting` until its
pipeline says otherwise). A stale device's removal also clears its camera's retained state topics.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from deid_sidecar import __version__
from deid_sidecar.config import CameraConfig, Config, enabled_cameras
from deid_sidecar.core.detections import Detections
from deid_sidecar.core.redact import mask_secrets
from deid_sidecar.engine.settings import CameraSettings, SettingsChange
from deid_sidecar.events.commands import CameraControl, CommandHandler, subscriptions
from deid_sidecar.events.discovery import discovery_messages, removal_messages, stale_device_removal
from deid_sidecar.events.topics import OFFLINE, ONLINE, Message, Topics, retained
from deid_sidecar.events.tracker_events import EventTracker

log = logging.getLogger(__name__)

#: Reconnect backoff: paho doubles the delay from MIN up to MAX.
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
#: How often the publisher thread ends the events of cameras that stopped sending frames.
EXPIRE_INTERVAL_S = 1.0
#: `stop()`: how long queued messages may take to go out before `offline` is sent.
STOP_DRAIN_TIMEOUT_S = 2.0
#: `stop()`: how long to wait for the broker to acknowledge `offline`.
STOP_PUBLISH_TIMEOUT_S = 2.0
#: The outbox also drops oldest when its payloads exceed this many bytes (snapshots are large).
MAX_QUEUE_BYTES = 16 * 1024 * 1024
#: Pause before retrying when paho's queue of unacknowledged QoS 1 messages is full.
BACKPRESSURE_WAIT_S = 0.01


class Outbox:
    """Bounded FIFO of messages: `put` never blocks, it drops the oldest and counts the drops."""

    def __init__(self, max_items: int, max_bytes: int = MAX_QUEUE_BYTES) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque[Message] = deque()
        self._bytes = 0
        self.dropped = 0
        self.high_water = 0
        self.cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, messages: Iterable[Message]) -> None:
        with self.cond:
            for message in messages:
                self._items.append(message)
                self._bytes += len(message.payload_bytes)
                while len(self._items) > self.max_items or (
                    self._bytes > self.max_bytes and len(self._items) > 1
                ):
                    old = self._items.popleft()
                    self._bytes -= len(old.payload_bytes)
                    self.dropped += 1
                self.high_water = max(self.high_water, len(self._items))
            self.cond.notify_all()

    def pop(self) -> Message | None:
        """Caller holds `cond`."""
        if not self._items:
            return None
        message = self._items.popleft()
        self._bytes -= len(message.payload_bytes)
        return message

    def push_front(self, message: Message) -> None:
        """Caller holds `cond`: put back a message that could not be sent (dropped if the box is full)."""
        if len(self._items) >= self.max_items:
            self.dropped += 1
            return
        self._items.appendleft(message)
        self._bytes += len(message.payload_bytes)


class MqttEvents:
    """FrameObserver that publishes events and Home Assistant discovery over MQTT."""

    def __init__(
        self,
        config: Config,
        settings: Mapping[str, CameraSettings] | None = None,
        *,
        support_url: str | None = None,
    ) -> None:
        """`settings`: the cameras' settings owners (the app's); without them (MQTT on its own) the
        cameras of `config` get owners here, as nothing else would own them."""
        self._config = config
        self._mqtt = config.mqtt
        self.topics = Topics(config.mqtt.prefix, config.mqtt.discovery_prefix)
        self._support_url = support_url
        self._tracker = EventTracker(config)
        self._tracker_lock = threading.Lock()
        # The cameras this connection speaks for: the app's fleet tells it of each one (`add_camera`), so
        # a camera the config disables gets no Home Assistant device; on its own, the config's enabled
        # cameras. Changed on the event loop, read by paho's and the publisher thread: `_cameras_lock`.
        self._cameras_lock = threading.Lock()
        self._cameras: dict[str, CameraConfig] = {} if settings is not None else enabled_cameras(config)
        owners = settings if settings is not None else self._own_settings(config)
        self.settings: dict[str, CameraSettings] = dict(owners)
        self._commands = CommandHandler(config, self.settings)
        for owner in self.settings.values():
            owner.subscribe(self._on_settings_change)  # echo every change, from the web UI too
        self.outbox = Outbox(config.mqtt.queue_size)
        self._retained: dict[str, Message] = {}
        self._removed: set[str] = set()
        self._client: Any = None
        self._connected = threading.Event()
        self._resync = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.connects = 0
        self._secrets = [s for s in self._secret_values() if s]

    @staticmethod
    def _own_settings(config: Config) -> dict[str, CameraSettings]:
        """MQTT on its own: nothing else owns the cameras' settings, so they are made here."""
        return {
            name: CameraSettings.from_camera(name, cam, config)
            for name, cam in enabled_cameras(config).items()
        }

    # -- FrameObserver --------------------------------------------------------------------------------

    def on_frame(
        self, camera: str, frame_time: float, tracked: Detections, snapshot: Callable[[], bytes]
    ) -> None:
        if camera in self._removed:
            return  # a removed camera's last frames: nothing of it is published again
        with self._tracker_lock:
            update = self._tracker.update(camera, frame_time, tracked)
        messages = update.messages
        if update.snapshot_due:
            # Taken here, on the video thread, because only now is the frame known to be the anonymized one.
            try:
                jpeg = snapshot()
            except Exception as exc:
                log.warning("camera %s: snapshot for MQTT failed: %s", camera, type(exc).__name__)
            else:
                messages = [Message(self.topics.snapshot(camera), jpeg, qos=0, retain=False), *messages]
        self._enqueue(messages)

    def on_status(self, camera: str, state: str) -> None:
        if camera in self._removed:
            return  # its pipeline stops after the removal: `stopped` would be retained again
        messages = [retained(self.topics.status(camera), state)]
        if state in ("offline", "stopped"):
            with self._tracker_lock:
                messages += self._tracker.end_camera(camera)
        self._enqueue(messages)

    def on_stats(self, camera: str, stats: dict[str, Any]) -> None:
        if camera in self._removed:
            return
        # Masked value by value, before encoding: the text of a whole JSON document would be masked
        # across its quotes (a query value runs to the next `&`, `#` or blank) and stop being JSON.
        payload = json.dumps(self._scrub_values(stats), separators=(",", ":"), default=self._scrub_object)
        self._enqueue([retained(self.topics.stats(camera), payload)])

    # -- control ----------------------------------------------------------------------------------------

    def set_control(self, control: CameraControl) -> None:
        self._commands.control = control

    def _on_settings_change(self, change: SettingsChange) -> None:
        """Any thread (web, MQTT): the retained `.../state` of what changed, queued without blocking."""
        self._enqueue(self._commands.state_changed(change))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def dropped(self) -> int:
        return self.outbox.dropped

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "connects": self.connects,
            "queued": len(self.outbox),
            "queue_size": self.outbox.max_items,
            "dropped": self.outbox.dropped,
        }

    def add_camera(self, name: str, camera: CameraConfig, owner: CameraSettings) -> None:
        """Speak for a camera added at runtime: its HA device, commands and state, like a configured one."""
        with self._cameras_lock:
            self._cameras[name] = camera
            self.settings[name] = owner
            self._removed.discard(name)
        owner.subscribe(self._on_settings_change)
        status = self._seed_status(name)
        if self._client is None:
            return  # `start()` publishes its state, and every (re)connect its discovery
        messages = [*self._commands.state_messages(name, owner.values), *status]
        if self._mqtt.discovery:
            messages = (
                discovery_messages(
                    self._config, {name: camera}, version=__version__, support_url=self._support_url
                )
                + messages
            )
        self._enqueue(messages)

    def remove_cameras(self, cameras: Iterable[str]) -> None:
        """Delete the cameras' HA devices and clear their retained state."""
        names = list(cameras)
        with self._cameras_lock:
            for camera in names:
                self._cameras.pop(camera, None)
                owner = self.settings.pop(camera, None)
                if owner is not None:
                    owner.unsubscribe(self._on_settings_change)
        messages: list[Message] = []
        for camera in names:
            with self._cameras_lock:
                self._removed.add(camera)  # from now on its pipeline's reports are dropped (`_enqueue`)
            with self._tracker_lock:
                # Its open events end (not retained); its counts are cleared below with the rest.
                messages += [m for m in self._tracker.end_camera(camera) if not m.retain]
        messages += removal_messages(self._config, names)
        for camera in names:
            stem = f"{self.topics.prefix}/{camera}/"
            messages += [retained(topic, b"") for topic in list(self._retained) if topic.startswith(stem)]
        self._enqueue(messages)

    def start(self) -> None:
        if self._client is not None:
            return
        self._stopping = False
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self._mqtt.client_id,
            clean_session=True,
        )
        client.will_set(self.topics.available, OFFLINE, qos=1, retain=True)
        if self._mqtt.username:
            password = self._mqtt.password.get_secret_value() if self._mqtt.password else None
            client.username_pw_set(self._mqtt.username, password)
        if self._mqtt.tls:
            client.tls_set(ca_certs=self._mqtt.ca_file or None)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(self._mqtt.queue_size)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        # Initial command state lives in the retained cache: it goes out with every (re)connect's resync.
        with self.outbox.cond:
            for message in self._commands.initial_messages():
                self._retained.setdefault(message.topic, message)
        for camera in list(self.settings):
            self._seed_status(camera)
        log.info("MQTT: connecting to %s:%d (tls=%s)", self._mqtt.host, self._mqtt.port, self._mqtt.tls)
        client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive_s)
        client.loop_start()
        self._thread = threading.Thread(target=self._publisher, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End open events, send what is queued (briefly), publish `offline` and disconnect."""
        client = self._client
        if client is None:
            return
        with self._tracker_lock:
            self._enqueue(self._tracker.end_all())
        deadline = time.monotonic() + STOP_DRAIN_TIMEOUT_S
        with self.outbox.cond:
            while len(self.outbox) and self.connected and time.monotonic() < deadline:
                self.outbox.cond.wait(0.05)
            self._stopping = True
            self.outbox.cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=STOP_DRAIN_TIMEOUT_S)
        if self.connected:
            info = client.publish(self.topics.available, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=STOP_PUBLISH_TIMEOUT_S)
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT: offline not confirmed: %s", exc)
        client.disconnect()
        client.loop_stop()
        self._connected.clear()
        self._client = None
        self._thread = None

    # -- internals --------------------------------------------------------------------------------------

    def _secret_values(self) -> list[str]:
        values = [self._mqtt.username or ""]
        if self._mqtt.password is not None:
            values.append(self._mqtt.password.get_secret_value())
        if self._config.go2rtc.password is not None:
            values.append(self._config.go2rtc.password.get_secret_value())
        return values

    def _scrub(self, text: str) -> str:
        """Credentials never leave in a payload: core/redact.py masks URLs and the configured secrets."""
        return mask_secrets(text, *self._secrets)

    def _scrub_object(self, value: object) -> str:
        """`json.dumps` default: anything not JSON-native goes out as its masked `str`."""
        return self._scrub(str(value))

    def _scrub_values(self, value: Any) -> Any:
        """A copy of a JSON-like structure whose strings, keys included, went through `_scrub`."""
        if isinstance(value, str):
            return self._scrub(value)
        if isinstance(value, dict):
            return {self._scrub(str(k)): self._scrub_values(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._scrub_values(v) for v in value]
        return value

    def _enqueue(self, messages: Iterable[Message]) -> None:
        items = list(messages)
        with self._cameras_lock:
            gone = tuple(f"{self.topics.prefix}/{camera}/" for camera in self._removed)
        if gone:
            # A removed camera's pipeline may still report while it stops: its retained state, once
            # cleared, must not come back (only the empty payloads that clear it go out).
            items = [m for m in items if not (m.payload_bytes and m.topic.startswith(gone))]
        if not items:
            return
        with self.outbox.cond:
            for message in items:
                if message.retain:
                    if message.payload_bytes:
                        self._retained[message.topic] = message
                    else:
                        self._retained.pop(message.topic, None)
        self.outbox.put(items)

    def _seed_status(self, camera: str) -> list[Message]:
        """A camera's status is `starting` until its pipeline reports one (the pipeline only reports
        changes): without it, a restart would leave the broker's stale retained status showing."""
        with self.outbox.cond:
            topic = self.topics.status(camera)
            if topic in self._retained:
                return []
            message = retained(topic, "starting")
            self._retained[topic] = message
        return [message]

    def _resync_messages(self) -> list[Message]:
        """Discovery, every retained state, and `online` last: HA shows nothing stale as available."""
        messages: list[Message] = []
        if self._mqtt.discovery:
            with self._cameras_lock:
                cameras = {n: c for n, c in self._cameras.items() if n not in self._removed}
            messages += discovery_messages(
                self._config, cameras, version=__version__, support_url=self._support_url
            )
        with self.outbox.cond:
            messages += list(self._retained.values())
        return [*messages, retained(self.topics.available, ONLINE)]

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("MQTT: broker refused the connection: %s", reason_code)
            return
        self.connects += 1
        log.info("MQTT: connected to %s:%d", self._mqtt.host, self._mqtt.port)
        topics = [(topic, 1) for topic in subscriptions(self.topics)]
        if self._mqtt.discovery:
            topics.append((self.topics.ha_status, 1))
        if self._mqtt.discovery and self._mqtt.remove_stale_devices:
            # Retained configs of every device come back at once; ours for removed cameras get cleared.
            topics.append((self._stale_filter, 1))
        client.subscribe(topics)
        with self.outbox.cond:
            self._resync = True
            self._connected.set()
            self.outbox.cond.notify_all()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        with self.outbox.cond:
            self._connected.clear()
            self.outbox.cond.notify_all()
        if not self._stopping:
            log.warning("MQTT: disconnected (%s); reconnecting in the background", reason_code)

    @property
    def _stale_filter(self) -> str:
        return f"{self._mqtt.discovery_prefix}/device/+/config"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        topic: str = message.topic
        if mqtt.topic_matches_sub(self._stale_filter, topic):
            with self._cameras_lock:
                current = list(self._cameras)
            removal = stale_device_removal(self._config, topic, bytes(message.payload), current)
            if removal:
                log.info(
                    "MQTT: removing the Home Assistant device of a camera no longer configured, and its "
                    "retained state: %s",
                    topic,
                )
                self._enqueue(removal)
            return
        if topic == self.topics.ha_status:
            if message.payload.strip() == ONLINE.encode():
                log.info("MQTT: Home Assistant came online; re-sending discovery and state")
                with self.outbox.cond:
                    self._resync = True
                    self.outbox.cond.notify_all()
            return
        self._enqueue(self._commands.handle(topic, bytes(message.payload)))

    def _publisher(self) -> None:
        next_expire = time.monotonic() + EXPIRE_INTERVAL_S
        while True:
            now = time.monotonic()
            if now >= next_expire:
                next_expire = now + EXPIRE_INTERVAL_S
                with self._tracker_lock:
                    ended = self._tracker.expire()
                self._enqueue(ended)
            with self.outbox.cond:
                if self._stopping:
                    return
                ready = self.connected and (self._resync or len(self.outbox) > 0)
                if not ready:
                    self.outbox.cond.wait(timeout=max(0.0, next_expire - time.monotonic()))
                    continue
                resync, self._resync = self._resync, False
                message = None if resync else self.outbox.pop()
            if resync:
                for item in self._resync_messages():
                    if not self._publish(item):
                        break  # disconnected again: the next CONNACK starts a new resync
            elif message is not None and not self._publish(message):
                with self.outbox.cond:
                    self.outbox.push_front(message)
                    # Wait for the reconnect instead of spinning.
                    self.outbox.cond.wait(timeout=0.2)

    def _publish(self, message: Message) -> bool:
        """Hand one message to paho; False when it could not be sent (the caller re-queues it).

        paho's own queue of unacknowledged QoS 1 messages is bounded too: when it is full while connected
        we wait for PUBACKs (backpressure on this thread only); the outbox in front absorbs and drops.
        """
        while True:
            client = self._client
            if client is None or self._stopping:
                return False
            try:
                info = client.publish(
                    message.topic, message.payload_bytes, qos=message.qos, retain=message.retain
                )
            except (ValueError, OSError) as exc:
                log.warning("MQTT: publish to %s failed: %s", message.topic, exc)
                return True
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                return True
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                # QoS 1 stays in paho's queue and goes out after the reconnect; QoS 0 is re-queued here.
                return bool(message.qos > 0)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                if not self.connected:
                    return False
                time.sleep(BACKPRESSURE_WAIT_S)
                continue
            log.warning("MQTT: publish to %s failed: rc=%s", message.topic, info.rc)
            return True
