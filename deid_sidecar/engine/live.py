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
from typing import Any

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
        self.fps = camera.output.fps
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
        self._last_slot = -1
        self._slate: Image | None = None

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

    def _slot(self, t: float) -> int:
        """Output frame number for time `t`: timestamps sit on a regular 1/fps grid."""
        return round((t - self._t0) * self.fps)

    def _run(self) -> None:
        interval = 1.0 / self.fps
        next_stats = time.monotonic() + STATS_INTERVAL_S
        while not self._stop.is_set():
            frame = self.mailbox.take(timeout=interval)
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_INTERVAL_S
                self._report_stats()
            if frame is None:
                self._maybe_slate(now, interval)
                continue
            if self._slot(frame.t) <= self._last_slot:
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
        self._last_slot = max(self._last_slot + 1, self._slot(t))
        pts = round(self._last_slot * TICKS_PER_S / self.fps)
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

    # --- web UI controls (appended for deid_sidecar.web) -----------------------------------------
    # The reader and worker threads cannot be restarted after stop(), so the UI's stop/start is a
    # privacy shutter: while paused no detection runs and every frame is masked whole (fail closed);
    # the published stream stays up, so go2rtc consumers never see it end.

    @property
    def paused(self) -> bool:
        return bool(getattr(self, "_paused", False))

    def pause(self) -> None:
        self._paused = True
        self.processor.detection_enabled = False

    def resume(self, detection: bool = True) -> None:
        self._paused = False
        self.processor.detection_enabled = detection

    def enable_raw_capture(self) -> None:
        """Let `latest_raw_jpeg` show frames BEFORE anonymization (the admin's original view only).

        Wraps the processor's entry point instead of changing the worker loop; a frame is copied
        only while someone watches (`raw_viewers` > 0), because the processor masks in place.
        """
        if getattr(self, "_raw_tap", False):
            return
        self._raw_tap = True
        self.raw_viewers = 0
        self._raw_image: Image | None = None
        process = self.processor.process

        def tapped(image: Image, *args: Any, **kwargs: Any) -> list[Processed]:
            if self.raw_viewers > 0:
                self._raw_image = image.copy()
            return process(image, *args, **kwargs)

        setattr(self.processor, "process", tapped)  # noqa: B010 (mypy forbids assigning a method)

    def latest_raw_jpeg(self) -> bytes | None:
        """JPEG of the newest frame before anonymization; None unless captured. Call off the loop."""
        image = getattr(self, "_raw_image", None)
        return None if image is None else _jpeg_of(image)()


def _jpeg_of(image: Image) -> Callable[[], bytes]:
    """A deferred JPEG encoder: the cost is paid only by whoever asks for the snapshot."""

    def encode() -> bytes:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        return data.tobytes() if ok else b""

    return encode
