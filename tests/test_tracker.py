"""Tracker specification on synthetic detections: what must stay masked, and where."""

from __future__ import annotations

import numpy as np
import pytest

from deid_sidecar.core.boxes import iou_matrix
from deid_sidecar.core.detections import NO_TRACK, Detections, Label
from deid_sidecar.track.tracker import Tracker, mask_union

FPS = 15.0
DT = 1.0 / FPS


def box_at(cx: float, cy: float, size: float = 40.0) -> list[float]:
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def faces(*boxes: list[float], confidence: float = 0.9) -> Detections:
    return Detections.from_boxes(boxes, Label.FACE, confidence) if boxes else Detections.empty()


def center(xyxy: np.ndarray) -> np.ndarray:
    return (xyxy[..., :2] + xyxy[..., 2:]) / 2


def contains(outer: np.ndarray, inner: list[float]) -> bool:
    return bool(
        outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]
    )


def walk(tracker: Tracker, frames: int, speed_px_s: float = 150.0) -> float:
    """A face walking right at `speed_px_s`; returns the time of its last detection."""
    t = 0.0
    for i in range(frames):
        t = i * DT
        tracker.update(faces(box_at(100 + speed_px_s * t, 200)), t)
    return t


def test_new_object_gets_id_and_is_masked_on_first_frame() -> None:
    tracker = Tracker()
    tracked = tracker.update(faces(box_at(100, 100)), 0.0)
    assert tracked.track_id[0] != NO_TRACK
    assert tracker.new_track_ids() == {int(tracked.track_id[0])}
    mask = mask_union(tracked, tracker, 0.0)
    assert len(mask) == 1
    np.testing.assert_allclose(mask.xyxy[0], box_at(100, 100))


def test_same_object_keeps_id_and_is_not_new() -> None:
    tracker = Tracker()
    first = tracker.update(faces(box_at(100, 100)), 0.0)
    second = tracker.update(faces(box_at(104, 101)), DT)
    assert second.track_id[0] == first.track_id[0]
    assert tracker.new_track_ids() == set()


def test_rows_are_returned_in_order_with_labels_untouched() -> None:
    dets = Detections.merge(
        [faces(box_at(100, 100)), Detections.from_boxes([box_at(300, 300, 60)], Label.LICENSE_PLATE, 0.4)]
    )
    tracked = Tracker().update(dets, 0.0)
    np.testing.assert_array_equal(tracked.xyxy, dets.xyxy)
    np.testing.assert_array_equal(tracked.label, dets.label)
    assert len(set(tracked.track_id.tolist())) == 2


def test_labels_never_match_each_other() -> None:
    tracker = Tracker()
    face = tracker.update(faces(box_at(100, 100)), 0.0)
    plate = tracker.update(Detections.from_boxes([box_at(100, 100)], Label.LICENSE_PLATE), DT)
    assert plate.track_id[0] != face.track_id[0]


def test_low_confidence_detections_still_mask() -> None:
    tracker = Tracker()
    tracked = tracker.update(faces(box_at(100, 100), confidence=0.05), 0.0)
    assert len(mask_union(tracked, tracker, 0.0)) == 1
    assert len(tracker.coasting(3 * DT)) == 1


@pytest.mark.parametrize("missed", [1, 2, 3])
def test_missed_track_keeps_coasting_forward(missed: int) -> None:
    tracker = Tracker(hold_s=1.0)
    t_last = walk(tracker, 8, speed_px_s=150.0)
    t = t_last + missed * DT
    raw = tracker.update(Detections.empty(), t)
    mask = mask_union(raw, tracker, t)
    assert len(mask) == 1
    truth = box_at(100 + 150.0 * t, 200)
    # Predicted with the velocity: centred near where the face is now, and covering it.
    assert abs(center(mask.xyxy[0])[0] - center(np.array(truth))[0]) < 5
    assert contains(mask.xyxy[0], truth)


def test_coasting_excludes_tracks_updated_now() -> None:
    tracker = Tracker()
    tracker.update(faces(box_at(100, 100), box_at(400, 100)), 0.0)
    tracker.update(faces(box_at(100, 100)), DT)
    coasting = tracker.coasting(DT)
    assert len(coasting) == 1
    assert center(coasting.xyxy[0])[0] == pytest.approx(400, abs=1)


@pytest.mark.parametrize(
    ("hold_s", "elapsed", "alive"),
    [(1.0, 0.5, True), (1.0, 1.0, True), (1.0, 1.01, False), (0.3, 0.4, False), (2.0, 1.5, True)],
)
def test_track_expires_after_hold(hold_s: float, elapsed: float, alive: bool) -> None:
    tracker = Tracker(hold_s=hold_s)
    tracker.update(faces(box_at(100, 100)), 0.0)
    assert (len(tracker.coasting(elapsed)) == 1) is alive
    tracker.update(Detections.empty(), elapsed)
    assert (len(tracker) == 1) is alive


