"""Procedural scenes: a dataset a tiny CLIP and proposer can learn on a CPU in minutes.

Each scene has one to three textured stuff regions (sky, grass, brick, water) and a few
objects. An object's category is a colour and a fill pattern ("red striped"); its silhouette
(ellipse, polygon, blob, rectangle) is random and not part of the name, because a small
ViT trained from scratch learns colour and texture but not shape (design/demo-notes.md).

``write_dataset`` stores scenes in the real formats (COCO instance JSON with RLE masks and a
caption per image, COCO panoptic PNG + JSON, the images as PNG, the category split and its
open-vocabulary instance JSONs), so training and evaluation read them with the same readers
as COCO. ``generate_scene`` gives one scene in memory for on-the-fly training.
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util

from masqclip.data.coco import Category
from masqclip.data.io import write_image, write_panoptic_png
from masqclip.data.ov_split import CategorySplit, load_split, save_split, write_ov_split

COLOURS = {
    'red': (215, 40, 40),
    'green': (40, 165, 55),
    'blue': (45, 85, 220),
    'yellow': (235, 205, 35),
    'purple': (140, 55, 185),
}
PATTERNS = ('solid', 'striped', 'dotted', 'checkered', 'hollow')
THING_NAMES = tuple(f'{colour} {pattern}' for colour in COLOURS for pattern in PATTERNS)
STUFF_NAMES = ('sky', 'grass', 'brick', 'water')
CATEGORIES = tuple(Category(i + 1, n, True) for i, n in enumerate(THING_NAMES)) + tuple(
    Category(len(THING_NAMES) + i + 1, n, False) for i, n in enumerate(STUFF_NAMES)
)
"""Things have ids 1..25 (colour-major order), stuff 26..29."""

# Seven novel classes covering every colour and every pattern once or twice, so each word
# of a novel name also occurs in some base class (the demo measured 18/7 this way).
DEFAULT_NOVEL = (
    'red dotted', 'green checkered', 'blue hollow', 'yellow striped', 'purple solid',
    'blue dotted', 'yellow checkered',
)  # fmt: skip
DEFAULT_SPLIT = CategorySplit(
    tuple(n for n in THING_NAMES if n not in DEFAULT_NOVEL), DEFAULT_NOVEL
)

_SECONDARY = np.array((238, 238, 232), np.float32)
_SILHOUETTES = ('ellipse', 'polygon', 'blob', 'rectangle')


@dataclass(frozen=True)
class SceneCfg:
    """Scene-generator settings.

    :param height: image height in pixels.
    :param width: image width in pixels.
    :param min_objects: fewest objects per scene (before occlusion culling).
    :param max_objects: most objects per scene.
    :param min_stuff: fewest stuff regions.
    :param max_stuff: most stuff regions (at most 4).
    :param object_scale: range of an object's radius, relative to min(height, width).
    :param min_visible: an object occluded to below this fraction of its area is left out.
    :param min_area: an object with fewer visible pixels than this fraction of the image is
        left out.
    """

    height: int = 64
    width: int = 64
    min_objects: int = 1
    max_objects: int = 4
    min_stuff: int = 1
    max_stuff: int = 3
    object_scale: tuple[float, float] = (0.14, 0.32)
    min_visible: float = 0.5
    min_area: float = 0.006

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError('SceneCfg needs images of at least 16 x 16 pixels')
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError('SceneCfg needs 0 <= min_objects <= max_objects')
        if not 1 <= self.min_stuff <= self.max_stuff <= len(STUFF_NAMES):
            raise ValueError(f'SceneCfg needs 1 <= min_stuff <= max_stuff <= {len(STUFF_NAMES)}')


@dataclass(frozen=True)
class SceneSegment:
    """One segment of a scene.

    :param id: its value in ``Scene.panoptic``.
    :param category_id: index into ``CATEGORIES`` plus one.
    :param is_thing: True for an object, False for a stuff region.
    """

    id: int
    category_id: int
    is_thing: bool


@dataclass(frozen=True)
class Scene:
    """One generated scene.

    :param image: uint8 (H, W, 3) RGB.
    :param panoptic: int32 (H, W) segment ids; every pixel belongs to a segment.
    :param segments: stuff segments first, then objects in painting order.
    :param caption: the objects' names, largest first, then "on" and the stuff names, e.g.
        "red striped, blue dotted on grass and sky".
    """

    image: np.ndarray
    panoptic: np.ndarray
    segments: list[SceneSegment]
    caption: str

    def masks(self) -> np.ndarray:
        """The segments' masks.

        :return: bool (N, H, W), in ``segments`` order.
        """
        ids = np.array([s.id for s in self.segments], np.int32)
        return self.panoptic[None] == ids[:, None, None]


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _smooth_noise(
    rng: np.random.Generator, cells: tuple[int, int], shape: tuple[int, int]
) -> np.ndarray:
    return cv2.resize(
        rng.random(cells, dtype=np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR
    )


def _texture(name: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A procedural stuff texture over the whole image, float32 (H, W, 3) in [0, 255]."""
    h, w = yy.shape
    unit = min(h, w) / 64
    if name == 'sky':
        top, bottom = np.array((105, 165, 230), np.float32), np.array((175, 210, 242), np.float32)
        out = top + (bottom - top) * (yy / h)[..., None]
        cloud = np.clip((_smooth_noise(rng, (4, 4), (h, w)) - 0.55) * 3.0, 0.0, 1.0)[..., None]
        return out * (1 - cloud) + 250.0 * cloud
    if name == 'grass':
        streaks = _smooth_noise(rng, (max(2, h // 10), w), (h, w))
        v = (0.7 * streaks + 0.3 * rng.random((h, w), dtype=np.float32))[..., None]
        dark, light = np.array((35, 95, 25), np.float32), np.array((115, 185, 65), np.float32)
        return dark + (light - dark) * v
    if name == 'brick':
        bh = max(3, round(6 * unit))
        bw = 2 * bh
        oy, ox = rng.integers(0, bh), rng.integers(0, bw)
        row = (yy + oy) // bh
        xs = xx + ox + (row % 2) * (bw // 2)
        line = max(1.0, unit)
        mortar = ((yy + oy) % bh < line) | (xs % bw < line)
        tints = rng.uniform(0.75, 1.1, 16).astype(np.float32)
        tint = tints[((row * 5 + xs // bw) % 16).astype(np.int64)]
        out = np.array((165, 72, 48), np.float32) * tint[..., None]
        out[mortar] = (185, 180, 170)
        return out
    if name == 'water':
        f = np.float32(2 * np.pi / (7 * unit))
        phase = rng.uniform(0, 2 * np.pi, 2).astype(np.float32)
        s = np.sin(yy * f + 1.5 * np.sin(xx * f * 0.4 + phase[0]) + phase[1])
        glint = np.clip((s - 0.6) / 0.4, 0.0, 1.0)[..., None]
        base, high = np.array((30, 85, 155), np.float32), np.array((120, 170, 220), np.float32)
        return base + (high - base) * glint
    raise ValueError(f'unknown stuff texture {name!r}; expected one of {STUFF_NAMES}')


def _stuff_regions(
    rng: np.random.Generator, count: int, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    """Split the image into ``count`` wavy bands; returns int (H, W) band index."""
    if count == 1:
        return np.zeros(yy.shape, np.int64)
    h, w = yy.shape
    a = rng.uniform(-0.5, 0.5)
    along = xx * np.cos(a) - yy * np.sin(a)
    t = yy * np.cos(a) + xx * np.sin(a)
    t = t + rng.uniform(0.02, 0.08) * h * np.sin(
        along * rng.uniform(0.05, 0.2) * 64 / w + rng.uniform(0, 2 * np.pi)
    )
    lo, hi = t.min(), t.max()
    cuts = lo + (hi - lo) * (np.arange(1, count) + rng.uniform(-0.3, 0.3, count - 1)) / count
    return np.digitize(t, cuts)


def _outline(rng: np.random.Generator, kind: str, cx: float, cy: float, r: float) -> np.ndarray:
    """The silhouette's polygon, float (P, 2) x, y."""
    if kind == 'ellipse':
        theta = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        pts = np.stack([r * np.cos(theta), r * rng.uniform(0.45, 1.0) * np.sin(theta)], 1)
    elif kind == 'polygon':
        n = int(rng.integers(3, 8))
        theta = (np.arange(n) + rng.uniform(-0.25, 0.25, n)) * (2 * np.pi / n)
        radius = r * rng.uniform(0.8, 1.05, n)
        pts = np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1)
    elif kind == 'blob':
        theta = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        k = np.arange(2, 5)[:, None]
        wobble = rng.uniform(0.0, 0.16, (3, 1)) * np.sin(k * theta + rng.uniform(0, 6.3, (3, 1)))
        radius = r * (0.85 + wobble.sum(0))
        pts = np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1)
    else:
        half = r * np.array([1.0, rng.uniform(0.45, 1.0)])
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    angle = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rot.T + (cx, cy)


def _pattern(
    rng: np.random.Generator,
    pattern: str,
    yy: np.ndarray,
    xx: np.ndarray,
    outline: np.ndarray,
) -> np.ndarray | None:
    """Where the object shows its colour (elsewhere the light secondary); None = everywhere."""
    unit = min(yy.shape) / 64
    if pattern == 'solid':
        return None
    if pattern == 'hollow':
        ring = np.zeros(yy.shape, np.uint8)
        thickness = max(2, round(3 * unit))
        cv2.polylines(ring, [np.round(outline).astype(np.int32)], True, 1, 2 * thickness)
        return ring.astype(bool)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = yy * np.cos(theta) - xx * np.sin(theta)
    period = np.float32(rng.uniform(4.5, 6.5) * unit)
    pu, pv = rng.random(2).astype(np.float32)
    if pattern == 'striped':
        return (u / period + pu) % 1 < 0.5
    if pattern == 'checkered':
        cell = period  # twice the stripe width: tells the two apart at 64 px
        return (np.floor(u / cell + pu) + np.floor(v / cell + pv)) % 2 == 0
    du = (u / period + pu) % 1 - 0.5
    dv = (v / period + pv) % 1 - 0.5
    return du * du + dv * dv < 0.33**2


def generate_scene(rng: np.random.Generator, cfg: SceneCfg) -> Scene:
    """Generate one scene.

    :param rng: the random generator (the only source of randomness).
    :param cfg: the settings.
    :return: the scene.
    """
    h, w = cfg.height, cfg.width
    yy, xx = _grid(h, w)
    n_stuff = int(rng.integers(cfg.min_stuff, cfg.max_stuff + 1))
    stuff = rng.choice(len(STUFF_NAMES), n_stuff, replace=False)
    bands = _stuff_regions(rng, n_stuff, yy, xx)
    image = np.empty((h, w, 3), np.float32)
    for band, s in enumerate(stuff):
        inside = bands == band
        image[inside] = _texture(STUFF_NAMES[s], rng, yy, xx)[inside]
    panoptic = (bands + 1).astype(np.int32)

    # Occlusion culling on the silhouettes first, so no dropped object is ever painted.
    size = min(h, w)
    objects = []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        r = rng.uniform(*cfg.object_scale) * size
        cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
        outline = _outline(rng, _SILHOUETTES[rng.integers(len(_SILHOUETTES))], cx, cy, r)
        canvas = np.zeros((h, w), np.uint8)
        cv2.fillPoly(canvas, [np.round(outline).astype(np.int32)], 1)
        objects.append((int(rng.integers(len(THING_NAMES))), outline, canvas.astype(bool)))
    covered = np.zeros((h, w), bool)
    keep = []
    for thing, outline, mask in reversed(objects):
        area = int(mask.sum())
        visible = int((mask & ~covered).sum())
        if visible >= max(cfg.min_area * h * w, cfg.min_visible * area):
            keep.append((thing, outline, mask))
            covered |= mask

    segments = [
        SceneSegment(b + 1, len(THING_NAMES) + int(s) + 1, False) for b, s in enumerate(stuff)
    ]
    next_id = n_stuff + 1
    for thing, outline, mask in reversed(keep):
        colour_name, pattern = THING_NAMES[thing].split(' ')
        colour = np.clip(np.array(COLOURS[colour_name], np.float32) + rng.normal(0, 10, 3), 0, 255)
        where = _pattern(rng, pattern, yy, xx, outline)
        if where is None:
            image[mask] = colour
        else:
            image[mask] = np.where(where[mask][:, None], colour, _SECONDARY)
        panoptic[mask] = next_id
        segments.append(SceneSegment(next_id, thing + 1, True))
        next_id += 1

    ids, areas = np.unique(panoptic, return_counts=True)
    area = dict(zip(ids.tolist(), areas.tolist(), strict=True))
    segments = [s for s in segments if area.get(s.id, 0) > 0]
    things = sorted((s for s in segments if s.is_thing), key=lambda s: -area[s.id])
    stuff_names = [CATEGORIES[s.category_id - 1].name for s in segments if not s.is_thing]
    caption = ' and '.join(stuff_names)
    if things:
        caption = ', '.join(CATEGORIES[s.category_id - 1].name for s in things) + ' on ' + caption
    return Scene(image.astype(np.uint8), panoptic, segments, caption)


@dataclass(frozen=True)
class SyntheticPaths:
    """Where ``write_dataset`` put things.

    :param root: the dataset folder.
    :param image_dir: ``root/images``, one PNG per image.
    :param panoptic_dir: ``root/panoptic``, one COCO panoptic PNG per image.
    :param instances_json: ``root/annotations/instances.json`` (all 25 thing classes, RLE
        masks, ``images[i]['caption']``).
    :param panoptic_json: ``root/annotations/panoptic.json`` (things and stuff).
    :param split_json: ``root/split.json``, the base / novel thing names.
    :param ov_split: ``{'base', 'novel', 'all'}`` instance JSONs of ``write_ov_split``.
    """

    root: Path
    image_dir: Path
    panoptic_dir: Path
    instances_json: Path
    panoptic_json: Path
    panoptic_base_json: Path
    split_json: Path
    ov_split: dict[str, Path]


def _category_json(category: Category) -> dict:
    if category.is_thing:
        colour = COLOURS[category.name.split(' ')[0]]
    else:
        colour = (128 + 30 * STUFF_NAMES.index(category.name),) * 3
    return {
        'id': category.id,
        'name': category.name,
        'supercategory': 'thing' if category.is_thing else 'stuff',
        'isthing': int(category.is_thing),
        'color': list(colour),
    }


def _without_categories(coco_panoptic: dict, category_ids: set[int]) -> dict:
    """A COCO panoptic dict with the given categories and their segments removed."""
    return {
        **coco_panoptic,
        'annotations': [
            {**a, 'segments_info': [s for s in a['segments_info']
                                    if s['category_id'] not in category_ids]}
            for a in coco_panoptic['annotations']
        ],
        'categories': [c for c in coco_panoptic['categories'] if c['id'] not in category_ids],
    }  # fmt: skip


def write_dataset(
    out_dir: str | Path,
    num_images: int,
    cfg: SceneCfg = SceneCfg(),
    seed: int = 0,
    split: CategorySplit = DEFAULT_SPLIT,
) -> SyntheticPaths:
    """Generate scenes and write them as a COCO instance + panoptic dataset.

    Image ``i`` (id ``i + 1``) is drawn from ``np.random.default_rng([seed, i])``, so a
    dataset is reproducible and any prefix of a larger one is identical.

    :param out_dir: the dataset folder (created; existing files are overwritten).
    :param num_images: how many scenes.
    :param cfg: the scene settings.
    :param seed: the dataset seed.
    :param split: base / novel thing names (each one of ``THING_NAMES``).
    :return: the paths written.
    """
    unknown = [n for n in split.all if n not in THING_NAMES]
    if unknown:
        raise ValueError(f'split names {unknown} are not synthetic thing classes {THING_NAMES}')
    root = Path(out_dir)
    paths = SyntheticPaths(
        root=root,
        image_dir=root / 'images',
        panoptic_dir=root / 'panoptic',
        instances_json=root / 'annotations' / 'instances.json',
        panoptic_json=root / 'annotations' / 'panoptic.json',
        panoptic_base_json=root / 'annotations' / 'panoptic_base.json',
        split_json=root / 'split.json',
        ov_split={},
    )
    for folder in (paths.image_dir, paths.panoptic_dir, paths.instances_json.parent):
        folder.mkdir(parents=True, exist_ok=True)
    images, instances, panoptic = [], [], []
    ann_id = 1
    for i in range(num_images):
        scene = generate_scene(np.random.default_rng([seed, i]), cfg)
        name = f'{i + 1:06d}.png'
        write_image(paths.image_dir / name, scene.image)
        write_panoptic_png(paths.panoptic_dir / name, scene.panoptic)
        images.append(
            {
                'id': i + 1,
                'file_name': name,
                'height': cfg.height,
                'width': cfg.width,
                'caption': scene.caption,
            }
        )
        segments_info = []
        for segment, mask in zip(scene.segments, scene.masks(), strict=True):
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            bbox = [float(v) for v in mask_util.toBbox(rle)]
            area = int(mask.sum())
            segments_info.append(
                {
                    'id': segment.id,
                    'category_id': segment.category_id,
                    'area': area,
                    'bbox': bbox,
                    'iscrowd': 0,
                }
            )
            if segment.is_thing:
                instances.append(
                    {
                        'id': ann_id,
                        'image_id': i + 1,
                        'category_id': segment.category_id,
                        'segmentation': {'size': rle['size'], 'counts': rle['counts'].decode()},
                        'area': area,
                        'bbox': bbox,
                        'iscrowd': 0,
                    }
                )
                ann_id += 1
        panoptic.append({'image_id': i + 1, 'file_name': name, 'segments_info': segments_info})
    info = {'description': 'masqclip procedural scenes', 'seed': seed}
    things = [_category_json(c) for c in CATEGORIES if c.is_thing]
    with paths.instances_json.open('w') as f:
        json.dump(
            {'info': info, 'images': images, 'annotations': instances, 'categories': things}, f
        )
    all_categories = {'info': info, 'images': images, 'annotations': panoptic,
                      'categories': [_category_json(c) for c in CATEGORIES]}  # fmt: skip
    with paths.panoptic_json.open('w') as f:
        json.dump(all_categories, f)
    # Base things and all stuff: the panoptic training set of the open-vocabulary setting.
    # Novel objects stay in the images and PNGs but, unlisted, read as void (unannotated).
    novel_ids = {c.id for c in CATEGORIES if c.name in split.novel}
    with paths.panoptic_base_json.open('w') as f:
        json.dump(_without_categories(all_categories, novel_ids), f)
    save_split(split, paths.split_json)
    paths.ov_split.update(write_ov_split(paths.instances_json, paths.instances_json.parent, split))
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``masqclip synth``."""
    parser.add_argument('out_dir', type=Path, help='dataset folder to write')
    parser.add_argument('--num-images', type=int, default=1000, help='number of scenes')
    parser.add_argument('--size', type=int, default=64, help='image side in pixels')
    parser.add_argument('--min-objects', type=int, default=1)
    parser.add_argument('--max-objects', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--split',
        type=Path,
        default=None,
        help='JSON {"base": [...], "novel": [...]} of thing names; the default 18/7 when omitted',
    )


def run(args: argparse.Namespace) -> int:
    """Write procedural scenes as a COCO-format dataset."""
    cfg = SceneCfg(args.size, args.size, args.min_objects, args.max_objects)
    split = DEFAULT_SPLIT if args.split is None else load_split(args.split)
    paths = write_dataset(args.out_dir, args.num_images, cfg, args.seed, split)
    print(f'wrote {args.num_images} scenes to {paths.root}')
    return 0
