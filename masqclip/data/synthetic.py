"""Procedural scenes: a dataset a tiny CLIP and proposer can learn on a CPU in minutes.

Each scene has one to three textured stuff regions (sky, grass, brick, water) and a few
objects. An object's category is a colour and a fill pattern ("red striped"); its silhouette
(ellipse, polygon, blob, rectangle) is random and not part of the name, because a small
ViT trained from scratch learns colour and texture but not shape (design/demo-notes.md).

``write_dataset`` stores scenes in the real formats (COCO instance JSON with RLE masks and a
caption per image, COCO panoptic PNG + JSON, the images as PNG, the category split and its
open-vocabulary instance JSONs), so training and evaluation read them with the same readers
as COCO. ``generate_scene`` gives one scene in memory for on-the-fly training.

The drawing primitives (``sample_background``, ``sample_shape``, ``sample_look``,
``paint_object``, ``finish_scene``) and ``CocoWriter`` are shared with
``masqclip.data.sequences``, which draws every frame of a moving sequence with them.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util

from masqclip.data.coco import Category
from masqclip.data.io import id_to_rgb
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

SECONDARY = np.array((238, 238, 232), np.float32)
"""The light colour of a patterned object's other half (and of a hollow one's inside)."""
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
    :param min_visible: an object occluded to below this fraction of its area is left out
        (single scenes only: a sequence keeps its objects and lets them be occluded).
    :param min_area: an object with fewer visible pixels than this fraction of the image is
        left out (in a sequence frame: its pixels are void, unannotated).
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
    :param track_id: the object's track in a sequence (1, 2, ...); None in a single scene.
    """

    id: int
    category_id: int
    is_thing: bool
    track_id: int | None = None


