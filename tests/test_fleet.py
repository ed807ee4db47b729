"""One composition root: every camera is built, wired and removed by the fleet, the same way
whether it comes from the config file or is added in the web UI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from livekit import SecretDetector

from deid_sidecar.config import Config, parse_config
from deid_sidecar.core.detections import Label
from deid_sidecar.detect.base import DetectionRefused
from deid_sidecar.detect.detector import MultiDetector
from deid_sidecar.detect.service import DetectionClient
from deid_sidecar.engine.fleet import CameraExists, CameraFleet
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.web.server import build_app
from deid_sidecar.web.state import STATE_KEY


class RecordingWiring:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.added: list[str] = []
        self.removed: list[str] = []

    def camera_added(self, pipeline: CameraPipeline) -> None:
        self.added.append(pipeline.name)
        if self.fail:
            raise RuntimeError("broken wiring")

    async def camera_removed(self, pipeline: CameraPipeline) -> None:
        self.removed.append(pipeline.name)
        if self.fail:
            raise RuntimeError("broken wiring")


def camera_config(clip: Path, *names: str) -> Config:
    camera = {"source": f"file:{clip}", "loop": True, "protect": ["face"], "output": {"fps": 5}}
    return parse_config({"cameras": {name: camera for name in names}})


def test_a_wiring_is_told_of_the_configured_cameras_and_of_each_one_added_or_removed(clip: Path) -> None:
    config = camera_config(clip, "door", "yard")
    fleet = CameraFleet(config, detector_factory=lambda c, labels: SecretDetector())
    fleet.build(name="door", camera=config.cameras["door"])
    first, broken, last = RecordingWiring(), RecordingWiring(fail=True), RecordingWiring()
    for wiring in (first, broken, last):
        fleet.wire(wiring)
    assert first.added == ["door"]

    async def scenario() -> None:
        pipeline = await fleet.add("yard", config.cameras["yard"], raw_source="file:x", by="admin")
        assert pipeline.settings.values.raw_source == "file:x"  # saved as typed
        assert fleet.hubs[pipeline.output] is pipeline.hub and fleet.added == {"yard"}
        with pytest.raises(CameraExists):
            await fleet.add("yard", config.cameras["yard"], raw_source="file:x", by="admin")
        await fleet.remove("yard")
        assert pipeline.stats.snapshot()["state"] == "stopped"

    asyncio.run(scenario())
    # A wiring that fails neither stops the camera nor leaves the wirings after it unwired.
    assert first.added == last.added == ["door", "yard"]
    assert first.removed == last.removed == ["yard"]
    assert "yard" not in fleet.pipelines and fleet.added == set()


def test_an_added_camera_gets_its_detector_and_one_that_fails_to_load_stays_masked_whole(clip: Path) -> None:
    config = camera_config(clip, "yard")

    def broken(config: Config, labels: set[Label]) -> SecretDetector:
        raise RuntimeError("model file damaged")

    async def scenario() -> None:
        fleet = CameraFleet(config, detector_factory=broken)
        pipeline = await fleet.add("yard", config.cameras["yard"], raw_source="file:x", by="admin")
        try:
            assert pipeline.processor.detector is None  # fail closed: every frame masked whole
        finally:
            await fleet.remove("yard")

    asyncio.run(scenario())


def test_uploads_get_the_file_modes_detector_and_cameras_the_live_one(models_dir: Path) -> None:
    face = {"model": "centerface", "threshold": 0.3, "event_threshold": 0.5, "input_width": 640,
            "file_input_width": 960}  # fmt: skip
    config = parse_config({"models_dir": str(models_dir), "detection": {"face": face}})
    app = build_app({}, "test-token-0123456789", None, config=config)
    state = app[STATE_KEY]
    upload = state.jobs.detector({Label.FACE})
    live = state.fleet.detector_for("door", {Label.FACE})
    assert isinstance(upload, MultiDetector) and isinstance(live, DetectionClient)
    assert upload.detectors[0].input_width == 960  # file_input_width, as `deid-sidecar file`
    # Cameras are clients of the one inference service, whose model runs at the live width.
    service = live.service
    assert service.detectors[Label.FACE].input_width == 640
    assert state.fleet.detector_for("yard", {Label.FACE}).service is service
    state.fleet.detectors.close()


def test_every_camera_shares_one_inference_service_and_a_removed_camera_is_let_go(
    models_dir: Path, clip: Path
) -> None:
    config = camera_config(clip, "door", "yard").model_copy(update={"models_dir": str(models_dir)})

    async def scenario() -> None:
        fleet = CameraFleet(config)
        door = await fleet.add("door", config.cameras["door"], raw_source="file:x", by="admin")
        yard = await fleet.add("yard", config.cameras["yard"], raw_source="file:y", by="admin")
        try:
            clients = [door.processor.detector, yard.processor.detector]
            assert all(isinstance(c, DetectionClient) for c in clients)
            assert clients[0].service is clients[1].service
            await fleet.remove("door")
            with pytest.raises(DetectionRefused, match="door: the camera stopped"):
                clients[0].detect(np.zeros((64, 64, 3), np.uint8))
            assert len(clients[1].detect(np.zeros((64, 64, 3), np.uint8))) == 0
        finally:
            await fleet.stop_all()

    asyncio.run(scenario())
