"""Remote commands (`<prefix>/<cam>/<name>/set`): ONE table gives subscriptions, parsing, policy, echo.

Pure: no paho. The values come from each camera's settings owner (`engine.settings.CameraSettings`),
which the web API changes too: `CommandHandler.handle(topic, payload)` submits an accepted change
through the `CameraControl`, and the `.../state` echo of every change, whichever side made it, comes
from `state_changed` (the owner's observer). `handle` returns only the re-published state of a refused
command; it never raises, so a bad payload cannot take down the MQTT network thread.

Privacy policy lives here, not in the control: a command that would show more of the picture
(privacy OFF, or a zone change that shrinks the always-masked area) is refused unless
`mqtt.allow_remote_unmask` is set; the refusal re-publishes the state that stays in force.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ValidationError

from deid_sidecar.config import Config, Method, Zone, format_validation_error
from deid_sidecar.engine.settings import CameraSettings, SettingsChange, SettingsValues
from deid_sidecar.events.topics import Message, Topics, retained

log = logging.getLogger(__name__)

#: Larger command payloads are refused before parsing.
MAX_COMMAND_BYTES = 64 * 1024

T = TypeVar("T")


class CameraControl(Protocol):
    """What the app lets remote commands change. Each returns True when the change was applied."""

    def set_privacy(self, camera: str, on: bool) -> bool: ...

    def set_zones(self, camera: str, zones: list[Zone]) -> bool: ...

    def set_method(self, camera: str, method: Method) -> bool: ...

    def set_detection(self, camera: str, on: bool) -> bool: ...


class CommandError(ValueError):
    """A command payload that cannot be used; the message says why, without echoing secrets."""


def parse_switch(payload: str) -> bool:
    value = payload.strip().upper()
    if value == "ON":
        return True
    if value == "OFF":
        return False
    raise CommandError(f"expected ON or OFF, got {_preview(payload)}")


def render_switch(value: bool) -> str:
    return "ON" if value else "OFF"


def parse_zones(payload: str) -> list[Zone]:
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise CommandError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(data, list):
        raise CommandError('expected a JSON list of zones: [{"name": ..., "points": [[x, y], ...]}, ...]')
    zones = []
    for index, item in enumerate(data):
        try:
            zones.append(Zone.model_validate(item))
        except ValidationError as exc:
            raise CommandError(f"zone {index}: {format_validation_error(exc)}") from None
    names = [zone.name for zone in zones]
    if len(set(names)) != len(names):
        raise CommandError("zone names must be unique")
    return zones


def render_zones(zones: list[Zone]) -> str:
    return json.dumps([zone.model_dump(mode="json") for zone in zones], separators=(",", ":"))


def parse_method(payload: str) -> Method:
    value = payload.strip().lower()
    try:
        return Method(value)
    except ValueError:
        known = ", ".join(m.value for m in Method)
        raise CommandError(f"unknown method {_preview(payload)} (known: {known})") from None


def render_method(method: Method) -> str:
    return method.value


@dataclass(frozen=True)
class CommandSpec(Generic[T]):
    """One row of the command table."""

    name: str
    parse: Callable[[str], T]
    render: Callable[[T], str]
    apply: Callable[[CameraControl, str, T], bool]
    #: (config, the camera's values now, requested value) -> refusal reason, or None when allowed.
    guard: Callable[[Config, SettingsValues, T], str | None]
    #: The value this command's `.../state` reports, read from the camera's settings.
    current: Callable[[SettingsValues], T]
    #: The settings fields whose change this command's `.../state` reports.
    fields: frozenset[str]


def _always(config: Config, values: SettingsValues, new: Any) -> str | None:
    return None


def _privacy_guard(config: Config, values: SettingsValues, new: bool) -> str | None:
    if not new and not config.mqtt.allow_remote_unmask:
        return "turning privacy masking OFF remotely is disabled (mqtt.allow_remote_unmask is false)"
    return None


def _zones_guard(config: Config, values: SettingsValues, new: list[Zone]) -> str | None:
    """Without allow_remote_unmask a zone change may only grow the always-masked area."""
    if config.mqtt.allow_remote_unmask:
        return None
    current = list(values.zones)
    if values.invert_zones:
        # Everything OUTSIDE the zones is masked: dropping zones is safe, adding or emptying is not.
        if new and all(zone in current for zone in new):
            return None
    elif all(zone in new for zone in current):
        return None
    return "this zone change would mask less of the picture; it needs mqtt.allow_remote_unmask"


COMMANDS: tuple[CommandSpec[Any], ...] = (
    CommandSpec[bool](
        name="privacy",
        parse=parse_switch,
        render=render_switch,
        apply=lambda control, camera, on: control.set_privacy(camera, on),
        guard=_privacy_guard,
        current=lambda values: values.masking,
        fields=frozenset({"masking"}),
    ),
    CommandSpec[list[Zone]](
        name="zones",
        parse=parse_zones,
        render=render_zones,
        apply=lambda control, camera, zones: control.set_zones(camera, zones),
        guard=_zones_guard,
        current=lambda values: list(values.zones),
        fields=frozenset({"zones"}),
    ),
    CommandSpec[Method](
        name="method",
        parse=parse_method,
        render=render_method,
        apply=lambda control, camera, method: control.set_method(camera, method),
        guard=_always,
        current=lambda values: values.method,
        fields=frozenset({"method"}),
    ),
    CommandSpec[bool](
        # OFF makes the camera mask the whole frame (fail closed). The state is the stored wish: a
        # camera stopped in the web UI stays masked whole whatever it says (paused wins).
        name="detection",
        parse=parse_switch,
        render=render_switch,
        apply=lambda control, camera, on: control.set_detection(camera, on),
        guard=_always,
        current=lambda values: values.detection,
        fields=frozenset({"detection"}),
    ),
)
COMMANDS_BY_NAME: dict[str, CommandSpec[Any]] = {spec.name: spec for spec in COMMANDS}


def subscriptions(topics: Topics) -> list[str]:
    return [topics.command_filter(spec.name) for spec in COMMANDS]


class CommandHandler:
    """Checks commands, submits them through a `CameraControl`, and renders the cameras' state.

    It keeps no state of its own: `settings` (camera name -> owner) is where current values are read.
    """

    def __init__(
        self, config: Config, settings: Mapping[str, CameraSettings], control: CameraControl | None = None
    ) -> None:
        self._config = config
        self._topics = Topics(config.mqtt.prefix, config.mqtt.discovery_prefix)
        self._settings = settings
        self.control = control

    def _cameras(self) -> list[str]:
        """Cameras commands may reach: those with a settings owner (configured or added at runtime)."""
        return list(self._settings)  # a copy: cameras may be added from the event loop meanwhile

    def state_messages(
        self, camera: str, values: SettingsValues, specs: tuple[CommandSpec[Any], ...] = COMMANDS
    ) -> list[Message]:
        return [
            retained(self._topics.state(camera, spec.name), spec.render(spec.current(values)))
            for spec in specs
        ]

    def initial_messages(self) -> list[Message]:
        """Retained `.../state` of every command on every camera (published at start and on reconnect)."""
        return [
            message
            for camera in self._cameras()
            if (owner := self._settings.get(camera)) is not None
            for message in self.state_messages(camera, owner.values)
        ]

    def state_changed(self, change: SettingsChange) -> list[Message]:
        """The owner's observer: the new `.../state` of the commands whose fields changed."""
        if change.camera not in self._settings:
            return []  # a camera removed meanwhile
        specs = tuple(spec for spec in COMMANDS if spec.fields & change.changed)
        return self.state_messages(change.camera, change.values, specs)

    def handle(self, topic: str, payload: bytes) -> list[Message]:
        parsed = self._topics.parse_command(topic)
        if parsed is None:
            return []
        camera, name = parsed
        spec = COMMANDS_BY_NAME.get(name)
        if spec is None:
            log.warning("MQTT command %s: unknown command %r", topic, name)
            return []
        if camera not in self._cameras():
            log.warning("MQTT command %s: unknown camera %r", topic, camera)
            return []
        try:
            return self._handle(spec, camera, payload)
        except CommandError as exc:
            log.error("MQTT command %s refused: %s", topic, exc)
        except Exception:
            # The control belongs to the app; a bug there must not kill the MQTT network thread.
            log.exception("MQTT command %s failed", topic)
        return []

    def _handle(self, spec: CommandSpec[Any], camera: str, payload: bytes) -> list[Message]:
        if len(payload) > MAX_COMMAND_BYTES:
            raise CommandError(f"payload too large ({len(payload)} bytes, at most {MAX_COMMAND_BYTES})")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise CommandError("payload is not UTF-8 text") from None
        value = spec.parse(text)
        owner = self._settings.get(camera)
        if owner is None:
            raise CommandError(f"camera {camera!r} was removed")
        version_before = owner.version
        reason = spec.guard(self._config, owner.values, value)
        if reason is None and self.control is None:
            reason = "no camera control is available yet"
        if reason is None and not spec.apply(self.control, camera, value):  # type: ignore[arg-type]
            reason = "the camera did not accept it"
        if reason is not None:
            log.warning("MQTT command %s for camera %s refused: %s", spec.name, camera, reason)
            # Re-publish the state that stays in force so HA's switch/select snaps back.
            return self.state_messages(camera, owner.values, (spec,))
        log.info("MQTT command %s for camera %s applied: %s", spec.name, camera, _preview(spec.render(value)))
        if owner.version == version_before:  # nothing changed, so no observer echoes: confirm the state
            return self.state_messages(camera, owner.values, (spec,))
        return []  # the owner told its observers; `state_changed` echoes the new state


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
