"""Decides, for each frame, what gets masked, and masks it: the privacy core shared by live and file mode.

Per frame: detect (when scheduled) -> track -> union of raw detections and coasting tracks ->
optional look-ahead buffer (back-fills objects first seen later) -> anonymize.

Live, a detection pass between two full ones looks only at the regions where the picture changed
and around what was found (track/changes.py); a pass with nothing changed and nothing tracked needs
no model: the detector already vouched for that picture.

FAIL CLOSED: a frame is masked WHOLE when there is no detection to vouch for it: before the first
detection, after a reconnect until the next one, when the detector raised or ran past its budget,
when the newest detection is older than the budget, and when detection is switched off.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from deid_sidecar.anonymize.masks import Anonymizer, ZoneMasker, mask_whole_frame
from deid_sidecar.config import PrivacyConfig, WholeFrameMask
from deid_sidecar.core.boxes import Rect
from deid_sidecar.core.detections import Detections
from deid_sidecar.core.image import Image
from deid_sidecar.detect.base import DetectionRefused, Detector, RegionDetector, SharedDetector
from deid_sidecar.track.changes import ChangedRegions, LookPlan
from deid_sidecar.track.edges import EdgeGuard
from deid_sidecar.track.policy import DelayBuffer, DetectionScheduler, SharedLoadSpacing
from deid_sidecar.track.scenecut import SceneCutDetector
from deid_sidecar.track.tracker import Tracker

log = logging.getLogger(__name__)

#: Under overload every detection may be refused: say so once per this many seconds.
REFUSAL_LOG_S = 10.0
#: New tracks at least this confident earn a burst of extra detections (see DetectionScheduler).
BURST_MIN_CONFIDENCE = 0.5
#: Live cameras space their detections so the inference workers they share are at most this busy.
#: Four cameras on 2 cores, one run each (bench/capacity.py): at 0.6 p95 189 ms and 0.41 % face
#: leak, at 0.7 238 ms and 0.15 %, with nothing shared (about 0.9) 317 ms and 0.24 %.
TARGET_LOAD = 0.6


@dataclass
class FrameWork:
    """A frame on its way through the processor."""

    image: Image
    t: float
    index: int
    whole_frame: bool  # no detection vouches for this frame: hide all of it
    edge_regions: list[Rect]  # moving regions along the edges, hidden too (track/edges.py)


@dataclass(frozen=True)
class Processed:
    """A frame ready to encode: `image` is anonymized, `objects` is what was masked (track ids set)."""

    image: Image
    t: float
    index: int
    objects: Detections
    whole_frame: bool


@dataclass
class ProcessorCounters:
    detections_run: int = 0
    detector_errors: int = 0
    detector_timeouts: int = 0
    frames_masked_whole: int = 0
    objects_masked: int = 0
    detect_ms: float = 0.0  # moving average of one detector call


class FrameProcessor:
    def __init__(
        self,
        detector: Detector | None,
        privacy: PrivacyConfig,
        anonymizer: Anonymizer,
        zones: ZoneMasker,
        *,
        realtime: bool,
        lookahead_frames: int | None = None,
    ) -> None:
        """`realtime`: detection has a time budget (live); file mode waits for every detection.

        `lookahead_frames` (file mode) replaces `privacy.delay_ms` with a look-ahead in frames.
        """
        self.detector = detector
        self.privacy = privacy
        self.anonymizer = anonymizer
        self.zones = zones
        self.realtime = realtime
        self.detection_enabled = True
        self.masking_enabled = True
        self.tracker = Tracker(hold_s=privacy.hold_s)
        self.scheduler = DetectionScheduler(every=privacy.detect_every or 1)
        self.shared_spacing = SharedLoadSpacing(TARGET_LOAD)
        self.scene_cuts = SceneCutDetector()
        # Live only: file mode has no frame budget, and looks at every frame whole.
        self.changes = ChangedRegions(privacy.full_detect_s if realtime else 0.0)
        # Live only: file mode's look-ahead masks entering faces back from their first detection.
        self.edge_guard = EdgeGuard(privacy.edge_band if realtime else 0.0)
        if lookahead_frames is not None:
            self.delay: DelayBuffer[FrameWork] = DelayBuffer(
                delay_s=float("inf"), backfill_s=float("inf"), max_frames=lookahead_frames
            )
            # The look-ahead back-fills a new object into the frames before it, so the burst of
            # extra detections that live mode spends on new tracks buys nothing here.
            self.scheduler.burst = 0
        else:
            self.delay = DelayBuffer(delay_s=privacy.delay_ms / 1000.0)
        self.counters = ProcessorCounters()
        self._budget_s = privacy.detect_budget_ms / 1000.0
        self._last_detect_t: float | None = None
        self._generation: int | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="detect")
        self._inflight: Future[Detections] | None = None
        self._refusal_logged_at = -REFUSAL_LOG_S

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def degraded(self) -> bool:
        """True while frames are being masked whole (shown as `degraded` in status)."""
        return self._last_detect_t is None or not self.detection_enabled

    def process(
        self, image: Image, t: float, index: int, generation: int = 0, detect_image: Image | None = None
    ) -> list[Processed]:
        """Take one frame; return the frames now ready to publish (none while the look-ahead fills).

        `detect_image`: the same moment from a lower-resolution stream (a camera's sub stream);
        detection runs on it and its boxes are scaled to `image`.
        """
        if generation != self._generation:
            self._restart(generation)
        whole_frame, mask, born, observed = self._decide(image, t, index, detect_image)
        edges = self.edge_guard.regions(image) if self.detection_enabled else []
        work = FrameWork(image, t, index, whole_frame, edges)
        released = self.delay.push(work, t, mask, born, observed)
        return [self._finish(p.payload, p.mask) for p in released]

    def drain(self) -> list[Processed]:
        """Release every held frame (end of file, shutdown)."""
        return [self._finish(p.payload, p.mask) for p in self.delay.drain()]

    def adapt_schedule(self, frame_interval_ms: float, other_ms: float) -> None:
        """Live: detect as often as the measured detector cost allows at this frame rate, and no more
        often than inference workers shared with other cameras keep up with (SharedLoadSpacing)."""
        if self.counters.detections_run < 3:
            return
        every: float = self.scheduler.every_for_budget(self.counters.detect_ms, frame_interval_ms, other_ms)
        if isinstance(self.detector, SharedDetector):
            every = max(every, self.shared_spacing.update(self.detector.load(), time.monotonic()))
        self.scheduler.every = every

    def _restart(self, generation: int) -> None:
        """A new stream (or its first frame): nothing known about it may vouch for its frames."""
        self._generation = generation
        self.tracker.reset()
        self.scheduler.reset()
        self.edge_guard.reset()
        self.changes.reset()
        self._last_detect_t = None

    def _decide(
        self, image: Image, t: float, index: int, detect_image: Image | None
    ) -> tuple[bool, Detections, Detections, Detections | None]:
        """(mask whole frame?, objects to mask, objects first seen on this frame, objects the
        detector saw on this frame or None when it did not run)."""
        nothing = Detections.empty()
        if self.detector is None or not self.detection_enabled:
            return True, nothing, nothing, None
        scene_cut = self.scene_cuts.update(image)
        if scene_cut:
            self.tracker.reset()
            self.changes.reset()
        if self.scheduler.should_detect(index, scene_cut=scene_cut):
            raw = self._run_detector(image, detect_image, self._plan(image, t, detect_image))
            if raw is None:
                # Due for detection but none came: only the whole mask is safe (a new object
                # may have appeared that no track predicts).
                return True, self.tracker.predict(t), nothing, None
            self.changes.looked(t, raw)
            self._last_detect_t = t
            tracked = self.tracker.update(raw, t)
            born = tracked[np.isin(tracked.track_id, list(self.tracker.new_track_ids()))]
            # Extra detections follow confident newcomers only; a faint box is masked all the same.
            self.scheduler.note_new_tracks(int(np.count_nonzero(born.confidence >= BURST_MIN_CONFIDENCE)))
            return False, Detections.merge([tracked, self.tracker.coasting(t)]), born, tracked
        stale = self._last_detect_t is None or t - self._last_detect_t > self._budget_s
        return stale, self.tracker.predict(t), nothing, None

    def _plan(self, image: Image, t: float, detect_image: Image | None) -> LookPlan:
        """Where this pass looks: regions only for a detector that can look at regions, and not on a
        sub stream (already small)."""
        if detect_image is not None or not isinstance(self.detector, RegionDetector):
            return LookPlan(None)
        return self.changes.plan(image, t, self.tracker.predict(t))

    def _run_detector(self, image: Image, detect_image: Image | None, plan: LookPlan) -> Detections | None:
        """Detections for `image`, or None when the detector failed or ran past its budget."""
        assert self.detector is not None
        if plan.regions == []:
            self.counters.detections_run += 1  # nothing changed, nothing tracked: nothing to find
            return Detections.empty()
        source = image if detect_image is None else detect_image
        if self._inflight is not None:
            if not self._inflight.done():
                return None  # still busy with an earlier frame that ran over budget
            self._inflight = None  # that late result belongs to an old frame: discard it
        started = time.perf_counter()
        if plan.regions is None:
            future = self._executor.submit(self.detector.detect, source)
        else:
            assert isinstance(self.detector, RegionDetector)  # _plan plans regions for no other
            future = self._executor.submit(self.detector.detect_regions, image, plan.regions)
        try:
            result = future.result(timeout=self._budget_s if self.realtime else None)
        except FutureTimeout:
            self._inflight = future
            self.counters.detector_timeouts += 1
            log.warning("detector ran past its %.0f ms budget: masking whole frames", self._budget_s * 1000)
            return None
        except DetectionRefused as exc:  # the shared service is overloaded: expected, no traceback
            self.counters.detector_errors += 1
            if time.monotonic() - self._refusal_logged_at >= REFUSAL_LOG_S:
                self._refusal_logged_at = time.monotonic()
                log.warning("detection refused (%s): masking whole frames", exc)
            return None
        except Exception:
            self.counters.detector_errors += 1
            log.exception("detector failed: masking the whole frame")
            return None
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        c = self.counters
        c.detections_run += 1
        c.detect_ms = elapsed_ms if c.detections_run == 1 else 0.8 * c.detect_ms + 0.2 * elapsed_ms
        if source is not image:
            result = result.scaled(image.shape[1] / source.shape[1], image.shape[0] / source.shape[0])
        return result

    def _finish(self, work: FrameWork, mask: Detections) -> Processed:
        image = work.image
        if not self.masking_enabled:
            return Processed(self.zones.apply(image), work.t, work.index, mask, False)
        if work.whole_frame:
            self.counters.frames_masked_whole += 1
            how = self.privacy.whole_frame
            mask_whole_frame(image, how if isinstance(how, WholeFrameMask) else WholeFrameMask(how))
        else:
            self.anonymizer.apply(image, mask)
            self.counters.objects_masked += len(mask)
            for x1, y1, x2, y2 in work.edge_regions:  # not objects: no events, no counts
                roi = image[y1:y2, x1:x2]
                roi[...] = self.anonymizer.mask_region(roi)
        self.zones.apply(image)
        return Processed(image, work.t, work.index, mask, work.whole_frame)
