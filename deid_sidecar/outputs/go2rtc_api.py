"""go2rtc's HTTP API, and Frigate's proxy of it: list, get, PUT and DELETE streams.

Contract (docs/integration.md): `PUT /api/streams?name=N&src=S` creates or replaces a stream and writes
it to go2rtc's config file; always send BOTH name and src (src alone names the stream after the URL),
percent-encode the whole src (a raw `+` decodes to a space and is refused), never PATCH (a PATCH whose
src names an existing stream makes an alias of it: a raw-feed leak).

Credentials are sent as Basic auth only, and every error text passes through `mask_secrets`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from pydantic import SecretStr
from yarl import URL

from deid_sidecar.config import Config
from deid_sidecar.core.redact import mask_secrets, mask_url
from deid_sidecar.errors import UserError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0
"""Per API call: go2rtc answers API calls at once (it does not contact sources at PUT time)."""
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


def client_for(config: Config, session: aiohttp.ClientSession) -> StreamApi:
    g = config.go2rtc
    if g.api == "frigate":
        return FrigateGo2rtcClient(g.frigate_url, None, None, session)
    return Go2rtcClient(g.url, g.username, g.password, session)
