"""Datasets: COCO instance / panoptic and semantic label-map readers, the open-vocabulary
split tool, large-scale-jitter augmentation and the procedural scene generator."""

from masqclip.data.augment import LsjCfg, LsjTransform, large_scale_jitter, sample_lsj
from masqclip.data.coco import (
    Annotation,
    Category,
    CocoDataset,
    ImageRecord,
    load_coco_instances,
    load_coco_panoptic,
    segmentation_to_rle,
)
from masqclip.data.io import DatasetFormatError
from masqclip.data.ov_split import (
    COCO_48_17,
    CategorySplit,
    filter_coco_instances,
    load_split,
    save_split,
    write_ov_split,
)
from masqclip.data.semantic import (
    IGNORE_LABEL,
    SemanticRecord,
    load_semantic_dataset,
    read_label_map,
)
from masqclip.data.synthetic import SceneCfg, generate_scene, write_dataset

__all__ = [
    'COCO_48_17',
    'IGNORE_LABEL',
    'Annotation',
    'Category',
    'CategorySplit',
    'CocoDataset',
    'DatasetFormatError',
    'ImageRecord',
    'LsjCfg',
    'LsjTransform',
    'SceneCfg',
    'SemanticRecord',
    'filter_coco_instances',
    'generate_scene',
    'large_scale_jitter',
    'load_coco_instances',
    'load_coco_panoptic',
    'load_semantic_dataset',
    'load_split',
    'read_label_map',
    'sample_lsj',
    'save_split',
    'segmentation_to_rle',
    'write_dataset',
    'write_ov_split',
]
