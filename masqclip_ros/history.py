"""The frames masqclip_node remembers for the find and teach services, and which one a request
gets: the LATEST, the NEXT processed after a find (waiting up to its timeout) or the one of a
STAMP.
No rclpy node; unit-tested in test/ros/test_history.py.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
from builtin_interfaces.msg import Time
from masqclip_ros.srv import FindObjects
from std_msgs.msg import Header

from masqclip.inference.results import SegmentationResult
from masqclip_ros.geometry import Intrinsics
from masqclip_ros.runtime import stamp_text
from masqclip_ros.tracks import FrameTracks


@dataclass(frozen=True)
class FrameRecord:
    """What the find and teach services need of a processed frame (no full-size instance
    masks)."""

    index: int
    """Counts the frames remembered, from 1: a NEXT find waits for a higher one."""
    header: Header
    result: SegmentationResult
    vocabulary_version: int
    depth_m: np.ndarray | None
    intrinsics: Intrinsics | None
    tracks: FrameTracks | None = None
    """The frame's tracks as they were then; None when tracking is off."""


@dataclass(frozen=True)
class NoFrame:
    """Why a find gets no frame: the answer's status (NO_FRAME or TIMEOUT) and message."""

    status: int
    message: str


class FrameHistory:
    """The last ``capacity`` processed frames, shared by the inference thread, which
    remembers them, and the find callbacks, which look them up (a NEXT find waits).

    NEXT waits only between ``start`` and ``stop``, while the node segments: otherwise no new
    frame will come.
    """

    def __init__(self, capacity: int = 1) -> None:
        self._frames: collections.deque[FrameRecord] = collections.deque(maxlen=capacity)
        self._changed = threading.Condition()
        self._remembered = 0
        self._segmenting = False

    def clear(self, capacity: int | None = None) -> None:
        """Forget every frame; from now on keep ``capacity`` (default: as many as before)."""
        with self._changed:
            self._frames = collections.deque(maxlen=capacity or self._frames.maxlen)

    def start(self) -> None:
        """New frames will come: NEXT finds wait for them."""
        with self._changed:
            self._segmenting = True

    def stop(self) -> None:
        """No new frame will come: NEXT finds waiting now, and later ones, answer at once."""
        with self._changed:
            self._segmenting = False
            self._changed.notify_all()

    def remember(
        self,
        header: Header,
        result: SegmentationResult,
        vocabulary_version: int,
        depth_m: np.ndarray | None,
        intrinsics: Intrinsics | None,
        tracks: FrameTracks | None = None,
    ) -> FrameRecord:
        """Keep a processed frame (dropping the oldest beyond the capacity) and wake the NEXT
        finds waiting for it."""
        # find needs only the proposals (and the tracks, whose instances hold crops): dropping
        # the full-size masks keeps the ring small.
        slim = replace(result, instances=[], semantic=None, panoptic=None, segments=[])
        with self._changed:
            self._remembered += 1
            record = FrameRecord(
                self._remembered, header, slim, vocabulary_version, depth_m, intrinsics, tracks
            )
            self._frames.append(record)
            self._changed.notify_all()
        return record

    def find(self, request: FindObjects.Request, image_topic: str) -> FrameRecord | NoFrame:
        """The frame a (valid) find request asks for, or why there is none.

        :param image_topic: where the frames come from (a timed out NEXT find names it).
        """
        if request.frame == FindObjects.Request.NEXT:
            with self._changed:
                return self._next(request.timeout_s, image_topic)
        return self.kept(request.stamp if request.frame == FindObjects.Request.STAMP else None)

    def kept(self, stamp: Time | None = None) -> FrameRecord | NoFrame:
        """The latest frame kept, or the one of header stamp ``stamp``; or why there is none
        (the kept stamps named). LATEST and STAMP of a find, and the frame a teach shows."""
        with self._changed:
            if stamp is not None:
                return self._at_stamp(stamp)
            if not self._frames:
                return NoFrame(FindObjects.Response.NO_FRAME, 'no frame has been processed yet')
            return self._frames[-1]

    def _at_stamp(self, stamp: Time) -> FrameRecord | NoFrame:
        for record in self._frames:
            if record.header.stamp == stamp:
                return record
        kept = ', '.join(stamp_text(record.header.stamp) for record in self._frames)
        return NoFrame(
            FindObjects.Response.NO_FRAME,
            f'no recent frame has stamp {stamp_text(stamp)}; kept: {kept or "none"}',
        )

    def _next(self, timeout_s: float, image_topic: str) -> FrameRecord | NoFrame:
        """Wait (``_changed`` held) for the first frame remembered after this call."""
        wanted = self._remembered + 1
        deadline = time.monotonic() + timeout_s
        while self._remembered < wanted:
            left = deadline - time.monotonic()
            if not self._segmenting:
                return NoFrame(
                    FindObjects.Response.NO_FRAME,
                    'the node is not active: no new frame will come (activate it, or ask for '
                    'LATEST)',
                )
            if left <= 0:
                return NoFrame(
                    FindObjects.Response.TIMEOUT,
                    f'no frame was processed within {timeout_s:g} s; is anything publishing on '
                    f'{image_topic}?',
                )
            self._changed.wait(left)
        # The oldest kept frame from the one wanted on: a waiter woken late may find it evicted.
        record = next((r for r in self._frames if r.index >= wanted), None)
        if record is None:
            return NoFrame(
                FindObjects.Response.NO_FRAME,
                'the node was cleaned up while waiting for the next frame',
            )
        return record
