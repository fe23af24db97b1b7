"""The frames kept for the find service (masqclip_ros.history) without a node: LATEST, NEXT
(its wait, its timeout, its wakeup from the inference thread), STAMP, capacity, messages."""

import threading
import time

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
from masqclip_ros.history import FrameHistory, FrameRecord, NoFrame  # noqa: E402

LATEST, NEXT, STAMP = (
    FindObjects.Request.LATEST,
    FindObjects.Request.NEXT,
    FindObjects.Request.STAMP,
)
NO_FRAME, TIMEOUT = FindObjects.Response.NO_FRAME, FindObjects.Response.TIMEOUT
TOPIC = '/camera/image'
NOT_ACTIVE = NoFrame(
    NO_FRAME,
    'the node is not active: no new frame will come (activate it, or ask for LATEST)',
)


def header(sec: int) -> Header:
    stamped = Header(frame_id='camera_optical')
    stamped.stamp.sec, stamped.stamp.nanosec = sec, 5
    return stamped


def remember(history: FrameHistory, sec: int) -> FrameRecord:
    return history.remember(header(sec), SegmentationResult((4, 4), ('mug',)), 1, None, None)


def find(history: FrameHistory, frame: int = LATEST, **fields) -> FrameRecord | NoFrame:
    return history.find(FindObjects.Request(query='mug', frame=frame, **fields), TOPIC)


def seconds_of(history: FrameHistory, sec: int) -> int:
    """The stamp seconds of the frame a STAMP find for ``sec`` gets (-1: none)."""
    found = find(history, STAMP, stamp=Time(sec=sec, nanosec=5))
    return -1 if isinstance(found, NoFrame) else found.header.stamp.sec


def test_latest_is_the_last_frame_remembered() -> None:
    history = FrameHistory(capacity=4)
    assert find(history) == NoFrame(NO_FRAME, 'no frame has been processed yet')
    remember(history, 1)
    second = remember(history, 2)
    assert find(history) is second and second.index == 2


def test_a_record_keeps_what_find_needs_and_drops_the_full_size_outputs() -> None:
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    instance = Instance.from_mask('mug', 0, 0.9, 0.9, mask, np.ones(2, np.float32), 0)
    result = SegmentationResult(
        (4, 4), ('mug',), [instance], semantic=np.zeros((4, 4), np.int32), timings={'a': 1.0}
    )
    depth = np.ones((4, 4), np.float32)
    record = FrameHistory().remember(header(7), result, 3, depth, None)
    assert record.result.instances == [] and record.result.semantic is None
    assert record.result.timings == {'a': 1.0} and result.instances[0] is instance  # a copy
    assert (record.header.stamp.sec, record.vocabulary_version) == (7, 3)
    assert record.depth_m is depth


def test_stamp_finds_a_kept_frame_and_names_the_kept_ones_otherwise() -> None:
    history = FrameHistory(capacity=2)
    assert find(history, STAMP, stamp=Time(sec=1)) == NoFrame(
        NO_FRAME, 'no recent frame has stamp 1.000000000; kept: none'
    )
    for sec in (1, 2, 3):
        remember(history, sec)
    assert seconds_of(history, 3) == 3 and seconds_of(history, 2) == 2
    assert find(history, STAMP, stamp=Time(sec=1, nanosec=5)) == NoFrame(
        NO_FRAME, 'no recent frame has stamp 1.000000005; kept: 2.000000005, 3.000000005'
    )


def test_capacity_evicts_the_oldest_and_clear_forgets_or_resizes() -> None:
    history = FrameHistory(capacity=3)
    for sec in range(1, 6):
        remember(history, sec)
    assert [seconds_of(history, sec) for sec in range(1, 6)] == [-1, -1, 3, 4, 5]
    history.clear()
    assert find(history) == NoFrame(NO_FRAME, 'no frame has been processed yet')
    for sec in range(1, 6):
        remember(history, sec)
    assert [seconds_of(history, sec) for sec in range(1, 6)] == [-1, -1, 3, 4, 5]
    history.clear(capacity=1)
    remember(history, 6)
    remember(history, 7)
    assert (seconds_of(history, 6), seconds_of(history, 7)) == (-1, 7)


def test_next_answers_at_once_while_the_node_does_not_segment() -> None:
    history = FrameHistory()
    remember(history, 1)
    started = time.monotonic()
    assert find(history, NEXT, timeout_s=10.0) == NOT_ACTIVE
    history.start()
    history.stop()
    assert find(history, NEXT, timeout_s=10.0) == NOT_ACTIVE
    assert time.monotonic() - started < 1.0


def test_next_times_out_naming_the_image_topic() -> None:
    history = FrameHistory()
    history.start()
    remember(history, 1)  # before the request: not the next frame
    started = time.monotonic()
    assert find(history, NEXT, timeout_s=0.2) == NoFrame(
        TIMEOUT, f'no frame was processed within 0.2 s; is anything publishing on {TOPIC}?'
    )
    assert time.monotonic() - started >= 0.2


class Waiter:
    """A NEXT find (10 s timeout) on a thread of its own, as the find lane runs it."""

    def __init__(self, history: FrameHistory) -> None:
        self.answer: FrameRecord | NoFrame | None = None
        asking = threading.Event()

        def ask() -> None:
            asking.set()
            self.answer = find(history, NEXT, timeout_s=10.0)

        self.thread = threading.Thread(target=ask)
        self.thread.start()
        asking.wait()
        time.sleep(0.2)  # into its wait

    def result(self) -> FrameRecord | NoFrame:
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), 'the NEXT find is still waiting'
        return self.answer


def test_next_is_woken_by_the_first_frame_remembered_after_it() -> None:
    history = FrameHistory(capacity=4)
    history.start()
    remember(history, 1)
    waiter = Waiter(history)
    started = time.monotonic()
    remember(history, 2)
    remember(history, 3)
    answer = waiter.result()
    assert isinstance(answer, FrameRecord) and answer.header.stamp.sec == 2
    assert time.monotonic() - started < 5


def test_stop_ends_a_waiting_next() -> None:
    history = FrameHistory()
    history.start()
    waiter = Waiter(history)
    history.stop()
    assert waiter.result() == NOT_ACTIVE


def test_a_next_whose_frame_was_cleared_before_it_woke_says_so() -> None:
    history = FrameHistory()
    history.start()
    waiter = Waiter(history)
    # Under the history's lock, so that the waiter wakes only once the frame is gone.
    with history._changed:
        remember(history, 1)
        history.clear()
    assert waiter.result() == NoFrame(
        NO_FRAME, 'the node was cleaned up while waiting for the next frame'
    )
