"""Anonymize a video file or an image offline, with the same processor as the live pipeline.

Every input frame is written with its own timestamp; audio is copied (or re-encoded to AAC when the
output container cannot hold it). File mode detects on every frame and looks ahead one second, so
an object first detected at frame t is also masked on the frames before it.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from deid_sidecar.anonymize.masks import Anonymizer, ZoneMasker
from deid_sidecar.config import Config, Method
from deid_sidecar.core.detections import Label
from deid_sidecar.core.image import Image, as_image
from deid_sidecar.core.imagesize import (
    ImageSize,
    ImageTooLargeError,
    UnreadableImageError,
    check_image_size,
    read_image_size,
)
from deid_sidecar.detect.base import Detector
from deid_sidecar.detect.factories import file_detector
from deid_sidecar.engine.processor import FrameProcessor, Processed
from deid_sidecar.errors import UserError
from deid_sidecar.models.fetch import sha256_file
from deid_sidecar.outputs.encoder import bgr_to_frame

log = logging.getLogger(__name__)

#: Frames waiting for the writer thread: enough to smooth a slow detection frame, bounded for memory.
WRITER_QUEUE = 8
#: Look-ahead in seconds: how far back an object first detected later is masked.
LOOKAHEAD_S = 1.0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
#: Largest video frame accepted (width x height), 8192x8192: checked as soon as the input is opened,
#: before any frame is decoded, and given to the decoder, which refuses bigger frames later on.
MAX_VIDEO_SIDE = 8192
MAX_VIDEO_PIXELS = MAX_VIDEO_SIDE * MAX_VIDEO_SIDE
#: Decoder options for every input: ffmpeg also decodes while probing, so the limit goes in at open.
_DECODE_OPTIONS = {"max_pixels": str(MAX_VIDEO_PIXELS)}


class VideoTooLargeError(UserError):
    """The input's frames are bigger than MAX_VIDEO_PIXELS."""

    def __init__(self, path: Path, width: int, height: int) -> None:
        super().__init__(
            f"{path}: {width}x{height} video frames ({width * height / 1e6:.1f} megapixels) are above "
            f"the limit of {MAX_VIDEO_PIXELS / 1e6:.1f} megapixels ({MAX_VIDEO_SIDE}x{MAX_VIDEO_SIDE})"
        )
        self.width = width
        self.height = height


@dataclass(frozen=True)
class FileOptions:
    protect: list[str] | None = None
    method: Method | None = None
    keep_audio: bool = True
    audit_path: Path | None = None
    progress: bool = False
    on_progress: Callable[[int, int], None] | None = None  # (frames done, total or 0)


@dataclass
class FileSummary:
    output: Path
    frames: int = 0
    objects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        masked = ", ".join(f"{n} {label}" for label, n in self.objects.items()) or "no objects"
        return f"{self.output}: {self.frames} frames, masked {masked} (object-frames), {self.fps:.1f} fps"


def _protected_labels(config: Config, options: FileOptions) -> set[Label]:
    names = options.protect or ["face", "license_plate"]
    return {Label.parse(name) for name in names}


def _check_output(output: Path, input_path: Path) -> None:
    if output.resolve() == input_path.resolve():
        raise UserError("the output must not overwrite the input")
    if not output.parent.is_dir():
        raise UserError(f"cannot write {output}: folder {output.parent} does not exist")


def check_input(path: Path) -> None:
    """UserError unless `path` is a regular file (a folder, /dev/zero or a FIFO would hang or mislead)."""
    if path.is_dir():
        raise UserError(f"input {path} is a directory")
    if not path.exists():
        raise UserError(f"input {path} does not exist")
    if not path.is_file():
        raise UserError(f"input {path} is not a regular file")


