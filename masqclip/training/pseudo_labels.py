"""Stage-1 progressive distillation: the frozen teacher's pseudo-masks (method.md 2.2, trap 11).

Every iteration the teacher runs on the student's own augmented batch; its confident masks
that overlap no annotation and no better pseudo-mask are added to the ground truth, so the
student also learns objects the base annotations leave out (novel ones, present but
unlabelled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from masqclip.training.losses import OBJECT, point_sample


@dataclass(frozen=True)
class PseudoLabelCfg:
    """Which teacher masks become targets.

    :param score_threshold: keep masks whose score (p_obj x mean in-mask sigmoid) exceeds it.
    :param gt_dice_threshold: keep masks whose dice with every ground-truth mask is below it.
    :param nms_dice_threshold: greedy NMS: drop a mask whose dice with a better kept one is
        not below it.
    :param num_points: random points the dice is computed on (12544 upstream).
    """

    score_threshold: float = 0.8
    gt_dice_threshold: float = 0.1
    nms_dice_threshold: float = 0.1
    num_points: int = 12544


def teacher_masks(
    pred_logits: Tensor, pred_masks: Tensor, size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The teacher's instance predictions at the input resolution (one class: all queries).

    :param pred_logits: float [B, Q, 2].
    :param pred_masks: float [B, Q, h, w] mask logits.
    :param size: (H, W) of the network input.
    :return: scores float [B, Q] = p_obj x mean sigmoid inside the binary mask (0 for an
        empty mask), and binary masks bool [B, Q, H, W] (logit > 0).
    """
    logits = F.interpolate(pred_masks.float(), size=size, mode='bilinear', align_corners=False)
    binary = logits > 0
    inside = (logits.sigmoid() * binary).flatten(2).sum(-1)
    mean_inside = inside / (binary.flatten(2).sum(-1) + 1e-6)
    p_object = pred_logits.float().softmax(-1)[..., OBJECT]
    return p_object * mean_inside, binary


def point_dice(a: Tensor, b: Tensor, coords: Tensor) -> Tensor:
    """Smoothed dice (2 * overlap + 1) / (|a| + |b| + 1) of every mask of ``a`` with every
    mask of ``b``, counted on sampled points.

    :param a: bool [Na, H, W].
    :param b: bool [Nb, H, W].
    :param coords: float [P, 2], (x, y) in [0, 1].
    :return: float [Na, Nb].
    """

    def sample(masks: Tensor) -> Tensor:
        points = coords[None].expand(masks.shape[0], -1, -1)
        return point_sample(masks[:, None].float(), points)[:, 0]

    pa, pb = sample(a), sample(b)
    return (2 * pa @ pb.T + 1) / (pa.sum(-1)[:, None] + pb.sum(-1)[None, :] + 1)


def select_pseudo_masks(
    scores: Tensor,
    masks: Tensor,
    gt_masks: Tensor,
    cfg: PseudoLabelCfg,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one image's pseudo-masks: confident, off every annotation, not duplicated.

    :param scores: float [Q] teacher scores.
    :param masks: bool [Q, H, W] teacher binary masks.
    :param gt_masks: bool [N, H, W] ground-truth masks (N may be 0: then every confident
        mask passes the overlap test).
    :param cfg: the thresholds.
    :param generator: random source of the dice points.
    :return: int64 [K] indices into the Q masks, highest score first.
    """
    device = masks.device
    candidates = torch.nonzero(scores > cfg.score_threshold).flatten()
    if candidates.numel() == 0:
        return candidates
    if gt_masks.shape[0] > 0:
        coords = torch.rand(cfg.num_points, 2, generator=generator, device=device)
        overlap = point_dice(masks[candidates], gt_masks.to(device), coords).amax(1)
        candidates = candidates[overlap < cfg.gt_dice_threshold]
    if candidates.numel() <= 1:
        return candidates
    candidates = candidates[scores[candidates].argsort(descending=True)]
    # A fresh point set for the NMS, as upstream.
    coords = torch.rand(cfg.num_points, 2, generator=generator, device=device)
    dice = point_dice(masks[candidates], masks[candidates], coords)
    kept: list[int] = []
    for i in range(candidates.numel()):
        if all(dice[i, j] < cfg.nms_dice_threshold for j in kept):
            kept.append(i)
    return candidates[kept]


@torch.no_grad()
def add_pseudo_masks(
    teacher_outputs: dict,
    targets: list[Tensor],
    cfg: PseudoLabelCfg,
    generators: Sequence[torch.Generator] | None = None,
) -> tuple[list[Tensor], int]:
    """Append the teacher's pseudo-masks to each image's ground truth.

    :param teacher_outputs: the teacher proposer's output on the same batch.
    :param targets: B bool tensors [N_b, H, W] (every label "object").
    :param cfg: the thresholds.
    :param generators: B random sources of the dice points, one per image (None: torch's
        global one).
    :return: the new targets (ground truth first, then pseudo-masks) and how many
        pseudo-masks were added in all.
    """
    size = tuple(targets[0].shape[-2:]) if targets else (0, 0)
    scores, masks = teacher_masks(
        teacher_outputs['pred_logits'], teacher_outputs['pred_masks'], size
    )
    merged, added = [], 0
    for b, gt in enumerate(targets):
        generator = generators[b] if generators is not None else None
        keep = select_pseudo_masks(scores[b], masks[b], gt, cfg, generator)
        merged.append(torch.cat([gt, masks[b][keep].to(gt.device)]))
        added += int(keep.numel())
    return merged, added
