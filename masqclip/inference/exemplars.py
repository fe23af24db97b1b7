"""Teaching a class by showing it (docs/teach.md): which proposal an example shows, and the file
that keeps exemplar classes across runs.

An example is one object of a segmented frame, shown as one of its proposals (an instance's
``query_index``) or as a mask drawn on the frame; the proposal's CLIP mask embedding is the
example. A result keeps no image, and an exported image model cannot embed a mask of the
caller's, so a drawn mask is not embedded itself: it stands for the frame's proposal whose mask
matches it best (IoU at least ``MIN_MASK_IOU``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from masqclip.inference.results import SegmentationResult
from masqclip.inference.transforms import crop_mask_logits, mask_logits_to_image
from masqclip.inference.vocabulary import Vocabulary, VocabularyEntry, VocabularyError

MIN_MASK_IOU = 0.5
"""A drawn mask stands for a proposal only when their IoU reaches this (MOT's match rule)."""

FORMAT = 'masqclip_ros/exemplars/2'
"""Version 2 adds each class's threshold; a version 1 file is refused (teach again)."""

UNKNOWN_MODEL = (
    'this predictor does not know its model fingerprint, so it cannot use exemplar classes: '
    'build it with Predictor.from_network, or pass '
    'model_fingerprint=checkpoint.fingerprint_mask_clip(network)'
)


class ExemplarError(VocabularyError):
    """An example or exemplar file that cannot be used; the message says what to do."""


def shown_proposal(
    result: SegmentationResult,
    proposal_index: int | None = None,
    mask: np.ndarray | None = None,
) -> int:
    """Which proposal of a segmented frame an example shows: one given by its index, or the
    one whose mask (logit > 0, at the image's size) best matches a drawn mask by IoU.

    :param result: the frame, as ``Predictor.predict`` returned it.
    :param proposal_index: an index into the frame's proposals (``Instance.query_index``, the
        node's ``Instance.proposal_index``); or
    :param mask: bool (H, W) on that frame.
    :raises ExemplarError: unless exactly one source is given, for a result without
        proposals, an index out of range, a mask that is not bool, not of the frame's size or
        empty, or one no proposal matches at ``MIN_MASK_IOU``.
    """
    if (proposal_index is None) == (mask is None):
        raise ExemplarError('show the example as a proposal_index or as a mask (one of them)')
    if result.proposals is None:
        raise ExemplarError('this result holds no proposals; it did not come from predict()')
    if mask is not None:
        return _matching_proposal(result, mask)
    count = len(result.proposals.embeddings)
    if not isinstance(proposal_index, int | np.integer) or not 0 <= proposal_index < count:
        raise ExemplarError(
            f"proposal index {proposal_index!r} is not one of the frame's {count} proposals "
            f'(0 to {count - 1})'
        )
    return int(proposal_index)


def example_threshold(result: SegmentationResult, shown: int) -> float:
    """The cosine that tells the object of proposal ``shown`` from the rest of its frame:
    ``THRESHOLD_POSITION`` of the way from the most similar proposal of something else up to
    the example itself (cosine 1).

    The frame is the only labelled data a shown example brings: its proposals that lie mostly
    outside the object (at the proposer's resolution) are what the object is not. Proposals
    mostly inside it are parts of it, not negatives, unless nothing else segments anything:
    then they stand in, which sets a strict threshold rather than none. See
    ``postprocess.classify_masks``.
    """
    proposals = result.proposals
    # The cells that hold the frame: a proposal's padding cells show nothing of the object.
    cells = crop_mask_logits(torch.from_numpy(proposals.mask_logits), proposals.spec)
    support = cells.flatten(1) > 0
    others = support.any(dim=1)
    others[shown] = False
    inside = (support & support[shown]).sum(dim=1) / support.sum(dim=1).clamp(min=1)
    negatives = others & (inside < 0.5)
    if not negatives.any():
        negatives = others
    if not negatives.any():
        return 0.0  # no other proposal segments anything: nothing to tell the object from
    # Unit embeddings (``Proposals``), as ``classify_masks`` takes them; rounding may pass 1.
    embeddings = proposals.embeddings
    nearest = min(1.0, float((embeddings[negatives.numpy()] @ embeddings[shown]).max()))
    return nearest + THRESHOLD_POSITION * (1.0 - nearest)


THRESHOLD_POSITION = 0.25
"""Where between the nearest negative (0) and the example (1) an exemplar's threshold lies.
At 0 an object as near as that negative ties with its best text class. On examples/sequence
(docs/teach.md; purple checkered shown once, its later objects labelled / the taught labels'
precision): 0 gives 0.59 / 0.77, 0.25 gives 0.49 / 0.84, 0.5 gives 0.34 / 0.92; its text
name labels 0.56."""


def _matching_proposal(result: SegmentationResult, mask: np.ndarray) -> int:
    if not isinstance(mask, np.ndarray) or mask.dtype != bool:
        raise ExemplarError(
            'the mask must be a bool numpy array (from a 0/255 mask image: image > 0)'
        )
    if mask.shape != result.image_size:
        raise ExemplarError(
            f'the mask is {mask.shape[::-1]} (width, height) but the frame is '
            f'{result.image_size[::-1]}: draw it on the frame it refers to'
        )
    area = np.count_nonzero(mask)
    if not area:
        raise ExemplarError('the mask is empty: mark the pixels of the object to teach')
    proposals = result.proposals
    logits = torch.from_numpy(proposals.mask_logits)
    target = torch.from_numpy(mask)
    ious = []
    for q in range(len(logits)):  # one full-size map at a time
        proposal = mask_logits_to_image(logits[q : q + 1], proposals.spec)[0] > 0
        overlap = int((proposal & target).sum())
        ious.append(overlap / (int(proposal.sum()) + area - overlap))
    best = int(np.argmax(ious))
    if ious[best] < MIN_MASK_IOU:
        raise ExemplarError(
            f'no object the model segmented in this frame matches the mask: the best overlaps '
            f'it at IoU {ious[best]:.2f}, {MIN_MASK_IOU} is needed. Draw the mask over one '
            'whole object, or show an instance by its proposal index'
        )
    return best


def check_models(entries: Iterable[VocabularyEntry], model: str | None, where: str = '') -> None:
    """Refuse exemplar classes taught with weights other than ``model``'s.

    :param model: the fingerprint of the model that would use them (None: unknown).
    :param where: where the classes come from, for the message (e.g. ' in taught.json').
    :raises ExemplarError: naming the class, both fingerprints and what to do.
    """
    for entry in entries:
        if entry.exemplar is None or entry.exemplar.model == model:
            continue
        if model is None:
            raise ExemplarError(f'exemplar class {entry.name!r}{where}: {UNKNOWN_MODEL}')
        raise ExemplarError(
            f'exemplar class {entry.name!r}{where} was taught with model '
            f'{entry.exemplar.model}, but this predictor runs model {model}: teach it again '
            'with this model, or run the model it was taught with'
        )


def save_exemplars(path: str | Path, vocabulary: Vocabulary) -> int:
    """Write the exemplar classes of ``vocabulary`` (its text classes are left out) to a JSON
    file, atomically: through a temporary file, so a crash never leaves half a file.

    :return: how many classes were written.
    """
    records = [record for record in vocabulary.to_records() if 'exemplar' in record]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps({'format': FORMAT, 'classes': records}, indent=1) + '\n')
    os.replace(tmp, path)
    return len(records)