@dataclass(frozen=True)
class Scene:
    """One generated scene.

    :param image: uint8 (H, W, 3) RGB.
    :param panoptic: int32 (H, W) segment ids; every pixel of a single scene belongs to a
        segment; in a sequence frame 0 marks void (a sliver of an object below ``min_area``).
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
def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Read-only float32 (H, W) row and column coordinates, ``yy, xx`` (cached)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def texture_unit(height: int, width: int) -> float:
    """Pixels per unit of texture and pattern detail: sizes are designed at 64 px."""
    return min(height, width) / 64


def _smooth_noise(
    rng: np.random.Generator, cells: tuple[int, int], shape: tuple[int, int]
) -> np.ndarray:
    return cv2.resize(
        rng.random(cells, dtype=np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR
    )


def _texture(
    name: str,
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    unit: float,
    grain: float,
) -> np.ndarray:
    """A procedural stuff texture over the whole grid, float32 (H, W, 3) in [0, 255]."""
    h, w = yy.shape
    if name == 'sky':
        top, bottom = np.array((105, 165, 230), np.float32), np.array((175, 210, 242), np.float32)
        out = top + (bottom - top) * (yy / h)[..., None]
        cloud = np.clip((_smooth_noise(rng, (4, 4), (h, w)) - 0.55) * 3.0, 0.0, 1.0)[..., None]
        return out * (1 - cloud) + 250.0 * cloud
    if name == 'grass':
        cells = (max(1, round(h / grain)), max(1, round(w / grain)))
        streaks = _smooth_noise(rng, (max(2, int(h / (10 * grain))), cells[1]), (h, w))
        v = (0.7 * streaks + 0.3 * _smooth_noise(rng, cells, (h, w)))[..., None]
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


@dataclass(frozen=True)
class Background:
    """The stuff layer: textured bands under the objects.

    :param stuff: int (B,) indices into ``STUFF_NAMES``, one per band.
    :param bands: int (H, W) band index of each pixel.
    :param image: float32 (H, W, 3) the painted textures, in [0, 255].
    """

    stuff: np.ndarray
    bands: np.ndarray
    image: np.ndarray

    def segments(self) -> list[SceneSegment]:
        """One stuff segment per band, with ids 1..B (band index plus one)."""
        return [
            SceneSegment(b + 1, len(THING_NAMES) + int(s) + 1, False)
            for b, s in enumerate(self.stuff)
        ]


def sample_background(
    rng: np.random.Generator,
    cfg: SceneCfg,
    yy: np.ndarray,
    xx: np.ndarray,
    unit: float,
    grain: float = 1.0,
) -> Background:
    """Draw the stuff bands and their textures over the grid ``yy, xx``.

    :param cfg: gives the number of stuff regions.
    :param unit: ``texture_unit`` of the image the grid belongs to (a sequence's world is
        larger than its frames, its textures are not coarser).
    :param grain: pixels per cell of the grass's fine noise. Single scenes keep 1 (their
        output never changes); sequences use ``unit``, so that a frame scaled down to 64 px
        has the grass of a 64-px scene (and its JPEG stays small).
    """
    n_stuff = int(rng.integers(cfg.min_stuff, cfg.max_stuff + 1))
    stuff = rng.choice(len(STUFF_NAMES), n_stuff, replace=False)
    bands = _stuff_regions(rng, n_stuff, yy, xx)
    image = np.empty((*yy.shape, 3), np.float32)
    for band, s in enumerate(stuff):
        inside = bands == band
        image[inside] = _texture(STUFF_NAMES[s], rng, yy, xx, unit, grain)[inside]
    return Background(stuff, bands, image)


def sample_shape(rng: np.random.Generator, r: float) -> np.ndarray:
    """A random silhouette of radius about ``r`` around the origin, float (P, 2) x, y."""
    kind = _SILHOUETTES[rng.integers(len(_SILHOUETTES))]
    if kind == 'ellipse':
        theta = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        return np.stack([r * np.cos(theta), r * rng.uniform(0.45, 1.0) * np.sin(theta)], 1)
    if kind == 'polygon':
        n = int(rng.integers(3, 8))
        theta = (np.arange(n) + rng.uniform(-0.25, 0.25, n)) * (2 * np.pi / n)
        radius = r * rng.uniform(0.8, 1.05, n)
        return np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1)
    if kind == 'blob':
        theta = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        k = np.arange(2, 5)[:, None]
        wobble = rng.uniform(0.0, 0.16, (3, 1)) * np.sin(k * theta + rng.uniform(0, 6.3, (3, 1)))
        radius = r * (0.85 + wobble.sum(0))
        return np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1)
    half = r * np.array([1.0, rng.uniform(0.45, 1.0)])
    return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half


def posed(shape: np.ndarray, angle: float, cx: float, cy: float) -> np.ndarray:
    """The silhouette rotated by ``angle`` and centred on (cx, cy), float (P, 2) x, y."""
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return shape @ rot.T + (cx, cy)


def silhouette_mask(outline: np.ndarray, height: int, width: int) -> np.ndarray:
    """The pixels a posed silhouette covers inside an image, bool (H, W)."""
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, [np.round(outline).astype(np.int32)], 1)
    return canvas.astype(bool)


@dataclass(frozen=True)
class Look:
    """How an object looks wherever it is drawn.

    :param thing: index into ``THING_NAMES``.
    :param colour: (3,) RGB, the class colour with a little noise.
    :param phase: (angle, period, u offset, v offset) of a striped, checkered or dotted
        pattern; None for solid and hollow.
    """

    thing: int
    colour: np.ndarray
    phase: tuple[float, np.float32, np.float32, np.float32] | None

    @property
    def pattern(self) -> str:
        return THING_NAMES[self.thing].split(' ')[1]


def sample_look(rng: np.random.Generator, thing: int, unit: float) -> Look:
    """Draw an object's colour noise and pattern phase (``unit`` scales the pattern)."""
    colour_name, pattern = THING_NAMES[thing].split(' ')
    colour = np.clip(np.array(COLOURS[colour_name], np.float32) + rng.normal(0, 10, 3), 0, 255)
    if pattern in ('solid', 'hollow'):
        return Look(thing, colour, None)
    theta = rng.uniform(0, np.pi)
    period = np.float32(rng.uniform(4.5, 6.5) * unit)
    pu, pv = rng.random(2).astype(np.float32)
    return Look(thing, colour, (theta, period, pu, pv))


