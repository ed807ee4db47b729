"""One owner per camera: a change made over MQTT or the web API shows on every side (the web view,
the MQTT `.../state` echo, the saved config), and the web UI's Stop wins over MQTT's detection ON."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mosquitto import Broker, Recorder, running_broker
from webkit import AUTH, applied, make_app, run, serve

from deid_sidecar.config import Config, Method, parse_config
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.engine.settings import CameraSettings, SettingsChange, SettingsValues, StaleSettings
from deid_sidecar.events.commands import CommandHandler
from deid_sidecar.events.control import SettingsControl
from deid_sidecar.events.mqtt import MqttEvents
from deid_sidecar.events.topics import Message


def cam_config(clip: Path, **mqtt: Any) -> Config:
    """The config the `pipeline` fixture's camera `cam` would come from, with MQTT on."""
    return parse_config(
        {
            "mqtt": {"enabled": True, **mqtt},
            "cameras": {"cam": {"source": f"file:{clip}", "loop": True, "output": {"fps": 10}}},
        }
    )


def mqtt_handler(pipeline: CameraPipeline, config: Config) -> tuple[CommandHandler, list[Message]]:
    """MQTT's command handler on the camera's owner, and the `.../state` messages its observer echoes."""
    owners = {"cam": pipeline.settings}
    handler = CommandHandler(config, owners, SettingsControl(owners, config))
    echoed: list[Message] = []
    pipeline.settings.subscribe(lambda change: echoed.extend(handler.state_changed(change)))
    return handler, echoed


# --- the owner itself ---------------------------------------------------------------------------------


def test_the_owner_versions_changes_tells_observers_and_refuses_stale_updates() -> None:
    owner = CameraSettings("cam", SettingsValues(method=Method.BLUR, protect=("face",)))
    seen: list[SettingsChange] = []
    owner.subscribe(seen.append)
    version = owner.update("web:admin", method=Method.FILL, fps=5.0)
    assert version == owner.version == 1
    assert owner.update("mqtt", method=Method.FILL) == 1  # no change: no new version, no observer call
    assert [(c.by, c.changed, c.values.method) for c in seen] == [
        ("web:admin", frozenset({"method", "fps"}), Method.FILL)
    ]
    with pytest.raises(StaleSettings):
        owner.update("web:viewer", if_version=0, method=Method.BLUR)
    with pytest.raises(TypeError, match="colour"):
        owner.update("web:admin", colour="red")
    assert owner.values.method is Method.FILL and owner.version == 1


def test_paused_wins_over_detection() -> None:
    values = SettingsValues(method=Method.BLUR, protect=("face",), detection=True, paused=True)
    assert values.effective_detection is False


# --- across web and MQTT --------------------------------------------------------------------------------


def test_an_mqtt_method_change_shows_in_the_web_api(pipeline: CameraPipeline, clip: Path) -> None:
    handler, _ = mqtt_handler(pipeline, cam_config(clip))

    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            handler.handle("deid/cam/method/set", b"fill")
            camera = await (await client.get("/api/cameras/cam", headers=AUTH)).json()
            assert camera["method"] == "fill"
            await applied(pipeline)
            assert pipeline.processor.anonymizer.method is Method.FILL

    run(body)


def test_a_web_api_change_is_echoed_on_mqtt(pipeline: CameraPipeline, clip: Path) -> None:
    _, echoed = mqtt_handler(pipeline, cam_config(clip))

    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            reply = await client.patch("/api/cameras/cam", json={"method": "fill", "fps": 5}, headers=AUTH)
            assert reply.status == 200

    run(body)
    assert [(m.topic, m.payload, m.retain) for m in echoed] == [("deid/cam/method/state", "fill", True)]


def test_the_config_save_writes_a_change_made_over_mqtt(
    pipeline: CameraPipeline, clip: Path, tmp_path: Path
) -> None:
    config = cam_config(clip)
    config_file = tmp_path / "deid.yaml"
    config_file.write_text(yaml.safe_dump({"cameras": {"cam": {"source": f"file:{clip}", "loop": True}}}))
    handler, _ = mqtt_handler(pipeline, config)
    handler.handle("deid/cam/method/set", b"pixelate")
    door = b'[{"name": "door", "points": [[0, 0], [0.5, 0], [0.5, 0.5]]}]'
    handler.handle("deid/cam/zones/set", door)

    async def body() -> None:
        async with serve(make_app({"cam": pipeline}, config=config, config_path=config_file)) as client:
            saved = await client.post("/api/config/save", headers=AUTH)
            assert saved.status == 200, await saved.text()

    run(body)
    written = yaml.safe_load(config_file.read_text())["cameras"]["cam"]
    assert written["method"] == "pixelate"
    assert [zone["name"] for zone in written["zones"]] == ["door"]


def test_mqtt_detection_on_during_the_web_uis_stop_keeps_the_camera_masked_whole(
    pipeline: CameraPipeline, clip: Path
) -> None:
    handler, echoed = mqtt_handler(pipeline, cam_config(clip))

    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            await client.patch("/api/cameras/cam", json={"detection": False}, headers=AUTH)
            await client.post("/api/cameras/cam/stop", headers=AUTH)
            handler.handle("deid/cam/detection/set", b"ON")  # Home Assistant, during the Stop
            camera = await (await client.get("/api/cameras/cam", headers=AUTH)).json()
            assert camera["paused"] is True and camera["detection"] is True  # the wish is stored
            await applied(pipeline)
            await asyncio.sleep(0.5)  # frames go on: every one masked whole
            assert pipeline.paused and pipeline.processor.detection_enabled is False
            started = await (await client.post("/api/cameras/cam/start", headers=AUTH)).json()
            assert started["paused"] is False
            await applied(pipeline)
            assert pipeline.processor.detection_enabled is True  # the admin lifted the shutter

    run(body)
    assert ("deid/cam/detection/state", "ON") in [(m.topic, m.payload) for m in echoed]


# --- over a real broker -----------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with running_broker(tmp_path) as running:
        yield running


def test_home_assistant_and_the_web_ui_see_each_others_changes(
    pipeline: CameraPipeline, clip: Path, broker: Broker
) -> None:
    config = cam_config(clip, host="127.0.0.1", port=broker.port, client_id=f"deid-owner-{os.getpid()}")
    owners = {"cam": pipeline.settings}
    events = MqttEvents(config, owners)
    events.set_control(SettingsControl(owners, config))
    recorder = Recorder(broker.port, ["deid/#"])
    events.start()
    try:
        recorder.wait_topic("deid/cam/method/state", b"blur")

        async def body() -> None:
            async with serve(make_app({"cam": pipeline})) as client:
                recorder.publish("deid/cam/method/set", "fill")  # from Home Assistant

                async def method_shown() -> str:
                    return str((await (await client.get("/api/cameras/cam", headers=AUTH)).json())["method"])

                for _ in range(100):
                    if await method_shown() == "fill":
                        break
                    await asyncio.sleep(0.05)
                assert await method_shown() == "fill"
                mark = recorder.mark()
                await client.patch("/api/cameras/cam", json={"method": "pixelate"}, headers=AUTH)
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: recorder.wait_topic("deid/cam/method/state", b"pixelate", start=mark)
                )

        run(body)
    finally:
        events.stop()
        recorder.close()
