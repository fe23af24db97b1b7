"""The node's policy and thread-safe state (masqclip_ros.runtime) without a node: request
ranges, stamps, the vocabulary rules, depth pairing, the rate gate, the latest-frame slot, the
rate-limited log and the statistics."""

import math
import threading
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip(
    'masqclip_ros.srv', reason='masqclip_ros interfaces not built (scripts/setup_ros.sh)'
)

from builtin_interfaces.msg import Time  # noqa: E402
from masqclip_ros.srv import FindObjects, SetVocabulary  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from masqclip.inference.vocabulary import (  # noqa: E402
    Exemplar,
    Vocabulary,
    VocabularyEntry,
    VocabularyError,
)
from masqclip_ros import runtime  # noqa: E402
from masqclip_ros.conversions import ImageConversionError, array_to_image_msg  # noqa: E402
from masqclip_ros.geometry import GeometryError  # noqa: E402

REPLACE, ADD, REMOVE = (SetVocabulary.Request.REPLACE, SetVocabulary.Request.ADD,
                        SetVocabulary.Request.REMOVE)  # fmt: skip


@pytest.mark.parametrize(('sec', 'nanosec'), [(0, 0), (1, 999_999_999), (2**31 - 1, 0)])
def test_ros_times_are_accepted(sec: int, nanosec: int) -> None:
    assert runtime.stamp_problem(Time(sec=sec, nanosec=nanosec)) is None


@pytest.mark.parametrize(('sec', 'nanosec'), [(-1, 0), (-(2**31), 5), (3, 1_000_000_000)])
def test_stamps_that_are_no_ros_time_are_refused(sec: int, nanosec: int) -> None:
    problem = runtime.stamp_problem(Time(sec=sec, nanosec=nanosec))
    assert problem == (
        f'stamp {sec} s {nanosec} ns is not a ROS time (sec must be >= 0, nanosec < 1e9)'
    )


def test_a_plain_find_request_is_valid() -> None:
    request = FindObjects.Request(query='red mug', negative_queries=['blue mug'])
    assert runtime.find_request_problem(request) is None
    assert runtime.find_request_problem(FindObjects.Request(query='mug', timeout_s=60.0)) is None


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
    problem = runtime.find_request_problem(request)
    assert problem is not None and problem.startswith(message), problem


def test_a_track_find_needs_no_query_but_its_numbers_are_still_checked() -> None:
    assert runtime.find_request_problem(FindObjects.Request(track_id=17)) is None
    ignored = FindObjects.Request(track_id=17, query=' ', negative_queries=[''])
    assert runtime.find_request_problem(ignored) is None
    slow = FindObjects.Request(track_id=17, timeout_s=math.inf)
    assert runtime.find_request_problem(slow).startswith('timeout_s inf')


def test_stamps_in_seconds() -> None:
    assert runtime.stamp_seconds(Time(sec=3, nanosec=250_000_000)) == 3.25


def test_a_nan_timeout_is_refused_for_every_frame_kind() -> None:
    # The float is checked even where the frame kind does not read it: one rule, no surprise.
    for frame in (FindObjects.Request.LATEST, FindObjects.Request.STAMP):
        request = FindObjects.Request(query='mug', frame=frame, timeout_s=math.nan)
        assert 'timeout_s nan' in runtime.find_request_problem(request)


def entries(*names: str) -> list[VocabularyEntry]:
    return [VocabularyEntry(name) for name in names]


CURRENT = Vocabulary.parse('red hollow, table')


def test_replace_cleans_names_and_add_appends_after_the_existing_classes() -> None:
    replaced = runtime.changed_vocabulary(CURRENT, entries('  Red   Mug ', 'floor'), REPLACE)
    assert replaced.names == ('Red Mug', 'floor')
    added = runtime.changed_vocabulary(CURRENT, entries(' blue  cup'), ADD)
    assert added.names == ('red hollow', 'table', 'blue cup')


def test_remove_normalises_whitespace_as_replace_does() -> None:
    assert runtime.changed_vocabulary(CURRENT, entries('red   hollow'), REMOVE).names == ('table',)


