"""One live camera: reader thread -> worker thread (process, encode) -> stream hub.

The worker paces itself to the output fps and takes the newest decoded frame each time (older ones
are counted as dropped). Output timestamps come from the worker's own clock, so the published
stream stays continuous across camera reconnects; while the camera is away it shows an
"offline" slate, never a stale or raw frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np

from deid_sidecar.anonymize.masks import Anonymizer, ZoneMasker
from deid_sidecar.config import CameraConfig, Config, FailMode, Method, Zone, output_name
from deid_sidecar.core.image import Image, as_image
from deid_sidecar.detect.base import Detector
from deid_sidecar.engine.observer import FrameObserver
from deid_sidecar.engine.processor import FrameProcessor, Processed
from deid_sidecar.outputs.encoder import TIME_BASE, H264Encoder, probe_encoder
from deid_sidecar.outputs.http_ts import StreamHub
from deid_sidecar.sources.reader import FrameQueue, FrameReader
from deid_sidecar.sources.spec import parse_source
from deid_sidecar.stats import CameraStats

log = logging.getLogger(__name__)

#: Without a new frame for this long the camera counts as offline and the slate is shown.
OFFLINE_AFTER_S = 1.5
#: Decoded frames waiting for the worker: about half a second at 15 fps, enough to catch up after
#: a frame that ran the detector; beyond it the oldest frames are dropped (and counted).
QUEUE_FRAMES = 8
#: A sub-stream frame further than this from the main frame is not used (the main frame is).
DETECT_SOURCE_MAX_SKEW_S = 0.25
#: How often stats go to the observer (MQTT) and the log.
STATS_INTERVAL_S = 5.0
#: Output size used for the slate before the camera ever delivered a frame.
DEFAULT_SIZE = (1280, 720)
TICKS_PER_S = int(1 / TIME_BASE)


class OutputClock:
    """Timestamps on a regular 1/fps grid from the worker's own clock, never the camera's.

    A frame's slot is its time rounded to the grid; a slot already used is a frame too many
    (the camera is faster than the output). The frame rate can change mid-stream: the grid is
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
        return self.slot(t) > self.last_slot

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


