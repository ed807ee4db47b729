"""One inference service for all the live cameras of a process.

Why: cameras that each call onnxruntime from their own thread run as many sessions at once as there
are cameras, each wanting every core; they all slow down together and miss their budget together.
Here a fixed number of workers (one per core by default: on 2 cores two runs at a time gave 15.0
frames/s against 12.5 for one run at a time and ~14 for four at once) serve the cameras' requests in
turn, and a model that takes a batch gets the images of several cameras that share a tensor shape in
one run (what a GPU needs to be busy: there, one worker and a larger batch).

Fairness: a camera has at most one request waiting (a newer frame replaces its older one), and the
worker serves the oldest waiting requests first, so every camera is served once before any twice.

Fail closed: a request that waited past its camera's budget is not run, a camera whose request is
replaced or closed gets an error, and any error makes the camera mask that frame whole (the processor
treats a failed detection that way). Nothing here ever returns "no objects" for a frame it did not see.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Protocol

from deid_sidecar.core.boxes import Rect
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.detect.base import DetectionRefused, Image, RegionDetector

log = logging.getLogger(__name__)

#: A client waits at most this many budgets for its result before it gives up (the worker is stuck).
GIVE_UP_BUDGETS = 4
#: `load()` is the workers' busy share over this many seconds.
LOAD_WINDOW_S = 2.0


class BatchDetector(Protocol):
    """One model: detections for several images, in their order (see OnnxDetector.detect_batch)."""

    def detect_batch(self, images: Sequence[Image]) -> list[Detections]: ...


@dataclass
class ServiceCounters:
    requests: int = 0
    runs: int = 0  # model runs (a batch of several images is one)
    images: int = 0  # images through a model
    expired: int = 0  # waited past their budget: not run
    replaced: int = 0  # a newer frame of the same camera came first
    failed: int = 0  # the model raised


@dataclass
class _Request:
    client: DetectionClient
    image: Image
    deadline: float
    regions: Sequence[Rect] | None  # None: the whole frame
    future: Future[Detections] = field(default_factory=Future)
    parts: list[Detections] = field(default_factory=list)
    #: The models no worker has started on it yet, and how many are running on it now.
    models_left: list[Label] = field(default_factory=list)
    running: int = 0


@dataclass
class _Work:
    """One model over one or more requests: what a worker takes at a time."""

    label: Label
    detector: BatchDetector
    requests: list[_Request]


class InferenceService:
    """The worker and its queue (one slot per camera). Start it once; `close` refuses what waits."""

    def __init__(
        self,
        detectors: Mapping[Label, BatchDetector],
        max_batch: int = 4,
        workers: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.detectors = dict(detectors)
        self.max_batch = max(1, max_batch)
        self.counters = ServiceCounters()  # changed under `_cond` (several workers)
        self.clock = clock
        self._waiting: dict[DetectionClient, _Request] = {}  # insertion order: oldest first
        self._cond = threading.Condition()
        #: (start, end) of the model runs of the last LOAD_WINDOW_S, and the start of each one running.
        self._runs: deque[tuple[float, float]] = deque()
        self._running: dict[int, float] = {}
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"inference-{k}", daemon=True)
            for k in range(max(1, workers))
        ]

    def start(self) -> InferenceService:
        for thread in self._threads:
            thread.start()
        return self

    def load(self) -> float:
        """The share of the workers' time spent running models over the last LOAD_WINDOW_S, 0..1."""
        with self._cond:
            now = self.clock()
            since = now - LOAD_WINDOW_S
            busy = sum(end - max(start, since) for start, end in self._runs if end > since)
            busy += sum(now - max(start, since) for start in self._running.values())
            return min(1.0, busy / (LOAD_WINDOW_S * len(self._threads)))

    @property
    def waiting(self) -> int:
        """Requests queued, not yet taken by a worker."""
        with self._cond:
            return len(self._waiting)

    def add_model(self, label: Label, detector: BatchDetector) -> None:
        with self._cond:
            self.detectors[label] = detector

    def client(self, name: str, labels: set[Label], budget_s: float) -> DetectionClient:
        missing = labels - set(self.detectors)
        if missing:
            raise ValueError(f"{name}: no model loaded for {', '.join(sorted(m.key for m in missing))}")
        return DetectionClient(self, name, frozenset(labels), budget_s)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            waiting, self._waiting = list(self._waiting.values()), {}
            self._cond.notify_all()
        for request in waiting:
            _refuse(request, "the inference service stopped")
        for thread in self._threads:
            if thread.is_alive():
                thread.join(5.0)

    # --- clients' side ---------------------------------------------------------------------------

    def submit(self, request: _Request) -> None:
        with self._cond:
            if self._closed:
                raise DetectionRefused("the inference service stopped")
            request.models_left = [label for label in self.detectors if label in request.client.labels]
            older = self._waiting.pop(request.client, None)
            self._waiting[request.client] = request
            self.counters.requests += 1
            if older is not None:
                self.counters.replaced += 1
            self._cond.notify_all()
        if older is not None:
            _refuse(older, f"{request.client.name}: replaced by a newer frame")

    def withdraw(self, client: DetectionClient) -> None:
        with self._cond:
            request = self._waiting.pop(client, None)
        if request is not None:
            _refuse(request, f"{client.name}: the camera stopped")

    # --- the worker ------------------------------------------------------------------------------

    def _serve(self) -> None:
        worker = threading.get_ident()
        while (work := self._take()) is not None:
            self._busy(worker, True)
            try:
                found = self._run(work)
            except Exception as exc:  # these cameras mask the frame whole; the others go on
                log.warning("inference service: %s failed: %s", work.label.key, exc)
                self._fail(work, exc)
            else:
                self._done(work, found)
            finally:
                self._busy(worker, False)

    def _busy(self, worker: int, running: bool) -> None:
        with self._cond:
            now = self.clock()
            if running:
                self._running[worker] = now
                return
            self._runs.append((self._running.pop(worker), now))
            while self._runs and self._runs[0][1] < now - LOAD_WINDOW_S:
                self._runs.popleft()

    def _take(self) -> _Work | None:
        """The next model to run and the requests it runs on; None once closed.

        The oldest request with a model not started yet goes first, with (for a whole frame) the
        other waiting whole frames that need the same model, up to max_batch: every camera is served
        once before any twice, and two workers can run a request's two models at the same time.
        """
        with self._cond:
            while True:
                if self._closed:
                    return None
                self._expire()
                waiting = list(self._waiting.values())
                first = next(iter(waiting), None)
                if first is not None:
                    break
                self._cond.wait()
            label = first.models_left[0]
            if first.regions is None:
                batch = [r for r in waiting if r.regions is None and label in r.models_left][: self.max_batch]
            else:
                batch = [first]
            for request in batch:
                request.models_left.remove(label)
                request.running += 1
                if not request.models_left:
                    del self._waiting[request.client]  # nothing left to take; it completes when done
            return _Work(label, self.detectors[label], batch)

    def _expire(self) -> None:
        """Refuse what waited past its budget before any model started on it (under `_cond`)."""
        now = self.clock()
        late = [r for r in self._waiting.values() if r.deadline < now and r.running == 0]
        for request in late:
            del self._waiting[request.client]
            self.counters.expired += 1
            _refuse(request, f"{request.client.name}: waited past its budget (overloaded)")

    def _run(self, work: _Work) -> list[Detections]:
        """Whole frames go through the model in one batch, a request for regions on its own (a model
        that cannot look at regions looks at the whole frame)."""
        work.requests = [r for r in work.requests if not r.future.done()]  # not refused meanwhile
        requests = work.requests
        if not requests:
            return []
        regions = requests[0].regions
        if regions is not None and isinstance(work.detector, RegionDetector):
            return [work.detector.detect_regions(requests[0].image, regions)]
        return work.detector.detect_batch([r.image for r in requests])

    def _done(self, work: _Work, found: list[Detections]) -> None:
        finished = []
        with self._cond:
            self.counters.runs += 1 if found else 0
            self.counters.images += len(found)
            for request, detections in zip(work.requests, found, strict=True):
                request.parts.append(detections)
            for request in work.requests:
                request.running -= 1
                if request.running == 0 and not request.models_left:
                    finished.append(request)
        for request in finished:
            if not request.future.done():
                request.future.set_result(Detections.merge(request.parts))

    def _fail(self, work: _Work, exc: Exception) -> None:
        with self._cond:
            self.counters.failed += len(work.requests)
            for request in work.requests:
                request.running -= 1
                if request.models_left:  # the rest of it is pointless now
                    request.models_left.clear()
                    if self._waiting.get(request.client) is request:
                        del self._waiting[request.client]
        for request in work.requests:
            if not request.future.done():
                request.future.set_exception(exc)


