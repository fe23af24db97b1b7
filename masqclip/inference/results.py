"""The result types: the contract between the library and its users (CLI, ROS node).

Numpy arrays and plain Python types only, so a consumer never needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UNLABELED = -1
"""Class index of a pixel no class claims (semantic map) and of the void panoptic segment."""


@dataclass(frozen=True)
class Instance:
    """One segmented object.

    :param label: the vocabulary name of ``class_id``.
    :param class_id: index into the vocabulary the frame was segmented with.
    :param score: final score, p_obj x p_clip(class) x mean in-mask sigmoid, in [0, 1].
    :param objectness: the proposer's object probability p_obj, in [0, 1].
    :param box: float32 (4,), tight box around ``mask`` as x0, y0, x1, y1 in pixels, x1/y1
        exclusive; all zeros for an empty mask.
    :param mask: bool (H, W) at the input image's size; True = the object's pixels.
    :param embedding: float32 (D,), the proposal's L2-normalised CLIP mask embedding.
    :param query_index: which of the proposer's Q queries this instance came from.
    """

    label: str
    class_id: int
    score: float
    objectness: float
    box: np.ndarray
    mask: np.ndarray
    embedding: np.ndarray
    query_index: int


@dataclass(frozen=True)
class PanopticSegment:
    """One segment of the panoptic map.

    :param id: the value of this segment's pixels in ``SegmentationResult.panoptic`` (>= 1).
    :param class_id: vocabulary index; ``label`` is its name.
    :param is_thing: True for a countable object, False for a stuff region (merged per class).
    :param score: the segment's class score (for merged stuff, the best of its queries).
    :param area: number of pixels.
    """

    id: int
    class_id: int
    label: str
    is_thing: bool
    score: float
    area: int


@dataclass(frozen=True)
class Proposals:
    """Every proposal of a frame, kept so free-text queries can be scored later without an
    image pass.

    :param embeddings: float32 (Q, D), L2-normalised CLIP mask embeddings.
    :param objectness: float32 (Q,), p_obj of each proposal.
    :param mask_logits: float32 (Q, h, w), mask logits at the proposer's output resolution,
        cropped to the image content (no padding): resize to the image size to get masks
        (logit > 0 is inside).
    """

    embeddings: np.ndarray
    objectness: np.ndarray
    mask_logits: np.ndarray


@dataclass
class SegmentationResult:
    """Everything the predictor computed for one image.

    :param image_size: (H, W) of the input image; every mask and map has this size.
    :param vocabulary: the class names, in class-index order.
    :param instances: sorted by score, highest first; empty when instance output was off.
    :param semantic: int32 (H, W) class index per pixel, ``UNLABELED`` (-1) where none;
        None when semantic output was off.
    :param panoptic: int32 (H, W) segment id per pixel, 0 = void (no segment); None when
        panoptic output was off.
    :param segments: the panoptic segments, by id.
    :param proposals: every proposal's embedding, objectness and mask (for ``find``).
    :param timings: seconds per stage (e.g. 'preprocess', 'proposer', 'clip', 'postprocess').
    """

    image_size: tuple[int, int]
    vocabulary: tuple[str, ...]
    instances: list[Instance] = field(default_factory=list)
    semantic: np.ndarray | None = None
    panoptic: np.ndarray | None = None
    segments: list[PanopticSegment] = field(default_factory=list)
    proposals: Proposals | None = None
    timings: dict[str, float] = field(default_factory=dict)
