"""`deid-sidecar file --live`: what a camera would publish for a file, frame for frame.

Most tests use the secret checkerboard of tests/livekit.py and its deterministic SecretDetector:
the checkerboard appears first at frame APPEARS in the middle of a plain gradient, so what was
masked before it existed is plain to see. Objects are filled (not blurred) and whole frames blacked
out, so any mask, even on the flat background, shows. Only the object's region is compared: live
mode also hides what moves along the edges (track/edges.py), which is not what is tested here.
One test runs the real CLI and models on a real face.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from livekit import SecretDetector, background, checkerboard

from deid_sidecar.config import Method, parse_config
from deid_sidecar.core.detections import Detections
from deid_sidecar.demo import FACES, HEAD_MARGIN
from deid_sidecar.engine.simulate import simulate_live

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import leakmetric

ROOT = Path(__file__).resolve().parents[1]
FPS = 10
FRAMES = 30
APPEARS = 8  # 1-based index of the first frame with the object
SIZE = (320, 240)
#: Largest pixel change that re-encoding alone makes in the object's region (measured: 4-5).
NOISE = 15


Box = tuple[int, int, int, int]
MS = Fraction(1, 1000)


def spot(size: tuple[int, int], paste: np.ndarray) -> Box:
    """Where `paste` goes: the middle of the frame, far from the edge guard's bands."""
    x, y = (size[0] - paste.shape[1]) // 2, (size[1] - paste.shape[0]) // 2
    return x, y, x + paste.shape[1], y + paste.shape[0]


def write_clip(
    path: Path, paste: np.ndarray, size: tuple[int, int] = SIZE, times_ms: list[int] | None = None
) -> Path:
    """FRAMES frames of a gradient; `paste` sits at `spot` from frame APPEARS on. `times_ms`: each
    frame's timestamp (default: regular at FPS from 0)."""
    x, y, _, _ = spot(size, paste)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"crf": "12", "bf": "0", "g": str(FPS), "preset": "veryfast"}
        if times_ms is not None:
            stream.codec_context.time_base = stream.time_base = MS
        for index in range(1, FRAMES + 1):
            image = cv2.resize(background(), size)
            if index >= APPEARS:
                image[y : y + paste.shape[0], x : x + paste.shape[1]] = paste
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[index - 1], MS
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def frames_of(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def times_of(frames: list[av.VideoFrame]) -> list[float]:
    return [float(f.pts * f.time_base) for f in frames]


SECRET = spot(SIZE, checkerboard())


def region_change(a: av.VideoFrame, b: av.VideoFrame, box: Box = SECRET) -> int:
    """The largest pixel change in `box` from frame `a` to frame `b`."""
    x1, y1, x2, y2 = box
    ra = a.to_ndarray(format="bgr24")[y1:y2, x1:x2].astype(np.int16)
    rb = b.to_ndarray(format="bgr24")[y1:y2, x1:x2].astype(np.int16)
    return int(np.abs(ra - rb).max())


def leaked_frames(inputs: list[av.VideoFrame], outputs: list[av.VideoFrame], box: Box = SECRET) -> list[int]:
    """1-based indices of the frames from APPEARS on whose `box` keeps the input's detail."""
    return [
        index
        for index, (a, b) in enumerate(zip(inputs, outputs, strict=True), start=1)
        if index >= APPEARS
        and leakmetric.is_leaked(a.to_ndarray(format="bgr24"), b.to_ndarray(format="bgr24"), list(box))
    ]


@pytest.fixture(scope="module")
def secret_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("live") / "secret.mp4", checkerboard())


def replay(clip: Path, out: Path, delay_ms: int, pace: bool = True, **privacy: object) -> list[av.VideoFrame]:
    """The live replay with the secret detector; objects filled, whole frames black (visible masks)."""
    config = parse_config({"privacy": {"whole_frame": "black", **privacy}})
    frames = simulate_live(
        clip, out, delay_ms=delay_ms, config=config, detector=SecretDetector(), method=Method.FILL, pace=pace
    )
    written = frames_of(out)
    assert frames == len(written)
    return written


def test_one_frame_per_input_frame_with_its_timestamp_paced_on_the_wall_clock(tmp_path: Path) -> None:
    times_ms = [500 + 100 * i for i in range(FRAMES)]  # starts at 0.5 s: not re-based to 0
    clip = write_clip(tmp_path / "late.mp4", checkerboard(), times_ms=times_ms)
    inputs = frames_of(clip)
    assert times_of(inputs) == [t / 1000 for t in times_ms]
    started = time.monotonic()
    out = replay(clip, tmp_path / "out.mp4", delay_ms=0)
    elapsed = time.monotonic() - started
    assert len(out) == len(inputs) == FRAMES
    assert times_of(out) == times_of(inputs)
    # A camera delivers each frame at its time: the replay can be no faster.
    assert elapsed >= (times_ms[-1] - times_ms[0]) / 1000
    fast = replay(clip, tmp_path / "fast.mp4", delay_ms=0, pace=False)
    assert times_of(fast) == times_of(inputs)


def test_causal_nothing_is_masked_before_the_object_appears(secret_clip: Path, tmp_path: Path) -> None:
    inputs = frames_of(secret_clip)
    causal = replay(secret_clip, tmp_path / "causal.mp4", delay_ms=0)
    before = [region_change(a, b) for a, b in zip(inputs[: APPEARS - 1], causal, strict=False)]
    assert max(before) <= NOISE, f"masked before frame {APPEARS}: region changes {before}"
    assert not leaked_frames(inputs, causal)
    # The check is not blind: a privacy delay looks ahead and masks the frames before it too.
    delayed = replay(secret_clip, tmp_path / "delayed.mp4", delay_ms=1000)
    assert region_change(inputs[APPEARS - 2], delayed[APPEARS - 2]) > NOISE


