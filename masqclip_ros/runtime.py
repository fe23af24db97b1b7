"""masqclip_node's policy and thread-safe state, apart from its wiring: which requests and
input stamps it accepts, what a vocabulary request makes of the vocabulary, which depth image
goes with a camera frame, the frame rate it admits, the newest frame waiting for inference, its
rate-limited log and its statistics. No rclpy node (message types only); unit-tested in
test/ros/test_runtime.py. The frames kept for the find service are in ``history``.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, NamedTuple, TypeVar

import numpy as np
from builtin_interfaces.msg import Time
from masqclip_ros.srv import FindObjects, SetVocabulary
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from masqclip.inference.vocabulary import (
    Vocabulary,
    VocabularyEntry,
    VocabularyError,
    validate_query,
)
from masqclip_ros.conversions import depth_msg_to_metres
from masqclip_ros.geometry import Intrinsics, intrinsics_from_k

MAX_FIND_WAIT_S = 60.0
"""Longest ``timeout_s`` a NEXT find may ask for."""
LOG_PERIOD_S = 5.0
"""Each kind of fault is logged at most once per this many seconds."""

NANOSECONDS_PER_SECOND = 1_000_000_000


def stamp_problem(stamp: Time) -> str | None:
    """Why a header stamp is no ROS time, or None when it is one.

    rclpy's ``Time`` refuses negative seconds, and ``nanosec`` counts within one second; an
    input stamped otherwise must be refused on arrival, or it fails every frame it is later
    matched against (a depth image is kept for several frames).
    """
    if stamp.sec < 0 or stamp.nanosec >= NANOSECONDS_PER_SECOND:
        return (
            f'stamp {stamp.sec} s {stamp.nanosec} ns is not a ROS time '
            '(sec must be >= 0, nanosec < 1e9)'
        )
    return None


def stamp_text(stamp: Time) -> str:
    """A stamp as logs and answers name it: 'sec.nanosec' with nine digits after the point."""
    return f'{stamp.sec}.{stamp.nanosec:09d}'


def stamp_seconds(stamp: Time) -> float:
    """A stamp in seconds (as the tracker takes frame times)."""
    return stamp.sec + stamp.nanosec / NANOSECONDS_PER_SECOND


def find_request_problem(request: FindObjects.Request) -> str | None:
    """Why a find request cannot be served, or None.

    Every number is checked against its range, NaN and infinity included (a NaN timeout once
    made the wait spin forever), and every text must be a usable query, unless the request
    asks for a track (its texts are then ignored).
    """
    frames = (FindObjects.Request.LATEST, FindObjects.Request.NEXT, FindObjects.Request.STAMP)
    if request.frame not in frames:
        return f'frame {request.frame} is not LATEST (0), NEXT (1) or STAMP (2)'
    if not _within(request.min_score, 0.0, 1.0):
        return f'min_score {request.min_score} must be in [0, 1]'
    if not _within(request.timeout_s, 0.0, MAX_FIND_WAIT_S):
        return f'timeout_s {request.timeout_s} must be in [0, {MAX_FIND_WAIT_S:g}] seconds'
    if request.max_results < 1:
        return 'max_results must be at least 1'
    if request.frame == FindObjects.Request.STAMP and stamp_problem(request.stamp):
        return f'the requested {stamp_problem(request.stamp)}'
    if request.track_id:  # the query is ignored
        return None
    try:
        validate_query(request.query)
        for number, text in enumerate(request.negative_queries, 1):
            validate_query(text, f'negative query {number}')
    except VocabularyError as error:
        return str(error)
    return None


def _within(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


def parameter_vocabulary(names: Sequence[str], path: str | None) -> Vocabulary:
    """The vocabulary the parameters name: the YAML file's when ``path`` is set, else ``names``.

    :raises VocabularyError: for an unreadable file, an invalid class or none at all.
    """
    vocabulary = Vocabulary.from_yaml(path) if path is not None else Vocabulary.from_names(names)
    return vocabulary.require_classes()


def changed_vocabulary(
    current: Vocabulary, entries: Sequence[VocabularyEntry], mode: int
) -> Vocabulary:
    """The vocabulary a change asks for: a SetVocabulary request, or a REPLACE by the
    vocabulary topic or the vocabulary parameters.

    REPLACE takes the entries as they are, but drops no exemplar class (taught by showing
    it): one the entries do not name is kept after them, an entry naming one keeps its
    exemplar (see ``replaced_keeping_exemplars``); ADD appends new names only; REMOVE drops the
    names given. Names are compared as the vocabulary compares them (case and surplus
    whitespace ignored), in every mode.

    :raises VocabularyError: for an unknown mode, a request naming nothing (ADD or REMOVE), a
        name ADD finds present or REMOVE finds absent, an invalid entry, or an empty result.
    """
    if mode == SetVocabulary.Request.REPLACE:
        vocabulary = replaced_keeping_exemplars(current, entries)
    elif mode == SetVocabulary.Request.ADD:
        vocabulary = current.add(entries)
    elif mode == SetVocabulary.Request.REMOVE:
        vocabulary = current.remove([entry.name for entry in entries])
    else:
        raise VocabularyError(f'mode {mode} is not REPLACE (0), ADD (1) or REMOVE (2)')
    # Cleans and validates every entry (empty or overlong names, duplicates once cleaned).
    return Vocabulary.from_records(vocabulary.to_records()).require_classes()


def replaced_keeping_exemplars(
    current: Vocabulary, entries: Sequence[VocabularyEntry]
) -> Vocabulary:
    """``entries`` as the new vocabulary, with the exemplar classes of ``current`` kept: an
    entry naming one (as the vocabulary compares names) gets its exemplar, position and
    ``is_thing`` being the entry's; the ones no entry names follow the entries, in their order.

    :raises VocabularyError: for an invalid entry, or one naming an exemplar class with
        synonyms.
    """
    requested = Vocabulary.from_records(Vocabulary(tuple(entries)).to_records())  # cleaned
    taught = {e.name.lower(): e for e in current.entries if e.exemplar is not None}
    named = [
        replace(entry, exemplar=taught.pop(entry.name.lower()).exemplar)
        if entry.name.lower() in taught
        else entry
        for entry in requested.entries
    ]
    # Validated again: an exemplar class cannot have the synonyms its entry brought.
    return Vocabulary.from_records(Vocabulary((*named, *taught.values())).to_records())


def vocabulary_summary(vocabulary: Vocabulary) -> str:
    """'N classes: a, b, ...' (the first eight names)."""
    names = ', '.join(vocabulary.names[:8]) + (', ...' if len(vocabulary) > 8 else '')
    return f'{len(vocabulary)} classes: {names}'


class DepthPairing(NamedTuple):
    """The depth image that goes with a camera frame, or None with why (no reason when there
    is no depth image at all)."""

    depth: Image | None
    problem: str | None = None


def nearest_depth(depths: Iterable[Image], stamp: Time, slop_s: float) -> DepthPairing:
    """The depth image stamped closest to ``stamp``, if at most ``slop_s`` seconds away.

    Stamps that are no ROS time cannot be compared: such depth images are passed over, and a
    frame stamped so pairs with none (the node refuses both on arrival; this stays total).
    """
    if stamp_problem(stamp):
        return DepthPairing(None, f'camera image {stamp_problem(stamp)}: no 3D for this frame')
    usable = [depth for depth in depths if stamp_problem(depth.header.stamp) is None]
    if not usable:
        return DepthPairing(None)
    wanted = _nanoseconds(stamp)
    best = min(usable, key=lambda depth: abs(_nanoseconds(depth.header.stamp) - wanted))
    offset_s = abs(_nanoseconds(best.header.stamp) - wanted) / NANOSECONDS_PER_SECOND
    if offset_s > slop_s:
        return DepthPairing(
            None,
            f'no depth image within {slop_s} s of the camera image (closest {offset_s:.3f} s): '
            'no 3D for this frame',
        )
    return DepthPairing(best)


class DepthInput:
    """The registered depth images and the camera_info a camera frame is paired with: kept by
    the input callbacks as they arrive, read by the inference thread.

    :param keep: how many depth images to keep (a frame pairs with the nearest in time).
    """

    def __init__(self, keep: int = 8) -> None:
        self._depths: collections.deque[Image] = collections.deque(maxlen=keep)
        self.camera_info: CameraInfo | None = None

    def add(self, depth: Image) -> None:
        self._depths.append(depth)

    def clear(self) -> None:
        self._depths.clear()

    def for_frame(
        self, stamp: Time, slop_s: float, scale: float, max_pixels: int
    ) -> tuple[np.ndarray | None, Intrinsics | None, str | None]:
        """The depth (metres) and intrinsics for a frame stamped ``stamp``, or Nones (no
        camera_info yet, or no depth image within ``slop_s``), and why, when there is a reason
        to say.

        :raises ImageConversionError: for a malformed depth image.
        :raises GeometryError: for a camera_info that gives no intrinsics.
        """
        info = self.camera_info
        if info is None:
            return None, None, None
        depth, problem = nearest_depth(list(self._depths), stamp, slop_s)  # a copy: appended to
        if depth is None:
            return None, None, problem
        depth_m = depth_msg_to_metres(depth, scale, max_pixels)
        return depth_m, intrinsics_from_k(info.k, info.height, info.width), problem


def _nanoseconds(stamp: Time) -> int:
    return stamp.sec * NANOSECONDS_PER_SECOND + stamp.nanosec


class RateGate:
    """Admits at most ``max_rate_hz`` frames a second: a frame that comes sooner than one
    period after the last admitted one is skipped. For one thread (the image callback)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_admitted = -math.inf

    def admit(self, max_rate_hz: float) -> bool:
        """Whether a frame arriving now is processed; every frame is when ``max_rate_hz``
        is 0."""
        now = self._clock()
        if max_rate_hz > 0 and now - self._last_admitted < 1.0 / max_rate_hz:
            return False
        self._last_admitted = now
        return True


