"""One live camera's output side: output clock, H.264 encoder, offline slate, StreamHub writes.

Touched ONLY by the camera's worker thread (engine/live.py's `camera-<cam>`): nothing here locks,
because no other thread may encode, flush or move the clock while that worker lives. Other
threads only read `latest_jpeg` (the web previews) and `clock.fps`, each replaced whole by one
assignment.

Output timestamps come from this clock, never the camera's, so the published stream stays
continuous across camera reconnects. Only frames the worker already anonymized, and the slate,
are ever handed to the encoder.

The output size is the camera's (scaled to `output.height` when set): the slate shown before the
first frame only guesses it, and when the first real frame (or a reconnected camera) has another
size, the encoder is replaced at that size (a new keyframe; timestamps continue).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import cv2
import numpy as np

from deid_sidecar.config import OutputConfig
from deid_sidecar.core.image import Image
from deid_sidecar.engine.processor import Processed
from deid_sidecar.outputs.encoder import TIME_BASE, H264Encoder, probe_encoder
from deid_sidecar.outputs.http_ts import StreamHub
from deid_sidecar.sources.reader import output_size
from deid_sidecar.stats import CameraStats

log = logging.getLogger(__name__)

#: Slate size before the camera ever delivered a frame (scaled to `output.height` when set); the
#: first real frame sets the size for good.
DEFAULT_SIZE = (1280, 720)
TICKS_PER_S = int(1 / TIME_BASE)


#: A frame up to this many slots early still gets the next slot: under load a reader hands over a
#: steady camera's frames in uneven pairs (one late, the next on time), and skipping the second lost
#: 0.4 frames a second per camera with 4 cameras on 2 cores. A camera faster than the output runs
#: this far ahead at most and is skipped down to the output fps.
EARLY_SLOTS = 1


class OutputClock:
    """Timestamps on a regular 1/fps grid from the worker's own clock, never the camera's.

    A frame's slot is its time rounded to the grid; a frame whose slot is more than EARLY_SLOTS
    behind the last one used is a frame too many (the camera is faster than the output). The frame rate can change mid-stream: the grid is
    re-based on the last frame, so timestamps keep increasing.
    """

    def __init__(self, fps: float, t0: float) -> None:
        self.fps = fps
        self._t0 = t0
        self._slot0 = 0
        self._pts0 = 0
        self.last_slot = -1
        self.last_pts = -1
        self._last_t = t0

    def slot(self, t: float) -> int:
        return self._slot0 + round((t - self._t0) * self.fps)

    def is_free(self, t: float) -> bool:
        return self.slot(t) + EARLY_SLOTS > self.last_slot

    def next_due(self) -> float:
        """The middle of the next free slot: when a frame made up on the spot (the slate) is due."""
        return self._t0 + (self.last_slot + 1 - self._slot0) / self.fps

    def next_pts(self, t: float) -> int:
        """The pts (1/90000 s) of a frame published for time `t`; strictly increasing."""
        self.last_slot = max(self.last_slot + 1, self.slot(t))
        pts = self._pts0 + round((self.last_slot - self._slot0) * TICKS_PER_S / self.fps)
        self.last_pts = max(self.last_pts + 1, pts)
        self._last_t = max(self._last_t, t)
        return self.last_pts

    def set_fps(self, fps: float) -> None:
        self._t0, self._slot0, self._pts0 = self._last_t, self.last_slot, self.last_pts
        self.fps = fps


def make_slate(width: int, height: int, text: str) -> Image:
    """A dark frame that says clearly why there is no picture."""
    slate = np.full((height, width, 3), 32, np.uint8)
    scale = max(0.6, width / 900)
    thickness = max(1, round(scale * 2))
    (text_w, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    origin = ((width - text_w) // 2, (height + text_h) // 2)
    cv2.putText(slate, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (200, 200, 200), thickness, cv2.LINE_AA)
    return slate


def jpeg_of(image: Image) -> Callable[[], bytes]:
    """A deferred JPEG encoder: the cost is paid only by whoever asks for the snapshot."""

    def encode() -> bytes:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        return data.tobytes() if ok else b""

    return encode


class FramePublisher:
    """The encoder, clock and slate of one camera, and its writes into the camera's StreamHub.

    Touched only by the camera's worker thread (see the module docstring). The pipeline that owns
    the thread holds one instance; it keeps the hub's life (closing it once the worker is gone) and
    the observer (which callers may replace), so it tells the observer about each frame itself.
    """

    def __init__(
        self,
        name: str,
        output: OutputConfig,
        hub: StreamHub,
        stats: CameraStats,
        t0: float,
    ) -> None:
        self.name = name
        self.hub = hub
        self.stats = stats
        self.clock = OutputClock(output.fps, t0)
        self._codec = output.encoder
        self._bitrate = output.bitrate_kbps
        self._encoder: H264Encoder | None = None
        self._slate: Image | None = None
        #: Size of the newest real frame published (the output size); None before the first.
        self._frame_size: tuple[int, int] | None = None
        #: The newest published frame as a deferred JPEG; read by other threads (web previews).
        self.latest_jpeg: Callable[[], bytes] | None = None

    # --- what the worker publishes ---------------------------------------------------------------

    def publish(self, processed: Processed) -> None:
        """An anonymized camera frame: encode and send it, and record how late it went out."""
        height, width = processed.image.shape[:2]
        self._frame_size = (width, height)  # a real frame: its size is the output size from now on
        self._encode_and_send(processed.image, processed.t)
        self.stats.record_latency((time.monotonic() - processed.t) * 1000.0)

    def publish_slate(self, now: float, target_height: int | None) -> None:
        """The offline slate, at most one per slot of the output fps (the camera is away)."""
        if self.clock.is_free(now):
            self._encode_and_send(self._slate_image(target_height), now)

    # --- settings and encoder life ---------------------------------------------------------------

    def set_fps(self, fps: float) -> None:
        """A new output rate: the clock re-bases and the encoder is made again at the new rate."""
        if fps != self.clock.fps:
            self.clock.set_fps(fps)
            self._replace_encoder()

    def discard_encoder(self) -> None:
        """After an unexpected worker error: a fresh encoder (new keyframe) rather than one in an
        unknown state; nothing is flushed from it."""
        self._encoder = None

    def close(self) -> None:
        """The worker's last act: flush what the encoder still holds into the hub."""
        if self._encoder is not None:
            self.hub.publish(self._encoder.flush())

    # --- internals -------------------------------------------------------------------------------

    def _encode_and_send(self, image: Image, t: float) -> None:
        encoder = self._encoder_for(image)
        pts = self.clock.next_pts(t)
        started = time.perf_counter()
        packets = encoder.encode(image, pts)
        self.stats.record_stage("encode", time.perf_counter() - started)
        self.hub.publish(packets)
        self.latest_jpeg = jpeg_of(image)
        self.stats.frame_out()

    def _encoder_for(self, image: Image) -> H264Encoder:
        """The encoder for `image`'s size: a new one (new keyframe, same clock) when the size changed."""
        height, width = image.shape[:2]
        if self._encoder is not None and (self._encoder.width, self._encoder.height) != (width, height):
            log.info(
                "%s: output size %dx%d -> %dx%d",
                self.name,
                self._encoder.width,
                self._encoder.height,
                width,
                height,
            )
            self._replace_encoder()
        if self._encoder is None:
            codec = probe_encoder(self._codec)
            self._encoder = H264Encoder(width, height, self.clock.fps, self._bitrate, codec)
            self.stats.set_encoder(codec)
        return self._encoder

    def _replace_encoder(self) -> None:
        if self._encoder is not None:
            self.hub.publish(self._encoder.flush())
        self._encoder = None  # made again, at the next frame's size and the current fps

    def _slate_image(self, target_height: int | None) -> Image:
        """The slate at the output size: the camera's once known, else a guess from `output.height`."""
        width, height = self._frame_size or DEFAULT_SIZE
        if target_height is not None and target_height != height:
            width, height = output_size(width, height, target_height)
        if self._slate is None or self._slate.shape[:2] != (height, width):
            self._slate = make_slate(width, height, f"{self.name}: camera offline")
        return self._slate.copy()