@pytest.mark.parametrize(
    ('names', 'mode', 'message'),
    [
        (('RED HOLLOW',), ADD, 'already in the vocabulary'),
        ((), ADD, 'nothing to add'),
        ((), REMOVE, 'nothing to remove'),
        (('unicorn',), REMOVE, 'not in the vocabulary'),
        (('red hollow', 'table'), REMOVE, 'no class in the vocabulary'),
        ((), REPLACE, 'no class in the vocabulary'),
        (('cup', ' CUP '), REPLACE, 'twice'),
        (('cup',), 7, 'mode 7 is not'),
    ],
)
def test_requests_that_change_nothing_or_break_a_rule_are_refused(names, mode, message) -> None:
    with pytest.raises(VocabularyError, match=message):
        runtime.changed_vocabulary(CURRENT, entries(*names), mode)


def taught(name: str, model: str = 'weights-a') -> VocabularyEntry:
    """An exemplar class (one example) named ``name``."""
    return VocabularyEntry(name, exemplar=Exemplar.first(np.arange(1.0, 5.0), model, 0.9))


WITH_TAUGHT = Vocabulary((VocabularyEntry('table'), taught('my toy'), taught('red cup')))


def test_replace_keeps_the_taught_classes_it_does_not_name_after_its_entries() -> None:
    replaced = runtime.changed_vocabulary(WITH_TAUGHT, entries('floor', 'chair'), REPLACE)
    assert replaced.names == ('floor', 'chair', 'my toy', 'red cup')
    assert replaced.entries[2:] == WITH_TAUGHT.entries[1:]


def test_a_replace_entry_naming_a_taught_class_keeps_its_exemplar_at_its_position() -> None:
    stuff = VocabularyEntry('  RED  cup', is_thing=False)
    replaced = runtime.changed_vocabulary(WITH_TAUGHT, [stuff, VocabularyEntry('floor')], REPLACE)
    assert replaced.names == ('RED cup', 'floor', 'my toy')
    cup = replaced.entries[0]
    assert cup.exemplar == WITH_TAUGHT.entries[2].exemplar and not cup.is_thing
    # Sending the vocabulary in force back (as ~/semantic/labels gives it) changes nothing.
    again = runtime.changed_vocabulary(WITH_TAUGHT, entries(*WITH_TAUGHT.names), REPLACE)
    assert again == WITH_TAUGHT


def test_a_taught_class_cannot_gain_synonyms_and_only_remove_drops_one() -> None:
    with pytest.raises(VocabularyError, match="exemplar class 'my toy' cannot have synonyms"):
        runtime.changed_vocabulary(
            WITH_TAUGHT, [VocabularyEntry('my toy', synonyms=('teddy',))], REPLACE
        )
    removed = runtime.changed_vocabulary(WITH_TAUGHT, entries('my toy'), REMOVE)
    assert removed.names == ('table', 'red cup')
    with pytest.raises(VocabularyError, match='already in the vocabulary'):
        runtime.changed_vocabulary(WITH_TAUGHT, entries('My Toy'), ADD)


def test_summary_names_the_first_eight_classes() -> None:
    assert runtime.vocabulary_summary(CURRENT) == '2 classes: red hollow, table'
    many = Vocabulary.from_names([f'c{i}' for i in range(10)])
    assert runtime.vocabulary_summary(many) == '10 classes: c0, c1, c2, c3, c4, c5, c6, c7, ...'


def test_parameters_name_the_vocabulary_by_names_or_by_file(tmp_path) -> None:
    assert runtime.parameter_vocabulary(('mug', 'table'), None).names == ('mug', 'table')
    path = tmp_path / 'fruit.yaml'
    path.write_text('- apple\n- {name: banana, synonyms: [plantain]}\n')
    from_file = runtime.parameter_vocabulary(('mug',), str(path))
    assert from_file.names == ('apple', 'banana')
    assert from_file.entries[1].synonyms == ('plantain',)
    with pytest.raises(VocabularyError, match='cannot read vocabulary file'):
        runtime.parameter_vocabulary(('mug',), str(tmp_path / 'missing.yaml'))
    # Configure refuses an empty list as a live change or the service would.
    with pytest.raises(VocabularyError, match='no class in the vocabulary'):
        runtime.parameter_vocabulary((), None)


