"""The shared inference service: fair to every camera, fails closed when overloaded, and lets a camera go."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from deid_sidecar.anonymize.masks import Anonymizer, ZoneMasker
from deid_sidecar.config import AnonymizeConfig, PrivacyConfig, parse_config
from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.detect.base import DetectionRefused, Image
from deid_sidecar.detect.detector import configured_detector
from deid_sidecar.detect.service import LOAD_WINDOW_S, InferenceService
from deid_sidecar.engine.processor import FrameProcessor

FACE_BOX = (40.0, 40.0, 80.0, 80.0)


def tagged(tag: int) -> Image:
    """A small frame that says which camera and frame it is (its first pixel)."""
    image = np.zeros((120, 160, 3), np.uint8)
    image[0, 0, 0] = tag
    return image


class GatedModel:
    """A stand-in model: records the tags it sees per run, finds FACE_BOX, and can be held shut."""

    def __init__(self, seconds: float = 0.0, fail: bool = False) -> None:
        self.runs: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.seconds, self.fail = seconds, fail

    def detect_batch(self, images: Sequence[Image]) -> list[Detections]:
        self.entered.set()
        self.gate.wait(10)
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("model broke")
        self.runs.append([int(image[0, 0, 0]) for image in images])
        return [Detections.from_boxes([FACE_BOX], Label.FACE, 0.9) for _ in images]


def in_background(call: Callable[[], Detections]) -> Future[Detections]:
    pool = ThreadPoolExecutor(1)
    future = pool.submit(call)
    pool.shutdown(wait=False)
    return future


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def model() -> GatedModel:
    return GatedModel()


@pytest.fixture
def service(model: GatedModel) -> InferenceService:
    running = InferenceService({Label.FACE: model}, max_batch=1).start()
    yield running
    model.gate.set()
    running.close()


def test_every_waiting_camera_is_served_before_any_camera_twice(
    model: GatedModel, service: InferenceService
) -> None:
    hog, door, yard = (service.client(name, {Label.FACE}, budget_s=5.0) for name in ("hog", "door", "yard"))
    model.gate.clear()
    first = in_background(lambda: hog.detect(tagged(1)))
    assert model.entered.wait(5)  # the worker is busy with the hog's first frame
    later = []
    for camera, tag in ((door, 2), (yard, 3)):  # one after the other: arrival order is the order served
        later.append(in_background(lambda camera=camera, tag=tag: camera.detect(tagged(tag))))
        wait_until(lambda tag=tag: service.counters.requests == tag)
    again = in_background(lambda: hog.detect(tagged(4)))  # the hog asks again at once
    wait_until(lambda: service.counters.requests == 4)
    model.gate.set()
    for future in (first, *later, again):
        assert len(future.result(5)) == 1
    assert model.runs == [[1], [2], [3], [4]]


def test_a_newer_frame_replaces_the_one_its_camera_has_waiting(
    model: GatedModel, service: InferenceService
) -> None:
    door, yard = service.client("door", {Label.FACE}, 5.0), service.client("yard", {Label.FACE}, 5.0)
    model.gate.clear()
    busy = in_background(lambda: yard.detect(tagged(9)))
    assert model.entered.wait(5)
    stale = in_background(lambda: door.detect(tagged(1)))
    wait_until(lambda: service.counters.requests == 2)
    fresh = in_background(lambda: door.detect(tagged(2)))
    with pytest.raises(DetectionRefused, match="replaced by a newer frame"):
        stale.result(5)
    model.gate.set()
    assert len(fresh.result(5)) == 1 and len(busy.result(5)) == 1
    assert model.runs == [[9], [2]]  # one camera never holds two places in the queue


def test_the_frames_of_waiting_cameras_go_through_the_model_in_one_batch() -> None:
    model = GatedModel()
    service = InferenceService({Label.FACE: model}, max_batch=4).start()
    try:
        cameras = [service.client(f"cam{k}", {Label.FACE}, 5.0) for k in range(4)]
        model.gate.clear()
        first = in_background(lambda: cameras[0].detect(tagged(10)))
        assert model.entered.wait(5)
        rest = [in_background(lambda c=c, k=k: c.detect(tagged(k))) for k, c in enumerate(cameras[1:], 1)]
        wait_until(lambda: service.counters.requests == 4)
        model.gate.set()
        assert all(len(f.result(5)) == 1 for f in (first, *rest))
        assert model.runs[0] == [10] and sorted(model.runs[1]) == [1, 2, 3]  # one run for all three
        assert service.counters.runs == 2 and service.counters.images == 4
    finally:
        model.gate.set()
        service.close()


def test_a_request_that_waited_past_its_budget_is_refused_not_run(
    model: GatedModel, service: InferenceService
) -> None:
    slow, late = service.client("slow", {Label.FACE}, 5.0), service.client("late", {Label.FACE}, 0.05)
    model.gate.clear()
    busy = in_background(lambda: slow.detect(tagged(1)))
    assert model.entered.wait(5)
    refused = in_background(lambda: late.detect(tagged(2)))
    time.sleep(0.1)  # past `late`'s budget while the worker is still busy
    model.gate.set()
    with pytest.raises(DetectionRefused, match="overloaded"):
        refused.result(5)
    assert len(busy.result(5)) == 1
    assert model.runs == [[1]] and service.counters.expired == 1


def test_a_camera_that_stops_is_let_go_and_the_others_go_on(
    model: GatedModel, service: InferenceService
) -> None:
    door, yard = service.client("door", {Label.FACE}, 5.0), service.client("yard", {Label.FACE}, 5.0)
    model.gate.clear()
    busy = in_background(lambda: yard.detect(tagged(1)))
    assert model.entered.wait(5)
    waiting = in_background(lambda: door.detect(tagged(2)))
    wait_until(lambda: service.counters.requests == 2)
    door.close()
    with pytest.raises(DetectionRefused, match="door: the camera stopped"):
        waiting.result(5)
    with pytest.raises(DetectionRefused, match="door: the camera stopped"):
        door.detect(tagged(3))
    model.gate.set()
    assert len(busy.result(5)) == 1 and len(yard.detect(tagged(4))) == 1
    assert model.runs == [[1], [4]]


def test_a_failing_model_fails_only_the_cameras_that_use_it() -> None:
    faces, plates = GatedModel(fail=True), GatedModel()
    service = InferenceService({Label.FACE: faces, Label.LICENSE_PLATE: plates}).start()
    try:
        with pytest.raises(RuntimeError, match="model broke"):
            service.client("door", {Label.FACE, Label.LICENSE_PLATE}, 5.0).detect(tagged(1))
        assert len(service.client("drive", {Label.LICENSE_PLATE}, 5.0).detect(tagged(2))) == 1
    finally:
        service.close()


def test_overloaded_cameras_mask_whole_frames_and_never_publish_one_unmasked() -> None:
    """Three cameras, a model that serves one frame per 60 ms, budgets of 100 ms: many requests are
    refused; every frame that comes out is masked whole or carries the face the model found."""
    model = GatedModel(seconds=0.06)
    service = InferenceService({Label.FACE: model}, max_batch=1).start()
    privacy = PrivacyConfig(detect_budget_ms=100, detect_every=1, hold_s=0.0, edge_band=0.0)
    anonymizer = Anonymizer.from_config(AnonymizeConfig())
    processors = [
        FrameProcessor(
            service.client(f"cam{k}", {Label.FACE}, 0.1),
            privacy,
            anonymizer,
            ZoneMasker([], False, anonymizer),
            realtime=True,
        )
        for k in range(3)
    ]
    outcomes: list[tuple[bool, int]] = []
    lock = threading.Lock()

    def camera(processor: FrameProcessor) -> None:
        for index in range(12):
            for out in processor.process(tagged(index), index / 15, index):
                with lock:
                    outcomes.append((out.whole_frame, len(out.objects)))

    try:
        threads = [threading.Thread(target=camera, args=(p,)) for p in processors]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        service.close()
        for processor in processors:
            processor.close()
    assert len(outcomes) == 36
    assert all(whole or objects == 1 for whole, objects in outcomes)
    assert any(whole for whole, _ in outcomes), "the model could not keep up: some frames must be refused"
    assert service.counters.expired + service.counters.replaced > 0


def test_a_batch_through_centerface_finds_what_one_image_at_a_time_finds(
    models_dir: Path, media_dir: Path
) -> None:
    config = parse_config({"models_dir": str(models_dir), "detection": {"providers": ["cpu"]}})
    detector = configured_detector(config, Label.FACE)
    assert detector.batched
    group = cv2.imread(str(media_dir / "t1.jpg"))
    astronaut = cv2.resize(cv2.imread(str(media_dir / "astronaut.png")), (group.shape[1], group.shape[0]))
    images = [group, astronaut, np.ascontiguousarray(group[:, ::-1])]

    one_by_one = [detector.detect(image) for image in images]
    batched = detector.detect_batch(images)

    assert [len(d) for d in batched] == [len(d) for d in one_by_one] == [6, 1, 6]
    for alone, together in zip(one_by_one, batched, strict=True):
        np.testing.assert_allclose(np.sort(together.xyxy, axis=0), np.sort(alone.xyxy, axis=0), atol=1.0)


def test_with_two_workers_two_cameras_are_served_at_the_same_time() -> None:
    model = GatedModel()
    service = InferenceService({Label.FACE: model}, max_batch=1, workers=2).start()
    try:
        model.gate.clear()
        door, yard = service.client("door", {Label.FACE}, 5.0), service.client("yard", {Label.FACE}, 5.0)
        both = [in_background(lambda: door.detect(tagged(1))), in_background(lambda: yard.detect(tagged(2)))]
        wait_until(lambda: service.counters.requests == 2)
        time.sleep(0.05)
        assert service.waiting == 0  # both taken, each by its own worker, while the model is held
        model.gate.set()
        assert all(len(f.result(5)) == 1 for f in both)
        assert sorted(model.runs) == [[1], [2]]
    finally:
        model.gate.set()
        service.close()


def test_with_two_workers_one_cameras_two_models_run_at_the_same_time() -> None:
    """A frame's face and plate models are separate work: its result comes after the slower one,
    not after both in a row."""
    faces, plates = GatedModel(), GatedModel()
    service = InferenceService({Label.FACE: faces, Label.LICENSE_PLATE: plates}, workers=2).start()
    try:
        faces.gate.clear()
        door = service.client("door", {Label.FACE, Label.LICENSE_PLATE}, 5.0)
        result = in_background(lambda: door.detect(tagged(1)))
        wait_until(faces.entered.is_set)
        wait_until(lambda: plates.runs == [[1]])  # ran while the face model is still held
        assert not result.done()  # the frame waits for all of its models
        faces.gate.set()
        assert len(result.result(5)) == 2
    finally:
        faces.gate.set()
        service.close()


def test_a_model_that_cannot_look_at_regions_gets_the_whole_frame() -> None:
    model = GatedModel()
    service = InferenceService({Label.FACE: model}).start()
    try:
        door = service.client("door", {Label.FACE}, 5.0)
        assert len(door.detect_regions(tagged(3), [(0, 0, 40, 40)])) == 1
        assert model.runs == [[3]]
    finally:
        service.close()


def test_a_frame_replaced_while_one_of_its_models_runs_is_refused_and_the_newer_one_served() -> None:
    faces, plates = GatedModel(), GatedModel()
    service = InferenceService({Label.FACE: faces, Label.LICENSE_PLATE: plates}, workers=1).start()
    try:
        faces.gate.clear()
        door = service.client("door", {Label.FACE, Label.LICENSE_PLATE}, 5.0)
        older = in_background(lambda: door.detect(tagged(1)))
        wait_until(faces.entered.is_set)  # its face model runs; its plate model still waits
        newer = in_background(lambda: door.detect(tagged(2)))
        with pytest.raises(DetectionRefused):
            older.result(5)
        faces.gate.set()
        assert len(newer.result(5)) == 2
        assert plates.runs == [[2]]
    finally:
        faces.gate.set()
        service.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_load_is_the_workers_busy_share_of_the_last_seconds_runs_in_progress_included() -> None:
    model, clock = GatedModel(), FakeClock()
    service = InferenceService({Label.FACE: model}, max_batch=1, workers=2, clock=clock).start()
    try:
        assert service.load() == 0.0
        model.gate.clear()
        door = service.client("door", {Label.FACE}, 5.0)
        pending = in_background(lambda: door.detect(tagged(1)))
        wait_until(model.entered.is_set)
        clock.now += 1.0  # one of two workers busy for one second of the two-second window
        assert service.load() == pytest.approx(0.25)
        model.gate.set()
        pending.result(5)
        wait_until(lambda: service.load() == pytest.approx(0.25))  # finished, still in the window
        clock.now += LOAD_WINDOW_S + 0.5
        assert service.load() == 0.0  # out of the window
    finally:
        model.gate.set()
        service.close()
