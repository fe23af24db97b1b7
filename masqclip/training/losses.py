"""Stage-1 losses: Mask2Former's Hungarian matching and set criterion, class-agnostic.

Follows method.md 2.1: matching costs class 2, mask BCE 5, dice 5 on points sampled uniformly;
losses 2-way cross-entropy (no-object weight 0.1) x2, sigmoid BCE x5 and dice x5 on points
chosen by PointRend importance sampling; the same loss on every auxiliary prediction. Every
ground-truth label is 0 ("object"): the proposer's head is object / no-object (trap 12).

Masks are compared through ``point_sample`` at normalised coordinates, so predictions (1/4 of
the input) and ground truth (input resolution) never need resizing to each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

OBJECT, NO_OBJECT = 0, 1


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinearly sample maps at normalised points (``align_corners=False``, as PointRend).

    :param inputs: float [N, C, H, W].
    :param coords: float [N, P, 2], (x, y) in [0, 1].
    :return: float [N, C, P].
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)
    return F.grid_sample(inputs, grid, align_corners=False).squeeze(3)


def uncertain_point_coords(
    mask_logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PointRend's training points: the most uncertain of an oversampled random set, plus
    uniformly random ones (so confident regions still get some supervision).

    Uncertainty is -|logit|: points near the predicted boundary matter most.

    :param mask_logits: float [N, 1, H, W].
    :param num_points: K points per mask.
    :param oversample_ratio: draw ``K * oversample_ratio`` candidates.
    :param importance_sample_ratio: fraction of the K taken by uncertainty.
    :param generator: random source (None: torch's global one).
    :return: float [N, K, 2], (x, y) in [0, 1].
    """
    n, device = mask_logits.shape[0], mask_logits.device
    num_sampled = int(num_points * oversample_ratio)
    candidates = torch.rand(n, num_sampled, 2, generator=generator, device=device)
    uncertainty = -point_sample(mask_logits, candidates).abs()[:, 0]
    num_uncertain = int(importance_sample_ratio * num_points)
    top = uncertainty.topk(num_uncertain, dim=1).indices
    picked = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    random = torch.rand(n, num_points - num_uncertain, 2, generator=generator, device=device)
    return torch.cat([picked, random], dim=1)


def dice_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Sum over masks of 1 - soft dice (+1 smoothing), divided by ``num_masks``.

    :param logits: float [M, P] mask logits at points.
    :param targets: float [M, P] in {0, 1}.
    """
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Per-point binary cross-entropy, averaged over points, summed over masks / ``num_masks``.

    :param logits: float [M, P].
    :param targets: float [M, P] in {0, 1}.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    return loss.mean(1).sum() / num_masks


def pairwise_sigmoid_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE of every prediction against every target, as a matrix.

    :param logits: float [Q, P].
    :param targets: float [N, P].
    :return: float [Q, N].
    """
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction='none')
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction='none')
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def pairwise_dice_cost(logits: Tensor, targets: Tensor) -> Tensor:
    """1 - soft dice of every prediction against every target.

    :param logits: float [Q, P].
    :param targets: float [N, P].
    :return: float [Q, N].
    """
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@dataclass(frozen=True)
class MatcherCfg:
    """Hungarian matching costs (method.md 2.1).

    :param cost_class: weight of -p(object).
    :param cost_mask: weight of the mean point BCE.
    :param cost_dice: weight of the point dice cost.
    :param num_points: uniform random points per image (12544 = 112^2 upstream).
    """

    cost_class: float = 2.0
    cost_mask: float = 5.0
    cost_dice: float = 5.0
    num_points: int = 12544


