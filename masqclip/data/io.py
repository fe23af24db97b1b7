"""Image and label-map files: reading, writing and the COCO panoptic RGB <-> id encoding."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


class DatasetFormatError(ValueError):
    """A dataset file exists but does not have the expected format."""


def read_image(path: str | Path) -> np.ndarray:
    """Read a colour image file.

    :param path: an image file OpenCV can decode (PNG, JPEG, ...).
    :return: uint8 (H, W, 3) RGB.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'cannot read image {path}: check that the file exists')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB image (PNG is lossless; the extension picks the format).

    :param path: output file; its folder must exist.
    :param image: uint8 (H, W, 3) RGB or (H, W) grey.
    """
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), data):
        raise OSError(f'cannot write image {path}: check the folder exists and is writable')


def read_raw_labels(path: str | Path) -> np.ndarray:
    """Read a single-channel label file unchanged (8- or 16-bit PNG, 16-bit TIFF).

    :param path: the label file.
    :return: uint8 or uint16 (H, W) raw values.
    """
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise FileNotFoundError(f'cannot read label map {path}: check that the file exists')
    if labels.ndim != 2:
        raise DatasetFormatError(
            f'label map {path} has shape {labels.shape}; expected one channel (H, W)'
        )
    return labels


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Decode a COCO panoptic PNG's colours into segment ids, id = R + 256 G + 256^2 B.

    :param rgb: uint8 (H, W, 3) RGB.
    :return: int32 (H, W) segment ids; 0 is void.
    """
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Encode segment ids as COCO panoptic colours (inverse of ``rgb_to_id``).

    :param ids: integer (H, W) segment ids in [0, 256^3).
    :return: uint8 (H, W, 3) RGB.
    """
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError('panoptic segment ids must lie in [0, 256^3)')
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a COCO panoptic PNG.

    :param path: the PNG file.
    :return: int32 (H, W) segment ids; 0 is void.
    """
    return rgb_to_id(read_image(path))


def write_panoptic_png(path: str | Path, ids: np.ndarray) -> None:
    """Write segment ids as a COCO panoptic PNG.

    :param path: output ``.png`` file.
    :param ids: integer (H, W) segment ids; 0 is void.
    """
    write_image(path, id_to_rgb(ids))
