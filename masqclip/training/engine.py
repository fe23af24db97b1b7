"""The optimisation every trainer shares: model building, optimiser and learning-rate
schedule, batch splitting, mixed precision, and ``fit``, the loop over one phase's steps.
The run around it (folder, logs, resume, checkpoints, evaluations) is ``run.py``'s.

The same code runs as one process (no launcher) and under torchrun (``distributed.py``): the
recipe's ``batch_size`` and ``lr`` are the global ones, each process takes
``batch_size / (world size x grad_accum_steps)`` images per micro-batch, gradients are
averaged by DistributedDataParallel, and only rank 0 logs and shows progress bars.

Randomness, for resumes and world-size independence: data augmentation and the loss's random
points are seeded per sample by (seed, stream position) (``data.py``); torch's own generators
are re-seeded at every step from (seed, rank, global step) (``step_seed``), so no random state
needs saving per rank and a resumed run continues exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from masqclip.factory import build_model
from masqclip.modeling.masqclip import MasQCLIP
from masqclip.training.data import Batch
from masqclip.training.distributed import (
    all_reduce_mean,
    all_reduce_sums,
    is_main_process,
    rank_and_world,
)
from masqclip.training.recipe import RecipeError


def build_network(model: Mapping[str, Any]) -> tuple[MasQCLIP, dict]:
    """Build the network a recipe's ``model`` section describes.

    ``init`` (a checkpoint of this project, e.g. stage 1's) wins over ``name``;
    ``clip_weights`` fill the CLIP towers it lacks; ``q_proj_init: clip`` copies CLIP's own
    query projections into mask-token projections it lacks (method.md trap 1; 'random' keeps
    them as built). Nothing the checkpoint stores is replaced (``build_model``).

    :param model: ``name``, ``init``, ``clip_weights`` and optionally ``q_proj_init``.
    :return: the network (on the CPU, eval mode) and its architecture config.
    """
    q_proj_init = model.get('q_proj_init', 'random')
    if q_proj_init not in ('random', 'clip'):
        raise RecipeError(f"model.q_proj_init must be 'random' or 'clip', got {q_proj_init!r}")
    init = model.get('init') or None
    return build_model(
        None if init else model['name'],
        checkpoint=init,
        clip_weights=model.get('clip_weights') or None,
        q_proj_init=q_proj_init,
    )


def make_optimizer(groups: Iterable[dict], train: Mapping[str, Any]) -> torch.optim.AdamW:
    """AdamW with the recipe's weight decay; each group may carry an ``lr_scale``."""
    param_groups = []
    for group in groups:
        params = [p for p in group['params'] if p.requires_grad]
        if params:
            lr = float(train['lr']) * group.get('lr_scale', 1.0)
            param_groups.append({'params': params, 'lr': lr, 'base_lr': lr})
    if not param_groups:
        raise RuntimeError('nothing to train: no parameter requires a gradient')
    return torch.optim.AdamW(param_groups, weight_decay=float(train['weight_decay']))


def lr_factor(step: int, total_steps: int, decay_at: Sequence[float], gamma: float) -> float:
    """detectron2's multi-step schedule with steps given as fractions of the run.

    :param step: steps done so far.
    :param decay_at: fractions of ``total_steps`` where the rate is multiplied by ``gamma``
        (empty = constant, as stage 1 upstream; [0.9] = stage 2's 9k of 10k).
    """
    return gamma ** sum(step >= round(f * total_steps) for f in decay_at)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Apply a schedule factor to every group's base rate; returns the first group's rate."""
    for group in optimizer.param_groups:
        group['lr'] = group['base_lr'] * factor
    return optimizer.param_groups[0]['lr']


def accum_steps(train: Mapping[str, Any]) -> int:
    """Micro-batches per optimiser step (``grad_accum_steps``, 1 when the recipe has none)."""
    steps = int(train.get('grad_accum_steps', 1))
    if steps < 1:
        raise RecipeError(f'grad_accum_steps must be >= 1, got {steps}')
    return steps


def per_device_batch(train: Mapping[str, Any], section: str = 'train') -> int:
    """Images per process and micro-batch: the global ``batch_size`` divided by the world
    size x ``grad_accum_steps``.

    :param train: a ``train``-like recipe section (``batch_size``, ``grad_accum_steps``).
    :param section: its name in the recipe, for the error message.
    :raises RecipeError: the global batch does not divide evenly.
    """
    total, accum, world = int(train['batch_size']), accum_steps(train), rank_and_world()[1]
    if total < 1 or total % (world * accum):
        raise RecipeError(
            f'{section}.batch_size={total} is the global batch: it must be a positive multiple '
            f'of the {world} process(es) x {section}.grad_accum_steps={accum} = {world * accum}; '
            'change it, the number of processes (--nproc-per-node, --nnodes) or the '
            'accumulation steps'
        )
    return total // (world * accum)


PRECISIONS = ('fp32', 'bf16', 'fp16')


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Mixed precision context: 'bf16' and 'fp16' autocast, 'fp32' does not.

    fp16 needs loss scaling (``make_grad_scaler``) and is offered on CUDA only; bf16 has
    fp32's range and needs none (the CPU's choice).
    """
    if precision not in PRECISIONS:
        raise RecipeError(f'train.precision must be one of {PRECISIONS}, got {precision!r}')
    if precision == 'fp16' and device.type != 'cuda':
        raise RecipeError('train.precision=fp16 runs on CUDA only: use bf16 or fp32 on the CPU')
    dtype = torch.float16 if precision == 'fp16' else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=precision != 'fp32')


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """The loss scaler of fp16 training (disabled, i.e. a pass-through, otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=precision == 'fp16')


def step_seed(seed: int, rank: int, global_step: int) -> int:
    """The seed of torch's generators during one step of one rank (see the module docs)."""
    return int(np.random.SeedSequence([seed, rank, global_step, 2]).generate_state(1)[0])


