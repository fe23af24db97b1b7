"""Reader for semantic-segmentation datasets stored as one label map per image (ADE20K,
PASCAL Context, COCO-Stuff style).

Conventions of the common releases (method.md 4.2, trap 19):

- ADE20K-150 raw ``ADEChallengeData2016``: PNG, 0 = "other", classes 1..150: use
  ``label_offset=-1`` (0 becomes ignored); its detectron2-prepared copy is already 0..149
  with 255 = ignore (``label_offset=0``).
- ADE20K-847 and PASCAL Context-459: 16-bit TIFF, ignore 65535.
- PASCAL Context-59: 8-bit PNG, ignore 255; the image list is ``val.txt``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from masqclip.data.io import read_image, read_raw_labels

IGNORE_LABEL = -1
"""Value of ignored pixels in the label maps this module returns."""


def read_label_map(path: str | Path, ignore_value: int = 255, label_offset: int = 0) -> np.ndarray:
    """Read a label map and map it to contiguous class indices.

    :param path: an 8-bit PNG or a 16-bit PNG/TIFF.
    :param ignore_value: the raw value marking ignored pixels (255 for 8-bit, 65535 for
        16-bit releases).
    :param label_offset: added to every raw value; values that become negative are ignored
        (``-1`` turns ADE's 0 = "other" into ignore and 1..150 into 0..149).
    :return: int32 (H, W) class indices, ``IGNORE_LABEL`` (-1) where ignored.
    """
    raw = read_raw_labels(path)
    labels = raw.astype(np.int32) + label_offset
    labels[(raw == ignore_value) | (labels < 0)] = IGNORE_LABEL
    return labels


@dataclass(frozen=True)
class SemanticRecord:
    """One image of a semantic-segmentation dataset.

    :param image_id: the file stem shared by the image and its label map.
    :param image_path: the image file.
    :param label_path: the label-map file.
    :param ignore_value: see ``read_label_map``.
    :param label_offset: see ``read_label_map``.
    """

    image_id: str
    image_path: str
    label_path: str
    ignore_value: int = 255
    label_offset: int = 0

    def load_image(self) -> np.ndarray:
        """Read the image.

        :return: uint8 (H, W, 3) RGB.
        """
        return read_image(self.image_path)

    def load_labels(self) -> np.ndarray:
        """Read the label map.

        :return: int32 (H, W) class indices, ``IGNORE_LABEL`` (-1) where ignored.
        """
        return read_label_map(self.label_path, self.ignore_value, self.label_offset)


def load_semantic_dataset(
    image_dir: str | Path,
    label_dir: str | Path,
    *,
    image_ext: str = '.jpg',
    label_ext: str = '.png',
    ignore_value: int = 255,
    label_offset: int = 0,
    ids: Iterable[str] | None = None,
) -> list[SemanticRecord]:
    """Pair images with label maps by file stem.

    :param image_dir: folder of the images.
    :param label_dir: folder of the label maps.
    :param image_ext: extension of the image files, with the dot.
    :param label_ext: extension of the label files (``.png``, ``.tif``).
    :param ignore_value: see ``read_label_map``.
    :param label_offset: see ``read_label_map``.
    :param ids: only these stems (e.g. the lines of PASCAL Context's ``val.txt``); every
        label map of ``label_dir`` when None.
    :return: records sorted by stem.
    """
    image_dir, label_dir = Path(image_dir), Path(label_dir)
    if not label_dir.is_dir():
        raise FileNotFoundError(f'label folder {label_dir} does not exist')
    if ids is None:
        stems = sorted(p.stem for p in label_dir.glob(f'*{label_ext}'))
    else:
        stems = sorted({s.strip() for s in ids if s.strip()})
    records = []
    for stem in stems:
        image_path, label_path = image_dir / f'{stem}{image_ext}', label_dir / f'{stem}{label_ext}'
        for path in (image_path, label_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f'{path} does not exist: check image_dir, label_dir and the extensions'
                )
        records.append(
            SemanticRecord(stem, str(image_path), str(label_path), ignore_value, label_offset)
        )
    if not records:
        raise FileNotFoundError(f'no *{label_ext} label maps found in {label_dir}')
    return records
