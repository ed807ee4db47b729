"""File and image mode with the real detectors on real faces and a real plate.

The clip is the demo composition (real faces from insightface's t1.jpg and a real car with a
readable plate moving over OpenCV's vtest.avi at 720p), so every object's true box is known.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from deid_sidecar.config import parse_config
from deid_sidecar.demo import GroundTruth, build_demo_clip
from deid_sidecar.engine.filemode import FileOptions, anonymize_file, anonymize_image_file, read_image
from deid_sidecar.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import leakmetric

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_clip(
    media_dir: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[GroundTruth]]:
    return build_demo_clip(media_dir, tmp_path_factory.mktemp("file") / "demo.mp4", seconds=4)


def frames_of(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def test_a_720p_clip_keeps_no_face_and_almost_no_plate_detail(
    demo_clip: tuple[Path, list[GroundTruth]], tmp_path: Path
) -> None:
    clip, truth = demo_clip
    output = tmp_path / "out.mp4"
    summary = anonymize_file(clip, output, parse_config({}), FileOptions())
    inputs, outputs = frames_of(clip), frames_of(output)
    assert len(outputs) == len(inputs) == summary.frames
    leaked: dict[str, list[int]] = {"face": [], "license_plate": []}
    totals = dict.fromkeys(leaked, 0)
    for index, objects in enumerate(truth):
        for label, box in objects:
            totals[label] += 1
            if leakmetric.is_leaked(inputs[index], outputs[index], list(box)):
                leaked[label].append(index)
    assert totals["face"] > 100 and totals["license_plate"] > 10
    assert not leaked["face"], f"face detail kept in frames {leaked['face']}"
    assert len(leaked["license_plate"]) <= 0.1 * totals["license_plate"], leaked["license_plate"]


def test_output_keeps_frame_count_timestamps_and_audio(tmp_path: Path, models_dir: Path) -> None:
    clip = tmp_path / "with_audio.mp4"
    write_clip_with_audio(clip, seconds=2)
    output = tmp_path / "out.mp4"
    anonymize_file(clip, output, parse_config({}), FileOptions())
    with av.open(str(clip)) as a, av.open(str(output)) as b:
        times_in = [round(float(f.time), 3) for f in a.decode(video=0)]
        a.seek(0)
        times_out = [round(float(f.time), 3) for f in b.decode(video=0)]
        assert times_out == times_in
        assert b.streams.audio, "audio is kept by default"


def test_audio_can_be_dropped(tmp_path: Path, models_dir: Path) -> None:
    clip = tmp_path / "with_audio.mp4"
    write_clip_with_audio(clip, seconds=1)
    output = tmp_path / "out.mp4"
    anonymize_file(clip, output, parse_config({}), FileOptions(keep_audio=False))
    with av.open(str(output)) as container:
        assert not container.streams.audio


def test_a_truncated_input_reports_and_leaves_a_valid_output(
    demo_clip: tuple[Path, list[GroundTruth]], tmp_path: Path
) -> None:
    clip, _ = demo_clip
    ts = tmp_path / "clip.ts"
    with av.open(str(clip)) as source, av.open(str(ts), "w", format="mpegts") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    data = ts.read_bytes()
    broken = tmp_path / "broken.ts"
    broken.write_bytes(data[: len(data) // 2])
    output = tmp_path / "out.mp4"
    summary = anonymize_file(broken, output, parse_config({}), FileOptions())
    assert 0 < summary.frames == len(frames_of(output))


def test_image_mode_masks_every_face_of_a_group_photo(
    media_dir: Path, models_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "t1.png"
    count = anonymize_image_file(
        media_dir / "t1.jpg", output, parse_config({}), FileOptions(protect=["face"])
    )
    assert count == 6
    original, masked = read_image(media_dir / "t1.jpg"), read_image(output)
    from deid_sidecar.demo import FACES

    for face in FACES:
        assert not leakmetric.is_leaked(original, masked, list(face)), face


@pytest.mark.parametrize(
    ("make_input", "output_name", "message"),
    [
        (lambda d: d / "missing.mp4", "out.mp4", "does not exist"),
        (lambda d: _text_file(d), "out.mp4", "is not a readable video"),
        (lambda d: _text_file(d), "no_such_dir/out.mp4", "does not exist"),
    ],
)
def test_bad_files_get_one_clear_error(tmp_path: Path, make_input, output_name: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UserError, match=message):
        anonymize_file(make_input(tmp_path), tmp_path / output_name, parse_config({}), FileOptions())


def _text_file(folder: Path) -> Path:
    path = folder / "notes.mp4"
    path.write_text("this is not a video\n")
    return path


def write_clip_with_audio(path: Path, seconds: float) -> None:
    """A 320x240 clip with a 440 Hz tone, muxed like a phone video (H.264 + AAC in MP4)."""
    rate, fps = 48000, 15
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        rng = np.random.default_rng(1)
        for _ in range(int(seconds * fps)):
            image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                out.mux(packet)
        samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = samples[start : start + 1024]
            if len(chunk) < 1024:
                break
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in audio.encode(frame):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode(None):
                out.mux(packet)


def write_variable_rate_clip(path: Path) -> list[float]:
    """A phone-like clip: frames 33 ms apart with a 100 ms gap every third one; returns their times."""
    times, t = [], 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), i * 7 % 255, np.uint8), format="bgr24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            times.append(t / 1000)
            t += 33 if i % 3 else 100
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return times


def test_a_variable_frame_rate_video_keeps_its_uneven_timestamps(tmp_path: Path, models_dir: Path) -> None:
    times = write_variable_rate_clip(tmp_path / "phone.mp4")
    config = parse_config({"models_dir": str(models_dir)})
    anonymize_file(tmp_path / "phone.mp4", tmp_path / "out.mp4", config, FileOptions(protect=["face"]))
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        written = [float(frame.pts * stream.time_base) for frame in container.decode(stream)]
    assert written == pytest.approx(times, abs=0.002)
