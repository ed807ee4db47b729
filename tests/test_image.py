"""The CPU container image, built from the Dockerfile and run, without a Docker engine.

`scripts/build-image.sh` builds it with buildah (vfs storage, chroot isolation; the Python base is a
debootstrapped Debian when Docker Hub's python image is out of reach, cached between runs). The image
bakes `centerface` and `retina-plate` here: the Dockerfile's default `yolov8n-plate` is exported with
PyTorch inside the build, which the script can do too (with this machine's CPU torch wheel) but which
costs about three more minutes than CI has for this test.

The container runs as the image says (its entrypoint and command, uid 10001) under `buildah run`, with a
config and a clip put in by `buildah copy` (bind mounts are not visible under chroot isolation), inside a
network namespace of its own that has only a loopback interface: whatever it needs must be in the image,
and its port 8080 is free by construction. The test reaches that loopback from a thread that joins the
namespace (setns), so PyAV reads the stream as go2rtc would.

Needs root and Debian's buildah, debootstrap and iproute2 (`scripts/setup.sh test` installs them);
DEID_SKIP_IMAGE=1 skips it on a developer machine. Never skipped otherwise: a missing tool fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import av
import pytest
import yaml
from livekit import read_stream

from deid_sidecar.demo import build_demo_clip
from deid_sidecar.models import registry

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build-image.sh"
BUILDAH = ROOT / "scripts" / "image-buildah.sh"
TAG = "localhost/deid-sidecar:cpu-ci"
MODELS = ("centerface", "retina-plate")
UID = 10001
PORT = 8080
CAMERA = "demo"
FPS = 10
HEIGHT = 720
TOKEN = "image-test-token-0123456789"
SETUP_HINT = (
    "scripts/setup.sh test installs it (apt-get install buildah debootstrap iproute2); "
    "DEID_SKIP_IMAGE=1 skips this test on a developer machine"
)
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def buildah(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [str(BUILDAH), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr.strip()}"
    return result.stdout


def inspect(template: str) -> str:
    return buildah("inspect", "--type", "image", "--format", template, TAG).strip()


def run_in(name: str, *command: str, env: tuple[str, ...] = ()) -> list[str]:
    """`buildah run` of the working container `name`: chroot isolation, the caller's network, uid 10001."""
    options = ["--isolation", "chroot", "--network", "host", "--user", f"{UID}:{UID}"]
    return [str(BUILDAH), "run", *options, *(f"--env={e}" for e in env), name, "--", *command]


@pytest.fixture(scope="module")
def image() -> str:
    if os.environ.get("DEID_SKIP_IMAGE") == "1":
        pytest.skip("DEID_SKIP_IMAGE=1: the container image is not built or run")
    for tool in ("buildah", "debootstrap", "unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: {SETUP_HINT}")
    if os.geteuid() != 0:
        pytest.fail("building and running the image needs root (debootstrap, chroot); " + SETUP_HINT)
    started = time.monotonic()
    result = subprocess.run(
        [str(BUILD), TAG],
        env={**os.environ, "DEID_IMAGE_MODELS": " ".join(MODELS)},
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )
    print(result.stdout, f"(scripts/build-image.sh: {time.monotonic() - started:.0f} s)")
    assert result.returncode == 0, f"scripts/build-image.sh failed:\n{result.stdout}\n{result.stderr}"
    return TAG


def test_image_metadata_is_what_the_dockerfile_says(image: str) -> None:
    assert inspect("{{.OCIv1.Config.User}}") == f"{UID}:{UID}"
    assert inspect("{{.OCIv1.Config.WorkingDir}}") == "/app"
    assert inspect("{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}").split("\n") == [
        "deid-entrypoint"
    ]
    assert inspect("{{range .OCIv1.Config.Cmd}}{{println .}}{{end}}").split("\n") == [
        "run",
        "-c",
        "/config/config.yml",
    ]
    assert f"{PORT}/tcp" in inspect("{{.OCIv1.Config.ExposedPorts}}")
    # Built in Docker's format, so the HEALTHCHECK is kept (OCI images have none).
    assert "/healthz" in inspect("{{range .Docker.Config.Healthcheck.Test}}{{println .}}{{end}}")
    env = inspect("{{range .OCIv1.Config.Env}}{{println .}}{{end}}").split("\n")
    assert "DEID_VARIANT=cpu" in env and f"DEID_HEALTH_PORT={PORT}" in env


