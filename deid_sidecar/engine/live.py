"""One live camera: reader thread -> worker thread (process, encode) -> stream hub.

`CameraPipeline` owns the camera's threads (the reader's and the `camera-<cam>` worker), the
settings the worker applies, the camera state and its stats. The output side the worker alone
touches (output clock, encoder, offline slate, StreamHub writes) is its `FramePublisher`
(engine/publisher.py).

The worker takes the reader's frames in order and publishes at most one per slot of the output
fps: the rest are skipped on purpose (`frames_skipped`); frames lost because the worker fell
behind are `frames_dropped`. While the camera is away the stream shows an "offline" slate at the
output fps, never a stale or raw frame.

The runtime settings (method, zones, detection, pause, fps, height) are owned by `settings`
(engine/settings.py), which the web API and MQTT change; the worker compares its version at every
frame and applies what changed on its own thread, so no other thread writes the processor or the
encoder.

The state changes on real events only: `offline` when no frame came for OFFLINE_AFTER_S, and back
once frames have flowed again for FLOWING_AFTER_S (a lone frame in an outage is not a recovery).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from deid_sidecar.anonymize.masks import Anonymizer, ZoneMasker
from deid_sidecar.config import CameraConfig, Config, FailMode, Method, Zone, output_name
from deid_sidecar.core.image import Image
from deid_sidecar.detect.base import Detector
from deid_sidecar.engine.observer import FrameObserver
from deid_sidecar.engine.processor import FrameProcessor, Processed
from deid_sidecar.engine.publisher import FramePublisher, jpeg_of
from deid_sidecar.engine.settings import CameraSettings, SettingsValues
from deid_sidecar.outputs.http_ts import StreamHub
from deid_sidecar.sources.reader import FLOWING_AFTER_S, FrameQueue, FrameReader
from deid_sidecar.sources.spec import parse_source
from deid_sidecar.stats import CameraStats

log = logging.getLogger(__name__)

#: Without a new frame for this long the camera counts as offline and the slate is shown.
OFFLINE_AFTER_S = 1.5
#: Seconds the worker waits before starting its loop again after an unexpected error.
WORKER_RESTART_S = 1.0
#: Camera states that make /healthz answer 503.
UNHEALTHY_STATES = frozenset({"offline", "failed"})
#: Decoded frames waiting for the worker: about half a second at 15 fps, enough to catch up after
#: a frame that ran the detector; beyond it the oldest frames are dropped (and counted).
QUEUE_FRAMES = 8
#: A sub-stream frame further than this from the main frame is not used (the main frame is).
DETECT_SOURCE_MAX_SKEW_S = 0.25
#: How often stats go to the observer (MQTT) and the log.
STATS_INTERVAL_S = 5.0


class CameraPipeline:
    def __init__(
        self,
        name: str,
        camera: CameraConfig,
        config: Config,
        detector: Detector | None = None,
        observer: FrameObserver | None = None,
        settings: CameraSettings | None = None,
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
        #: The one owner of this camera's runtime settings; web and MQTT submit changes to it.
        self.settings = settings or CameraSettings.from_camera(name, camera, config)
        #: The version and values the worker applied last (only the worker thread writes these).
        self._applied_version, self._applied = self.settings.snapshot()
        anonymizer = Anonymizer.from_config(config.anonymize, self._applied.method)
        self.processor = FrameProcessor(
            detector,
            config.privacy,
            anonymizer,
            ZoneMasker(list(self._applied.zones), self._applied.invert_zones, anonymizer),
            realtime=True,
        )
        self.auto_detect_every = config.privacy.detect_every == 0
        self._hold_on_failure = config.privacy.on_failure is FailMode.HOLD
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)
        self._t0 = time.monotonic()
        #: Clock, encoder, slate and hub writes: touched by the worker thread only.
        self._publisher = FramePublisher(name, camera.output, self.hub, self.stats, self._t0)
        #: When the worker last took a camera frame (0: never).
        self._last_frame_t = 0.0
        #: True from the moment the camera counts as offline until frames flow again.
        self._outage = False
        #: Time of the first frame after an outage; frames flow again FLOWING_AFTER_S after it.
        self._flow_start: float | None = None
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
        self._thread.join(5.0)  # the worker flushes its encoder on the way out
        self.processor.close()
        self.hub.close()
        self._set_state("stopped")

    def set_detector(self, detector: Detector) -> None:
        """Install the detector once its models are loaded; until then every frame is masked whole."""
        self.processor.detector = detector

    # --- controls (web, MQTT) --------------------------------------------------------------------
    # Each submits to `settings`; the worker applies the result between frames, on its own thread.

    def set_method(self, method: Method, by: str = "app") -> None:
        self.settings.update(by, method=method)

    def set_zones(self, zones: list[Zone], invert: bool | None = None, by: str = "app") -> None:
        if invert is None:
            self.settings.update(by, zones=zones)
        else:
            self.settings.update(by, zones=zones, invert_zones=invert)

    @property
    def zones(self) -> list[Zone]:
        return list(self.settings.values.zones)

    def set_detection(self, enabled: bool, by: str = "app") -> None:
        """Detection off masks whole frames (a privacy shutter), it never lets clear video out."""
        self.settings.update(by, detection=enabled)

    def set_masking(self, enabled: bool, by: str = "app") -> None:
        """Only the app calls this, and only when the config allows remote unmasking."""
        self.settings.update(by, masking=enabled)

    @property
    def paused(self) -> bool:
        return self.settings.values.paused

    @property
    def settings_applied(self) -> bool:
        """True once the worker has applied the newest settings (for tests and status)."""
        return self._applied_version == self.settings.version

    # --- worker ----------------------------------------------------------------------------------

    @property
    def fps(self) -> float:
        return self._publisher.clock.fps

    @property
    def latest_jpeg(self) -> Callable[[], bytes] | None:
        """The newest published (anonymized) frame as a deferred JPEG, for the web previews."""
        return self._publisher.latest_jpeg

    @latest_jpeg.setter
    def latest_jpeg(self, encode: Callable[[], bytes] | None) -> None:
        self._publisher.latest_jpeg = encode

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._work()
                except Exception:  # a bug outside the per-frame guard: log it, start the loop over
                    log.exception("%s: the camera worker failed unexpectedly; starting it again", self.name)
                    self._publisher.discard_encoder()
                    self._stop.wait(WORKER_RESTART_S)
        finally:
            self._publisher.close()  # here, on the worker thread: only this thread touches the encoder

    def problem(self) -> str | None:
        """Why this camera is unhealthy (a thread ended, no picture), or None; read by /healthz."""
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "its worker thread ended"
        if self.reader.dead:
            return "its reader thread ended"
        state = self.stats.snapshot()["state"]
        if state in UNHEALTHY_STATES and not self.paused:
            return f"{state}: no frames from {self.spec.display} for {OFFLINE_AFTER_S:.1f} s or more"
        return None

    def _work(self) -> None:
        next_stats = time.monotonic() + STATS_INTERVAL_S
        while not self._stop.is_set():
            self._apply_settings()
            interval = 1.0 / self.fps
            frame = self.mailbox.take(timeout=self._wait_s(interval))
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_INTERVAL_S
                self._report_stats()
            if frame is None:
                self._maybe_slate(now)
                continue
            self._last_frame_t = max(self._last_frame_t, frame.t)
            if self._outage and self._flow_start is None:
                self._flow_start = frame.t
            if not self._publisher.clock.is_free(frame.t):
                self.stats.frame_skipped()  # the camera is faster than the output fps
                continue
            try:
                self._apply_settings()  # again: a change (a Stop) may have come while waiting for the frame
                self._process(frame.image, frame.t, frame.index, frame.generation)
            except Exception:  # one bad frame must never stop the camera or leak: drop it
                log.exception("%s: frame %d could not be processed and was dropped", self.name, frame.index)
                self.stats.frame_dropped()

    def _wait_s(self, interval: float) -> float:
        """How long to wait for a frame: a frame interval, or until the next slate is due."""
        now = time.monotonic()
        if not self._camera_away(now):
            return interval
        return min(interval, max(0.0, self._publisher.clock.next_due() - now))

    def _camera_away(self, now: float) -> bool:
        return now - (self._last_frame_t or self._t0) >= OFFLINE_AFTER_S

    def _process(self, image: Image, t: float, index: int, generation: int) -> None:
        if self.raw_viewers > 0:
            self._raw_image = image.copy()  # the processor masks in place
        started = time.perf_counter()
        detections_before = self.processor.counters.detections_run
        outputs = self.processor.process(image, t, index, generation, self._detect_image(t))
        elapsed = time.perf_counter() - started
        self.stats.record_stage("process", elapsed)
        detections = self.processor.counters.detections_run - detections_before
        if detections:
            self.stats.detection_ran(detections)
        else:  # what every frame costs besides detection: tracking, masking
            self.stats.record_stage("mask", elapsed)
        for processed in outputs:
            if processed.whole_frame and self._hold_on_failure:
                self.stats.frame_dropped()  # configured to hold rather than show a masked frame
                continue
            self._publish(processed)
        self._update_state(t)
        if self.auto_detect_every:
            # Measured on this camera's own thread, so with several cameras on the same cores these
            # costs grow and detection spreads out instead of the camera falling behind.
            other_ms = self.stats.stage("encode") + self.stats.stage("mask")
            self.processor.adapt_schedule(1000.0 / self.fps, other_ms)

    def _update_state(self, t: float) -> None:
        """After a processed frame: online or degraded, unless an outage is not over yet."""
        if self._outage:
            if self._flow_start is None or t - self._flow_start < FLOWING_AFTER_S:
                return  # a lone frame, or a burst of buffered ones, in an outage is not a recovery
            self._outage, self._flow_start = False, None
        self._set_state("degraded" if self.processor.degraded else "online")

    def _detect_image(self, t: float) -> Image | None:
        """The sub stream's newest frame when it is close in time to the main one, else None."""
        if self.detect_mailbox is None:
            return None
        frame = self.detect_mailbox.peek()
        if frame is None or abs(frame.t - t) > DETECT_SOURCE_MAX_SKEW_S:
            return None
        return frame.image

    def _publish(self, processed: Processed) -> None:
        self._publisher.publish(processed)
        counters = self.processor.counters
        self.stats.set_detector_counters(
            counters.detections_run,
            counters.detector_errors + counters.detector_timeouts,
            counters.frames_masked_whole,
        )
        if self.observer is not None:  # only now is the frame known to be out, and anonymized
            self.observer.on_frame(self.name, time.time(), processed.objects, jpeg_of(processed.image))

    def _maybe_slate(self, now: float) -> None:
        """While the camera is away, keep the stream alive with a clearly marked slate, one per slot."""
        if not self._camera_away(now):
            return
        self._outage, self._flow_start = True, None
        self._set_state("offline")
        self._publisher.publish_slate(now, self.reader.target_height)

    def _set_state(self, state: str) -> None:
        if not self.stats.set_state(state):
            return
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

    def pause(self, by: str = "app") -> None:
        self.settings.update(by, paused=True)

    def resume(self, by: str = "app") -> None:
        """The detection wish stays as set; it takes effect again now that the camera is not paused."""
        self.settings.update(by, paused=False)

    def latest_raw_jpeg(self) -> bytes | None:
        """JPEG of the newest frame before anonymization, captured only while `raw_viewers` > 0."""
        image = self._raw_image
        return None if image is None else jpeg_of(image)()

    def apply_output(self, fps: float | None = None, height: int | None = None, by: str = "app") -> None:
        """Change the output frame rate and/or height live; the worker applies it at its next frame.

        A new height means a new encoder: the next packet is a keyframe with new SPS/PPS at the new
        size, and timestamps continue (players and go2rtc follow an in-band resolution change).
        """
        changes: dict[str, Any] = {}
        if fps is not None:
            changes["fps"] = fps
        if height is not None:
            changes["height"] = height
        self.settings.update(by, **changes)

    def _apply_settings(self) -> None:
        """Worker thread, between frames: apply what changed since the settings version applied last."""
        version, new = self.settings.snapshot()
        if version == self._applied_version:
            return
        old, self._applied = self._applied, new
        self._applied_version = version
        self._apply_masking(old, new)
        self._apply_output_change(old, new)

    def _apply_masking(self, old: SettingsValues, new: SettingsValues) -> None:
        processor = self.processor
        processor.detection_enabled = new.effective_detection
        processor.masking_enabled = new.masking
        if new.method != old.method:
            processor.anonymizer = Anonymizer.from_config(self._anonymize_config, new.method)
        if (new.method, new.zones, new.invert_zones) != (old.method, old.zones, old.invert_zones):
            processor.zones = ZoneMasker(list(new.zones), new.invert_zones, processor.anonymizer)

    def _apply_output_change(self, old: SettingsValues, new: SettingsValues) -> None:
        if (new.fps, new.height) == (old.fps, old.height):
            return
        self._publisher.set_fps(new.fps)
        if new.height is not None and new.height != self.reader.target_height:
            # The reader scales to it; the first frame at the new size replaces the encoder.
            self.reader.target_height = new.height
        log.info("%s: output now %.0f fps, height %s", self.name, self.fps, self.reader.target_height)
