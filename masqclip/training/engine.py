"""What every trainer shares: the run folder, model building, optimiser and learning-rate
schedule, checkpoints that resume exactly, the CSV metrics log and its plot, progress bars,
and ``fit``, the optimisation loop.

The same code runs as one process (no launcher) and under torchrun (``distributed.py``): the
recipe's ``batch_size`` and ``lr`` are the global ones, each process takes
``batch_size / (world size x grad_accum_steps)`` images per micro-batch, gradients are
averaged by DistributedDataParallel, and only rank 0 logs, shows progress bars and writes
files (the others wait at a barrier where they read what it wrote).

Randomness, for resumes and world-size independence: data augmentation and the loss's random
points are seeded per sample by (seed, stream position) (``data.py``); torch's own generators
are re-seeded at every step from (seed, rank, global step) (``step_seed``), so no random state
needs saving per rank and a resumed run continues exactly.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from masqclip.checkpoint import CheckpointError, read_checkpoint
from masqclip.checkpoint import save_checkpoint as save_model_checkpoint
from masqclip.factory import build_model
from masqclip.modeling.masqclip import MasQCLIP
from masqclip.training.data import Batch
from masqclip.training.distributed import (
    all_reduce_mean,
    all_reduce_sums,
    barrier,
    is_main_process,
    rank_and_world,
)
from masqclip.training.recipe import RecipeError, apply_overrides, load_recipe, save_recipe

logger = logging.getLogger('masqclip')

CONFIG_FILE = 'config.yaml'
STATE_FILE = 'last.pt'
MODEL_FILE = 'model.pt'
METRICS_FILE = 'metrics.csv'
EVAL_FILE = 'eval.csv'
PLOT_FILE = 'curves.png'


class RunError(RuntimeError):
    """A run folder that cannot be used as asked; the message says what to do."""


def resolve_recipe(
    recipe: str, overrides: Sequence[str], out: str | None, resume: bool
) -> tuple[dict, Path]:
    """The recipe a run uses and its folder.

    A new run takes the named recipe; a resumed one takes the folder's saved ``config.yaml``.
    Overrides apply on top of either (e.g. more ``train.steps`` to extend a finished run).

    :param recipe: recipe name or YAML path.
    :param overrides: ``key=value`` strings.
    :param out: the run folder; None = the recipe's ``output_dir``.
    :param resume: continue the run in the folder.
    :raises RunError: resuming a folder without a run, or starting over one.
    """
    if resume and out is None:
        out = apply_overrides(load_recipe(recipe), overrides).get('output_dir') or None
    if resume and out is not None:
        config = Path(out) / CONFIG_FILE
        if not config.is_file():
            raise RunError(f'cannot resume: {config} does not exist (no run in {out})')
        resolved = apply_overrides(load_recipe(config), overrides)
    else:
        resolved = apply_overrides(load_recipe(recipe), overrides)
    if out is not None:
        resolved['output_dir'] = str(out)
    if not resolved.get('output_dir'):
        raise RecipeError('no output folder: pass --out DIR or set output_dir=DIR')
    run_dir = Path(resolved['output_dir'])
    state = run_dir / STATE_FILE
    if resume and not state.is_file():
        raise RunError(f'cannot resume: {state} does not exist (no checkpoint in {run_dir})')
    if not resume and state.is_file():
        raise RunError(
            f'{run_dir} already holds a run: pass --resume to continue it, or choose another --out'
        )
    return resolved, run_dir


def start_run(recipe: Mapping[str, Any], run_dir: Path) -> None:
    """Create the run folder and save the resolved recipe beside the checkpoints."""
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, run_dir / CONFIG_FILE)


def resolve_device(name: str) -> torch.device:
    """'auto' = CUDA when present, else the CPU; otherwise a torch device string (one process;
    ``setup_device`` also joins a torchrun launch)."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RecipeError(f'train.device={name} but CUDA is not available: use auto or cpu')
    return device


