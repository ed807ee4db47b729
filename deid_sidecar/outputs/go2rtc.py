"""go2rtc's HTTP API: register the anonymized streams, keep them registered, print YAML for users.

Contract (docs/integration.md): `PUT /api/streams?name=N&src=S` creates or replaces a stream and writes
it to go2rtc's config file; always send BOTH name and src (src alone names the stream after the URL),
percent-encode the whole src (a raw `+` decodes to a space and is refused), never PATCH (a PATCH whose
src names an existing stream makes an alias of it: a raw-feed leak). Runtime registrations vanish when
Frigate restarts its go2rtc, so `Registrar` polls and re-PUTs what is missing.

Credentials are sent as Basic auth only, and every error text passes through `mask_secrets`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import yaml
from pydantic import SecretStr
from yarl import URL

from deid_sidecar.config import Config, output_name
from deid_sidecar.core.redact import mask_secrets, mask_url
from deid_sidecar.errors import UserError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
"""Per API call: go2rtc answers API calls at once (it does not contact sources at PUT time)."""
BACKOFF_S: tuple[float, ...] = (1, 1, 1, 1, 1, 5, 10)
"""Waits after consecutive failures to reach go2rtc, like go2rtc's own reconnects; then the interval."""
CONFIG_FILE_DISABLED = "config file disabled"

PutResult = Literal["saved", "not_persisted"]


class Go2rtcError(UserError):
    """go2rtc refused a request; the message quotes go2rtc's answer, never credentials."""


class Go2rtcUnreachable(Go2rtcError):
    """go2rtc (or Frigate) did not answer: try again later."""


class StreamApi(Protocol):
    """What the Registrar needs; implemented by go2rtc's own API and by Frigate's proxy."""

    describe: str

    async def list_streams(self) -> dict[str, Any]: ...
    async def get_stream(self, name: str) -> dict[str, Any] | None: ...
    async def put_stream(self, name: str, sources: Sequence[str]) -> PutResult: ...
    async def delete_stream(self, name: str) -> None: ...


def encode_query(**params: str | Sequence[str]) -> str:
    """`a=x&b=y1&b=y2` with EVERY reserved character percent-encoded (`+` -> %2B, `#` -> %23)."""
    parts = []
    for key, value in params.items():
        for item in [value] if isinstance(value, str) else value:
            parts.append(f"{key}={quote(item, safe='')}")
    return "&".join(parts)


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """`http://u:p@host` -> (`http://host`, u, p): credentials travel as a header, never in the URL."""
    parts = urlsplit(url)
    if parts.username is None:
        return url.rstrip("/"), None, None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)).rstrip("/"), parts.username, parts.password


def basic_auth(username: str, password: str) -> str:
    """Authorization header value (built here: aiohttp 3.14 deprecates BasicAuth, 3.9 lacks its successor)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class _HttpApi:
    """Request plumbing shared by both APIs: auth, timeouts, masked errors."""

    def __init__(
        self,
        base_url: str,
        username: str | None,
        password: SecretStr | None,
        session: aiohttp.ClientSession,
    ) -> None:
        base, url_user, url_password = split_credentials(base_url)
        self.base_url = base
        self.describe = mask_url(base)
        user = username or url_user
        secret = password.get_secret_value() if password is not None else url_password
        self._secret = secret
        self._headers = {"Authorization": basic_auth(user, secret or "")} if user else {}
        self._session = session
        self._warned_not_persisted = False

    @property
    def auth_headers(self) -> dict[str, str]:
        """Headers carrying the credentials (for callers streaming their own requests, e.g. push)."""
        return dict(self._headers)

    def mask(self, text: str) -> str:
        """`text` with URL credentials and this client's password masked."""
        return mask_secrets(text, self._secret)

    async def _request(self, method: str, path: str, query: str = "") -> tuple[int, str]:
        url = URL(f"{self.base_url}{path}" + (f"?{query}" if query else ""), encoded=True)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        try:
            async with self._session.request(method, url, headers=self._headers, timeout=timeout) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = self.mask(f"{type(exc).__name__}: {exc}")
            raise Go2rtcUnreachable(f"{self.describe} unreachable ({reason})") from None

    def _fail(self, action: str, status: int, body: str) -> Go2rtcError:
        message = self.mask(body.strip()[:300]) or f"HTTP {status}"
        if status == 401:
            message += " (set go2rtc.username and go2rtc.password)"
        return Go2rtcError(f"{self.describe}: {action} failed: {status} {message}")

    async def _applied_not_persisted(self, name: str) -> PutResult:
        """go2rtc without a config file applies the change in memory and still answers 400."""
        if await self.get_stream(name) is None:
            raise Go2rtcError(f"{self.describe}: {name!r} was not created ({CONFIG_FILE_DISABLED})")
        if not self._warned_not_persisted:
            self._warned_not_persisted = True
            log.warning(
                "go2rtc at %s has no config file: %s is registered in memory only (re-sent after restarts)",
                self.describe,
                name,
            )
        return "not_persisted"

    async def get_stream(self, name: str) -> dict[str, Any] | None:
        raise NotImplementedError


