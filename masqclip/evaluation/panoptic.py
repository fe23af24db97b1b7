"""Panoptic quality (PQ), computed as panopticapi does.

A predicted and a ground-truth segment of the same category match when their IoU is above
0.5; pixels the ground truth marks void are left out of the union. Crowd ground-truth
segments are never matched. An unmatched predicted segment lying more than half on void or
on a crowd region of its own category is not a false positive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

_OFFSET = 1 << 32


class PanopticStats:
    """Per-category PQ counts accumulated over images.

    Matched IoUs are kept as lists and summed with ``math.fsum`` (exactly rounded), so the
    result does not depend on the order in which images were added or merged.
    """

    def __init__(self) -> None:
        self.ious: dict[int, list[float]] = {}
        self.fp: dict[int, int] = {}
        self.fn: dict[int, int] = {}

    def add_image(
        self,
        gt_ids: np.ndarray,
        gt_segments: Mapping[int, tuple[int, bool]],
        pred_ids: np.ndarray,
        pred_segments: Mapping[int, int],
    ) -> None:
        """Match one image's segments and count them.

        :param gt_ids: integer (H, W) ground-truth segment ids, 0 = void.
        :param gt_segments: ground-truth segment id -> (class index, is crowd).
        :param pred_ids: integer (H, W) predicted segment ids, 0 = no segment.
        :param pred_segments: predicted segment id -> class index.
        """
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(
                f'predicted panoptic map {pred_ids.shape} and ground truth {gt_ids.shape} '
                'differ in size: predict at the image size'
            )
        gt = gt_ids.astype(np.int64).ravel()
        pred = pred_ids.astype(np.int64).ravel()
        gt_area = dict(zip(*(a.tolist() for a in np.unique(gt, return_counts=True)), strict=True))
        pred_area = dict(
            zip(*(a.tolist() for a in np.unique(pred, return_counts=True)), strict=True)
        )
        for sid in gt_area:
            if sid != 0 and sid not in gt_segments:
                raise ValueError(
                    f'ground-truth pixels carry segment id {sid}, which is not listed'
                )
        for sid in pred_area:
            if sid != 0 and sid not in pred_segments:
                raise ValueError(
                    f'predicted pixels carry segment id {sid}, which is not in the segments; '
                    'use 0 for pixels without a segment'
                )
        pairs, counts = np.unique(gt * _OFFSET + pred, return_counts=True)
        inter = {
            (int(p // _OFFSET), int(p % _OFFSET)): int(c)
            for p, c in zip(pairs.tolist(), counts.tolist(), strict=True)
        }

        gt_matched, pred_matched = set(), set()
        for (g, p), overlap in inter.items():
            if g == 0 or p == 0:
                continue
            g_class, g_crowd = gt_segments[g]
            if g_crowd or g_class != pred_segments[p]:
                continue
            union = pred_area[p] + gt_area[g] - overlap - inter.get((0, p), 0)
            iou = overlap / union
            if iou > 0.5:
                self.ious.setdefault(g_class, []).append(iou)
                gt_matched.add(g)
                pred_matched.add(p)

        crowd_of_class: dict[int, list[int]] = {}
        for g in gt_area:
            if g == 0:
                continue
            g_class, g_crowd = gt_segments[g]
            if g_crowd:
                crowd_of_class.setdefault(g_class, []).append(g)
            elif g not in gt_matched:
                self.fn[g_class] = self.fn.get(g_class, 0) + 1
        for p in pred_area:
            if p == 0 or p in pred_matched:
                continue
            p_class = pred_segments[p]
            ignored = inter.get((0, p), 0) + sum(
                inter.get((g, p), 0) for g in crowd_of_class.get(p_class, ())
            )
            if ignored / pred_area[p] > 0.5:
                continue
            self.fp[p_class] = self.fp.get(p_class, 0) + 1

    def merge(self, other: PanopticStats) -> None:
        """Add another accumulator's counts to this one.

        :param other: counts over a disjoint set of images.
        """
        for c, ious in other.ious.items():
            self.ious.setdefault(c, []).extend(ious)
        for mine, theirs in ((self.fp, other.fp), (self.fn, other.fn)):
            for c, n in theirs.items():
                mine[c] = mine.get(c, 0) + n

    def per_class(self, class_index: int) -> tuple[float, float, float] | None:
        """PQ, SQ, RQ of one class.

        :param class_index: the class.
        :return: (PQ, SQ, RQ), or None when the class has no segment in ground truth or
            prediction.
        """
        ious = self.ious.get(class_index, [])
        tp, fp, fn = len(ious), self.fp.get(class_index, 0), self.fn.get(class_index, 0)
        if tp + fp + fn == 0:
            return None
        iou_sum = math.fsum(ious)
        denominator = tp + 0.5 * fp + 0.5 * fn
        sq = iou_sum / tp if tp else 0.0
        return iou_sum / denominator, sq, tp / denominator

    def average(self, classes: Iterable[int]) -> tuple[float, float, float]:
        """Mean PQ, SQ, RQ over the classes that occur (NaN when none does).

        :param classes: class indices.
        :return: (PQ, SQ, RQ).
        """
        values = [v for v in (self.per_class(c) for c in classes) if v is not None]
        if not values:
            return math.nan, math.nan, math.nan
        pq, sq, rq = (math.fsum(column) / len(values) for column in zip(*values, strict=True))
        return pq, sq, rq
