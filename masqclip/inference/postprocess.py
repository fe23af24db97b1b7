"""Score fusion and post-processing of one image's proposals (method.md sections 1.7, 1.8).

Every function takes torch tensors for ONE image (no batch dimension), on any device, and
returns tensors on that same device. ``Q`` is the number of proposals (queries), ``N`` the
number of vocabulary classes (background excluded) and ``H x W`` the size the mask logits
were resized to (normally the input image's size). Panoptic and instance inference read the
full-size mask logits one proposal at a time (``mask_logits[q]``), so they accept an
``ImageSizeMaskLogits`` that resizes on demand: memory stays O(H x W), not O(Q x H x W).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import torch

from masqclip.inference.results import UNLABELED
from masqclip.inference.transforms import ResizeSpec, mask_logits_to_image, resize_axes
from masqclip.modeling.masqclip import CLIP_LOGIT_SCALE, clip_logits


class ImageSizeMaskLogits:
    """Mask logits [Q, Hp/4, Wp/4] read one proposal at a time at the original image size
    (``mask_logits_to_image``), so post-processing never holds Q full-size maps: at 4096 x 4096
    those are 64 MiB each.

    Quacks like a (Q, H, W) tensor for the post-processing functions: ``shape``, ``ndim``,
    ``len`` and ``[query]`` (bilinear resizing treats each proposal independently, so a
    proposal read alone equals its slice of the whole resize).

    ``cropped(query)`` is what instances need: the binary mask's box, the crop inside it and
    its mean sigmoid. Only low-resolution cells with a positive logit can make a positive pixel
    (the resize weights are >= 0), so a compact mask resizes just the box those cells reach, as
    ``rows @ logits @ cols.T`` with the matrices of ``resize_axes`` (equal to the full resize
    to float32 rounding, 2e-6 on logits of a few units): an object covering a tenth of the frame
    costs about a tenth of a full read. The ``keep_crops`` proposals (the instance candidates)
    keep their crop when panoptic inference reads them whole.

    :param keep_crops: proposals whose crops to keep (the instance candidates).
    """

    ndim = 3

    def __init__(
        self, mask_logits: torch.Tensor, spec: ResizeSpec, keep_crops: Collection[int] = ()
    ) -> None:
        self.low_res = mask_logits
        self.spec = spec
        rows, cols = resize_axes(spec, tuple(mask_logits.shape[-2:]))
        self._rows, self._cols = rows.to(mask_logits.device), cols.to(mask_logits.device)
        self._keep_crops = frozenset(keep_crops)
        self._crops: dict[int, tuple[float, torch.Tensor, torch.Tensor]] = {}

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.low_res.shape[0], *self.spec.original)

    @property
    def device(self) -> torch.device:
        return self.low_res.device

    def __len__(self) -> int:
        return self.low_res.shape[0]

    def __getitem__(self, query: int) -> torch.Tensor:
        """float (H, W) logits of one proposal at the original image size."""
        logits = self._full_size(query)
        if query in self._keep_crops and query not in self._crops:
            self._crops[query] = self._crop(query, logits)
        return logits

    def cropped(self, query: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        """``cropped_mask`` of one proposal's full-size logits, mostly without making them."""
        return self._crops.get(query) or self._crop(query)

    def _full_size(self, query: int) -> torch.Tensor:
        return mask_logits_to_image(self.low_res[query : query + 1], self.spec)[0]

    def _crop(
        self, query: int, full_size: torch.Tensor | None = None
    ) -> tuple[float, torch.Tensor, torch.Tensor]:
        # The full-size rows and columns a positive low-resolution logit reaches: every
        # positive pixel lies inside.
        support = self.low_res[query] > 0
        y0, y1 = self._rows.outputs_reached(support.any(dim=1))
        x0, x1 = self._cols.outputs_reached(support.any(dim=0))
        if y0 >= y1 or x0 >= x1:
            return cropped_mask(self.low_res.new_zeros((0, 0)))  # the empty mask's values
        if full_size is None and (y1 - y0) * (x1 - x0) > _FULL_READ_AREA * math.prod(
            self.spec.original
        ):
            full_size = self._full_size(query)
        if full_size is None:
            window = self._resize_window(query, (y0, y1), (x0, x1))
        else:
            window = full_size[y0:y1, x0:x1]
        quality, box, crop = cropped_mask(window)
        if crop.numel():
            box = box + torch.tensor([x0, y0, x0, y0], dtype=box.dtype, device=box.device)
        return quality, box, crop

    def _resize_window(
        self, query: int, rows: tuple[int, int], cols: tuple[int, int]
    ) -> torch.Tensor:
        """The full-size logits of rows [y0, y1) x columns [x0, x1), from just the
        low-resolution cells they read."""
        (y0, y1), (x0, x1) = rows, cols
        (i0, i1), (j0, j1) = self._rows.inputs_read(y0, y1), self._cols.inputs_read(x0, x1)
        return torch.linalg.multi_dot(
            (
                self._rows.weights[y0:y1, i0:i1],
                self.low_res[query, i0:i1, j0:j1].float(),
                self._cols.weights[x0:x1, j0:j1].T,
            )
        )


