"""Segmentation metrics: PQ, mIoU and mask AP, each for all / base / novel classes."""

from masqclip.evaluation.evaluator import SegmentationEvaluator
from masqclip.evaluation.instance import ApResult, InstancePredictions, compute_mask_ap
from masqclip.evaluation.panoptic import PanopticStats
from masqclip.evaluation.semantic import class_iou, confusion_matrix, mean_iou, semantic_metrics

__all__ = [
    'ApResult',
    'InstancePredictions',
    'PanopticStats',
    'SegmentationEvaluator',
    'class_iou',
    'compute_mask_ap',
    'confusion_matrix',
    'mean_iou',
    'semantic_metrics',
]
