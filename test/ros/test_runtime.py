"""The node's policy (masqclip_ros.runtime) without a node: request ranges, stamps, the
vocabulary rules."""

import math

import pytest

pytest.importorskip('rclpy')
pytest.importorskip(
    'masqclip_ros.srv', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from builtin_interfaces.msg import Time  # noqa: E402
from masqclip_ros.srv import FindObjects, SetVocabulary  # noqa: E402

from masqclip.inference.vocabulary import Vocabulary, VocabularyEntry, VocabularyError  # noqa: E402
from masqclip_ros.runtime import (  # noqa: E402
    changed_vocabulary,
    find_request_problem,
    stamp_problem,
    vocabulary_summary,
)

REPLACE, ADD, REMOVE = (SetVocabulary.Request.REPLACE, SetVocabulary.Request.ADD,
                        SetVocabulary.Request.REMOVE)  # fmt: skip


@pytest.mark.parametrize(('sec', 'nanosec'), [(0, 0), (1, 999_999_999), (2**31 - 1, 0)])
def test_ros_times_are_accepted(sec: int, nanosec: int) -> None:
    assert stamp_problem(Time(sec=sec, nanosec=nanosec)) is None


@pytest.mark.parametrize(('sec', 'nanosec'), [(-1, 0), (-(2**31), 5), (3, 1_000_000_000)])
def test_stamps_that_are_no_ros_time_are_refused(sec: int, nanosec: int) -> None:
    problem = stamp_problem(Time(sec=sec, nanosec=nanosec))
    assert problem == (
        f'stamp {sec} s {nanosec} ns is not a ROS time (sec must be >= 0, nanosec < 1e9)'
    )


def test_a_plain_find_request_is_valid() -> None:
    request = FindObjects.Request(query='red mug', negative_queries=['blue mug'])
    assert find_request_problem(request) is None
    assert find_request_problem(FindObjects.Request(query='mug', timeout_s=60.0)) is None


@pytest.mark.parametrize(
    ('fields', 'message'),
    [
        *[
            ({'timeout_s': value}, f'timeout_s {value} must be in [0, 60] seconds')
            for value in (math.nan, math.inf, -math.inf, -1.0, 60.5, 1e9)
        ],
        *[
            ({'min_score': value}, f'min_score {value} must be in [0, 1]')
            for value in (math.nan, math.inf, -0.5, 1.5)
        ],
        ({'max_results': 0}, 'max_results must be at least 1'),
        ({'frame': 7}, 'frame 7 is not LATEST (0), NEXT (1) or STAMP (2)'),
        (
            {'frame': FindObjects.Request.STAMP, 'stamp': Time(sec=-1)},
            'the requested stamp -1 s 0 ns is not a ROS time',
        ),
        ({'query': '   '}, 'query is empty'),
        ({'negative_queries': ['blue mug', ' ']}, 'negative query 2 is empty'),
        ({'negative_queries': ['a\x07b']}, 'negative query 1 contains control characters'),
    ],
)
def test_find_requests_out_of_range_are_refused_naming_the_field(fields, message) -> None:
    request = FindObjects.Request(**{'query': 'red mug', **fields})
    problem = find_request_problem(request)
    assert problem is not None and problem.startswith(message), problem


def test_a_nan_timeout_is_refused_for_every_frame_kind() -> None:
    # The float is checked even where the frame kind does not read it: one rule, no surprise.
    for frame in (FindObjects.Request.LATEST, FindObjects.Request.STAMP):
        request = FindObjects.Request(query='mug', frame=frame, timeout_s=math.nan)
        assert 'timeout_s nan' in find_request_problem(request)


def entries(*names: str) -> list[VocabularyEntry]:
    return [VocabularyEntry(name) for name in names]


CURRENT = Vocabulary.parse('red hollow, table')


def test_replace_cleans_names_and_add_appends_after_the_existing_classes() -> None:
    assert changed_vocabulary(CURRENT, entries('  Red   Mug ', 'floor'), REPLACE).names == (
        'Red Mug',
        'floor',
    )
    assert changed_vocabulary(CURRENT, entries(' blue  cup'), ADD).names == (
        'red hollow',
        'table',
        'blue cup',
    )


def test_remove_normalises_whitespace_as_replace_does() -> None:
    assert changed_vocabulary(CURRENT, entries('red   hollow'), REMOVE).names == ('table',)


@pytest.mark.parametrize(
    ('names', 'mode', 'message'),
    [
        (('RED HOLLOW',), ADD, 'already in the vocabulary'),
        ((), ADD, 'nothing to add'),
        ((), REMOVE, 'nothing to remove'),
        (('unicorn',), REMOVE, 'not in the vocabulary'),
        (('red hollow', 'table'), REMOVE, 'would be empty'),
        ((), REPLACE, 'would be empty'),
        (('cup', ' CUP '), REPLACE, 'twice'),
        (('cup',), 7, 'mode 7 is not'),
    ],
)
def test_requests_that_change_nothing_or_break_a_rule_are_refused(names, mode, message) -> None:
    with pytest.raises(VocabularyError, match=message):
        changed_vocabulary(CURRENT, entries(*names), mode)


def test_summary_names_the_first_eight_classes() -> None:
    assert vocabulary_summary(CURRENT) == '2 classes: red hollow, table'
    many = Vocabulary.from_names([f'c{i}' for i in range(10)])
    assert vocabulary_summary(many) == '10 classes: c0, c1, c2, c3, c4, c5, c6, c7, ...'