def open_video(path: Path, timeout: float | None = None) -> av.container.InputContainer:
    """The input opened for decoding; UserError if it is not a video, VideoTooLargeError if its frames
    are above MAX_VIDEO_PIXELS (checked before any frame is decoded)."""
    check_input(path)
    try:
        container = av.open(str(path), options=_DECODE_OPTIONS, timeout=timeout)
    except av.FFmpegError as exc:
        raise UserError(f"{path} is not a readable video: {exc}") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path} has no video stream")
    context = container.streams.video[0].codec_context
    width, height = context.width, context.height
    if width * height > MAX_VIDEO_PIXELS:
        container.close()
        raise VideoTooLargeError(path, width, height)
    if width <= 0 or height <= 0:
        # ffmpeg leaves the size unset when its probe could not decode a frame: corrupt, or refused
        # by max_pixels. Image codecs (PNG, MJPEG...) carry their size in each packet's header.
        size = _first_packet_image_size(container)
        container.close()
        if size is not None and size.pixels > MAX_VIDEO_PIXELS:
            raise VideoTooLargeError(path, size.width, size.height)
        raise UserError(
            f"{path} is not a readable video: its frame size is unknown (it is corrupt, "
            f"or its frames are above the limit of {MAX_VIDEO_SIDE}x{MAX_VIDEO_SIDE} pixels)"
        )
    context.options = dict(_DECODE_OPTIONS)
    return container


def _first_packet_image_size(container: av.container.InputContainer) -> ImageSize | None:
    """The size in the first video packet's header when that packet is an image (PNG, JPEG...)."""
    try:
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                return read_image_size(bytes(packet))
    except (av.FFmpegError, UnreadableImageError):
        pass
    return None


class VideoWriter:
    """Output container: H.264 video with the input's timestamps, audio copied when possible.

    Encoding and muxing run on a writer thread behind a small bounded queue, so the next frame's
    decoding and detection overlap with this frame's encoding (PyAV and onnxruntime release the GIL).
    """

    def __init__(self, path: Path, source: av.container.InputContainer, keep_audio: bool) -> None:
        try:
            self.container = av.open(str(path), "w")
        except (av.FFmpegError, OSError) as exc:
            raise UserError(f"cannot write {path}: {exc}") from None
        video_in = source.streams.video[0]
        rate = video_in.average_rate or video_in.guessed_rate or 25
        self.video = self.container.add_stream("libx264", rate=rate)
        self.video.width = video_in.width - video_in.width % 2
        self.video.height = video_in.height - video_in.height % 2
        self.video.pix_fmt = "yuv420p"
        # The encoder counts in the input's time base too: in 1/rate, the uneven frame times of a
        # variable-rate video (phones) would round onto each other and the muxer refuse them.
        self.video.time_base = video_in.time_base
        if video_in.time_base is not None:
            self.video.codec_context.time_base = video_in.time_base
        # Quality close to the input: the masked areas must not be undone by compression artefacts.
        self.video.options = {"crf": "20", "preset": "veryfast"}
        self.audio_in = source.streams.audio[0] if keep_audio and source.streams.audio else None
        self.audio_out: Any = None
        if self.audio_in is not None:
            try:
                self.audio_out = self.container.add_stream_from_template(self.audio_in)
            except (av.FFmpegError, ValueError):
                log.warning("audio codec cannot be copied into %s: dropping audio", path.suffix)
                self.audio_in = None
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=WRITER_QUEUE)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="file-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # reported by the next submit() or close()
                    self._error = exc

    def _submit(self, job: Callable[[], None]) -> None:
        if self._error is not None:
            raise UserError(f"cannot write the output: {self._error}") from None
        self._jobs.put(job)

    def write_video(self, processed: Processed, pts: int | None) -> None:
        self._submit(lambda: self._encode(processed.image, pts))

    def _encode(self, image: Image, pts: int | None) -> None:
        if image.shape[1] != self.video.width or image.shape[0] != self.video.height:
            image = np.ascontiguousarray(image[: self.video.height, : self.video.width])
        frame = bgr_to_frame(image)
        frame.pts = pts
        frame.time_base = self.video.time_base
        for packet in self.video.encode(frame):
            self.container.mux(packet)

    def write_audio(self, packet: av.Packet[Any]) -> None:
        if packet.dts is None:
            return

        def mux() -> None:
            packet.stream = self.audio_out
            self.container.mux(packet)

        self._submit(mux)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()
        try:
            if self._error is None:
                for packet in self.video.encode(None):
                    self.container.mux(packet)
        finally:
            self.container.close()
        if self._error is not None:
            raise UserError(f"cannot write the output: {self._error}") from None


