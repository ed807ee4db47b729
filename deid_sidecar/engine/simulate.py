"""Live mode, replayed on a file: what a live camera would publish, frame for frame.

`deid-sidecar file IN -o OUT --live` and the leak benchmark's live rows both run `simulate_live`.
The processor runs causally (no look-ahead beyond the privacy delay), with the detection budget
(`privacy.detect_budget_ms`) and the detect-every-N schedule that the live pipeline chooses from
the measured detector cost at the file's frame rate. By default the frames are handed over at that
rate on the wall clock, as a camera's reader would, so a detector too slow for the camera misses
the same detections here (budget timeouts mask whole frames, as live).

Unlike a camera, no frame is skipped or dropped: the output has one frame per input frame with the
input's timestamps, so it can be compared with the input frame for frame (the benchmark does).
Frames a camera with `on_failure: hold` would not publish repeat the last published frame: what a
player keeps showing during the gap. A camera publishes no audio, so there is none.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import av
from pydantic import ValidationError

from deid_sidecar.anonymize.masks import Anonymizer, ZoneMasker
from deid_sidecar.config import Config, FailMode, Method, PrivacyConfig, parse_config
from deid_sidecar.core.detections import Label
from deid_sidecar.core.image import as_image
from deid_sidecar.detect.base import Detector
from deid_sidecar.detect.factories import live_detector
from deid_sidecar.engine.filemode import IMAGE_SUFFIXES, VideoWriter, _check_output, open_video
from deid_sidecar.engine.processor import FrameProcessor, Processed
from deid_sidecar.errors import UserError

#: Per-frame cost outside the detector in live mode at 720p (libx264 ultrafast plus masking),
#: measured here at 9-15 ms; the schedule is chosen as if it were spent.
LIVE_OTHER_MS = 15.0
#: What a camera protects unless told otherwise (CameraConfig.protect's default).
DEFAULT_PROTECT = ("face", "license_plate")


def simulate_live(
    input_path: Path,
    output: Path,
    *,
    delay_ms: int | None = None,
    config: Config | None = None,
    detector: Detector | None = None,
    protect: list[str] | None = None,
    method: Method | None = None,
    pace: bool = True,
) -> int:
    """Write what live mode would publish for `input_path`; returns the number of frames written.

    `delay_ms`: the camera's privacy delay (None: the config's `privacy.delay_ms`). `pace=False`
    replays as fast as possible (CI): the schedule is the same, but an over-budget detection then
    spans fewer wall-clock frames than on a camera. Bad input or output raises UserError.
    """
    config = config or parse_config({})
    privacy = _live_privacy(config.privacy, delay_ms)
    if input_path.suffix.lower() in IMAGE_SUFFIXES:
        raise UserError(f"{input_path}: --live replays a video; for an image use `deid-sidecar image`")
    _check_output(output, input_path)
    source = open_video(input_path)  # bad input fails here, before the models load
    try:
        if detector is None:
            labels = {Label.parse(name) for name in protect or DEFAULT_PROTECT}
            detector = live_detector(config, labels)  # the live input width, not file mode's
        anonymizer = Anonymizer.from_config(config.anonymize, method)
        return _LiveReplay(source, output, privacy, anonymizer, detector, pace).run()
    finally:
        source.close()


def _live_privacy(privacy: PrivacyConfig, delay_ms: int | None) -> PrivacyConfig:
    """The config's privacy settings with `delay_ms` in place, validated like the config's own."""
    if delay_ms is None:
        return privacy
    try:
        return PrivacyConfig.model_validate({**privacy.model_dump(), "delay_ms": delay_ms})
    except ValidationError as exc:
        raise UserError(f"delay {delay_ms} ms: {exc.errors()[0]['msg']}") from None


class _LiveReplay:
    """One replay: decode, pace, process as a camera's worker would, write every released frame."""

    def __init__(
        self,
        source: av.container.InputContainer,
        output: Path,
        privacy: PrivacyConfig,
        anonymizer: Anonymizer,
        detector: Detector,
        pace: bool,
    ) -> None:
        self.source = source
        self.output = output
        self.pace = pace
        self.fps = float(source.streams.video[0].average_rate or 15)
        self.auto_schedule = privacy.detect_every == 0
        self.hold = privacy.on_failure is FailMode.HOLD
        self.processor = FrameProcessor(
            detector, privacy, anonymizer, ZoneMasker([], False, anonymizer), realtime=True
        )
        self.writer = VideoWriter(output, source, keep_audio=False)
        self.pts: dict[int, int | None] = {}
        self.frames = 0
        self.last: Processed | None = None
        self.error: str | None = None

    def run(self) -> int:
        try:
            try:
                self._replay()
            finally:
                for processed in self.processor.drain():
                    self._emit(processed)
                self.writer.close()
                self.processor.close()
            if not self.frames:
                problem = f": {self.error}" if self.error else " has no decodable video frame"
                raise UserError(f"{self.source.name}{problem}; no output was written")
        except BaseException:
            # Unfinished (no frame, a write error, an interrupt): an MP4 without its index is broken.
            self.output.unlink(missing_ok=True)
            raise
        if self.error:
            raise UserError(f"{self.error} (the {self.frames} frames before it were written)")
        return self.frames

    def _replay(self) -> None:
        started: tuple[float, float] | None = None  # (wall clock, media time) of the first frame
        index = 0
        try:
            for frame in self.source.decode(video=0):
                index += 1
                t = float(frame.time) if frame.time is not None else index / self.fps
                started = started or (time.monotonic(), t)
                if self.pace:
                    # A camera delivers frame t at t: no sooner, however fast the processor is.
                    time.sleep(max(0.0, started[0] + (t - started[1]) - time.monotonic()))
                self.pts[index] = frame.pts
                for processed in self.processor.process(as_image(frame.to_ndarray(format="bgr24")), t, index):
                    self._emit(processed)
                if self.auto_schedule:
                    self.processor.adapt_schedule(1000.0 / self.fps, LIVE_OTHER_MS)
        except av.FFmpegError as exc:
            self.error = f"input is corrupt at frame {index + 1}: {exc}"

    def _emit(self, processed: Processed) -> None:
        pts = self.pts.pop(processed.index, None)
        if processed.whole_frame and self.hold and self.last is not None:
            # The camera holds (does not publish) this frame: players keep showing the last one.
            processed = dataclasses.replace(processed, image=self.last.image)
        self.writer.write_video(processed, pts)
        self.last = processed
        self.frames += 1