def progress(total: int, initial: int, description: str) -> tqdm:
    """A progress bar with rate and ETA (rank 0 only)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=description,
        unit='step',
        dynamic_ncols=True,
        disable=not is_main_process(),
        mininterval=1.0,
    )


class StepTimer:
    """Seconds per step, for the log."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return elapsed


class Phase:
    """One optimisation run inside a training: its length, schedule and logging cadence.

    :param name: shown in the progress bar and the ``phase`` column of the log.
    :param steps: optimiser steps of this phase.
    :param train: the recipe's ``train`` section (lr_decay_at, lr_decay_gamma, grad_clip,
        precision, log_every, seed and optionally grad_accum_steps; ``Run`` reads its
        checkpoint_every).
    :param global_offset: steps of the earlier phases, so the log's ``global_step`` runs on.
    """

    def __init__(
        self, name: str, steps: int, train: Mapping[str, Any], global_offset: int = 0
    ) -> None:
        if steps < 0:
            raise RecipeError(f'{name}: the number of steps must be >= 0, got {steps}')
        self.name, self.steps, self.train, self.global_offset = name, steps, train, global_offset


@dataclass(frozen=True)
class TrainStep:
    """A training step in two halves, so that a loss divided by counts over the whole global
    batch (target masks, class weights) stays exact when the batch is split into micro-batches
    over accumulation steps and ranks.

    :param prepare: micro-batch -> (what ``loss`` needs, {name: count}); runs without
        gradients (targets, pseudo-labels, assignments).
    :param loss: (what ``prepare`` returned, mean counts) -> (loss tensor, {name: float});
        a mean count is the count summed over every micro-batch of the global batch, divided
        by their number (world size x accumulation steps). A sum divided by it is on the
        scale of one micro-batch's mean: ``fit`` averages those over the accumulation steps
        and DDP over the ranks, which gives the whole batch's sum / count. In one process
        without accumulation the mean counts are the batch's own.
    """

    prepare: Callable[[Batch], tuple[Any, dict[str, float]]]
    loss: Callable[[Any, dict[str, float]], tuple[Tensor, dict[str, float]]]

    @classmethod
    def of_mean_loss(cls, step_fn: Callable[[Any], tuple[Tensor, dict[str, float]]]) -> TrainStep:
        """A step whose loss is already a mean over its micro-batch (no counts)."""
        return cls(lambda batch: (batch, {}), lambda batch, _: step_fn(batch))


