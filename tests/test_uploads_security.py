"""Uploads under attack: decompression bombs, other users' jobs, and bodies that break the format.

- A picture is measured from its header before anything decodes it: a 400 KB PNG claiming
  20000x20000 pixels (1.2 GB decoded) is a 413 in milliseconds, on every route that takes images.
- A job is its owner's: another user gets the same 404 as for an id that never existed; admins and
  the API token see every job.
- Whatever the client sends, a mistake of its own is a 4xx JSON error naming it, never a 500 with a
  traceback in the server log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from imagebombs import PeakRss, png_bomb, video_bomb
from webkit import AUTH, TOKEN, run, secret_factory, serve, upload_form

from deid_sidecar.config import parse_config
from deid_sidecar.web.auth import CSRF_COOKIE, CSRF_HEADER, WebUser
from deid_sidecar.web.server import build_app

#: Generous bounds: the bomb took 5 to 40 s and 2.3 to 3.1 GB when it was decoded.
FAST_S = 2.0
SMALL_MB = 300.0


def make_app(tmp_path: Path, **kwargs: Any) -> web.Application:
    kwargs.setdefault("detector_factory", secret_factory)
    return build_app({}, kwargs.pop("token", TOKEN), None, jobs_dir=tmp_path / "jobs", **kwargs)


def small_png() -> bytes:
    return cv2.imencode(".png", np.full((48, 64, 3), 120, np.uint8))[1].tobytes()


def leftovers(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "jobs"
    return sorted(folder.iterdir()) if folder.exists() else []


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.getMessage().endswith(" failed")]


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb(20000, 20000)


# --- decompression bombs ------------------------------------------------------------------------------


@pytest.mark.parametrize("sent_as", ["raw image/png body", "multipart file part"])
def test_post_image_refuses_a_bomb_from_its_header(tmp_path: Path, bomb: bytes, sent_as: str) -> None:
    assert len(bomb) < 500_000

    async def body() -> None:
        async with serve(make_app(tmp_path)) as client:
            with PeakRss() as rss:
                started = time.perf_counter()
                if sent_as.startswith("raw"):
                    headers = {**AUTH, "Content-Type": "image/png"}
                    reply = await client.post("/api/image", data=bomb, headers=headers)
                else:
                    reply = await client.post("/api/image", data=upload_form(bomb, "b.png"), headers=AUTH)
                error = (await reply.json())["error"]
                elapsed = time.perf_counter() - started
            assert reply.status == 413, error
            assert "20000x20000 pixels (400.0 megapixels)" in error and "limit of 40 megapixels" in error
            assert elapsed < FAST_S
            assert rss.growth_mb < SMALL_MB

    run(body)


def test_an_image_job_refuses_a_bomb_and_keeps_nothing(tmp_path: Path, bomb: bytes) -> None:
    async def body() -> None:
        async with serve(make_app(tmp_path)) as client:
            with PeakRss() as rss:
                started = time.perf_counter()
                reply = await client.post("/api/jobs", data=upload_form(bomb, "bomb.png"), headers=AUTH)
                error = (await reply.json())["error"]
                elapsed = time.perf_counter() - started
            assert reply.status == 413 and "20000x20000" in error, error
            assert elapsed < FAST_S and rss.growth_mb < SMALL_MB
            assert leftovers(tmp_path) == []
            assert (await (await client.get("/api/jobs", headers=AUTH)).json())["jobs"] == []

    run(body)


def test_a_video_job_with_frames_above_the_limit_is_refused(tmp_path: Path) -> None:
    clip = video_bomb(tmp_path / "huge.mov", 9000, 9000).read_bytes()

    async def body() -> None:
        async with serve(make_app(tmp_path)) as client:
            reply = await client.post("/api/jobs", data=upload_form(clip, "huge.mov"), headers=AUTH)
            error = (await reply.json())["error"]
            assert reply.status == 413 and "9000x9000" in error and "8192x8192" in error, error
            assert str(tmp_path) not in error
            assert leftovers(tmp_path) == []

    run(body)


def test_an_image_of_a_type_not_accepted_is_refused_whatever_its_name(tmp_path: Path) -> None:
    ppm = b"P6\n20000 20000\n255\n"  # OpenCV picks its decoder by content: this would be a PPM bomb

    async def body() -> None:
        async with serve(make_app(tmp_path)) as client:
            raw = await client.post("/api/image", data=ppm, headers={**AUTH, "Content-Type": "image/png"})
            assert raw.status == 415 and "not a readable image" in (await raw.json())["error"]
            job = await client.post("/api/jobs", data=upload_form(ppm, "x.png"), headers=AUTH)
            assert job.status == 415 and "not a readable image" in (await job.json())["error"]

    run(body)


# --- jobs belong to their owner ----------------------------------------------------------------------

USERS = {
    "alice": WebUser("alice", "pw-alice-12345", False),
    "bob": WebUser("bob", "pw-bob-12345", False),
    "root": WebUser("root", "pw-root-12345", True),
}


@dataclass
class Browser:
    """One user's logged-in session (its own cookie jar) against the test server."""

    server: TestServer
    session: aiohttp.ClientSession
    csrf: str = ""

    async def login(self, name: str) -> Browser:
        form = {"username": name, "password": USERS[name].password}
        reply = await self.session.post(self.server.make_url("/login"), data=form, allow_redirects=False)
        assert reply.status == 302 and "failed" not in reply.headers["Location"]
        self.csrf = reply.cookies[CSRF_COOKIE].value
        return self

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.server.make_url(path)) as reply:
            is_json = reply.content_type == "application/json"
            return reply.status, await (reply.json() if is_json else reply.read())

    async def new_job(self, data: bytes, filename: str) -> str:
        url = self.server.make_url("/api/jobs")
        async with self.session.post(
            url, data=upload_form(data, filename), headers={CSRF_HEADER: self.csrf}
        ) as reply:
            assert reply.status == 202, await reply.text()
            job_id: str = (await reply.json())["id"]
        deadline = time.monotonic() + 30
        while (await self.get(f"/api/jobs/{job_id}"))[1]["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        return job_id


def test_jobs_belong_to_their_owner(tmp_path: Path) -> None:
    async def body() -> None:
        async with serve(make_app(tmp_path, users=USERS)) as client, AsyncExitStack() as stack:

            async def browser(name: str) -> Browser:
                jar = aiohttp.CookieJar(unsafe=True)  # the server is 127.0.0.1
                session = await stack.enter_async_context(aiohttp.ClientSession(cookie_jar=jar))
                return await Browser(client.server, session).login(name)

            alice, bob, root = await browser("alice"), await browser("bob"), await browser("root")
            job_id = await alice.new_job(small_png(), "holiday.png")
            unknown = "0" * 32
            for tail in ("", "/result", "/audit"):
                status, _ = await alice.get(f"/api/jobs/{job_id}{tail}")
                assert status == 200, tail
                status, theirs = await bob.get(f"/api/jobs/{job_id}{tail}")
                missing_status, missing = await bob.get(f"/api/jobs/{unknown}{tail}")
                assert status == missing_status == 404, tail
                # No existence oracle: someone else's job reads exactly like one that never was.
                assert theirs["error"].replace(job_id, "<id>") == missing["error"].replace(unknown, "<id>")
                status, _ = await root.get(f"/api/jobs/{job_id}{tail}")
                assert status == 200, tail
                reply = await client.get(f"/api/jobs/{job_id}{tail}", headers=AUTH)
                assert reply.status == 200, tail  # the API token is admin

            def ids(listing: Any) -> list[str]:
                return [job["id"] for job in listing["jobs"]]

            assert ids((await alice.get("/api/jobs"))[1]) == [job_id]
            assert ids((await bob.get("/api/jobs"))[1]) == []
            assert ids((await root.get("/api/jobs"))[1]) == [job_id]
            bobs = await bob.new_job(small_png(), "mine.png")
            assert ids((await bob.get("/api/jobs"))[1]) == [bobs]
            assert ids((await alice.get("/api/jobs"))[1]) == [job_id]
            assert set(ids((await root.get("/api/jobs"))[1])) == {job_id, bobs}

    run(body)


# --- bad input is a 4xx naming it ----------------------------------------------------------------------


def test_protecting_persons_while_their_detector_is_off_is_a_400(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The default config has `detection.person.enabled: false`; the real detector factory is used."""

    async def body() -> None:
        app = build_app({}, TOKEN, None, config=parse_config({}), jobs_dir=tmp_path / "jobs")
        async with serve(app) as client:
            headers = {**AUTH, "Content-Type": "image/png"}
            image = await client.post("/api/image?protect=face,person", data=small_png(), headers=headers)
            error = (await image.json())["error"]
            assert image.status == 409 and "person" in error and "detection.person.enabled is false" in error
            form = upload_form(small_png(), "x.png", protect="person")
            job = await client.post("/api/jobs", data=form, headers=AUTH)
            assert job.status == 409 and "detection.person.enabled is false" in (await job.json())["error"]
            assert leftovers(tmp_path) == []
            assert (await (await client.get("/api/jobs", headers=AUTH)).json())["jobs"] == []
        assert tracebacks(caplog) == []

    run(body)


def test_a_detector_that_cannot_load_is_a_503_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's fault, not the request's: named, and logged without a traceback."""
    config = parse_config({"models_dir": str(tmp_path / "no-models")})

    async def body() -> None:
        async with serve(build_app({}, TOKEN, None, config=config)) as client:
            headers = {**AUTH, "Content-Type": "image/png"}
            reply = await client.post("/api/image?protect=face", data=small_png(), headers=headers)
            assert reply.status == 503 and "cannot be loaded" in (await reply.json())["error"]
        assert tracebacks(caplog) == []

    run(body)


BOUNDARY = "deid-test-boundary"


def multipart(*parts: bytes, end: bool = True) -> bytes:
    body = b"".join(b"--" + BOUNDARY.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + BOUNDARY.encode() + b"--\r\n" if end else b"")


FILE_HEADER = b'Content-Disposition: form-data; name="file"; filename="a.png"'
MALFORMED = {
    "a header line without a colon": FILE_HEADER + b"\r\nno colon here\r\n\r\ndata",
    "a non-ASCII header name (UTF-8)": "Cöntent-Disposition: form-data; name=file".encode() + b"\r\n\r\ndata",
    "a non-ASCII header name (Latin-1)": "Cöntent-Disposition: form-data".encode("latin-1") + b"\r\n\r\ndata",
    "a NUL in a header": b'Content-Disposition: form-data; name="fi\x00le"\r\n\r\ndata',
    "a header line of 100 KB": FILE_HEADER + b"\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\ndata",
    "a nested multipart without its boundary": FILE_HEADER + b"\r\nContent-Type: multipart/mixed\r\n\r\ndata",
}


@pytest.mark.parametrize("route", ["/api/jobs", "/api/image"])
@pytest.mark.parametrize("problem", MALFORMED)
def test_a_malformed_multipart_part_is_a_400_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, route: str, problem: str
) -> None:
    async def body() -> None:
        async with serve(make_app(tmp_path)) as client:
            headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            reply = await client.post(route, data=multipart(MALFORMED[problem]), headers=headers)
            error = (await reply.json())["error"]
            assert reply.status == 400, error
            assert error.startswith(("malformed multipart body", "nested multipart")), error
            assert leftovers(tmp_path) == []
        assert tracebacks(caplog) == []

    run(body)


@pytest.mark.parametrize("route", ["/api/jobs", "/api/image"])
def test_a_body_cut_before_its_closing_boundary_is_a_400(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, route: str
) -> None:
    async def body() -> None:
        async with serve(make_app(tmp_path)) as client:
            headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            cut = multipart(
                b'Content-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n\x89PNG', end=False
            )
            reply = await client.post(route, data=cut, headers=headers)
            error = (await reply.json())["error"]
            assert reply.status == 400 and "malformed multipart body" in error, error
        assert tracebacks(caplog) == []

    run(body)


@pytest.mark.parametrize(
    "name",
    ['name="f\u00efle"'.encode(), 'name="f\u00efle"'.encode("latin-1"), b"name*=UTF-8''f%C3%AFle"],
    ids=["utf-8", "latin-1", "rfc2231"],
)
def test_a_non_ascii_field_name_is_named_in_a_400(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: bytes
) -> None:
    async def body() -> None:
        async with serve(make_app(tmp_path)) as client:
            headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            part = b"Content-Disposition: form-data; " + name + b"\r\n\r\nface"
            job = await client.post("/api/jobs", data=multipart(part), headers=headers)
            assert job.status == 400 and "unexpected form field" in (await job.json())["error"]
            image = await client.post("/api/image", data=multipart(part), headers=headers)
            assert image.status == 400 and "`file` part" in (await image.json())["error"]
        assert tracebacks(caplog) == []

    run(body)


def test_a_form_field_is_bounded_while_it_is_read(tmp_path: Path) -> None:
    """A chunked body has no Content-Length to refuse up front: the field stops at its limit."""

    async def body() -> None:
        async with serve(make_app(tmp_path)) as client:

            async def chunks() -> AsyncIterator[bytes]:
                yield (
                    b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="protect"\r\n\r\n'
                )
                for _ in range(64):
                    yield b"f" * 65536

            headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            reply = await client.post("/api/jobs", data=chunks(), headers=headers)
            assert reply.status == 400 and "too long" in (await reply.json())["error"]

    run(body)


@pytest.fixture(autouse=True)
def _capture_server_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="deid_sidecar.web.server")
