"""End to end: camera -> sidecar -> published MPEG-TS, decoded by PyAV like go2rtc would.

Every published frame is checked for the secret's detail: zero may carry it, whatever the
detector does (raise, stall, not loaded yet) and whatever the camera does (drop, come back).
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import av
import cv2
import pytest
from livekit import (
    FlakyDetector,
    RtspCamera,
    SecretDetector,
    ServerThread,
    frame_with_secret,
    free_port,
    is_slate,
    leaks,
    read_stream,
    wait_applied,
    watch,
    write_clip,
)

from deid_sidecar.config import Go2rtcConfig, Method, Zone, parse_config
from deid_sidecar.engine.live import OFFLINE_AFTER_S, CameraPipeline
from deid_sidecar.sources.reader import FLOWING_AFTER_S, Frame, FrameQueue, FrameReader
from deid_sidecar.sources.spec import parse_source
from deid_sidecar.stats import CameraStats

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("live") / "secret.mp4", seconds=8)


def make_pipeline(
    source: str,
    detector: object,
    fps: float = 10,
    *,
    loop: bool = True,
    height: int | None = None,
    **privacy: object,
) -> CameraPipeline:
    output: dict[str, Any] = {"fps": fps} if height is None else {"fps": fps, "height": height}
    config = parse_config(
        {
            "anonymize": {"method": "blur"},
            "privacy": privacy,
            "cameras": {"cam": {"source": source, "loop": loop, "output": output}},
        }
    )
    pipeline = CameraPipeline("cam", config.cameras["cam"], config)
    if detector is not None:
        pipeline.set_detector(detector)  # type: ignore[arg-type]
    return pipeline


@pytest.fixture
def camera(clip: Path) -> Iterator[RtspCamera]:
    cam = RtspCamera(clip).start()
    yield cam
    cam.stop()


def test_file_camera_is_served_at_the_configured_fps_with_the_secret_masked(clip: Path) -> None:
    pipeline = make_pipeline(f"file:{clip}", SecretDetector(), fps=10)
    frames = watch(pipeline, seconds=5)
    assert len(frames) >= 30
    assert frames[0].key_frame, "a reader joins at a keyframe"
    steps = {round(float(b.time - a.time), 2) for a, b in itertools.pairwise(frames)}
    assert steps <= {0.1, 0.09, 0.11}, f"10 fps output, got steps {steps}"
    leaked = [i for i, f in enumerate(frames) if leaks(f.to_ndarray(format="bgr24"))]
    assert not leaked, f"frames {leaked} carry the secret"


def test_detector_faults_never_let_a_frame_out_unmasked(camera: RtspCamera) -> None:
    pipeline = make_pipeline(camera.url, FlakyDetector(), fps=15, detect_budget_ms=300, detect_every=1)
    frames = watch(pipeline, seconds=6)
    assert len(frames) >= 40
    leaked = [i for i, f in enumerate(frames) if leaks(f.to_ndarray(format="bgr24"))]
    assert not leaked, f"frames {leaked} carry the secret"
    counters = pipeline.processor.counters
    assert counters.detector_errors > 0 and counters.frames_masked_whole > 0


def test_frames_before_the_detector_is_ready_are_masked_whole(camera: RtspCamera) -> None:
    pipeline = make_pipeline(camera.url, detector=None, fps=10)
    pipeline.start()
    try:
        with ServerThread({"cam": pipeline}) as server:
            frames = read_stream(server.url("/streams/cam_anon.ts"), seconds=2)
            snapshot = pipeline.stats.snapshot()
    finally:
        pipeline.stop()
    assert frames and not any(leaks(f.to_ndarray(format="bgr24")) for f in frames)
    assert snapshot["state"] == "degraded"


def test_stream_survives_a_camera_restart_with_continuous_timestamps(camera: RtspCamera) -> None:
    pipeline = make_pipeline(camera.url, SecretDetector(), fps=10)
    seen: list[float] = []

    def restart_camera_once(frame: object) -> None:
        seen.append(time.monotonic())
        if len(seen) == 15:
            camera.stop()
        if len(seen) == 45:
            camera.start()

    frames = watch(pipeline, seconds=12, on_frame=restart_camera_once)
    times = [float(f.time) for f in frames]
    assert all(b > a for a, b in itertools.pairwise(times)), "timestamps never go backwards"
    longest_gap = max(b - a for a, b in itertools.pairwise(times))
    assert longest_gap < OFFLINE_AFTER_S + 0.5, "slate frames fill the gap"
    assert not any(leaks(f.to_ndarray(format="bgr24")) for f in frames)
    assert pipeline.stats.reconnects >= 1
    assert times[-1] - times[0] > 8, "the stream kept going after the camera came back"


def test_a_method_change_keeps_the_zones_set_at_runtime(clip: Path) -> None:
    pipeline = make_pipeline(f"file:{clip}", SecretDetector())
    zone = Zone(name="door", points=[(0.0, 0.0), (0.5, 0.0), (0.5, 0.5)])
    pipeline.start()
    try:
        pipeline.set_zones([zone])
        pipeline.set_method(Method.FILL)
        wait_applied(pipeline)
        assert pipeline.zones == [zone]
        assert pipeline.processor.anonymizer.method is Method.FILL
        assert pipeline.processor.zones.mask_for(320, 240).any()
    finally:
        pipeline.stop()


def test_fps_and_height_change_live_with_continuous_timestamps(clip: Path) -> None:
    pipeline = make_pipeline(f"file:{clip}", SecretDetector(), fps=10)
    sizes: list[tuple[int, int]] = []

    def change_once(frame: av.VideoFrame) -> None:
        sizes.append((frame.width, frame.height))
        if len(sizes) == 15:
            pipeline.apply_output(fps=5, height=120)

    frames = watch(pipeline, seconds=6, on_frame=change_once)
    times = [float(f.time) for f in frames]
    assert all(b > a for a, b in itertools.pairwise(times)), "timestamps never go backwards"
    assert sizes[0] == (320, 240) and sizes[-1] == (160, 120)
    late_steps = {round(b - a, 2) for a, b in itertools.pairwise(times[-10:])}
    assert late_steps == {0.2}, f"5 fps after the change, got steps {late_steps}"
    assert not any(leaks(f.to_ndarray(format="bgr24")) for f in frames)


def test_replace_method_works_live_on_real_faces(media_dir: Path, models_dir: Path, tmp_path: Path) -> None:
    from deid_sidecar.anonymize.masks import ReplacingAnonymizer
    from deid_sidecar.core.detections import Label
    from deid_sidecar.demo import build_demo_clip
    from deid_sidecar.detect.detector import build_detector

    clip, _ = build_demo_clip(media_dir, tmp_path / "faces.mp4", seconds=3)
    config = parse_config(
        {
            "models_dir": str(models_dir),
            "anonymize": {"method": "replace"},
            "cameras": {"cam": {"source": f"file:{clip}", "loop": True, "output": {"fps": 10}}},
        }
    )
    pipeline = CameraPipeline("cam", config.cameras["cam"], config)
    pipeline.set_detector(build_detector(config, {Label.FACE, Label.LICENSE_PLATE}))
    frames = watch(pipeline, seconds=3)
    anonymizer = pipeline.processor.anonymizer
    assert isinstance(anonymizer, ReplacingAnonymizer)
    assert len(frames) >= 20
    assert anonymizer.counters.faces_replaced > 0 and anonymizer.counters.plates_replaced > 0


# --- the output size is the camera's, never the slate's ---------------------------------------------

#: Through go2rtc the first frame comes seconds after the open: longer than OFFLINE_AFTER_S.
FIRST_FRAME_LATE_S = 3.0


def write_sized_clip(path: Path, size: tuple[int, int], seconds: float, fps: int = 15) -> Path:
    """`write_clip` at another size: the same secret, scaled with its checkerboard kept sharp."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": "12", "bf": "0", "g": str(fps), "preset": "veryfast"}
        for i in range(int(seconds * fps)):
            image = cv2.resize(frame_with_secret(i), size, interpolation=cv2.INTER_NEAREST)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


