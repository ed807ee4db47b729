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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Protocol

from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.detect.base import DetectionRefused, Image

log = logging.getLogger(__name__)

#: A client waits at most this many budgets for its result before it gives up (the worker is stuck).
GIVE_UP_BUDGETS = 4


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
    future: Future[Detections] = field(default_factory=Future)
    parts: list[Detections] = field(default_factory=list)


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
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"inference-{k}", daemon=True)
            for k in range(max(1, workers))
        ]

    def start(self) -> InferenceService:
        for thread in self._threads:
            thread.start()
        return self

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
            older = self._waiting.pop(request.client, None)
            self._waiting[request.client] = request
            self.counters.requests += 1
            if older is not None:
                self.counters.replaced += 1
            self._cond.notify()
        if older is not None:
            _refuse(older, f"{request.client.name}: replaced by a newer frame")

    def withdraw(self, client: DetectionClient) -> None:
        with self._cond:
            request = self._waiting.pop(client, None)
        if request is not None:
            _refuse(request, f"{client.name}: the camera stopped")

    # --- the worker ------------------------------------------------------------------------------

    def _serve(self) -> None:
        while (taken := self._take()) is not None:
            batch, models = taken
            try:
                self._run(batch, models)
            except Exception as exc:  # never leave a camera waiting on a result that will not come
                log.exception("inference service: a batch failed")
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)

    def _take(self) -> tuple[list[_Request], list[tuple[Label, BatchDetector]]] | None:
        """The oldest waiting requests (at most max_batch) and the models now loaded; None once closed."""
        with self._cond:
            while not self._waiting and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            clients = list(self._waiting)[: self.max_batch]
            return [self._waiting.pop(client) for client in clients], list(self.detectors.items())

    def _run(self, batch: list[_Request], models: list[tuple[Label, BatchDetector]]) -> None:
        now = self.clock()
        live = [r for r in batch if r.deadline >= now]
        with self._cond:
            self.counters.expired += len(batch) - len(live)
        for request in batch:
            if request.deadline < now:
                _refuse(request, f"{request.client.name}: waited past its budget (overloaded)")
        for label, detector in models:
            members = [r for r in live if label in r.client.labels and not r.future.done()]
            if members:
                self._run_model(detector, members)
        for request in live:
            if not request.future.done():
                request.future.set_result(Detections.merge(request.parts))

    def _run_model(self, detector: BatchDetector, members: list[_Request]) -> None:
        try:
            found = detector.detect_batch([r.image for r in members])
        except Exception as exc:  # these cameras mask the frame whole; the others go on
            with self._cond:
                self.counters.failed += len(members)
            for request in members:
                request.future.set_exception(exc)
            return
        with self._cond:
            self.counters.runs += 1
            self.counters.images += len(members)
        for request, detections in zip(members, found, strict=True):
            request.parts.append(detections)


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
        if self._closed:
            raise DetectionRefused(f"{self.name}: the camera stopped")
        request = _Request(self, image, self.service.clock() + self.budget_s)
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
