"""The one owner of a camera's runtime settings.

The web API and MQTT commands submit changes here (`CameraSettings.update`); the camera's worker
thread reads the current values between frames and applies them on its own thread (it compares
`version`); the web view, the MQTT `.../state` echo and the config save read from here. So a change
made on one side shows on every side, and no other thread writes the frame processor.

Pure: no web or MQTT imports. Privacy policy (who may mask less) stays with the callers; this only
records who changed what. One rule lives here because it is a property of the values: paused wins
(`effective_detection`), so a stopped camera masks every frame whole whatever detection is set to.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deid_sidecar.config import CameraConfig, Config, Method, Zone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettingsValues:
    """One consistent set of a camera's runtime settings (immutable: share it freely)."""

    method: Method
    protect: tuple[str, ...]
    zones: tuple[Zone, ...] = ()
    invert_zones: bool = False
    detection: bool = True  # the wish; see effective_detection
    masking: bool = True  # privacy on; off only where the config allows remote unmasking
    paused: bool = False  # stopped in the web UI (the privacy shutter)
    fps: float = 15.0
    height: int | None = None
    raw_source: str | None = None  # cameras added at runtime: the source as typed (${ENV} kept)

    @property
    def effective_detection(self) -> bool:
        """Paused wins: while stopped no detection runs and every frame is masked whole."""
        return self.detection and not self.paused

    @classmethod
    def from_camera(cls, camera: CameraConfig, config: Config) -> SettingsValues:
        return cls(
            method=camera.method or config.anonymize.method,
            protect=tuple(camera.protect),
            zones=tuple(camera.zones),
            invert_zones=camera.invert_zones,
            fps=camera.output.fps,
            height=camera.output.height,
        )


FIELDS = frozenset(field.name for field in dataclasses.fields(SettingsValues))


@dataclass(frozen=True)
class SettingsChange:
    """What observers are told: who changed which fields, and the values now in force."""

    camera: str
    by: str
    changed: frozenset[str]
    values: SettingsValues
    version: int


SettingsObserver = Callable[[SettingsChange], None]


class StaleSettings(Exception):
    """`update(if_version=...)` found the settings changed since the caller read (and checked) them."""


class CameraSettings:
    """Thread-safe owner of one camera's `SettingsValues`, with a version and change observers."""

    def __init__(self, camera: str, values: SettingsValues) -> None:
        self.camera = camera
        self._lock = threading.Lock()
        self._values = values
        self._version = 0
        self._observers: list[SettingsObserver] = []

    @classmethod
    def from_camera(cls, name: str, camera: CameraConfig, config: Config) -> CameraSettings:
        return cls(name, SettingsValues.from_camera(camera, config))

    @property
    def values(self) -> SettingsValues:
        with self._lock:
            return self._values

    def snapshot(self) -> tuple[int, SettingsValues]:
        """The version and the values that belong to it, read together."""
        with self._lock:
            return self._version, self._values

    @property
    def version(self) -> int:
        with self._lock:
            return self._version

    def subscribe(self, observer: SettingsObserver) -> None:
        with self._lock:
            self._observers.append(observer)

    def unsubscribe(self, observer: SettingsObserver) -> None:
        with self._lock:
            if observer in self._observers:
                self._observers.remove(observer)

    def update(self, by: str, *, if_version: int | None = None, **changes: Any) -> int:
        """Submit changes (field=value) and return the version now in force. `by` names who asked.

        With `if_version`, the change is made only if nothing changed since that version (else
        StaleSettings): a caller that checked a change against the values it read (masks less?)
        cannot have it land on values it never checked.
        """
        unknown = set(changes) - FIELDS
        if unknown:
            raise TypeError(f"unknown camera settings: {', '.join(sorted(unknown))}")
        changes = {key: _frozen(value) for key, value in changes.items()}
        with self._lock:
            if if_version is not None and if_version != self._version:
                raise StaleSettings(f"{self.camera}: the settings changed meanwhile")
            old = self._values
            changed = frozenset(key for key, value in changes.items() if getattr(old, key) != value)
            if not changed:
                return self._version
            self._values = dataclasses.replace(old, **{key: changes[key] for key in changed})
            self._version += 1
            change = SettingsChange(self.camera, by, changed, self._values, self._version)
            observers = list(self._observers)
        log.info("%s: settings changed by %s: %s", self.camera, by, _describe(change))
        for observer in observers:  # outside the lock: an observer may read the settings again
            try:
                observer(change)
            except Exception:  # one broken observer must not fail the change or the others
                log.exception("%s: a settings observer failed", self.camera)
        return change.version


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _describe(change: SettingsChange) -> str:
    parts = []
    for key in sorted(change.changed):
        value = getattr(change.values, key)
        if key == "raw_source":
            value = "(set)"  # a source as typed may carry a query token: not for the log
        elif isinstance(value, Method):
            value = value.value
        elif key == "zones":
            value = [zone.name for zone in value]
        parts.append(f"{key}={value}")
    return ", ".join(parts)
