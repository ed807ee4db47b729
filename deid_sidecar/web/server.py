"""The sidecar's HTTP server: anonymized streams, stats, snapshots, health, and a status page.

Only ANONYMIZED pictures are ever served. `/healthz` and the stream URLs are open (go2rtc and the
container health check read them; the streams can carry their own token); everything under
`/api/` needs the bearer token when one is configured.
"""

from __future__ import annotations

import asyncio
import hmac
import html
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from deid_sidecar import __version__
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.outputs.http_ts import stream_routes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PIPELINES_KEY = web.AppKey("pipelines", dict[str, CameraPipeline])


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _auth_middleware(token: str | None) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and request.path.startswith("/api/"):
            given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _json_error(401, "missing or wrong bearer token")
        return await handler(request)

    return check


def _pipeline(request: web.Request) -> CameraPipeline:
    name = request.match_info["name"]
    pipeline = request.app[PIPELINES_KEY].get(name)
    if pipeline is None:
        raise web.HTTPNotFound(
            text=f'{{"error": "unknown camera {name!r}"}}', content_type="application/json"
        )
    return pipeline


async def healthz(request: web.Request) -> web.Response:
    cameras = {name: p.stats.snapshot()["state"] for name, p in request.app[PIPELINES_KEY].items()}
    return web.json_response({"status": "ok", "version": __version__, "cameras": cameras})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(
        {"cameras": {name: p.stats.snapshot() for name, p in request.app[PIPELINES_KEY].items()}}
    )


async def snapshot(request: web.Request) -> web.Response:
    """JPEG of the newest ANONYMIZED frame (encoded off the event loop)."""
    encode = _pipeline(request).latest_jpeg
    if encode is None:
        return _json_error(503, "no frame published yet")
    data = await asyncio.get_running_loop().run_in_executor(None, encode)
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})


async def index(request: web.Request) -> web.Response:
    rows = []
    for name, pipeline in request.app[PIPELINES_KEY].items():
        cam, out = html.escape(name), html.escape(pipeline.output)
        rows.append(
            f"<section><h2>{cam} &rarr; {out}</h2>"
            f'<img data-cam="{cam}" src="/api/cameras/{cam}/snapshot.jpg" alt="anonymized {cam}">'
            f"<p>Stream for go2rtc: <code>/streams/{out}.ts</code></p></section>"
        )
    page = _PAGE.replace("{{sections}}", "\n".join(rows) or "<p>No cameras configured.</p>")
    return web.Response(text=page, content_type="text/html")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deid-sidecar</title>
<style>body{font-family:system-ui,sans-serif;margin:2rem;background:#111;color:#eee}
img{max-width:100%;width:960px;border:1px solid #444}code{color:#9cf}</style></head>
<body><h1>deid-sidecar</h1><p>Anonymized output of each camera (refreshes every second).
Stats: <a href="/api/stats" style="color:#9cf">/api/stats</a></p>
{{sections}}
<script>
setInterval(() => document.querySelectorAll("img[data-cam]").forEach(img => {
  img.src = `/api/cameras/${img.dataset.cam}/snapshot.jpg?t=${Date.now()}`;
}), 1000);
</script></body></html>
"""


def build_app(
    pipelines: Mapping[str, CameraPipeline], api_token: str | None, stream_token: str | None
) -> web.Application:
    app = web.Application(middlewares=[_auth_middleware(api_token)])
    app[PIPELINES_KEY] = dict(pipelines)
    hubs = {p.output: p.hub for p in pipelines.values()}
    app.add_routes(stream_routes(hubs, stream_token))
    app.add_routes(
        [
            web.get("/", index),
            web.get("/healthz", healthz),
            web.get("/api/stats", stats),
            web.get("/api/cameras/{name}/snapshot.jpg", snapshot),
        ]
    )
    return app