def test_boxes_grow_with_time_since_detection() -> None:
    tracker = Tracker(growth_per_s=0.5)
    walk(tracker, 5)
    t0 = 4 * DT
    widths = [float(np.diff(tracker.coasting(t0 + k * DT).xyxy[0, [0, 2]])[0]) for k in (1, 3, 6, 12)]
    assert widths == sorted(widths)
    assert widths[0] > 40
    assert widths[-1] > widths[0] + 10


def test_faster_objects_grow_more() -> None:
    slow, fast = Tracker(), Tracker()
    walk(slow, 5, speed_px_s=20.0)
    walk(fast, 5, speed_px_s=300.0)
    t = 4 * DT + 0.5
    width_slow = float(np.diff(slow.coasting(t).xyxy[0, [0, 2]])[0])
    width_fast = float(np.diff(fast.coasting(t).xyxy[0, [0, 2]])[0])
    assert width_fast > width_slow


def test_predict_includes_updated_and_coasting_tracks() -> None:
    tracker = Tracker()
    tracker.update(faces(box_at(100, 100), box_at(400, 100)), 0.0)
    tracker.update(faces(box_at(100, 100)), DT)
    assert len(tracker.predict(DT)) == 2
    assert len(tracker.predict(2 * DT)) == 2


def test_fast_small_object_matches_by_center_distance() -> None:
    tracker = Tracker()
    first = tracker.update(faces(box_at(100, 100, 20)), 0.0)
    # 25 px jump for a 20 px face: no overlap, still the same object.
    second = tracker.update(faces(box_at(125, 100, 20)), DT)
    assert second.track_id[0] == first.track_id[0]


def test_far_detection_starts_a_new_track() -> None:
    tracker = Tracker()
    first = tracker.update(faces(box_at(100, 100, 20)), 0.0)
    second = tracker.update(faces(box_at(400, 300, 20)), DT)
    assert second.track_id[0] != first.track_id[0]
    assert tracker.new_track_ids() == {int(second.track_id[0])}


def test_crossing_objects_keep_distinct_ids() -> None:
    tracker = Tracker()
    frames = 30
    ids: list[tuple[int, int]] = []
    for i in range(frames):
        t = i * DT
        a = box_at(100 + 300 * t, 200)  # left to right
        b = box_at(700 - 300 * t, 210)  # right to left, crossing near frame 15
        tracked = tracker.update(faces(a, b), t)
        ids.append((int(tracked.track_id[0]), int(tracked.track_id[1])))
    switched = sum(1 for pair in ids if pair != ids[0])
    assert switched <= 2
    assert ids[-1] == ids[0]


def test_approaching_object_size_is_followed() -> None:
    tracker = Tracker()
    t = 0.0
    for i in range(10):
        t = i * DT
        tracker.update(faces(box_at(300, 300, 30 + 120 * t)), t)
    coast = tracker.coasting(t + 3 * DT)
    assert contains(coast.xyxy[0], box_at(300, 300, 30 + 120 * (t + 3 * DT)))


def test_reset_forgets_tracks_but_never_reuses_ids() -> None:
    tracker = Tracker()
    first = tracker.update(faces(box_at(100, 100)), 0.0)
    tracker.reset()
    assert len(tracker) == 0
    assert len(tracker.coasting(DT)) == 0
    again = tracker.update(faces(box_at(100, 100)), DT)
    assert again.track_id[0] != first.track_id[0]


def test_no_cap_on_number_of_tracks() -> None:
    tracker = Tracker()
    boxes = [box_at(30 + 50 * (i % 25), 30 + 50 * (i // 25), 30) for i in range(100)]
    tracked = tracker.update(faces(*boxes), 0.0)
    assert len(set(tracked.track_id.tolist())) == 100
    assert len(tracker.coasting(DT)) == 100


def test_mask_union_covers_every_raw_box_and_missed_track() -> None:
    tracker = Tracker()
    tracker.update(faces(box_at(100, 100), box_at(300, 100)), 0.0)
    raw = tracker.update(faces(box_at(100, 100), box_at(600, 400)), DT)
    mask = mask_union(raw, tracker, DT)
    assert len(mask) == 3
    truth = np.array([box_at(100, 100), box_at(300, 100), box_at(600, 400)], np.float32)
    assert (iou_matrix(truth, mask.xyxy).max(axis=1) > 0.5).all()
