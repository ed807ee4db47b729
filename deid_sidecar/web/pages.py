"""HTML pages and their static files: plain HTML/JS/CSS from `static/`, no build step.

Pages carry no data; their script reads the JSON API. Only names matching `STATIC_NAME` are served,
from the package's own folder, so no request can reach another file.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from deid_sidecar import __version__
from deid_sidecar.web.auth import SECURITY_HEADERS, identity_of, read_static, render_page
from deid_sidecar.web.state import ApiError, state_of

__all__ = ["SECURITY_HEADERS", "cameras_page", "jobs_page", "render_page", "session_info", "static_file"]

STATIC_NAME = re.compile(r"^[a-z0-9_-]{1,40}\.(js|css|png|svg)$")
CONTENT_TYPES = {"js": "text/javascript", "css": "text/css", "png": "image/png", "svg": "image/svg+xml"}
# Pages are rendered as the login page is (auth.render_page, with the same SECURITY_HEADERS).


async def cameras_page(request: web.Request) -> web.Response:
    return render_page("cameras.html")


async def jobs_page(request: web.Request) -> web.Response:
    return render_page("jobs.html")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    match = STATIC_NAME.fullmatch(name)
    if match is None:
        raise ApiError(404, "no such static file")
    try:
        data = read_static(name)
    except (FileNotFoundError, IsADirectoryError):
        raise ApiError(404, "no such static file") from None
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    return web.Response(body=data, content_type=CONTENT_TYPES[match.group(1)], headers=headers)


async def session_info(request: web.Request) -> web.Response:
    state = state_of(request)
    identity = identity_of(request)
    info: dict[str, Any] = {
        "user": identity.user,
        "admin": identity.admin,
        "via": identity.via,
        "auth_enabled": state.auth.enabled,
        "allow_original_view": state.allow_original_view and identity.admin,
        "version": __version__,
        "upload_limit_bytes": state.max_upload_bytes,
        "config_file": state.config_path.name if state.config_path else None,
    }
    return web.json_response(info)
