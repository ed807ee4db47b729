"""One thread per camera that demuxes and decodes with PyAV and keeps only the newest frame.

The consumer never waits for a long backlog: `FrameQueue` holds a few frames and drops (and
counts) the oldest when the consumer falls further behind. Opens and reads have timeouts,
reconnects step back (1 s x5, 5 s, 10 s, then 30 s), and a generation counter tells the consumer
that the stream restarted (its tracks and timestamps no longer apply). A looping file starting
over is not a restart: it keeps its generation (a jump in the picture is the scene-cut detector's
business), so the camera neither flaps to `degraded` nor masks whole frames on every loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import av

from deid_sidecar.core.image import Image, as_image
from deid_sidecar.core.redact import mask_secrets
from deid_sidecar.sources.spec import OPEN_TIMEOUT_S, READ_TIMEOUT_S, SourceSpec
from deid_sidecar.stats import CameraStats

log = logging.getLogger(__name__)

#: Reconnect delays in seconds; the last one repeats.
BACKOFF_S = (1.0, 1.0, 1.0, 1.0, 1.0, 5.0, 10.0, 30.0)
#: FFmpeg diagnostic lines kept per camera, printed when the camera fails.
DIAGNOSTIC_LINES = 20
#: Frames "flow again" after a failure once they have kept coming for this long: a connection that
#: yields a frame or a burst of buffered frames and dies again is not a recovery.
FLOWING_AFTER_S = 1.0


@dataclass(frozen=True)
class Frame:
    image: Image  # BGR, already scaled to the output size
    t: float  # time.monotonic() when decoded
    index: int  # counts frames across reconnects
    generation: int  # increments on every (re)connect, not when a looping file starts over


class FrameQueue:
    """A small bounded queue of decoded frames; when full, the OLDEST frame is dropped.

    Capacity 1 is a latest-frame-wins mailbox. A few frames of capacity let the worker catch up
    after a slow frame (one that ran the detector) instead of dropping the frames that arrived
    meanwhile, while the bound keeps latency and memory in check when it cannot keep up.
    """

    def __init__(self, capacity: int = 1) -> None:
        self._frames: deque[Frame] = deque(maxlen=max(1, capacity))
        self._cond = threading.Condition()

    def put(self, frame: Frame) -> bool:
        """Queue `frame`; returns True when the oldest untaken frame was dropped to make room."""
        with self._cond:
            dropped = len(self._frames) == self._frames.maxlen
            self._frames.append(frame)
            self._cond.notify_all()
            return dropped

    def peek(self) -> Frame | None:
        """The newest frame, left in place (a detect stream is read, not consumed)."""
        with self._cond:
            return self._frames[-1] if self._frames else None

    def take(self, timeout: float) -> Frame | None:
        """The oldest frame, waiting up to `timeout` seconds for one."""
        with self._cond:
            if not self._frames:
                self._cond.wait(timeout)
            return self._frames.popleft() if self._frames else None


def output_size(width: int, height: int, target_height: int | None) -> tuple[int, int]:
    """Scale to `target_height` keeping aspect; both sides even (yuv420p needs it)."""
    if target_height is None:
        return width - width % 2, height - height % 2
    new_w = round(width * target_height / height)
    return new_w - new_w % 2, target_height - target_height % 2


class FrameReader:
    """Decodes `spec` in a daemon thread into `mailbox` until `stop()`."""

    def __init__(
        self,
        spec: SourceSpec,
        mailbox: FrameQueue,
        stats: CameraStats,
        target_height: int | None = None,
    ) -> None:
        self.spec = spec
        self.mailbox = mailbox
        self.stats = stats
        self.target_height = target_height
        self.generation = 0
        self.diagnostics: deque[str] = deque(maxlen=DIAGNOSTIC_LINES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"reader-{stats.name}", daemon=True)
        self._index = 0
        self.ended = False  # a file (not looping) was read to its end: the thread is done, not dead

    def start(self) -> None:
        self._thread.start()

    @property
    def dead(self) -> bool:
        """The thread ended though nobody stopped it and its source had not ended (for /healthz)."""
        started = self._thread.ident is not None
        return started and not self._thread.is_alive() and not self._stop.is_set() and not self.ended

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        looped = False
        while not self._stop.is_set():
            if not looped:
                self.generation += 1
            looped = False
            try:
                connected_at: float | None = None
                flowing = False
                for frame in self._frames():
                    failures = 0
                    if connected_at is None:
                        connected_at = frame.t
                    elif not flowing and frame.t - connected_at >= FLOWING_AFTER_S:
                        flowing = True
                        self.stats.recovered()
                    if self.mailbox.put(frame):
                        self.stats.frame_dropped()  # the worker fell this far behind: lost
                if self._stop.is_set():
                    return
                if self.spec.loop:
                    if connected_at is None:
                        raise EOFError("no video frames to loop")  # step back, never spin
                    looped = True
                    continue  # a looping file restarts at once, as the same stream
                if not self.spec.is_live:
                    log.info("%s: end of %s", self.stats.name, self.spec.display)
                    self.ended = True
                    return
                raise EOFError("stream ended")
            except (av.FFmpegError, OSError, EOFError, ValueError) as exc:
                if self._stop.is_set():
                    return
                self._note_failure(exc)
            except Exception as exc:  # a bug, not the camera: logged whole, then the reader starts over
                log.exception("%s: the reader failed unexpectedly; starting it again", self.stats.name)
                self._note_failure(exc)
            delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            failures += 1
            self._stop.wait(delay)

    def _note_failure(self, exc: Exception) -> None:
        message = self._mask(str(exc))
        self.diagnostics.append(message)
        self.stats.reconnecting(message)
        log.warning("%s: %s failed: %s; reconnecting", self.stats.name, self.spec.display, message)

    def _mask(self, text: str) -> str:
        """`text` with the source's credentials masked in whatever form FFmpeg printed the URL.

        The exact URL becomes its display form; `mask_secrets` then masks the password itself, as
        written and percent-decoded (an error may print either), before any other userinfo and
        query value.
        """
        text = text.replace(self.spec.url, self.spec.display)
        return mask_secrets(text, *_url_passwords(self.spec.url))

    def _frames(self) -> Iterator[Frame]:
        container = av.open(
            self.spec.url,
            format=self.spec.format,
            options=self.spec.options,
            timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S),
        )
        try:
            if not container.streams.video:
                raise ValueError("no video stream")  # a reconnect, not a dead reader thread
            stream = container.streams.video[0]
            # Slice threading: frame threading adds one frame of delay per thread.
            stream.thread_type = "SLICE"
            pacer = _Pacer() if self.spec.realtime else None
            for frame in container.decode(stream):
                if self._stop.is_set():
                    return
                if pacer is not None and frame.time is not None:
                    pacer.wait(frame.time, self._stop)
                width, height = output_size(frame.width, frame.height, self.target_height)
                image = as_image(frame.to_ndarray(format="bgr24", width=width, height=height))
                self._index += 1
                now = time.monotonic()
                self.stats.frame_in(now)
                yield Frame(image, now, self._index, self.generation)
        finally:
            container.close()


class _Pacer:
    """Releases file frames at their presentation times, as a camera would deliver them."""

    def __init__(self) -> None:
        self._origin: tuple[float, float] | None = None

    def wait(self, media_time: float, stop: threading.Event) -> None:
        now = time.monotonic()
        if self._origin is None or media_time < self._origin[1]:
            self._origin = (now, media_time)
        due = self._origin[0] + (media_time - self._origin[1])
        if due > now:
            stop.wait(due - now)


def _url_passwords(url: str) -> tuple[str, ...]:
    """The password of `url`'s userinfo, as written and percent-decoded; none when it has none."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return ()
    if not password:
        return ()
    return (password, unquote(password))
