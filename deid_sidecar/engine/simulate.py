"""Live mode, replayed on a file: what a live camera would publish, frame for frame.

The processor runs causally (no look-ahead beyond `delay_ms`), with the detection budget and the
detect-every-N schedule that the live pipeline would choose from the measured detector cost at
the camera's frame rate. Unlike a live camera, no frame is dropped, so every output frame can be
compared with the input's ground truth (the leak benchmark does this).
"""

from __future__ import annotations

from pathlib import Path

import av

from deid_sidecar.anonymize.masks import Anonymizer, ZoneMasker
from deid_sidecar.config import Config, parse_config
from deid_sidecar.core.detections import Label
from deid_sidecar.core.image import as_image
from deid_sidecar.detect.base import Detector
from deid_sidecar.engine.filemode import VideoWriter, open_video
from deid_sidecar.engine.processor import FrameProcessor

#: Per-frame cost outside the detector in live mode at 720p (libx264 ultrafast plus masking),
#: measured here at 9-15 ms; the schedule is chosen as if it were spent.
LIVE_OTHER_MS = 15.0


def simulate_live(
    input_path: Path,
    output: Path,
    *,
    delay_ms: int = 0,
    config: Config | None = None,
    detector: Detector | None = None,
) -> int:
    """Write what live mode would publish for `input_path`; returns the number of frames."""
    config = config or parse_config({})
    privacy = config.privacy.model_copy(update={"delay_ms": delay_ms})
    if detector is None:
        from deid_sidecar.detect.detector import build_detector

        detector = build_detector(config, {Label.FACE, Label.LICENSE_PLATE})
    anonymizer = Anonymizer.from_config(config.anonymize)
    processor = FrameProcessor(
        detector, privacy, anonymizer, ZoneMasker([], False, anonymizer), realtime=True
    )
    source = open_video(input_path)
    writer = VideoWriter(output, source, keep_audio=False)
    fps = float(source.streams.video[0].average_rate or 15)
    pts: dict[int, int | None] = {}
    frames = 0
    try:
        for index, frame in enumerate(source.decode(video=0), start=1):
            pts[index] = frame.pts
            image = as_image(frame.to_ndarray(format="bgr24"))
            released = processor.process(image, index / fps, index)
            for processed in released:
                writer.write_video(processed, pts.pop(processed.index, None))
                frames += 1
            if privacy.detect_every == 0:
                processor.adapt_schedule(1000.0 / fps, LIVE_OTHER_MS)
        for processed in processor.drain():
            writer.write_video(processed, pts.pop(processed.index, None))
            frames += 1
    except av.FFmpegError:
        pass  # a truncated input ends the replay; what was written stays valid
    finally:
        writer.close()
        processor.close()
        source.close()
    return frames
