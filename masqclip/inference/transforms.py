"""Image checks and the geometric transforms between a user's image and the network input.

The network input is the image resized so its short side is ``min_size`` (long side capped at
``max_size``) with PIL's bilinear filter, as detectron2's ``ResizeShortestEdge`` (it
antialiases when shrinking, OpenCV's ``INTER_LINEAR`` does not), then zero-padded on the right
and bottom to a multiple of ``size_divisibility``. That black canvas is what CLIP sees; the
proposer sees its padding as the pixel-mean colour (``MaskProposer``). Masks come back at 1/4
of the padded size and are mapped back to the original image here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MIN_SIDE = 16
"""Smaller images hold nothing a 14-16 px CLIP patch can classify."""

MAX_PIXELS = 40_000_000
"""About 8K x 5K; a full-size mask per instance beyond this costs gigabytes."""


class InvalidImageError(ValueError):
    """An image the predictor cannot process; the message says what is wrong."""


def validate_image(image: object) -> np.ndarray:
    """Check that ``image`` is an H x W x 3 uint8 array of a workable size and return it.

    :raises InvalidImageError: naming what is wrong and how to fix it.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f'expected a numpy array, got {type(image).__name__}')
    if image.dtype != np.uint8:
        raise InvalidImageError(
            f'expected dtype uint8 (0-255), got {image.dtype}; convert '
            'float images with (image * 255).clip(0, 255).astype(np.uint8)'
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(
            f'expected an H x W x 3 colour image, got shape {image.shape}; '
            'convert grey or RGBA images to 3 channels first'
        )
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise InvalidImageError(
            f'image is {width}x{height}; both sides must be at least {MIN_SIDE} pixels'
        )
    if height * width > MAX_PIXELS:
        raise InvalidImageError(
            f'image is {width}x{height} ({height * width / 1e6:.0f} MP); '
            f'downscale it to at most {MAX_PIXELS / 1e6:.0f} MP'
        )
    return image


@dataclass(frozen=True)
class ResizeSpec:
    """How an image was mapped onto the network input.

    :param original: (H, W) of the user's image.
    :param resized: (h, w) after resizing, before padding.
    :param padded: (Hp, Wp) of the network input, multiples of the size divisibility.
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    padded: tuple[int, int]


@dataclass(frozen=True)
class PreprocessCfg:
    """An architecture's input geometry: the ``preprocess`` section of its config.

    :param min_size: the short side after resizing.
    :param max_size: the long side's limit (the short one shrinks to keep the aspect).
    :param size_divisibility: the network input is zero-padded to multiples of this.
    """

    min_size: int
    max_size: int
    size_divisibility: int

    @classmethod
    def of(cls, config: Mapping) -> PreprocessCfg:
        """The geometry of an architecture config."""
        pre = config['preprocess']
        return cls(pre['min_size'], pre['max_size'], pre['size_divisibility'])

    def plan(self, height: int, width: int) -> ResizeSpec:
        """How an image of (height, width) maps onto the network input."""
        return plan_resize(height, width, self.min_size, self.max_size, self.size_divisibility)


def plan_resize(
    height: int, width: int, min_size: int, max_size: int, size_divisibility: int
) -> ResizeSpec:
    """Shortest-edge resize plus padding, with detectron2's ``ResizeShortestEdge`` arithmetic
    (the short side exactly ``min_size``, sides rounded half up)."""
    scale = min_size / min(height, width)
    new_h, new_w = (min_size, scale * width) if height < width else (scale * height, min_size)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    resized = (max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5)))
    padded = tuple(-(-side // size_divisibility) * size_divisibility for side in resized)
    return ResizeSpec((height, width), resized, padded)


def image_to_tensor(image_rgb: np.ndarray, spec: ResizeSpec) -> torch.Tensor:
    """Resize and zero-pad an RGB uint8 image into the network input.

    :return: float32 [1, 3, Hp, Wp], RGB in 0-255, contiguous: a compiled image path is
        specialised to that layout (a channels-last view made the inductor backend compile
        again on the first frame).
    """
    h, w = spec.resized
    if (h, w) != spec.original:
        image_rgb = resize_like_detectron2(image_rgb, h, w)
    canvas = np.zeros((3, *spec.padded), dtype=np.float32)
    canvas[:, :h, :w] = image_rgb.transpose(2, 0, 1)
    return torch.from_numpy(canvas).unsqueeze(0)


def resize_like_detectron2(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 H x W x C image with PIL's bilinear filter, as detectron2's test-time
    ``ResizeTransform`` does (antialiased when shrinking)."""
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


def crop_mask_logits(mask_logits: torch.Tensor, spec: ResizeSpec) -> torch.Tensor:
    """Crop [Q, Hp/4, Wp/4] mask logits to the low-resolution cells that hold image content."""
    scale_y = mask_logits.shape[-2] / spec.padded[0]
    scale_x = mask_logits.shape[-1] / spec.padded[1]
    rows = max(1, round(spec.resized[0] * scale_y))
    cols = max(1, round(spec.resized[1] * scale_x))
    return mask_logits[..., :rows, :cols]


def mask_logits_to_image(mask_logits: torch.Tensor, spec: ResizeSpec) -> torch.Tensor:
    """Map [Q, Hp/4, Wp/4] mask logits to [Q, H, W] at the original image size.

    As the reference (Mask2Former's ``sem_seg_postprocess``): bilinear to the padded input size,
    crop the padding, bilinear to the original size.
    """
    logits = F.interpolate(
        mask_logits[None], size=spec.padded, mode='bilinear', align_corners=False
    )
    logits = logits[..., : spec.resized[0], : spec.resized[1]]
    if spec.resized != spec.original:
        logits = F.interpolate(logits, size=spec.original, mode='bilinear', align_corners=False)
    return logits[0]


@dataclass(frozen=True, eq=False)
class AxisResize:
    """One axis of ``mask_logits_to_image`` as a matrix: along this axis, the full-size
    logits are ``weights @ low_res``. The weights are >= 0 with a few non-zeros per row, so a
    box of the output reads only a band of the input, and a positive output needs a positive
    input in its band.

    :param weights: float32 (n, low).
    :param reach: int64 (2, low), the outputs [first, end) each input sample has weight in;
        (n, 0) for one that reaches none (padding).
    :param reads: int64 (2, n), the inputs [first, end) each output sample reads.
    """

    weights: torch.Tensor
    reach: torch.Tensor
    reads: torch.Tensor

    @classmethod
    def of(cls, weights: torch.Tensor) -> AxisResize:
        size, low = weights.shape
        used = weights > 0
        outputs, inputs = torch.arange(size)[:, None], torch.arange(low)[None]
        reach = torch.stack(
            [
                torch.where(used, outputs, size).amin(dim=0),
                torch.where(used, outputs + 1, 0).amax(dim=0),
            ]
        )
        reads = torch.stack(
            [
                torch.where(used, inputs, low).amin(dim=1),
                torch.where(used, inputs + 1, 0).amax(dim=1),
            ]
        )
        return cls(weights, reach, reads)

    def to(self, device: torch.device) -> AxisResize:
        return AxisResize(self.weights.to(device), self.reach.to(device), self.reads.to(device))

    def outputs_reached(self, inputs: torch.Tensor) -> tuple[int, int]:
        """[first, end) of the outputs any of the flagged inputs (bool (low,)) has weight in;
        empty (first >= end) when none does."""
        if not inputs.any():
            return 0, 0
        return int(self.reach[0, inputs].min()), int(self.reach[1, inputs].max())

    def inputs_read(self, first: int, end: int) -> tuple[int, int]:
        """[first, end) of the inputs the outputs [first, end) read."""
        return int(self.reads[0, first:end].min()), int(self.reads[1, first:end].max())


@functools.lru_cache(maxsize=8)
def resize_axes(spec: ResizeSpec, low_res: tuple[int, int]) -> tuple[AxisResize, AxisResize]:
    """``mask_logits_to_image`` as two matrices, rows (H, h) and columns (W, w), with
    ``mask_logits_to_image(L)[q] == rows @ L[q] @ cols.T`` to float32 rounding, for
    (h, w) = ``low_res``.

    Bilinear resizing is separable, and both resizes and the crop between them are linear, so
    each axis is one matrix. Cached per geometry (a camera stream has one); the tensors are
    shared, so never modify them.
    """
    return tuple(
        AxisResize.of(_axis_weights(*sizes))
        for sizes in zip(low_res, spec.padded, spec.resized, spec.original, strict=True)
    )


def _axis_weights(low: int, padded: int, resized: int, original: int) -> torch.Tensor:
    """float32 (original, low): the 1-D linear resizes low -> padded, crop, -> original."""
    weights = _linear_resize_matrix(low, padded)[:resized]
    if resized != original:
        weights = _linear_resize_matrix(resized, original) @ weights
    return weights


def _linear_resize_matrix(size: int, new_size: int) -> torch.Tensor:
    """float32 (new_size, size): row i holds the weights F.interpolate (linear,
    align_corners=False) gives each input sample for output sample i."""
    basis = torch.eye(size)[None]  # channel c is the c-th unit vector
    return F.interpolate(basis, size=new_size, mode='linear', align_corners=False)[0].T
