"""Stage 2, MasQ-Tuning: teach the mask tokens to classify proposals (method.md 3).

The proposer (from stage 1) and CLIP stay frozen, the proposer in eval mode; only the
per-layer ``new_q_proj`` and ``mask_embeddings`` train. Each proposal is assigned the class
of the ground-truth mask it overlaps with dice > 0.6, else background (``masq_tuning.py``),
and the loss is NLL over the training vocabulary + "background", whose text embeddings are
computed once. AdamW 1e-4, x0.1 at 90 % of the steps, weight decay 0.05, clip 0.01.

Files in the run folder: ``config.yaml``, ``last.pt`` (resumable), ``model.pt`` (final),
``metrics.csv``, ``eval.csv``, ``curves.png``.

Under torchrun ``mask_clip`` is wrapped in DDP (only its trainable tokens' gradients travel);
proposals and their assignment stay on each device, and the loss's divisor (the total class
weight) is summed over the global batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from masqclip.checkpoint import save_checkpoint
from masqclip.inference.vocabulary import BACKGROUND
from masqclip.modeling.masqclip import MasQCLIP
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
from masqclip.training.masq_tuning import (
    assign_proposals,
    classification_loss,
    classification_weight,
)
from masqclip.training.recipe import RecipeError, require
from masqclip.training.run import MODEL_FILE, Run, setup_process

logger = logging.getLogger('masqclip')

SECTIONS = ('model', 'data', 'train', 'loss', 'eval')


def trainable_parameters(network: MasQCLIP) -> list[torch.nn.Parameter]:
    """Freeze everything but the mask tokens' query projections and embedding (trap 2: the
    reference trains ``mask_embeddings`` too) and return those."""
    network.requires_grad_(False)
    mask_clip = network.mask_clip
    mask_clip.new_q_proj.requires_grad_(True)
    mask_clip.mask_embeddings.requires_grad_(True)
    return [*mask_clip.new_q_proj.parameters(), mask_clip.mask_embeddings]


def tuning_step(
    network: MasQCLIP,
    mask_clip: torch.nn.Module,
    text: Tensor,
    loss_cfg: dict,
) -> engine.TrainStep:
    """One MasQ-Tuning step: the frozen proposer's masks and their classes, then the mask
    tokens' classification loss.

    :param network: the whole model (its proposer and CLIP preprocessing are used frozen).
    :param mask_clip: ``network.mask_clip``, DDP-wrapped under torchrun.
    :param text: float [N + 1, D], the training classes' text embeddings, background last.
    :param loss_cfg: the recipe's ``loss`` section.
    """
    num_classes = text.shape[0] - 1
    background_weight = float(loss_cfg['background_weight'])

    def prepare(batch: Batch) -> tuple[tuple, dict[str, float]]:
        mask_logits = network.proposer(batch.images)['pred_masks']
        labels = assign_proposals(
            mask_logits,
            batch.masks,
            batch.labels,
            num_classes,
            network.clip_image_size,
            float(loss_cfg['dice_threshold']),
        )
        weight = classification_weight(labels, num_classes, background_weight)
        return (batch.images, mask_logits, labels), {'class_weight': weight}

    def loss(inputs: tuple, mean_counts: dict[str, float]) -> tuple[Tensor, dict[str, float]]:
        images, mask_logits, labels = inputs
        embeddings = mask_clip(network.clip_input(images), mask_logits)
        nll = classification_loss(
            embeddings, text, labels, background_weight, mean_counts['class_weight']
        )
        total = float(loss_cfg['class_weight']) * nll
        return total, {
            'loss': float(total.detach()),
            'loss_nll': float(nll.detach()),
            'assigned': float((labels < num_classes).float().mean()),
        }

    return engine.TrainStep(prepare, loss)


def train_stage2(recipe: dict, run_dir: Path, resume: bool = False) -> Path:
    """Run (or resume) MasQ-Tuning.

    :param recipe: the resolved recipe (see ``masqclip/recipes/stage2.yaml``).
    :param run_dir: the run folder.
    :param resume: continue from ``run_dir/last.pt``.
    :return: the path of the final weights (``model.pt``).
    """
    require(recipe, *SECTIONS)
    train, data, loss_cfg, eval_cfg = (recipe[k] for k in ('train', 'data', 'loss', 'eval'))
    if not recipe['model']['init']:
        raise RecipeError(
            'stage 2 starts from a trained proposer: set model.init=PATH to a '
            'stage-1 checkpoint (runs/stage1/model.pt)'
        )
    device = setup_process(train)
    micro_batch = engine.per_device_batch(train)
    dataset = load_dataset(data)
    lsj = lsj_from_recipe(data)
    eval_set = load_eval_set(data, eval_cfg)
    torch.manual_seed(int(train['seed']))
    network, config = engine.build_network(recipe['model'])

    def evaluate_now() -> dict[str, float]:
        return evaluate_eval_set(network, config, eval_set, eval_cfg, device)

    run = Run(
        recipe,
        run_dir,
        resume,
        network=network,
        config=config,
        phases=[engine.Phase('stage2', int(train['steps']), train)],
        device=device,
        evaluate=evaluate_now if eval_set else None,
    )
    network.to(device).eval()
    params = trainable_parameters(network)
    mask_clip = distributed.wrap_ddp(network.mask_clip, device)
    # The training vocabulary's text embeddings + background, once (the text tower is frozen).
    names = [c.name for c in dataset.categories]
    text = network.encode_classes([[n] for n in names] + [[BACKGROUND]]).to(device)
    seed = int(train['seed'])
    batches = make_loader(
        AugmentedSegments(dataset, lsj, seed),
        micro_batch,
        seed,
        run.steps_done(0),
        int(data['num_workers']),
        *distributed.rank_and_world(),
        engine.accum_steps(train),
    )
    optimizer = engine.make_optimizer([{'params': params}], train)
    step = tuning_step(network, mask_clip, text, loss_cfg)
    run.fit(0, batches, step, optimizer, model=mask_clip)

    final = run_dir / MODEL_FILE
    if distributed.is_main_process():
        save_checkpoint(final, network, config, stage='stage2')
    run.finish()
    logger.info('stage 2 done: %s', final)
    return final


def main(argv: Sequence[str] | None = None) -> int:
    """``masqclip train stage2`` as a function: returns the exit status."""
    from masqclip.training.cli import main_for_stage

    return main_for_stage('stage2', argv)
