"""Large-scale jitter (LSJ), the training augmentation of both stages (method.md 2.1, 3.4).

Random horizontal flip, resize by a random scale in [0.1, 2.0] of a square target (keeping
the aspect ratio, as detectron2's ``ResizeScale``), then a random fixed-size crop padded at
the bottom and right (``FixedSizeCrop``; the image pad value is 128 in training, trap 5).
One sampled ``LsjTransform`` is applied to the image, its masks and its label maps alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class LsjCfg:
    """Large-scale-jitter settings.

    :param size: side of the square output (1024 upstream).
    :param min_scale: smallest resize scale, relative to ``size``.
    :param max_scale: largest resize scale, relative to ``size``.
    :param flip_prob: probability of a horizontal flip.
    :param pad_value: image value of padded pixels (128 in training, upstream's default).
    """

    size: int = 1024
    min_scale: float = 0.1
    max_scale: float = 2.0
    flip_prob: float = 0.5
    pad_value: int = 128

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 < self.min_scale <= self.max_scale:
            raise ValueError('LsjCfg needs size >= 1 and 0 < min_scale <= max_scale')
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError('LsjCfg.flip_prob must lie in [0, 1]')


@dataclass(frozen=True)
class LsjTransform:
    """One sampled LSJ transform: flip, resize to (scaled_height, scaled_width), crop at
    (crop_y, crop_x), pad to (size, size).

    :param height: input height.
    :param width: input width.
    :param flip: whether to flip horizontally (before resizing).
    :param scaled_height: height after resizing.
    :param scaled_width: width after resizing.
    :param crop_y: top row of the crop in the resized image.
    :param crop_x: left column of the crop in the resized image.
    :param size: output side.
    :param pad_value: image value of padded pixels.
    """

    height: int
    width: int
    flip: bool
    scaled_height: int
    scaled_width: int
    crop_y: int
    crop_x: int
    size: int
    pad_value: int

    @property
    def content_shape(self) -> tuple[int, int]:
        """(rows, cols) of image content at the top-left of the output; the rest is padding."""
        return (
            min(self.size, self.scaled_height - self.crop_y),
            min(self.size, self.scaled_width - self.crop_x),
        )

    def _check(self, shape: tuple[int, ...]) -> None:
        if tuple(shape) != (self.height, self.width):
            raise ValueError(
                f'array of size {tuple(shape)} given to a transform sampled for '
                f'{(self.height, self.width)}'
            )

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Transform an image (area interpolation when shrinking, bilinear when enlarging).

        :param image: uint8 (H, W, C) or (H, W).
        :return: uint8 (size, size, C) or (size, size), padded with ``pad_value``.
        """
        self._check(image.shape[:2])
        if self.flip:
            image = image[:, ::-1]
        shrink = self.scaled_height * self.scaled_width < self.height * self.width
        resized = cv2.resize(
            np.ascontiguousarray(image),
            (self.scaled_width, self.scaled_height),
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
        )
        rows, cols = self.content_shape
        out = np.full((self.size, self.size) + image.shape[2:], self.pad_value, image.dtype)
        out[:rows, :cols] = resized[
            self.crop_y : self.crop_y + rows, self.crop_x : self.crop_x + cols
        ].reshape((rows, cols) + image.shape[2:])
        return out

    def _source_indices(self) -> tuple[np.ndarray, np.ndarray]:
        # Nearest neighbour at pixel centres, the sampling grid the image resize uses too.
        rows, cols = self.content_shape
        ys = np.arange(self.crop_y, self.crop_y + rows)
        xs = np.arange(self.crop_x, self.crop_x + cols)
        src_y = ((ys + 0.5) * (self.height / self.scaled_height)).astype(np.int64)
        src_x = ((xs + 0.5) * (self.width / self.scaled_width)).astype(np.int64)
        src_y, src_x = np.minimum(src_y, self.height - 1), np.minimum(src_x, self.width - 1)
        if self.flip:
            src_x = self.width - 1 - src_x
        return src_y, src_x

    def apply_label_map(self, labels: np.ndarray, pad_value: int) -> np.ndarray:
        """Transform a label or panoptic-id map (nearest neighbour).

        :param labels: (H, W) integer map.
        :param pad_value: value of padded pixels (e.g. -1 or 255 = ignore, 0 = void id).
        :return: (size, size), same dtype.
        """
        self._check(labels.shape)
        src_y, src_x = self._source_indices()
        out = np.full((self.size, self.size), pad_value, labels.dtype)
        out[: len(src_y), : len(src_x)] = labels[src_y[:, None], src_x[None, :]]
        return out

    def apply_masks(self, masks: np.ndarray) -> np.ndarray:
        """Transform binary masks (nearest neighbour); padding is False.

        An object cropped away entirely gives an all-False mask: drop those before matching.

        :param masks: bool (N, H, W).
        :return: bool (N, size, size).
        """
        self._check(masks.shape[1:])
        src_y, src_x = self._source_indices()
        out = np.zeros((masks.shape[0], self.size, self.size), bool)
        out[:, : len(src_y), : len(src_x)] = masks[:, src_y[:, None], src_x[None, :]]
        return out

    def padding_mask(self) -> np.ndarray:
        """Where the output is padding.

        :return: bool (size, size), True on padded pixels.
        """
        out = np.ones((self.size, self.size), bool)
        rows, cols = self.content_shape
        out[:rows, :cols] = False
        return out


def sample_lsj(height: int, width: int, rng: np.random.Generator, cfg: LsjCfg) -> LsjTransform:
    """Draw one LSJ transform for an image of the given size.

    :param height: input height.
    :param width: input width.
    :param rng: the random generator (the only source of randomness).
    :param cfg: the settings.
    :return: the transform.
    """
    flip = bool(rng.random() < cfg.flip_prob)
    target = cfg.size * rng.uniform(cfg.min_scale, cfg.max_scale)
    scale = min(target / height, target / width)
    scaled_h, scaled_w = max(1, round(height * scale)), max(1, round(width * scale))
    crop_y = round(max(scaled_h - cfg.size, 0) * rng.random())
    crop_x = round(max(scaled_w - cfg.size, 0) * rng.random())
    return LsjTransform(
        height, width, flip, scaled_h, scaled_w, crop_y, crop_x, cfg.size, cfg.pad_value
    )


def large_scale_jitter(
    image: np.ndarray, masks: np.ndarray, rng: np.random.Generator, cfg: LsjCfg
) -> tuple[np.ndarray, np.ndarray, LsjTransform]:
    """Apply one random LSJ transform to an image and its masks.

    :param image: uint8 (H, W, 3).
    :param masks: bool (N, H, W).
    :param rng: the random generator.
    :param cfg: the settings.
    :return: image uint8 (S, S, 3), masks bool (N, S, S), and the transform (for label maps
        and ``padding_mask``), S = ``cfg.size``.
    """
    transform = sample_lsj(image.shape[0], image.shape[1], rng, cfg)
    return transform.apply_image(image), transform.apply_masks(masks), transform