def _pattern(
    look: Look, outline: np.ndarray, mask: np.ndarray, px: np.ndarray, py: np.ndarray, unit: float
) -> np.ndarray | None:
    """Where, among the mask's pixels, the object shows its colour (elsewhere the light
    secondary); None = everywhere."""
    if look.pattern == 'solid':
        return None
    if look.pattern == 'hollow':
        ring = np.zeros(mask.shape, np.uint8)
        thickness = max(2, round(3 * unit))
        cv2.polylines(ring, [np.round(outline).astype(np.int32)], True, 1, 2 * thickness)
        return ring.astype(bool)[mask]
    theta, period, pu, pv = look.phase
    u = px * np.cos(theta) + py * np.sin(theta)
    v = py * np.cos(theta) - px * np.sin(theta)
    if look.pattern == 'striped':
        return (u / period + pu) % 1 < 0.5
    if look.pattern == 'checkered':
        cell = period  # twice the stripe width: tells the two apart at 64 px
        return (np.floor(u / cell + pu) + np.floor(v / cell + pv)) % 2 == 0
    du = (u / period + pu) % 1 - 0.5
    dv = (v / period + pv) % 1 - 0.5
    return du * du + dv * dv < 0.33**2


def paint_object(
    image: np.ndarray,
    look: Look,
    outline: np.ndarray,
    mask: np.ndarray,
    px: np.ndarray,
    py: np.ndarray,
    unit: float,
) -> None:
    """Paint an object over ``image`` (float32 (H, W, 3), in place).

    :param outline: its posed silhouette in image coordinates (for the hollow ring).
    :param mask: bool (H, W), the pixels it covers.
    :param px: float (N,) pattern coordinates of the mask's pixels: the image coordinates
        for a still scene, the object's own coordinates when it moves (the pattern moves
        with it).
    :param py: the same, y.
    """
    where = _pattern(look, outline, mask, px, py, unit)
    if where is None:
        image[mask] = look.colour
    else:
        image[mask] = np.where(where[:, None], look.colour, SECONDARY)


def finish_scene(
    image: np.ndarray, panoptic: np.ndarray, segments: list[SceneSegment], min_pixels: float
) -> Scene:
    """Turn painted layers into a ``Scene``: objects showing fewer than ``min_pixels`` become
    void (0), segments with no pixel left are dropped, and the caption is written.

    :param image: float32 (H, W, 3) in [0, 255].
    :param panoptic: int32 (H, W) segment ids, changed in place.
    :param segments: stuff first, then objects in painting order.
    """
    ids, areas = np.unique(panoptic, return_counts=True)
    area = dict(zip(ids.tolist(), areas.tolist(), strict=True))
    slivers = [s.id for s in segments if s.is_thing and area.get(s.id, 0) < min_pixels]
    panoptic[np.isin(panoptic, slivers)] = 0
    segments = [s for s in segments if area.get(s.id, 0) > 0 and s.id not in slivers]
    things = sorted((s for s in segments if s.is_thing), key=lambda s: -area[s.id])
    stuff_names = [CATEGORIES[s.category_id - 1].name for s in segments if not s.is_thing]
    caption = ' and '.join(stuff_names)
    if things:
        caption = ', '.join(CATEGORIES[s.category_id - 1].name for s in things) + ' on ' + caption
    return Scene(image.astype(np.uint8), panoptic, segments, caption)