def anonymize_file(
    input_path: Path,
    output: Path,
    config: Config,
    options: FileOptions,
    detector: Detector | None = None,
) -> FileSummary:
    """Anonymize a video (or, for image suffixes, an image) and return what was done."""
    if input_path.suffix.lower() in IMAGE_SUFFIXES:
        count = anonymize_image_file(input_path, output, config, options, detector)
        return FileSummary(output=output, frames=1, objects={"objects": count})
    _check_output(output, input_path)
    labels = _protected_labels(config, options)
    source = open_video(input_path)
    detector = detector or file_detector(config, labels)
    run = _FileRun(source, output, config, options, detector)
    try:
        return run.execute()
    finally:
        source.close()


class _FileRun:
    def __init__(
        self,
        source: av.container.InputContainer,
        output: Path,
        config: Config,
        options: FileOptions,
        detector: Detector,
    ) -> None:
        self.source = source
        self.options = options
        video = source.streams.video[0]
        video.thread_type = "AUTO"  # offline: frame threading's delay does not matter
        fps = float(video.average_rate or 25)
        anonymizer = Anonymizer.from_config(config.anonymize, options.method)
        # Offline there is no time budget; detection runs every `file_detect_every` frames and the
        # look-ahead back-fills objects first seen later.
        privacy = config.privacy.model_copy(update={"detect_every": config.privacy.file_detect_every})
        self.processor = FrameProcessor(
            detector,
            privacy,
            anonymizer,
            ZoneMasker([], False, anonymizer),
            realtime=False,
            lookahead_frames=max(1, round(fps * LOOKAHEAD_S)),
        )
        self.writer = VideoWriter(output, source, options.keep_audio)
        self.summary = FileSummary(output=output)
        self.total = video.frames or 0
        self.pts: dict[int, int | None] = {}
        self.audit: list[dict[str, Any]] = []

    def execute(self) -> FileSummary:
        started = time.perf_counter()
        try:
            try:
                self._decode_all()
            finally:
                for processed in self.processor.drain():
                    self._emit(processed)
                self.writer.close()
                self.processor.close()
                self.summary.seconds = time.perf_counter() - started
                if self.options.progress:
                    sys.stderr.write("\n")
            if not self.summary.frames:
                problem = f": {self.summary.error}" if self.summary.error else " has no decodable video frame"
                raise UserError(f"{self.source.name}{problem}; no output was written")
        except BaseException:
            # Unfinished (no frame, a write error, an interrupt): an MP4 without its index is broken.
            self.summary.output.unlink(missing_ok=True)
            raise
        if self.options.audit_path:
            self._write_audit()
        if self.summary.error:
            raise UserError(f"{self.summary.error} (the {self.summary.frames} frames before it were written)")
        return self.summary

    def _decode_all(self) -> None:
        streams: list[av.stream.Stream] = [self.source.streams.video[0]]
        if self.writer.audio_in is not None:
            streams.append(self.writer.audio_in)
        index = 0
        try:
            for packet in self.source.demux(streams):
                if packet.stream.type == "audio":
                    self.writer.write_audio(packet)
                    continue
                for frame in packet.decode():
                    if not isinstance(frame, av.VideoFrame):
                        continue
                    index += 1
                    self.pts[index] = frame.pts
                    image = as_image(frame.to_ndarray(format="bgr24"))
                    t = float(frame.time) if frame.time is not None else index / 25.0
                    for processed in self.processor.process(image, t, index):
                        self._emit(processed)
        except av.FFmpegError as exc:
            self.summary.error = f"input is corrupt at frame {index + 1}: {exc}"

    def _emit(self, processed: Processed) -> None:
        self.writer.write_video(processed, self.pts.pop(processed.index, None))
        self.summary.frames += 1
        for label, count in processed.objects.counts().items():
            if count:
                self.summary.objects[label.key] = self.summary.objects.get(label.key, 0) + count
        if self.options.audit_path:
            self.audit.append(_audit_row(processed))
        if self.options.on_progress is not None and self.summary.frames % 10 == 0:
            self.options.on_progress(self.summary.frames, self.total)
        if self.options.progress and self.summary.frames % 10 == 0:
            total = f"/{self.total}" if self.total else ""
            sys.stderr.write(f"\r{self.summary.frames}{total} frames")

    def _write_audit(self) -> None:
        assert self.options.audit_path is not None
        document = {
            "input": {"path": str(Path(self.source.name)), "sha256": sha256_file(Path(self.source.name))},
            "output": {"path": str(self.summary.output), "sha256": sha256_file(self.summary.output)},
            "models": _model_ids(self.processor.detector),
            "frames": self.audit,
        }
        self.options.audit_path.write_text(json.dumps(document, indent=1), encoding="utf-8")


