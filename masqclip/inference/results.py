"""The result types: the contract between the library and its users (CLI, ROS node).

Numpy arrays and plain Python types only, so a consumer never needs torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a plain dataclass of tuples; importing it at run time would pull in torch
    from masqclip.inference.transforms import ResizeSpec

UNLABELED = -1
"""Class index of a pixel no class claims (semantic map) and of the void panoptic segment."""

UNLABELED_UINT16 = 65535
"""``UNLABELED`` in 16-bit semantic images (the CLI's PNG, the node's mono16): the largest value,
as ADE20K's 16-bit maps mark ignored pixels."""


def semantic_to_uint16(semantic: np.ndarray) -> np.ndarray:
    """A semantic map as a 16-bit image (the CLI's PNG, the node's mono16): class indices as
    they are, ``UNLABELED_UINT16`` where no class claims the pixel.

    :param semantic: int32 (H, W) class indices, ``UNLABELED`` (-1) where none.
    :raises ValueError: for a class index that 16 bits cannot hold apart from the marker.
    """
    if semantic.size and semantic.max() >= UNLABELED_UINT16:
        raise ValueError(f'class index {semantic.max()} does not fit a 16-bit semantic image')
    return np.where(semantic == UNLABELED, UNLABELED_UINT16, semantic).astype(np.uint16)


@dataclass(frozen=True)
class Instance:
    """One segmented object.

    The mask is stored as its crop inside ``box``: a 4096 x 4096 frame would otherwise cost
    16 MB per instance. ``mask`` pastes it into a full-size array on demand.

    :param label: the vocabulary name of ``class_id``.
    :param class_id: index into the vocabulary the frame was segmented with.
    :param score: final score, p_obj x p_clip(class) x mean in-mask sigmoid, in [0, 1].
    :param objectness: the proposer's object probability p_obj, in [0, 1].
    :param box: float32 (4,), tight box around the mask as x0, y0, x1, y1 in whole pixels,
        x1/y1 exclusive; all zeros for an empty mask.
    :param mask_crop: bool (y1 - y0, x1 - x0), the mask inside ``box``; True = the object's
        pixels.
    :param embedding: float32 (D,), the proposal's L2-normalised CLIP mask embedding.
    :param query_index: which of the proposer's Q queries this instance came from.
    :param image_size: (H, W) of the input image.
    :param track_id: the object's identity across frames (>= 1) when a tracker saw the frame;
        0 when none did.
    :param first_seen_s: when that track was first seen (the stamp of its first frame, in
        seconds); None without a track.
    """

    label: str
    class_id: int
    score: float
    objectness: float
    box: np.ndarray
    mask_crop: np.ndarray
    embedding: np.ndarray
    query_index: int
    image_size: tuple[int, int]
    track_id: int = 0
    first_seen_s: float | None = None

    @classmethod
    def from_mask(
        cls,
        label: str,
        class_id: int,
        score: float,
        objectness: float,
        mask: np.ndarray,
        embedding: np.ndarray,
        query_index: int,
    ) -> Instance:
        """An instance from a full-size bool (H, W) mask (its box and crop computed here)."""
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            box = np.zeros(4, np.float32)
        else:
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        x0, y0, x1, y1 = box.astype(int)
        crop = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=bool)
        return cls(
            label,
            int(class_id),
            float(score),
            float(objectness),
            box,
            crop,
            np.asarray(embedding, np.float32),
            int(query_index),
            tuple(mask.shape),
        )

    @property
    def mask(self) -> np.ndarray:
        """bool (H, W) at the input image's size (made on each call: prefer ``mask_crop``)."""
        full = np.zeros(self.image_size, dtype=bool)
        x0, y0, x1, y1 = self.box.astype(int)
        full[y0:y1, x0:x1] = self.mask_crop
        return full

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return int(np.count_nonzero(self.mask_crop))


@dataclass(frozen=True)
class PanopticSegment:
    """One segment of the panoptic map.

    :param id: the value of this segment's pixels in ``SegmentationResult.panoptic`` (>= 1).
    :param class_id: vocabulary index; ``label`` is its name.
    :param is_thing: True for a countable object, False for a stuff region (merged per class).
    :param score: the segment's class score (for merged stuff, the best of its queries).
    :param area: number of pixels.
    :param query_index: the proposal a thing segment comes from (its instance has the same
        ``query_index``); -1 for stuff, which may merge several.
    :param track_id: a thing's identity across frames, as its instance's; 0 without one.
    :param first_seen_s: when that track was first seen; None without a track.
    """

    id: int
    class_id: int
    label: str
    is_thing: bool
    score: float
    area: int
    query_index: int = -1
    track_id: int = 0
    first_seen_s: float | None = None


@dataclass(frozen=True)
class RenderedMask:
    """One proposal's mask at the input image's size, as instances carry it.

    :param quality: mean sigmoid inside the mask (logit > 0); 0 for an empty mask.
    :param box: float32 (4,), x0, y0, x1, y1 (exclusive) in whole pixels; zeros if empty.
    :param crop: bool (y1 - y0, x1 - x0), the mask inside ``box``.
    """

    quality: float
    box: np.ndarray
    crop: np.ndarray


@dataclass(frozen=True)
class Proposals:
    """Every proposal of a frame, kept so free-text queries can be scored later without an
    image pass, with what every query needs precomputed once per frame.

    :param embeddings: float32 (Q, D), L2-normalised CLIP mask embeddings.
    :param objectness: float32 (Q,), p_obj of each proposal.
    :param mask_logits: float32 (Q, Hp/4, Wp/4), mask logits at the proposer's output
        resolution over the padded input (``spec`` maps them to the image).
    :param spec: ``transforms.ResizeSpec``, how the image was mapped onto the network input.
    :param mask_quality: float32 (Q,), mean sigmoid inside each mask at the proposer's
        resolution (within the image content).
    :param overlaps: float32 (Q, Q), the masks' pairwise IoU at that resolution.
    :param rendered: full-size masks of the proposals ``predict`` already rendered for its
        instances, by proposal index.
    """

    embeddings: np.ndarray
    objectness: np.ndarray
    mask_logits: np.ndarray
    spec: ResizeSpec
    mask_quality: np.ndarray
    overlaps: np.ndarray
    rendered: dict[int, RenderedMask] = field(default_factory=dict)


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
    :param timings: seconds per stage, in order: 'preprocess', 'image_model', 'classify', then
        'semantic', 'panoptic', 'instance' for the tasks computed, and 'proposals' (what
        ``find`` reads).
    """

    image_size: tuple[int, int]
    vocabulary: tuple[str, ...]
    instances: list[Instance] = field(default_factory=list)
    semantic: np.ndarray | None = None
    panoptic: np.ndarray | None = None
    segments: list[PanopticSegment] = field(default_factory=list)
    proposals: Proposals | None = None
    timings: dict[str, float] = field(default_factory=dict)