def generate_scene(rng: np.random.Generator, cfg: SceneCfg) -> Scene:
    """Generate one scene.

    :param rng: the random generator (the only source of randomness).
    :param cfg: the settings.
    :return: the scene.
    """
    h, w = cfg.height, cfg.width
    yy, xx = pixel_grid(h, w)
    unit = texture_unit(h, w)
    background = sample_background(rng, cfg, yy, xx, unit)
    image = background.image
    panoptic = (background.bands + 1).astype(np.int32)

    # Occlusion culling on the silhouettes first, so no dropped object is ever painted.
    size = min(h, w)
    objects = []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        r = rng.uniform(*cfg.object_scale) * size
        cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
        shape = sample_shape(rng, r)
        outline = posed(shape, rng.uniform(0, np.pi), cx, cy)
        mask = silhouette_mask(outline, h, w)
        objects.append((int(rng.integers(len(THING_NAMES))), outline, mask))
    covered = np.zeros((h, w), bool)
    keep = []
    for thing, outline, mask in reversed(objects):
        area = int(mask.sum())
        visible = int((mask & ~covered).sum())
        if visible >= max(cfg.min_area * h * w, cfg.min_visible * area):
            keep.append((thing, outline, mask))
            covered |= mask

    segments = background.segments()
    next_id = len(segments) + 1
    for thing, outline, mask in reversed(keep):
        look = sample_look(rng, thing, unit)
        paint_object(image, look, outline, mask, xx[mask], yy[mask], unit)
        panoptic[mask] = next_id
        segments.append(SceneSegment(next_id, thing + 1, True))
        next_id += 1
    # Culling left every object at least min_area visible: nothing becomes void here.
    return finish_scene(image, panoptic, segments, cfg.min_area * h * w)


@dataclass(frozen=True)
class CocoPaths:
    """Where ``CocoWriter`` puts a dataset's files.

    :param root: the dataset folder.
    :param image_dir: ``root/images``, one PNG (or JPEG) per image.
    :param panoptic_dir: ``root/panoptic``, one COCO panoptic PNG per image.
    :param instances_json: ``root/annotations/instances.json`` (all 25 thing classes, RLE
        masks, ``images[i]['caption']``).
    :param panoptic_json: ``root/annotations/panoptic.json`` (things and stuff).
    :param split_json: ``root/split.json``, the base / novel thing names.
    """

    root: Path
    image_dir: Path
    panoptic_dir: Path
    instances_json: Path
    panoptic_json: Path
    split_json: Path

    @staticmethod
    def layout(root: Path) -> dict[str, Path]:
        """The fields for a dataset under ``root``."""
        return {
            'root': root,
            'image_dir': root / 'images',
            'panoptic_dir': root / 'panoptic',
            'instances_json': root / 'annotations' / 'instances.json',
            'panoptic_json': root / 'annotations' / 'panoptic.json',
            'split_json': root / 'split.json',
        }


@dataclass(frozen=True)
class SyntheticPaths(CocoPaths):
    """Where ``write_dataset`` put things: ``CocoPaths`` and the training files.

    :param panoptic_base_json: ``root/annotations/panoptic_base.json`` (base things, stuff).
    :param ov_split: ``{'base', 'novel', 'all'}`` instance JSONs of ``write_ov_split``.
    """

    panoptic_base_json: Path
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


def _segment_annotations(
    scene: Scene, image_id: int, first_annotation_id: int
) -> tuple[list[dict], list[dict]]:
    """A scene's COCO panoptic ``segments_info`` and its COCO instance annotations (things);
    a sequence's objects carry their ``track_id`` in both."""
    segments_info, instances = [], []
    for segment, mask in zip(scene.segments, scene.masks(), strict=True):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        bbox = [float(v) for v in mask_util.toBbox(rle)]
        area = int(mask.sum())
        track = {} if segment.track_id is None else {'track_id': segment.track_id}
        segments_info.append(
            {
                'id': segment.id,
                'category_id': segment.category_id,
                'area': area,
                'bbox': bbox,
                'iscrowd': 0,
                **track,
            }
        )
        if segment.is_thing:
            instances.append(
                {
                    'id': first_annotation_id + len(instances),
                    'image_id': image_id,
                    'category_id': segment.category_id,
                    'segmentation': {'size': rle['size'], 'counts': rle['counts'].decode()},
                    'area': area,
                    'bbox': bbox,
                    'iscrowd': 0,
                    **track,
                }
            )
    return segments_info, instances


def write_encoded(path: Path, image: np.ndarray, params: Sequence[int] = ()) -> None:
    """Write an image as ``io.write_image`` does, with OpenCV encoder parameters.

    :param path: output file; its extension picks the format.
    :param image: uint8 (H, W, 3) RGB, or (H, W) grey (uint16 for a 16-bit PNG).
    :param params: e.g. ``(cv2.IMWRITE_JPEG_QUALITY, 60)``; none = OpenCV's defaults.
    """
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), data, list(params)):
        raise OSError(f'cannot write image {path}: check the folder exists and is writable')


