"""Training data: a COCO-format dataset folder read with ``masqclip.data``, large-scale jitter,
and an endless, resumable, shardable sampler.

The sampler hands the dataset (image index, stream position) pairs; the augmentation of a
sample is drawn from a generator seeded by (seed, stream position), and so are the random
points its loss samples (``Batch.generators``). Optimiser step s consumes positions
[s x global batch, (s + 1) x global batch) whatever the number of processes and accumulation
steps: each of the world_size x accumulation micro-batches takes a disjoint share. So a run
resumed at step k sees exactly the images, crops and points an uninterrupted run would have,
and a run on N processes computes the same global batch as one process does.

Camera frames (``camera_frame``): what a camera sends the ROS node, frames of a moving
sequence (objects partly out of view, occluding one another), drawn directly at the size the
network input gives them (``camera_input``), for training sets that also hold such frames.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from masqclip.data.augment import LsjCfg, large_scale_jitter
from masqclip.data.coco import CocoDataset, load_coco_instances, load_coco_panoptic
from masqclip.data.ov_split import CategorySplit, load_split
from masqclip.data.sequences import SequenceCfg, cli_cfg, plan_sequence, render_frame
from masqclip.data.synthetic import Scene
from masqclip.inference.transforms import PreprocessCfg, ResizeSpec
from masqclip.modeling.proposer import SIZE_DIVISIBILITY

CAMERA_SIZE = (SequenceCfg().scene.height, SequenceCfg().scene.width)
"""(height, width) of a camera frame: (480, 640), the frames of examples/sequence."""


class DatasetPathError(FileNotFoundError):
    """A dataset setting that points nowhere; the message says which setting to fix."""


SYNTH_HINT = (
    '`python -m masqclip.data.synthetic DIR --num-images 200` writes a small '
    'COCO-format dataset to try training on'
)


def _resolve(root: Path, relative: str, what: str, key: str) -> Path:
    path = Path(relative)
    path = path if path.is_absolute() else root / path
    if not path.exists():
        raise DatasetPathError(
            f'{what} {path} does not exist: check data.{key} (relative to data.root={root})'
        )
    return path


def load_dataset(data: Mapping[str, Any], annotations_key: str = 'annotations') -> CocoDataset:
    """Read the dataset a recipe's ``data`` section names.

    :param data: ``root``, ``format`` ('instances' or 'panoptic'), ``images``, ``panoptic``
        and the annotation file under ``annotations_key``, paths relative to ``root``.
    :param annotations_key: which entry names the annotation JSON.
    :raises DatasetPathError: an unset or missing path, naming the setting.
    """
    if not data.get('root'):
        raise DatasetPathError(
            'no dataset given: set data.root=DIR, a COCO-format dataset '
            f'folder (see the recipe for the files it needs); {SYNTH_HINT}'
        )
    root = Path(data['root']).expanduser()
    if not root.is_dir():
        raise DatasetPathError(f'dataset folder {root} (data.root) does not exist; {SYNTH_HINT}')
    annotations = _resolve(root, data[annotations_key], 'annotation file', annotations_key)
    images = _resolve(root, data['images'], 'image folder', 'images')
    if data['format'] == 'instances':
        return load_coco_instances(annotations, images)
    if data['format'] == 'panoptic':
        panoptic = _resolve(root, data['panoptic'], 'panoptic PNG folder', 'panoptic')
        return load_coco_panoptic(annotations, panoptic, images)
    raise DatasetPathError(
        f"data.format must be 'instances' or 'panoptic', got {data['format']!r}"
    )


def load_category_split(data: Mapping[str, Any]) -> CategorySplit | None:
    """The base / novel split the recipe's ``data.split`` names, or None when it is empty."""
    if not data.get('split'):
        return None
    return load_split(
        _resolve(Path(data['root']).expanduser(), data['split'], 'split file', 'split')
    )


