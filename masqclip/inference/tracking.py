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
and whose cosine passes the gate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy.optimize import linear_sum_assignment

# An entry linear_sum_assignment can never prefer to a real one; gated pairs get it.
_FORBIDDEN = 1e6
# Weight of the newest centre step in the velocity estimate: box centres of partial masks
# (frame border, occlusion) jitter, so one step alone would overshoot the next prediction.
_VELOCITY_SMOOTHING = 0.5


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


class EmbeddingGallery:
    """A track's latest ``size`` embeddings, kept with their running sum (whose direction is
    the track's mean embedding)."""

    def __init__(self, first: np.ndarray, size: int) -> None:
        self._rows = np.zeros((size, len(first)), np.float32)
        self.sum = np.zeros(len(first), np.float32)
        self._count = 0
        self.add(first)

    def add(self, embedding: np.ndarray) -> None:
        """Remember ``embedding``, forgetting the oldest once ``size`` are held."""
        slot = self._count % len(self._rows)
        self.sum += embedding - self._rows[slot]  # a slot holds zeros until first written
        self._rows[slot] = embedding
        self._count += 1
        if slot == len(self._rows) - 1:
            self.sum = self._rows.sum(0)  # once per round, so float32 rounding never piles up


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


@dataclass
class Track:
    """One tracked object; read it, the tracker alone changes it.

    :param track_id: 1, 2, ... in order of creation, never reused.
    :param first_seen_s: stamp of its first detection.
    :param last_seen_s: stamp of its latest detection.
    :param class_votes: how often it was detected as each class.
    :param box: int (4,) its latest box; ``mask_crop`` the mask inside it, of ``area`` pixels.
    :param gallery: its latest embeddings.
    :param velocity: (x, y) its box centre's speed, pixels per second.
    :param lost: True while it was not detected in the latest frame.
    """

    track_id: int
    first_seen_s: float
    last_seen_s: float
    class_votes: dict[int, int]
    box: np.ndarray
    mask_crop: np.ndarray
    area: int
    gallery: EmbeddingGallery = field(repr=False)
    velocity: tuple[float, float] = (0.0, 0.0)
    lost: bool = False

    @property
    def class_id(self) -> int:
        """The class it was most often detected as (the earliest of a tie)."""
        return max(self.class_votes, key=self.class_votes.__getitem__)

    def observe(
        self, masks: _Masks, index: int, embedding: np.ndarray, class_id: int, stamp_s: float
    ) -> None:
        """Take detection ``index`` of a frame at ``stamp_s`` as this track's state."""
        box = masks.boxes[index]
        dt = stamp_s - self.last_seen_s
        if self.lost:
            self.velocity = (0.0, 0.0)  # the path across the gap is unknown
        elif dt > 0:
            # Python floats: numpy's per-call overhead on 2-vectors would dominate.
            x0, y0, x1, y1 = box.tolist()
            px0, py0, px1, py1 = self.box.tolist()
            step = ((x0 + x1 - px0 - px1) / (2 * dt), (y0 + y1 - py0 - py1) / (2 * dt))
            self.velocity = tuple(
                v + _VELOCITY_SMOOTHING * (s - v) for v, s in zip(self.velocity, step, strict=True)
            )
        self.box, self.mask_crop, self.area = box, masks.crops[index], masks.areas[index]
        self.class_votes[class_id] = self.class_votes.get(class_id, 0) + 1
        self.last_seen_s, self.lost = stamp_s, False
        self.gallery.add(embedding)