@dataclass
class Frame:
    """A converted camera image waiting for inference."""

    header: Header
    pixels: np.ndarray
    color: str
    convert_s: float


Item = TypeVar('Item')


class LatestSlot(Generic[Item]):
    """A depth-1 queue that keeps the newest item: a put replaces an item not yet taken."""

    def __init__(self) -> None:
        self._item: Item | None = None
        self._ready = threading.Condition()

    def put(self, item: Item) -> bool:
        """Store ``item``; return True when it replaced (dropped) an untaken one."""
        with self._ready:
            dropped = self._item is not None
            self._item = item
            self._ready.notify()
        return dropped

    def take(self, timeout: float) -> Item | None:
        """Wait up to ``timeout`` seconds for an item and remove it."""
        with self._ready:
            if self._item is None:
                self._ready.wait(timeout)
            item, self._item = self._item, None
        return item

    def clear(self) -> None:
        """Forget a waiting item."""
        with self._ready:
            self._item = None


class RateLimitedLog:
    """Logs each kind of fault at most once per period, saying how many were suppressed."""

    def __init__(
        self,
        log: object,
        period_s: float = LOG_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._period = period_s
        self._clock = clock
        self._last: dict[tuple[str, ...], float] = {}
        self._suppressed: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, level: str, key: tuple[str, ...], message: str) -> None:
        """Log ``message`` at ``level`` ('error' or 'warning') unless ``key`` was logged
        within the period."""
        now = self._clock()
        with self._lock:
            if now - self._last.get(key, -math.inf) < self._period:
                self._suppressed[key] += 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f' ({suppressed} more like this in the last {self._period:g} s)'
        # rclpy's logger refuses two severities from one call site: one call per level.
        if level == 'error':
            self._log.error(message)
        else:
            self._log.warning(message)


