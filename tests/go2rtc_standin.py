"""A small go2rtc API stand-in following what a real go2rtc 1.9.14 was observed to do.

See docs/integration.md, "Observed on a real go2rtc 1.9.14". go2rtc itself cannot be installed here;
this app reproduces the parts a client depends on, including the dangerous ones (PATCH aliases) so tests
can prove the client never uses them. Also serves Frigate's proxy paths (/api/go2rtc/streams/{name}).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

INSECURE = ("exec:", "echo:", "expr:")
SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "ffmpeg", "onvif", "webrtc", "homekit", "tcp", "isapi")


@dataclass
class Go2rtcStandin:
    username: str | None = None
    password: str | None = None
    require_auth: bool = False  # real go2rtc asks only non-loopback clients; tests flip this on
    config_file_disabled: bool = False  # inline -config: changes apply, answer 400 "config file disabled"
    streams: dict[str, list[str]] = field(default_factory=dict)  # in memory
    file: dict[str, list[str]] = field(default_factory=dict)  # the write-back config file
    aliases: dict[str, str] = field(default_factory=dict)  # PATCH-made alias -> original
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, raw query)
    pushed: dict[str, bytes] = field(default_factory=dict)
    port: int = 0
    _runner: web.AppRunner | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        app = web.Application(middlewares=[self._record, self._auth])
        app.add_routes(
            [
                web.route("*", "/api/streams", self._streams),
                web.post("/api/stream.ts", self._push),
                web.get("/api/go2rtc/streams", self._frigate_list),
                web.route("*", "/api/go2rtc/streams/{name}", self._frigate_one),
            ]
        )
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restart(self, keep_file: bool = True) -> None:
        """go2rtc restarts: runtime (PATCH or unsaved) streams vanish; Frigate also rewrites the file."""
        if not keep_file:
            self.file.clear()
        self.streams = {name: list(src) for name, src in self.file.items()}
        self.aliases.clear()

    @property
    def methods(self) -> set[str]:
        return {method for method, _, _ in self.requests}

    # --- middlewares -----------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path, request.rel_url.raw_query_string))
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.require_auth and self.username:
            expected = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            if request.headers.get("Authorization") != f"Basic {expected}":
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="go2rtc"'})
        response: web.StreamResponse = await handler(request)
        return response

    # --- /api/streams ------------------------------------------------------------------------------

    def _listing(self) -> dict[str, Any]:
        return {name: self._describe(name) for name in self.streams}

    def _describe(self, name: str) -> dict[str, Any]:
        original = self.aliases.get(name, name)
        return {"producers": [{"url": s} for s in self.streams.get(original, [])], "consumers": []}

    @staticmethod
    def _params(request: web.Request) -> list[tuple[str, str]]:
        # Parse the RAW query like Go's url.Query: '+' decodes to a space.
        return parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)

    async def _streams(self, request: web.Request) -> web.StreamResponse:
        params = self._params(request)
        name = next((v for k, v in params if k == "name"), "")
        sources = [v for k, v in params if k == "src" and v]
        handlers = {"GET": self._get, "PUT": self._put, "PATCH": self._patch, "DELETE": self._delete}
        handler = handlers.get(request.method)
        if handler is None:
            return web.Response(status=405)
        return handler(name, sources)

    def _get(self, name: str, sources: list[str]) -> web.Response:
        if not sources:
            return web.json_response(self._listing())
        if sources[0] not in self.streams:
            return web.Response(status=404, text="stream not found")
        return web.json_response(self._describe(sources[0]))

    def _put(self, name: str, sources: list[str]) -> web.Response:
        if not sources:
            return web.json_response(self._listing())  # creates nothing, still 200
        if error := self._validate(sources):
            return web.Response(status=400, text=error)
        name = name or sources[0]  # a PUT without name creates a stream named after the URL
        self.streams[name] = list(sources)
        self.aliases.pop(name, None)
        return self._save(lambda: self.file.__setitem__(name, list(sources)))

    def _patch(self, name: str, sources: list[str]) -> web.Response:
        if error := self._validate(sources):
            return web.Response(status=400, text=error)
        target = self._alias_target(sources[0]) if sources else None
        if target is not None:
            self.aliases[name] = target  # the raw-feed leak: NAME now shows TARGET's producers
            self.streams.setdefault(name, [])
        else:
            self.streams[name] = list(sources)
        return web.Response()

    def _delete(self, name: str, sources: list[str]) -> web.Response:
        if not sources:
            return web.json_response(self._listing())  # ?name= deletes NOTHING
        target = sources[0]
        self.streams.pop(target, None)
        self.aliases.pop(target, None)
        return self._save(lambda: self.file.pop(target, None))

    def _save(self, write: Any) -> web.Response:
        if self.config_file_disabled:
            return web.Response(status=400, text="config file disabled")  # memory changed anyway
        write()
        return web.Response()

    def _alias_target(self, source: str) -> str | None:
        if source in self.streams:
            return source
        match = re.fullmatch(r"rtsp://[^/]+/([^?#]+)", source)
        if match and match.group(1) in self.streams:
            return match.group(1)
        return None

    def _validate(self, sources: list[str]) -> str | None:
        for source in sources:
            if re.search(r"\s", source):
                return "streams: source with spaces may be insecure"
            if source.startswith(INSECURE):
                return "streams: source from insecure producer"
            scheme = source.split(":", 1)[0] if ":" in source else ""
            if scheme not in SCHEMES and source not in self.streams:
                return "streams: source not supported"
        return None

    # --- push -----------------------------------------------------------------------------------------

    async def _push(self, request: web.Request) -> web.StreamResponse:
        dst = dict(self._params(request)).get("dst", "")
        if dst not in self.streams:
            return web.Response(status=404, text="stream not found")
        received = bytearray(self.pushed.get(dst, b""))
        async for chunk in request.content.iter_any():
            received += chunk
            self.pushed[dst] = bytes(received)
        return web.Response(status=500, text="EOF")  # what go2rtc answers when a push body ends

    # --- Frigate's proxy ---------------------------------------------------------------------------

    async def _frigate_list(self, request: web.Request) -> web.Response:
        return web.json_response(self._listing())

    async def _frigate_one(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        sources = [v for k, v in self._params(request) if k == "src" and v]
        if request.method == "PUT":
            return self._put(name, sources[:1])
        if request.method == "DELETE":
            return self._delete(name, [name])
        if request.method == "GET":
            return self._get(name, [name])
        return web.Response(status=405)