def load_eval_set(
    data: Mapping[str, Any], eval_cfg: Mapping[str, Any]
) -> tuple[CocoDataset, CategorySplit | None] | None:
    """The evaluation dataset and split a recipe's ``eval`` section names (its annotations
    under ``eval.root``, else ``data.root``, in ``data``'s format), or None when it names none."""
    if not eval_cfg['annotations']:
        return None
    eval_data = dict(data) | {
        'annotations': eval_cfg['annotations'],
        'root': eval_cfg['root'] or data['root'],
    }
    return load_dataset(eval_data), load_category_split(eval_data)


def lsj_from_recipe(data: Mapping[str, Any]) -> LsjCfg:
    """The LSJ settings of a recipe's ``data`` section; the crop must suit the proposer."""
    size = int(data['image_size'])
    if size % SIZE_DIVISIBILITY:
        raise ValueError(
            f'data.image_size={size} must be a multiple of {SIZE_DIVISIBILITY}, '
            "the proposer's input granularity"
        )
    return LsjCfg(
        size=size,
        min_scale=float(data['min_scale']),
        max_scale=float(data['max_scale']),
        flip_prob=float(data['flip_prob']),
        pad_value=int(data['pad_value']),
    )


def camera_input(config: Mapping[str, Any]) -> ResizeSpec:
    """How an architecture's preprocessing maps a ``CAMERA_SIZE`` frame onto its input (the
    demo model: resized to (64, 85), padded to (64, 96), as (height, width))."""
    return PreprocessCfg.of(config).plan(*CAMERA_SIZE)


def camera_frame(
    rng: np.random.Generator, size: tuple[int, int], min_objects: int, max_objects: int
) -> Scene:
    """One frame, at a random time, of a random sequence (``masqclip.data.sequences`` with
    its default motion), drawn at ``size`` (height, width) with min..max objects."""
    cfg = cli_cfg(*size, min_objects, max_objects, SequenceCfg.fps, SequenceCfg.seconds)
    plan = plan_sequence(rng, cfg)
    return render_frame(plan, int(rng.integers(cfg.num_frames))).scene


def clip_view(image: np.ndarray, spec: ResizeSpec, size: int) -> Tensor:
    """An image as ``MasQCLIP.clip_input`` receives it from the network input: at the top
    left of a black canvas of the padded size, squashed to CLIP's square (bicubic).

    :param image: uint8 (h, w, 3) RGB at the network input's size ``spec.resized``.
    :param size: the side of CLIP's input.
    :return: float [3, size, size], RGB 0-255 (bicubic may overshoot), not normalised.
    """
    h, w = spec.resized
    canvas = torch.zeros(1, 3, *spec.padded)
    canvas[0, :, :h, :w] = torch.from_numpy(image).permute(2, 0, 1)
    return F.interpolate(canvas, size=(size, size), mode='bicubic', align_corners=False)[0]


def sample_seed(seed: int, position: int) -> int:
    """The seed of one sample's random choices during training (loss points, pseudo-label
    points), from the run's seed and the sample's stream position (not from any process's
    generator, so the choices do not depend on which rank computes the sample)."""
    # 63 bits: the seed travels in an int64 tensor through the data loader.
    return int(np.random.SeedSequence([seed, position, 1]).generate_state(1, np.uint64)[0] >> 1)


