"""H.264 presets, the hardware probe and the encoder, on synthetic frames."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest

from deid_sidecar.outputs import encoder as enc
from deid_sidecar.outputs.encoder import PRESETS, TIME_BASE, H264Encoder, bgr_to_frame, probe_encoder

TICKS_15FPS = 6000  # 90000 / 15


def moving_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """Smooth colour gradients with a moving white square (noise would not survive 4:2:0)."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    base = np.stack(
        [np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)), (x + y) / 2], axis=-1
    ).astype(np.uint8)
    frames = []
    for i in range(count):
        frame = base.copy()
        left = (i * 7) % (width - 40)
        frame[height // 3 : height // 3 + 40, left : left + 40] = 255
        frames.append(frame)
    return frames


def nal_types(data: bytes) -> set[int]:
    """NAL unit types in an Annex-B access unit."""
    types, start = set(), 0
    while (i := data.find(b"\x00\x00\x01", start)) >= 0 and i + 3 < len(data):
        types.add(data[i + 3] & 0x1F)
        start = i + 3
    return types


def encode_all(encoder: H264Encoder, frames: list[np.ndarray]) -> list[av.Packet]:
    packets: list[av.Packet] = []
    for i, frame in enumerate(frames):
        out = encoder.encode(frame, 90_000 + i * TICKS_15FPS)
        assert len(out) == 1, "zero latency: one packet per frame, at once"
        packets += out
    return packets + encoder.flush()


@pytest.mark.parametrize("codec", list(PRESETS))
def test_presets_are_live_friendly(codec: str) -> None:
    preset = PRESETS[codec]  # type: ignore[index]
    assert preset.codec == codec
    assert preset.pix_fmt == "yuv420p"
    assert preset.max_b_frames == 0
    assert preset.gop_seconds == 1.0
    assert all(flag.why for flag in preset.options.values()), "every flag says why"


def test_gop_sps_pps_and_no_b_frames() -> None:
    packets = encode_all(H264Encoder(320, 240, 15.0, 800, "libx264"), moving_frames(320, 240, 46))
    keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
    assert keyframes == [0, 15, 30, 45], "GOP = round(fps)"
    for i in keyframes:
        assert {5, 7, 8} <= nal_types(bytes(packets[i])), "IDR with SPS and PPS in-band"
    assert all(p.pts == p.dts for p in packets), "no B-frames: no reordering"
    assert [p.pts for p in packets] == [90_000 + i * TICKS_15FPS for i in range(46)]
    assert all(p.time_base == TIME_BASE for p in packets)


def test_decodes_from_a_later_keyframe() -> None:
    frames = moving_frames(320, 240, 20)
    packets = encode_all(H264Encoder(320, 240, 15.0, 2000, "libx264"), frames)
    decoder = av.CodecContext.create("h264", "r")
    decoded = [f for p in packets[15:] for f in decoder.decode(p)] + decoder.decode(None)
    assert len(decoded) == 5 and decoded[0].key_frame
    image = decoded[0].to_ndarray(format="bgr24")
    assert np.abs(image.astype(int) - frames[15]).mean() < 6


def test_reports_bad_input() -> None:
    with pytest.raises(ValueError, match="even"):
        H264Encoder(321, 240, 15.0, 800, "libx264")
    encoder = H264Encoder(320, 240, 15.0, 800, "libx264")
    with pytest.raises(ValueError, match="expected"):
        encoder.encode(np.zeros((240, 320), np.uint8), 0)
    encoder.encode(np.zeros((240, 320, 3), np.uint8), 100)
    with pytest.raises(ValueError, match="increase"):
        encoder.encode(np.zeros((240, 320, 3), np.uint8), 100)


def test_bgr_conversion_matches_swscale() -> None:
    image = moving_frames(64, 48, 1)[0]
    ours = bgr_to_frame(image).to_ndarray()
    reference = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p").to_ndarray()
    assert ours.shape == reference.shape
    assert np.abs(ours.astype(int) - reference).max() <= 2  # both BT.601 limited range, rounding apart


@pytest.fixture
def fresh_probe(monkeypatch: pytest.MonkeyPatch) -> enc._ProbeCache:
    cache = enc._ProbeCache()
    monkeypatch.setattr(enc, "_probe_cache", cache)
    return cache


def test_probe_falls_back_to_libx264_and_caches(
    fresh_probe: enc._ProbeCache, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(codec: str) -> str:
        calls.append(codec)
        return "no device"

    monkeypatch.setattr(enc, "_try_encode", broken)
    with caplog.at_level(logging.INFO, logger=enc.__name__):
        assert probe_encoder("auto") == "libx264"
        assert probe_encoder("h264_nvenc") == "libx264"
    assert calls == ["h264_nvenc", "h264_qsv"], "each codec probed once, then cached"
    assert any(r.levelno == logging.WARNING and "h264_nvenc" in r.message for r in caplog.records)


def test_probe_prefers_working_hardware(
    fresh_probe: enc._ProbeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(enc, "_try_encode", lambda codec: None if codec == "h264_qsv" else "absent")
    assert probe_encoder("auto") == "h264_qsv"
    assert probe_encoder("h264_qsv") == "h264_qsv"


def test_probe_really_encodes(fresh_probe: enc._ProbeCache) -> None:
    assert enc.probe_codec("libx264") is None
    # Compiled into PyAV's wheel but without a GPU/iGPU it must fail, not be believed.
    chosen = probe_encoder("auto")
    assert chosen in PRESETS
    if chosen == "libx264":
        assert fresh_probe.results["h264_nvenc"] is not None
