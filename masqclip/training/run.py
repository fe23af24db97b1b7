"""A training run: the process it runs in, the folder it writes and how it resumes.

``resolve_recipe`` picks a run's recipe and folder (a new run, or the one ``--resume``
continues); ``setup_process`` sets torch's threads and the device (joining a torchrun launch).
A trainer then builds its network and makes a ``Run``, which owns the folder until the end:
the saved recipe, the metrics logs and their plot, the resumable state and when to checkpoint
and evaluate. It trains each phase left with ``Run.fit``, saves its weights and calls
``Run.finish``.

Files: ``config.yaml`` (the resolved recipe), ``last.pt`` (weights, optimiser, fp16 loss
scaler, phase and step), ``metrics.csv`` (a row per logged step), ``eval.csv`` (a row per
evaluation) and ``curves.png``; the trainer adds its weights (``model.pt`` and others).

Rank 0 writes every file; the other ranks read ``last.pt`` on resume and wait at barriers
until it is written. No random state is saved: the engine re-seeds torch's generators at
every step (``engine.step_seed``).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masqclip.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from masqclip.training import distributed, engine
from masqclip.training.data import Batch
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


def setup_process(train: Mapping[str, Any]) -> torch.device:
    """Set torch's CPU threads and return the device to train on (``distributed.setup_device``,
    which joins a torchrun launch). A trainer calls it first: its batch split needs the world
    size.

    :param train: the recipe's ``train`` section: ``num_threads`` (0 = torch's default; two
        trainings sharing a small CPU run far faster with one thread each than fighting over
        all cores) and ``device``.
    """
    num_threads = int(train['num_threads'])
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    return distributed.setup_device(train['device'])


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
        main = distributed.is_main_process()
        if keep_until is not None and main and path.is_file():
            with path.open(newline='') as f:
                self.rows = [
                    row for row in csv.DictReader(f) if float(row['global_step']) <= keep_until
                ]
        self.columns: list[str] = []
        for row in self.rows:
            self.columns += [k for k in row if k not in self.columns]
        if main:
            self._rewrite()

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open('w', newline='') as f:
            writer = csv.DictWriter(f, self.columns, restval='')
            writer.writeheader()
            writer.writerows(self.rows)

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        if not distributed.is_main_process():
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
    if not distributed.is_main_process():
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


def _load_state(path: Path) -> dict:
    """Read a run's ``last.pt`` (every rank reads rank 0's file).

    :raises CheckpointError: an unreadable file, or one without a training state.
    """
    state = read_checkpoint(path)
    if 'step' not in state:
        raise CheckpointError(f'{path} holds weights but no training state to resume from')
    return state


class Run:
    """One training's run folder, from its start (or resume) to its final evaluation.

    Made once the network is built: resuming loads ``last.pt``'s weights into the network and
    continues at its phase and step. Either way the folder is created, the recipe saved and
    the logs opened (a resumed run keeps the rows logged up to its checkpoint).

    :param recipe: the resolved recipe, saved as ``config.yaml`` and in ``last.pt``; its
        ``eval.every`` is the number of steps between evaluations (0 = at the end only).
    :param run_dir: the run folder.
    :param resume: continue from ``run_dir/last.pt``.
    :param network: the module ``last.pt`` holds (the plain module, not a DDP wrapper).
    :param config: its architecture config, stored with its weights.
    :param phases: the training's phases, in order.
    :param device: this process's device (``setup_process``).
    :param evaluate: () -> metrics of the current weights, called on every rank (the
        evaluation is sharded); None = no evaluation.
    """

    def __init__(
        self,
        recipe: Mapping[str, Any],
        run_dir: Path,
        resume: bool,
        *,
        network: nn.Module,
        config: dict,
        phases: Sequence[engine.Phase],
        device: torch.device,
        evaluate: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.recipe, self.dir, self.device = recipe, run_dir, device
        self.network, self.config, self.phases = network, config, list(phases)
        self._evaluate_fn = evaluate
        self._eval_every = int(recipe['eval']['every'])
        # last.pt, kept until ``fit`` has restored its optimiser state.
        self._state = _load_state(run_dir / STATE_FILE) if resume else None
        self._first, self._start = 0, 0
        if self._state is not None:
            network.load_state_dict(self._state['model'])
            # One-phase runs' states written before every run saved its phase lack the index.
            self._first = int(self._state.get('phase_index', 0))
            self._start = int(self._state['step'])
            logger.info('resuming %s at step %d', self.phases[self._first].name, self._start)
        if distributed.is_main_process():
            run_dir.mkdir(parents=True, exist_ok=True)
            save_recipe(recipe, run_dir / CONFIG_FILE)
        done = self.phases[self._first].global_offset + self._start if resume else None
        self.train_log = MetricsLog(run_dir / METRICS_FILE, done)
        self.eval_log = MetricsLog(run_dir / EVAL_FILE, done)

    def phases_to_train(self) -> range:
        """The indices of the phases left, from the one the run resumes in."""
        return range(self._first, len(self.phases))

    def steps_done(self, index: int) -> int:
        """Steps of phase ``index`` already trained (those of the phase the run resumes in)."""
        return self._start if index == self._first else 0

    def fit(
        self,
        index: int,
        batches: Iterator[Batch],
        step: engine.TrainStep | Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
        optimizer: torch.optim.Optimizer,
        *,
        model: nn.Module | None = None,
    ) -> None:
        """Train phase ``index`` from ``steps_done(index)`` to its end, checkpointing and
        evaluating as the recipe asks; its last state ends in ``last.pt``.

        :param batches: this rank's micro-batches, from the first step not done.
        :param step: a ``TrainStep``, or batch -> (mean loss, {name: float}) (``engine.fit``).
        :param optimizer: the phase's optimiser, whose saved state is restored when the run
            resumes inside this phase.
        :param model: the DDP-wrapped module the step runs (``engine.fit``).
        """
        phase, start = self.phases[index], self.steps_done(index)
        scaler = engine.make_grad_scaler(self.device, phase.train['precision'])
        if start > 0:
            state, self._state = self._state, None
            optimizer.load_state_dict(state['optimizer'])
            if scaler.is_enabled() and 'scaler' in state:
                scaler.load_state_dict(state['scaler'])

        def save(step_done: int) -> None:
            self._save_state(optimizer, scaler, index, step_done)

        def after_step(done: int) -> None:
            if done == phase.steps:
                return  # the phase's end is saved below and evaluated by ``finish``
            checkpoint_every = int(phase.train['checkpoint_every'])
            if checkpoint_every and done % checkpoint_every == 0:
                save(done)
            if self._evaluate_fn is not None and self._eval_every and done % self._eval_every == 0:
                self._evaluate(phase.global_offset + done)

        engine.fit(
            phase,
            start,
            batches,
            step,
            optimizer,
            scaler,
            self.device,
            self.train_log.append,
            after_step,
            model=model,
        )
        save(phase.steps)

    def finish(self) -> None:
        """Evaluate the final weights (when the run evaluates), draw the curves and return
        once rank 0 has written every file (e.g. the weights the trainer saved just before)."""
        last = self.phases[-1]
        if self._evaluate_fn is not None:
            self._evaluate(last.global_offset + last.steps)
        else:
            self._plot()
        distributed.barrier()

    def _save_state(
        self,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        phase_index: int,
        step: int,
    ) -> None:
        """Write ``last.pt``, which both resume and ``build_model(None, checkpoint=...)`` read
        (every rank calls this and returns once rank 0 has written it)."""
        if distributed.is_main_process():
            extra = {'optimizer': optimizer.state_dict(), 'phase_index': phase_index, 'step': step}
            if scaler.is_enabled():
                extra['scaler'] = scaler.state_dict()
            save_checkpoint(
                self.dir / STATE_FILE, self.network, self.config, recipe=dict(self.recipe), **extra
            )
        distributed.barrier()

    def _evaluate(self, global_step: int) -> None:
        """Evaluate (every rank), log the metrics (CSV + log line) and redraw the curves."""
        metrics = self._evaluate_fn()
        self.eval_log.append({'global_step': global_step, **metrics})
        shown = ', '.join(f'{k}={v:.3f}' for k, v in metrics.items() if '-' not in k)
        logger.info('step %d: %s', global_step, shown)
        self._plot()

    def _plot(self) -> None:
        plot_metrics(self.train_log, self.eval_log, self.dir / PLOT_FILE)
