"""Readers for COCO instance JSON (polygons, RLE, crowd) and COCO panoptic (PNG + JSON).

Both return a ``CocoDataset``: the categories and one ``ImageRecord`` per image. Masks are
decoded only when asked for (``Annotation.mask``, ``ImageRecord.masks``), so a record list for
all of COCO stays small and pickles cheaply into loader workers.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from masqclip.data.io import DatasetFormatError, read_image, read_panoptic_png


@dataclass(frozen=True)
class Category:
    """One dataset category.

    :param id: the dataset's category id (COCO ids are not contiguous).
    :param name: the class name.
    :param is_thing: True for countable objects, False for stuff regions.
    """

    id: int
    name: str
    is_thing: bool = True


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> dict:
    """Convert any COCO ``segmentation`` (polygons, uncompressed or compressed RLE) to one
    compressed RLE.

    :param segmentation: a list of polygons ``[[x0, y0, x1, y1, ...], ...]`` or an RLE dict
        ``{'size': [h, w], 'counts': list | str | bytes}``.
    :param height: image height.
    :param width: image width.
    :return: compressed RLE dict (``counts`` is bytes).
    """
    if isinstance(segmentation, list):
        # Polygons with fewer than three points cannot be rasterised (a few exist in COCO).
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return mask_util.encode(np.zeros((height, width), np.uint8, order='F'))
        return mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and 'counts' in segmentation:
        counts = segmentation['counts']
        if isinstance(counts, list):
            return mask_util.frPyObjects(segmentation, height, width)
        if isinstance(counts, str):
            counts = counts.encode('ascii')
        return {'size': list(segmentation['size']), 'counts': counts}
    raise DatasetFormatError(
        f'unsupported COCO segmentation of type {type(segmentation).__name__}: expected a '
        'list of polygons or an RLE dict with "size" and "counts"'
    )


@dataclass(frozen=True)
class _RleSource:
    segmentation: Any
    height: int
    width: int

    def decode(self) -> np.ndarray:
        rle = segmentation_to_rle(self.segmentation, self.height, self.width)
        return mask_util.decode(rle).astype(bool)


@dataclass(frozen=True)
class _PanopticSource:
    png_path: str
    segment_id: int

    def decode(self) -> np.ndarray:
        return read_panoptic_png(self.png_path) == self.segment_id


@dataclass(frozen=True)
class Annotation:
    """One annotated object or (panoptic) stuff region.

    :param id: the annotation id (instance JSON) or the segment id (panoptic PNG value).
    :param category_id: the dataset category id.
    :param is_crowd: COCO ``iscrowd``: a group of objects, ignored by the metrics.
    :param is_thing: from the category (always True in an instance JSON).
    :param area: the area the JSON states, in pixels.
    :param bbox: x, y, width, height as the JSON states it.
    """

    id: int
    category_id: int
    is_crowd: bool
    is_thing: bool
    area: float
    bbox: tuple[float, float, float, float]
    _source: _RleSource | _PanopticSource = field(repr=False, compare=False)

    def mask(self) -> np.ndarray:
        """Decode this annotation's mask (a panoptic one reads its PNG each call).

        :return: bool (H, W).
        """
        return self._source.decode()


@dataclass(frozen=True)
class ImageRecord:
    """One image and its annotations.

    :param image_id: the dataset's image id.
    :param image_path: path of the image file.
    :param height: image height in pixels.
    :param width: image width in pixels.
    :param annotations: the image's annotations (things, and stuff for panoptic).
    :param panoptic_path: path of the panoptic PNG, None for an instance dataset.
    :param caption: the image's caption if the JSON has one (the synthetic dataset does).
    """

    image_id: int
    image_path: str
    height: int
    width: int
    annotations: list[Annotation]
    panoptic_path: str | None = None
    caption: str | None = None

    def load_image(self) -> np.ndarray:
        """Read the image.

        :return: uint8 (H, W, 3) RGB.
        """
        return read_image(self.image_path)

    def masks(self) -> np.ndarray:
        """Decode every annotation's mask (one PNG read for a panoptic record).

        :return: bool (N, H, W), in ``annotations`` order.
        """
        if not self.annotations:
            return np.zeros((0, self.height, self.width), bool)
        if self.panoptic_path is not None:
            ids = self.panoptic_ids()
            return np.stack([ids == a.id for a in self.annotations])
        return np.stack([a.mask() for a in self.annotations])

    def panoptic_ids(self) -> np.ndarray:
        """Read the panoptic segment-id map.

        :return: int32 (H, W); a pixel's value is an ``Annotation.id``, 0 is void.
        """
        if self.panoptic_path is None:
            raise ValueError(
                f'image {self.image_id} comes from an instance dataset and has no panoptic '
                'map: load the panoptic annotations with load_coco_panoptic'
            )
        return read_panoptic_png(self.panoptic_path)


@dataclass(frozen=True)
class CocoDataset:
    """A COCO-format dataset: its categories and image records.

    :param categories: every category of the JSON, in file order.
    :param records: one per image of the JSON, in file order.
    """

    categories: list[Category]
    records: list[ImageRecord]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ImageRecord:
        return self.records[index]

    def category(self, category_id: int) -> Category:
        """Look a category up by its dataset id.

        :param category_id: the dataset category id.
        :return: the category.
        """
        for category in self.categories:
            if category.id == category_id:
                return category
        raise KeyError(f'category id {category_id} is not in this dataset')


def _read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'annotation file {path} does not exist')
    with path.open() as f:
        data = json.load(f)
    for key in ('images', 'annotations', 'categories'):
        if key not in data:
            raise DatasetFormatError(f'{path} has no "{key}" list: is it a COCO JSON?')
    return data


def _bbox(value: Any) -> tuple[float, float, float, float]:
    return tuple(float(v) for v in value) if value else (0.0, 0.0, 0.0, 0.0)


def load_coco_instances(json_path: str | Path, image_dir: str | Path) -> CocoDataset:
    """Read a COCO instance-segmentation JSON.

    :param json_path: e.g. ``annotations/instances_val2017.json``.
    :param image_dir: the folder the images' ``file_name`` are relative to.
    :return: the dataset; every annotation has ``is_thing`` True.
    """
    data = _read_json(json_path)
    categories = [
        Category(int(c['id']), str(c['name']), bool(c.get('isthing', 1)))
        for c in data['categories']
    ]
    per_image: dict[int, list[dict]] = defaultdict(list)
    for ann in data['annotations']:
        per_image[int(ann['image_id'])].append(ann)
    records = []
    for image in data['images']:
        h, w = int(image['height']), int(image['width'])
        annotations = [
            Annotation(
                id=int(ann['id']),
                category_id=int(ann['category_id']),
                is_crowd=bool(ann.get('iscrowd', 0)),
                is_thing=True,
                area=float(ann.get('area', 0.0)),
                bbox=_bbox(ann.get('bbox')),
                _source=_RleSource(ann['segmentation'], h, w),
            )
            for ann in per_image[int(image['id'])]
        ]
        records.append(
            ImageRecord(
                image_id=int(image['id']),
                image_path=str(Path(image_dir) / image['file_name']),
                height=h,
                width=w,
                annotations=annotations,
                caption=image.get('caption'),
            )
        )
    return CocoDataset(categories, records)


def load_coco_panoptic(
    json_path: str | Path, panoptic_dir: str | Path, image_dir: str | Path
) -> CocoDataset:
    """Read a COCO panoptic dataset (JSON + one PNG per image, id = R + 256 G + 256^2 B).

    :param json_path: e.g. ``annotations/panoptic_val2017.json``.
    :param panoptic_dir: the folder of the panoptic PNGs (``annotations[i]['file_name']``).
    :param image_dir: the folder of the images (``images[i]['file_name']``).
    :return: the dataset; ``Annotation.id`` is the segment id, ``is_thing`` from the
        categories' ``isthing``.
    """
    data = _read_json(json_path)
    categories = [
        Category(int(c['id']), str(c['name']), bool(c.get('isthing', 1)))
        for c in data['categories']
    ]
    is_thing = {c.id: c.is_thing for c in categories}
    by_image = {int(a['image_id']): a for a in data['annotations']}
    records = []
    for image in data['images']:
        image_id = int(image['id'])
        if image_id not in by_image:
            raise DatasetFormatError(
                f'{json_path} has no panoptic annotation for image {image_id}'
            )
        pan = by_image[image_id]
        png_path = str(Path(panoptic_dir) / pan['file_name'])
        annotations = []
        for seg in pan['segments_info']:
            category_id = int(seg['category_id'])
            if category_id not in is_thing:
                raise DatasetFormatError(
                    f'{json_path}: segment {seg["id"]} of image {image_id} has category '
                    f'{category_id}, which is not in "categories"'
                )
            annotations.append(
                Annotation(
                    id=int(seg['id']),
                    category_id=category_id,
                    is_crowd=bool(seg.get('iscrowd', 0)),
                    is_thing=is_thing[category_id],
                    area=float(seg.get('area', 0.0)),
                    bbox=_bbox(seg.get('bbox')),
                    _source=_PanopticSource(png_path, int(seg['id'])),
                )
            )
        records.append(
            ImageRecord(
                image_id=image_id,
                image_path=str(Path(image_dir) / image['file_name']),
                height=int(image['height']),
                width=int(image['width']),
                annotations=annotations,
                panoptic_path=png_path,
                caption=image.get('caption'),
            )
        )
    return CocoDataset(categories, records)