class CocoWriter:
    """Writes scenes one at a time as a COCO instance + panoptic dataset, so a long sequence
    never has to sit in memory.

    Image ``k`` (from 1) is ``images/00000k.png`` (``.jpg`` with a JPEG quality) with its
    panoptic PNG ``panoptic/00000k.png``; ``close`` writes the two JSONs and the split.
    """

    def __init__(
        self,
        paths: CocoPaths,
        jpeg_quality: int | None = None,
        png_compression: int | None = None,
    ) -> None:
        """:param jpeg_quality: store the images as JPEG of this quality (1-100), not PNG.
        :param png_compression: zlib level (0-9) of the PNGs; None = OpenCV's default, as
            the scene datasets have always been written.
        """
        if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
            raise ValueError(f'JPEG quality must lie in 1..100, got {jpeg_quality}')
        for folder in (paths.image_dir, paths.panoptic_dir, paths.instances_json.parent):
            folder.mkdir(parents=True, exist_ok=True)
        self.paths = paths
        self._png = (
            () if png_compression is None else (cv2.IMWRITE_PNG_COMPRESSION, png_compression)
        )
        if jpeg_quality is None:
            self._image_ext, self._image_params = '.png', self._png
        else:
            jpeg = (cv2.IMWRITE_JPEG_QUALITY, jpeg_quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1)
            self._image_ext, self._image_params = '.jpg', jpeg
        self._images: list[dict] = []
        self._instances: list[dict] = []
        self._panoptic: list[dict] = []

    def add(self, scene: Scene, **image_fields: object) -> list[dict]:
        """Write one scene's image and panoptic PNG and keep its annotations.

        :param image_fields: more keys of its ``images`` entry (a sequence frame's
            ``video_id`` and ``frame_index``).
        :return: its instance annotations.
        """
        image_id = len(self._images) + 1
        stem = f'{image_id:06d}'
        name = stem + self._image_ext
        write_encoded(self.paths.image_dir / name, scene.image, self._image_params)
        panoptic_name = f'{stem}.png'
        write_encoded(
            self.paths.panoptic_dir / panoptic_name, id_to_rgb(scene.panoptic), self._png
        )
        height, width = scene.panoptic.shape
        self._images.append(
            {
                'id': image_id,
                'file_name': name,
                'height': height,
                'width': width,
                'caption': scene.caption,
                **image_fields,
            }
        )
        segments_info, instances = _segment_annotations(scene, image_id, len(self._instances) + 1)
        self._instances += instances
        self._panoptic.append(
            {'image_id': image_id, 'file_name': panoptic_name, 'segments_info': segments_info}
        )
        return instances

    def close(self, info: dict, split: CategorySplit, **extra: list) -> dict:
        """Write the instance and panoptic JSONs and the split file.

        :param info: the JSONs' ``info``.
        :param extra: more top-level keys of both JSONs (a sequence's ``videos``, ``tracks``).
        :return: the panoptic JSON's content.
        """
        things = [_category_json(c) for c in CATEGORIES if c.is_thing]
        instances = {'info': info, 'images': self._images, 'annotations': self._instances,
                     'categories': things, **extra}  # fmt: skip
        with self.paths.instances_json.open('w') as f:
            json.dump(instances, f)
        panoptic = {'info': info, 'images': self._images, 'annotations': self._panoptic,
                    'categories': [_category_json(c) for c in CATEGORIES], **extra}  # fmt: skip
        with self.paths.panoptic_json.open('w') as f:
            json.dump(panoptic, f)
        save_split(split, self.paths.split_json)
        return panoptic