class LateFirstFrame(FrameReader):
    """A reader whose source delivers its first frame FIRST_FRAME_LATE_S after the open, like go2rtc."""

    def _frames(self) -> Iterator[Frame]:
        if self.generation == 1:
            self._stop.wait(FIRST_FRAME_LATE_S)
        yield from super()._frames()


def with_late_first_frame(pipeline: CameraPipeline) -> CameraPipeline:
    reader = pipeline.reader
    pipeline.reader = LateFirstFrame(reader.spec, reader.mailbox, reader.stats, reader.target_height)
    return pipeline


@pytest.mark.parametrize(
    ("camera_size", "height", "published"),
    [((640, 360), None, (640, 360)), ((640, 480), 360, (480, 360))],
    ids=["360p-camera", "4:3-camera-at-output-height-360"],
)
def test_a_camera_whose_first_frame_comes_late_is_published_at_its_own_size(
    tmp_path: Path, camera_size: tuple[int, int], height: int | None, published: tuple[int, int]
) -> None:
    clip = write_sized_clip(tmp_path / "camera.mp4", camera_size, seconds=2)
    # Not looping: after its 2 s the camera is away again, and the slate shows at the camera's size.
    pipeline = with_late_first_frame(
        make_pipeline(f"file:{clip}", SecretDetector(), loop=False, height=height)
    )
    frames = watch(pipeline, seconds=(FIRST_FRAME_LATE_S - OFFLINE_AFTER_S) + 2 + OFFLINE_AFTER_S + 1.5)
    images = [f.to_ndarray(format="bgr24") for f in frames]
    camera = [i for i, image in enumerate(images) if not is_slate(image)]
    assert frames and is_slate(images[0]), "the slate fills the wait for the first frame"
    assert len(camera) >= 15, f"{len(camera)} camera frames"
    first = camera[0]
    assert {(frames[i].width, frames[i].height) for i in camera} == {published}
    assert frames[first].key_frame, "the new size starts at a keyframe"
    slate_after = [(f.width, f.height) for f in frames[camera[-1] + 1 :]]
    assert slate_after and set(slate_after) == {published}, (
        "the slate is made at the camera's size thereafter"
    )
    if height is not None:
        assert frames[0].height == height, "before the first frame, the slate already has output.height"
    times = [float(f.time) for f in frames]
    assert all(b > a for a, b in itertools.pairwise(times)), "timestamps continue across the new encoder"
    assert not any(leaks(image) for image in images)


