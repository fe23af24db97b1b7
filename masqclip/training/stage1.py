"""Stage 1, progressive distillation: train the class-agnostic proposer (method.md 2).

Phase ``teacher`` trains the proposer on the base annotations (every label "object"). Each
of ``student.rounds`` phases ``student<k>`` then starts from the previous phase's weights,
freezes a copy of them as its teacher and trains on the annotations plus the teacher's online
pseudo-masks (``pseudo_labels.py``); round k's student is round k+1's teacher. The reference
runs one round with a constant learning rate (traps 10, 11).

Files in the run folder: ``config.yaml`` (the resolved recipe), ``teacher.pt``,
``student<k>.pt`` (each phase's weights), ``last.pt`` (resumable), ``model.pt`` (the final
weights), ``metrics.csv``, ``eval.csv`` and ``curves.png``. The phase files and ``model.pt``
hold the proposer (and CLIP's towers only when the run loaded real CLIP weights, see
``stored_parts``): ``build_model(None, checkpoint=..., clip_weights=...)`` fills the rest, as
stage 2 does; ``last.pt`` holds the whole network for resuming.

Under torchrun the student is wrapped in DDP; matching and pseudo-labelling stay on each
device, and the loss's divisors (mask count, class weight) are summed over the global batch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from masqclip.checkpoint import save_checkpoint
from masqclip.factory import CLIP_TOWERS, checkpoint_holds_clip, load_proposer
from masqclip.modeling.proposer import MaskProposer
from masqclip.training import distributed, engine
from masqclip.training.data import (
    AugmentedSegments,
    Batch,
    load_dataset,
    load_eval_set,
    lsj_from_recipe,
    make_loader,
)
from masqclip.training.evaluate import evaluate_eval_set
from masqclip.training.losses import CriterionCfg, MatcherCfg, SetCriterion
from masqclip.training.pseudo_labels import PseudoLabelCfg, add_pseudo_masks
from masqclip.training.recipe import RecipeError, require
from masqclip.training.run import MODEL_FILE, Run, setup_process

logger = logging.getLogger('masqclip')

SECTIONS = ('model', 'data', 'train', 'student', 'loss', 'matcher', 'eval')


def plan_phases(recipe: Mapping[str, Any]) -> list[engine.Phase]:
    """The phases a stage-1 recipe asks for: the teacher (unless ``student.teacher`` names a
    trained one), then ``student.rounds`` students."""
    train, student = recipe['train'], recipe['student']
    rounds = int(student['rounds'])
    if rounds < 0:
        raise RecipeError(f'student.rounds must be >= 0, got {rounds}')
    student_train = dict(train) | {
        'lr': student['lr'],
        'batch_size': student['batch_size'],
        'grad_accum_steps': student.get('grad_accum_steps', 1),
    }
    phases = [] if student['teacher'] else [engine.Phase('teacher', int(train['steps']), train)]
    phases += [
        engine.Phase(f'student{k}', int(student['steps']), student_train)
        for k in range(1, rounds + 1)
    ]
    if not phases:
        raise RecipeError('nothing to train: student.teacher is set and student.rounds is 0')
    offset = 0
    for phase in phases:
        phase.global_offset = offset
        offset += phase.steps
    return phases


def frozen_teacher(path: str | Path, device: torch.device) -> MaskProposer:
    """The proposer of a checkpoint, frozen: eval mode and no gradients (no EMA, trap 11)."""
    return load_proposer(path).requires_grad_(False).to(device)


def stored_parts(model_cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The weights stage 1 stores: the proposer it trains, and CLIP's towers only when real
    weights were loaded into them. Random towers in the file would win over stage 2's
    ``clip_weights``, which fill only what a checkpoint lacks; the mask tokens' untrained
    parameters are left to stage 2's init."""
    init = model_cfg.get('init')
    carries_clip = bool(model_cfg.get('clip_weights')) or bool(
        init and checkpoint_holds_clip(init)
    )
    return ('proposer.', *CLIP_TOWERS) if carries_clip else ('proposer.',)


def proposer_param_groups(proposer: MaskProposer, backbone_lr: float) -> list[dict]:
    """The backbone at ``backbone_lr`` x the base rate (ImageNet features move slowly), the
    pixel decoder and transformer decoder at the base rate."""
    backbone = list(proposer.backbone.parameters())
    ids = {id(p) for p in backbone}
    rest = [p for p in proposer.parameters() if id(p) not in ids]
    # The full-rate group first: the log reports the first group's rate.
    return [{'params': rest}, {'params': backbone, 'lr_scale': backbone_lr}]