def _json_map(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        raise Go2rtcError(f"{what}: answer is not JSON") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise Go2rtcError(f"{what}: expected a JSON object")
    return data


class Go2rtcClient(_HttpApi):
    """go2rtc's own API (`/api/streams`). Never PATCHes: see the module docstring."""

    async def list_streams(self) -> dict[str, Any]:
        status, body = await self._request("GET", "/api/streams")
        if status != 200:
            raise self._fail("list streams", status, body)
        return _json_map(body, "list streams")

    async def get_stream(self, name: str) -> dict[str, Any] | None:
        status, body = await self._request("GET", "/api/streams", encode_query(src=name))
        if status == 404:
            return None
        if status != 200:
            raise self._fail(f"get {name!r}", status, body)
        return _json_map(body, f"get {name!r}")

    async def put_stream(self, name: str, sources: Sequence[str]) -> PutResult:
        if not sources:
            raise ValueError("a PUT without src creates nothing")  # and go2rtc would still answer 200
        status, body = await self._request("PUT", "/api/streams", encode_query(name=name, src=sources))
        if status == 200:
            return "saved"
        if status == 400 and CONFIG_FILE_DISABLED in body:
            return await self._applied_not_persisted(name)
        raise self._fail(f"register {name!r}", status, body)

    async def delete_stream(self, name: str) -> None:
        # `?src=` is the parameter DELETE understands; `?name=` deletes nothing and answers 200.
        status, body = await self._request("DELETE", "/api/streams", encode_query(src=name))
        if status == 400 and CONFIG_FILE_DISABLED in body:
            return
        if status != 200:
            raise self._fail(f"delete {name!r}", status, body)


class FrigateGo2rtcClient(_HttpApi):
    """Frigate 0.17+'s proxy on its internal port: `PUT/DELETE /api/go2rtc/streams/{name}?src=`."""

    def _path(self, name: str = "") -> str:
        return "/api/go2rtc/streams" + (f"/{quote(name, safe='')}" if name else "")

    async def list_streams(self) -> dict[str, Any]:
        status, body = await self._request("GET", self._path())
        if status != 200:
            raise self._fail("list streams", status, body)
        return _json_map(body, "list streams")

    async def get_stream(self, name: str) -> dict[str, Any] | None:
        streams = await self.list_streams()
        value = streams.get(name)
        return value if isinstance(value, dict) else None

    async def put_stream(self, name: str, sources: Sequence[str]) -> PutResult:
        if len(sources) != 1:
            raise ValueError("Frigate's proxy takes exactly one src per stream")
        status, body = await self._request("PUT", self._path(name), encode_query(src=sources[0]))
        if status == 200:
            return "saved"
        if CONFIG_FILE_DISABLED in body:
            return await self._applied_not_persisted(name)
        raise self._fail(f"register {name!r}", status, body)

    async def delete_stream(self, name: str) -> None:
        status, body = await self._request("DELETE", self._path(name), encode_query(src=name))
        if status not in (200, 404):
            raise self._fail(f"delete {name!r}", status, body)


# --- keeping streams registered ----------------------------------------------------------------


def producer_urls(stream: Any) -> list[str] | None:
    """Source URLs of a stream from `GET /api/streams`; None when go2rtc did not say."""
    if not isinstance(stream, dict):
        return None
    producers = stream.get("producers") or []
    urls = [p.get("url") for p in producers if isinstance(p, dict)]
    if not urls or any(not isinstance(u, str) for u in urls):
        return None
    return [u for u in urls if isinstance(u, str)]


def needs_put(current: Any, wanted: Sequence[str]) -> bool:
    """Re-PUT only what is missing or clearly different: a PUT replaces the stream and its viewers."""
    if current is None:
        return True
    urls = producer_urls(current)
    if urls is None:  # a running producer may not report its url: trust the stream exists
        return False
    return sorted(urls) != sorted(wanted)


@dataclass
class RegistrarStatus:
    last_ok: float | None = None  # wall-clock time of the last successful check
    last_error: str = ""  # masked
    registered: set[str] = field(default_factory=set)
    persisted: bool = True
    puts: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "last_ok": self.last_ok,
            "last_error": self.last_error,
            "registered": sorted(self.registered),
            "persisted": self.persisted,
            "puts": self.puts,
        }