def test_stamp_text_has_nine_digits_of_nanoseconds() -> None:
    assert runtime.stamp_text(Time(sec=3, nanosec=5)) == '3.000000005'


def depth(sec: int, nanosec: int = 0) -> Image:
    image = Image(encoding='32FC1')
    image.header.stamp.sec, image.header.stamp.nanosec = sec, nanosec
    return image


def test_the_nearest_depth_image_within_the_slop_is_paired() -> None:
    depths = [depth(10), depth(10, 300_000_000), depth(11)]
    paired = runtime.nearest_depth(depths, Time(sec=10, nanosec=250_000_000), 0.1)
    assert paired.depth is depths[1] and paired.problem is None
    # At exactly the slop still paired; the first of two equally near ones wins.
    assert runtime.nearest_depth(depths, Time(sec=10, nanosec=100_000_000), 0.1).depth is depths[0]
    assert runtime.nearest_depth(depths, Time(sec=10, nanosec=150_000_000), 0.2).depth is depths[0]


def test_no_depth_image_outside_the_slop_says_how_far_the_closest_is() -> None:
    paired = runtime.nearest_depth([depth(10), depth(11)], Time(sec=12, nanosec=500_000_000), 0.5)
    assert paired == runtime.DepthPairing(
        None,
        'no depth image within 0.5 s of the camera image (closest 1.500 s): no 3D for this frame',
    )


def test_no_depth_image_at_all_pairs_nothing_silently() -> None:
    assert runtime.nearest_depth([], Time(sec=1), 0.5) == runtime.DepthPairing(None, None)


def test_stamps_that_are_no_ros_time_are_never_paired() -> None:
    bad = [depth(-1, 0), depth(10, 1_000_000_000)]
    # Numerically the nearest, yet passed over.
    assert runtime.nearest_depth([*bad, depth(12)], Time(sec=10), 5.0).depth.header.stamp.sec == 12
    assert runtime.nearest_depth(bad, Time(sec=10), 5.0) == runtime.DepthPairing(None, None)
    paired = runtime.nearest_depth([depth(10)], Time(sec=-3), 5.0)
    assert paired.depth is None
    assert paired.problem == (
        'camera image stamp -3 s 0 ns is not a ROS time (sec must be >= 0, nanosec < 1e9): '
        'no 3D for this frame'
    )


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_gate_admits_one_frame_per_period() -> None:
    clock = FakeClock()
    gate = runtime.RateGate(clock)
    admitted = []
    for _ in range(10):  # 10 frames 0.1 s apart at 4 Hz: one every 0.25 s, from the first
        admitted.append(gate.admit(4.0))
        clock.now += 0.1
    assert admitted == [True, False, False, True, False, False, True, False, False, True]
    assert all(gate.admit(0.0) for _ in range(5)), '0 admits every frame'


def test_the_slot_keeps_the_newest_and_counts_replacements() -> None:
    slot = runtime.LatestSlot()
    assert slot.put('a') is False
    assert slot.put('b') is True, 'a was never taken: dropped'
    assert slot.take(timeout=1.0) == 'b'
    started = time.monotonic()
    assert slot.take(timeout=0.1) is None
    assert time.monotonic() - started >= 0.1
    slot.put('c')
    slot.clear()
    assert slot.take(timeout=0.0) is None
    assert slot.put('d') is False, 'nothing waited after the clear'


def test_a_take_is_woken_by_a_put_from_another_thread() -> None:
    slot = runtime.LatestSlot()
    taken = []
    taker = threading.Thread(target=lambda: taken.append(slot.take(timeout=10.0)))
    started = time.monotonic()
    taker.start()
    time.sleep(0.1)
    slot.put('frame')
    taker.join(timeout=5)
    assert taken == ['frame'] and time.monotonic() - started < 5


class FakeLogger:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def error(self, message: str) -> None:
        self.lines.append(('error', message))

    def warning(self, message: str) -> None:
        self.lines.append(('warning', message))


