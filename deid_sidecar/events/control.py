"""`CameraControl` over the running camera pipelines: what MQTT commands reach.

The privacy policy is enforced twice on purpose: `commands.py` refuses remote unmasking unless the config
allows it, and this adapter refuses it again, so a future caller that skips the command table cannot
turn masking off either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from deid_sidecar.config import Config, Method, Zone

log = logging.getLogger(__name__)


class Pipeline(Protocol):
    """The part of `engine.live.CameraPipeline` this adapter uses."""

    paused: bool  # stopped in the web UI (the privacy shutter): every frame masked whole

    def set_method(self, method: Method) -> None: ...

    def set_zones(self, zones: list[Zone], invert: bool | None = None) -> None: ...

    def set_detection(self, enabled: bool) -> None: ...

    def set_masking(self, enabled: bool) -> None: ...


class PipelineControl:
    """Implements `events.commands.CameraControl` on a dict of camera name -> pipeline."""

    def __init__(self, pipelines: Mapping[str, Pipeline], config: Config) -> None:
        self._pipelines = pipelines
        self._config = config

    def set_privacy(self, camera: str, on: bool) -> bool:
        pipeline = self._pipelines.get(camera)
        if pipeline is None:
            return False
        if not on and not self._config.mqtt.allow_remote_unmask:
            log.warning("%s: remote unmask refused (mqtt.allow_remote_unmask is false)", camera)
            return False
        pipeline.set_masking(on)
        return True

    def set_zones(self, camera: str, zones: list[Zone]) -> bool:
        pipeline = self._pipelines.get(camera)
        if pipeline is None:
            return False
        pipeline.set_zones(list(zones))
        return True

    def set_method(self, camera: str, method: Method) -> bool:
        pipeline = self._pipelines.get(camera)
        if pipeline is None:
            return False
        pipeline.set_method(method)  # the pipeline keeps its current zones
        return True

    def set_detection(self, camera: str, on: bool) -> bool:
        pipeline = self._pipelines.get(camera)
        if pipeline is None:
            return False
        if pipeline.paused and on:
            # The shutter wins: detection back on would show the picture the UI's Stop hides.
            log.warning("%s: detection/set ON refused: the camera is stopped in the web UI", camera)
            return False
        pipeline.set_detection(on)
        return True
