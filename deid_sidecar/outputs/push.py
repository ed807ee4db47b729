"""Push mode: send a hub's MPEG-TS into an EXISTING go2rtc stream with `POST /api/stream.ts?dst=NAME`.

Pull (go2rtc reads `/streams/<name>.ts`) is the preferred way; push is for setups where go2rtc cannot
reach the sidecar. go2rtc accepts a push only into a declared stream (404 `stream not found` otherwise),
so the stream is checked with `GET /api/streams?src=` first and a missing one is reported with the YAML
line to add. The POST is one long-lived chunked request; when it ends (go2rtc restarted, reader dropped
for being slow) it is re-opened with stepped backoff. The body starts at a keyframe (StreamHub readers do).
RTSP publish is not implemented: `output.push: rtsp` uses this HTTP push too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from deid_sidecar.config import CameraConfig, Config
from deid_sidecar.outputs import retry
from deid_sidecar.outputs.go2rtc import stream_url
from deid_sidecar.outputs.go2rtc_api import Go2rtcClient, Go2rtcError, encode_query
from deid_sidecar.outputs.http_ts import StreamHub, StreamReader
from deid_sidecar.outputs.retry import RetryLoop

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30.0
"""Wait after the stepped backoff (retry.BACKOFF_S) is used up, and while the stream is not declared."""
CONNECT_TIMEOUT_S = 10.0


def not_declared_hint(name: str, sidecar_stream_url: str) -> str:
    return (
        f"go2rtc has no stream {name!r} to push into. Standalone go2rtc: add `{name}:` with an empty "
        f"value under `streams:` in go2rtc.yaml. Frigate 0.16+ drops streams written as `{name}: []`: "
        f"add `{name}: {sidecar_stream_url}` under `go2rtc: streams:` as a placeholder source instead "
        "(go2rtc then also pulls it)."
    )


@dataclass
class PushStatus:
    connected: bool = False
    last_error: str = ""  # masked
    bytes_sent: int = 0
    connects: int = 0
    since: float | None = None  # wall-clock start of the current push

    def snapshot(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "last_error": self.last_error,
            "bytes_sent": self.bytes_sent,
            "connects": self.connects,
            "since": self.since,
        }


class Pusher(RetryLoop):
    """Keeps one `POST /api/stream.ts?dst=<name>` running for one hub."""

    def __init__(
        self, client: Go2rtcClient, hub: StreamHub, name: str, hint_url: str, session: aiohttp.ClientSession
    ) -> None:
        super().__init__()
        self.client, self.hub, self.name, self._session = client, hub, name, session
        self.hint_url = hint_url  # the pull URL, quoted in the "not declared" hint
        self.status = PushStatus()
        self._reader: StreamReader | None = None

    async def attempt(self) -> float:
        """One push, until it ends; never raises for go2rtc trouble."""
        try:
            await self._push_once()
        except _NotDeclared as exc:
            self._record_error(str(exc), logging.ERROR if self.failures == 0 else logging.DEBUG)
            self.failed(settle_s=RETRY_AFTER_S)
            return RETRY_AFTER_S
        except (Go2rtcError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._record_error(f"push to {self.client.describe} failed: {exc}", logging.WARNING)
            return self.failed(settle_s=RETRY_AFTER_S)
        self.succeeded()  # it ran: the next attempt starts the backoff again
        return retry.BACKOFF_S[0]

    async def _push_once(self) -> None:
        if await self.client.get_stream(self.name) is None:
            raise _NotDeclared(not_declared_hint(self.name, self.hint_url))
        url = URL(f"{self.client.base_url}/api/stream.ts?{encode_query(dst=self.name)}", encoded=True)
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=None)
        headers = {**self.client.auth_headers, "Content-Type": "video/mp2t"}
        self._reader = self.hub.subscribe()
        try:
            body = self._body(self._reader)
            async with self._session.post(url, data=body, headers=headers, timeout=timeout) as response:
                text = self.client.mask((await response.text()).strip()[:200])
            if response.status == 404:
                raise _NotDeclared(not_declared_hint(self.name, self.hint_url))
            log.info("%s: push ended (%d %s)", self.name, response.status, text)
        finally:
            self.status.connected = False
            self.hub.unsubscribe(self._reader)
            self._reader = None

    async def _body(self, reader: StreamReader) -> AsyncIterator[bytes]:
        self.status.connects += 1
        self.status.connected, self.status.since, self.status.last_error = True, time.time(), ""
        log.info("%s: pushing into %s", self.name, self.client.describe)
        while (data := await reader.get()) is not None:
            self.status.bytes_sent += len(data)
            yield data

    def _record_error(self, message: str, level: int) -> None:
        self.status.last_error = self.client.mask(message)
        log.log(level, "%s: %s", self.name, self.status.last_error)

    async def close(self) -> None:
        """Stop: ends the running POST body and the retry loop."""
        self.stop()
        if self._reader is not None:
            self.hub.unsubscribe(self._reader)


class _NotDeclared(Go2rtcError):
    """The target stream does not exist in go2rtc: a push would be refused."""


def pusher_for(
    config: Config, output: str, camera: CameraConfig, hub: StreamHub, session: aiohttp.ClientSession
) -> Pusher | None:
    """The Pusher of a camera with `output.push: http`; None for a camera go2rtc pulls."""
    if camera.output.push == "none":
        return None
    g = config.go2rtc
    client = Go2rtcClient(g.url, g.username, g.password, session)
    hint_url = stream_url(config, output, token="")  # never the token itself in a message
    return Pusher(client, hub, output, hint_url, session)