class Tracker:
    """Gives each detection of a frame a track id; call ``update`` once per frame, in time
    order."""

    def __init__(self, cfg: TrackerCfg | None = None) -> None:
        self.cfg = cfg or TrackerCfg()
        self._tracks: list[Track] = []
        self._next_id = 1
        self._last_stamp_s = -np.inf

    @property
    def tracks(self) -> tuple[Track, ...]:
        """The active and the lost tracks, oldest first."""
        return tuple(self._tracks)

    @property
    def active_count(self) -> int:
        """Tracks detected in the latest frame."""
        return sum(not t.lost for t in self._tracks)

    @property
    def lost_count(self) -> int:
        """Tracks kept for re-identification."""
        return sum(t.lost for t in self._tracks)

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
        self._tracks = [
            t for t in self._tracks if stamp_s - t.last_seen_s <= self.cfg.lost_track_seconds
        ]
        masks = _Masks.of(detections)
        embeddings = np.array([d.embedding for d in detections], np.float32)
        classes = [int(d.class_id) for d in detections]
        active = [t for t in self._tracks if not t.lost]
        lost = [t for t in self._tracks if t.lost]
        ids = [0] * len(detections)

        matched = self._match_active(masks, embeddings, active, stamp_s)
        free = sorted(set(range(len(detections))) - {d for d, _ in matched})
        reidentified = [
            (free[d], t) for d, t in self._match_lost(embeddings[free], classes, free, lost)
        ]
        for t in set(range(len(active))) - {t for _, t in matched}:
            active[t].lost = True
        for d, track in [(d, active[t]) for d, t in matched] + [
            (d, lost[t]) for d, t in reidentified
        ]:
            track.observe(masks, d, embeddings[d], classes[d], stamp_s)
            ids[d] = track.track_id
        for d in range(len(detections)):
            if not ids[d]:
                ids[d] = self._start_track(masks, d, embeddings[d], classes[d], stamp_s)
        return ids

    def _match_active(
        self, masks: _Masks, embeddings: np.ndarray, tracks: list[Track], stamp_s: float
    ) -> list[tuple[int, int]]:
        """(detection, track) pairs by mask IoU against the motion prediction and embedding."""
        if not tracks or not len(embeddings):
            return []
        cfg = self.cfg
        similarity = _similarity(embeddings, tracks)
        allowed = similarity >= cfg.min_similarity
        elapsed = stamp_s - np.array([t.last_seen_s for t in tracks])
        shift = np.rint(np.array([t.velocity for t in tracks]) * elapsed[:, None]).astype(int)
        predicted = _Masks(
            np.array([t.box for t in tracks]) + np.tile(shift, 2),
            [t.mask_crop for t in tracks],
            [t.area for t in tracks],
        )
        iou = _mask_iou(masks, predicted, allowed)
        cost = cfg.iou_weight * (1 - iou) + cfg.embedding_weight * (1 - similarity)
        return _assign(np.where(allowed & (cost <= cfg.max_cost), cost, _FORBIDDEN))

    def _match_lost(
        self, embeddings: np.ndarray, classes: list[int], free: list[int], tracks: list[Track]
    ) -> list[tuple[int, int]]:
        """(index into ``free``, track) pairs by embedding alone (re-identification)."""
        if not tracks or not free:
            return []
        similarity = _similarity(embeddings, tracks)
        allowed = similarity >= self.cfg.reid_min_similarity
        if self.cfg.reid_same_class:
            free_classes = np.array([classes[d] for d in free])
            allowed &= free_classes[:, None] == np.array([t.class_id for t in tracks])[None]
        return _assign(np.where(allowed, 1 - similarity, _FORBIDDEN))

    def _start_track(
        self, masks: _Masks, index: int, embedding: np.ndarray, class_id: int, stamp_s: float
    ) -> int:
        track = Track(
            self._next_id,
            stamp_s,
            stamp_s,
            {class_id: 1},
            masks.boxes[index],
            masks.crops[index],
            masks.areas[index],
            EmbeddingGallery(embedding, self.cfg.gallery_size),
        )
        self._tracks.append(track)
        self._next_id += 1
        return track.track_id


def _similarity(embeddings: np.ndarray, tracks: list[Track]) -> np.ndarray:
    """float (N, T) cosine of each embedding with each track's mean embedding."""
    sums = np.array([t.gallery.sum for t in tracks])
    return embeddings @ (sums / np.maximum(np.linalg.norm(sums, axis=1), 1e-12)[:, None]).T


def _assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """The minimum-cost (row, column) pairs, forbidden ones left out."""
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] < _FORBIDDEN
    return list(zip(rows[keep].tolist(), cols[keep].tolist(), strict=True))


def _mask_iou(a: _Masks, b: _Masks, wanted: np.ndarray) -> np.ndarray:
    """float (A, B) mask IoU, counted for the ``wanted`` pairs whose boxes intersect, inside
    the intersection only (0 for the other pairs)."""
    lo = np.maximum(a.boxes[:, None, :2], b.boxes[None, :, :2])
    hi = np.minimum(a.boxes[:, None, 2:], b.boxes[None, :, 2:])
    pairs = np.nonzero(wanted & (hi > lo).all(-1))
    iou = np.zeros(wanted.shape)
    # Python ints: indexing numpy scalars costs more than the pixel counts themselves.
    corners = zip(
        *(
            v.tolist()
            for v in (*pairs, lo[pairs], hi[pairs], a.boxes[pairs[0], :2], b.boxes[pairs[1], :2])
        ),
        strict=True,
    )
    for i, j, (x0, y0), (x1, y1), (ax, ay), (bx, by) in corners:
        inter = np.count_nonzero(
            a.crops[i][y0 - ay : y1 - ay, x0 - ax : x1 - ax]
            & b.crops[j][y0 - by : y1 - by, x0 - bx : x1 - bx]
        )
        union = a.areas[i] + b.areas[j] - inter
        iou[i, j] = inter / union if union else 0.0
    return iou