def test_the_offline_slate_runs_at_the_output_fps() -> None:
    pipeline = make_pipeline(f"rtsp://127.0.0.1:{free_port()}/cam", SecretDetector(), fps=10)  # nobody there
    frames = watch(pipeline, seconds=3)
    assert all(is_slate(f.to_ndarray(format="bgr24")) for f in frames)
    steps = {round(float(b.time - a.time), 2) for a, b in itertools.pairwise(frames)}
    assert steps <= {0.09, 0.1, 0.11}, f"10 fps slate, got steps {steps}"
    assert len(frames) >= 28


# --- the state changes on real events only ----------------------------------------------------------


class StatusRecorder:
    """An observer that keeps every state change (what MQTT would publish)."""

    def __init__(self) -> None:
        self.states: list[tuple[float, str]] = []

    def on_frame(self, *args: object) -> None:
        pass

    def on_status(self, camera: str, state: str) -> None:
        self.states.append((time.monotonic(), state))

    def on_stats(self, camera: str, stats: dict[str, Any]) -> None:
        pass


def test_a_looping_file_camera_stays_online_across_loops(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "one_second.mp4", seconds=1)
    pipeline = make_pipeline(f"file:{clip}", SecretDetector(), fps=10)
    recorder = StatusRecorder()
    pipeline.observer = recorder
    samples: list[tuple[str, int]] = []
    pipeline.start()
    try:
        deadline = time.monotonic() + 15
        while pipeline.stats.frames_in < 3 * 15 + 8 and time.monotonic() < deadline:  # three loops and more
            snapshot = pipeline.stats.snapshot()
            samples.append((snapshot["state"], snapshot["frames_masked_whole"]))
            time.sleep(0.01)
    finally:
        pipeline.stop()
    states = [state for state, _ in samples]
    assert "online" in states
    after = samples[states.index("online") :]
    assert {state for state, _ in after} == {"online"}, f"left online: {sorted({s for s, _ in after})}"
    assert after[0][1] == after[-1][1], "no frame masked whole once online: detection is never reset"
    changes = [state for _, state in recorder.states]
    assert changes[changes.index("online") :] == ["online", "stopped"], changes
    assert pipeline.reader.generation == 1, "a file starting over is not a reconnect"
    assert pipeline.stats.frames_in >= 3 * 15