class Stats:
    """The node's counters and timings for /diagnostics, updated from any thread: totals since
    the start, and a window (rates, mean and max times) that restarts at each report."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._totals = collections.Counter()
        self._last_image: float | None = None
        self._start_window(clock())

    def _start_window(self, now: float) -> None:
        self._window_start = now
        self._window_received = self._window_processed = 0
        self._latencies: list[float] = []
        self._predict_times: list[float] = []
        self._overheads: list[float] = []

    def _count(self, total: str) -> None:
        with self._lock:
            self._totals[total] += 1

    def image_received(self) -> None:
        """An image arrived (before any check)."""
        with self._lock:
            self._totals['received'] += 1
            self._window_received += 1
            self._last_image = self._clock()

    def image_skipped(self) -> None:
        """An image came sooner than ``input.max_rate_hz`` allows."""
        self._count('skipped (max_rate_hz)')

    def input_rejected(self) -> None:
        """An input (image, depth, camera_info) was malformed."""
        self._count('rejected (malformed)')

    def frame_dropped(self) -> None:
        """A newer frame replaced one still waiting for inference."""
        self._count('dropped (queue)')

    def inference_failed(self) -> None:
        """Segmenting a frame raised."""
        self._count('inference errors')

    def frame_processed(
        self, predict_s: float, overhead_s: float, latency_s: float | None
    ) -> None:
        """A frame was segmented and published: the predictor's time, the node's own (no
        queue wait) and the time from its stamp to now (None for an unstamped frame)."""
        with self._lock:
            self._totals['processed'] += 1
            self._window_processed += 1
            self._predict_times.append(predict_s)
            self._overheads.append(overhead_s)
            if latency_s is not None:
                self._latencies.append(latency_s)

    @property
    def last_image(self) -> float | None:
        """When (on the clock) the last image arrived; None before the first."""
        with self._lock:
            return self._last_image

    def totals(self) -> dict[str, int]:
        """Every count since the start, named as /diagnostics shows it."""
        names = ('received', 'processed', 'dropped (queue)', 'rejected (malformed)',
                 'skipped (max_rate_hz)', 'inference errors')  # fmt: skip
        with self._lock:
            return {name: self._totals[name] for name in names}

    def take_window(self) -> dict[str, float]:
        """Rates and mean/max times since the last call, and restart the window."""
        with self._lock:
            now = self._clock()
            span = max(now - self._window_start, 1e-6)
            out = {
                'input rate (Hz)': self._window_received / span,
                'output rate (Hz)': self._window_processed / span,
                'latency mean (s)': _mean(self._latencies),
                'latency max (s)': max(self._latencies, default=0.0),
                'predictor time (s)': _mean(self._predict_times),
                'node overhead (s)': _mean(self._overheads),
            }
            self._start_window(now)
        return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0
