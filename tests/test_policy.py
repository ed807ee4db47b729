"""Detection scheduling, the privacy delay buffer and scene cuts."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from deid_sidecar.core.detections import Detections, Label
from deid_sidecar.track.policy import MAX_EVERY, DelayBuffer, DetectionScheduler, SharedLoadSpacing
from deid_sidecar.track.scenecut import SceneCutDetector
from deid_sidecar.track.tracker import Tracker, mask_union

DT = 1.0 / 15


def detected_frames(scheduler: DetectionScheduler, frames: range, **events: set[int]) -> list[int]:
    """Frame indices the scheduler detects on; `cuts`/`news`/`resets` inject events at frame indices."""
    out = []
    for i in frames:
        if i in events.get("resets", set()):
            scheduler.reset()
        if scheduler.should_detect(i, scene_cut=i in events.get("cuts", set())):
            out.append(i)
            if i in events.get("news", set()):
                scheduler.note_new_tracks(1)
    return out


@pytest.mark.parametrize(
    ("every", "expected"),
    [(1, list(range(10))), (3, [0, 3, 6, 9]), (4, [0, 4, 8]), (0, list(range(10)))],
)
def test_every_nth_frame(every: int, expected: list[int]) -> None:
    assert detected_frames(DetectionScheduler(every=every, burst=3), range(10)) == expected


def test_forced_at_start_even_mid_stream() -> None:
    assert detected_frames(DetectionScheduler(every=5), range(7, 14)) == [7, 12]


def test_forced_after_reset() -> None:
    got = detected_frames(DetectionScheduler(every=5), range(12), resets={7})
    assert got == [0, 5, 7]


def test_forced_on_scene_cut() -> None:
    got = detected_frames(DetectionScheduler(every=5), range(12), cuts={3})
    assert got == [0, 3, 8]


@pytest.mark.parametrize(
    ("every", "burst", "new_at", "expected"),
    [
        (2, 3, 4, [0, 2, 4, 5, 6, 7, 9, 11, 13]),
        (2, 1, 4, [0, 2, 4, 5, 7, 9, 11, 13]),
        (2, 0, 4, [0, 2, 4, 6, 8, 10, 12]),
        (5, 3, 5, [0, 5, 6, 11]),  # a tight budget: one extra detection, not three
        (5, 0, 5, [0, 5, 10]),
    ],
)
def test_burst_after_new_track(every: int, burst: int, new_at: int, expected: list[int]) -> None:
    got = detected_frames(DetectionScheduler(every=every, burst=burst), range(14), news={new_at})
    assert got == expected


def test_no_burst_without_new_tracks() -> None:
    scheduler = DetectionScheduler(every=4, burst=3)
    scheduler.should_detect(0)
    scheduler.note_new_tracks(0)
    assert not scheduler.should_detect(1)


def test_every_is_mutable_at_run_time() -> None:
    scheduler = DetectionScheduler(every=10)
    assert scheduler.should_detect(0)
    scheduler.every = 2
    assert not scheduler.should_detect(1)
    assert scheduler.should_detect(2)


@pytest.mark.parametrize(
    ("detect_ms", "interval_ms", "other_ms", "cores", "expected"),
    [
        (10, 66.7, 10, 1.0, 1),  # cheap detector: every frame
        (40, 66.7, 10, 1.0, 1),  # 40 + 10 < 53 ms budget
        (100, 66.7, 10, 1.0, 3),  # 100 ms spread over 3 frames fits 43 ms each
        (90, 66.7, 10, 2.0, 1),  # two cores: 97 ms available per frame
        (900, 66.7, 10, 1.0, 21),
        (100, 66.7, 60, 1.0, MAX_EVERY),  # other work alone eats the budget: detect as rarely as allowed
        (5000, 33.3, 5, 1.0, MAX_EVERY),
        (0, 66.7, 10, 1.0, 1),
    ],
)
def test_every_for_budget(
    detect_ms: float, interval_ms: float, other_ms: float, cores: float, expected: int
) -> None:
    assert DetectionScheduler.every_for_budget(detect_ms, interval_ms, other_ms, cores) == expected


def test_every_for_budget_is_monotonic_in_cost() -> None:
    values = [DetectionScheduler.every_for_budget(ms, 66.7, 10) for ms in range(10, 2000, 10)]
    assert values == sorted(values)
    assert all(1 <= v <= MAX_EVERY for v in values)


# --- delay buffer -------------------------------------------------------------------------------


def face(x: float, track_id: int, size: float = 40.0) -> Detections:
    dets = Detections.from_boxes([[x, 100, x + size, 100 + size]], Label.FACE, 0.9)
    return dets.with_track_ids(np.array([track_id]))


def covers(mask: Detections, box: list[float]) -> bool:
    xyxy = mask.xyxy
    inside = (xyxy[:, 0] <= box[0]) & (xyxy[:, 1] <= box[1]) & (xyxy[:, 2] >= box[2]) & (xyxy[:, 3] >= box[3])
    return bool(inside.any())


def test_zero_delay_passes_through() -> None:
    buffer: DelayBuffer[str] = DelayBuffer(0.0)
    out = buffer.push("f0", 0.0, face(10, 1), born=face(10, 1))
    assert [f.payload for f in out] == ["f0"]
    assert len(out[0].mask) == 1
    assert buffer.drain() == []


def test_frames_are_released_after_the_delay_in_order() -> None:
    buffer: DelayBuffer[int] = DelayBuffer(0.2)
    released: list[int] = []
    for i in range(10):
        released += [f.payload for f in buffer.push(i, i * DT, Detections.empty(), Detections.empty())]
        if i < 3:
            assert released == []
    assert released == list(range(len(released)))
    assert released[-1] == 6  # 9 * DT - 6 * DT = 0.2 s
    rest = [f.payload for f in buffer.drain()]
    assert released + rest == list(range(10))
    assert buffer.drain() == []


def test_max_frames_holds_by_count() -> None:
    buffer: DelayBuffer[int] = DelayBuffer(0.0, max_frames=5)
    released: list[int] = []
    for i in range(8):
        released += [f.payload for f in buffer.push(i, i * DT, Detections.empty(), Detections.empty())]
    assert released == [0, 1, 2]
    assert len(buffer) == 5


def run_birth(
    buffer: DelayBuffer[int], birth_frame: int, frames: int, x_of: dict[int, float]
) -> list[Detections]:
    """Frames 0..frames-1; a face with track id 7 is detected from `birth_frame` at x_of[i]."""
    masks: dict[int, Detections] = {}
    for i in range(frames):
        if i >= birth_frame:
            mask = face(x_of[i], 7)
            born = mask if i == birth_frame else Detections.empty()
        else:
            mask = born = Detections.empty()
        for f in buffer.push(i, i * DT, mask, born):
            masks[f.payload] = f.mask
    for f in buffer.drain():
        masks[f.payload] = f.mask
    return [masks[i] for i in range(frames)]


def test_backfill_masks_face_before_it_was_first_detected() -> None:
    static = dict.fromkeys(range(12), 200.0)
    masks = run_birth(DelayBuffer(0.5, backfill_s=0.3), birth_frame=6, frames=12, x_of=static)
    truth = [200, 100, 240, 140]
    # Frames 2..5 lie within 0.3 s before the birth at frame 6 and were still held: back-filled.
    for i in range(2, 6):
        assert covers(masks[i], truth), i
    assert (masks[i].track_id == 7).all()
    # Frames older than the back-fill window are left alone.
    assert len(masks[0]) == 0 and len(masks[1]) == 0


def test_backfill_follows_velocity_once_known() -> None:
    moving = {i: 100.0 + 30.0 * i for i in range(12)}  # 30 px per frame, 450 px/s
    masks = run_birth(DelayBuffer(1.0, backfill_s=0.4), birth_frame=6, frames=12, x_of=moving)
    for i in range(1, 6):
        x = moving[i]
        assert covers(masks[i], [x, 100, x + 40, 140]), i


def test_backfill_only_reaches_frames_still_held() -> None:
    static = dict.fromkeys(range(12), 200.0)
    masks = run_birth(DelayBuffer(2 * DT, backfill_s=1.0), birth_frame=6, frames=12, x_of=static)
    assert all(len(masks[i]) == 0 for i in range(4))
    assert all(covers(masks[i], [200, 100, 240, 140]) for i in (4, 5))


def test_file_mode_lookahead_by_frame_count() -> None:
    static = dict.fromkeys(range(40), 200.0)
    masks = run_birth(DelayBuffer(0.0, backfill_s=1.0, max_frames=30), birth_frame=20, frames=40, x_of=static)
    assert len(masks[4]) == 0
    assert all(covers(masks[i], [200, 100, 240, 140]) for i in range(6, 20))


def test_delay_buffer_with_tracker_end_to_end() -> None:
    """A face appears at frame 5: with 0.2 s delay it is also masked on frames 2..4 (look-ahead)."""
    tracker = Tracker()
    buffer: DelayBuffer[int] = DelayBuffer(0.2)
    out: dict[int, Detections] = {}
    for i in range(10):
        t = i * DT
        raw = face(300, -1) if i >= 5 else Detections.empty()
        tracked = tracker.update(raw, t)
        mask = mask_union(tracked, tracker, t)
        born = tracked[np.isin(tracked.track_id, list(tracker.new_track_ids()))]
        out.update({f.payload: f.mask for f in buffer.push(i, t, mask, born)})
    out.update({f.payload: f.mask for f in buffer.drain()})
    assert sorted(out) == list(range(10))
    assert [len(out[i]) > 0 for i in range(10)] == [False, False] + [True] * 8


# --- scene cuts --------------------------------------------------------------------------------


def scene(seed: int, brightness: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (9, 16, 3), dtype=np.uint8)
    big = cv2.resize(small, (640, 360), interpolation=cv2.INTER_LINEAR)
    return np.clip(big.astype(np.int16) + brightness, 0, 255).astype(np.uint8)


def test_scene_cut_detector() -> None:
    detector = SceneCutDetector()
    assert detector.update(scene(1)) is False  # first frame: nothing to compare
    assert detector.update(scene(1)) is False
    noisy = np.clip(
        scene(1).astype(np.int16) + np.random.default_rng(0).integers(-8, 8, (360, 640, 3)), 0, 255
    )
    assert detector.update(noisy.astype(np.uint8)) is False
    assert detector.update(scene(1, brightness=10)) is False
    assert detector.update(scene(2)) is True
    assert detector.update(scene(2)) is False
    assert detector.update(np.zeros((360, 640, 3), np.uint8)) is True


def test_births_are_forgotten_once_no_older_frame_is_held() -> None:
    buffer: DelayBuffer[int] = DelayBuffer(float("inf"), backfill_s=float("inf"), max_frames=3)
    for i in range(20):
        mask = face(10.0 * i, 100 + i)  # a new one-frame track every frame, never seen again
        buffer.push(i, i * DT, mask, born=mask)
    assert len(buffer._births) <= 4


def test_held_frames_between_two_sightings_get_the_interpolated_box() -> None:
    # Detected at t=0 at x=0 and at t=0.4 at x=80: the frames between were predicted from the past
    # only (here: nothing); once the second sighting is known, they get the straight path.
    buffer: DelayBuffer[int] = DelayBuffer(delay_s=1.0)
    first = Detections.from_boxes([[0, 0, 20, 20]], Label.FACE).with_track_ids(np.array([7]))
    second = Detections.from_boxes([[80, 0, 100, 20]], Label.FACE).with_track_ids(np.array([7]))
    buffer.push(0, 0.0, first, born=first, observed=first)
    for i, t in enumerate([0.1, 0.2, 0.3], start=1):
        buffer.push(i, t, Detections.empty(), born=Detections.empty(), observed=None)
    buffer.push(4, 0.4, second, born=Detections.empty(), observed=second)
    held = {frame.payload: frame for frame in buffer.drain()}
    for i, x in [(1, 20), (2, 40), (3, 60)]:
        boxes = held[i].mask.xyxy
        assert len(boxes) == 1, f"frame {i}"
        assert boxes[0][0] < x and boxes[0][2] > x + 20, f"frame {i}: {boxes[0]} covers {x}..{x + 20}"


def test_a_fractional_spacing_mixes_the_two_gaps_around_it_at_random() -> None:
    scheduler = DetectionScheduler(every=4.25, rng=random.Random(14))
    detected = detected_frames(scheduler, range(4000))
    gaps = np.diff(detected)
    assert set(gaps) == {4, 5}
    assert np.mean(gaps) == pytest.approx(4.25, abs=0.05)
    # Two cameras at the same spacing do not keep detecting on the same frames.
    other = detected_frames(DetectionScheduler(every=4.25, rng=random.Random(15)), range(4000))
    assert len(set(detected) & set(other)) < 0.5 * len(detected)


class Workers:
    """Shared workers' load: each camera's detection costs `cost` of a worker per frame it detects on."""

    def __init__(self, cost: float) -> None:
        self.cost = cost

    def load(self, spacings: list[float]) -> float:
        return min(1.0, sum(self.cost / s for s in spacings))


def test_shared_spacing_brings_the_workers_load_to_the_target_and_holds_it() -> None:
    workers = Workers(cost=0.5)  # four cameras detecting on every frame would need 2x the workers
    cameras = [SharedLoadSpacing(target=0.7) for _ in range(4)]
    for second in range(12):
        load = workers.load([c.spacing for c in cameras])
        for camera in cameras:
            camera.update(load, float(second))
    assert workers.load([c.spacing for c in cameras]) == pytest.approx(0.7, abs=0.05)


def test_shared_spacing_lets_a_lone_camera_detect_on_every_frame_and_steps_once_a_second() -> None:
    alone = SharedLoadSpacing(target=0.7)
    first = (0.95 / 0.7) ** 0.5
    assert alone.update(0.95, 0.0) == pytest.approx(first)
    assert alone.update(0.95, 0.5) == pytest.approx(first)  # not yet a second on
    for second in range(1, 40):
        alone.update(1.0, float(second))
    assert alone.spacing == MAX_EVERY  # saturated workers: it backs off to the longest spacing
    assert alone.update(0.1, 40.0) == pytest.approx(MAX_EVERY / SharedLoadSpacing.MAX_STEP)  # 1.5x a step
    for second in range(41, 60):
        alone.update(0.1, float(second))
    assert alone.spacing == 1.0  # idle workers: every frame