def distillation_step(
    model: torch.nn.Module,
    teacher: MaskProposer | None,
    criterion: SetCriterion,
    pseudo_cfg: PseudoLabelCfg,
    num_queries: int,
    device: torch.device,
) -> engine.TrainStep:
    """One stage-1 step: targets (with the teacher's pseudo-masks in a student phase), then the
    set loss of the student's prediction.

    :param model: the proposer being trained (DDP-wrapped under torchrun).
    :param teacher: the frozen teacher; None in the teacher phase.
    :param num_queries: the proposer's Q, for the class loss's divisor.
    """

    def prepare(batch: Batch) -> tuple[tuple, dict[str, float]]:
        # Class-agnostic: only the masks matter, every target is "object" (trap 12).
        targets = list(batch.masks)
        generators = batch.generators(device)
        extra = {}
        if teacher is not None:
            teacher_out = teacher(batch.images)
            targets, added = add_pseudo_masks(teacher_out, targets, pseudo_cfg, generators)
            extra['pseudo_masks'] = added / len(targets)
        inputs = (batch.images, targets, generators, extra)
        return inputs, criterion.counts(targets, num_queries)

    def loss(inputs: tuple, mean_counts: dict[str, float]) -> tuple[Tensor, dict[str, float]]:
        images, targets, generators, extra = inputs
        total, parts = criterion(model(images), targets, generators, mean_counts)
        return total, parts | extra

    return engine.TrainStep(prepare, loss)


def train_stage1(recipe: dict, run_dir: Path, resume: bool = False) -> Path:
    """Run (or resume) a stage-1 training.

    :param recipe: the resolved recipe (see ``masqclip/recipes/stage1.yaml``).
    :param run_dir: the run folder.
    :param resume: continue from ``run_dir/last.pt``.
    :return: the path of the final weights (``model.pt``).
    """
    require(recipe, *SECTIONS)
    train, student, data, eval_cfg = (recipe[k] for k in ('train', 'student', 'data', 'eval'))
    device = setup_process(train)
    dataset = load_dataset(data)
    lsj = lsj_from_recipe(data)
    eval_set = load_eval_set(data, eval_cfg)
    phases = plan_phases(recipe)
    # Every phase's batch must split over the processes before the first one trains for days.
    micro_batches = [
        engine.per_device_batch(p.train, 'train' if p.name == 'teacher' else 'student')
        for p in phases
    ]
    model_cfg = dict(recipe['model'])
    if student['teacher'] and not model_cfg['init']:
        model_cfg['init'] = student['teacher']  # the student starts as its teacher
    torch.manual_seed(int(train['seed']))
    network, config = engine.build_network(model_cfg)
    parts = stored_parts(model_cfg)
    criterion = SetCriterion(MatcherCfg(**recipe['matcher']), CriterionCfg(**recipe['loss']))
    num_queries = int(config['proposer']['decoder']['num_queries'])
    pseudo_cfg = PseudoLabelCfg(
        score_threshold=float(student['score_threshold']),
        gt_dice_threshold=float(student['gt_dice_threshold']),
        nms_dice_threshold=float(student['nms_dice_threshold']),
        num_points=int(student['num_points']),
    )

    def evaluate_now() -> dict[str, float]:
        metrics = evaluate_eval_set(network, config, eval_set, eval_cfg, device)
        network.proposer.train()
        return metrics

    run = Run(
        recipe,
        run_dir,
        resume,
        network=network,
        config=config,
        phases=phases,
        device=device,
        evaluate=evaluate_now if eval_set else None,
    )
    for index in run.phases_to_train():
        phase = phases[index]
        teacher = None
        if phase.name.startswith('student'):
            source = run_dir / f'{phases[index - 1].name}.pt' if index else student['teacher']
            teacher = frozen_teacher(source, device)
        proposer = network.proposer.to(device).train()
        model = distributed.wrap_ddp(proposer, device)
        optimizer = engine.make_optimizer(
            proposer_param_groups(proposer, float(train['backbone_lr_multiplier'])), phase.train
        )
        seed = int(train['seed']) + 1000 * index
        batches = make_loader(
            AugmentedSegments(dataset, lsj, seed),
            micro_batches[index],
            seed,
            run.steps_done(index),
            int(data['num_workers']),
            *distributed.rank_and_world(),
            engine.accum_steps(phase.train),
        )
        step = distillation_step(model, teacher, criterion, pseudo_cfg, num_queries, device)
        run.fit(index, batches, step, optimizer, model=model)
        if distributed.is_main_process():
            save_checkpoint(
                run_dir / f'{phase.name}.pt', network, config, parts=parts, phase=phase.name
            )
        distributed.barrier()  # the next phase's teacher is read from <phase>.pt

    final = run_dir / MODEL_FILE
    if distributed.is_main_process():
        save_checkpoint(final, network, config, parts=parts, stage='stage1')
    run.finish()
    logger.info('stage 1 done: %s', final)
    return final


def main(argv: Sequence[str] | None = None) -> int:
    """``masqclip train stage1`` as a function: returns the exit status."""
    from masqclip.training.cli import main_for_stage

    return main_for_stage('stage1', argv)
