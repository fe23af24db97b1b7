"""Evaluate a checkpoint on a COCO-format dataset: mask AP, PQ and mIoU (all / base / novel)
through the predictor, or the class-agnostic proposal recall of a stage-1 proposer.

Command line (``masqclip eval``)::

    masqclip eval --checkpoint runs/stage2/model.pt --data-root DIR \\
        --annotations annotations/instances_instances25.json --split split.json

Under torchrun (``torchrun --nproc-per-node N -m masqclip.training.evaluate ...``, or
during a distributed training) each rank evaluates every N-th image; the evaluators' states
are gathered on rank 0, merged and scored there, and the metrics sent back to every rank, so
they equal a single process's on the same images.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from masqclip.data.coco import CocoDataset
from masqclip.data.ov_split import CategorySplit
from masqclip.evaluation.evaluator import SegmentationEvaluator
from masqclip.factory import build_model
from masqclip.inference.predictor import TASKS, Predictor
from masqclip.inference.transforms import PreprocessCfg, image_to_tensor, mask_logits_to_image
from masqclip.inference.vocabulary import Vocabulary, VocabularyEntry
from masqclip.modeling.masqclip import MasQCLIP
from masqclip.tools.common import parse_tasks
from masqclip.training import distributed
from masqclip.training.data import load_category_split, load_dataset

PROPOSALS = 'proposals'
"""The stage-1 task: class-agnostic recall of the ground truth by the proposals."""


def dataset_vocabulary(dataset: CocoDataset) -> Vocabulary:
    """The dataset's categories as a vocabulary, in file order (raw names, trap 7)."""
    return Vocabulary(tuple(VocabularyEntry(c.name, (), c.is_thing) for c in dataset.categories))


@torch.no_grad()
def proposal_recall(
    network: MasQCLIP,
    config: dict,
    dataset: CocoDataset,
    split: CategorySplit | None = None,
    max_images: int = 0,
    device: str | torch.device = 'cpu',
    iou_thresholds: Sequence[float] = (0.5, 0.75),
) -> dict[str, float]:
    """Fraction of ground-truth objects some proposal covers with IoU >= t (all Q proposals,
    binarised at logit > 0, at the image size); novel recall is what distillation targets.

    Under DDP each rank takes a share of the images and the tallies are summed.

    :param max_images: evaluate the first N images (0 = all).
    :return: ``proposals/recall50`` etc., with ``_base`` / ``_novel`` when a split is given
        (NaN when no such object occurs).
    """
    was_training = network.proposer.training
    proposer = network.proposer.eval().to(device)
    preprocess = PreprocessCfg.of(config)
    names = {c.id: c.name for c in dataset.categories}
    groups = {'': None}
    if split is not None:
        groups |= {'_base': set(split.base), '_novel': set(split.novel)}
    hits = {(t, g): 0 for t in iou_thresholds for g in groups}
    counts = dict.fromkeys(groups, 0)
    records = dataset.records[:max_images] if max_images else dataset.records
    for record in distributed.shard(records):
        image = record.load_image()
        spec = preprocess.plan(*image.shape[:2])
        image_sizes = torch.tensor([spec.resized], device=device)
        logits = proposer(image_to_tensor(image, spec).to(device), image_sizes)['pred_masks'][0]
        masks = (mask_logits_to_image(logits.float(), spec) > 0).flatten(1).float()
        keep = [i for i, a in enumerate(record.annotations) if not a.is_crowd]
        if not keep:
            continue
        gt = torch.from_numpy(record.masks()[keep]).flatten(1).float().to(device)
        inter = gt @ masks.T
        union = gt.sum(1, keepdim=True) + masks.sum(1)[None] - inter
        best = (inter / union.clamp(min=1)).amax(1).cpu()
        for j, i in enumerate(keep):
            name = names[record.annotations[i].category_id]
            for group, members in groups.items():
                if members is None or name in members:
                    counts[group] += 1
                    for t in iou_thresholds:
                        hits[t, group] += int(best[j] >= t)
    network.proposer.train(was_training)
    # One sum over the ranks; float64 keeps the integer tallies exact.
    tallies = distributed.all_reduce_sums(
        {f'hits{t}{g}': hits[t, g] for t, g in hits} | {f'count{g}': counts[g] for g in counts}
    )
    hits = {(t, g): tallies[f'hits{t}{g}'] for t, g in hits}
    counts = {g: tallies[f'count{g}'] for g in counts}
    return {
        f'{PROPOSALS}/recall{round(t * 100)}{g}': hits[t, g] / counts[g]
        if counts[g]
        else float('nan')
        for t in iou_thresholds
        for g in groups
    }