def test_a_delay_masks_the_object_from_its_first_frame_though_detected_later(
    secret_clip: Path, tmp_path: Path
) -> None:
    # Detection every 5th frame (1, 6, 11...): the object appearing at 8 is first detected at 11.
    inputs = frames_of(secret_clip)
    causal = replay(secret_clip, tmp_path / "causal.mp4", delay_ms=0, pace=False, detect_every=5)
    assert leaked_frames(inputs, causal) == [8, 9, 10]  # live without a delay: clear until detected
    delayed = replay(secret_clip, tmp_path / "delayed.mp4", delay_ms=1000, pace=False, detect_every=5)
    assert not leaked_frames(inputs, delayed)


class _FailsOnce(SecretDetector):
    def detect(self, image: np.ndarray) -> Detections:
        if self.calls == 11:  # the 12th call: frame 12, the object is in view
            self.calls += 1
            raise RuntimeError("injected detector fault")
        return super().detect(image)


def test_a_held_frame_repeats_the_last_published_one(secret_clip: Path, tmp_path: Path) -> None:
    privacy = {"on_failure": "hold", "detect_every": 1, "whole_frame": "black"}
    out = tmp_path / "hold.mp4"
    simulate_live(
        secret_clip,
        out,
        delay_ms=0,
        config=parse_config({"privacy": privacy}),
        detector=_FailsOnce(),
        pace=False,
    )
    inputs, frames = frames_of(secret_clip), frames_of(out)
    assert times_of(frames) == times_of(inputs)
    # Frame 12 had no detection: a camera holds it, so players keep showing frame 11 (not black).
    assert region_change(frames[11], frames[10], (0, 0, *SIZE)) <= NOISE
    assert float(frames[11].to_ndarray(format="bgr24").mean()) > 60
    assert not leaked_frames(inputs, frames)


# --- the real CLI -------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deid_sidecar.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def real_head(media_dir: Path, size: tuple[int, int]) -> tuple[np.ndarray, Box]:
    """One whole head from insightface's t1.jpg group photo (165x193 px), and the box of its face
    once pasted in a frame of `size`."""
    x1, y1, x2, y2 = FACES[1]
    mx, my = round((x2 - x1) * HEAD_MARGIN), round((y2 - y1) * HEAD_MARGIN)
    group = cv2.imread(str(media_dir / "t1.jpg"))
    head = np.ascontiguousarray(group[y1 - my : y2 + my, x1 - mx : x2 + mx])
    x, y, _, _ = spot(size, head)
    return head, (x + mx, y + my, x + mx + (x2 - x1), y + my + (y2 - y1))


@pytest.mark.slow
def test_the_cli_publishes_a_real_face_masked_from_its_first_frame(
    media_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    size = (640, 360)
    head, face = real_head(media_dir, size)
    clip = write_clip(tmp_path / "face.mp4", head, size)
    config = tmp_path / "config.yml"
    config.write_text(f"models_dir: {models_dir}\nprivacy:\n  whole_frame: blur\n")
    out = tmp_path / "out.mp4"
    args = ["file", str(clip), "-o", str(out), "--live", "--delay-ms", "1000", "--protect", "face"]
    result = cli(*args, "-c", str(config), "--method", "fill")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip() == f"{out}: {FRAMES} frames as a live camera would publish them (delay 1000 ms)"
    )
    inputs, outputs = frames_of(clip), frames_of(out)
    assert len(outputs) == len(inputs) == FRAMES
    assert times_of(outputs) == times_of(inputs)
    leaked = leaked_frames(inputs, outputs, face)
    assert not leaked, f"face detail kept in frames {leaked}"
    # --method fill paints the face black; a frame masked whole (a detection over its budget on a
    # busy machine) is blurred instead, by the config's privacy.whole_frame.
    x1, y1, x2, y2 = face
    filled = [float(f.to_ndarray(format="bgr24")[y1:y2, x1:x2].mean()) < 10 for f in outputs[APPEARS - 1 :]]
    assert sum(filled) >= len(filled) / 2, filled


def garbage(tmp_path: Path) -> str:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{clip}", "--delay-ms", "200"], "--delay-ms needs --live"),
        (["{clip}", "--no-pace"], "--no-pace needs --live"),
        (["nope.mp4", "--live"], "input nope.mp4 does not exist"),
        (
            [str(ROOT / "pyproject.toml"), "--live"],
            "pyproject.toml (is not a readable video|has no video stream)",
        ),
        (
            ["{garbage}", "--live"],
            "garbage.mp4 (is not a readable video|has no video stream|has no decodable)",
        ),
        (["{clip}", "--live", "--delay-ms", "9000"], "delay 9000 ms: .*5000"),
        (["{clip}", "--live", "--delay-ms", "soon"], "argument --delay-ms: invalid int value"),
        (["{clip}", "--live", "--audit", "a.json"], "--audit is for file mode"),
    ],
)
def test_bad_use_is_one_line_and_exit_2(
    args: list[str], message: str, secret_clip: Path, tmp_path: Path
) -> None:
    values = {"clip": str(secret_clip), "garbage": garbage(tmp_path)}
    out = tmp_path / "out.mp4"
    result = cli("file", *[a.format(**values) for a in args], "-o", str(out))
    assert result.returncode == 2, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()
