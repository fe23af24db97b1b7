"""Semantic-segmentation metrics from a confusion matrix (as detectron2's SemSegEvaluator)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Count (ground truth, prediction) pixel pairs.

    :param gt: integer (H, W) class indices, negative = ignored pixel.
    :param pred: integer (H, W) class indices, -1 = no class predicted (counts as a miss).
    :param num_classes: C.
    :return: int64 (C, C + 1); row = ground-truth class, column = predicted class, the last
        column counts pixels predicted as no class.
    """
    if gt.shape != pred.shape:
        raise ValueError(
            f'predicted semantic map {pred.shape} and ground truth {gt.shape} differ in size'
        )
    gt, pred = gt.astype(np.int64).ravel(), pred.astype(np.int64).ravel()
    valid = gt >= 0
    gt, pred = gt[valid], pred[valid]
    if gt.size and gt.max() >= num_classes:
        raise ValueError(f'ground-truth class {gt.max()} is outside the {num_classes} classes')
    if pred.size and (pred.min() < -1 or pred.max() >= num_classes):
        raise ValueError(f'predicted classes must lie in [-1, {num_classes})')
    pred = np.where(pred < 0, num_classes, pred)
    counts = np.bincount(gt * (num_classes + 1) + pred, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for a class absent from the ground truth.

    :param confusion: int (C, C + 1) from ``confusion_matrix``.
    :return: float64 (C,).
    """
    num_classes = confusion.shape[0]
    tp = np.diag(confusion[:, :num_classes]).astype(np.float64)
    pos_gt = confusion.sum(1).astype(np.float64)
    pos_pred = confusion[:, :num_classes].sum(0).astype(np.float64)
    union = pos_gt + pos_pred - tp
    iou = np.full(num_classes, np.nan)
    valid = pos_gt > 0
    iou[valid] = tp[valid] / union[valid]
    return iou


def semantic_metrics(confusion: np.ndarray) -> dict[str, float]:
    """mIoU, frequency-weighted IoU, mean class accuracy and pixel accuracy.

    Means run over the classes present in the ground truth, as in detectron2.

    :param confusion: int (C, C + 1) from ``confusion_matrix``.
    :return: ``{'mIoU', 'fwIoU', 'mACC', 'pACC'}`` as fractions (NaN without pixels).
    """
    num_classes = confusion.shape[0]
    tp = np.diag(confusion[:, :num_classes]).astype(np.float64)
    pos_gt = confusion.sum(1).astype(np.float64)
    total = pos_gt.sum()
    if total == 0:
        return {'mIoU': math.nan, 'fwIoU': math.nan, 'mACC': math.nan, 'pACC': math.nan}
    valid = pos_gt > 0
    iou = class_iou(confusion)
    return {
        'mIoU': float(iou[valid].mean()),
        'fwIoU': float((iou[valid] * pos_gt[valid]).sum() / total),
        'mACC': float((tp[valid] / pos_gt[valid]).mean()),
        'pACC': float(tp.sum() / total),
    }


def mean_iou(confusion: np.ndarray, classes: Iterable[int]) -> float:
    """mIoU over a subset of classes (those present in the ground truth).

    :param confusion: int (C, C + 1) from ``confusion_matrix``.
    :param classes: class indices of the subset.
    :return: the mean, NaN when no class of the subset is present.
    """
    iou = class_iou(confusion)[list(classes)]
    iou = iou[~np.isnan(iou)]
    return float(iou.mean()) if iou.size else math.nan
