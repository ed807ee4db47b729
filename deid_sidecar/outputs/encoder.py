"""H.264 encoding for the anonymized streams: presets as data, a hardware probe, one encoder class.

The output must play in every go2rtc consumer (WebRTC, MSE, RTSP, HLS), so every preset produces
H.264 yuv420p without B-frames, a keyframe about every second, SPS/PPS in-band on every keyframe,
and no look-ahead or reorder delay.

Timestamps: `H264Encoder.encode(image, pts)` takes `pts` in `TIME_BASE` (1/90000 s, the MPEG-TS
clock), so packets go to the muxer unchanged. The caller derives pts from its own output clock,
never from the camera, so the stream stays continuous when the camera reconnects.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Literal, cast

import av
import cv2
import numpy as np

log = logging.getLogger(__name__)

CodecName = Literal["libx264", "h264_nvenc", "h264_qsv"]
Preference = Literal["auto", "libx264", "h264_nvenc", "h264_qsv"]

TIME_BASE = Fraction(1, 90_000)
"""Unit of every pts given to and returned by `H264Encoder` (the MPEG-TS 90 kHz clock)."""

PROBE_FRAMES = 10
PROBE_SIZE = (320, 240)
# Hardware order for `auto`: NVENC is the most common in Frigate boxes; QSV next; libx264 always works.
AUTO_ORDER: tuple[CodecName, ...] = ("h264_nvenc", "h264_qsv")


@dataclass(frozen=True)
class Flag:
    """One encoder option and why it is set."""

    value: str
    why: str


@dataclass(frozen=True)
class EncoderPreset:
    """Everything that makes one codec produce a stream every go2rtc consumer plays."""

    codec: CodecName
    options: Mapping[str, Flag]
    pix_fmt: str = "yuv420p"  # WebRTC/MSE decoders only promise 4:2:0 8-bit
    max_b_frames: int = 0  # B-frames add reorder delay and WebRTC in browsers rejects them
    gop_seconds: float = 1.0  # a new viewer waits at most ~1 s for a keyframe
    maxrate_factor: float = 1.0  # cap peaks at the target so a constrained link never stalls
    bufsize_seconds: float = 1.0  # VBV of one second: short enough for live, long enough for quality

    def codec_options(self) -> dict[str, str]:
        return {name: flag.value for name, flag in self.options.items()}


def _flags(**items: tuple[str, str]) -> Mapping[str, Flag]:
    return MappingProxyType({name.replace("__", "-"): Flag(*pair) for name, pair in items.items()})


PRESETS: Mapping[CodecName, EncoderPreset] = MappingProxyType(
    {
        "libx264": EncoderPreset(
            codec="libx264",
            options=_flags(
                preset=("ultrafast", "CPU is shared with detection; ultrafast is ~2x cheaper than veryfast"),
                tune=("zerolatency", "no frame threading look-ahead, no mbtree: one frame in, one out"),
                profile=("baseline", "ultrafast uses no CABAC/B-frames anyway; baseline decodes everywhere"),
                # Each camera has its own encoder on its own thread, so they already run in parallel. At
                # 720p one thread was faster (4.1 vs 4.8 ms a frame, 4 encoders on 2 cores) and 2.4 MB
                # smaller; even at 4K it encodes 26 fps alone (38 ms; 34 ms with sliced threads).
                threads=("1", "one thread per encoder: the cameras' encoders run in parallel already"),
                # Without AV_CODEC_FLAG_GLOBAL_HEADER x264 already repeats SPS/PPS on each IDR
                # (b_repeat_headers); this keeps it true whatever the muxer flags, so a reader joining
                # at a keyframe can decode (tests/test_encoder.py checks every keyframe).
                x264_params=("repeat-headers=1:scenecut=0", "SPS/PPS per IDR; fixed GOP, no scene cuts"),
            ),
        ),
        "h264_nvenc": EncoderPreset(
            codec="h264_nvenc",
            options=_flags(
                preset=("p2", "p1..p4 are the fast presets; p2 keeps quality with ~no extra latency"),
                tune=("ll", "low-latency tuning info"),
                zerolatency=("1", "no reordering delay"),
                delay=("0", "hand out each frame as soon as it is encoded"),
                rc=("cbr", "constant bitrate fits go2rtc's live relays and WebRTC pacing"),
                profile=("main", "main without B-frames plays everywhere"),
                forced__idr=("1", "forced keyframes are IDR, so a joining reader can start there"),
            ),
        ),
        "h264_qsv": EncoderPreset(
            codec="h264_qsv",
            options=_flags(
                preset=("veryfast", "lowest latency preset"),
                async_depth=("1", "no frame queueing inside the driver: one frame in, one out"),
                look_ahead=("0", "look-ahead adds frames of delay"),
                forced_idr=("1", "forced keyframes are IDR, so a joining reader can start there"),
                profile=("main", "main without B-frames plays everywhere"),
            ),
        ),
    }
)


@dataclass
class _ProbeCache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    results: dict[CodecName, str | None] = field(default_factory=dict)  # codec -> None (ok) or error


_probe_cache = _ProbeCache()


def _test_pattern(width: int, height: int, index: int) -> np.ndarray:
    """Moving gradient: cheap, and changes every frame so the encoder really works."""
    x = np.arange(width, dtype=np.uint16)[None, :]
    y = np.arange(height, dtype=np.uint16)[:, None]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = ((x + index * 8) % 256).astype(np.uint8)
    image[..., 1] = ((y + index * 4) % 256).astype(np.uint8)
    image[..., 2] = 128
    return image


def _try_encode(codec: CodecName) -> str | None:
    """Encode PROBE_FRAMES frames; None if packets came out, else the reason it failed."""
    width, height = PROBE_SIZE
    try:
        encoder = H264Encoder(width, height, 15.0, 500, codec)
        packets: list[av.Packet[Any]] = []
        for i in range(PROBE_FRAMES):
            packets += encoder.encode(_test_pattern(width, height, i), i * 6000)
        packets += encoder.flush()
    except (av.FFmpegError, OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if not packets:
        return "encoder produced no packets"
    return None


def probe_codec(codec: CodecName) -> str | None:
    """Cached: None when `codec` really encodes on this machine, else why not."""
    with _probe_cache.lock:
        if codec not in _probe_cache.results:
            started = time.monotonic()
            _probe_cache.results[codec] = _try_encode(codec)
            log.debug("probe %s took %.2f s", codec, time.monotonic() - started)
        return _probe_cache.results[codec]


def probe_encoder(preference: Preference = "auto") -> CodecName:
    """Pick the encoder to use: the preferred one if it really encodes, else hardware, else libx264.

    Blocking (opens encoders, up to a second per codec): call it from a thread, not the event loop.
    """
    if preference != "auto":
        error = probe_codec(preference) if preference != "libx264" else None
        if error is None:
            log.info("encoder: %s (configured)", preference)
            return preference
        log.warning("encoder %s does not work here (%s); falling back to libx264", preference, error)
        return "libx264"
    reasons = []
    for codec in AUTO_ORDER:
        error = probe_codec(codec)
        if error is None:
            log.info("encoder: %s (hardware probe succeeded)", codec)
            return codec
        reasons.append(f"{codec}: {error}")
    log.info("encoder: libx264 (no hardware encoder: %s)", "; ".join(reasons))
    return "libx264"


def bgr_to_frame(image_bgr: np.ndarray) -> av.VideoFrame:
    """BGR (H, W, 3) uint8 -> yuv420p frame.

    OpenCV's I420 conversion (BT.601 limited range, same as swscale's default) measured 1.7 ms at
    1280x720 against 7.2 ms for `VideoFrame.from_ndarray(bgr24).reformat("yuv420p")`.
    """
    i420 = cast(np.ndarray[Any, np.dtype[np.uint8]], cv2.cvtColor(image_bgr, cv2.COLOR_BGR2YUV_I420))
    return av.VideoFrame.from_ndarray(i420, format="yuv420p")


class H264Encoder:
    """One H.264 encoder. Not thread-safe: use it from the camera's worker thread only.

    `pts` is in TIME_BASE (1/90000 s) and must increase; returned packets carry the same time base.
    """

    def __init__(self, width: int, height: int, fps: float, bitrate_kbps: int, codec_name: CodecName) -> None:
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise ValueError(f"H.264 4:2:0 needs an even, positive size, got {width}x{height}")
        self.width, self.height, self.fps = width, height, fps
        self.preset = PRESETS[codec_name]
        self.codec_name: CodecName = codec_name
        self._context = self._open(bitrate_kbps)
        self._last_pts: int | None = None

    def _open(self, bitrate_kbps: int) -> av.VideoCodecContext:
        preset = self.preset
        context = av.CodecContext.create(preset.codec, "w")
        context.width, context.height = self.width, self.height
        context.pix_fmt = preset.pix_fmt
        context.time_base = TIME_BASE
        context.framerate = Fraction(self.fps).limit_denominator(1001)
        context.gop_size = max(1, round(self.fps * preset.gop_seconds))
        context.max_b_frames = preset.max_b_frames
        bit_rate = bitrate_kbps * 1000
        context.bit_rate = bit_rate
        context.options = {
            **preset.codec_options(),
            "maxrate": str(int(bit_rate * preset.maxrate_factor)),
            "bufsize": str(int(bit_rate * preset.bufsize_seconds)),
        }
        context.open()  # hardware encoders fail here (or on the first frame) without a device
        return context

    def encode(self, image_bgr: np.ndarray, pts: int) -> list[av.Packet[Any]]:
        if image_bgr.shape != (self.height, self.width, 3) or image_bgr.dtype != np.uint8:
            raise ValueError(
                f"expected ({self.height}, {self.width}, 3) uint8, got {image_bgr.shape} {image_bgr.dtype}"
            )
        if self._last_pts is not None and pts <= self._last_pts:
            raise ValueError(f"pts must increase: {pts} after {self._last_pts}")
        self._last_pts = pts
        frame = bgr_to_frame(image_bgr)
        frame.pts = pts
        frame.time_base = TIME_BASE
        return self._stamp(self._context.encode(frame))

    def flush(self) -> list[av.Packet[Any]]:
        return self._stamp(self._context.encode(None))

    def _stamp(self, packets: list[av.Packet[Any]]) -> list[av.Packet[Any]]:
        for packet in packets:
            packet.time_base = TIME_BASE
        return packets
