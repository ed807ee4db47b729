"""Helpers for end-to-end tests of the live pipeline: a synthetic clip whose only detail is a
"secret" checkerboard, a detector that finds exactly that detail, a real RTSP camera process,
the sidecar's HTTP server in a thread, and a PyAV reader of the published stream.

Leak check: the background is a smooth gradient, so ANY high-frequency energy in an output frame
means the checkerboard (the thing that must be hidden) came through.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from aiohttp import web

from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.engine.live import CameraPipeline
from deid_sidecar.web.server import build_app

SIZE = (320, 240)
PATCH = 48
CELL = 4
#: Mean |image - blurred image| over a 16x16 block above which the block carries the secret's detail.
DETAIL_THRESHOLD = 12.0
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with the GObject bindings for GStreamer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def background() -> np.ndarray:
    x = np.linspace(40, 200, SIZE[0], dtype=np.float32)
    y = np.linspace(0, 40, SIZE[1], dtype=np.float32)
    grey = (x[None, :] + y[:, None]).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def checkerboard() -> np.ndarray:
    cells = (np.indices((PATCH, PATCH)) // CELL).sum(axis=0) % 2
    return np.repeat((cells * 255).astype(np.uint8)[..., None], 3, axis=2)


def frame_with_secret(index: int) -> np.ndarray:
    frame = background()
    x = 10 + (index * 4) % (SIZE[0] - PATCH - 20)
    frame[90 : 90 + PATCH, x : x + PATCH] = checkerboard()
    return frame


def write_clip(path: Path, seconds: float, fps: int = 15) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.options = {"crf": "12", "bf": "0", "g": str(fps), "preset": "veryfast"}
        for i in range(int(seconds * fps)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_with_secret(i), format="bgr24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def detail_map(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    high = np.abs(grey - cv2.GaussianBlur(grey, (0, 0), 2.0))
    h, w = (grey.shape[0] // 16) * 16, (grey.shape[1] // 16) * 16
    return high[:h, :w].reshape(h // 16, 16, w // 16, 16).mean(axis=(1, 3))


def is_slate(image: np.ndarray) -> bool:
    """The sidecar's "camera offline" frame: flat dark grey with a line of text."""
    return bool(abs(float(np.median(image)) - 32) <= 2)


def leaks(image: np.ndarray) -> bool:
    return not is_slate(image) and bool(detail_map(image).max() > DETAIL_THRESHOLD)


class SecretDetector:
    """Finds the checkerboard: the blocks with high-frequency detail, as one box."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image: np.ndarray) -> Detections:
        self.calls += 1
        blocks = np.argwhere(detail_map(image) > DETAIL_THRESHOLD / 2)
        if not len(blocks):
            return Detections.empty()
        (y1, x1), (y2, x2) = blocks.min(axis=0) * 16, (blocks.max(axis=0) + 1) * 16
        return Detections.from_boxes([(x1, y1, x2, y2)], Label.FACE, 0.9)


class FlakyDetector(SecretDetector):
    """Raises on some calls and stalls past any budget on others."""

    def __init__(self, fail_every: int = 3, stall_every: int = 7, stall_s: float = 1.5) -> None:
        super().__init__()
        self.fail_every, self.stall_every, self.stall_s = fail_every, stall_every, stall_s

    def detect(self, image: np.ndarray) -> Detections:
        self.calls += 1
        if self.calls % self.fail_every == 0:
            raise RuntimeError("injected detector fault")
        if self.calls % self.stall_every == 0:
            time.sleep(self.stall_s)
        self.calls -= 1  # the parent counts again
        return super().detect(image)


class RtspCamera:
    """Debian's GStreamer RTSP server serving `clip` at rtsp://127.0.0.1:PORT/cam."""

    def __init__(self, clip: Path, port: int | None = None) -> None:
        self.clip = clip
        self.port = port or free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> RtspCamera:
        script = Path(__file__).with_name("rtsp_camera.py")
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, str(script), str(self.clip), str(self.port)], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip() == "READY", f"RTSP camera did not start: {line!r}"
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(5)
            self.process = None


class AppThread:
    """An aiohttp app served on 127.0.0.1 from its own event loop in a thread, so blocking test code
    (PyAV readers, a browser, a subprocess) can talk to it."""

    def __init__(self, app: web.Application) -> None:
        self.port = free_port()
        self.app = app
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> AppThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def ServerThread(pipelines: dict[str, CameraPipeline], api_token: str | None = None) -> AppThread:
    """The sidecar's HTTP server (streams, API) for `pipelines`."""
    return AppThread(build_app(pipelines, api_token, None))


def read_stream(
    url: str, seconds: float, on_frame: Callable[[av.VideoFrame], None] | None = None
) -> list[av.VideoFrame]:
    """Decode the published MPEG-TS for `seconds` (wall clock, from the first frame); return the frames."""
    frames: list[av.VideoFrame] = []
    deadline = float("inf")
    with av.open(url, timeout=(10.0, 10.0)) as container:
        for frame in container.decode(video=0):
            if not frames:  # count from the first frame: opening probes the stream for a while
                deadline = time.monotonic() + seconds
            frames.append(frame)
            if on_frame is not None:
                on_frame(frame)
            if time.monotonic() > deadline:
                break
    return frames


def wait_applied(pipeline: CameraPipeline, timeout_s: float = 10.0) -> None:
    """Wait until the camera's worker applied its newest settings (it does so between frames)."""
    deadline = time.monotonic() + timeout_s
    while not pipeline.settings_applied:
        assert time.monotonic() < deadline, f"{pipeline.name}: settings not applied in {timeout_s} s"
        time.sleep(0.01)


def watch(
    pipeline: CameraPipeline, seconds: float, on_frame: Callable[[av.VideoFrame], None] | None = None
) -> list[av.VideoFrame]:
    """Start `pipeline`, read its published stream over HTTP for `seconds`, stop it; the frames."""
    pipeline.start()
    try:
        with ServerThread({"cam": pipeline}) as server:
            return read_stream(server.url(f"/streams/{pipeline.output}.ts"), seconds, on_frame)
    finally:
        pipeline.stop()


def api_request(port: object, method: str, path: str, body: object = None) -> tuple[int, Any]:
    """(status, JSON answer) of the sidecar's API on loopback; (0, None) while it does not answer."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
    except (OSError, ValueError):
        return 0, None
