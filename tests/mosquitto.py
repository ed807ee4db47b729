"""A real Mosquitto broker on loopback for tests, plus a small recording subscriber.

`Broker` starts `mosquitto -c <tmp conf>` on 127.0.0.1 with a free port, waits until the port accepts,
and can be stopped and restarted on the same port. A missing mosquitto fails the tests that need it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

START_TIMEOUT_S = 10.0
WAIT_TIMEOUT_S = 10.0


def find_mosquitto() -> str | None:
    found = os.environ.get("MOSQUITTO") or shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if Path(candidate).is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Broker:
    def __init__(self, workdir: Path, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "log_dest stdout\nlog_type error\nlog_type warning\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=out, stderr=out)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not open its port")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None
        deadline = time.monotonic() + 5
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def running_broker(workdir: Path) -> Iterator[Broker]:
    binary = find_mosquitto()
    if binary is None:
        # Never skip: a missing broker would hide the MQTT tests. scripts/setup.sh installs it.
        pytest.fail("mosquitto is not installed: run scripts/setup.sh test (apt-get install mosquitto)")
    broker = Broker(workdir, binary)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class Recorder:
    """A subscriber that records every message (including retained ones) for assertions."""

    def __init__(self, port: int, topics: list[str], client_id: str = "test-recorder") -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._topics = topics
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_TIMEOUT_S), "recorder did not subscribe"

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        client.subscribe([(topic, 1) for topic in self._topics])

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(message.topic, bytes(message.payload), bool(message.retain)))
            self._cond.notify_all()

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(WAIT_TIMEOUT_S)

    def wait_for(
        self, predicate: Callable[[Received], bool], timeout: float = WAIT_TIMEOUT_S, start: int = 0
    ) -> Received:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.messages[start:]:
                    if predicate(item):
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = sorted({m.topic for m in self.messages})
                    raise AssertionError(f"no matching message within {timeout} s; topics seen: {seen}")
                self._cond.wait(remaining)

    def wait_topic(
        self, topic: str, payload: bytes | None = None, timeout: float = WAIT_TIMEOUT_S, start: int = 0
    ) -> Received:
        return self.wait_for(
            lambda m: m.topic == topic and (payload is None or m.payload == payload),
            timeout=timeout,
            start=start,
        )

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def on_topic(self, topic: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_now(port: int, topics: list[str], settle_s: float = 1.0) -> dict[str, bytes]:
    """What the broker keeps (retained, non-empty) on `topics`, as a new subscriber sees it."""
    late = Recorder(port, topics, client_id=f"late-{time.monotonic_ns()}")
    try:
        time.sleep(settle_s)
        return {m.topic: m.payload for m in late.messages if m.retain and m.payload}
    finally:
        late.close()