class Registrar:
    """Registers every wanted stream, then re-checks every `interval_s` and repairs what is missing."""

    def __init__(
        self,
        client: StreamApi,
        wanted: Mapping[str, Sequence[str]],
        interval_s: float,
        secrets: Sequence[str] = (),
    ) -> None:
        self.client = client
        self.wanted = {name: list(sources) for name, sources in wanted.items()}
        self.interval_s = interval_s
        # The registered sources carry server.stream_token: an error that echoes one masks it in any form.
        self._secrets = tuple(secrets)
        self.status = RegistrarStatus()
        self._generation = 0
        self._wake = asyncio.Event()

    async def reconcile(self) -> list[str]:
        """One pass: PUT every wanted stream that go2rtc lacks or has with other sources."""
        current = await self.client.list_streams()
        changed = []
        for name, sources in self.wanted.items():
            if needs_put(current.get(name), sources):
                result = await self.client.put_stream(name, sources)
                self.status.puts += 1
                self.status.persisted = result == "saved"
                changed.append(name)
            # Ours now (PUT by us, or already carrying exactly our source): close(remove) may delete it.
            self.status.registered.add(name)
        return changed

    async def run(self) -> None:
        """Loop until `close()` or a newer `run()`; never raises for go2rtc trouble."""
        self._generation += 1
        generation = self._generation
        failures = 0
        while generation == self._generation:
            delay = self.interval_s
            try:
                changed = await self.reconcile()
            except Go2rtcUnreachable as exc:
                failures += 1
                delay = BACKOFF_S[failures - 1] if failures <= len(BACKOFF_S) else self.interval_s
                self._record_error(
                    str(exc), logging.WARNING if failures in (1, len(BACKOFF_S)) else logging.DEBUG
                )
            except Go2rtcError as exc:  # refused: retrying sooner would not help
                failures = 0
                self._record_error(str(exc), logging.ERROR)
            else:
                failures = 0
                self._record_ok(changed)
            await self._sleep(delay, generation)

    def _record_ok(self, changed: list[str]) -> None:
        if changed:
            log.info("go2rtc %s: registered %s", self.client.describe, ", ".join(changed))
        self.status.last_ok = time.time()
        self.status.last_error = ""

    def _record_error(self, message: str, level: int) -> None:
        self.status.last_error = self._mask(message)
        log.log(level, "go2rtc registration: %s", self.status.last_error)

    def _mask(self, text: str) -> str:
        return mask_secrets(text, *self._secrets)

    async def _sleep(self, seconds: float, generation: int) -> None:
        if generation != self._generation:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):  # the normal case: the interval passed
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def close(self, remove: bool) -> None:
        """Stop the loop; with `remove`, DELETE the streams this registrar created."""
        self._generation += 1
        self._wake.set()
        if not remove:
            return
        for name in sorted(self.status.registered):
            try:
                await self.client.delete_stream(name)
            except Go2rtcError as exc:
                log.warning("go2rtc: could not remove %s: %s", name, self._mask(str(exc)))
            else:
                self.status.registered.discard(name)


# --- from the config --------------------------------------------------------------------------


