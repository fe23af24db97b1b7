"""Tests of masqclip.inference.tracking (association, re-identification, track lifetimes) and
of masqclip.evaluation.tracking on the shipped example sequence."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from masqclip.cli import CommandError
from masqclip.data.io import read_image
from masqclip.evaluation import tracking as evaluation
from masqclip.factory import build_model
from masqclip.inference import tracking
from masqclip.inference.predictor import Predictor
from masqclip.inference.results import Instance, PanopticSegment, SegmentationResult
from masqclip.inference.tracking import Tracker, TrackerCfg
from masqclip.tools import eval_tracks

EXAMPLE = Path(__file__).resolve().parents[1] / 'examples' / 'sequence'
FPS = 10.0


@dataclass(frozen=True)
class Blob:
    """A rectangular detection."""

    box: np.ndarray
    mask_crop: np.ndarray
    embedding: np.ndarray
    class_id: int = 0


def blob(x: int, y: int, embedding: np.ndarray, size: int = 40, class_id: int = 0) -> Blob:
    box = np.array([x, y, x + size, y + size], np.float32)
    return Blob(box, np.ones((size, size), bool), embedding, class_id)


def unit(dim: int, axis: int) -> np.ndarray:
    """Orthogonal embeddings: a different ``axis`` is a different-looking object."""
    vector = np.zeros(dim, np.float32)
    vector[axis] = 1.0
    return vector


A, B, C = (unit(8, k) for k in range(3))


def test_objects_swapping_places_keep_their_ids_by_their_embeddings() -> None:
    tracker = Tracker()
    first = tracker.update([blob(100, 100, A), blob(300, 100, B)], 0.0)
    # Each is now exactly where the other was: IoU alone would swap them.
    swapped = tracker.update([blob(300, 100, A), blob(100, 100, B)], 0.1)
    assert swapped == first == [1, 2]


def test_a_different_looking_object_in_a_tracks_place_starts_a_new_track() -> None:
    tracker = Tracker()
    assert tracker.update([blob(100, 100, A)], 0.0) == [1]
    assert tracker.update([blob(100, 100, B)], 0.1) == [2]


def test_identical_looking_objects_are_told_apart_by_mask_overlap() -> None:
    tracker = Tracker()
    assert tracker.update([blob(100, 100, A), blob(300, 100, A)], 0.0) == [1, 2]
    # Detections in the other order, each moved a little towards the other.
    assert tracker.update([blob(290, 100, A), blob(110, 100, A)], 0.1) == [2, 1]


def test_a_still_object_and_empty_frames() -> None:
    tracker = Tracker()
    assert tracker.update([], 0.0) == []
    assert tracker.update([blob(50, 50, A)], 0.1) == [1]
    assert tracker.update([blob(50, 50, A)], 0.2) == [1]
    assert (tracker.active_count, tracker.lost_count) == (1, 0)
    assert tracker.update([], 0.3) == []
    assert (tracker.active_count, tracker.lost_count) == (0, 1)


def test_the_velocity_prediction_follows_a_speeding_object() -> None:
    # Gated so that only IoU >= 0.6 matches (the embeddings are equal).
    tracker = Tracker(TrackerCfg(max_cost=0.2))
    size, x = 100, 0
    steps = [20] * 5 + [40] * 4
    ids = tracker.update([blob(x, 0, A, size)], 0.0)
    for k, step in enumerate(steps, 1):
        x += step
        ids += tracker.update([blob(x, 0, A, size)], k / FPS)
    # A 40 px step of a 100 px box overlaps the unmoved box by IoU 60 / 140 < 0.6.
    assert ids == [1] * (len(steps) + 1)


def test_a_reidentified_track_forgets_its_old_velocity() -> None:
    tracker = Tracker(TrackerCfg(max_cost=0.2))  # IoU >= 0.6 only
    xs = np.cumsum([0, 20, 20, 20, 30, 35, 40, 40])  # speeding up to 400 px/s
    ids = [tracker.update([blob(x, 0, A, 100)], k / FPS)[0] for k, x in enumerate(xs)]
    tracker.update([], 0.8)
    # Back, standing still: the old velocity would predict it over 30 px away (IoU < 0.54).
    ids += [tracker.update([blob(400, 300, A, 100)], (9 + k) / FPS)[0] for k in range(3)]
    assert ids == [1] * 11


def test_an_object_back_elsewhere_gets_its_old_id_within_lost_track_seconds() -> None:
    tracker = Tracker(TrackerCfg(lost_track_seconds=3.0))
    assert tracker.update([blob(10, 10, A), blob(200, 200, B)], 0.0) == [1, 2]
    for k in range(1, 20):  # A is gone for 1.9 s while B stays
        assert tracker.update([blob(200, 200, B)], k / FPS) == [2]
    assert tracker.lost_count == 1
    # Back on the other side of the frame, beside a new object.
    assert tracker.update([blob(200, 200, B), blob(500, 400, C), blob(500, 10, A)], 2.0) == [
        2,
        3,
        1,
    ]
    assert tracker.lost_count == 0
    assert [t.first_seen_s for t in tracker.tracks] == [0.0, 0.0, 2.0]


def test_an_object_back_after_lost_track_seconds_gets_a_new_id() -> None:
    tracker = Tracker(TrackerCfg(lost_track_seconds=1.0))
    assert tracker.update([blob(10, 10, A)], 0.0) == [1]
    assert tracker.update([], 0.5) == []
    assert tracker.lost_count == 1
    assert tracker.update([], 1.2) == []
    assert tracker.lost_count == 0  # dropped
    assert tracker.update([blob(10, 10, A)], 1.3) == [2]


def test_reidentification_within_the_class_only_unless_configured() -> None:
    def returning_id(cfg: TrackerCfg) -> int:
        tracker = Tracker(cfg)
        tracker.update([blob(10, 10, A, class_id=3)], 0.0)
        tracker.update([], 0.1)
        return tracker.update([blob(300, 300, A, class_id=4)], 0.2)[0]

    assert returning_id(TrackerCfg()) == 2
    assert returning_id(TrackerCfg(reid_same_class=False)) == 1


def test_ids_are_never_reused() -> None:
    rng = np.random.default_rng(0)
    tracker = Tracker(TrackerCfg(lost_track_seconds=0.3))
    looks = [unit(8, k) for k in range(8)]
    newest = 0
    for k in range(60):
        shown = rng.choice(8, size=rng.integers(0, 5), replace=False)
        ids = tracker.update([blob(60 * j, 60 * j, looks[j]) for j in shown], k / FPS)
        assert len(set(ids)) == len(ids)
        for track_id in ids:
            if track_id > newest:
                assert track_id == newest + 1  # a new one is always the next number
                newest = track_id
    assert newest > 8  # tracks were dropped and their objects came back under new ids
    assert tracker.next_id == newest + 1
    successor = Tracker(first_id=tracker.next_id)  # after a time jump, ids go on
    assert successor.update([blob(0, 0, A)], 0.0) == [newest + 1]
    with pytest.raises(ValueError, match='first_id'):
        Tracker(first_id=0)


def test_tracks_report_their_majority_class_and_state() -> None:
    tracker = Tracker()
    for k, class_id in enumerate([3, 4, 3, 4, 3]):  # a flickering label
        assert tracker.update([blob(10 + k, 10, A, class_id=class_id)], k / FPS) == [1]
    tracker.update([blob(300, 300, B)], 0.5)
    first, second = tracker.tracks
    assert (first.track_id, first.class_id, first.lost) == (1, 3, True)
    assert (first.first_seen_s, first.last_seen_s) == (0.0, 0.4)
    assert first.box.tolist() == [14, 10, 54, 50]
    assert (second.track_id, second.first_seen_s, second.lost) == (2, 0.5, False)


def test_the_iou_bound_that_prunes_pairs_is_never_below_the_iou() -> None:
    rng = np.random.default_rng(1)
    corners = rng.integers(0, 60, (30, 2))
    sizes = rng.integers(1, 30, (30, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    crops = [rng.random((h, w)) < rng.uniform(0.1, 1.0) for w, h in sizes]
    masks = tracking._Masks(boxes, crops, [int(c.sum()) for c in crops])
    overlap = tracking._box_overlap(masks, masks)
    iou = tracking._mask_iou(masks, masks, overlap > 0)
    bound = tracking._iou_bound(masks, masks, overlap)
    assert (iou <= bound + 1e-12).all()
    np.testing.assert_allclose(np.diag(iou)[np.array(masks.areas) > 0], 1.0)
    assert (iou[overlap == 0] == 0).all() and (overlap > 0).sum() > 60


def test_stamps_must_not_go_back() -> None:
    tracker = Tracker()
    tracker.update([], 1.0)
    with pytest.raises(ValueError, match='time order'):
        tracker.update([], 0.5)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match='gallery_size'):
        TrackerCfg(gallery_size=0)
    with pytest.raises(ValueError, match='cosine'):
        TrackerCfg(min_similarity=1.5)


def test_the_gallery_remembers_the_latest_looks() -> None:
    def returning_id(gallery_size: int) -> int:
        tracker = Tracker(TrackerCfg(gallery_size=gallery_size, reid_min_similarity=0.9))
        # Its look turns from A to B over 10 frames and stays B for 5.
        for k, angle in enumerate(np.linspace(0, np.pi / 2, 10).tolist() + [np.pi / 2] * 5):
            look = np.cos(angle) * A + np.sin(angle) * B
            assert tracker.update([blob(10 * k, 10, look)], k / FPS) == [1]
        tracker.update([], 1.5)
        return tracker.update([blob(300, 300, B)], 1.6)[0]

    assert returning_id(4) == 1  # the gallery holds B only
    assert returning_id(32) == 2  # its mean is still halfway between A and B


def test_trackable_instances_are_things_once_per_proposal() -> None:
    def instance(score: float, class_id: int, query: int) -> Instance:
        return Instance.from_mask('', class_id, score, 1.0, np.ones((4, 4), bool), A, query)

    ranked = [instance(0.9, 0, 7), instance(0.8, 2, 5), instance(0.7, 1, 7), instance(0.6, 1, 3),
              instance(0.2, 0, 9)]  # fmt: skip
    is_thing = (True, True, False)
    chosen = tracking.trackable_instances(ranked, is_thing, min_score=0.3)
    assert [(i.query_index, i.class_id) for i in chosen] == [(7, 0), (3, 1)]


def test_synthetic_crowd_keeps_every_id() -> None:
    cost = evaluation.tracker_cost(num_objects=100, num_frames=10)
    assert cost.tracks_started == 100
    assert cost.ms_per_frame > 0


@pytest.fixture(scope='module')
def demo() -> tuple:
    network, config = build_model(checkpoint='demo')
    network.eval()
    predictor = Predictor.from_network(network, config)
    sequence = evaluation.load_sequence(EXAMPLE)
    predictor.set_vocabulary(sequence.vocabulary)
    return network, predictor, sequence


def test_ground_truth_mask_embeddings_match_the_models_own(demo: tuple) -> None:
    network, predictor, sequence = demo
    frame = sequence.frames[25]
    image = read_image(frame.image_path)
    truth = frame.masks()
    embedded = evaluation.mask_embeddings(network, predictor, image, truth)
    assert embedded.shape == (len(truth), network.mask_clip.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)
    result = predictor.predict(image, tasks=('instance',))
    instances = tracking.trackable_instances(result.instances, predictor.vocabulary.is_thing, 0.0)
    assert len({i.query_index for i in instances}) == len(instances)
    assert all(predictor.vocabulary.is_thing[i.class_id] for i in instances)
    iou = evaluation._mask_iou(truth, np.array([i.mask for i in instances]))
    close = [(g, k) for g, k in enumerate(iou.argmax(1)) if iou[g, k] > 0.7]
    assert close, 'the demo model finds some of these objects (measured: 3 of 3)'
    for g, k in close:  # measured 0.99 and more
        assert embedded[g] @ instances[k].embedding > 0.95


def test_tracking_ground_truth_masks_of_the_example_sequence(demo: tuple) -> None:
    network, predictor, sequence = demo
    # 60 frames: tracks 6 and 1 leave and come back, track 5 enters (looking like track 6).
    scores = evaluation.evaluate_tracking(
        sequence, evaluation.ground_truth_detector(network, predictor), max_frames=60
    )
    assert (scores.frames, scores.objects) == (60, 150)
    assert (scores.reentries, scores.reidentified) == (2, 2)
    assert scores.id_switches == 0
    assert scores.idf1 >= 0.98  # measured 1.0 (0.973 with re-identification across classes)
    assert scores.mota >= 0.98  # measured 1.0


def test_eval_tracks_command_prints_the_table(capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    eval_tracks.add_arguments(parser)
    args = parser.parse_args([str(EXAMPLE), '--gt-masks', '--max-frames', '5'])
    assert eval_tracks.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f'{EXAMPLE}: 5 frames, 22 annotated objects, 0 re-entries')
    assert lines[3].startswith('| ground-truth masks | 1.000 | 1.000 | 0 | 0/0 | 1.000 | 1.000 |')
    assert 'tracker with 100 instances a frame' in lines[4]
    with pytest.raises(CommandError, match='synth OUT --sequence'):
        eval_tracks.run(parser.parse_args([str(EXAMPLE / 'images')]))


def test_track_result_puts_the_ids_on_every_class_copy_and_on_thing_segments() -> None:
    def instance(score: float, class_id: int, query: int, x: int) -> Instance:
        mask = np.zeros((60, 200), bool)
        mask[10:50, x : x + 40] = True
        return Instance.from_mask('', class_id, score, 1.0, mask, unit(8, query), query)

    def frame(x: int) -> SegmentationResult:
        segments = [PanopticSegment(1, 0, 'mug', True, 0.9, 1600, query_index=7),
                    PanopticSegment(2, 2, 'wall', False, 0.8, 5000),
                    PanopticSegment(3, 1, 'cup', True, 0.2, 1600, query_index=3)]  # fmt: skip
        instances = [instance(0.9, 0, 7, x), instance(0.6, 1, 7, x), instance(0.2, 1, 3, 120)]
        return SegmentationResult((60, 200), ('mug', 'cup', 'wall'), instances, segments=segments)

    tracker = Tracker()
    first = tracking.track_result(tracker, frame(10), (True, True, False), 1.0, min_score=0.3)
    later = tracking.track_result(tracker, frame(14), (True, True, False), 1.1, min_score=0.3)
    for result in (first, later):
        # Both copies of proposal 7; proposal 3 scores under min_score, and stuff is untracked.
        assert [(i.track_id, i.first_seen_s) for i in result.instances] == [
            (1, 1.0), (1, 1.0), (0, None)
        ]  # fmt: skip
        assert [(s.track_id, s.first_seen_s) for s in result.segments] == [
            (1, 1.0), (0, None), (0, None)
        ]  # fmt: skip
    assert tracker.active_count == 1
    assert frame(10).instances[0].track_id == 0  # the input is left as it was
    with pytest.raises(ValueError, match='before the previous frame'):
        tracking.track_result(tracker, frame(14), (True, True, False), 0.5)