def evaluate_segmentation(
    network: MasQCLIP,
    config: dict,
    dataset: CocoDataset,
    split: CategorySplit | None = None,
    tasks: Collection[str] = ('instance',),
    max_images: int = 0,
    device: str | torch.device = 'cpu',
    show_progress: bool = False,
) -> dict[str, float]:
    """Segment the dataset's images with its own categories as the vocabulary and score them.

    Under DDP each rank segments a share of the images; rank 0 merges the evaluators and
    scores them, and every rank returns its metrics.

    :param tasks: subset of ('instance', 'semantic', 'panoptic'); semantic and panoptic need
        a panoptic dataset.
    :param max_images: evaluate the first N images (0 = all).
    :return: the evaluator's metrics (``segm/AP``, ``panoptic/PQ``, ``semantic/mIoU``, ...).
    """
    predictor = Predictor.from_network(network, config, device=str(device))
    predictor.set_vocabulary(dataset_vocabulary(dataset))
    evaluator = SegmentationEvaluator(dataset.categories, split)
    records = dataset.records[:max_images] if max_images else dataset.records
    shown = show_progress and distributed.is_main_process()
    for record in tqdm(
        distributed.shard(records), desc='evaluating', disable=not shown, leave=False
    ):
        result = predictor.predict(record.load_image(), tasks=tasks)
        evaluator.add_result(record, result, with_instances='instance' in tasks)
    return distributed.broadcast_from_main(merged_metrics(evaluator))


def merged_metrics(evaluator: SegmentationEvaluator) -> dict[str, float] | None:
    """The metrics of every rank's evaluator merged, on rank 0 (None on the other ranks).

    :param evaluator: this rank's, holding its share of the images.
    """
    gathered = distributed.gather_to_main(evaluator)
    if gathered is None:
        return None
    merged = gathered[0]
    for other in gathered[1:]:
        merged.merge(other)
    return merged.evaluate()


def evaluate(
    network: MasQCLIP,
    config: dict,
    dataset: CocoDataset,
    split: CategorySplit | None,
    tasks: Collection[str],
    max_images: int = 0,
    device: str | torch.device = 'cpu',
    show_progress: bool = False,
) -> dict[str, float]:
    """``proposal_recall`` and/or ``evaluate_segmentation``, as ``tasks`` ask."""
    metrics = {}
    if PROPOSALS in tasks:
        metrics |= proposal_recall(network, config, dataset, split, max_images, device)
    segmentation = [t for t in tasks if t != PROPOSALS]
    if segmentation:
        metrics |= evaluate_segmentation(
            network, config, dataset, split, segmentation, max_images, device, show_progress
        )
    return metrics


def evaluate_eval_set(
    network: MasQCLIP,
    config: dict,
    eval_set: tuple[CocoDataset, CategorySplit | None],
    eval_cfg: dict,
    device: str | torch.device,
) -> dict[str, float]:
    """``evaluate`` on a recipe's evaluation set (see ``data.load_eval_set``), with the tasks
    and image cap of its ``eval`` section."""
    dataset, split = eval_set
    tasks, max_images = eval_cfg['tasks'], int(eval_cfg['max_images'])
    return evaluate(network, config, dataset, split, tasks, max_images, device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', required=True, help='a masqclip_ros checkpoint (.pt)')
    parser.add_argument('--data-root', required=True, help='the COCO-format dataset folder')
    parser.add_argument(
        '--annotations', required=True, help='annotation JSON, relative to --data-root or absolute'
    )
    parser.add_argument('--format', default='instances', choices=('instances', 'panoptic'))
    parser.add_argument('--images', default='images', help='image folder (%(default)s)')
    parser.add_argument(
        '--panoptic',
        default='panoptic',
        help='panoptic PNG folder for --format panoptic (%(default)s)',
    )
    parser.add_argument(
        '--split', default='', help='base/novel split JSON for the _base/_novel metrics'
    )
    parser.add_argument(
        '--tasks',
        type=lambda text: parse_tasks(text, (*TASKS, PROPOSALS)),
        default=('instance',),
        help='comma list of instance, semantic, panoptic, proposals (default: instance)',
    )
    parser.add_argument('--max-images', type=int, default=0, help='first N images (0 = all)')
    parser.add_argument(
        '--device',
        default='cpu',
        help='cpu, cuda, auto, cuda:1 (%(default)s); under torchrun cuda = GPU LOCAL_RANK',
    )
    parser.add_argument('--out', help='write the metrics to this JSON file as well')


def run(args: argparse.Namespace) -> int:
    data = {
        'root': args.data_root,
        'format': args.format,
        'annotations': args.annotations,
        'images': args.images,
        'panoptic': args.panoptic,
        'split': args.split,
    }
    try:
        device = distributed.setup_device(args.device)
        network, config = build_model(None, checkpoint=args.checkpoint)
        metrics = evaluate(
            network,
            config,
            load_dataset(data),
            load_category_split(data),
            args.tasks,
            args.max_images,
            device,
            show_progress=True,
        )
        main_process = distributed.is_main_process()
    finally:
        distributed.shutdown()  # leave the process group joined under torchrun
    if not main_process:
        return 0
    for key, value in metrics.items():
        print(f'{key:32s} {100 * value:7.2f}' if np.isfinite(value) else f'{key:32s}     n/a')
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=1))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``masqclip eval`` as a function: parse ``argv`` and run; returns the exit status."""
    from masqclip.training.cli import run_command

    parser = argparse.ArgumentParser(prog='masqclip eval', description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_command(parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