class CameraPipeline:
    def __init__(
        self,
        name: str,
        camera: CameraConfig,
        config: Config,
        detector: Detector | None = None,
        observer: FrameObserver | None = None,
    ) -> None:
        self.name = name
        self.camera = camera
        self.output = output_name(name, camera)
        self.stats = CameraStats(name, self.output)
        self.hub = StreamHub(self.output, self.stats)
        self.observer = observer
        self.spec = parse_source(camera.source, config.go2rtc, camera.loop)
        self.mailbox = FrameQueue(QUEUE_FRAMES)
        self.reader = FrameReader(self.spec, self.mailbox, self.stats, camera.output.height)
        self.detect_mailbox: FrameQueue | None = None
        self.detect_reader: FrameReader | None = None
        if camera.detect_source:
            # A sub stream to detect on: its own reader and stats, so its drops are not the camera's.
            self.detect_mailbox = FrameQueue(1)
            self.detect_reader = FrameReader(
                parse_source(camera.detect_source, config.go2rtc, camera.loop),
                self.detect_mailbox,
                CameraStats(f"{name}-detect", self.output),
            )
        self._anonymize_config = config.anonymize
        self._zones = list(camera.zones)
        self._invert_zones = camera.invert_zones
        anonymizer = Anonymizer.from_config(config.anonymize, camera.method)
        self.processor = FrameProcessor(
            detector,
            config.privacy,
            anonymizer,
            ZoneMasker(camera.zones, camera.invert_zones, anonymizer),
            realtime=True,
        )
        self.auto_detect_every = config.privacy.detect_every == 0
        self._hold_on_failure = config.privacy.on_failure is FailMode.HOLD
        self.latest_jpeg: Callable[[], bytes] | None = None
        self._encoder: H264Encoder | None = None
        self._codec = camera.output.encoder
        self._bitrate = camera.output.bitrate_kbps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)
        self._t0 = time.monotonic()
        self.clock = OutputClock(camera.output.fps, self._t0)
        self._slate: Image | None = None
        self._pending_output: tuple[float | None, int | None] | None = None
        self._output_lock = threading.Lock()
        self.paused = False
        #: While > 0, frames are copied BEFORE anonymization for the admin's original view.
        self.raw_viewers = 0
        self._raw_image: Image | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        log.info(
            "%s: reading %s, publishing %s at %.0f fps", self.name, self.spec.display, self.output, self.fps
        )
        self.reader.start()
        if self.detect_reader is not None:
            self.detect_reader.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.reader.stop()
        if self.detect_reader is not None:
            self.detect_reader.stop()
        self._thread.join(5.0)
        self.processor.close()
        if self._encoder is not None:
            self.hub.publish(self._encoder.flush())
        self.hub.close()
        self._set_state("stopped")

    def set_detector(self, detector: Detector) -> None:
        """Install the detector once its models are loaded; until then every frame is masked whole."""
        self.processor.detector = detector

    # --- controls (web, MQTT) --------------------------------------------------------------------

    def set_method(self, method: Method) -> None:
        self.processor.anonymizer = Anonymizer.from_config(self._anonymize_config, method)
        self._rebuild_zones()

    def set_zones(self, zones: list[Zone], invert: bool | None = None) -> None:
        self._zones = list(zones)
        if invert is not None:
            self._invert_zones = invert
        self._rebuild_zones()

    @property
    def zones(self) -> list[Zone]:
        return list(self._zones)

    def _rebuild_zones(self) -> None:
        self.processor.zones = ZoneMasker(self._zones, self._invert_zones, self.processor.anonymizer)

    def set_detection(self, enabled: bool) -> None:
        """Detection off masks whole frames (a privacy shutter), it never lets clear video out."""
        self.processor.detection_enabled = enabled

    def set_masking(self, enabled: bool) -> None:
        """Only the app calls this, and only when the config allows remote unmasking."""
        self.processor.masking_enabled = enabled

    # --- worker ----------------------------------------------------------------------------------

    @property
    def fps(self) -> float:
        return self.clock.fps

    def _run(self) -> None:
        next_stats = time.monotonic() + STATS_INTERVAL_S
        while not self._stop.is_set():
            self._apply_output_change()
            interval = 1.0 / self.fps
            frame = self.mailbox.take(timeout=interval)
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_INTERVAL_S
                self._report_stats()
            if frame is None:
                self._maybe_slate(now, interval)
                continue
            if not self.clock.is_free(frame.t):
                with self.stats.lock:
                    self.stats.frames_dropped += 1  # the camera is faster than the output fps
                continue
            try:
                self._process(frame.image, frame.t, frame.index, frame.generation)
            except Exception:  # one bad frame must never stop the camera or leak: drop it
                log.exception("%s: frame %d could not be processed and was dropped", self.name, frame.index)
                with self.stats.lock:
                    self.stats.frames_dropped += 1

    def _process(self, image: Image, t: float, index: int, generation: int) -> None:
        if self.raw_viewers > 0:
            self._raw_image = image.copy()  # the processor masks in place
        started = time.perf_counter()
        outputs = self.processor.process(image, t, index, generation, self._detect_image(t))
        self.stats.record_stage("process", time.perf_counter() - started)
        for processed in outputs:
            if processed.whole_frame and self._hold_on_failure:
                with self.stats.lock:
                    self.stats.frames_dropped += 1  # configured to hold rather than show a masked frame
                continue
            self._publish(processed)
        self._set_state("degraded" if self.processor.degraded else "online")
        if self.auto_detect_every:
            self.processor.adapt_schedule(1000.0 / self.fps, self.stats.stage_ms.get("encode", 0.0))

    def _detect_image(self, t: float) -> Image | None:
        """The sub stream's newest frame when it is close in time to the main one, else None."""
        if self.detect_mailbox is None:
            return None
        frame = self.detect_mailbox.peek()
        if frame is None or abs(frame.t - t) > DETECT_SOURCE_MAX_SKEW_S:
            return None
        return frame.image

    def _publish(self, processed: Processed) -> None:
        image = self._encode_and_send(processed.image, processed.t)
        self.stats.record_latency((time.monotonic() - processed.t) * 1000.0)
        with self.stats.lock:
            counters = self.processor.counters
            self.stats.detections_run = counters.detections_run
            self.stats.detector_errors = counters.detector_errors + counters.detector_timeouts
            self.stats.frames_masked_whole = counters.frames_masked_whole
        if self.observer is not None:
            self.observer.on_frame(self.name, time.time(), processed.objects, _jpeg_of(image))

    def _encode_and_send(self, image: Image, t: float) -> Image:
        encoder = self._encoder_for(image)
        if image.shape[:2] != (encoder.height, encoder.width):
            image = as_image(cv2.resize(image, (encoder.width, encoder.height), interpolation=cv2.INTER_AREA))
        pts = self.clock.next_pts(t)
        started = time.perf_counter()
        packets = encoder.encode(image, pts)
        self.stats.record_stage("encode", time.perf_counter() - started)
        self.hub.publish(packets)
        self.latest_jpeg = _jpeg_of(image)
        with self.stats.lock:
            self.stats.frames_out += 1
        self.stats.fps_out.tick()
        return image

    def _encoder_for(self, image: Image) -> H264Encoder:
        if self._encoder is None:
            height, width = image.shape[:2]
            codec = probe_encoder(self._codec)
            self._encoder = H264Encoder(width, height, self.fps, self._bitrate, codec)
            with self.stats.lock:
                self.stats.encoder = codec
        return self._encoder

    def _maybe_slate(self, now: float, interval: float) -> None:
        """While the camera is away, keep the stream alive with a clearly marked slate."""
        last = self.stats.last_frame_time or self._t0
        if now - last < OFFLINE_AFTER_S:
            return
        self._set_state("offline")
        if self._slate is None:
            width, height = (self._encoder.width, self._encoder.height) if self._encoder else DEFAULT_SIZE
            self._slate = make_slate(width, height, f"{self.name}: camera offline")
        self._encode_and_send(self._slate.copy(), now)
        self._stop.wait(max(0.0, interval - (time.monotonic() - now)))

    def _set_state(self, state: str) -> None:
        with self.stats.lock:
            if self.stats.state == state:
                return
            self.stats.state = state
        log.info("%s: %s", self.name, state)
        if self.observer is not None:
            self.observer.on_status(self.name, state)

    def _report_stats(self) -> None:
        snapshot = self.stats.snapshot()
        log.debug("%s: %s", self.name, snapshot)
        if self.observer is not None:
            self.observer.on_stats(self.name, snapshot)

    # --- web UI controls -------------------------------------------------------------------------
    # The reader and worker threads cannot be restarted after stop(), so the UI's stop/start is a
    # privacy shutter: while paused no detection runs and every frame is masked whole (fail closed);
    # the published stream stays up, so go2rtc consumers never see it end.

    def pause(self) -> None:
        self.paused = True
        self.processor.detection_enabled = False

    def resume(self, detection: bool = True) -> None:
        self.paused = False
        self.processor.detection_enabled = detection

    def latest_raw_jpeg(self) -> bytes | None:
        """JPEG of the newest frame before anonymization, captured only while `raw_viewers` > 0."""
        image = self._raw_image
        return None if image is None else _jpeg_of(image)()

    def apply_output(self, fps: float | None = None, height: int | None = None) -> None:
        """Change the output frame rate and/or height live; the worker applies it at its next frame.

        A new height means a new encoder: the next packet is a keyframe with new SPS/PPS at the new
        size, and timestamps continue (players and go2rtc follow an in-band resolution change).
        """
        with self._output_lock:
            self._pending_output = (fps, height)

    def _apply_output_change(self) -> None:
        with self._output_lock:
            pending, self._pending_output = self._pending_output, None
        if pending is None:
            return
        fps, height = pending
        if fps is not None and fps != self.clock.fps:
            self.clock.set_fps(fps)
            self._replace_encoder()
        if height is not None and height != self.reader.target_height:
            self.reader.target_height = height
            self._replace_encoder()
        log.info("%s: output now %.0f fps, height %s", self.name, self.fps, self.reader.target_height)

    def _replace_encoder(self) -> None:
        if self._encoder is not None:
            self.hub.publish(self._encoder.flush())
        self._encoder = None  # made again, at the next frame's size and the current fps
        self._slate = None


def _jpeg_of(image: Image) -> Callable[[], bytes]:
    """A deferred JPEG encoder: the cost is paid only by whoever asks for the snapshot."""

    def encode() -> bytes:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        return data.tobytes() if ok else b""

    return encode
