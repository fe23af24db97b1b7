"""The node's tracking policy (masqclip_ros.tracks) without a node: ids across frames, a new
tracker (ids going on) when a stamp goes back or the vocabulary changes, what a frame's tracks
tell a find, and the overlay's colours and labels per track."""

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip(
    'masqclip_ros.srv', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from builtin_interfaces.msg import Time  # noqa: E402

from masqclip.inference.results import Instance, PanopticSegment, SegmentationResult  # noqa: E402
from masqclip.inference.tracking import TrackerCfg  # noqa: E402
from masqclip.visualization import draw_overlay, label_color, label_layout  # noqa: E402
from masqclip_ros.tracks import (  # noqa: E402
    FrameTracker,
    OverlayLabels,
    track_color,
    track_overlay,
)

H, W = 40, 120
IS_THING = (True, True, False)  # mug, cup, wall


def look(axis: int) -> np.ndarray:
    vector = np.zeros(8, np.float32)
    vector[axis] = 1.0
    return vector


def instance(x: int, query: int, class_id: int = 0, score: float = 0.9) -> Instance:
    mask = np.zeros((H, W), bool)
    mask[10:30, x : x + 20] = True
    label = ('mug', 'cup', 'wall')[class_id]
    return Instance.from_mask(label, class_id, score, 1.0, mask, look(query), query)


def frame(*instances: Instance) -> SegmentationResult:
    return SegmentationResult(
        (H, W), ('mug', 'cup', 'wall'), sorted(instances, key=lambda i: -i.score)
    )


def ids(result: SegmentationResult) -> list[int]:
    return [i.track_id for i in result.instances]


def tracker() -> FrameTracker:
    return FrameTracker(TrackerCfg(reid_same_class=False), min_score=0.3)


def test_a_moving_object_keeps_its_id_and_its_first_stamp() -> None:
    tracking = tracker()
    for k in range(4):
        tracked = tracking.track(frame(instance(10 + 3 * k, 0)), IS_THING, Time(sec=5 + k), 1)
        assert ids(tracked.result) == [1] and tracked.reset is None
        assert tracked.result.instances[0].first_seen_s == 5.0
    assert (tracking.active_count, tracking.lost_count) == (1, 0)
    tracked = tracking.track(frame(), IS_THING, Time(sec=9), 1)
    assert (tracking.active_count, tracking.lost_count) == (0, 1)
    assert tracked.tracks.lost == {1: 8.0} and not tracked.tracks.in_view


def test_a_stamp_going_back_starts_a_new_tracker_whose_ids_go_on() -> None:
    tracking = tracker()
    tracking.track(frame(instance(10, 0), instance(60, 1)), IS_THING, Time(sec=10), 1)
    again = tracking.track(frame(instance(10, 0)), IS_THING, Time(sec=10), 1)  # same stamp: fine
    assert again.reset is None and ids(again.result) == [1]
    looped = tracking.track(frame(instance(10, 0)), IS_THING, Time(sec=2, nanosec=5), 1)
    assert ids(looped.result) == [3]  # the old tracks are gone, and no id names two objects
    assert looped.reset == (
        'tracking starts anew: frame 2.000000005 is stamped before the previous one '
        '(10.000000000; a bag looping?); new tracks get ids from 3 on'
    )
    assert looped.tracks.lost == {} and (tracking.active_count, tracking.lost_count) == (1, 0)
    assert tracking.track(frame(instance(12, 0)), IS_THING, Time(sec=3), 1).reset is None


def test_a_vocabulary_change_starts_a_new_tracker() -> None:
    tracking = tracker()
    tracking.track(frame(instance(10, 0)), IS_THING, Time(sec=1), 1)
    changed = tracking.track(frame(instance(10, 0)), IS_THING, Time(sec=2), 2)
    assert ids(changed.result) == [2]
    assert changed.reset == (
        'tracking starts anew: the vocabulary changed (version 1 -> 2), and with it the class '
        'ids lost tracks are matched by; new tracks get ids from 2 on'
    )
    assert tracking.track(frame(instance(10, 0)), IS_THING, Time(sec=3), 2).reset is None


def test_class_copies_share_the_id_and_the_frame_keeps_each_tracks_best_copy() -> None:
    tracking = tracker()
    best, copy = instance(10, 0, class_id=0, score=0.9), instance(10, 0, class_id=1, score=0.5)
    faint = instance(70, 1, score=0.1)  # under min_score
    tracked = tracking.track(frame(best, copy, faint), IS_THING, Time(sec=1), 1)
    assert ids(tracked.result) == [1, 1, 0]
    assert list(tracked.tracks.in_view) == [1]
    assert tracked.tracks.in_view[1].label == 'mug' and tracked.tracks.in_view[1].track_id == 1
    # A find match of the same proposal takes its track; one of another proposal none.
    match = Instance.from_mask('red mug', 0, 0.7, 1.0, best.mask, look(0), 0)
    assert tracked.tracks.with_track(match).track_id == 1
    other = Instance.from_mask('red mug', 0, 0.7, 1.0, faint.mask, look(1), 1)
    assert tracked.tracks.with_track(other).track_id == 0


def test_a_frame_says_whether_a_missing_track_is_lost_or_unknown() -> None:
    tracking = tracker()
    tracking.track(frame(instance(10, 0), instance(70, 1)), IS_THING, Time(sec=1), 1)
    tracks = tracking.track(frame(instance(12, 0)), IS_THING, Time(sec=1, nanosec=5 * 10**8), 1)
    tracks = tracks.tracks
    assert tracks.absence(2) == (
        'track 2 is lost on this frame: out of view since 0.50 s before it, kept for '
        're-identification'
    )
    assert tracks.absence(9) == (
        'track 9 is unknown on this frame: never seen, forgotten after tracking.lost_track_s, '
        'or from before a tracker reset (in view: 1; lost: 2)'
    )


def test_the_overlay_colours_and_labels_tracked_things_by_their_track() -> None:
    tracking = tracker()
    panoptic = np.zeros((H, W), np.int32)
    panoptic[10:30, 10:30], panoptic[:5] = 1, 2
    result = SegmentationResult(
        (H, W), ('mug', 'cup', 'wall'), [instance(10, 4, score=0.81)], panoptic=panoptic,
        segments=[PanopticSegment(1, 0, 'mug', True, 0.81, 400, query_index=4),
                  PanopticSegment(2, 2, 'wall', False, 0.6, 600)],
    )  # fmt: skip
    tracked = tracking.track(result, IS_THING, Time(sec=1), 1).result
    labels = track_overlay(tracked)
    assert (labels.show, labels.colors, labels.texts) == (
        'panoptic', {1: track_color(1)}, {1: '#1 mug 0.81'}
    )  # fmt: skip
    layout = label_layout(tracked, labels.show, colors=labels.colors, texts=labels.texts)
    assert [(box.text, box.color) for box in layout] == [
        ('#1 mug 0.81', track_color(1)), ('wall 0.60', label_color('wall'))
    ]  # fmt: skip
    without_panoptic = track_overlay(frame(*tracked.instances))
    assert (without_panoptic.show, without_panoptic.texts) == ('instances', {0: '#1 mug 0.81'})
    assert track_overlay(frame()) == OverlayLabels('auto', {}, {})
    image = np.zeros((H, W, 3), np.uint8)
    drawing = draw_overlay(image, tracked, 1.0, labels.show, colors=labels.colors)
    assert (drawing[10:30, 10:30] == track_color(1)).all(-1).any()  # filled in its colour