# --- the running container ------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(pid: int) -> list[int]:
    children = children_by_parent()
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


@dataclass
class Container:
    name: str
    rootfs: Path
    process: subprocess.Popen[bytes]
    log: Path
    models_before: dict[str, tuple[int, float]]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def in_netns(self, function: Callable[[], T]) -> T:
        """Run `function` in a thread that joined the container's network namespace: the sockets it
        opens (urllib, PyAV's FFmpeg) are the container's loopback."""
        result: dict[str, Any] = {}

        def run() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/proc/{self.process.pid}/ns/net", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into the container's network namespace")
            finally:
                os.close(fd)
            try:
                result["value"] = function()
            except BaseException as exc:
                result["error"] = exc

        thread = threading.Thread(target=run, name="netns")
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["value"]  # type: ignore[no-any-return]

    def get(self, path: str, token: bool = False) -> tuple[int, Any]:
        def request() -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
            req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=5) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read() or b"null")

        return self.in_netns(request)

    def sidecar_pid(self) -> int:
        """The container's `deid-sidecar run` process (the entrypoint execs it)."""
        for pid in descendants(self.process.pid):
            argv = cmdline(pid)
            if any(arg.endswith("/deid-sidecar") for arg in argv) and "run" in argv:
                return pid
        raise AssertionError(f"no deid-sidecar process in the container:\n{self.output()}")


