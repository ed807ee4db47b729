"""A real Home Assistant for tests: started from `.venv-ha` (scripts/setup-ha.sh), onboarded through its
REST API, with the MQTT integration added through the config-flow API, and read back through its own
REST and websocket APIs (states, device and entity registries) and its log.

Nothing here imports Home Assistant: it runs in its own venv (another Python), as a user runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPO = Path(__file__).resolve().parents[1]
HA_VENV = REPO / ".venv-ha"
SETUP_STEP = "scripts/setup-ha.sh"
#: Set to 1 to skip the Home Assistant tests explicitly (they fail, naming the set-up step, otherwise).
SKIP_ENV = "DEID_SKIP_HA"
START_TIMEOUT_S = 180.0
HTTP_TIMEOUT_S = 30.0
USERNAME = "deid-test"
PASSWORD = "deid-test-password-4921"

#: Log lines that are Home Assistant's, not ours, on a machine without these optional libraries.
_UNRELATED = re.compile(r"libturbojpeg|turbojpeg|zlib_ng and isal|TurboJPEG")
_RECORD = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ (?P<level>[A-Z]+) \((?P<thread>[^)]*)\) \[(?P<logger>[^]]+)\]"
)


def hass_binary() -> Path:
    """The installed `hass`; fails naming the set-up step, or skips only where DEID_SKIP_HA=1 says so."""
    binary = HA_VENV / "bin" / "hass"
    if binary.is_file():
        return binary
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: Home Assistant tests skipped on request")
    pytest.fail(
        f"Home Assistant is not installed ({binary} missing): run {SETUP_STEP} "
        f"(or set {SKIP_ENV}=1 to skip these tests explicitly)"
    )


def ha_version() -> str:
    out = subprocess.run(
        [str(HA_VENV / "bin" / "python"), "-c", "import homeassistant.const as c; print(c.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def night_location(now: float | None = None) -> tuple[float, float]:
    """(latitude, longitude) where it is about midnight, solar time, now: on the equator the sun is
    then well below the horizon for hours, so conditions on `sun.sun` hold whenever the test runs."""
    utc_hours = ((time.time() if now is None else now) % 86400) / 3600
    longitude = (-15.0 * utc_hours + 180.0) % 360.0 - 180.0  # solar midnight at UTC = -longitude / 15
    return 0.0, round(longitude, 3)


def configuration_yaml(port: int, extra: str = "", location: tuple[float, float] = (52.52, 13.40)) -> str:
    """Minimal: only what the sidecar's devices, the REST/websocket API and the examples need.
    (`default_config:` would set up dozens of integrations and slow the start.)"""
    return (
        "homeassistant:\n"
        "  name: deid test\n"
        f"  latitude: {location[0]}\n"
        f"  longitude: {location[1]}\n"
        "  elevation: 34\n"
        "  unit_system: metric\n"
        "  time_zone: UTC\n"
        "  country: DE\n"
        "  currency: EUR\n"
        "http:\n"
        "  server_host: 127.0.0.1\n"
        f"  server_port: {port}\n"
        "api:\n"
        "websocket_api:\n"
        "image:\n"
        "logger:\n"
        "  default: warning\n"
        "  logs:\n"
        "    homeassistant.components.mqtt: info\n"
        "    homeassistant.bootstrap: info\n" + extra
    )


class HAError(AssertionError):
    pass


@dataclass(frozen=True)
class StateChange:
    at: float  # time.time() when the websocket event arrived
    entity_id: str
    state: str | None  # None: the entity was removed
    last_changed: float | None  # HA's own timestamp of the change


class WebSocket:
    """HA's websocket API on its own thread and event loop: commands, and recorded state changes."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.changes: list[StateChange] = []
        self._cond = threading.Condition()
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ha-websocket", daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._run(self._connect(), HTTP_TIMEOUT_S)

    def _run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.url, max_msg_size=0)
        first = await self._ws.receive_json()
        assert first["type"] == "auth_required", first
        await self._ws.send_json({"type": "auth", "access_token": self.token})
        reply = await self._ws.receive_json()
        if reply["type"] != "auth_ok":
            raise HAError(f"websocket auth failed: {reply}")
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for raw in self._ws:
            if raw.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(raw.data)
            for message in data if isinstance(data, list) else [data]:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") == "event":
            event = message["event"]
            if event.get("event_type") == "state_changed":
                new = event["data"].get("new_state")
                change = StateChange(
                    time.time(),
                    event["data"]["entity_id"],
                    None if new is None else new["state"],
                    None if new is None else _timestamp(new["last_changed"]),
                )
                with self._cond:
                    self.changes.append(change)
                    self._cond.notify_all()
            return
        future = self._pending.pop(message.get("id", -1), None)
        if future is not None and not future.done():
            future.set_result(message)

    async def _call(self, payload: dict[str, Any]) -> Any:
        assert self._ws is not None
        message_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[message_id] = future
        await self._ws.send_json({"id": message_id, **payload})
        return await future

    def call(self, message_type: str, timeout: float = HTTP_TIMEOUT_S, **data: Any) -> Any:
        reply = self._run(self._call({"type": message_type, **data}), timeout)
        if not reply.get("success"):
            raise HAError(f"websocket {message_type} failed: {reply.get('error')}")
        return reply.get("result")

    def subscribe_state_changes(self) -> None:
        self.call("subscribe_events", event_type="state_changed")

    def mark(self) -> int:
        with self._cond:
            return len(self.changes)

    def changes_of(self, entity_id: str, start: int = 0) -> list[StateChange]:
        with self._cond:
            return [c for c in self.changes[start:] if c.entity_id == entity_id]

    def wait_change(
        self, predicate: Callable[[StateChange], bool], timeout: float, start: int = 0, what: str = ""
    ) -> StateChange:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for change in self.changes[start:]:
                    if predicate(change):
                        return change
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HAError(f"no state change {what} within {timeout} s")
                self._cond.wait(remaining)

    def close(self) -> None:
        async def _close() -> None:
            if self._ws is not None:
                await self._ws.close()
            if self._reader is not None:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._reader
            if self._session is not None:
                await self._session.close()

        with contextlib.suppress(Exception):
            self._run(_close(), 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def _timestamp(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


class HomeAssistant:
    """`hass -c <config_dir> --skip-pip` on 127.0.0.1:`port`; onboarded; REST, websocket and log access."""

    def __init__(
        self,
        config_dir: Path,
        port: int,
        extra_config: str = "",
        location: tuple[float, float] = (52.52, 13.40),
    ) -> None:
        self.binary = hass_binary()
        self.config_dir = config_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.client_id = f"{self.url}/"
        self.log_file = config_dir / "home-assistant.log"
        self.stdout = config_dir / "hass.stdout"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "configuration.yaml").write_text(configuration_yaml(port, extra_config, location))
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.ws: WebSocket | None = None
        self.start_s = 0.0
        self._log_offset = 0

    # -- process ----------------------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        with self.stdout.open("ab") as out:
            # --skip-pip: every requirement is installed by scripts/setup-ha.sh; nothing is fetched here.
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    "-c",
                    str(self.config_dir),
                    "--skip-pip",
                    "--log-file",
                    str(self.log_file),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = started + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise HAError(f"hass exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                raise HAError(f"Home Assistant did not answer within {START_TIMEOUT_S} s: {self.log_tail()}")
            with contextlib.suppress(OSError, HAError):
                if self.request("GET", "/api/onboarding", auth=False) is not None:
                    break
            time.sleep(0.25)
        self.wait_running(deadline)
        self.start_s = time.monotonic() - started

    def wait_running(self, deadline: float) -> None:
        """Until the core is RUNNING (the HTTP server opens during start-up)."""
        while time.monotonic() < deadline:
            if "Home Assistant initialized" in self.log_text():
                return
            time.sleep(0.25)
        raise HAError(f"Home Assistant did not finish starting: {self.log_tail()}")

    def stop(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    # -- REST -------------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: bool = True,
        form: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Any:
        data: bytes | None = None
        headers = {}
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                content = response.read()
                if raw:
                    return response.headers.get("Content-Type", ""), content
        except urllib.error.HTTPError as error:
            raise HAError(f"{method} {path}: HTTP {error.code}: {error.read()[:500]!r}") from None
        return json.loads(content) if content else None

    def state(self, entity_id: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.request("GET", f"/api/states/{entity_id}")
        except HAError as error:
            if "HTTP 404" in str(error):
                return None
            raise
        return result

    def value(self, entity_id: str) -> str | None:
        """The entity's state string; None when HA has no such entity."""
        state = self.state(entity_id)
        return None if state is None else str(state["state"])

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.request("GET", "/api/states")}

    def service(self, domain: str, service: str, **data: Any) -> Any:
        return self.request("POST", f"/api/services/{domain}/{service}", data)

    # -- set-up -----------------------------------------------------------------------------------------

    def onboard(self) -> None:
        """Create the owner (REST onboarding), exchange the auth code for tokens, finish the other steps,
        and keep a long-lived token for the rest of the session."""
        steps = {s["step"]: s["done"] for s in self.request("GET", "/api/onboarding", auth=False)}
        assert steps.get("user") is False, f"not a fresh Home Assistant: {steps}"
        created = self.request(
            "POST",
            "/api/onboarding/users",
            {
                "client_id": self.client_id,
                "name": "deid test",
                "username": USERNAME,
                "password": PASSWORD,
                "language": "en",
            },
            auth=False,
        )
        tokens = self.request(
            "POST",
            "/auth/token",
            auth=False,
            form={
                "grant_type": "authorization_code",
                "code": created["auth_code"],
                "client_id": self.client_id,
            },
        )
        self.token = tokens["access_token"]
        self.request("POST", "/api/onboarding/core_config", {})
        self.request("POST", "/api/onboarding/analytics", {})
        self.request(
            "POST",
            "/api/onboarding/integration",
            {"client_id": self.client_id, "redirect_uri": self.client_id},
        )
        steps = {s["step"]: s["done"] for s in self.request("GET", "/api/onboarding", auth=False)}
        assert all(steps.values()), f"onboarding not finished: {steps}"
        self.ws = WebSocket(f"ws://127.0.0.1:{self.port}/api/websocket", self.token)
        # The short-lived access token expires after 30 min; a long-lived one outlasts any test run.
        self.token = self.ws.call("auth/long_lived_access_token", client_name="deid-test", lifespan=1)
        self.ws.close()
        self.ws = WebSocket(f"ws://127.0.0.1:{self.port}/api/websocket", self.token)
        self.ws.subscribe_state_changes()
        self._promote_http_config()

    def _promote_http_config(self) -> None:
        """Releases that put a YAML `http:` block on trial (and revert it unless confirmed) get it confirmed;
        releases without that command (2025.4 and older) need nothing."""
        assert self.ws is not None
        try:
            self.ws.call("http/config/promote")
        except HAError as error:
            if "unknown_command" not in str(error) and "Unknown command" not in str(error):
                raise

    def add_mqtt(self, broker_port: int) -> dict[str, Any]:
        """The MQTT integration through the config-flow API (handler `mqtt`), as the UI adds it."""
        flow = self.request(
            "POST", "/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False}
        )
        if flow.get("type") == "menu":  # with a supervisor: add-on or manual broker
            flow = self.request(
                "POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"next_step_id": "broker"}
            )
        assert flow["type"] == "form" and flow["step_id"] == "broker", flow
        result = self.request(
            "POST",
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"broker": "127.0.0.1", "port": broker_port},
        )
        assert result["type"] == "create_entry", result
        entry_id = result["result"]["entry_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            entries = self.request("GET", "/api/config/config_entries/entry?domain=mqtt")
            entry = next((e for e in entries if e["entry_id"] == entry_id), None)
            if entry is not None and entry["state"] == "loaded":
                return entry
            time.sleep(0.25)
        raise HAError(f"MQTT config entry not loaded: {entry}; {self.log_tail()}")

    # -- registries -------------------------------------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        assert self.ws is not None
        result: list[dict[str, Any]] = self.ws.call("config/device_registry/list")
        return result

    def entities(self) -> list[dict[str, Any]]:
        assert self.ws is not None
        result: list[dict[str, Any]] = self.ws.call("config/entity_registry/list")
        return result

    def device_by_identifier(self, identifier: str) -> dict[str, Any] | None:
        for device in self.devices():
            if ["mqtt", identifier] in device["identifiers"]:
                return device
        return None

    def entities_of(self, device_id: str) -> list[dict[str, Any]]:
        return [e for e in self.entities() if e["device_id"] == device_id]

    # -- log --------------------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        stdout = self.stdout.read_text(errors="replace") if self.stdout.exists() else ""
        return (self.log_text() + stdout)[-chars:]

    def log_mark(self) -> int:
        return len(self.log_text())

    def log_problems(self, start: int = 0, pattern: str = r"mqtt|deid") -> list[str]:
        """WARNING/ERROR/CRITICAL records since `start` from an MQTT logger or that mention `pattern`
        (our topics, device ids, payloads), with their continuation lines; HA's own unrelated noise
        (optional native libraries missing on this machine) is left out."""
        wanted = re.compile(pattern, re.IGNORECASE)
        problems: list[str] = []
        record: list[str] = []

        def flush() -> None:
            if not record:
                return
            head = _RECORD.match(record[0])
            text = "\n".join(record)
            if (
                head is not None
                and head["level"] in {"WARNING", "ERROR", "CRITICAL"}
                and (wanted.search(head["logger"]) or wanted.search(text))
                and not _UNRELATED.search(text)
            ):
                problems.append(text[:2000])
            record.clear()

        for line in self.log_text()[start:].splitlines():
            if _RECORD.match(line):
                flush()
            record.append(line)
        flush()
        return problems


@contextlib.contextmanager
def running_home_assistant(
    config_dir: Path,
    port: int,
    broker_port: int,
    extra_config: str = "",
    location: tuple[float, float] = (52.52, 13.40),
) -> Iterator[HomeAssistant]:
    ha = HomeAssistant(config_dir, port, extra_config, location)
    try:
        ha.start()
        ha.onboard()
        ha.add_mqtt(broker_port)
        yield ha
    finally:
        ha.stop()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise HAError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