def check_split(split: CategorySplit) -> None:
    """Raise ValueError unless every name of ``split`` is one of ``THING_NAMES``."""
    unknown = [n for n in split.all if n not in THING_NAMES]
    if unknown:
        raise ValueError(f'split names {unknown} are not synthetic thing classes {THING_NAMES}')


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
    scenes = (generate_scene(np.random.default_rng([seed, i]), cfg) for i in range(num_images))
    info = {'description': 'masqclip procedural scenes', 'seed': seed}
    return write_scenes(out_dir, scenes, info, split)


def write_scenes(
    out_dir: str | Path,
    scenes: Iterable[Scene],
    info: dict,
    split: CategorySplit = DEFAULT_SPLIT,
) -> SyntheticPaths:
    """Write scenes (of any sizes, e.g. scenes and sequence frames mixed) as
    ``write_dataset`` does, with the open-vocabulary training files.

    :param out_dir: the dataset folder (created; existing files are overwritten).
    :param scenes: image ``i`` (id ``i + 1``) is the ``i``-th scene.
    :param info: the JSONs' ``info``.
    :param split: base / novel thing names (each one of ``THING_NAMES``).
    :return: the paths written.
    """
    check_split(split)
    root = Path(out_dir)
    paths = SyntheticPaths(
        **CocoPaths.layout(root),
        panoptic_base_json=root / 'annotations' / 'panoptic_base.json',
        ov_split={},
    )
    writer = CocoWriter(paths)
    for scene in scenes:
        writer.add(scene)
    all_categories = writer.close(info, split)
    # Base things and all stuff: the panoptic training set of the open-vocabulary setting.
    # Novel objects stay in the images and PNGs but, unlisted, read as void (unannotated).
    novel_ids = {c.id for c in CATEGORIES if c.name in split.novel}
    with paths.panoptic_base_json.open('w') as f:
        json.dump(_without_categories(all_categories, novel_ids), f)
    paths.ov_split.update(write_ov_split(paths.instances_json, paths.instances_json.parent, split))
    return paths


def image_size(text: str) -> tuple[int, int]:
    """Parse ``--size``: ``N`` (square) or ``WIDTHxHEIGHT``; returns (height, width)."""
    match = re.fullmatch(r'(\d+)(?:x(\d+))?', text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f'size {text!r} is not N or WIDTHxHEIGHT')
    width, height = match.groups()
    return int(height or width), int(width)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``masqclip synth``."""
    # Sequences build on this module's drawing code: that module imports this one.
    from masqclip.data import sequences

    sequence = sequences.SequenceCfg().scene
    parser.add_argument('out_dir', type=Path, help='dataset folder to write')
    parser.add_argument('--num-images', type=int, default=1000, help='number of scenes')
    parser.add_argument(
        '--size',
        type=image_size,
        default=None,
        help=f'image side N or WIDTHxHEIGHT (default: 64 for scenes, '
        f'{sequence.width}x{sequence.height} for --sequence)',
    )
    parser.add_argument(
        '--min-objects',
        type=int,
        default=None,
        help=f'default: {SceneCfg.min_objects} for scenes, {sequence.min_objects} for --sequence',
    )
    parser.add_argument(
        '--max-objects',
        type=int,
        default=None,
        help=f'default: {SceneCfg.max_objects} for scenes, {sequence.max_objects} for --sequence',
    )
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--split',
        type=Path,
        default=None,
        help='JSON {"base": [...], "novel": [...]} of thing names; the default 18/7 when omitted',
    )
    sequences.add_arguments(parser.add_argument_group('sequences'))


def _scene_cfg(args: argparse.Namespace) -> SceneCfg:
    height, width = args.size or (64, 64)
    counts = {k: getattr(args, k) for k in ('min_objects', 'max_objects')}
    return SceneCfg(height, width, **{k: v for k, v in counts.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    """Write procedural scenes (or, with ``--sequence``, one sequence) as a COCO dataset."""
    split = DEFAULT_SPLIT if args.split is None else load_split(args.split)
    if args.sequence:
        from masqclip.data import sequences  # see add_arguments

        return sequences.run(args, split)
    paths = write_dataset(args.out_dir, args.num_images, _scene_cfg(args), args.seed, split)
    print(f'wrote {args.num_images} scenes to {paths.root}')
    return 0
