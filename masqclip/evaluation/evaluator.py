"""One evaluator for the three tasks: PQ, mIoU and mask AP, each for all / base / novel.

Predictions use class indices into the evaluator's ``categories`` (the vocabulary order);
ground truth comes from the ``masqclip.data`` readers and is mapped from dataset category
ids to those indices. Every metric is a fraction in [0, 1] (not percent); NaN means the
metric is undefined on what was added (e.g. no novel class present).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from masqclip.data.coco import Category, ImageRecord
from masqclip.data.ov_split import CategorySplit
from masqclip.data.semantic import SemanticRecord
from masqclip.evaluation.instance import (
    ApImage,
    InstancePredictions,
    compute_mask_ap,
    encode_mask,
)
from masqclip.evaluation.panoptic import PanopticStats
from masqclip.evaluation.semantic import class_iou, confusion_matrix, mean_iou, semantic_metrics
from masqclip.inference.results import SegmentationResult


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return math.fsum(finite) / len(finite) if finite else math.nan


class SegmentationEvaluator:
    """Accumulates per-image predictions against ground truth and computes the metrics.

    The accumulated state is plain Python and numpy (picklable, e.g. for
    ``torch.distributed.all_gather_object``); ``merge`` combines evaluators that saw disjoint
    images, and the result does not depend on the order images were added or merged.

    :param categories: the classes in prediction-index order (index i = ``categories[i]``);
        their ``id`` is the dataset category id the ground truth uses.
    :param split: base / novel class names for the ``_base`` / ``_novel`` metrics; every name
        must be one of ``categories``. Classes in neither list count only in the overall means.
    """

    def __init__(self, categories: Sequence[Category], split: CategorySplit | None = None) -> None:
        self.categories = tuple(categories)
        self.split = split
        names = [c.name for c in self.categories]
        self._index = {c.id: i for i, c in enumerate(self.categories)}
        if len(self._index) != len(self.categories):
            raise ValueError('categories must have distinct ids')
        self._subsets = {'': list(range(len(names)))}
        if split is not None:
            missing = [n for n in split.all if n not in names]
            if missing:
                raise ValueError(f'split names {missing} are not among the categories')
            self._subsets['_base'] = [names.index(n) for n in split.base]
            self._subsets['_novel'] = [names.index(n) for n in split.novel]
        self._panoptic = PanopticStats()
        self._panoptic_keys: set[str] = set()
        self._confusion = np.zeros((len(names), len(names) + 1), np.int64)
        self._semantic_keys: set[str] = set()
        self._ap_images: dict[str, ApImage] = {}

    def _class_of(self, category_id: int) -> int:
        if category_id not in self._index:
            raise ValueError(
                f'ground-truth category id {category_id} is not among the evaluator '
                "categories: build the evaluator from the dataset's categories (or filter "
                'the annotations with masqclip.data.ov_split)'
            )
        return self._index[category_id]

    @staticmethod
    def _check_new(keys: set[str] | dict[str, ApImage], key: str, task: str) -> None:
        if key in keys:
            raise ValueError(
                f'image {key} was added twice for {task}: give each image to one evaluator '
                'only (shard the image list; do not pad it)'
            )

    def add(
        self,
        record: ImageRecord | SemanticRecord,
        *,
        panoptic: np.ndarray | None = None,
        segments: Mapping[int, int] | None = None,
        semantic: np.ndarray | None = None,
        instances: InstancePredictions | None = None,
    ) -> None:
        """Add one image's predictions for any of the three tasks.

        :param record: the ground truth: a panoptic ``ImageRecord`` for PQ; a panoptic
            ``ImageRecord`` or a ``SemanticRecord`` for mIoU; an ``ImageRecord`` for AP
            (its thing annotations; crowd ones are ignored regions).
        :param panoptic: int (H, W) predicted segment ids, 0 = no segment.
        :param segments: predicted segment id -> class index, for ``panoptic``.
        :param semantic: int (H, W) predicted class index per pixel, -1 = none.
        :param instances: the predicted instances (empty ones count: the image's ground
            truth then adds misses).
        """
        key = str(record.image_id)
        if panoptic is not None:
            if segments is None:
                raise ValueError('a panoptic prediction needs its segments (id -> class index)')
            self._add_panoptic(key, record, panoptic, segments)
        if semantic is not None:
            self._add_semantic(key, record, semantic)
        if instances is not None:
            self._add_instances(key, record, instances)

    def add_result(
        self,
        record: ImageRecord | SemanticRecord,
        result: SegmentationResult,
        *,
        with_instances: bool = True,
    ) -> None:
        """Add a predictor's result: its panoptic and semantic outputs where present, and its
        instances unless ``with_instances`` is False (an empty list then counts as no
        detection).

        :param record: the ground truth (see ``add``).
        :param result: the prediction; its vocabulary must be in ``categories`` order.
        :param with_instances: evaluate ``result.instances`` for AP.
        """
        if len(result.vocabulary) != len(self.categories):
            raise ValueError(
                f'the result has {len(result.vocabulary)} classes, the evaluator '
                f"{len(self.categories)}: segment with the evaluator categories' names"
            )
        height, width = result.image_size
        instances = None
        if with_instances:
            masks = np.zeros((len(result.instances), height, width), bool)
            for i, instance in enumerate(result.instances):
                masks[i] = instance.mask
            instances = InstancePredictions(
                masks,
                np.array([i.score for i in result.instances], np.float64),
                np.array([i.class_id for i in result.instances], np.int64),
            )
        segments = {s.id: s.class_id for s in result.segments}
        self.add(
            record,
            panoptic=result.panoptic,
            segments=segments if result.panoptic is not None else None,
            semantic=result.semantic,
            instances=instances,
        )

    def _add_panoptic(
        self,
        key: str,
        record: ImageRecord | SemanticRecord,
        panoptic: np.ndarray,
        segments: Mapping[int, int],
    ) -> None:
        if not isinstance(record, ImageRecord) or record.panoptic_path is None:
            raise ValueError(
                'PQ needs panoptic ground truth: load the dataset with load_coco_panoptic'
            )
        gt_segments = {
            a.id: (self._class_of(a.category_id), a.is_crowd) for a in record.annotations
        }
        for sid, c in segments.items():
            if not 0 <= c < len(self.categories):
                raise ValueError(f'predicted segment {sid} has class {c}, outside the categories')
        self._check_new(self._panoptic_keys, key, 'panoptic')
        self._panoptic.add_image(record.panoptic_ids(), gt_segments, panoptic, segments)
        self._panoptic_keys.add(key)

    def _semantic_gt(self, record: ImageRecord | SemanticRecord) -> np.ndarray:
        if isinstance(record, SemanticRecord):
            return record.load_labels()
        if record.panoptic_path is None:
            raise ValueError(
                'mIoU needs a label map or panoptic ground truth: load the dataset with '
                'load_coco_panoptic or load_semantic_dataset'
            )
        ids = record.panoptic_ids()
        lut = {0: -1} | {a.id: self._class_of(a.category_id) for a in record.annotations}
        unique, inverse = np.unique(ids, return_inverse=True)
        if any(int(u) not in lut for u in unique):
            raise ValueError(f'image {record.image_id}: panoptic PNG has unlisted segment ids')
        return np.array([lut[int(u)] for u in unique], np.int64)[inverse].reshape(ids.shape)

    def _add_semantic(
        self, key: str, record: ImageRecord | SemanticRecord, semantic: np.ndarray
    ) -> None:
        self._check_new(self._semantic_keys, key, 'semantic')
        self._confusion += confusion_matrix(
            self._semantic_gt(record), semantic, len(self.categories)
        )
        self._semantic_keys.add(key)

    def _add_instances(
        self, key: str, record: ImageRecord | SemanticRecord, instances: InstancePredictions
    ) -> None:
        if not isinstance(record, ImageRecord):
            raise ValueError('mask AP needs instance ground truth: use a COCO ImageRecord')
        if instances.masks.shape[1:] != (record.height, record.width):
            raise ValueError(
                f'instance masks {instances.masks.shape[1:]} differ from the image size '
                f'{(record.height, record.width)}: predict at the image size'
            )
        self._check_new(self._ap_images, key, 'instance')
        masks = record.masks()
        image = ApImage(record.height, record.width)
        for i, annotation in enumerate(record.annotations):
            if not annotation.is_thing:
                continue
            rle = encode_mask(masks[i])
            area = annotation.area if annotation.area > 0 else float(masks[i].sum())
            image.gt.append(
                (self._class_of(annotation.category_id), rle, annotation.is_crowd, area)
            )
        for mask, score, c in zip(
            instances.masks, instances.scores, instances.class_ids, strict=True
        ):
            if not 0 <= c < len(self.categories):
                raise ValueError(f'predicted instance class {c} is outside the categories')
            image.detections.append((int(c), encode_mask(mask), float(score)))
        self._ap_images[key] = image

    def merge(self, other: SegmentationEvaluator) -> None:
        """Take in another evaluator's accumulated images (e.g. from another rank).

        :param other: an evaluator with the same categories and split and no image in common.
        """
        if other.categories != self.categories or other.split != self.split:
            raise ValueError('can merge only evaluators built with the same categories and split')
        for mine, theirs, task in (
            (self._panoptic_keys, other._panoptic_keys, 'panoptic'),
            (self._semantic_keys, other._semantic_keys, 'semantic'),
            (set(self._ap_images), set(other._ap_images), 'instance'),
        ):
            common = mine & theirs
            if common:
                raise ValueError(
                    f'both evaluators hold {task} results of images {sorted(common)[:5]}: '
                    'shard the images so each rank evaluates different ones'
                )
        self._panoptic.merge(other._panoptic)
        self._panoptic_keys |= other._panoptic_keys
        self._confusion += other._confusion
        self._semantic_keys |= other._semantic_keys
        self._ap_images.update(other._ap_images)

    def evaluate(self, per_category: bool = False) -> dict[str, float]:
        """Compute the metrics of every task that received predictions.

        Keys (each also with ``_base`` and ``_novel`` when a split was given; a split mean
        runs over the split's classes that occur):

        - ``panoptic/PQ``, ``SQ``, ``RQ``, and ``PQ_th``, ``SQ_th``, ``RQ_th``, ``PQ_st``,
          ``SQ_st``, ``RQ_st`` (things / stuff only; not split);
        - ``semantic/mIoU``, and unsplit ``semantic/fwIoU``, ``mACC``, ``pACC``;
        - ``segm/AP``, ``AP50``, and unsplit ``AP75``, ``APs``, ``APm``, ``APl``.

        With ``per_category``: ``panoptic/PQ-<name>``, ``semantic/IoU-<name>``,
        ``segm/AP-<name>``, ``segm/AP50-<name>`` as well.

        :param per_category: add one entry per class and metric.
        :return: flat dict of fractions in [0, 1] (NaN = undefined).
        """
        names = [c.name for c in self.categories]
        things = [i for i, c in enumerate(self.categories) if c.is_thing]
        stuff = [i for i, c in enumerate(self.categories) if not c.is_thing]
        out: dict[str, float] = {}
        if self._panoptic_keys:
            groups = dict(self._subsets) | {'_th': things, '_st': stuff}
            for suffix, classes in groups.items():
                pq, sq, rq = self._panoptic.average(classes)
                out |= {
                    f'panoptic/PQ{suffix}': pq,
                    f'panoptic/SQ{suffix}': sq,
                    f'panoptic/RQ{suffix}': rq,
                }
            if per_category:
                for i, name in enumerate(names):
                    value = self._panoptic.per_class(i)
                    out[f'panoptic/PQ-{name}'] = math.nan if value is None else value[0]
        if self._semantic_keys:
            out |= {f'semantic/{k}': v for k, v in semantic_metrics(self._confusion).items()}
            for suffix, classes in self._subsets.items():
                if suffix:
                    out[f'semantic/mIoU{suffix}'] = mean_iou(self._confusion, classes)
            if per_category:
                for name, iou in zip(names, class_iou(self._confusion), strict=True):
                    out[f'semantic/IoU-{name}'] = float(iou)
        if self._ap_images:
            result = compute_mask_ap(self._ap_images, things)
            out |= {f'segm/{k}': v for k, v in result.summary.items()}
            for suffix, classes in self._subsets.items():
                if suffix:
                    chosen = [c for c in classes if c in result.ap]
                    out[f'segm/AP{suffix}'] = _nanmean([result.ap[c] for c in chosen])
                    out[f'segm/AP50{suffix}'] = _nanmean([result.ap50[c] for c in chosen])
            if per_category:
                for c in things:
                    out[f'segm/AP-{names[c]}'] = result.ap[c]
                    out[f'segm/AP50-{names[c]}'] = result.ap50[c]
        return out
