"""Multi-object tracking of segmented instances across frames: numpy and scipy only.

Each frame is associated in two stages, each one ``linear_sum_assignment``:

1. detections against the tracks seen in the previous frame: cost
   ``iou_weight * (1 - mask IoU) + embedding_weight * (1 - cosine)``, where the IoU is taken
   against the track's last mask shifted by its box centre's constant velocity and the cosine
   against the mean direction of its embedding gallery;
2. the detections left against the lost tracks (unseen for up to ``lost_track_seconds``): the
   embedding cosine alone, anywhere in the image, optionally within the track's class
   (re-identification).

Masks stay as the crops inside their boxes (what ``Instance`` carries): a pair's IoU is
counted only inside the two boxes' intersection, and only for the pairs whose boxes intersect
and that pass the gates at the largest IoU their boxes and areas allow. Track state lives in
arrays, one row per track, so a frame of 100 instances costs about a millisecond.

``track_result`` tracks a ``predict`` result and returns it with the track ids on its
instances and thing segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment

from masqclip.inference.results import Instance, PanopticSegment, SegmentationResult

# An entry linear_sum_assignment can never prefer to a real one; gated pairs get it.
_FORBIDDEN = 1e6
# Weight of the newest centre step in the velocity estimate: box centres of partial masks
# (frame border, occlusion) jitter, so one step alone would overshoot the next prediction.
_VELOCITY_SMOOTHING = 0.5
# (x0, y0, x1, y1) @ this = the box centre (x, y).
_CENTRE_OF_CORNERS = np.array([[0.5, 0], [0, 0.5], [0.5, 0], [0, 0.5]])


class Detection(Protocol):
    """What the tracker reads of a detection; ``results.Instance`` is one.

    :param box: (4,) x0, y0, x1, y1 in whole pixels, x1/y1 exclusive.
    :param mask_crop: bool (y1 - y0, x1 - x0), the mask inside ``box``.
    :param embedding: float (D,), L2-normalised (the CLIP mask embedding).
    :param class_id: the detection's class.
    """

    box: np.ndarray
    mask_crop: np.ndarray
    embedding: np.ndarray
    class_id: int


@dataclass(frozen=True)
class TrackerCfg:
    """Association settings.

    :param iou_weight: weight of ``1 - mask IoU`` in the cost against a track seen last frame.
    :param embedding_weight: weight of ``1 - cosine`` in that cost.
    :param max_cost: such a pair costing more is never matched.
    :param min_similarity: nor one whose embedding cosine is lower.
    :param reid_min_similarity: a lost track is re-identified only above this cosine.
    :param lost_track_seconds: how long an unseen track is kept for re-identification.
    :param gallery_size: how many of a track's latest embeddings describe it.
    :param reid_same_class: re-identify a lost track only from a detection of its class
        (continuity ignores classes: a weak model's labels flicker from frame to frame).
    """

    iou_weight: float = 0.5
    embedding_weight: float = 0.5
    max_cost: float = 0.6
    min_similarity: float = 0.5
    reid_min_similarity: float = 0.6
    lost_track_seconds: float = 10.0
    gallery_size: int = 16
    reid_same_class: bool = True

    def __post_init__(self) -> None:
        if self.iou_weight < 0 or self.embedding_weight < 0:
            raise ValueError('iou_weight and embedding_weight must be >= 0')
        for name in ('min_similarity', 'reid_min_similarity'):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'{name} must be a cosine in [-1, 1]')
        if self.lost_track_seconds < 0:
            raise ValueError('lost_track_seconds must be >= 0')
        if self.gallery_size < 1:
            raise ValueError('gallery_size must be >= 1')


@dataclass(frozen=True)
class _Masks:
    """Masks as crops in their boxes.

    :param boxes: int (N, 4) x0, y0, x1, y1 (exclusive).
    :param crops: N bool (y1 - y0, x1 - x0) arrays.
    :param areas: pixels of each mask.
    """

    boxes: np.ndarray
    crops: list[np.ndarray]
    areas: list[int]

    @classmethod
    def of(cls, detections: Sequence[Detection]) -> _Masks:
        crops = [d.mask_crop for d in detections]
        return cls(
            np.array([d.box for d in detections], float).reshape(-1, 4).astype(int),
            crops,
            [int(np.count_nonzero(c)) for c in crops],
        )


@dataclass(frozen=True)
class Track:
    """One tracked object, as the latest frame left it.

    :param track_id: 1, 2, ... in order of creation, never reused.
    :param first_seen_s: stamp of its first detection.
    :param last_seen_s: stamp of its latest detection.
    :param class_id: the class it was most often detected as (the earliest of a tie).
    :param box: int (4,) its latest box.
    :param lost: True while it was not detected in the latest frame.
    """

    track_id: int
    first_seen_s: float
    last_seen_s: float
    class_id: int
    box: np.ndarray
    lost: bool


class _TrackTable:
    """Every track's state, one row each, so that a frame updates all tracks in a few numpy
    operations: per-track Python would cost more than the whole association.

    The gallery of a track is a ring of its latest ``gallery_size`` embeddings with their
    running sum, whose direction is the track's mean embedding.
    """

    _ROW_ARRAYS = ('ids', 'first_seen', 'last_seen', 'boxes', 'velocity', 'lost', 'areas',
                   'gallery', 'gallery_sum', 'gallery_count')  # fmt: skip

    def __init__(self, gallery_size: int) -> None:
        self.gallery_size = gallery_size
        self._reset(0)

    def _reset(self, dim: int) -> None:
        self.ids = np.zeros(0, int)
        self.first_seen = np.zeros(0)
        self.last_seen = np.zeros(0)
        self.boxes = np.zeros((0, 4), int)
        self.velocity = np.zeros((0, 2))  # of the box centre, pixels per second
        self.lost = np.zeros(0, bool)
        self.areas = np.zeros(0, int)
        self.crops: list[np.ndarray] = []
        self.class_votes: list[dict[int, int]] = []
        self.gallery = np.zeros((0, self.gallery_size, dim), np.float32)
        self.gallery_sum = np.zeros((0, dim), np.float32)
        self.gallery_count = np.zeros(0, int)

    def __len__(self) -> int:
        return len(self.ids)

    def class_id(self, row: int) -> int:
        votes = self.class_votes[row]
        return max(votes, key=votes.__getitem__)

    def prototypes(self) -> np.ndarray:
        """float32 (T, D), each track's mean embedding, L2-normalised."""
        norms = np.linalg.norm(self.gallery_sum, axis=1, keepdims=True)
        return self.gallery_sum / np.maximum(norms, 1e-12)

    def predicted_masks(self, rows: np.ndarray, stamp_s: float) -> _Masks:
        """The latest masks of ``rows``, moved by their velocity to ``stamp_s``."""
        elapsed = stamp_s - self.last_seen[rows]
        shift = np.rint(self.velocity[rows] * elapsed[:, None]).astype(int)
        return _Masks(
            self.boxes[rows] + np.tile(shift, 2),
            [self.crops[r] for r in rows.tolist()],
            self.areas[rows].tolist(),
        )

    def drop_unseen_since(self, stamp_s: float) -> None:
        keep = self.last_seen >= stamp_s
        if keep.all():
            return
        for name in self._ROW_ARRAYS:
            setattr(self, name, getattr(self, name)[keep])
        rows = np.flatnonzero(keep).tolist()
        self.crops = [self.crops[r] for r in rows]
        self.class_votes = [self.class_votes[r] for r in rows]

    def observe(
        self,
        rows: np.ndarray,
        masks: _Masks,
        detections: np.ndarray,
        embeddings: np.ndarray,
        classes: list[int],
        stamp_s: float,
        reidentified: bool,
    ) -> None:
        """Take ``detections`` (indices into the frame) as the states of ``rows`` at
        ``stamp_s``; the velocity of ``reidentified`` tracks restarts from zero (their path
        across the gap is unknown)."""
        if not len(rows):
            return
        boxes = masks.boxes[detections]
        if reidentified:
            self.velocity[rows] = 0.0
        else:
            dt = stamp_s - self.last_seen[rows]
            centre_step = (boxes - self.boxes[rows]) @ _CENTRE_OF_CORNERS
            moved = dt > 0  # a repeated stamp gives no speed
            self.velocity[rows[moved]] += _VELOCITY_SMOOTHING * (
                centre_step[moved] / dt[moved, None] - self.velocity[rows[moved]]
            )
        self.boxes[rows] = boxes
        self.areas[rows] = [masks.areas[d] for d in detections.tolist()]
        self.last_seen[rows] = stamp_s
        self.lost[rows] = False
        for r, d in zip(rows.tolist(), detections.tolist(), strict=True):
            self.crops[r] = masks.crops[d]
            votes = self.class_votes[r]
            votes[classes[d]] = votes.get(classes[d], 0) + 1
        self._remember(rows, embeddings[detections])

    def _remember(self, rows: np.ndarray, embeddings: np.ndarray) -> None:
        slots = self.gallery_count[rows] % self.gallery_size
        # A slot holds zeros until first written, so subtracting it is right from the start.
        self.gallery_sum[rows] += embeddings - self.gallery[rows, slots]
        self.gallery[rows, slots] = embeddings
        self.gallery_count[rows] += 1
        full_round = rows[slots == self.gallery_size - 1]
        # Once per round, so float32 rounding in the running sum never piles up.
        self.gallery_sum[full_round] = self.gallery[full_round].sum(1)

    def append(
        self,
        first_id: int,
        masks: _Masks,
        detections: np.ndarray,
        embeddings: np.ndarray,
        classes: list[int],
        stamp_s: float,
    ) -> None:
        """New tracks ``first_id``, ``first_id + 1``, ... for ``detections``."""
        if not len(self):
            self._reset(embeddings.shape[1])  # the embedding size is the first frame's
        count = len(detections)
        gallery = np.zeros((count, self.gallery_size, embeddings.shape[1]), np.float32)
        gallery[:, 0] = embeddings[detections]
        new = {
            'ids': np.arange(first_id, first_id + count),
            'first_seen': np.full(count, stamp_s),
            'last_seen': np.full(count, stamp_s),
            'boxes': masks.boxes[detections],
            'velocity': np.zeros((count, 2)),
            'lost': np.zeros(count, bool),
            'areas': np.array([masks.areas[d] for d in detections.tolist()], int),
            'gallery': gallery,
            'gallery_sum': embeddings[detections],
            'gallery_count': np.ones(count, int),
        }
        for name in self._ROW_ARRAYS:
            setattr(self, name, np.concatenate([getattr(self, name), new[name]]))
        self.crops += [masks.crops[d] for d in detections.tolist()]
        self.class_votes += [{classes[d]: 1} for d in detections.tolist()]


class Tracker:
    """Gives each detection of a frame a track id; call ``update`` once per frame, in time
    order.

    :param first_id: the first track's id: a tracker that replaces another (after a time jump)
        can go on from the other's ``next_id``, so that no id ever names two objects.
    """

    def __init__(self, cfg: TrackerCfg | None = None, first_id: int = 1) -> None:
        if first_id < 1:
            raise ValueError('first_id must be >= 1 (0 means untracked)')
        self.cfg = cfg or TrackerCfg()
        self._table = _TrackTable(self.cfg.gallery_size)
        self._next_id = first_id
        self._last_stamp_s = -np.inf

    @property
    def next_id(self) -> int:
        """The id the next new track gets."""
        return self._next_id

    @property
    def tracks(self) -> tuple[Track, ...]:
        """The active and the lost tracks, oldest first."""
        t = self._table
        return tuple(
            Track(
                int(t.ids[r]),
                float(t.first_seen[r]),
                float(t.last_seen[r]),
                t.class_id(r),
                t.boxes[r].copy(),
                bool(t.lost[r]),
            )
            for r in range(len(t))
        )

    @property
    def active_count(self) -> int:
        """Tracks detected in the latest frame."""
        return int(np.count_nonzero(~self._table.lost))

    @property
    def lost_count(self) -> int:
        """Tracks kept for re-identification."""
        return int(np.count_nonzero(self._table.lost))

    def update(self, detections: Sequence[Detection], stamp_s: float) -> list[int]:
        """Associate one frame's detections and return their track ids, in their order.

        :param detections: this frame's objects (``Instance`` objects, for one).
        :param stamp_s: the frame's time in seconds, not before the previous frame's.
        :raises ValueError: for a stamp earlier than the previous one.
        """
        if stamp_s < self._last_stamp_s:
            raise ValueError(
                f'stamp {stamp_s} s is before the previous frame ({self._last_stamp_s} s): '
                'frames must come in time order (start a new Tracker after a time jump)'
            )
        self._last_stamp_s = stamp_s
        table = self._table
        table.drop_unseen_since(stamp_s - self.cfg.lost_track_seconds)
        masks = _Masks.of(detections)
        embeddings = np.array([d.embedding for d in detections], np.float32)
        classes = [int(d.class_id) for d in detections]
        ids = np.zeros(len(detections), int)
        if not len(detections):
            table.lost[:] = True
            return []
        similarity = embeddings @ table.prototypes().T if len(table) else None
        seen_last, lost = np.flatnonzero(~table.lost), np.flatnonzero(table.lost)

        followed, followed_rows = self._match_active(masks, similarity, seen_last, stamp_s)
        free = np.setdiff1d(np.arange(len(detections)), followed)
        found, found_rows = self._match_lost(similarity, classes, free, lost)
        table.lost[seen_last] = True  # those followed are observed again next
        table.observe(followed_rows, masks, followed, embeddings, classes, stamp_s, False)
        table.observe(found_rows, masks, found, embeddings, classes, stamp_s, True)
        ids[followed], ids[found] = table.ids[followed_rows], table.ids[found_rows]
        new = np.flatnonzero(ids == 0)
        if len(new):
            table.append(self._next_id, masks, new, embeddings, classes, stamp_s)
            ids[new] = np.arange(self._next_id, self._next_id + len(new))
            self._next_id += len(new)
        return ids.tolist()

    def _match_active(
        self, masks: _Masks, similarity: np.ndarray | None, rows: np.ndarray, stamp_s: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(detections, track rows) matched by mask IoU against the motion prediction and
        embedding."""
        if not len(rows):
            return np.zeros(0, int), np.zeros(0, int)
        cfg = self.cfg
        similarity = similarity[:, rows]
        predicted = self._table.predicted_masks(rows, stamp_s)
        box_overlap = _box_overlap(masks, predicted)
        # Exact pruning: a pair over max_cost even at the largest IoU its boxes and areas allow
        # never matches, so its pixels are never counted.
        best_cost = cfg.iou_weight * (1 - _iou_bound(masks, predicted, box_overlap))
        embedding_cost = cfg.embedding_weight * (1 - similarity)
        allowed = (similarity >= cfg.min_similarity) & (best_cost + embedding_cost <= cfg.max_cost)
        iou = _mask_iou(masks, predicted, allowed & (box_overlap > 0))
        cost = cfg.iou_weight * (1 - iou) + embedding_cost
        detections, matched = _assign(np.where(allowed & (cost <= cfg.max_cost), cost, _FORBIDDEN))
        return detections, rows[matched]

    def _match_lost(
        self,
        similarity: np.ndarray | None,
        classes: list[int],
        free: np.ndarray,
        rows: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(detections among ``free``, lost track rows) matched by embedding alone
        (re-identification)."""
        if not len(rows) or not len(free):
            return np.zeros(0, int), np.zeros(0, int)
        similarity = similarity[np.ix_(free, rows)]
        allowed = similarity >= self.cfg.reid_min_similarity
        if self.cfg.reid_same_class:
            track_classes = [self._table.class_id(r) for r in rows.tolist()]
            allowed &= np.array(classes)[free][:, None] == np.array(track_classes)[None]
        detections, matched = _assign(np.where(allowed, 1 - similarity, _FORBIDDEN))
        return free[detections], rows[matched]


def trackable_instances(
    instances: Sequence[Instance], is_thing: Sequence[bool], min_score: float
) -> list[Instance]:
    """What to track of a frame's score-sorted instances: the things scoring ``min_score`` or
    more, each proposal once (its best class). Instance output ranks proposal x class pairs,
    so one mask comes with several classes; tracked alone, each would start a track.

    :param is_thing: by class id (``Vocabulary.is_thing``).
    """
    chosen, seen = [], set()
    for instance in instances:
        if instance.score < min_score:
            break
        if is_thing[instance.class_id] and instance.query_index not in seen:
            seen.add(instance.query_index)
            chosen.append(instance)
    return chosen


def track_result(
    tracker: Tracker,
    result: SegmentationResult,
    is_thing: Sequence[bool],
    stamp_s: float,
    min_score: float = 0.0,
) -> SegmentationResult:
    """Track one frame of ``predict`` output: its ``trackable_instances`` go to ``tracker``,
    and the result comes back with ``track_id`` and ``first_seen_s`` on every instance of a
    tracked proposal (each class copy of it: they share its ``query_index``) and on the thing
    segments made from one. Instances and segments of proposals not tracked keep 0 and None.

    :param is_thing: by class id of the result's vocabulary (``Vocabulary.is_thing``).
    :param stamp_s: the frame's time, not before the previous frame's.
    :param min_score: instances scoring lower are not tracked.
    :raises ValueError: for a stamp earlier than the previous frame's.
    """
    things = trackable_instances(result.instances, is_thing, min_score)
    ids = tracker.update(things, stamp_s)
    first_seen = {track.track_id: track.first_seen_s for track in tracker.tracks}
    track_of = {
        thing.query_index: (track_id, first_seen[track_id])
        for thing, track_id in zip(things, ids, strict=True)
    }

    def tracked(item: Instance | PanopticSegment) -> Instance | PanopticSegment:
        if item.query_index not in track_of:
            return item
        track_id, first_seen_s = track_of[item.query_index]
        return replace(item, track_id=track_id, first_seen_s=first_seen_s)

    # A stuff segment's query_index is -1, no proposal's: it stays untracked.
    return replace(
        result,
        instances=[tracked(instance) for instance in result.instances],
        segments=[tracked(segment) for segment in result.segments],
    )


def _assign(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The minimum-cost rows and columns, paired, forbidden pairs left out."""
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] < _FORBIDDEN
    return rows[keep], cols[keep]


def _box_overlap(a: _Masks, b: _Masks) -> np.ndarray:
    """int (A, B) pixels in each pair's box intersection."""
    # One 2-D array per coordinate: numpy runs (A, B, 2) broadcasts over their short last
    # axis about ten times slower.
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.boxes.T[:, :, None], b.boxes.T[:, None]
    width = np.minimum(ax1, bx1) - np.maximum(ax0, bx0)
    height = np.minimum(ay1, by1) - np.maximum(ay0, by0)
    return np.maximum(width, 0) * np.maximum(height, 0)


def _iou_bound(a: _Masks, b: _Masks, box_overlap: np.ndarray) -> np.ndarray:
    """float (A, B) the largest mask IoU each pair can have: the intersection holds at most
    the smaller mask and the boxes' intersection."""
    area_a, area_b = np.array(a.areas)[:, None], np.array(b.areas)[None]
    inter = np.minimum(box_overlap, np.minimum(area_a, area_b))
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def _mask_iou(a: _Masks, b: _Masks, wanted: np.ndarray) -> np.ndarray:
    """float (A, B) mask IoU of the ``wanted`` pairs (whose boxes must intersect), counted
    inside the boxes' intersection (0 for the other pairs)."""
    i, j = np.nonzero(wanted)
    box_a, box_b = a.boxes[i], b.boxes[j]
    top_left = np.maximum(box_a[:, :2], box_b[:, :2])
    bottom_right = np.minimum(box_a[:, 2:], box_b[:, 2:])
    iou = np.zeros(wanted.shape)
    # The intersection in each crop's own coordinates, as Python ints: indexing numpy
    # scalars costs more than counting the pixels.
    corner_a, corner_b = box_a[:, :2], box_b[:, :2]
    spans = (top_left - corner_a, bottom_right - corner_a, top_left - corner_b,
             bottom_right - corner_b)  # fmt: skip
    for p, q, (ax0, ay0), (ax1, ay1), (bx0, by0), (bx1, by1) in zip(
        i.tolist(), j.tolist(), *(span.tolist() for span in spans), strict=True
    ):
        inter = np.count_nonzero(a.crops[p][ay0:ay1, ax0:ax1] & b.crops[q][by0:by1, bx0:bx1])
        union = a.areas[p] + b.areas[q] - inter
        iou[p, q] = inter / union if union else 0.0
    return iou