def _mean_counts(counts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Counts summed over this rank's micro-batches and every rank, / their total number."""
    local: dict[str, float] = {}
    for one in counts:
        for key, value in one.items():
            local[key] = local.get(key, 0.0) + float(value)
    micro_batches = len(counts) * rank_and_world()[1]
    return {k: v / micro_batches for k, v in all_reduce_sums(local).items()}


def fit(
    phase: Phase,
    start: int,
    batches: Iterator[Batch],
    step_fn: Callable[[Batch], tuple[torch.Tensor, dict[str, float]]] | TrainStep,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    log: Callable[[dict[str, Any]], None],
    after_step: Callable[[int], None],
    *,
    model: nn.Module | None = None,
) -> None:
    """The optimisation loop over one phase's steps, shared by every stage.

    Each step takes ``grad_accum_steps`` micro-batches from ``batches``, prepares them all,
    then runs forward and backward on each; DDP all-reduces the gradients on the last one only.

    :param start: steps of this phase already done (resume).
    :param batches: endless iterator of this rank's micro-batches (``Batch.to(device)`` is
        applied).
    :param step_fn: a ``TrainStep``, or batch -> (mean loss tensor, {name: float}); run under
        the autocast context.
    :param scaler: fp16's loss scaler (``make_grad_scaler``; a pass-through otherwise).
    :param log: training row -> None, every ``log_every`` steps and at the phase's end (every
        rank, with the numbers averaged over the ranks).
    :param after_step: steps of the phase done -> None, after each step (every rank): where
        the caller checkpoints and evaluates.
    :param model: the module the step's forward runs through, wrapped by
        ``distributed.wrap_ddp``: required when several processes train (DDP averages its
        gradients across them).
    """
    train = phase.train
    step = step_fn if isinstance(step_fn, TrainStep) else TrainStep.of_mean_loss(step_fn)
    rank, world = rank_and_world()
    if world > 1 and not isinstance(model, DistributedDataParallel):
        raise RuntimeError(
            f'{phase.name}: {world} processes train, but no DDP-wrapped module was given '
            '(fit(model=distributed.wrap_ddp(...))): each process would train its own copy'
        )
    accum = accum_steps(train)
    precision = train['precision']
    params = [p for group in optimizer.param_groups for p in group['params']]
    seed = int(train.get('seed', 0))
    log_every = max(1, int(train['log_every']))
    bar = progress(phase.steps, start, phase.name)
    timer = StepTimer()
    for step_index in range(start, phase.steps):
        torch.manual_seed(step_seed(seed, rank, phase.global_offset + step_index))
        lr = set_lr(
            optimizer,
            lr_factor(
                step_index, phase.steps, train['lr_decay_at'], float(train['lr_decay_gamma'])
            ),
        )
        micro_batches = [next(batches).to(device) for _ in range(accum)]
        with torch.no_grad(), autocast(device, precision):
            prepared = [step.prepare(batch) for batch in micro_batches]
        mean_counts = _mean_counts([counts for _, counts in prepared])
        optimizer.zero_grad(set_to_none=True)
        parts: dict[str, float] = {}
        for i, (inputs, _) in enumerate(prepared):
            # Gradients are all-reduced once per step, on the last micro-batch.
            last = i == accum - 1
            with nullcontext() if world == 1 or last else model.no_sync():
                with autocast(device, precision):
                    loss, micro_parts = step.loss(inputs, mean_counts)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f'{phase.name}: the loss is {float(loss)} at step {step_index} '
                        f'(rank {rank}); lower train.lr or use train.precision=fp32'
                    )
                scaler.scale(loss / accum).backward()
            for key, value in micro_parts.items():
                parts[key] = parts.get(key, 0.0) + value / accum
        # The reference clips the whole model's gradient norm at 0.01 (method.md 2.1, 3.4):
        # with AdamW this bounds no step size, it only tames rare huge gradients.
        scaler.unscale_(optimizer)
        if float(train['grad_clip']) > 0:
            parts['grad_norm'] = float(
                torch.nn.utils.clip_grad_norm_(params, float(train['grad_clip']))
            )
        scaler.step(optimizer)
        scaler.update()
        done = step_index + 1
        bar.update(1)
        if done % log_every == 0 or done == phase.steps:
            # Every rank's numbers, averaged: the loss of the whole global batch.
            parts = all_reduce_mean(parts)
            log(
                {
                    'global_step': phase.global_offset + done,
                    'phase': phase.name,
                    'step': done,
                    'lr': lr,
                    **parts,
                    'time_s': timer.lap(),
                }
            )
        bar.set_postfix(loss=f'{parts["loss"]:.3f}', lr=f'{lr:.2e}', refresh=False)
        after_step(done)
    bar.close()