def feed(pipeline: CameraPipeline, count: int, fps: float = 15, first_index: int = 100_000) -> None:
    """Frames as a reader would deliver them (a connection that comes and goes, made to order)."""
    for i in range(count):
        pipeline.mailbox.put(Frame(frame_with_secret(i), time.monotonic(), first_index + i, generation=1000))
        time.sleep(1 / fps)


def test_a_lone_frame_in_an_outage_does_not_bring_the_camera_back() -> None:
    pipeline = make_pipeline(f"rtsp://127.0.0.1:{free_port()}/cam", SecretDetector(), fps=10)  # camera down
    recorder = StatusRecorder()
    pipeline.observer = recorder
    samples: list[str] = []
    pipeline.start()
    try:
        deadline = time.monotonic() + 5
        while pipeline.stats.state != "offline" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pipeline.stats.state == "offline"
        feed(pipeline, 1)  # a reconnect that yields one frame and dies
        until = time.monotonic() + 2 * OFFLINE_AFTER_S
        while time.monotonic() < until:
            samples.append(pipeline.stats.state)
            time.sleep(0.01)
        flowing = threading.Thread(target=feed, args=(pipeline, round(15 * (FLOWING_AFTER_S + 1.5))))
        flow_start = time.monotonic()
        flowing.start()
        flowing.join()
        back = pipeline.stats.state
    finally:
        pipeline.stop()
    assert set(samples) == {"offline"}, "one frame is not a recovery"
    assert back == "online", "frames flowing again bring it back"
    changes = [(t, state) for t, state in recorder.states if state != "stopped"]
    assert [state for _, state in changes] == ["offline", "online"], changes
    assert changes[1][0] - flow_start >= FLOWING_AFTER_S - 0.1


# --- the reader's error text -------------------------------------------------------------------------

CAM_PASSWORD = "pa@ss/w0rd"


def secret_source(port: int) -> str:
    return f"rtsp://admin:{quote(CAM_PASSWORD, safe='')}@127.0.0.1:{port}/h264?token=tok-0123456789abcdef"


def assert_masked(text: str) -> None:
    # Fragments too: a mask that cuts the password in two must not leave its tail behind.
    for secret in (CAM_PASSWORD, quote(CAM_PASSWORD, safe=""), "w0rd", "admin", "tok-0123456789abcdef"):
        assert secret not in text, text
    assert "***" in text


def test_reader_errors_mask_the_url_in_any_form_ffmpeg_prints() -> None:
    spec = parse_source(secret_source(554), Go2rtcConfig())
    reader = FrameReader(spec, FrameQueue(), CameraStats("cam", "cam_anon"))
    decoded = unquote(spec.url)  # not the configured string: replacing it alone would leak
    reader._note_failure(OSError(f"Connection refused: '{decoded}' (password {CAM_PASSWORD})"))
    reader._note_failure(OSError(f"Connection refused: '{spec.url}'"))
    assert reader.stats.reconnects == 2
    for text in (*reader.diagnostics, reader.stats.last_error):
        assert_masked(text)
    assert reader.diagnostics[0].startswith("Connection refused: 'rtsp://***@127.0.0.1:554/h264?token=***")
    assert reader.diagnostics[1].startswith("Connection refused: 'rtsp://***@127.0.0.1:554/h264?token=***")


def test_reader_masks_a_real_ffmpeg_failure(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stats = CameraStats("cam", "cam_anon")
    reader = FrameReader(parse_source(secret_source(port), Go2rtcConfig()), FrameQueue(), stats)
    with caplog.at_level(logging.DEBUG):
        reader.start()
        deadline = time.monotonic() + 10
        while stats.reconnects == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        reader.stop()
    assert stats.reconnects > 0, "the closed port never failed"
    assert_masked(stats.last_error)
    assert "w0rd" not in caplog.text and "tok-0123456789abcdef" not in caplog.text
