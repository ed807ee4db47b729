"""`CameraControl` over the cameras' settings owners: what MQTT commands reach.

A command submits its change to the camera's `CameraSettings` (recorded as made by "mqtt"); the
camera's worker applies it between frames, and every observer (the web view, the MQTT state echo)
sees it. The privacy policy is enforced twice on purpose: `commands.py` refuses remote unmasking
unless the config allows it, and this adapter refuses it again, so a future caller that skips the
command table cannot turn masking off either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from deid_sidecar.config import Config, Method, Zone
from deid_sidecar.engine.settings import CameraSettings

log = logging.getLogger(__name__)

#: How changes made over MQTT are recorded by the settings owner.
CHANGED_BY_MQTT = "mqtt"


class SettingsControl:
    """Implements `events.commands.CameraControl` on a dict of camera name -> settings owner."""

    def __init__(self, settings: Mapping[str, CameraSettings], config: Config) -> None:
        self._settings = settings
        self._config = config

    def set_privacy(self, camera: str, on: bool) -> bool:
        owner = self._settings.get(camera)
        if owner is None:
            return False
        if not on and not self._config.mqtt.allow_remote_unmask:
            log.warning("%s: remote unmask refused (mqtt.allow_remote_unmask is false)", camera)
            return False
        owner.update(CHANGED_BY_MQTT, masking=on)
        return True

    def set_zones(self, camera: str, zones: list[Zone]) -> bool:
        owner = self._settings.get(camera)
        if owner is None:
            return False
        owner.update(CHANGED_BY_MQTT, zones=zones)
        return True

    def set_method(self, camera: str, method: Method) -> bool:
        owner = self._settings.get(camera)
        if owner is None:
            return False
        owner.update(CHANGED_BY_MQTT, method=method)  # the camera keeps its current zones
        return True

    def set_detection(self, camera: str, on: bool) -> bool:
        """Stores the wish. A camera stopped in the web UI stays masked whole: paused wins there."""
        owner = self._settings.get(camera)
        if owner is None:
            return False
        owner.update(CHANGED_BY_MQTT, detection=on)
        return True
