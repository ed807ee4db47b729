"""`deid-sidecar run` as a user runs it: a real process with a looping camera, a real Mosquitto,
and the go2rtc stand-in. The camera is registered in go2rtc, appears in Home Assistant through
MQTT discovery, publishes events, serves its anonymized stream, and stops cleanly on SIGTERM. A
camera added in the web UI is wired exactly like a configured one, and unwired when removed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from go2rtc_standin import Go2rtcStandin
from livekit import api_request, free_port, read_stream
from mosquitto import Recorder, running_broker

from deid_sidecar.demo import build_demo_clip

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


class StandinThread:
    """The go2rtc stand-in on its own event loop, so the sidecar process can talk to it."""

    def __init__(self) -> None:
        self.standin = Go2rtcStandin()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Go2rtcStandin:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.standin.start(), self.loop).result(10)
        return self.standin

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.standin.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def sidecar(tmp_path: Path, media_dir: Path, models_dir: Path) -> Iterator[dict[str, object]]:
    clip, _ = build_demo_clip(media_dir, tmp_path / "door.mp4", seconds=6)
    port = free_port()
    with running_broker(tmp_path) as broker, StandinThread() as standin:
        config = {
            "models_dir": str(models_dir),
            "server": {"host": "127.0.0.1", "port": port, "media_dirs": [str(tmp_path)]},
            "go2rtc": {
                "url": standin.url,
                "register_streams": True,
                "reconcile_s": 2,
                "remove_on_exit": True,
                "sidecar_url": f"http://127.0.0.1:{port}",
            },
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port, "update_interval_s": 0.5},
            "cameras": {"door": {"source": f"file:{clip}", "loop": True, "output": {"fps": 10}}},
        }
        config_file = tmp_path / "config.yml"
        config_file.write_text(yaml.safe_dump(config))
        recorder = Recorder(broker.port, ["deid/#", "homeassistant/#"])
        process = subprocess.Popen(
            [sys.executable, "-m", "deid_sidecar.cli", "run", "-c", str(config_file)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            yield {"process": process, "port": port, "standin": standin, "mqtt": recorder, "clip": clip}
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            recorder.close()


def test_run_registers_publishes_events_serves_and_stops_cleanly(sidecar: dict[str, object]) -> None:
    process: subprocess.Popen[str] = sidecar["process"]  # type: ignore[assignment]
    standin: Go2rtcStandin = sidecar["standin"]  # type: ignore[assignment]
    mqtt: Recorder = sidecar["mqtt"]  # type: ignore[assignment]
    port = sidecar["port"]

    # go2rtc: the anonymized stream is registered under its own name, pointing at the sidecar.
    wait_until(lambda: "door_anon" in standin.streams, what="registration in go2rtc")
    assert standin.streams["door_anon"] == [f"http://127.0.0.1:{port}/streams/door_anon.ts"]
    assert "PATCH" not in standin.methods

    # Home Assistant: the camera is a device with entities; availability online; events flow.
    discovery = json.loads(mqtt.wait_topic("homeassistant/device/deid_door/config", timeout=30).payload)
    assert discovery["dev"]["ids"] and discovery["cmps"]
    mqtt.wait_topic("deid/available", b"online")
    event = mqtt.wait_for(
        lambda m: m.topic == "deid/events" and json.loads(m.payload)["type"] == "new", timeout=40
    )
    after = json.loads(event.payload)["after"]
    assert after["camera"] == "door" and after["stream"] == "door_anon"
    assert after["label"] in {"face", "license_plate"}

    # The stream decodes at the configured rate.
    frames = read_stream(f"http://127.0.0.1:{port}/streams/door_anon.ts", seconds=3)
    assert len(frames) >= 20
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=5) as response:
        stats = json.load(response)["cameras"]["door"]
    assert stats["state"] == "online" and stats["encoder"] == "libx264"

    # SIGTERM: clean exit within a few seconds, registration removed (remove_on_exit), offline on MQTT.
    mark = mqtt.mark()
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0, process.stdout.read() if process.stdout else ""
    assert time.monotonic() - started < 10
    assert "door_anon" not in standin.streams
    mqtt.wait_topic("deid/available", b"offline", start=mark)


def test_camera_added_in_the_web_ui_is_registered_in_go2rtc_and_in_home_assistant(
    sidecar: dict[str, object],
) -> None:
    standin: Go2rtcStandin = sidecar["standin"]  # type: ignore[assignment]
    mqtt: Recorder = sidecar["mqtt"]  # type: ignore[assignment]
    port = sidecar["port"]
    wait_until(lambda: "door_anon" in standin.streams, what="the configured camera's registration")
    mqtt.wait_topic("homeassistant/device/deid_door/config", timeout=30)

    new = {"name": "yard", "source": f"file:{sidecar['clip']}", "loop": True, "protect": ["face"]}
    status, added = api_request(port, "POST", "/api/cameras", new)
    assert status == 201, added

    # go2rtc: registered under its own name, pointing at the sidecar, like the configured camera.
    wait_until(lambda: "yard_anon" in standin.streams, timeout=15, what="the added camera's registration")
    assert standin.streams["yard_anon"] == [f"http://127.0.0.1:{port}/streams/yard_anon.ts"]
    # Home Assistant: its own device with the entities of what it protects, and its command state.
    device = json.loads(mqtt.wait_topic("homeassistant/device/deid_yard/config", timeout=15).payload)
    assert "face_count" in device["cmps"] and "license_plate_count" not in device["cmps"]
    assert mqtt.wait_topic("deid/yard/method/state", timeout=15).payload == b"blur"

    # A command from Home Assistant reaches the added camera, and shows in the API.
    mqtt.publish("deid/yard/method/set", "fill")
    wait_until(lambda: api_request(port, "GET", "/api/cameras/yard")[1]["method"] == "fill", timeout=15,
               what="the MQTT command in the API")  # fmt: skip
    mqtt.wait_topic("deid/yard/method/state", b"fill", timeout=15)

    # Removed: gone from go2rtc, its Home Assistant device deleted (empty retained config).
    mark = mqtt.mark()
    assert api_request(port, "DELETE", "/api/cameras/yard")[0] == 200
    wait_until(lambda: "yard_anon" not in standin.streams, timeout=15, what="the removal from go2rtc")
    mqtt.wait_topic("homeassistant/device/deid_yard/config", b"", timeout=15, start=mark)
    assert "door_anon" in standin.streams  # the configured camera is untouched