_FULL_READ_AREA = 0.25
"""Above this share of the frame, a window's matrix product costs more than one bilinear
resize of the whole proposal (which touches 2-3 low-resolution cells per pixel, where the
product touches every cell of the window's rows and columns): read it whole and slice."""


def _span(flags: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) of the True entries of a non-empty-True 1-D bool tensor."""
    where = flags.nonzero().flatten()
    return int(where[0]), int(where[-1]) + 1


@dataclass(frozen=True)
class PanopticSegmentInfo:
    """One segment of the map :func:`panoptic_inference` returns.

    :param id: the value of this segment's pixels in the segment-id map (>= 1).
    :param class_id: vocabulary index of the segment's class.
    :param is_thing: True for a countable object, False for a stuff region (merged per class).
    :param score: the segment's class score (for merged stuff, the best of its queries).
    :param area: number of pixels carrying ``id``.
    :param query_index: the query a thing segment comes from; -1 for stuff (it may merge
        several).
    """

    id: int
    class_id: int
    is_thing: bool
    score: float
    area: int
    query_index: int = -1


@dataclass(frozen=True)
class InstanceInferenceResult:
    """The instances :func:`instance_inference` keeps, best first.

    :param scores: float32 (K,), class score x mean sigmoid inside the binary mask.
    :param class_ids: int64 (K,), vocabulary index of each instance.
    :param query_indices: int64 (K,), the proposal each instance came from.
    :param mask_quality: float32 (K,), mean sigmoid inside each mask (the second factor of
        ``scores``).
    :param boxes: float32 (K, 4), tight box of each mask (x0, y0, x1, y1, x1/y1 exclusive).
    :param mask_crops: K bool (y1 - y0, x1 - x0) tensors: mask logit > 0 inside each box.
    """

    scores: torch.Tensor
    class_ids: torch.Tensor
    query_indices: torch.Tensor
    mask_quality: torch.Tensor
    boxes: torch.Tensor
    mask_crops: list[torch.Tensor]

    def paste_masks(self, height: int, width: int) -> torch.Tensor:
        """bool (K, height, width): the crops pasted into full-size masks (costly at camera
        resolution: for tests and small images)."""
        masks = torch.zeros((len(self.mask_crops), height, width), dtype=torch.bool)
        for mask, box, crop in zip(masks, self.boxes.tolist(), self.mask_crops, strict=True):
            x0, y0, x1, y1 = (int(v) for v in box)
            mask[y0:y1, x0:x1] = crop.cpu()
        return masks


def classify_masks(
    mask_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    objectness: torch.Tensor,
    logit_scale: float = CLIP_LOGIT_SCALE,
    exemplar_thresholds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fuse CLIP's classification with the proposer's objectness: p_obj x p_clip(c).

    The softmax runs over the N classes plus the background text, and the background
    column is dropped only after the product (trap 6), so a proposal that looks like
    background gets low scores for every class.

    An exemplar class's row is an image embedding, and CLIP puts images nearer each other
    than any text (the modality gap: on the demo model an exemplar's cosine to every mask is
    0.6-0.98, to the right text 0.5-0.7), so its raw logit would win on every mask. Its logit
    is instead the best text logit of the mask plus ``logit_scale x (cos - threshold)``: it
    wins exactly where the mask is nearer the exemplar than its threshold.

    :param mask_embeddings: float (Q, D), L2-normalised CLIP mask embeddings.
    :param text_embeddings: float (N + 1, D), L2-normalised class embeddings with the
        'background' entry LAST.
    :param objectness: float (Q,), p_obj of each proposal in [0, 1].
    :param logit_scale: multiplier of the cosine similarity (CLIP's fixed 100).
    :param exemplar_thresholds: float (N + 1,), each exemplar row's threshold and NaN for text
        rows (``vocabulary.exemplar_thresholds``); None: every row is text.
    :return: float (Q, N) class scores in [0, 1].
    """
    if mask_embeddings.ndim != 2 or text_embeddings.ndim != 2:
        raise ValueError(
            f'classify_masks expects 2-D embeddings, got mask {tuple(mask_embeddings.shape)} '
            f'and text {tuple(text_embeddings.shape)}'
        )
    if text_embeddings.shape[0] < 1:
        raise ValueError(
            'text_embeddings needs at least the background row (last); append the '
            "'background' text embedding to the vocabulary's embeddings"
        )
    if mask_embeddings.shape[1] != text_embeddings.shape[1]:
        raise ValueError(
            f'embedding widths differ: masks have D={mask_embeddings.shape[1]}, text has '
            f'D={text_embeddings.shape[1]}; encode both with the same CLIP model'
        )
    if objectness.shape != (mask_embeddings.shape[0],):
        raise ValueError(
            f'objectness must have shape ({mask_embeddings.shape[0]},), '
            f'got {tuple(objectness.shape)}'
        )
    logits = clip_logits(mask_embeddings, text_embeddings, logit_scale)
    if exemplar_thresholds is not None:
        logits = _calibrated_exemplar_logits(logits, exemplar_thresholds.to(logits), logit_scale)
    return (objectness.float()[:, None] * logits.softmax(dim=-1))[:, :-1]