def load_exemplars(path: str | Path, model: str | None) -> tuple[VocabularyEntry, ...]:
    """The exemplar classes of a ``save_exemplars`` file, to add to a vocabulary.

    :param model: ``Predictor.model_fingerprint`` of the predictor that will use them.
    :raises ExemplarError: for a file that cannot be read, is not an exemplar file, holds a
        text class or an invalid class, or classes taught with other weights than ``model``'s.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise ExemplarError(f'cannot read exemplar file {path}: {error}') from error
    except json.JSONDecodeError as error:
        raise ExemplarError(f'exemplar file {path} is not valid JSON: {error}') from error
    if isinstance(data, dict) and data.get('format') == 'masqclip_ros/exemplars/1':
        raise ExemplarError(
            f'{path} was written before exemplar classes kept their thresholds (format 1): '
            'teach its classes again, which writes the current format'
        )
    if (
        not isinstance(data, dict)
        or data.get('format') != FORMAT
        or not isinstance(data.get('classes'), list)
    ):
        raise ExemplarError(
            f'{path} is not an exemplar file ("format": "{FORMAT}" and a "classes" list); '
            'give a file that save_exemplars wrote'
        )
    try:
        entries = Vocabulary.from_records(data['classes']).entries
    except VocabularyError as error:
        raise ExemplarError(f'exemplar file {path}: {error}') from error
    text = [entry.name for entry in entries if entry.exemplar is None]
    if text:
        raise ExemplarError(
            f'exemplar file {path} holds text classes {text}: it keeps exemplar classes only; '
            'put text classes in the vocabulary instead'
        )
    check_models(entries, model, f' in {path}')
    return entries