def test_the_log_says_each_kind_once_per_period_and_counts_the_rest() -> None:
    logger, clock = FakeLogger(), FakeClock()
    log = runtime.RateLimitedLog(logger, period_s=5.0, clock=clock)
    log('error', ('image', 'step'), 'bad step 1')
    log('error', ('image', 'step'), 'bad step 2')
    log('warning', ('depth', 'sync'), 'no depth 1')  # another kind: its own period
    clock.now += 4.9
    log('error', ('image', 'step'), 'bad step 3')
    assert logger.lines == [('error', 'bad step 1'), ('warning', 'no depth 1')]
    clock.now += 0.1
    log('error', ('image', 'step'), 'bad step 4')
    log('warning', ('depth', 'sync'), 'no depth 2')
    assert logger.lines[2:] == [
        ('error', 'bad step 4 (2 more like this in the last 5 s)'),
        ('warning', 'no depth 2'),
    ]


def test_stats_count_every_event_and_report_windows_that_restart() -> None:
    clock = FakeClock()
    stats = runtime.Stats(clock)
    assert stats.last_image is None
    for _ in range(4):
        stats.image_received()
    stats.image_skipped()
    stats.input_rejected()
    stats.frame_dropped()
    stats.inference_failed()
    stats.frame_processed(predict_s=0.2, overhead_s=0.01, latency_s=0.3)
    stats.frame_processed(predict_s=0.4, overhead_s=0.03, latency_s=None)  # unstamped
    assert stats.last_image == clock.now
    assert stats.totals() == {
        'received': 4,
        'processed': 2,
        'dropped (queue)': 1,
        'rejected (malformed)': 1,
        'skipped (max_rate_hz)': 1,
        'inference errors': 1,
    }
    clock.now += 2.0
    assert stats.take_window() == pytest.approx({
        'input rate (Hz)': 2.0,
        'output rate (Hz)': 1.0,
        'latency mean (s)': 0.3,
        'latency max (s)': 0.3,
        'predictor time (s)': 0.3,
        'node overhead (s)': 0.02,
    })  # fmt: skip
    clock.now += 1.0
    stats.image_received()
    window = stats.take_window()
    assert window['input rate (Hz)'] == 1.0 and window['output rate (Hz)'] == 0.0
    assert window['latency max (s)'] == window['predictor time (s)'] == 0.0
    assert stats.totals()['received'] == 5, 'totals never restart'


def test_stats_lose_no_count_across_threads() -> None:
    stats = runtime.Stats()

    def count() -> None:
        for _ in range(2000):
            stats.image_received()
            stats.image_skipped()

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals = stats.totals()
    assert totals['received'] == totals['skipped (max_rate_hz)'] == 8000
    assert stats.take_window()['input rate (Hz)'] > 0


def test_depth_input_pairs_a_frame_with_metres_and_intrinsics() -> None:
    depths = runtime.DepthInput()
    millimetres = np.full((4, 6), 1500, np.uint16)
    depths.add(array_to_image_msg(millimetres, '16UC1', Header(stamp=Time(sec=10))))
    stamp = Time(sec=10, nanosec=20_000_000)
    assert depths.for_frame(stamp, 0.05, 0.001, 10**6) == (None, None, None)  # no camera_info
    depths.camera_info = CameraInfo(
        height=4, width=6, k=[5.0, 0.0, 3.0, 0.0, 5.0, 2.0, 0.0, 0.0, 1.0]
    )
    depth_m, intrinsics, problem = depths.for_frame(stamp, 0.05, 0.001, 10**6)
    assert problem is None and np.allclose(depth_m, 1.5) and intrinsics.fx == 5.0
    far = depths.for_frame(Time(sec=11), 0.05, 0.001, 10**6)
    assert far[:2] == (None, None) and 'no depth image within 0.05 s' in far[2]
    with pytest.raises(ImageConversionError):
        depths.for_frame(stamp, 0.05, 0.001, 10)  # more pixels than allowed
    depths.camera_info = CameraInfo(height=4, width=6)  # K all zeros
    with pytest.raises(GeometryError):
        depths.for_frame(stamp, 0.05, 0.001, 10**6)
    depths.clear()
    assert depths.for_frame(stamp, 0.05, 0.001, 10**6)[:2] == (None, None)