def _calibrated_exemplar_logits(
    logits: torch.Tensor, thresholds: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """``logits`` (Q, N + 1) with each exemplar column (threshold not NaN) replaced by the
    row's best text logit plus ``logit_scale x (cos - threshold)``."""
    if thresholds.shape != logits.shape[1:]:
        raise ValueError(
            f'exemplar_thresholds must have shape ({logits.shape[1]},), '
            f'got {tuple(thresholds.shape)}'
        )
    is_exemplar = ~thresholds.isnan()
    if not is_exemplar.any():
        return logits
    best_text = logits[:, ~is_exemplar].amax(dim=1, keepdim=True)  # background is text
    calibrated = best_text + logits - logit_scale * thresholds.nan_to_num()
    return torch.where(is_exemplar, calibrated, logits)


def _check_scores_and_masks(class_scores: torch.Tensor, mask_logits: torch.Tensor) -> None:
    """Raise ValueError unless class_scores is (Q, N) and mask_logits is (Q, H, W)."""
    if class_scores.ndim != 2 or mask_logits.ndim != 3:
        raise ValueError(
            f'expected class_scores (Q, N) and mask_logits (Q, H, W) for one image, got '
            f'{tuple(class_scores.shape)} and {tuple(mask_logits.shape)}'
        )
    if class_scores.shape[0] != mask_logits.shape[0]:
        raise ValueError(
            f'class_scores has {class_scores.shape[0]} queries but mask_logits has '
            f'{mask_logits.shape[0]}; pass the outputs of the same proposals'
        )


def semantic_inference(
    class_scores: torch.Tensor, mask_logits: torch.Tensor, class_chunk: int = 64
) -> torch.Tensor:
    """Per-pixel class: argmax over c of sum_q score(q, c) x sigmoid(mask_q).

    No threshold and no background channel, as in the reference. Classes are processed
    ``class_chunk`` at a time with a running maximum, so memory is O(class_chunk x H x W)
    and an 847-class vocabulary costs no more memory than a small one. A pixel no class
    claims (no queries, no classes, or every sum exactly 0) is ``UNLABELED``.

    :param class_scores: float (Q, N) fused class scores (see :func:`classify_masks`).
    :param mask_logits: float (Q, H, W) mask logits.
    :param class_chunk: how many classes to score at once (>= 1).
    :return: int64 (H, W) class index per pixel, ``UNLABELED`` (-1) where none.
    """
    _check_scores_and_masks(class_scores, mask_logits)
    if class_chunk < 1:
        raise ValueError(f'class_chunk must be >= 1, got {class_chunk}')
    num_queries, num_classes = class_scores.shape
    height, width = mask_logits.shape[1:]
    device = mask_logits.device
    best_label = torch.full((height * width,), UNLABELED, dtype=torch.int64, device=device)
    if num_classes == 0 or num_queries == 0:
        return best_label.view(height, width)
    probs = mask_logits.float().sigmoid().reshape(num_queries, height * width)
    scores = class_scores.float().to(device)
    # Starting at 0 (not -inf) leaves pixels whose every sum is 0 unlabeled; sums are >= 0.
    best_value = torch.zeros(height * width, dtype=torch.float32, device=device)
    for start in range(0, num_classes, class_chunk):
        chunk = scores[:, start : start + class_chunk].T @ probs
        chunk_value, chunk_label = chunk.max(dim=0)
        # Strictly greater keeps the lower class index on ties, as a single argmax would.
        better = chunk_value > best_value
        best_value = torch.where(better, chunk_value, best_value)
        best_label = torch.where(better, chunk_label + start, best_label)
    return best_label.view(height, width)


def panoptic_inference(
    class_scores: torch.Tensor,
    mask_logits: torch.Tensor,
    is_thing: torch.Tensor,
    object_mask_threshold: float = 0.3,
    overlap_threshold: float = 0.3,
) -> tuple[torch.Tensor, list[PanopticSegmentInfo]]:
    """Mask2Former's panoptic merge of the proposals into non-overlapping segments.

    1. Each query takes its best class; queries scoring <= ``object_mask_threshold`` go.
    2. Every pixel goes to the kept query with the highest score x sigmoid.
    3. A query's segment is its pixels from step 2 that also have sigmoid >= 0.5. It is
       dropped when empty, or when its step-2 pixel count divided by the count of its
       sigmoid >= 0.5 pixels is below ``overlap_threshold`` (the reference divides the
       step-2 count, not the segment's own area).
    4. Stuff segments of one class merge into one segment; things never merge.

    MasQCLIP uses 0.3 / 0.3 (not Mask2Former's 0.8 / 0.8) because its scores are products
    of two probabilities (trap 14).

    :param class_scores: float (Q, N) fused class scores.
    :param mask_logits: float (Q, H, W) mask logits.
    :param is_thing: bool (N,), True for thing classes.
    :param object_mask_threshold: minimum class score of a query to be considered.
    :param overlap_threshold: minimum fraction of a query's mask it must keep after the
        per-pixel competition.
    :return: int32 (H, W) segment ids (0 = void, segments 1..K consecutive), and the K
        segments in id order.
    """
    _check_scores_and_masks(class_scores, mask_logits)
    num_classes = class_scores.shape[1]
    if is_thing.shape != (num_classes,):
        raise ValueError(
            f'is_thing must have one flag per class, shape ({num_classes},), '
            f'got {tuple(is_thing.shape)}'
        )
    height, width = mask_logits.shape[1:]
    device = mask_logits.device
    panoptic = torch.zeros((height, width), dtype=torch.int32, device=device)
    if num_classes == 0 or class_scores.shape[0] == 0:
        return panoptic, []

    scores, classes = class_scores.float().to(device).max(dim=-1)
    kept = torch.nonzero(scores > object_mask_threshold).flatten().tolist()
    num_kept = len(kept)
    if num_kept == 0:
        return panoptic, []
    scores, classes = scores[kept], classes[kept]

    # A running argmax over the kept queries, one full-size map at a time; strictly greater
    # keeps the first query on ties, as one argmax over all of them would.
    mask_area = []
    for index, query in enumerate(kept):
        probs = mask_logits[query].float().sigmoid().view(-1)
        inside = probs >= 0.5
        mask_area.append(int(inside.sum()))
        weighted = scores[index] * probs
        if index == 0:
            best, inside_at_winner = weighted, inside
            winner = torch.zeros_like(probs, dtype=torch.int64)
            continue
        better = weighted > best
        best = torch.where(better, weighted, best)
        winner.masked_fill_(better, index)
        inside_at_winner = torch.where(better, inside, inside_at_winner)
    won_area = torch.bincount(winner, minlength=num_kept)
    segment_area = torch.bincount(winner[inside_at_winner], minlength=num_kept)

    # One host transfer, then a short Python loop over at most Q queries.
    thing_flags = is_thing.bool().tolist()
    rows = zip(
        scores.tolist(),
        classes.tolist(),
        won_area.tolist(),
        segment_area.tolist(),
        mask_area,
        strict=True,
    )
    query_to_id = [0] * num_kept
    # Per segment: [class_id, is_thing, score, query]; the segment's id is its position + 1.
    segments: list[list] = []
    stuff_id: dict[int, int] = {}
    for query, (score, class_id, won, segment, original) in enumerate(rows):
        if won == 0 or original == 0 or segment == 0:
            continue
        if won / original < overlap_threshold:
            continue
        thing = thing_flags[class_id]
        if not thing and class_id in stuff_id:
            merged = segments[stuff_id[class_id] - 1]
            merged[2] = max(merged[2], score)
            query_to_id[query] = stuff_id[class_id]
            continue
        segments.append([class_id, thing, score, kept[query] if thing else -1])
        query_to_id[query] = len(segments)
        if not thing:
            stuff_id[class_id] = len(segments)

    if not segments:
        return panoptic, []
    ids = torch.tensor(query_to_id, dtype=torch.int32, device=device)[winner]
    flat = torch.where(inside_at_winner, ids, torch.zeros_like(ids))
    panoptic = flat.view(height, width)
    areas = torch.bincount(flat.long(), minlength=len(segments) + 1).tolist()
    infos = [
        PanopticSegmentInfo(segment_id, class_id, thing, score, areas[segment_id], query)
        for segment_id, (class_id, thing, score, query) in enumerate(segments, start=1)
    ]
    return panoptic, infos


def instance_inference(
    class_scores: torch.Tensor,
    mask_logits: torch.Tensor,
    max_instances: int = 100,
    keep_classes: torch.Tensor | None = None,
) -> InstanceInferenceResult:
    """Top-k (query, class) pairs as instances, Mask2Former style.

    The flattened Q x N scores are restricted to ``keep_classes`` before the top
    ``max_instances`` are taken. The reference takes the top-k first, so stuff pairs can crowd
    every thing out of a small k; restricting first returns the same things whenever the
    reference returns k of them. A flat index i is query i // N and class i % N, with N the
    score matrix's own width (trap 17: the MaskCLIP bug used N + 1 here).

    :param class_scores: float (Q, N) fused class scores.
    :param mask_logits: float (Q, H, W) mask logits.
    :param max_instances: k of the top-k (>= 0).
    :param keep_classes: bool (N,) classes allowed to be instances (the thing classes when
        panoptic output is on), or None for all.
    :return: the kept instances sorted by final score, highest first.
    """
    _check_scores_and_masks(class_scores, mask_logits)
    if max_instances < 0:
        raise ValueError(f'max_instances must be >= 0, got {max_instances}')
    num_queries, num_classes = class_scores.shape
    if keep_classes is not None and keep_classes.shape != (num_classes,):
        raise ValueError(
            f'keep_classes must have one flag per class, shape ({num_classes},), '
            f'got {tuple(keep_classes.shape)}'
        )
    device = mask_logits.device
    top_scores, query_indices, class_ids = top_instance_pairs(
        class_scores.to(device), max_instances, keep_classes
    )
    # Pairs of one query share its mask: each query's full-size map is made once, and only
    # its box crop is kept.
    masks = {q: _cropped(mask_logits, q) for q in query_indices.unique().tolist()}
    queries = query_indices.tolist()
    mean_inside = torch.tensor([masks[q][0] for q in queries], device=device)
    final = top_scores * mean_inside
    order = final.argsort(descending=True, stable=True).tolist()
    return InstanceInferenceResult(
        scores=final[order],
        class_ids=class_ids[order],
        query_indices=query_indices[order],
        mask_quality=mean_inside[order],
        boxes=torch.stack([masks[queries[i]][1] for i in order] or [torch.zeros(0, 4)]).view(
            -1, 4
        ),
        mask_crops=[masks[queries[i]][2] for i in order],
    )


def top_instance_pairs(
    class_scores: torch.Tensor, max_instances: int, keep_classes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``max_instances`` (query, class) pairs by class score, among ``keep_classes``:
    the candidates of ``instance_inference``, before mask quality reorders them.

    :return: their scores, query indices and class ids, highest score first.
    """
    num_queries, num_classes = class_scores.shape
    scores = class_scores.float()
    allowed = torch.ones(num_classes, dtype=torch.bool, device=scores.device)
    if keep_classes is not None:
        allowed = keep_classes.bool().to(scores.device)
        scores = scores.masked_fill(~allowed, -1.0)  # below every real score
    k = min(max_instances, num_queries * int(allowed.sum()))
    top_scores, flat_index = scores.flatten().topk(k)
    # max(., 1) only avoids dividing the empty index tensor by zero when N == 0.
    return top_scores, flat_index // max(num_classes, 1), flat_index % max(num_classes, 1)


def _cropped(
    mask_logits: torch.Tensor | ImageSizeMaskLogits, query: int
) -> tuple[float, torch.Tensor, torch.Tensor]:
    if isinstance(mask_logits, ImageSizeMaskLogits):
        return mask_logits.cropped(query)
    return cropped_mask(mask_logits[query])


def mean_sigmoid_inside(mask_logits: torch.Tensor) -> torch.Tensor:
    """float (K,): each mask's mean sigmoid over its pixels (logit > 0), 0 for an empty mask:
    the mask-quality factor of an instance's score (method.md 1.8).

    :param mask_logits: float (K, ...) logits, any resolution.
    """
    logits = mask_logits.float()
    inside = logits > 0
    pixels = tuple(range(1, logits.ndim))  # summed in place: a crop of a map is no copy
    return (logits.sigmoid() * inside).sum(pixels) / inside.sum(pixels).clamp(min=1)


def mask_overlaps(mask_logits: torch.Tensor) -> torch.Tensor:
    """float (K, K): pairwise IoU of the binary masks (logit > 0), by one matrix product.

    :param mask_logits: float (K, h, w) logits.
    """
    flat = (mask_logits > 0).flatten(1).float()
    intersection = flat @ flat.T
    area = intersection.diagonal()
    return intersection / (area[:, None] + area[None, :] - intersection).clamp(min=1)


def cropped_mask(logits: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """The binary mask (logit > 0) of one proposal's full-size logits, as its tight box and
    the crop inside it, with its mean sigmoid inside the mask (0 for an empty mask).

    :param logits: float (H, W).
    :return: (mean sigmoid inside, float32 (4,) box x0, y0, x1, y1 in pixels with x1 and y1
        exclusive (a one-pixel mask at x=3, y=5 gives 3, 5, 4, 6; an empty one zeros), bool
        crop).
    """
    # A row (column) holds mask pixels where its largest logit is positive: a max is one
    # vectorised pass, where thresholding first would add one over every pixel.
    rows = logits.amax(dim=1) > 0 if logits.numel() else logits.new_zeros(0, dtype=torch.bool)
    if not rows.any():
        empty = torch.zeros((0, 0), dtype=torch.bool, device=logits.device)
        return 0.0, torch.zeros(4, device=logits.device), empty
    (y0, y1), (x0, x1) = _span(rows), _span(logits.amax(dim=0) > 0)
    window = logits[y0:y1, x0:x1]  # every mask pixel lies inside
    box = torch.tensor([x0, y0, x1, y1], dtype=torch.float32, device=logits.device)
    return float(mean_sigmoid_inside(window[None])[0]), box, window > 0