def stream_url(config: Config, output: str, token: str | None = None) -> str:
    """URL go2rtc reads an output from: `<sidecar_url>/streams/<output>.ts[?token=...]`."""
    url = f"{config.go2rtc.sidecar_url.rstrip('/')}/streams/{output}.ts"
    if token is None and config.server.stream_token is not None:
        token = config.server.stream_token.get_secret_value()
    return url + (f"?token={quote(token, safe='')}" if token else "")


def registration_sources(config: Config) -> dict[str, list[str]]:
    """Output stream name -> the sources to register, for every enabled camera."""
    return {
        output_name(cam_name, cam): [stream_url(config, output_name(cam_name, cam))]
        for cam_name, cam in config.cameras.items()
        if cam.enabled
    }


def client_for(config: Config, session: aiohttp.ClientSession) -> StreamApi:
    g = config.go2rtc
    if g.api == "frigate":
        return FrigateGo2rtcClient(g.frigate_url, None, None, session)
    return Go2rtcClient(g.url, g.username, g.password, session)


def registrar_for(config: Config, session: aiohttp.ClientSession) -> Registrar:
    token = config.server.stream_token.get_secret_value() if config.server.stream_token else ""
    secrets = (token, quote(token, safe="")) if token else ()
    return Registrar(
        client_for(config, session), registration_sources(config), config.go2rtc.reconcile_s, secrets
    )


# --- YAML for users ---------------------------------------------------------------------------

# References, not secrets: the snippets never contain the token itself.
GO2RTC_TOKEN_REF = "${DEID_STREAM_TOKEN}"  # noqa: S105 (go2rtc expands ${VAR} from its environment)
FRIGATE_TOKEN_REF = "{FRIGATE_DEID_STREAM_TOKEN}"  # noqa: S105 (Frigate fills FRIGATE_* in go2rtc streams)


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=200)


def _snippet_sources(config: Config, token_ref: str | None) -> dict[str, str]:
    base = config.go2rtc.sidecar_url.rstrip("/")
    query = f"?token={token_ref}" if token_ref else ""
    cams = {name: cam for name, cam in config.cameras.items() if cam.enabled}
    return {(out := output_name(name, cam)): f"{base}/streams/{out}.ts{query}" for name, cam in cams.items()}


def render_yaml_snippets(config: Config) -> str:
    """go2rtc and Frigate config for the outputs. The stream token appears as an env reference only."""
    token = None
    header = [
        "# deid-sidecar: anonymized streams for go2rtc / Frigate.",
        "# Each camera's anonymized stream has its OWN name: never add it as a second source of the raw stream.",
    ]
    if config.server.stream_token is not None:
        header.append("# The stream URLs need server.stream_token: set DEID_STREAM_TOKEN (go2rtc) or")
        header.append("# FRIGATE_DEID_STREAM_TOKEN (Frigate) in that container's environment.")
        token = GO2RTC_TOKEN_REF
    cams = {name: cam for name, cam in config.cameras.items() if cam.enabled}
    outputs = {name: output_name(name, cam) for name, cam in cams.items()}
    go2rtc_yaml = _dump({"streams": _snippet_sources(config, token)})
    frigate_token = FRIGATE_TOKEN_REF if token else None
    frigate_live = _dump(
        {
            "go2rtc": {"streams": _snippet_sources(config, frigate_token)},
            "cameras": {cam: {"live": {"streams": {"Anonymized": out}}} for cam, out in outputs.items()},
        }
    )
    frigate_record = _dump(
        {
            "cameras": {
                cam: {
                    "ffmpeg": {
                        "inputs": [
                            {
                                "path": f"rtsp://127.0.0.1:8554/{out}",
                                "input_args": "preset-rtsp-restream",
                                "roles": ["record", "detect"],
                            }
                        ]
                    }
                }
                for cam, out in outputs.items()
            }
        }
    )
    return "\n".join(
        [
            *header,
            "",
            "# --- standalone go2rtc (go2rtc.yaml) ---",
            go2rtc_yaml,
            "# --- Frigate: live view (Anonymized listed FIRST = default dashboard stream) ---",
            frigate_live,
            "# --- Frigate: record/detect the anonymized restream instead of the raw camera ---",
            "# Replace the camera's ffmpeg.inputs with this, so recordings, snapshots and Home Assistant",
            "# entities are anonymized too.",
            frigate_record,
        ]
    )
