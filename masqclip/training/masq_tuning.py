"""Stage-2 MasQ-Tuning targets and loss (method.md 3.2, 3.3, trap 8).

Not Hungarian: each proposal takes the class of the ground-truth mask its binarised mask
overlaps best, if that dice exceeds 0.6 (several proposals may share one mask), else
"background". The loss is NLL over the N classes + background, background weighted 0.1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from masqclip.modeling.masqclip import clip_logits


@torch.no_grad()
def assign_proposals(
    mask_logits: Tensor,
    gt_masks: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    num_classes: int,
    size: int,
    dice_threshold: float = 0.6,
) -> Tensor:
    """The class each proposal is trained towards.

    :param mask_logits: float [B, Q, h, w] proposal mask logits (bilinearly resized to
        ``size``, then binarised at logit > 0, i.e. sigmoid > 0.5).
    :param gt_masks: B bool tensors [N_b, H, W] (nearest-resized to ``size``).
    :param gt_labels: B int64 tensors [N_b], class indices in [0, num_classes).
    :param num_classes: N; index N is background.
    :param size: the side the masks are compared at (CLIP's input size, 336 upstream).
    :param dice_threshold: a proposal is assigned when its best dice exceeds this.
    :return: int64 [B, Q] class index per proposal, N for background.
    """
    batch, queries = mask_logits.shape[:2]
    device = mask_logits.device
    pred = (
        F.interpolate(mask_logits.float(), size=(size, size), mode='bilinear', align_corners=False)
        > 0
    )
    pred = pred.flatten(2).float()
    labels = torch.full((batch, queries), num_classes, dtype=torch.int64, device=device)
    for b in range(batch):
        if gt_masks[b].shape[0] == 0:
            continue
        gt = F.interpolate(
            gt_masks[b][None].float().to(device), size=(size, size), mode='nearest'
        )[0].flatten(1)
        dice = (2 * pred[b] @ gt.T + 1) / (pred[b].sum(-1)[:, None] + gt.sum(-1)[None] + 1)
        best, index = dice.max(1)
        assigned = best > dice_threshold
        labels[b, assigned] = gt_labels[b].to(device)[index[assigned]]
    return labels


def classification_weight(labels: Tensor, num_classes: int, background_weight: float) -> float:
    """The total class weight of a batch's proposals: the divisor of its weighted mean loss.

    :param labels: int64 [B, Q] from ``assign_proposals`` (``num_classes`` = background).
    :param num_classes: N.
    :param background_weight: class weight of background.
    """
    background = int((labels == num_classes).sum())
    return (labels.numel() - background) + background_weight * background


def classification_loss(
    mask_embeddings: Tensor,
    text_embeddings: Tensor,
    labels: Tensor,
    background_weight: float = 0.1,
    total_weight: float | None = None,
) -> Tensor:
    """Weighted NLL of the CLIP classification over N classes + background.

    :param mask_embeddings: float [B, Q, D], L2-normalised.
    :param text_embeddings: float [N + 1, D], L2-normalised, background last.
    :param labels: int64 [B, Q] from ``assign_proposals``.
    :param background_weight: class weight of background; most proposals are background.
    :param total_weight: the divisor of the weighted sum (None: this batch's
        ``classification_weight``, the weighted mean; under DDP or accumulation, the global
        batch's, averaged over its micro-batches).
    :return: scalar, the weighted mean over all B x Q proposals.
    """
    logits = clip_logits(mask_embeddings, text_embeddings)
    weight = torch.ones(text_embeddings.shape[0], device=logits.device)
    weight[-1] = background_weight
    log_probs = logits.log_softmax(-1)
    if total_weight is None:
        total_weight = classification_weight(
            labels, text_embeddings.shape[0] - 1, background_weight
        )
    summed = F.nll_loss(log_probs.flatten(0, 1), labels.flatten(), weight=weight, reduction='sum')
    return summed / total_weight
