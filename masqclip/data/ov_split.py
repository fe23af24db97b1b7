"""Open-vocabulary category splits and the tool that writes base / novel / all COCO JSONs.

For COCO this is the standard 48 base / 17 novel split (method.md 2.3). From an instance
JSON ``<stem>.json`` it writes ``<stem>_seen48.json``, ``<stem>_unseen17.json`` and
``<stem>_instances65.json``. Each keeps only the annotations of its class subset and only
the images with at least one of them (crowd annotations count), so novel objects remain
present but unlabelled in the base images.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger('masqclip')

COCO_NOVEL_17 = (
    'umbrella', 'cow', 'cup', 'bus', 'keyboard', 'skateboard', 'dog', 'couch', 'tie',
    'snowboard', 'sink', 'elephant', 'cake', 'scissors', 'airplane', 'cat', 'knife',
)  # fmt: skip
COCO_BASE_48 = (
    'person', 'bicycle', 'car', 'motorcycle', 'train', 'truck', 'boat', 'bench', 'bird',
    'horse', 'sheep', 'bear', 'zebra', 'giraffe', 'backpack', 'handbag', 'suitcase', 'frisbee',
    'skis', 'kite', 'surfboard', 'bottle', 'fork', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'pizza', 'donut', 'chair', 'bed', 'toilet',
    'tv', 'laptop', 'mouse', 'remote', 'microwave', 'oven', 'toaster', 'refrigerator', 'book',
    'clock', 'vase', 'toothbrush',
)  # fmt: skip


@dataclass(frozen=True)
class CategorySplit:
    """A base / novel partition of category names.

    :param base: names of the classes seen in training.
    :param novel: names of the classes held out of training.
    """

    base: tuple[str, ...]
    novel: tuple[str, ...]

    def __post_init__(self) -> None:
        for part in (self.base, self.novel):
            if len(set(part)) != len(part):
                raise ValueError(f'a split lists a category twice: {sorted(part)}')
        both = set(self.base) & set(self.novel)
        if both:
            raise ValueError(f'categories {sorted(both)} are both base and novel')

    @property
    def all(self) -> tuple[str, ...]:
        """Base then novel names."""
        return self.base + self.novel


COCO_48_17 = CategorySplit(COCO_BASE_48, COCO_NOVEL_17)


def load_split(path: str | Path) -> CategorySplit:
    """Read a split file ``{"base": [names], "novel": [names]}``.

    :param path: the JSON file.
    :return: the split.
    """
    with Path(path).open() as f:
        data = json.load(f)
    if not isinstance(data, dict) or 'base' not in data or 'novel' not in data:
        raise ValueError(f'{path} must hold a JSON object {{"base": [...], "novel": [...]}}')
    return CategorySplit(tuple(data['base']), tuple(data['novel']))


def save_split(split: CategorySplit, path: str | Path) -> None:
    """Write a split file ``{"base": [names], "novel": [names]}``.

    :param split: the split.
    :param path: the JSON file to write.
    """
    with Path(path).open('w') as f:
        json.dump({'base': list(split.base), 'novel': list(split.novel)}, f, indent=1)


def filter_coco_instances(coco: dict, names: Sequence[str]) -> dict:
    """Keep only the categories ``names``, their annotations and the images having any.

    :param coco: a COCO instance JSON as a dict (not modified).
    :param names: category names to keep; each must be in ``coco['categories']``.
    :return: a new COCO dict; category ids are unchanged, the categories keep file order.
    """
    by_name = {c['name']: c for c in coco['categories']}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f'categories {missing} are not in the annotation file; check the split names '
            f'against its "categories" (e.g. {sorted(by_name)[:5]})'
        )
    keep_ids = {by_name[n]['id'] for n in names}
    annotations = [a for a in coco['annotations'] if a['category_id'] in keep_ids]
    image_ids = {a['image_id'] for a in annotations}
    out = {k: v for k, v in coco.items() if k not in ('images', 'annotations', 'categories')}
    out['images'] = [im for im in coco['images'] if im['id'] in image_ids]
    out['annotations'] = annotations
    out['categories'] = [c for c in coco['categories'] if c['id'] in keep_ids]
    return out


def write_ov_split(
    instances_json: str | Path, out_dir: str | Path, split: CategorySplit = COCO_48_17
) -> dict[str, Path]:
    """Write the seen (base), unseen (novel) and all-classes versions of an instance JSON.

    :param instances_json: e.g. ``instances_train2017.json``.
    :param out_dir: output folder (created).
    :param split: the category split; COCO 48/17 by default.
    :return: ``{'base': path, 'novel': path, 'all': path}``, named
        ``<stem>_seen<B>.json``, ``<stem>_unseen<N>.json``, ``<stem>_instances<B+N>.json``.
    """
    instances_json = Path(instances_json)
    with instances_json.open() as f:
        coco = json.load(f)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = instances_json.stem
    parts = {
        'base': (f'seen{len(split.base)}', split.base),
        'novel': (f'unseen{len(split.novel)}', split.novel),
        'all': (f'instances{len(split.all)}', split.all),
    }
    paths = {}
    for key, (suffix, names) in parts.items():
        subset = filter_coco_instances(coco, names)
        path = out_dir / f'{stem}_{suffix}.json'
        with path.open('w') as f:
            json.dump(subset, f)
        logger.info(
            '%s: %d images, %d annotations',
            path,
            len(subset['images']),
            len(subset['annotations']),
        )
        paths[key] = path
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``masqclip ov-split``."""
    parser.add_argument('instances_json', type=Path, help='e.g. instances_train2017.json')
    parser.add_argument('out_dir', type=Path, help='e.g. coco/annotations/ov_split_48_17')
    parser.add_argument(
        '--split',
        type=Path,
        default=None,
        help='JSON {"base": [...], "novel": [...]}; the COCO 48/17 split when omitted',
    )


def run(args: argparse.Namespace) -> int:
    """Write <stem>_seen<B>.json, <stem>_unseen<N>.json and <stem>_instances<B+N>.json from a
    COCO instance JSON."""
    split = COCO_48_17 if args.split is None else load_split(args.split)
    for key, path in write_ov_split(args.instances_json, args.out_dir, split).items():
        print(f'{key}: {path}')
    return 0