class DetectionClient:
    """A camera's handle on the service: a `Detector` like any other. Safe from several threads."""

    def __init__(
        self,
        service: InferenceService,
        name: str,
        labels: frozenset[Label],
        budget_s: float,
    ) -> None:
        self.service = service
        self.name = name
        self.labels = labels
        self.budget_s = budget_s
        self._closed = False

    def detect(self, image: Image) -> Detections:
        return self._ask(image, None)

    def load(self) -> float:
        return self.service.load()

    def detect_regions(self, image: Image, regions: Sequence[Rect]) -> Detections:
        return self._ask(image, regions)

    def _ask(self, image: Image, regions: Sequence[Rect] | None) -> Detections:
        if self._closed:
            raise DetectionRefused(f"{self.name}: the camera stopped")
        deadline = self.service.clock() + self.budget_s
        request = _Request(self, image, deadline, regions)
        self.service.submit(request)
        try:
            return request.future.result(timeout=self.budget_s * GIVE_UP_BUDGETS)
        except FutureTimeout:
            raise DetectionRefused(f"{self.name}: no result from the inference service") from None

    def close(self) -> None:
        """The camera stopped: what it has waiting is refused, and so is anything it sends later."""
        self._closed = True
        self.service.withdraw(self)


def _refuse(request: _Request, why: str) -> None:
    if not request.future.done():
        request.future.set_exception(DetectionRefused(why))
