"""HTTP API of the web UI, against a real camera pipeline fed from a synthetic `file:` clip."""

from __future__ import annotations

import asyncio
import io
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import cv2
import numpy as np
import pytest
import yaml
from aiohttp.test_utils import TestClient
from livekit import SecretDetector
from webkit import AUTH, TOKEN, applied, make_app, run, serve, upload_form

from deid_sidecar.config import Method, parse_config
from deid_sidecar.core.detections import Label
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.web.auth import CSRF_COOKIE, CSRF_HEADER, WebUser
from deid_sidecar.web.server import build_app, generated_token
from deid_sidecar.web.state import STATE_KEY


class SlowDetector(SecretDetector):
    def detect(self, image: np.ndarray) -> Any:
        time.sleep(0.03)
        return super().detect(image)


async def wait_job(client: TestClient[Any, Any], job_id: str, limit_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = await (await client.get(f"/api/jobs/{job_id}", headers=AUTH)).json()
        if job["state"] in ("done", "failed"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


# --- auth -------------------------------------------------------------------------------------------


def test_auth_required_forbidden_ok(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            assert (await client.get("/healthz")).status == 200
            assert (await client.get("/api/stats")).status == 401
            bad = await client.get("/api/stats", headers={"Authorization": "Bearer wrong"})
            assert bad.status == 401 and "error" in await bad.json()
            assert (await client.get("/api/stats", headers=AUTH)).status == 200
            assert (await client.get("/metrics")).status == 401
            page = await client.get("/", allow_redirects=False)
            assert page.status == 302 and page.headers["Location"].startswith("/login")
            assert (await client.get("/login")).status == 200

    run(body)


def test_cookie_login_needs_csrf_for_changes(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            failed = await client.post("/login", data={"token": "nope"}, allow_redirects=False)
            assert failed.status == 302 and "failed" in failed.headers["Location"]
            ok = await client.post(
                "/login", data={"token": TOKEN, "next": "//evil.example"}, allow_redirects=False
            )
            assert ok.status == 302 and ok.headers["Location"] == "/"
            csrf = ok.cookies[CSRF_COOKIE].value
            assert (await client.get("/api/stats")).status == 200  # the session cookie is enough to read
            no_csrf = await client.patch("/api/cameras/cam", json={"method": "fill"})
            assert no_csrf.status == 403
            foreign = await client.patch(
                "/api/cameras/cam",
                json={"method": "fill"},
                headers={CSRF_HEADER: csrf, "Origin": "http://evil.example"},
            )
            assert foreign.status == 403
            good = await client.patch(
                "/api/cameras/cam", json={"method": "fill"}, headers={CSRF_HEADER: csrf}
            )
            assert good.status == 200
            await applied(pipeline)  # the camera's worker applies settings between frames
            assert pipeline.processor.anonymizer.method is Method.FILL

    run(body)


def test_auth_on_by_default_beyond_localhost(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        app = make_app({"cam": pipeline}, token=None, host="0.0.0.0")
        token = generated_token(app)
        assert token
        async with serve(app) as client:
            assert (await client.get("/api/stats")).status == 401
            session = await client.get("/api/session", headers={"Authorization": f"Bearer {token}"})
            assert session.status == 200
            assert token not in await session.text()
        assert generated_token(make_app({"cam": pipeline}, token=None, host="127.0.0.1")) is None

    run(body)


def test_user_login_and_admin_only_routes(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        users = {"ann": WebUser("ann", "pw-ann"), "root": WebUser("root", "pw-root", admin=True)}
        async with serve(make_app({"cam": pipeline}, token=None, users=users)) as client:
            wrong = await client.post(
                "/login", data={"username": "ann", "password": "x"}, allow_redirects=False
            )
            assert "failed" in wrong.headers["Location"]
            await client.post("/login", data={"username": "ann", "password": "pw-ann"}, allow_redirects=False)
            csrf = client.session.cookie_jar.filter_cookies(client.make_url("/"))[CSRF_COOKIE].value
            who = await (await client.get("/api/session")).json()
            assert who["user"] == "ann" and not who["admin"]
            save = await client.post("/api/config/save", headers={CSRF_HEADER: csrf})
            assert save.status == 403

    run(body)


# --- cameras ----------------------------------------------------------------------------------------


def test_patch_changes_method_and_detection_live(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            reply = await client.patch("/api/cameras/cam", json={"method": "pixelate"}, headers=AUTH)
            assert reply.status == 200 and (await reply.json())["method"] == "pixelate"
            await applied(pipeline)  # the camera's worker applies settings between frames
            assert pipeline.processor.anonymizer.method is Method.PIXELATE
            await client.patch("/api/cameras/cam", json={"detection": False}, headers=AUTH)
            await applied(pipeline)  # the camera's worker applies settings between frames
            assert pipeline.processor.detection_enabled is False
            camera = await (await client.get("/api/cameras/cam", headers=AUTH)).json()
            assert camera["detection"] is False and camera["source"].startswith("file:") is False
            later = await client.patch("/api/cameras/cam", json={"fps": 5, "height": 120}, headers=AUTH)
            assert (await later.json())["fps"] == 5 and (await later.json())["height"] == 120
            await applied(pipeline)  # only the camera's worker thread may touch its encoder
            assert pipeline.fps == 5 and pipeline.reader.target_height == 120

    run(body)


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"colour": "red"}, 400, "colour"),
        ({"method": "sparkle"}, 400, "method"),
        ({"protect": []}, 400, "protect"),
        ({"fps": 0}, 400, "fps"),
        ("not an object", 400, "object"),
    ],
)
def test_patch_bad_input_names_the_problem(
    pipeline: CameraPipeline, body: Any, status: int, names: str
) -> None:
    async def run_it() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            reply = await client.patch("/api/cameras/cam", json=body, headers=AUTH)
            assert reply.status == status
            assert names in (await reply.json())["error"]
            unknown = await client.get("/api/cameras/nope", headers=AUTH)
            assert unknown.status == 404 and "nope" in (await unknown.json())["error"]

    run(run_it)


def test_stop_pauses_and_start_resumes(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            stopped = await (await client.post("/api/cameras/cam/stop", headers=AUTH)).json()
            assert stopped["state"] == "paused" and pipeline.paused
            await applied(pipeline)  # the camera's worker applies settings between frames
            assert pipeline.processor.detection_enabled is False  # fail closed: whole frames masked
            started = await (await client.post("/api/cameras/cam/start", headers=AUTH)).json()
            await applied(pipeline)  # the camera's worker applies settings between frames
            assert not started["paused"] and pipeline.processor.detection_enabled is True

    run(body)


def test_protect_change_installs_a_new_detector(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        seen: list[set[Label]] = []

        def factory(config: Any, labels: set[Label]) -> SecretDetector:
            seen.append(labels)
            return SecretDetector()

        config = parse_config({"detection": {"person": {"model": "ssdlite-person", "enabled": True}}})
        async with serve(make_app({"cam": pipeline}, config=config, detector_factory=factory)) as client:
            before = pipeline.processor.detector
            reply = await client.patch("/api/cameras/cam", json={"protect": ["person"]}, headers=AUTH)
            assert (await reply.json())["protect"] == ["person"]
            assert seen == [{Label.PERSON}] and pipeline.processor.detector is not before

    run(body)


def test_mjpeg_preview_sends_anonymized_frames(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            reply = await client.get("/api/cameras/cam/mjpeg?frames=2", headers=AUTH)
            assert reply.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            assert (await reply.read()).count(b"Content-Type: image/jpeg") == 2

    run(body)


def test_original_view_is_off_by_default_and_audited(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            assert (await client.get("/api/cameras/cam/original.mjpeg", headers=AUTH)).status == 404
        async with serve(make_app({"cam": pipeline}, allow_original_view=True)) as client:
            reply = await client.get("/api/cameras/cam/original.mjpeg?frames=1", headers=AUTH)
            assert reply.status == 200 and b"image/jpeg" in await reply.read()
            audit = await (await client.get("/api/audit", headers=AUTH)).json()
            assert [(v["user"], v["camera"], v["event"]) for v in audit["entries"]] == [
                ("token", "cam", "original view start"),
                ("token", "cam", "original view end"),
            ]

    run(body)


def test_probe_reports_a_source_and_refuses_passwords_in_the_url(
    pipeline: CameraPipeline, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("deid_sidecar.web.cameras.PROBE_OPEN_S", 1.0)
    config = parse_config({"server": {"media_dirs": [str(clip.parent)]}})

    async def body() -> None:
        async with serve(make_app({"cam": pipeline}, config=config)) as client:
            ok = await (await client.post("/api/probe", json={"source": f"file:{clip}"}, headers=AUTH)).json()
            assert ok["ok"] and (ok["width"], ok["height"]) == (320, 240) and ok["codec"] == "h264"
            inline = await client.post(
                "/api/probe", json={"source": "rtsp://u:pw@127.0.0.1:1/x"}, headers=AUTH
            )
            assert inline.status == 400 and "no password in the URL" in (await inline.json())["error"]
            user = await client.post("/api/probe", json={"source": "rtsp://user@127.0.0.1:9/s"}, headers=AUTH)
            assert user.status == 400 and "no credentials" in (await user.json())["error"]
            failed = await client.post(
                "/api/probe", json={"source": "http://127.0.0.1:9/s?token=abc123"}, headers=AUTH
            )
            text = await failed.text()
            assert failed.status == 422 and "abc123" not in text and "token=***" in text

    run(body)


def test_add_camera_and_save_config_keeps_env_refs(
    pipeline: CameraPipeline, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEID_TOKEN", "very-secret-0123456789")
    config_file = tmp_path / "deid.yaml"
    original = {
        "server": {"token": "${DEID_TOKEN}"},
        "cameras": {"cam": {"source": f"file:{clip}", "loop": True, "output": {"fps": 10}}},
    }
    config_file.write_text(yaml.safe_dump(original), encoding="utf-8")
    config = parse_config(
        {**original, "server": {"token": "very-secret-0123456789", "media_dirs": [str(clip.parent)]}}
    )

    async def body() -> None:
        app = make_app({"cam": pipeline}, config=config, config_path=config_file)
        async with serve(app) as client:
            await client.patch("/api/cameras/cam", json={"method": "fill"}, headers=AUTH)
            new = {"name": "yard", "source": f"file:{clip}", "loop": True, "protect": ["face"], "fps": 5}
            added = await client.post("/api/cameras", json=new, headers=AUTH)
            assert added.status == 201, await added.text()
            assert (await added.json())["probe"]["width"] == 320
            twice = await client.post("/api/cameras", json=new, headers=AUTH)
            assert twice.status == 409
            saved = await client.post("/api/config/save", headers=AUTH)
            assert saved.status == 200 and sorted((await saved.json())["cameras"]) == ["cam", "yard"]
            snap = None
            for _ in range(50):
                snap = await client.get("/api/cameras/yard/snapshot.jpg", headers=AUTH)
                if snap.status == 200:
                    break
                await asyncio.sleep(0.1)
            assert snap is not None and snap.status == 200
            yard = app[STATE_KEY].pipelines["yard"]
        written = config_file.read_text(encoding="utf-8")
        assert "${DEID_TOKEN}" in written and "very-secret-0123456789" not in written
        data = yaml.safe_load(written)
        assert data["cameras"]["cam"]["method"] == "fill"
        assert data["cameras"]["yard"]["protect"] == ["face"]
        assert yard.stats.snapshot()["state"] == "stopped"  # cleaned up with the web app
        assert "yard" not in app[STATE_KEY].pipelines

    run(body)


# --- jobs -------------------------------------------------------------------------------------------


def test_job_upload_progress_result_audit(pipeline: CameraPipeline, clip: Path, tmp_path: Path) -> None:
    clip_bytes = clip.read_bytes()

    async def body() -> None:
        app = make_app({"cam": pipeline}, jobs_dir=tmp_path / "jobs")
        async with serve(app) as client:
            form = upload_form(clip_bytes, "../../my clip!.mp4", protect="face", method="fill")
            reply = await client.post("/api/jobs", data=form, headers=AUTH)
            assert reply.status == 202, await reply.text()
            job = await reply.json()
            assert re.fullmatch(r"[0-9a-f]{32}", job["id"]) and job["filename"] == "my_clip_.mp4"
            done = await wait_job(client, job["id"])
            assert done["state"] == "done" and done["progress"] == 1.0 and done["frames"] == 20
            result = await client.get(f"/api/jobs/{job['id']}/result", headers=AUTH)
            assert result.status == 200 and "my_clip__anon.mp4" in result.headers["Content-Disposition"]
            with av.open(io.BytesIO(await result.read())) as container:
                assert sum(1 for _ in container.decode(video=0)) == 20
            audit = await (await client.get(f"/api/jobs/{job['id']}/audit", headers=AUTH)).json()
            assert len(audit["frames"]) == 20 and audit["input"]["path"] == "my_clip_.mp4"
            assert str(tmp_path) not in str(audit)
            listed = await (await client.get("/api/jobs", headers=AUTH)).json()
            assert [j["id"] for j in listed["jobs"]] == [job["id"]]
            left = sorted(p.name for p in (tmp_path / "jobs" / job["id"]).iterdir())
            assert left == ["audit.json", "my_clip__anon.mp4"]  # the original upload is gone

    run(body)


def test_image_job(pipeline: CameraPipeline, tmp_path: Path) -> None:
    async def body() -> None:
        _, png = cv2.imencode(".png", np.full((64, 64, 3), 100, np.uint8))
        async with serve(make_app({"cam": pipeline})) as client:
            reply = await client.post("/api/jobs", data=upload_form(png.tobytes(), "x.png"), headers=AUTH)
            done = await wait_job(client, (await reply.json())["id"])
            assert done["state"] == "done" and done["kind"] == "image"
            result = await client.get(f"/api/jobs/{done['id']}/result", headers=AUTH)
            assert (await result.read())[:4] == b"\x89PNG"

    run(body)


@pytest.mark.parametrize("limit", [1, 2])
def test_jobs_run_concurrently_within_the_limit(pipeline: CameraPipeline, clip: Path, limit: int) -> None:
    clip_bytes = clip.read_bytes()

    async def body() -> None:
        app = make_app({"cam": pipeline}, job_limit=limit, detector_factory=lambda c, labels: SlowDetector())
        async with serve(app) as client:
            ids = []
            for _ in range(3):
                reply = await client.post("/api/jobs", data=upload_form(clip_bytes, "c.mp4"), headers=AUTH)
                ids.append((await reply.json())["id"])
            most_running = 0
            while True:
                jobs = (await (await client.get("/api/jobs", headers=AUTH)).json())["jobs"]
                most_running = max(most_running, sum(j["state"] == "running" for j in jobs))
                if all(j["state"] == "done" for j in jobs):
                    break
                await asyncio.sleep(0.02)
            assert most_running == limit

    run(body)


def test_jobs_expire(pipeline: CameraPipeline, clip: Path, tmp_path: Path) -> None:
    clip_bytes = clip.read_bytes()

    async def body() -> None:
        app = make_app({"cam": pipeline}, jobs_dir=tmp_path / "jobs", job_ttl_s=60)
        async with serve(app) as client:
            reply = await client.post("/api/jobs", data=upload_form(clip_bytes, "c.mp4"), headers=AUTH)
            job = await wait_job(client, (await reply.json())["id"])
            jobs = app[STATE_KEY].jobs
            assert jobs.expire(now=time.time() + 30) == 0
            assert jobs.expire(now=time.time() + 61) == 1
            assert (await client.get(f"/api/jobs/{job['id']}", headers=AUTH)).status == 404
            assert not (tmp_path / "jobs" / job["id"]).exists()

    run(body)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/jobs/xyz", 400),
        ("/api/jobs/" + "0" * 32, 404),
        ("/api/jobs/" + "A" * 32, 400),
        ("/api/jobs/..%2F..%2Fetc%2Fpasswd", 400),
        ("/api/jobs/%2e%2e/result", 404),  # the client normalizes it to /api/result
        ("/api/jobs/../../etc/passwd", 404),
        ("/static/..%2Fserver.py", 404),
        ("/static/openapi.yaml", 404),
    ],
)
def test_bad_job_ids_and_traversal(pipeline: CameraPipeline, path: str, status: int) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            reply = await client.get(path, headers=AUTH)
            assert reply.status == status
            assert "error" in await reply.json()

    run(body)


def test_upload_limits_and_types(pipeline: CameraPipeline, clip: Path) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline}, max_upload_bytes=10_000)) as client:
            big = await client.post("/api/jobs", data=upload_form(b"x" * 50_000, "big.mp4"), headers=AUTH)
            assert big.status == 413 and "limit" in (await big.json())["error"]
            text = await client.post("/api/jobs", data=upload_form(b"hello", "notes.txt"), headers=AUTH)
            assert text.status == 415 and ".txt" in (await text.json())["error"]
            fake = await client.post("/api/jobs", data=upload_form(b"\x00" * 5000, "fake.mp4"), headers=AUTH)
            assert fake.status == 415 and "video" in (await fake.json())["error"]
            plain = await client.post("/api/jobs", data=b"raw", headers=AUTH)
            assert plain.status == 400 and "multipart" in (await plain.json())["error"]
            form = aiohttp.FormData()
            form.add_field("protect", "face")
            nofile = await client.post("/api/jobs", data=form, headers=AUTH)
            assert nofile.status == 400 and "file" in (await nofile.json())["error"]
            opts = await client.post(
                "/api/jobs", data=upload_form(b"x", "a.mp4", protect="everything"), headers=AUTH
            )
            assert opts.status in (400, 415)
            assert (await client.get("/api/jobs", headers=AUTH)).status == 200
            assert list(client.app[STATE_KEY].jobs.dir.iterdir()) == []  # refused uploads leave nothing

    run(body)


# --- one image, metrics, spec -----------------------------------------------------------------------


@pytest.mark.slow
def test_post_image_masks_faces_with_real_models(
    pipeline: CameraPipeline, media_dir: Path, models_dir: Path
) -> None:
    from deid_sidecar.detect.detector import build_detector

    data = (media_dir / "t1.jpg").read_bytes()
    config = parse_config({"models_dir": str(models_dir)})
    original = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    faces = build_detector(config, {Label.FACE}).detect(original)
    assert len(faces) >= 1

    async def body() -> None:
        app = build_app({"cam": pipeline}, TOKEN, None, config=config)  # the real detector factory
        async with serve(app) as client:
            reply = await client.post(
                "/api/image?protect=face&method=fill",
                data=data,
                headers={**AUTH, "Content-Type": "image/jpeg"},
            )
            assert reply.status == 200 and reply.headers["Content-Type"] == "image/jpeg"
            out = cv2.imdecode(np.frombuffer(await reply.read(), np.uint8), cv2.IMREAD_COLOR)
        assert out.shape == original.shape
        for x1, y1, x2, y2 in faces.xyxy.astype(int):
            inside = out[y1:y2, x1:x2].astype(np.int16)
            assert inside.mean() < 20, "fill must blacken every detected face"
            assert np.abs(original[y1:y2, x1:x2].astype(np.int16) - inside).mean() > 30
        mask = np.ones(original.shape[:2], bool)
        for x1, y1, x2, y2 in faces.xyxy.astype(int):
            h, w = y2 - y1, x2 - x1
            mask[max(0, y1 - h) : y2 + h, max(0, x1 - w) : x2 + w] = False
        assert np.abs(out.astype(np.int16) - original)[mask].mean() < 6  # the rest only JPEG noise

    run(body)


def test_post_image_rejects_non_images(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            reply = await client.post(
                "/api/image", data=b"nope", headers={**AUTH, "Content-Type": "image/png"}
            )
            assert reply.status == 415
            bad = await client.post(
                "/api/image?method=sparkle", data=b"x", headers={**AUTH, "Content-Type": "image/png"}
            )
            assert bad.status == 400 and "method" in (await bad.json())["error"]

    run(body)


PROM_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? -?[0-9.eE+-]+$')


def test_metrics_is_prometheus_text(pipeline: CameraPipeline) -> None:
    async def body() -> None:
        async with serve(make_app({"cam": pipeline})) as client:
            reply = await client.get("/metrics", headers=AUTH)
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await reply.text()
        types: dict[str, str] = {}
        samples: dict[str, float] = {}
        for line in text.strip().splitlines():
            if line.startswith("# TYPE"):
                _, _, name, kind = line.split()
                types[name] = kind
            elif not line.startswith("#"):
                assert PROM_LINE.match(line), line
                key, value = line.rsplit(" ", 1)
                samples[key] = float(value)
                assert key.split("{")[0] in types, f"{line}: no TYPE"
        assert types["deid_camera_frames_out_total"] == "counter"
        assert 'deid_camera_fps_out{camera="cam"}' in samples
        assert sum(v for k, v in samples.items() if k.startswith('deid_camera_state{camera="cam"')) == 1
        assert 'deid_jobs{state="queued"}' in samples

    run(body)


def test_openapi_spec_matches_routes(pipeline: CameraPipeline) -> None:
    app = make_app({"cam": pipeline})
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        routes.add((route.method.lower(), path))
    spec_file = Path(__file__).resolve().parents[1] / "deid_sidecar" / "web" / "static" / "openapi.yaml"
    spec = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
    documented = {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "put", "delete")
    }
    assert routes == documented, (routes - documented, documented - routes)

    async def body() -> None:
        async with serve(app) as client:
            served = await client.get("/api/openapi.yaml", headers=AUTH)
            assert yaml.safe_load(await served.text())["paths"].keys() == spec["paths"].keys()

    run(body)
