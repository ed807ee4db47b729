"""Who may do what over the web API, and what bad or hostile requests get back (issue: security review).

Each test is one finding of the review: it failed before the fix.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from webkit import AUTH, applied, login, make_app, run, serve

from deid_sidecar.config import Method, parse_config
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.web import auth as auth_module
from deid_sidecar.web.auth import WebUser
from deid_sidecar.web.cameras import API_SOURCE_PATTERN, PROBE_FAILED
from deid_sidecar.web.uploads import PROTECT_LIST

USERS = {
    "vic": WebUser("vic", "pw-viewer-0123", admin=False),
    "ada": WebUser("ada", "pw-admin-0123", admin=True),
}


def users_app(pipeline: CameraPipeline, **kwargs: Any) -> Any:
    return make_app({"cam": pipeline}, token=None, users=USERS, **kwargs)


# --- 1. no ${ENV} from the API --------------------------------------------------------------------


@pytest.mark.parametrize("route", ["/api/probe", "/api/cameras"])
def test_env_references_in_api_input_are_refused_not_expanded(
    pipeline: CameraPipeline, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    monkeypatch.setenv("DEID_API_TOKEN", "the-real-admin-token-xyz")

    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            for source in [
                "file:/nonexistent/${DEID_API_TOKEN}",
                "http://127.0.0.1:9/leak?k=${DEID_API_TOKEN}",
            ]:
                payload = {"source": source} if route == "/api/probe" else {"name": "x", "source": source}
                reply = await client.post(route, json=payload, headers=AUTH)
                text = await reply.text()
                assert reply.status == 400 and "config file only" in text
                assert "the-real-admin-token-xyz" not in text

    run(body)


# --- 2. a viewer cannot unmask ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [{"protect": ["license_plate"]}, {"method": "blur"}],
    ids=["protect-shrunk", "method-weaker"],
)
def test_a_viewer_may_not_make_a_change_that_masks_less(
    pipeline: CameraPipeline, change: dict[str, Any]
) -> None:
    async def body() -> None:
        async with serve(users_app(pipeline)) as client:
            viewer = await login(client, "vic", "pw-viewer-0123")
            await client.patch(
                "/api/cameras/cam", json={"method": "fill"}, headers=viewer
            )  # masks more: fine
            reply = await client.patch("/api/cameras/cam", json=change, headers=viewer)
            assert reply.status == 403 and "masks less" in (await reply.json())["error"]
            camera = await (await client.get("/api/cameras/cam")).json()
            assert camera["protect"] == ["face", "license_plate"] and camera["method"] == "fill"
            await applied(pipeline)  # the camera's worker applies settings between frames
            assert pipeline.processor.anonymizer.method is Method.FILL

    run(body)


def test_a_viewer_may_stop_but_not_restart_or_turn_detection_back_on(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(users_app(pipeline)) as client:
            viewer = await login(client, "vic", "pw-viewer-0123")
            assert (
                await client.patch("/api/cameras/cam", json={"detection": False}, headers=viewer)
            ).status == 200
            assert (
                await client.patch("/api/cameras/cam", json={"detection": True}, headers=viewer)
            ).status == 403
            assert (await client.post("/api/cameras/cam/stop", headers=viewer)).status == 200
            assert (await client.post("/api/cameras/cam/start", headers=viewer)).status == 403
            await applied(pipeline)  # the camera's worker applies settings between frames
            assert pipeline.paused and not pipeline.processor.detection_enabled

    run(body)


def test_an_admin_may_unmask_and_it_is_audited(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(users_app(pipeline)) as client:
            admin = await login(client, "ada", "pw-admin-0123")
            reply = await client.patch("/api/cameras/cam", json={"protect": ["face"]}, headers=admin)
            assert reply.status == 200 and (await reply.json())["protect"] == ["face"]
            entries = (await (await client.get("/api/audit")).json())["entries"]
            assert [(e["user"], e["camera"]) for e in entries] == [("ada", "cam")]
            assert "protect" in entries[0]["event"] and "masks less" in entries[0]["event"]

    run(body)


# --- 3. bounds are the config schema's --------------------------------------------------------------


@pytest.mark.parametrize("fps", [5e-324, 0.5, 61, float("inf")])
def test_fps_outside_the_config_bounds_is_refused_and_the_camera_lives(
    pipeline: CameraPipeline, fps: float
) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            raw = json.dumps({"fps": fps}) if fps != float("inf") else '{"fps": 1e999}'
            reply = await client.patch(
                "/api/cameras/cam", data=raw, headers={**AUTH, "Content-Type": "application/json"}
            )
            assert reply.status == 400 and "fps" in (await reply.json())["error"]
            await asyncio.sleep(0.3)
            assert pipeline.fps == 10 and pipeline._thread.is_alive()

    run(body)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"height": None}, "height"),
        ({"fps": "10"}, "fps"),
        ({"fps": True}, "fps"),
        ({"detection": 1}, "detection"),
        ({"protect": ["face", "face"]}, "protect"),
    ],
)
def test_patch_takes_only_values_of_the_documented_type(
    pipeline: CameraPipeline, body: Any, key: str
) -> None:
    async def check() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            reply = await client.patch("/api/cameras/cam", json=body, headers=AUTH)
            assert reply.status == 400 and key in (await reply.json())["error"]

    run(check)


# --- 4. the probe is no scanner ---------------------------------------------------------------------


def test_probe_is_for_admins_and_says_the_same_for_every_failure(
    pipeline: CameraPipeline, clip: Path, tmp_path: Path
) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts, never answers
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # refused
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("hello")
    config = parse_config({"server": {"media_dirs": [str(tmp_path)]}})

    async def body() -> None:
        async with serve(users_app(pipeline, config=config)) as client:
            viewer = await login(client, "vic", "pw-viewer-0123")
            refused = await client.post("/api/probe", json={"source": f"file:{clip}"}, headers=viewer)
            assert refused.status == 403
            await client.post("/logout")
            admin = await login(client, "ada", "pw-admin-0123")
            answers = []
            for source in [
                f"rtsp://127.0.0.1:{closed_port}/x",
                f"http://127.0.0.1:{silent.getsockname()[1]}/x",
                f"file:{not_video}",
            ]:
                reply = await client.post("/api/probe", json={"source": source}, headers=admin)
                assert reply.status == 422
                answers.append((await reply.json())["error"])
            assert answers == [PROBE_FAILED] * 3
            outside = await client.post("/api/probe", json={"source": f"file:{clip}"}, headers=admin)
            assert outside.status == 403 and "media_dirs" in (await outside.json())["error"]

    try:
        run(body)
    finally:
        silent.close()


def test_probes_are_bounded_and_do_not_stall_snapshots(
    pipeline: CameraPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("deid_sidecar.web.cameras.PROBE_OPEN_S", 3.0)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(50)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/x"

    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            probes = [
                asyncio.ensure_future(client.post("/api/probe", json={"source": url}, headers=AUTH))
                for _ in range(12)
            ]
            await asyncio.sleep(0.5)
            started = time.monotonic()
            snap = await client.get("/api/cameras/cam/snapshot.jpg", headers=AUTH)
            assert snap.status in (200, 503) and time.monotonic() - started < 2.0
            statuses = sorted([(await p).status for p in probes])
            assert statuses.count(429) == 10 and statuses.count(422) == 2

    try:
        run(body)
    finally:
        silent.close()


# --- 6. previews --------------------------------------------------------------------------------------


def test_preview_viewers_are_capped_per_camera(pipeline: CameraPipeline) -> None:
    config = parse_config({"server": {"preview_viewers": 2}})

    async def body() -> None:
        async with serve(make_app({"cam": pipeline}, config=config)) as client:
            watching = [await client.get("/api/cameras/cam/mjpeg", headers=AUTH) for _ in range(2)]
            assert all(r.status == 200 for r in watching)
            third = await client.get("/api/cameras/cam/mjpeg", headers=AUTH)
            assert third.status == 429 and "preview_viewers" in (await third.json())["error"]
            for reply in watching:
                reply.close()

    run(body)


def test_many_viewers_share_one_jpeg_encode_per_frame(pipeline: CameraPipeline) -> None:
    encodes = 0

    async def body() -> None:
        nonlocal encodes
        async with serve(make_app({"cam": pipeline})) as client:
            for _ in range(100):
                if pipeline.latest_jpeg is not None:
                    break
                await asyncio.sleep(0.05)
            original = pipeline.latest_jpeg
            assert original is not None

            def counted() -> bytes:
                nonlocal encodes
                encodes += 1
                time.sleep(0.05)
                return original()

            pipeline.latest_jpeg = counted  # as if the worker had just published this frame
            replies = await asyncio.gather(
                *(client.get("/api/cameras/cam/snapshot.jpg", headers=AUTH) for _ in range(20))
            )
            assert all(r.status == 200 for r in replies)

    run(body)
    assert encodes == 1


# --- 7, 8. sessions and logins ------------------------------------------------------------------------


def test_one_users_logins_never_evict_another_users_session(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        app = users_app(pipeline)
        access = app[auth_module.IDENTITY_KEY]
        admin_session, _ = access.new_session(auth_module.Identity("ada", True, "session"))
        for _ in range(auth_module.MAX_SESSIONS_PER_USER * 5):
            access.new_session(auth_module.Identity("vic", False, "session"))
        mine = [s for s in access._sessions.values() if s.identity.user == "vic"]
        assert len(mine) == auth_module.MAX_SESSIONS_PER_USER
        assert admin_session in access._sessions

    run(body)


def test_repeated_failed_logins_lock_out_the_guesser(
    pipeline: CameraPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth_module, "LOGIN_FAIL_DELAY_S", 0.0)

    async def body() -> None:
        async with serve(users_app(pipeline)) as client:
            guesses = [
                client.post(
                    "/login", data={"username": "ada", "password": f"guess{i}"}, allow_redirects=False
                )
                for i in range(20)
            ]
            statuses = [r.status for r in await asyncio.gather(*guesses)]
            assert statuses.count(302) == auth_module.FREE_LOGIN_FAILURES  # then locked out
            locked = await client.post(
                "/login", data={"username": "ada", "password": "pw-admin-0123"}, allow_redirects=False
            )
            assert locked.status == 429 and int(locked.headers["Retry-After"]) >= 1
            # even the right password waits: the lockout answers before looking at credentials
            assert "deid_session" not in locked.cookies
            form = await client.post(
                "/login",
                data={"username": "ada", "password": "x"},
                headers={"Accept": "text/html"},
                allow_redirects=False,
            )
            assert form.status == 302 and form.headers["Location"].startswith("/login?locked=")

    run(body)


def test_the_lockout_grows_and_a_success_clears_it() -> None:
    limiter = auth_module.LoginLimiter()
    keys = ["user:ada"]
    for _ in range(auth_module.FREE_LOGIN_FAILURES):
        limiter.failed(keys, 100.0)
    first = limiter.retry_after(keys, 100.0)
    limiter.failed(keys, 100.0)
    assert limiter.retry_after(keys, 100.0) == 2 * first
    limiter.succeeded(keys)
    assert limiter.retry_after(keys, 100.0) == 0


# --- 9. DNS rebinding ---------------------------------------------------------------------------------


def test_without_auth_a_foreign_host_is_refused(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        app = make_app({"cam": pipeline}, token=None, host="127.0.0.1")
        async with serve(app) as client:
            evil = {"Host": "evil.example", "Origin": "http://evil.example"}
            reply = await client.patch("/api/cameras/cam", json={"protect": ["face"]}, headers=evil)
            assert reply.status == 421 and "allowed_hosts" in (await reply.json())["error"]
            assert (await client.get("/api/stats", headers={"Host": "evil.example"})).status == 421
            assert (await client.get("/api/stats", headers={"Host": "localhost:8080"})).status == 200
            assert (await client.get("/healthz", headers={"Host": "deid-sidecar"})).status == 200
        config = parse_config({"server": {"allowed_hosts": ["nvr.lan"]}})
        async with serve(make_app({"cam": pipeline}, token=None, config=config)) as client:
            assert (await client.get("/api/stats", headers={"Host": "nvr.lan:8080"})).status == 200

    run(body)


# --- 10, 11. bad requests are 4xx JSON, never tracebacks --------------------------------------------


def test_protecting_a_kind_without_a_detector_is_a_clear_400(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            reply = await client.patch("/api/cameras/cam", json={"protect": ["face", "person"]}, headers=AUTH)
            assert reply.status == 409 and "detection.person.enabled" in (await reply.json())["error"]

    run(body)


def test_deeply_nested_json_is_a_400(pipeline: CameraPipeline, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            deep = "[" * 100_000 + "]" * 100_000
            headers = {**AUTH, "Content-Type": "application/json"}
            reply = await client.patch("/api/cameras/cam", data='{"protect": ' + deep + "}", headers=headers)
            assert reply.status == 400 and "error" in await reply.json()

    run(body)
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


def test_a_nul_in_a_header_is_refused_without_a_traceback(
    pipeline: CameraPipeline, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            port = client.server.port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bad: a\x00b\r\n\r\n")
            await writer.drain()
            status_line = await reader.readline()
            writer.close()
            assert b" 400 " in status_line

    with caplog.at_level("WARNING"):
        run(body)
    assert not [r for r in caplog.records if r.exc_info]
    assert "bad HTTP request refused" in caplog.text


def test_a_wrong_method_answers_405_with_allow(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            reply = await client.put("/api/cameras/cam", headers=AUTH)
            assert reply.status == 405 and "PATCH" in reply.headers["Allow"]
            assert "error" in await reply.json()

    run(body)


# --- 13. names and removal of added cameras -------------------------------------------------------


def test_a_camera_named_like_an_output_stream_is_refused(pipeline: CameraPipeline, clip: Path) -> None:
    config = parse_config({"server": {"media_dirs": [str(clip.parent)]}})

    async def body() -> None:
        async with serve(make_app({"cam": pipeline}, config=config)) as client:
            new = {"name": "cam_anon", "source": f"file:{clip}", "loop": True}
            reply = await client.post("/api/cameras", json=new, headers=AUTH)
            assert reply.status == 409 and "never share a name" in (await reply.json())["error"]

    run(body)


def test_an_added_camera_can_be_removed_and_a_configured_one_cannot(
    pipeline: CameraPipeline, clip: Path
) -> None:
    config = parse_config({"server": {"media_dirs": [str(clip.parent)]}})

    async def body() -> None:
        app = make_app({"cam": pipeline}, config=config)
        async with serve(app) as client:
            new = {"name": "yard", "source": f"file:{clip}", "loop": True, "protect": ["face"]}
            assert (await client.post("/api/cameras", json=new, headers=AUTH)).status == 201
            assert (await client.delete("/api/cameras/cam", headers=AUTH)).status == 409
            removed = await client.delete("/api/cameras/yard", headers=AUTH)
            assert removed.status == 200 and (await removed.json()) == {"removed": "yard"}
            assert (await client.get("/api/cameras/yard", headers=AUTH)).status == 404
            assert (await client.get("/streams/yard_anon.ts", headers=AUTH)).status == 404

    run(body)


def test_the_spec_and_the_server_check_sources_and_protect_lists_alike() -> None:
    spec_file = Path(__file__).resolve().parents[1] / "deid_sidecar" / "web" / "static" / "openapi.yaml"
    spec = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
    assert spec["components"]["schemas"]["Source"]["pattern"] == API_SOURCE_PATTERN
    image_protect = spec["paths"]["/api/image"]["post"]["parameters"][0]["schema"]["pattern"]
    assert image_protect == f"^{PROTECT_LIST.pattern}$"


def test_a_wrong_authorization_header_is_refused_even_with_a_valid_session(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(users_app(pipeline)) as client:
            await login(client, "vic", "pw-viewer-0123")
            assert (await client.get("/api/stats")).status == 200
            assert (await client.get("/api/stats", headers={"Authorization": "Basic dmljOng="})).status == 401

    run(body)
