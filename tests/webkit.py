"""Serving the web app in tests: a test client, an app over real pipelines, logins."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from livekit import SecretDetector, wait_applied

from deid_sidecar.config import parse_config
from deid_sidecar.core.detections import Label
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.web.auth import CSRF_COOKIE, CSRF_HEADER
from deid_sidecar.web.server import build_app

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def secret_factory(config: Any, labels: set[Label]) -> SecretDetector:
    return SecretDetector()


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[TestClient[Any, Any]]:
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def make_app(pipelines: dict[str, CameraPipeline], **kwargs: Any) -> web.Application:
    kwargs.setdefault("detector_factory", secret_factory)
    token = kwargs.pop("token", TOKEN)
    return build_app(pipelines, token, None, **kwargs)


async def login(client: TestClient[Any, Any], username: str, password: str) -> dict[str, str]:
    """Sign in with the form; the headers a cookie-authenticated change needs (CSRF)."""
    reply = await client.post(
        "/login", data={"username": username, "password": password}, allow_redirects=False
    )
    assert reply.status == 302 and "failed" not in reply.headers["Location"], reply.headers
    csrf = client.session.cookie_jar.filter_cookies(client.make_url("/"))[CSRF_COOKIE].value
    return {CSRF_HEADER: csrf}


def file_camera(clip: Path, name: str = "cam", **config: Any) -> CameraPipeline:
    """A started pipeline of a looping `file:` camera, masking with the SecretDetector."""
    parsed = parse_config(
        {**config, "cameras": {name: {"source": f"file:{clip}", "loop": True, "output": {"fps": 10}}}}
    )
    pipeline = CameraPipeline(name, parsed.cameras[name], parsed, detector=SecretDetector())
    pipeline.start()
    return pipeline


async def applied(pipeline: CameraPipeline) -> None:
    """Wait (off the event loop) until the camera's worker applied its newest settings."""
    await asyncio.get_running_loop().run_in_executor(None, wait_applied, pipeline)


def upload_form(data: bytes, filename: str, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("file", io.BytesIO(data), filename=filename, content_type="application/octet-stream")
    return form