def models_in(rootfs: Path) -> dict[str, tuple[int, float]]:
    folder = rootfs / "models"
    return {p.name: (p.stat().st_size, p.stat().st_mtime) for p in sorted(folder.iterdir())}


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (buildah passes it on), then SIGKILL to every process of the container that is left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
    for pid in [*reversed(descendants(process.pid)), process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


@pytest.fixture(scope="module")
def container(image: str, media_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    work = tmp_path_factory.mktemp("image")
    clip, _ = build_demo_clip(media_dir, work / "demo.mp4", seconds=4)
    config = {
        # No models_dir: the default `models` (relative to the image's /app) must find the baked ones.
        "detection": {"license_plate": {"model": "retina-plate"}},
        "server": {"port": PORT, "token": "${DEID_API_TOKEN}"},
        "go2rtc": {"register_streams": False},
        "cameras": {
            CAMERA: {
                "source": "file:/config/demo.mp4",
                "loop": True,
                "output": {"fps": FPS, "height": HEIGHT},
            }
        },
    }
    (work / "config.yml").write_text(yaml.safe_dump(config))
    for file in (work / "config.yml", clip):
        file.chmod(0o644)  # as a read-only bind mount would be: root's, world-readable
    name = buildah("from", "--pull=false", image).strip()
    process = None
    try:
        buildah("copy", name, str(work / "config.yml"), str(clip), "/config/")
        rootfs = Path(buildah("mount", name).strip())
        entrypoint = inspect("{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}").split("\n")
        command = inspect("{{range .OCIv1.Config.Cmd}}{{println .}}{{end}}").split("\n")
        log = work / "container.log"
        models_before = models_in(rootfs)
        with log.open("wb") as out:
            # A new network namespace with only `lo` up; buildah's "host" network is that namespace.
            run = run_in(name, *entrypoint, *command, env=(f"DEID_API_TOKEN={TOKEN}",))
            process = subprocess.Popen(
                ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *run],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = Container(name, rootfs, process, log, models_before)
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"the container exited ({process.returncode}):\n{running.output()}"
            try:
                status, _ = running.get("/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"/healthz never answered 200:\n{running.output()}"
            time.sleep(0.5)
        yield running
    finally:
        if process is not None:
            stop(process)
        subprocess.run([str(BUILDAH), "umount", name], capture_output=True, check=False, timeout=60)
        subprocess.run([str(BUILDAH), "rm", name], capture_output=True, check=False, timeout=120)


def test_container_checks_its_config_then_serves_healthz(container: Container) -> None:
    status, body = container.get("/healthz")
    assert status == 200 and body["status"] == "ok", body
    assert CAMERA in body["cameras"]
    assert "/config/config.yml: valid (1 cameras)" in container.output()


def test_container_streams_h264_at_the_configured_size_and_rate(container: Container) -> None:
    url = f"http://127.0.0.1:{PORT}/streams/{CAMERA}_anon.ts"

    def codec() -> str:
        with av.open(url, timeout=(10.0, 10.0)) as stream:
            return str(stream.streams.video[0].codec_context.name)

    assert container.in_netns(codec) == "h264"
    frames = container.in_netns(lambda: read_stream(url, seconds=3))
    assert len(frames) >= 15, f"{len(frames)} frames in 3 s:\n{container.output()}"
    assert {(f.width, f.height) for f in frames} == {(HEIGHT * 16 // 9, HEIGHT)}
    # The output clock ticks at the configured rate; a frame the loaded pipeline could not finish in
    # time leaves a gap of whole ticks, never an off-grid timestamp.
    ticks = [
        float((b.pts - a.pts) * a.time_base) * FPS
        for a, b in itertools.pairwise(frames)
        if a.pts is not None and b.pts is not None
    ]
    assert ticks and all(t >= 0.999 and abs(t - round(t)) < 0.01 for t in ticks), ticks
    assert sorted(ticks)[len(ticks) // 2] == pytest.approx(1.0), f"mostly gaps: {ticks}"


def test_container_runs_as_the_unprivileged_user(container: Container) -> None:
    status = Path(f"/proc/{container.sidecar_pid()}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split() == [str(UID)] * 4
    assert fields["Gid"].split() == [str(UID)] * 4


def test_container_detects_with_the_baked_models_and_downloads_nothing(container: Container) -> None:
    # Its only network is a loopback: anything it tried to download would have failed.
    interfaces = [
        line.split(":")[0].strip()
        for line in Path(f"/proc/{container.sidecar_pid()}/net/dev").read_text().splitlines()[2:]
    ]
    assert interfaces == ["lo"]
    deadline = time.monotonic() + 60
    while True:
        status, body = container.get("/api/stats", token=True)
        assert status == 200, body
        stats = body["cameras"][CAMERA]
        if stats["state"] == "online" and stats["detections_run"] > 0:
            break
        assert time.monotonic() < deadline, f"no detection in 60 s: {stats}\n{container.output()}"
        time.sleep(0.5)
    assert stats["detector_errors"] == 0, stats
    # The models are the pinned files, and exactly the baked ones: nothing fetched, cached or rewritten.
    # The int8 copies the fetch made beside them are not byte-reproducible; the camera runs them.
    models = container.rootfs / "models"
    expected = {registry.MODELS[m].filename: registry.MODELS[m].sha256 for m in MODELS}
    copies = {registry.MODELS[m].int8_filename for m in MODELS if registry.MODELS[m].int8 is not None}
    found = {p.name: sha256(p) for p in models.iterdir()}
    assert set(found) == set(expected) | copies
    assert {name: found[name] for name in expected} == expected
    assert "face: centerface (int8) loaded" in container.log.read_text(errors="replace")
    assert models_in(container.rootfs) == container.models_before
    for cache in ("/.cache", "/app/.cache", "/build"):
        assert not (container.rootfs / cache.lstrip("/")).exists(), cache
    # What the Dockerfile promises about the runtime: one onnxruntime, the CPU one, and no torch.
    site = next((container.rootfs / "opt" / "venv" / "lib").glob("python3*/site-packages"))
    assert (site / "onnxruntime").is_dir()
    assert not list(site.glob("onnxruntime_gpu*")) and not (site / "torch").exists()


def test_image_health_check_passes_in_the_container(container: Container) -> None:
    test = inspect("{{range .Docker.Config.Healthcheck.Test}}{{println .}}{{end}}").split("\n")
    assert test[0] == "CMD", test
    result = subprocess.run(
        ["nsenter", f"--net=/proc/{container.process.pid}/ns/net", "--", *run_in(container.name, *test[1:])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