def _audit_row(processed: Processed) -> dict[str, Any]:
    objects = processed.objects
    return {
        "frame": processed.index,
        "t": round(processed.t, 4),
        "whole_frame": processed.whole_frame,
        "objects": [
            {
                "label": Label(int(label)).key,
                "box": [round(float(v), 1) for v in box],
                "score": round(float(score), 3),
                "track": int(track),
            }
            for box, label, score, track in zip(
                objects.xyxy, objects.label, objects.confidence, objects.track_id, strict=True
            )
        ],
    }


def _model_ids(detector: Detector | None) -> list[str]:
    ids = getattr(detector, "model_ids", None)
    return list(ids) if ids else []


def check_image_file(path: Path) -> None:
    """UserError unless `path` is a regular file whose header is an accepted image of at most
    MAX_IMAGE_PIXELS; reads the header only (a decompression bomb is refused before decoding)."""
    check_input(path)
    try:
        with path.open("rb") as handle:
            check_image_size(handle)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except UnreadableImageError as exc:
        raise UserError(f"{path} is not a readable image: {exc}") from None
    except ImageTooLargeError as exc:
        raise UserError(f"{path} is refused: {exc}") from None


def read_image(path: Path) -> np.ndarray:
    check_image_file(path)
    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"{path} is not a readable image")
    return np.ascontiguousarray(image)


def write_image(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(path.suffix.lower() or ".png", image)
    if not ok:
        raise UserError(f"cannot write {path}: unsupported image type {path.suffix!r}")
    try:
        encoded.tofile(str(path))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None


def anonymize_image(image: np.ndarray, config: Config, options: FileOptions, detector: Detector) -> int:
    """Mask `image` in place; returns the number of objects masked. Detection failures raise."""
    anonymizer = Anonymizer.from_config(config.anonymize, options.method)
    detections = detector.detect(image)
    anonymizer.apply(image, detections)
    return len(detections)


def anonymize_image_file(
    input_path: Path,
    output: Path,
    config: Config,
    options: FileOptions,
    detector: Detector | None = None,
) -> int:
    _check_output(output, input_path)
    if output.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"cannot write {output}: use one of {', '.join(sorted(IMAGE_SUFFIXES))}")
    image = read_image(input_path)
    detector = detector or file_detector(config, _protected_labels(config, options))
    count = anonymize_image(image, config, options, detector)
    write_image(output, image)
    return count
