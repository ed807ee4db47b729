"""File mode and image mode refuse what they cannot or must not process, before any work, with one
clear line and exit status 2: decompression bombs (refused from the header: fast, little memory),
video frames above the limit, folders and devices, and videos with no decodable frame (which
leave no broken output behind).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import av
import pytest
from imagebombs import png_bomb, video_bomb
from livekit import SecretDetector, write_clip

from deid_sidecar.config import parse_config
from deid_sidecar.engine.filemode import (
    MAX_VIDEO_PIXELS,
    FileOptions,
    VideoTooLargeError,
    anonymize_file,
    anonymize_image_file,
    open_video,
)
from deid_sidecar.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
#: Generous bounds for a refusal (the process starts, imports PyAV and OpenCV, reads a header):
#: decoding the 20000x20000 bomb took 5+ s and 2.3 GB before anything was even detected.
REFUSAL_S = 15.0
REFUSAL_RSS_MB = 600.0


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float  # of the CLI process itself (its VmHWM at exit)


# The CLI run inside a launcher that records its own peak memory (VmHWM) at exit. wait4's ru_maxrss
# cannot be used: Linux carries the parent's high-water mark across fork and exec, so a child of a
# pytest process that has loaded models reports pytest's peak, not its own.
_LAUNCHER = """
import atexit, runpy, sys
report = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as status, open(report, "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM")).split()[1])
atexit.register(peak)
sys.argv[0] = "deid-sidecar"
runpy.run_module("deid_sidecar.cli", run_name="__main__")
"""


def cli(*args: str, timeout_s: float = 120.0) -> Run:
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "peak_kb"
        started = time.perf_counter()
        process = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(report), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        seconds = time.perf_counter() - started
        peak_mb = int(report.read_text()) / 1024
    return Run(process.returncode, process.stdout, process.stderr, seconds, peak_mb)


def assert_one_line_error(run: Run, *needles: str) -> None:
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    for needle in needles:
        assert needle in run.stderr, run.stderr


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(png_bomb(20000, 20000))
    return path


# --- decompression bombs --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["image", "file"])
def test_the_cli_refuses_an_image_bomb_from_its_header(bomb: Path, tmp_path: Path, command: str) -> None:
    output = tmp_path / "out.png"
    run = cli(command, str(bomb), "-o", str(output))
    assert_one_line_error(run, "20000x20000 pixels (400.0 megapixels)", "limit of 40 megapixels")
    assert run.seconds < REFUSAL_S and run.peak_rss_mb < REFUSAL_RSS_MB, (run.seconds, run.peak_rss_mb)
    assert not output.exists()


def test_the_cli_refuses_video_frames_above_the_limit(tmp_path: Path) -> None:
    clip = video_bomb(tmp_path / "huge.mov", 9000, 9000)
    run = cli("file", str(clip), "-o", str(tmp_path / "out.mp4"))
    assert_one_line_error(run, "9000x9000 video frames", "8192x8192")
    assert run.peak_rss_mb < REFUSAL_RSS_MB


def test_an_image_bomb_named_like_a_video_is_refused_too(bomb: Path, tmp_path: Path) -> None:
    """ffmpeg opens a PNG whatever its name, and decodes a frame while it probes the file."""
    disguised = tmp_path / "holiday.mp4"
    disguised.write_bytes(bomb.read_bytes())
    with pytest.raises(VideoTooLargeError, match="20000x20000"):
        open_video(disguised)


def test_the_decoder_is_given_the_limit_too(tmp_path: Path) -> None:
    """So a frame bigger than the stream's declared size (a resolution change) is refused by ffmpeg."""
    clip = write_clip(tmp_path / "clip.mp4", seconds=0.5, fps=10)
    with open_video(clip) as container:
        assert container.streams.video[0].codec_context.options == {"max_pixels": str(MAX_VIDEO_PIXELS)}
        assert sum(1 for _ in container.decode(video=0)) == 5


# --- inputs that are not files ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["file", "image"])
@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda d: d, "is a directory"),
        (lambda d: Path("/dev/zero"), "is not a regular file"),
        (lambda d: d / "missing.mp4", "does not exist"),
    ],
    ids=["directory", "character-device", "missing"],
)
def test_the_cli_says_what_an_input_that_is_not_a_file_is(
    tmp_path: Path, command: str, make_input, message: str
) -> None:  # type: ignore[no-untyped-def]
    source = make_input(tmp_path)
    run = cli(command, str(source), "-o", str(tmp_path / "out.png"))
    assert_one_line_error(run, f"input {source} {message}")


def test_a_fifo_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="is not a regular file"):  # opening it would block for ever
        anonymize_file(fifo, tmp_path / "out.mp4", parse_config({}), FileOptions(), SecretDetector())
    with pytest.raises(UserError, match="is not a regular file"):
        anonymize_image_file(fifo, tmp_path / "out.png", parse_config({}), FileOptions(), SecretDetector())


# --- videos with no decodable frame ----------------------------------------------------------------------


def without_keyframes(source: Path, target: Path) -> Path:
    """The clip's packets minus its keyframes: every frame refers to one that is not there."""
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None and not packet.is_keyframe:
                packet.stream = stream
                out.mux(packet)
    return target


def with_zeroed_payloads(source: Path, target: Path) -> Path:
    """The clip's container and timestamps with every packet's bytes zeroed: nothing decodes."""
    with av.open(str(source)) as src, av.open(str(target), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is None:
                continue
            zeroed = av.Packet(bytes(packet.size))
            zeroed.pts, zeroed.dts, zeroed.time_base, zeroed.stream = (
                packet.pts,
                packet.dts,
                packet.time_base,
                stream,
            )
            out.mux(zeroed)
    return target


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1.0, fps=10)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (without_keyframes, "has no decodable video frame; no output was written"),
        (with_zeroed_payloads, "input is corrupt at frame 1"),
    ],
    ids=["no-keyframe", "zeroed-payloads"],
)
def test_a_video_with_no_decodable_frame_is_an_error_and_leaves_no_output(
    clip: Path,
    tmp_path: Path,
    make,
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    broken = make(clip, tmp_path / "broken.mp4")
    with av.open(str(broken)) as container:
        assert container.streams.video[0].frames > 0  # the container does list frames
    output, audit = tmp_path / "out.mp4", tmp_path / "audit.json"
    with pytest.raises(UserError, match=message) as error:
        anonymize_file(broken, output, parse_config({}), FileOptions(audit_path=audit), SecretDetector())
    assert "no output was written" in str(error.value)
    assert not output.exists() and not audit.exists()


def test_a_video_that_decodes_still_writes_every_frame(clip: Path, tmp_path: Path) -> None:
    output = tmp_path / "out.mp4"
    summary = anonymize_file(clip, output, parse_config({}), FileOptions(), SecretDetector())
    assert summary.frames == 10 and output.is_file()


@pytest.mark.slow
def test_the_cli_exits_2_for_a_video_with_no_decodable_frame(
    clip: Path, tmp_path: Path, models_dir: Path
) -> None:
    broken = without_keyframes(clip, tmp_path / "broken.mp4")
    output = tmp_path / "out.mp4"
    run = cli("file", str(broken), "-o", str(output))
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    last = run.stderr.strip().splitlines()[-1]  # after the detectors' log lines
    assert last == f"deid-sidecar: error: {broken} has no decodable video frame; no output was written"
    assert not output.exists()
