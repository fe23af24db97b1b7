"""Tracking metrics on a sequence written by ``masqclip synth --sequence``: IDF1, MOTA and id
switches (motmetrics, a hypothesis matching a ground-truth object at mask IoU >= 0.5) and the
re-identification rate.

Two detection sources: the ground-truth masks embedded by the model's mask-token CLIP (the
tracker alone is measured), or the model's own instances (end to end).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from masqclip.data.io import read_image, read_panoptic_png
from masqclip.inference.predictor import Predictor
from masqclip.inference.results import Instance
from masqclip.inference.tracking import Tracker, TrackerCfg, trackable_instances
from masqclip.inference.transforms import ResizeSpec
from masqclip.inference.vocabulary import Vocabulary
from masqclip.modeling.masqclip import MasQCLIP

if TYPE_CHECKING:
    import motmetrics as mm

MIN_IOU = 0.5
"""A hypothesis covers a ground-truth object when their masks' IoU reaches this (MOT's 0.5)."""


@dataclass(frozen=True)
class TruthObject:
    """One annotated object of a frame.

    :param track_id: its ground-truth track.
    :param segment_id: its value in the frame's panoptic PNG.
    :param class_id: its category as an index of the sequence's vocabulary.
    """

    track_id: int
    segment_id: int
    class_id: int


@dataclass(frozen=True)
class TruthFrame:
    """One frame of a sequence and its annotated objects.

    :param frame_id: the image id (MOT's frame number).
    :param stamp_s: the frame's time, frame index / fps.
    """

    frame_id: int
    stamp_s: float
    image_path: Path
    panoptic_path: Path
    objects: tuple[TruthObject, ...]

    def masks(self) -> np.ndarray:
        """bool (N, H, W), the objects' masks in ``objects`` order."""
        ids = read_panoptic_png(self.panoptic_path)
        return ids[None] == np.array([o.segment_id for o in self.objects])[:, None, None]


@dataclass(frozen=True)
class TrackingSequence:
    """A sequence's frames in time order and its classes (the scene vocabulary)."""

    frames: tuple[TruthFrame, ...]
    vocabulary: Vocabulary


def load_sequence(root: str | Path) -> TrackingSequence:
    """Read the panoptic ground truth of a ``write_sequence`` folder, with its track ids."""
    root = Path(root)
    data = json.loads((root / 'annotations' / 'panoptic.json').read_text())
    fps = float(data['videos'][0]['fps'])
    class_of = {int(c['id']): k for k, c in enumerate(data['categories'])}
    annotations = {int(a['image_id']): a for a in data['annotations']}
    frames = []
    for image in sorted(data['images'], key=lambda image: image['frame_index']):
        annotation = annotations[int(image['id'])]
        objects = tuple(
            TruthObject(int(s['track_id']), int(s['id']), class_of[int(s['category_id'])])
            for s in annotation['segments_info']
            if 'track_id' in s
        )
        frames.append(
            TruthFrame(
                int(image['id']),
                image['frame_index'] / fps,
                root / 'images' / image['file_name'],
                root / 'panoptic' / annotation['file_name'],
                objects,
            )
        )
    vocabulary = Vocabulary.from_records(
        {'name': c['name'], 'is_thing': bool(c['isthing'])} for c in data['categories']
    )
    return TrackingSequence(tuple(frames), vocabulary)


Detector = Callable[[TruthFrame, np.ndarray], list[Instance]]
"""(frame, its RGB image) -> the detections to track."""


def ground_truth_detector(network: MasQCLIP, predictor: Predictor) -> Detector:
    """The frame's annotated masks, each embedded by ``network``'s mask-token CLIP."""

    def detect(frame: TruthFrame, image: np.ndarray) -> list[Instance]:
        if not frame.objects:
            return []
        masks = frame.masks()
        embeddings = mask_embeddings(network, predictor, image, masks)
        return [
            Instance.from_mask('', o.class_id, 1.0, 1.0, mask, embedding, -1)
            for o, mask, embedding in zip(frame.objects, masks, embeddings, strict=True)
        ]

    return detect


def model_detector(predictor: Predictor, min_score: float) -> Detector:
    """The predictor's thing instances scoring at least ``min_score``, one per proposal (its
    best class): the predictor's vocabulary must be set."""

    def detect(frame: TruthFrame, image: np.ndarray) -> list[Instance]:
        result = predictor.predict(image, tasks=('instance',))
        return trackable_instances(result.instances, predictor.vocabulary.is_thing, min_score)

    return detect


def mask_embeddings(
    network: MasQCLIP, predictor: Predictor, image: np.ndarray, masks: np.ndarray
) -> np.ndarray:
    """float32 (N, D): L2-normalised CLIP embeddings of given bool (N, H, W) masks of an RGB
    image, computed as the network embeds its own proposals (their logits replaced by the
    masks' coverage of each input pixel, minus one half)."""
    images, _, spec = predictor.preprocess(image)
    logits = torch.from_numpy(_input_logits(masks, spec)).to(images.device)
    with torch.inference_mode():
        return network.mask_clip(network.clip_input(images), logits[None])[0].cpu().numpy()


def _input_logits(masks: np.ndarray, spec: ResizeSpec) -> np.ndarray:
    """float32 (N, Hp, Wp): > 0 where a mask covers more than half of a network input pixel."""
    h, w = spec.resized
    logits = np.full((len(masks), *spec.padded), -0.5, np.float32)
    for k, mask in enumerate(masks):
        coverage = Image.fromarray(mask.astype(np.float32)).resize((w, h), Image.Resampling.BOX)
        logits[k, :h, :w] = np.asarray(coverage) - 0.5
    return logits


@dataclass(frozen=True)
class TrackScores:
    """Tracks scored against a sequence's ground truth.

    :param frames: frames scored; ``objects``: annotated objects over them.
    :param idf1: identity F1 (motmetrics).
    :param mota: multiple-object tracking accuracy.
    :param id_switches: motmetrics' ``num_switches``.
    :param recall: annotated objects covered by a detection (IoU >= ``MIN_IOU``), a fraction.
    :param precision: detections covering an annotated object, a fraction.
    :param reentries: times an annotated track shows again after frames without it.
    :param reidentified: re-entries whose first matched hypothesis carries the id last
        matched to that track before it went.
    """

    frames: int
    objects: int
    idf1: float
    mota: float
    id_switches: int
    recall: float
    precision: float
    reentries: int
    reidentified: int

    @property
    def reid_rate(self) -> float:
        return self.reidentified / self.reentries if self.reentries else float('nan')


@dataclass(frozen=True)
class TrackingScores(TrackScores):
    """One tracking run over a sequence: its scores and costs.

    :param tracker_ms: mean ``Tracker.update`` time per frame.
    :param detect_ms: mean time per frame to get the detections (prediction, or embedding the
        ground-truth masks).
    """

    tracker_ms: float
    detect_ms: float


class TrackScorer:
    """Scores the track ids given to each frame's detections, frame by frame in time order
    (the frames scored may skip some of the sequence's, as a node dropping frames does).

    :raises RuntimeError: where motmetrics is not installed.
    """

    def __init__(self) -> None:
        # Imported here: the masqclip command imports every subcommand's module to build its
        # parser, and motmetrics (with pandas) takes a second to import.
        try:
            import motmetrics as mm
        except ImportError as error:
            raise RuntimeError(
                'tracking metrics need motmetrics (scripts/requirements.txt): '
                'pip install motmetrics'
            ) from error
        self._mm = mm
        self._accumulator = mm.MOTAccumulator(auto_id=False)
        self._frames: list[TruthFrame] = []

    def add(self, frame: TruthFrame, track_ids: Sequence[int], masks: np.ndarray) -> None:
        """One frame's hypotheses: their track ids and bool (N, H, W) masks in the same order
        (any empty array for none)."""
        truth = frame.masks()
        iou = _mask_iou(truth, masks.reshape(len(track_ids), *truth.shape[1:]))
        self._accumulator.update(
            [o.track_id for o in frame.objects],
            list(track_ids),
            np.where(iou >= MIN_IOU, 1 - iou, np.nan),
            frameid=frame.frame_id,
        )
        self._frames.append(frame)

    def scores(self) -> TrackScores:
        """The scores of the frames added so far."""
        metrics = ['idf1', 'mota', 'num_switches', 'recall', 'precision']
        summary = self._mm.metrics.create().compute(self._accumulator, metrics=metrics).iloc[0]
        reentries, reidentified = _reidentifications(self._frames, self._accumulator)
        return TrackScores(
            len(self._frames),
            sum(len(f.objects) for f in self._frames),
            float(summary['idf1']),
            float(summary['mota']),
            int(summary['num_switches']),
            float(summary['recall']),
            float(summary['precision']),
            reentries,
            reidentified,
        )


def evaluate_tracking(
    sequence: TrackingSequence,
    detect: Detector,
    cfg: TrackerCfg | None = None,
    max_frames: int | None = None,
) -> TrackingScores:
    """Track the sequence's (first ``max_frames``) frames and score the tracks.

    :raises RuntimeError: where motmetrics is not installed.
    """
    frames = sequence.frames[:max_frames]
    tracker = Tracker(cfg)
    scorer = TrackScorer()
    detect_s = tracker_s = 0.0
    for frame in frames:
        image = read_image(frame.image_path)
        start = time.perf_counter()
        detections = detect(frame, image)
        middle = time.perf_counter()
        ids = tracker.update(detections, frame.stamp_s)
        detect_s += middle - start
        tracker_s += time.perf_counter() - middle
        scorer.add(frame, ids, np.array([d.mask for d in detections], bool))
    return TrackingScores(
        **vars(scorer.scores()),
        tracker_ms=1000 * tracker_s / max(len(frames), 1),
        detect_ms=1000 * detect_s / max(len(frames), 1),
    )


def _mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float (A, B) IoU of bool (A, H, W) and (B, H, W) masks."""
    pixels = a.shape[1] * a.shape[2]  # not -1: a reshape cannot infer it for 0 masks
    a, b = (m.reshape(len(m), pixels).astype(np.float32) for m in (a, b))
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _reidentifications(
    frames: Sequence[TruthFrame], accumulator: mm.MOTAccumulator
) -> tuple[int, int]:
    """(re-entries, re-identified ones): for each ground-truth track, each pair of successive
    stretches of frames showing it, compared by the hypothesis ids matched to it."""
    events = accumulator.mot_events
    matched = events[events.Type.isin(('MATCH', 'SWITCH'))]
    hypothesis = dict(
        zip(
            zip(matched.index.get_level_values(0), matched.OId, strict=True),
            matched.HId,
            strict=True,
        )
    )
    shown: dict[int, list[int]] = {}
    for position, frame in enumerate(frames):
        for o in frame.objects:
            shown.setdefault(o.track_id, []).append(position)
    reentries = reidentified = 0
    for track_id, positions in shown.items():
        stretches = np.split(np.array(positions), np.flatnonzero(np.diff(positions) > 1) + 1)
        for before, after in zip(stretches, stretches[1:], strict=False):
            reentries += 1
            old = [hypothesis.get((frames[p].frame_id, track_id)) for p in before[::-1]]
            new = [hypothesis.get((frames[p].frame_id, track_id)) for p in after]
            old_id = next((h for h in old if h is not None), None)
            new_id = next((h for h in new if h is not None), None)
            reidentified += old_id is not None and old_id == new_id
    return reentries, reidentified


@dataclass(frozen=True)
class TrackerCost:
    """A synthetic timing run: median ``Tracker.update`` CPU ms per frame, and how many tracks
    it started (the object count when every object kept its id)."""

    ms_per_frame: float
    tracks_started: int


def tracker_cost(
    num_objects: int = 100,
    num_frames: int = 50,
    embedding_dim: int = 512,
    image_size: tuple[int, int] = (480, 640),
    fps: float = 10.0,
    shared_look: float = 0.0,
    seed: int = 0,
) -> TrackerCost:
    """Time the tracker on ``num_objects`` discs (radius 10-30 px) moving and bouncing in the
    frame, each with its own noisy embedding and one of 25 classes.

    :param shared_look: the cosine between two objects' embeddings (before the per-frame
        noise): 0 for unrelated looks; at 0.6, as between the demo model's objects, most
        overlapping pairs pass the embedding gate and need their mask IoU.
    """
    rng = np.random.default_rng(seed)
    far_corner = np.array(image_size[::-1]) - 1
    radii = rng.uniform(10, 30, num_objects)
    centres = rng.uniform(0, far_corner, (num_objects, 2))
    velocities = rng.uniform(-60, 60, (num_objects, 2))
    individual = rng.normal(size=(num_objects, embedding_dim)) / np.sqrt(embedding_dim)
    common = rng.normal(size=embedding_dim) / np.sqrt(embedding_dim)
    identities = np.sqrt(1 - shared_look) * individual + np.sqrt(shared_look) * common
    classes = rng.integers(25, size=num_objects)
    tracker = Tracker()
    times, ids = [], set()
    for k in range(num_frames):
        centres = np.clip(centres + velocities / fps, 0, far_corner)
        velocities[(centres == 0) | (centres == far_corner)] *= -1
        noise = rng.normal(size=identities.shape) / np.sqrt(embedding_dim)
        embeddings = identities + 0.3 * noise
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
        detections = [
            _disc_instance(*disc, image_size)
            for disc in zip(centres, radii, embeddings, classes, strict=True)
        ]
        start = time.thread_time()  # CPU time: other processes on shared cores do not count
        ids.update(tracker.update(detections, k / fps))
        times.append(time.thread_time() - start)
    # The first frame only starts tracks.
    return TrackerCost(1000 * float(np.median(times[1:])), len(ids))


def _disc_instance(
    centre: np.ndarray,
    radius: float,
    embedding: np.ndarray,
    class_id: int,
    image_size: tuple[int, int],
) -> Instance:
    """A disc clipped to the image, as an instance."""
    x0, y0 = np.maximum(np.floor(centre - radius), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(centre + radius), image_size[::-1]).astype(int)
    ys, xs = np.ogrid[y0:y1, x0:x1]
    crop = (xs + 0.5 - centre[0]) ** 2 + (ys + 0.5 - centre[1]) ** 2 <= radius**2
    box = np.array([x0, y0, x1, y1], np.float32)
    embedding = embedding.astype(np.float32)
    return Instance('', int(class_id), 1.0, 1.0, box, crop, embedding, -1, image_size)
