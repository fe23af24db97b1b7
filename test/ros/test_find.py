"""A find's answer on a remembered frame (masqclip_ros.find) without a node: the status and
message, the matches as instances with their tracks, 3D only where asked for and available,
unknown words; a find by track id on frames remembered with their tracks: found, lost,
unknown."""

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip(
    'masqclip_ros.srv', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from builtin_interfaces.msg import Time  # noqa: E402
from masqclip_ros.srv import FindObjects  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from masqclip.inference.results import Instance, SegmentationResult  # noqa: E402
from masqclip.inference.tracking import TrackerCfg  # noqa: E402
from masqclip.inference.vocabulary import VocabularyError  # noqa: E402
from masqclip_ros.find import answer_on_frame  # noqa: E402
from masqclip_ros.geometry import intrinsics_from_k  # noqa: E402
from masqclip_ros.history import FrameHistory, FrameRecord  # noqa: E402
from masqclip_ros.tracks import FrameTracker  # noqa: E402

H, W = 8, 10
FOUND, NOT_FOUND, ERROR = (FindObjects.Response.FOUND, FindObjects.Response.NOT_FOUND,
                           FindObjects.Response.ERROR)  # fmt: skip


class FakePredictor:
    """``Predictor.find`` and ``unknown_words_warning`` with fixed answers."""

    def __init__(self, matches=(), unknown=None, error=None) -> None:
        self.matches, self.unknown, self.error = list(matches), unknown, error
        self.asked: dict = {}

    def find(self, result, query, negative_queries, max_results, min_score):
        self.asked = dict(query=query, negative_queries=negative_queries,
                          max_results=max_results, min_score=min_score)  # fmt: skip
        if self.error is not None:
            raise self.error
        return self.matches

    def unknown_words_warning(self, texts):
        return self.unknown


def match(score: float = 0.8) -> Instance:
    mask = np.zeros((H, W), bool)
    mask[2:6, 3:8] = True
    return Instance.from_mask('red mug', 0, score, 0.9, mask, np.ones(4, np.float32), 3)


def record(with_depth: bool) -> FrameRecord:
    header = Header(frame_id='camera_optical')
    header.stamp.sec = 42
    depth = np.full((H, W), 2.0, np.float32) if with_depth else None
    intrinsics = intrinsics_from_k([5.0, 0, W / 2, 0, 5.0, H / 2, 0, 0, 1], H, W)
    return FrameRecord(1, header, SegmentationResult((H, W), ('mug',)), 1, depth, intrinsics)


def answer(predictor: FakePredictor, frame: FrameRecord, **fields):
    request = FindObjects.Request(query='red mug', **fields)
    response = FindObjects.Response()
    unknown = answer_on_frame(request, response, predictor, frame, depth_min_points=5)
    return response, unknown


def test_matches_are_found_as_instances_of_no_class_with_3d_where_there_is_depth() -> None:
    predictor = FakePredictor([match(0.8), match(0.5)])
    response, unknown = answer(predictor, record(with_depth=True), negative_queries=['blue mug'],
                               max_results=3, min_score=0.25)  # fmt: skip
    assert (response.status, response.message) == (FOUND, "2 match(es) for 'red mug'")
    assert unknown is None and response.header.stamp.sec == 42
    assert predictor.asked == dict(query='red mug', negative_queries=['blue mug'],
                                   max_results=3, min_score=0.25)  # fmt: skip
    assert [(m.label, m.class_id) for m in response.matches] == [('red mug', -1)] * 2
    best = response.matches[0]
    assert best.score == pytest.approx(0.8) and best.mask.width == best.roi.width == 5
    assert best.has_3d and best.centroid.z == pytest.approx(2.0)


def test_no_3d_without_depth_or_when_not_asked_and_no_masks_when_not_asked() -> None:
    without_depth, _ = answer(FakePredictor([match()]), record(with_depth=False))
    assert not without_depth.matches[0].has_3d
    bare, _ = answer(FakePredictor([match()]), record(with_depth=True), return_3d=False,
                     return_masks=False)  # fmt: skip
    assert not bare.matches[0].has_3d and bare.matches[0].mask.width == 0


def test_nothing_above_the_minimum_is_not_found() -> None:
    response, _ = answer(FakePredictor([]), record(with_depth=False), min_score=0.5)
    assert (response.status, response.message) == (
        NOT_FOUND, "nothing scores at least 0.5 for 'red mug'"
    )  # fmt: skip
    assert not response.matches


def test_words_the_model_does_not_know_are_returned_and_told_the_caller() -> None:
    warning = "this model does not know 'mug'"
    response, unknown = answer(FakePredictor([match()], unknown=warning), record(False))
    assert unknown == warning
    assert response.message == f"1 match(es) for 'red mug'; warning: {warning}"


def test_a_query_the_predictor_cannot_score_is_an_error() -> None:
    predictor = FakePredictor(error=VocabularyError('query is empty'))
    response, unknown = answer(predictor, record(with_depth=False))
    assert (response.status, response.message) == (
        ERROR, "cannot score query 'red mug': query is empty"
    )  # fmt: skip
    assert unknown is None and not response.matches


def tracked_history() -> tuple[FrameHistory, list]:
    """Three frames remembered: track 1 in view in all, track 2 only in the first."""
    tracking = FrameTracker(TrackerCfg(), min_score=0.3)
    history = FrameHistory(capacity=4)

    def instance(x: int, query: int) -> Instance:
        mask = np.zeros((H, W), bool)
        mask[2:6, x : x + 3] = True
        look = np.eye(4, dtype=np.float32)[query]
        return Instance.from_mask('mug', 0, 0.9, 0.9, mask, look, query)

    frames = [[instance(1, 0), instance(6, 1)], [instance(2, 0)], [instance(3, 0)]]
    records = []
    for sec, instances in enumerate(frames, 40):
        result = SegmentationResult((H, W), ('mug',), instances)
        tracked = tracking.track(result, (True,), Time(sec=sec), 1)
        header = Header(frame_id='camera_optical', stamp=Time(sec=sec))
        records.append(history.remember(header, tracked.result, 1, None, None, tracked.tracks))
    return history, records


def track_find(history: FrameHistory, sec: int, track_id: int):
    request = FindObjects.Request(track_id=track_id, frame=FindObjects.Request.STAMP)
    request.stamp.sec = sec
    record = history.find(request, '/camera/image')
    response = FindObjects.Response()
    predictor = FakePredictor(error=AssertionError('a track find scores no query'))
    assert answer_on_frame(request, response, predictor, record, depth_min_points=5) is None
    return response


def test_a_track_is_found_on_a_remembered_frame_with_the_ids_it_had() -> None:
    history, _ = tracked_history()
    oldest = track_find(history, 40, 2)
    assert (oldest.status, oldest.message) == (FOUND, "track 2 is in view as 'mug'")
    assert oldest.header.stamp.sec == 40
    [match] = oldest.matches
    assert (match.track_id, match.label, match.class_id, match.proposal_index) == (2, 'mug', 0, 1)
    assert (match.first_seen.sec, match.first_seen.nanosec) == (40, 0)
    assert (match.roi.x_offset, match.mask.width) == (6, 3)
    latest = track_find(history, 42, 1)
    assert latest.status == FOUND and latest.matches[0].roi.x_offset == 3


def test_a_track_not_in_view_is_lost_or_unknown_on_that_frame() -> None:
    history, _ = tracked_history()
    lost = track_find(history, 42, 2)
    assert (lost.status, lost.message) == (NOT_FOUND, (
        'track 2 is lost on this frame: out of view since 2.00 s before it, kept for '
        're-identification'
    ))  # fmt: skip
    unknown = track_find(history, 40, 3)
    assert unknown.status == NOT_FOUND and not unknown.matches
    assert unknown.message.startswith('track 3 is unknown on this frame')


def test_a_track_find_on_an_untracked_frame_is_an_error() -> None:
    response = FindObjects.Response()
    request = FindObjects.Request(track_id=1)
    answer_on_frame(request, response, FakePredictor(), record(False), depth_min_points=5)
    assert (response.status, response.message) == (
        ERROR, 'this frame was not tracked (tracking.enabled is false)'
    )  # fmt: skip


def test_query_matches_carry_the_track_of_their_proposal_on_that_frame() -> None:
    _, records = tracked_history()
    oldest = records[0]
    matches = [oldest.tracks.in_view[2], match(0.5)]  # proposal 1 (track 2); proposal 3: none
    response = FindObjects.Response()
    request = FindObjects.Request(query='red mug')
    answer_on_frame(request, response, FakePredictor(matches), oldest, depth_min_points=5)
    assert [(m.track_id, m.class_id) for m in response.matches] == [(2, -1), (0, -1)]