@torch.no_grad()
def hungarian_match(
    pred_logits: Tensor,
    pred_masks: Tensor,
    targets: Sequence[Tensor],
    cfg: MatcherCfg,
    generators: Sequence[torch.Generator] | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """One-to-one assignment of queries to ground-truth masks, per image.

    :param pred_logits: float [B, Q, 2] object / no-object logits.
    :param pred_masks: float [B, Q, h, w] mask logits.
    :param targets: B bool or float tensors [N_b, H, W] of ground-truth masks (every label is
        "object").
    :param cfg: the costs.
    :param generators: B random sources of the points, one per image (None: torch's global
        one).
    :return: per image (query indices, target indices), int64 [M_b] each, M_b = min(Q, N_b).
    """
    matches = []
    for b, gt in enumerate(targets):
        if gt.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            matches.append((empty, empty))
            continue
        out_mask = pred_masks[b][:, None].float()
        tgt_mask = gt[:, None].to(out_mask)
        # One point set shared by predictions and targets, so the costs compare like with like.
        generator = generators[b] if generators is not None else None
        coords = torch.rand(1, cfg.num_points, 2, generator=generator, device=out_mask.device)
        out_points = point_sample(out_mask, coords.expand(out_mask.shape[0], -1, -1))[:, 0]
        tgt_points = point_sample(tgt_mask, coords.expand(tgt_mask.shape[0], -1, -1))[:, 0]
        p_object = pred_logits[b].float().softmax(-1)[:, OBJECT]
        cost = (
            cfg.cost_mask * pairwise_sigmoid_ce(out_points, tgt_points)
            + cfg.cost_class * -p_object[:, None].expand(-1, gt.shape[0])
            + cfg.cost_dice * pairwise_dice_cost(out_points, tgt_points)
        )
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        matches.append(
            (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
        )
    return matches


@dataclass(frozen=True)
class CriterionCfg:
    """Stage-1 loss weights and point sampling (method.md 2.1).

    :param class_weight: weight of the 2-way cross-entropy.
    :param mask_weight: weight of the point BCE.
    :param dice_weight: weight of the point dice loss.
    :param no_object_weight: class weight of "no-object" in the cross-entropy; unmatched
        queries far outnumber matched ones, so they are down-weighted.
    :param num_points: K importance-sampled points per matched mask.
    :param oversample_ratio: PointRend's candidate oversampling.
    :param importance_sample_ratio: PointRend's share of uncertain points.
    :param deep_supervision: apply the loss to every auxiliary prediction as well.
    """

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True


def _losses_one_prediction(
    pred_logits: Tensor,
    pred_masks: Tensor,
    targets: Sequence[Tensor],
    matches: Sequence[tuple[Tensor, Tensor]],
    norms: dict[str, float],
    cfg: CriterionCfg,
    generators: Sequence[torch.Generator] | None,
) -> dict[str, Tensor]:
    batch, queries = pred_logits.shape[:2]
    labels = torch.full((batch, queries), NO_OBJECT, dtype=torch.int64, device=pred_logits.device)
    for b, (rows, _) in enumerate(matches):
        labels[b, rows.to(labels.device)] = OBJECT
    class_weight = torch.tensor([1.0, cfg.no_object_weight], device=pred_logits.device)
    # A weighted sum over the queries divided by the batch's total weight: the weighted mean
    # of F.cross_entropy, with the total taken over the whole global batch under DDP.
    loss_ce = (
        F.cross_entropy(pred_logits.float().transpose(1, 2), labels, class_weight, reduction='sum')
        / norms['class_weight']
    )

    point_logits, point_labels = [], []
    for b, (rows, cols) in enumerate(matches):
        if rows.numel() == 0:
            continue
        src = pred_masks[b, rows.to(pred_masks.device)][:, None].float()
        tgt = targets[b][cols.to(targets[b].device)][:, None].to(src.device, torch.float32)
        # Per image, from the image's own generator: the points do not depend on which other
        # images share the batch (or the rank).
        with torch.no_grad():
            coords = uncertain_point_coords(
                src,
                cfg.num_points,
                cfg.oversample_ratio,
                cfg.importance_sample_ratio,
                generators[b] if generators is not None else None,
            )
            point_labels.append(point_sample(tgt, coords)[:, 0])
        point_logits.append(point_sample(src, coords)[:, 0])
    if not point_logits:
        # Keep the graph connected (DDP needs every parameter used), with a zero value.
        zero = pred_masks.sum() * 0.0
        return {'loss_ce': loss_ce, 'loss_mask': zero, 'loss_dice': zero}
    logits, targets_at_points = torch.cat(point_logits), torch.cat(point_labels)
    return {
        'loss_ce': loss_ce,
        'loss_mask': sigmoid_ce_loss(logits, targets_at_points, norms['masks']),
        'loss_dice': dice_loss(logits, targets_at_points, norms['masks']),
    }


class SetCriterion:
    """Mask2Former's class-agnostic set loss with deep supervision.

    The mask losses are sums over matched masks divided by the number of target masks, and
    the class loss a weighted sum over queries divided by the total weight, as upstream.
    Under DDP or gradient accumulation those two divisors are the global batch's (``counts``
    summed over every micro-batch, see ``engine.TrainStep``), so N processes compute the same
    loss as one process on the whole batch. Upstream all-reduces the mask count the same way
    but keeps the class loss's divisor per process.

    :param matcher: matching costs.
    :param cfg: loss weights and point sampling.
    """

    def __init__(self, matcher: MatcherCfg, cfg: CriterionCfg) -> None:
        self.matcher = matcher
        self.cfg = cfg

    def counts(self, targets: Sequence[Tensor], num_queries: int) -> dict[str, float]:
        """The loss's divisors on a batch: ``masks`` = target masks, ``class_weight`` = the
        cross-entropy's total weight (matched queries 1, the others ``no_object_weight``;
        Hungarian matching pairs min(Q, N_b) queries of image b).

        :param targets: B tensors [N_b, H, W].
        :param num_queries: Q.
        """
        sizes = [t.shape[0] for t in targets]
        matched = sum(min(num_queries, n) for n in sizes)
        unmatched = num_queries * len(sizes) - matched
        return {
            'masks': float(sum(sizes)),
            'class_weight': matched + self.cfg.no_object_weight * unmatched,
        }

    def __call__(
        self,
        outputs: dict,
        targets: Sequence[Tensor],
        generators: Sequence[torch.Generator] | None = None,
        mean_counts: dict[str, float] | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Weighted total loss and its parts.

        :param outputs: the proposer's output dict (``pred_logits``, ``pred_masks``,
            ``aux_outputs``).
        :param targets: B bool tensors [N_b, H, W], ground-truth masks at the input size.
        :param generators: B random sources of all the points sampled for each image (None:
            torch's global one).
        :param mean_counts: the divisors, ``counts`` averaged over the micro-batches of the
            global batch (None: this batch's own ``counts``, i.e. a single process).
        :return: (scalar loss with gradient, ``{name: float}`` of the unweighted final-layer
            losses and the total).
        """
        if mean_counts is None:
            mean_counts = self.counts(targets, outputs['pred_logits'].shape[1])
        # A zero count only occurs with a zero sum (no targets): any divisor gives 0 then.
        norms = {k: v if v > 0 else 1.0 for k, v in mean_counts.items()}
        weights = {
            'loss_ce': self.cfg.class_weight,
            'loss_mask': self.cfg.mask_weight,
            'loss_dice': self.cfg.dice_weight,
        }
        predictions = [outputs]
        if self.cfg.deep_supervision:
            predictions += list(outputs.get('aux_outputs', []))
        total = outputs['pred_logits'].new_zeros(())
        parts: dict[str, float] = {}
        for i, prediction in enumerate(predictions):
            matches = hungarian_match(
                prediction['pred_logits'],
                prediction['pred_masks'],
                targets,
                self.matcher,
                generators,
            )
            losses = _losses_one_prediction(
                prediction['pred_logits'],
                prediction['pred_masks'],
                targets,
                matches,
                norms,
                self.cfg,
                generators,
            )
            total = total + sum(weights[k] * v for k, v in losses.items())
            if i == 0:
                parts = {k: float(v.detach()) for k, v in losses.items()}
        parts['loss'] = float(total.detach())
        return total, parts
