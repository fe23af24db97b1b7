"""Mask AP through pycocotools' COCOeval (iouType 'segm'), with per-class results.

Method.md trap 13: the upstream evaluator printed only per-class AP, so base and novel AP
were averaged by hand; here ``per_class_ap`` returns them for the evaluator to split.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


@dataclass(frozen=True)
class InstancePredictions:
    """One image's predicted instances.

    :param masks: bool (N, H, W).
    :param scores: float (N,) confidence, higher is better.
    :param class_ids: int (N,) class indices into the evaluator's categories.
    """

    masks: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        n = self.masks.shape[0]
        if self.masks.ndim != 3 or len(self.scores) != n or len(self.class_ids) != n:
            raise ValueError(
                'InstancePredictions needs masks (N, H, W), scores (N,) and class_ids (N,)'
            )


def encode_mask(mask: np.ndarray) -> dict:
    """Compress a binary mask to COCO RLE.

    :param mask: bool (H, W).
    :return: RLE dict, ``counts`` as bytes.
    """
    return mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))


@dataclass
class ApImage:
    """One image's ground truth and detections, RLE-encoded (picklable, small).

    :param height: image height.
    :param width: image width.
    :param gt: (class index, RLE, is crowd, area) per ground-truth object.
    :param detections: (class index, RLE, score) per detection.
    """

    height: int
    width: int
    gt: list[tuple[int, dict, bool, float]] = field(default_factory=list)
    detections: list[tuple[int, dict, float]] = field(default_factory=list)


@dataclass(frozen=True)
class ApResult:
    """COCO mask AP.

    :param summary: ``{'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl'}`` as fractions (NaN
        when undefined).
    :param ap: class index -> AP over IoU 0.5:0.95 (NaN without ground truth of the class).
    :param ap50: class index -> AP at IoU 0.5.
    """

    summary: dict[str, float]
    ap: dict[int, float]
    ap50: dict[int, float]


def _mean_valid(precision: np.ndarray) -> float:
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else math.nan


def compute_mask_ap(images: Mapping[str, ApImage], classes: Sequence[int]) -> ApResult:
    """Run COCOeval on accumulated images.

    Images are ordered by key and detections keep their per-image order, so COCOeval's
    tie-breaking between equal scores does not depend on the order images were added.

    :param images: image key -> its ground truth and detections.
    :param classes: the class indices evaluated (things); detections of other classes are
        ignored.
    :return: the summary and per-class AP.
    """
    keys = sorted(images)
    coco_images = [
        {'id': i + 1, 'height': images[k].height, 'width': images[k].width}
        for i, k in enumerate(keys)
    ]
    categories = [{'id': c + 1, 'name': str(c)} for c in sorted(classes)]
    wanted = set(classes)
    gt_anns, dt_anns = [], []
    for image_id, key in enumerate(keys, start=1):
        for c, rle, crowd, area in images[key].gt:
            gt_anns.append(
                {
                    'id': len(gt_anns) + 1,
                    'image_id': image_id,
                    'category_id': c + 1,
                    'segmentation': rle,
                    'area': area,
                    'iscrowd': int(crowd),
                    'bbox': mask_util.toBbox(rle).tolist(),
                }
            )
        for c, rle, score in images[key].detections:
            if c not in wanted:
                continue
            dt_anns.append(
                {
                    'id': len(dt_anns) + 1,
                    'image_id': image_id,
                    'category_id': c + 1,
                    'segmentation': rle,
                    'score': float(score),
                    'iscrowd': 0,
                    'area': float(mask_util.area(rle)),
                    'bbox': mask_util.toBbox(rle).tolist(),
                }
            )
    # pycocotools prints progress on stdout; a library stays quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {'images': coco_images, 'annotations': gt_anns, 'categories': categories}
        coco_dt.dataset = {'images': coco_images, 'annotations': dt_anns, 'categories': categories}
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType='segm')
        evaluator.params.imgIds = [im['id'] for im in coco_images]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    names = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
    summary = {
        n: (float(v) if v > -1 else math.nan)
        for n, v in zip(names, evaluator.stats[:6], strict=True)
    }
    # precision: (IoU thresholds, recall points, classes, area ranges, max detections);
    # area range 0 = all, max detections -1 = 100.
    precision = evaluator.eval['precision']
    ap, ap50 = {}, {}
    for k, category in enumerate(evaluator.params.catIds):
        ap[category - 1] = _mean_valid(precision[:, :, k, 0, -1])
        ap50[category - 1] = _mean_valid(precision[0, :, k, 0, -1])
    return ApResult(summary, ap, ap50)
