"""masqclip_node's tracking policy, apart from its wiring: one ``Tracker`` over the segmented
frames, started anew (its ids going on) when a stamp goes back (a bag looping) or the
vocabulary changes; each frame's tracks as a find by track id reads them; the overlay's colour
and label per track. No rclpy node; unit-tested in test/ros/test_tracks.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from builtin_interfaces.msg import Time

from masqclip.inference.results import Instance, SegmentationResult
from masqclip.inference.tracking import Tracker, TrackerCfg, track_result
from masqclip.visualization import Rgb, label_color
from masqclip_ros.runtime import stamp_seconds, stamp_text

UNTRACKED_FRAME = 'this frame was not tracked (tracking.enabled is false)'
"""Why a request for a track id has no answer on a frame remembered without tracks."""


def track_color(track_id: int) -> Rgb:
    """A track's colour in the overlay and the markers: stable while its class label
    flickers (a weak model's does from frame to frame)."""
    return label_color(f'track {track_id}')


@dataclass(frozen=True)
class FrameTracks:
    """The tracks of one segmented frame, as a find by track id reads them.

    :param stamp_s: the frame's stamp, in seconds.
    :param in_view: track id -> its instance on the frame (its proposal's best thing class).
    :param lost: track id -> when it was last seen (s), for the tracks lost at this frame.
    """

    stamp_s: float
    in_view: Mapping[int, Instance]
    lost: Mapping[int, float]

    def with_track(self, instance: Instance) -> Instance:
        """``instance`` (a find match: one of this frame's proposals) with the track of its
        proposal, if it has one."""
        for tracked in self.in_view.values():
            if tracked.query_index == instance.query_index:
                return replace(
                    instance, track_id=tracked.track_id, first_seen_s=tracked.first_seen_s
                )
        return instance

    def absence(self, track_id: int) -> str:
        """Why ``track_id`` is not in view on this frame: lost, or unknown."""
        if track_id in self.lost:
            ago = self.stamp_s - self.lost[track_id]
            return (
                f'track {track_id} is lost on this frame: out of view since {ago:.2f} s '
                'before it, kept for re-identification'
            )
        return (
            f'track {track_id} is unknown on this frame: never seen, forgotten after '
            'tracking.lost_track_s, or from before a tracker reset (in view: '
            f'{_ids(self.in_view)}; lost: {_ids(self.lost)})'
        )


def _ids(tracks: Mapping[int, object]) -> str:
    return ', '.join(str(track_id) for track_id in sorted(tracks)) or 'none'


@dataclass(frozen=True)
class TrackedFrame:
    """A segmented frame after tracking.

    :param result: the frame's result with its track ids.
    :param tracks: what a find by track id reads of it.
    :param reset: why the tracker was started anew before this frame; None when it was not.
    """

    result: SegmentationResult
    tracks: FrameTracks
    reset: str | None


class FrameTracker:
    """One ``Tracker`` over the node's segmented frames, for the inference thread alone (the
    diagnostics timer reads the counts, plain ints replaced after each frame).

    :param min_score: instances scoring lower are not tracked.
    """

    def __init__(self, cfg: TrackerCfg, min_score: float) -> None:
        self._cfg, self._min_score = cfg, min_score
        self._tracker = Tracker(cfg)
        self._last_stamp: Time | None = None
        self._vocabulary_version: int | None = None
        self.active_count = self.lost_count = 0

    def diagnostic_values(self) -> dict[str, int]:
        """The tracks' entries of the node's /diagnostics."""
        return {'tracks active': self.active_count, 'tracks lost': self.lost_count}

    def track(
        self,
        result: SegmentationResult,
        is_thing: Sequence[bool],
        stamp: Time,
        vocabulary_version: int,
    ) -> TrackedFrame:
        """Track one frame of ``predict`` output.

        :param is_thing: by class id of the vocabulary the frame was segmented with.
        :param stamp: the frame's header stamp (a ROS time).
        :param vocabulary_version: the version of that vocabulary.
        """
        reset = self._reset_reason(stamp, vocabulary_version)
        if reset is not None:
            self._tracker = Tracker(self._cfg, first_id=self._tracker.next_id)
        self._last_stamp, self._vocabulary_version = stamp, vocabulary_version
        stamp_s = stamp_seconds(stamp)
        result = track_result(self._tracker, result, is_thing, stamp_s, self._min_score)
        in_view: dict[int, Instance] = {}
        for instance in result.instances:  # best first: the first copy of a proposal wins
            if instance.track_id and is_thing[instance.class_id]:
                in_view.setdefault(instance.track_id, instance)
        lost = {t.track_id: t.last_seen_s for t in self._tracker.tracks if t.lost}
        self.active_count, self.lost_count = len(in_view), len(lost)
        return TrackedFrame(result, FrameTracks(stamp_s, in_view, lost), reset)

    def _reset_reason(self, stamp: Time, vocabulary_version: int) -> str | None:
        if self._last_stamp is None:
            return None
        next_id = self._tracker.next_id
        # Compared as the tracker compares them, so that it never refuses a frame.
        if stamp_seconds(stamp) < stamp_seconds(self._last_stamp):
            return (
                f'tracking starts anew: frame {stamp_text(stamp)} is stamped before the '
                f'previous one ({stamp_text(self._last_stamp)}; a bag looping?); new tracks '
                f'get ids from {next_id} on'
            )
        if vocabulary_version != self._vocabulary_version:
            return (
                f'tracking starts anew: the vocabulary changed (version '
                f'{self._vocabulary_version} -> {vocabulary_version}), and with it the class '
                f'ids lost tracks are matched by; new tracks get ids from {next_id} on'
            )
        return None


@dataclass(frozen=True)
class OverlayLabels:
    """``draw_overlay``'s ``show``, ``colors`` and ``texts`` for a tracked result."""

    show: str
    colors: dict[int, Rgb]
    texts: dict[int, str]


def track_overlay(result: SegmentationResult) -> OverlayLabels:
    """The panoptic map where there is one, else the instances (what ``show='auto'`` picks
    before the semantic map), each tracked thing in its track's colour and labelled
    '#id name score'."""
    if result.panoptic is not None:
        show, items = 'panoptic', {segment.id: segment for segment in result.segments}
    elif result.instances:
        show, items = 'instances', dict(enumerate(result.instances))
    else:
        return OverlayLabels('auto', {}, {})
    tracked = {key: item for key, item in items.items() if item.track_id}
    return OverlayLabels(
        show,
        {key: track_color(item.track_id) for key, item in tracked.items()},
        {key: f'#{item.track_id} {item.label} {item.score:.2f}' for key, item in tracked.items()},
    )
