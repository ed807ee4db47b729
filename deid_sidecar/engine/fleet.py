"""The cameras of one process, built and wired in one place.

Every camera, whether it comes from the config file at start-up or is added in the web UI, is built
the same way here: its settings owner, its pipeline (publishing at once, masked whole), its observer,
a detector for the live mode, and the same wirings (go2rtc registration, MQTT, push). A wiring is told
of every camera that runs and of every one that is removed, so nothing is wired for some cameras only.

The fleet is used from the event loop; everything blocking (building, starting, stopping a pipeline,
loading models) runs in the executor.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from deid_sidecar.config import CameraConfig, Config, enabled_cameras
from deid_sidecar.core.detections import Label
from deid_sidecar.detect.base import Detector, DetectorFactory
from deid_sidecar.detect.factories import CameraDetectors, DetectorPerCamera, SharedDetection
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.engine.observer import FrameObserver
from deid_sidecar.engine.settings import CameraSettings
from deid_sidecar.outputs.http_ts import StreamHub

log = logging.getLogger(__name__)


class CameraExists(Exception):
    """A camera of that name runs already, or is being added."""


class CameraWiring(Protocol):
    """Something every running camera is connected to: go2rtc registration, MQTT, push."""

    def camera_added(self, pipeline: CameraPipeline) -> None:
        """The camera runs (called on the event loop; must not block)."""

    async def camera_removed(self, pipeline: CameraPipeline) -> None:
        """The camera was removed: undo what `camera_added` did."""


class CameraFleet:
    def __init__(
        self,
        config: Config,
        observer: FrameObserver | None = None,
        detector_factory: DetectorFactory | None = None,
    ) -> None:
        """`detector_factory`: each camera its own detector from it (tests); by default the cameras
        share one inference service, so N cameras do not run N models at once on the same cores."""
        self.config = config
        self.observer = observer
        self.detectors: CameraDetectors = (
            SharedDetection(config)
            if detector_factory is None
            else DetectorPerCamera(config, detector_factory)
        )
        self.pipelines: dict[str, CameraPipeline] = {}
        self.hubs: dict[str, StreamHub] = {}  # output stream name -> hub (the HTTP routes read it)
        self.added: set[str] = set()  # cameras added at runtime (removable; not in the config file)
        self._wirings: list[CameraWiring] = []
        self._adding: set[str] = set()  # names taken by an add still in flight

    @classmethod
    def of(
        cls, pipelines: dict[str, CameraPipeline], config: Config, factory: DetectorFactory | None
    ) -> CameraFleet:
        """A fleet around pipelines built elsewhere (tests, and web apps served on their own)."""
        fleet = cls(config, detector_factory=factory)
        for pipeline in pipelines.values():
            fleet._keep(pipeline)
        return fleet

    def build(self, name: str, camera: CameraConfig) -> CameraPipeline:
        """The camera's settings owner and pipeline (blocking: opens nothing, but allocates)."""
        settings = CameraSettings.from_camera(name, camera, self.config)
        pipeline = CameraPipeline(name, camera, self.config, observer=self.observer, settings=settings)
        self._keep(pipeline)
        return pipeline

    def build_configured(self) -> None:
        """The config file's enabled cameras (at start-up, before anything runs)."""
        for name, camera in enabled_cameras(self.config).items():
            self.build(name, camera)

    def _keep(self, pipeline: CameraPipeline) -> None:
        self.pipelines[pipeline.name] = pipeline
        self.hubs[pipeline.output] = pipeline.hub

    def wire(self, wiring: CameraWiring) -> None:
        """Connect `wiring` to every camera there is and every one added later."""
        self._wirings.append(wiring)
        for pipeline in self.pipelines.values():
            _tell(wiring, pipeline)

    # --- start-up ------------------------------------------------------------------------------

    def start_all(self) -> None:
        for pipeline in self.pipelines.values():
            pipeline.start()

    def load_detectors(self) -> None:
        """Blocking (executor): each camera gets its detector; one that fails stays masked whole."""
        for pipeline in list(self.pipelines.values()):
            self._load_detector(pipeline)

    def detector_for(self, name: str, labels: set[Label]) -> Detector:
        """Blocking (executor): a detector for camera `name` (loads the models it is the first to need)."""
        return self.detectors.for_camera(name, labels)

    def replace_detector(self, pipeline: CameraPipeline, detector: Detector) -> None:
        old = pipeline.processor.detector
        pipeline.set_detector(detector)
        if old is not detector:
            self.detectors.release(old)

    def _load_detector(self, pipeline: CameraPipeline) -> None:
        labels = {Label.parse(kind) for kind in pipeline.settings.values.protect}
        try:
            self.replace_detector(pipeline, self.detector_for(pipeline.name, labels))
        except Exception:  # the camera stays fail-closed (whole frames masked), and says why
            log.exception("%s: detector could not be loaded; every frame stays masked whole", pipeline.name)
            return
        log.info("%s: detector ready (%s)", pipeline.name, ", ".join(sorted(label.key for label in labels)))

    # --- at runtime (web UI) -------------------------------------------------------------------

    async def add(self, name: str, camera: CameraConfig, *, raw_source: str, by: str) -> CameraPipeline:
        """Build, start and wire a camera; it masks whole frames until its detector is loaded."""
        if name in self.pipelines or name in self._adding:
            raise CameraExists(name)
        self._adding.add(name)
        loop = asyncio.get_running_loop()
        try:
            pipeline = await loop.run_in_executor(None, self.build, name, camera)
        finally:
            self._adding.discard(name)
        pipeline.settings.update(by, raw_source=raw_source)  # saved as typed (the config's `source:`)
        self.added.add(name)
        await loop.run_in_executor(None, pipeline.start)
        self._tell_added(pipeline)
        await loop.run_in_executor(None, self._load_detector, pipeline)
        return pipeline

    async def remove(self, name: str) -> None:
        """Unwire and stop a camera added at runtime."""
        pipeline = self.pipelines.pop(name)
        self.hubs.pop(pipeline.output, None)
        self.added.discard(name)
        for wiring in self._wirings:
            try:
                await wiring.camera_removed(pipeline)
            except Exception:  # the camera goes anyway; what could not be undone is logged
                log.exception("%s: unwiring %s failed", name, type(wiring).__name__)
        await asyncio.get_running_loop().run_in_executor(None, pipeline.stop)
        self.detectors.release(pipeline.processor.detector)

    def _tell_added(self, pipeline: CameraPipeline) -> None:
        for wiring in self._wirings:
            _tell(wiring, pipeline)

    async def stop_all(self) -> None:
        loop = asyncio.get_running_loop()
        names = list(self.pipelines)
        stops = [loop.run_in_executor(None, self.pipelines[name].stop) for name in names]
        for name, result in zip(names, await asyncio.gather(*stops, return_exceptions=True), strict=True):
            if isinstance(result, Exception):
                log.error("%s: stopping failed: %s", name, result)
        self.detectors.close()  # after the cameras: none of them is left waiting on it


def _tell(wiring: CameraWiring, pipeline: CameraPipeline) -> None:
    try:
        wiring.camera_added(pipeline)
    except Exception:  # one wiring failing must not leave the others unwired
        log.exception("%s: wiring %s failed", pipeline.name, type(wiring).__name__)