class AugmentedSegments(Dataset):
    """LSJ-augmented images with their (non-crowd, non-empty) masks and class indices.

    Index with ``(image index, stream position)`` pairs from ``StreamSampler``.

    :param dataset: the records.
    :param lsj: the augmentation.
    :param seed: with the stream position, seeds each sample's augmentation and loss points.
    """

    def __init__(self, dataset: CocoDataset, lsj: LsjCfg, seed: int) -> None:
        self.dataset = dataset
        self.lsj = lsj
        self.seed = seed
        # Class index = position in the file's category list: the training vocabulary order.
        self.class_index = {c.id: i for i, c in enumerate(dataset.categories)}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Tensor]:
        index, position = item
        record = self.dataset[index]
        rng = np.random.default_rng([self.seed, position])
        # Crowd regions are groups, not instances: Mask2Former trains without them.
        keep = [i for i, a in enumerate(record.annotations) if not a.is_crowd]
        masks = record.masks()[keep] if keep else np.zeros((0, record.height, record.width), bool)
        labels = np.array(
            [self.class_index[record.annotations[i].category_id] for i in keep], np.int64
        )
        image, masks, _ = large_scale_jitter(record.load_image(), masks, rng, self.lsj)
        visible = masks.reshape(masks.shape[0], -1).any(1)
        return {
            'image': torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            'masks': torch.from_numpy(masks[visible]),
            'labels': torch.from_numpy(labels[visible]),
            'seed': torch.tensor(sample_seed(self.seed, position), dtype=torch.int64),
        }


class StreamSampler(Sampler):
    """An endless stream of (image index, position): shuffled epochs, resumable, shardable.

    :param size: number of images.
    :param seed: the shuffling seed (epoch e uses seed + e).
    :param start: the first stream position to yield (steps done x global batch size).
    :param rank: this process's rank.
    :param world_size: number of processes; rank r yields positions r, r + world_size, ...
        (a disjoint shard: batching b consecutive yields, rank r's micro-batch k holds
        positions r + world_size x (k x b + j), j < b, which with a micro-batches per step
        all belong to optimiser step k // a's global batch).
    """

    def __init__(
        self, size: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if size < 1:
            raise ValueError('the training dataset has no images')
        self.size, self.seed, self.start = size, seed, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + (self.rank - self.start) % self.world_size
        order, epoch = None, -1
        while True:
            if position // self.size != epoch:
                epoch = position // self.size
                generator = torch.Generator().manual_seed(self.seed + epoch)
                order = torch.randperm(self.size, generator=generator).tolist()
            yield order[position % self.size], position
            position += self.world_size


@dataclass
class Batch:
    """A collated training batch.

    :param images: float [B, 3, S, S], RGB 0-255 (padding 128).
    :param masks: B bool tensors [N_b, S, S].
    :param labels: B int64 tensors [N_b], class indices in the dataset's category order.
    :param seeds: int64 [B], each sample's ``sample_seed``.
    """

    images: Tensor
    masks: list[Tensor]
    labels: list[Tensor]
    seeds: Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.images.to(device),
            [m.to(device) for m in self.masks],
            [lab.to(device) for lab in self.labels],
            self.seeds,
        )

    def generators(self, device: torch.device) -> list[torch.Generator]:
        """One random generator per sample on ``device``, seeded by its ``sample_seed``: the
        source of every point the sample's pseudo-labels and losses draw."""
        return [torch.Generator(device).manual_seed(int(s)) for s in self.seeds.tolist()]


def collate(samples: list[dict[str, Tensor]]) -> Batch:
    """Stack the images and seeds; keep masks and labels per image."""
    return Batch(
        torch.stack([s['image'] for s in samples]).float(),
        [s['masks'] for s in samples],
        [s['labels'] for s in samples],
        torch.stack([s['seed'] for s in samples]),
    )


def make_loader(
    dataset: AugmentedSegments,
    batch_size: int,
    seed: int,
    start_step: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    accum_steps: int = 1,
) -> Iterator[Batch]:
    """An endless iterator of micro-batches starting at optimiser step ``start_step``.

    :param batch_size: images per process and micro-batch (the per-device batch).
    :param start_step: optimiser steps already done (resume).
    :param accum_steps: micro-batches per process and optimiser step.
    """
    global_batch = batch_size * world_size * accum_steps
    sampler = StreamSampler(len(dataset), seed, start_step * global_batch, rank, world_size)
    return iter(
        DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
    )