def configure_threads(num_threads: int) -> None:
    """Limit torch's CPU threads (0 = leave torch's default); two trainings sharing a small
    CPU run far faster with one thread each than fighting over all cores."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)


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


def rng_state() -> dict[str, Any]:
    """torch's CPU (and CUDA) random states, for an exact resume."""
    state = {'cpu': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_state(
    path: Path,
    network: nn.Module,
    config: dict,
    recipe: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    **extra: Any,
) -> None:
    """A checkpoint that both ``build_model(None, checkpoint=...)`` and resume can read.

    Rank 0 writes it (the model and optimiser are the same on every rank); every rank calls
    this and returns once it is written.

    :param network: the plain module (not its DDP wrapper: the keys carry no ``module.``).
    :param scaler: fp16's loss scaler, whose state is saved when it is enabled.
    :param extra: plain entries (step, phase, ...).
    """
    if is_main_process():
        if optimizer is not None:
            extra['optimizer'] = optimizer.state_dict()
            extra['rng'] = rng_state()
        if scaler is not None and scaler.is_enabled():
            extra['scaler'] = scaler.state_dict()
        save_model_checkpoint(path, network, config, recipe=dict(recipe), **extra)
    barrier()


def load_state(path: Path) -> dict:
    """Read a checkpoint written by ``save_state`` (every rank reads rank 0's file).

    :raises CheckpointError: an unreadable file, or one without a training state.
    """
    data = read_checkpoint(path)
    if 'step' not in data:
        raise CheckpointError(f'{path} holds weights but no training state to resume from')
    return data


def resume_weights(
    run_dir: Path, resume: bool, model: torch.nn.Module, what: str
) -> tuple[dict | None, int]:
    """When resuming, load ``run_dir``'s training state into ``model``.

    :param what: the run's name in the log line.
    :return: the state (None when not resuming) and the step to continue from.
    """
    if not resume:
        return None, 0
    state = load_state(run_dir / STATE_FILE)
    model.load_state_dict(state['model'])
    logger.info('resuming %s at step %d', what, int(state['step']))
    return state, int(state['step'])


def restore_optimizer(
    state: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Put a resumed run's optimiser (and fp16 loss scaler) back as they were saved."""
    optimizer.load_state_dict(state['optimizer'])
    if scaler is not None and scaler.is_enabled() and 'scaler' in state:
        scaler.load_state_dict(state['scaler'])


class MetricsLog:
    """Rows of metrics in a CSV file, rewritten when new columns appear.

    :param path: the CSV file (rank 0 only reads and writes it; the other ranks keep the
        rows they log in memory).
    :param keep_until: on resume: keep the existing rows whose ``global_step`` is at most
        this (later ones were logged after the checkpoint and will be redone); None = start a
        new file.
    """

    def __init__(self, path: Path, keep_until: int | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if keep_until is not None and is_main_process() and path.is_file():
            with path.open(newline='') as f:
                self.rows = [
                    row for row in csv.DictReader(f) if float(row['global_step']) <= keep_until
                ]
        self.columns: list[str] = []
        for row in self.rows:
            self.columns += [k for k in row if k not in self.columns]
        if is_main_process():
            self._rewrite()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open('w', newline='') as f:
            writer = csv.DictWriter(f, self.columns, restval='')
            writer.writeheader()
            writer.writerows(self.rows)

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        if not is_main_process():
            return
        new = [k for k in row if k not in self.columns]
        if new or not self.path.is_file():
            self.columns += new
            self._rewrite()
            return
        with self.path.open('a', newline='') as f:
            csv.DictWriter(f, self.columns, restval='').writerow(row)

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(global steps, values) of one column, skipping rows without it."""
        xs, ys = [], []
        for row in self.rows:
            value = row.get(key, '')
            if value not in ('', None):
                xs.append(float(row['global_step']))
                ys.append(float(value))
        return xs, ys


def plot_metrics(train_log: MetricsLog, eval_log: MetricsLog, path: Path) -> None:
    """Loss curves (log scale), the learning rate and every evaluation metric, as one PNG."""
    if not is_main_process():
        return
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    skip = {'global_step', 'step', 'phase', 'lr', 'time_s'}
    losses = [k for k in train_log.columns if k.startswith('loss')]
    others = [k for k in train_log.columns if k not in skip and k not in losses]
    metrics = [k for k in eval_log.columns if k not in skip]
    panels = 2 + bool(others) + bool(metrics)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.8), squeeze=False)
    axes = list(axes[0])
    for key in losses:
        xs, ys = train_log.series(key)
        if xs and all(y > 0 for y in ys):
            axes[0].plot(xs, ys, label=key, linewidth=1)
    axes[0].set_yscale('log')
    axes[0].set_title('training losses')
    axes[1].plot(*train_log.series('lr'))
    axes[1].set_title('learning rate')
    if others:
        for key in others:
            axes[2].plot(*train_log.series(key), label=key, linewidth=1)
        axes[2].set_title('training statistics')
    if metrics:
        for key in metrics:
            xs, ys = eval_log.series(key)
            finite = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
            if finite:
                axes[-1].plot(*zip(*finite, strict=True), marker='o', label=key)
        axes[-1].set_title('evaluation')
    for ax in axes:
        ax.set_xlabel('step')
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
        precision, log_every, checkpoint_every, seed and optionally grad_accum_steps).
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
    device: torch.device,
    train_log: MetricsLog,
    save_fn: Callable[[int], None],
    eval_fn: Callable[[int], None] | None = None,
    eval_every: int = 0,
    *,
    model: nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """The optimisation loop shared by every stage.

    Each step takes ``grad_accum_steps`` micro-batches from ``batches``, prepares them all,
    then runs forward and backward on each; DDP all-reduces the gradients on the last one only.

    :param start: steps of this phase already done (resume).
    :param batches: endless iterator of this rank's micro-batches (``Batch.to(device)`` is
        applied).
    :param step_fn: a ``TrainStep``, or batch -> (mean loss tensor, {name: float}); run under
        the autocast context.
    :param save_fn: step -> None, writes the resumable checkpoint (called on every rank).
    :param eval_fn: global step -> None, evaluates and logs (every rank); None = no evaluation.
    :param eval_every: evaluate every N steps (0 = never inside the loop).
    :param model: the module the step's forward runs through, wrapped by
        ``distributed.wrap_ddp``: required when several processes train (DDP averages its
        gradients across them).
    :param scaler: fp16's loss scaler (None: one is made; pass it to save its state).
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
    scaler = scaler if scaler is not None else make_grad_scaler(device, precision)
    params = [p for group in optimizer.param_groups for p in group['params']]
    seed = int(train.get('seed', 0))
    log_every = max(1, int(train['log_every']))
    checkpoint_every = int(train['checkpoint_every'])
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
            train_log.append(
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
        if checkpoint_every and done % checkpoint_every == 0 and done < phase.steps:
            save_fn(done)
        if eval_fn is not None and eval_every and done % eval_every == 0 and done < phase.steps:
            eval_fn(phase.global_offset + done)
    bar.close()


def run_eval(
    eval_fn: Callable[[], dict[str, float]],
    global_step: int,
    eval_log: MetricsLog,
    train_log: MetricsLog,
    run_dir: Path,
) -> dict[str, float]:
    """Evaluate, log the metrics (CSV + log line) and redraw the plot (every rank calls this:
    the evaluation is sharded; rank 0 writes)."""
    metrics = eval_fn()
    eval_log.append({'global_step': global_step, **metrics})
    shown = ', '.join(f'{k}={v:.3f}' for k, v in metrics.items() if '-' not in k)
    logger.info('step %d: %s', global_step, shown)
    plot_metrics(train_log, eval_log, run_dir / PLOT_FILE)
    return metrics
