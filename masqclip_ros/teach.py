"""masqclip_node's teaching policy, apart from its wiring (docs/teach.md): which object of a
remembered frame a TeachClass request shows (a proposal, a track's proposal on that frame, or
a drawn mask), teaching it to the predictor, what the answer says of the taught class, and the
teach.file that keeps the taught classes across restarts. No rclpy node; unit-tested in
test/ros/test_teach_requests.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from masqclip_ros.srv import TeachClass
from sensor_msgs.msg import Image

from masqclip.inference.exemplars import ExemplarError, load_exemplars, save_exemplars
from masqclip.inference.predictor import Predictor
from masqclip.inference.vocabulary import (
    Vocabulary,
    VocabularyEntry,
    VocabularyError,
    validate_query,
)
from masqclip_ros.conversions import ImageConversionError, image_msg_to_array
from masqclip_ros.history import FrameHistory, FrameRecord, NoFrame
from masqclip_ros.runtime import replaced_keeping_exemplars, stamp_problem, stamp_text
from masqclip_ros.tracks import UNTRACKED_FRAME

MASK_ENCODINGS = ('mono8', '8UC1')
"""Encodings a drawn mask may have: one byte a pixel, non-zero on the object."""


@dataclass(frozen=True)
class Taught:
    """What a teach request did.

    :param vocabulary: the vocabulary with the taught class, now the predictor's.
    :param class_id: the taught class's index in it.
    :param example_count: how many examples the class now averages.
    :param message: what was taught from what, for the answer and the log.
    """

    vocabulary: Vocabulary
    class_id: int
    example_count: int
    message: str


def teach_from_request(
    request: TeachClass.Request, history: FrameHistory, predictor: Predictor, max_pixels: int
) -> Taught:
    """Teach ``predictor`` the example a TeachClass request shows (``Predictor.teach``, which
    makes the new vocabulary current). Callers serialise vocabulary changes.

    :param history: the remembered frames (the request's LATEST or STAMP one is shown).
    :param max_pixels: largest mask accepted (``input.max_pixels``).
    :raises VocabularyError: the vocabulary unchanged, saying why: a request out of range
        (frame, stamp, not exactly one source), a frame not kept (naming the kept stamps), a
        track not in view on it, a mask that is no mono8 image, and whatever ``Predictor.teach``
        refuses (a proposal index out of range, a mask of another size, empty or matching no
        proposal, the name of a text class, a bad name).
    """
    problem = _request_problem(request)
    if problem is not None:
        raise ExemplarError(problem)
    record = history.kept(request.stamp if request.frame == TeachClass.Request.STAMP else None)
    if isinstance(record, NoFrame):
        raise ExemplarError(record.message)
    if request.proposal_index >= 0:
        source = {'proposal_index': int(request.proposal_index)}
        shown = f'proposal {request.proposal_index}'
    elif request.track_id:
        source = {'proposal_index': _track_proposal(record, int(request.track_id))}
        shown = f'track {request.track_id} (proposal {source["proposal_index"]})'
    else:
        source, shown = {'mask': _drawn_mask(request.mask, max_pixels)}, 'a drawn mask'
    vocabulary = predictor.teach(record.result, request.name, **source)
    name = validate_query(request.name, 'class name').lower()  # cleaned as teach cleaned it
    class_id = next(i for i, e in enumerate(vocabulary.entries) if e.name.lower() == name)
    entry = vocabulary.entries[class_id]
    count = entry.exemplar.count
    message = (
        f'taught {entry.name!r} (class {class_id}, {count} example{"s" if count > 1 else ""}) '
        f'from {shown} of frame {stamp_text(record.header.stamp)}'
    )
    return Taught(vocabulary, class_id, count, message)


def _request_problem(request: TeachClass.Request) -> str | None:
    """Why a request cannot be served before any frame is looked at, or None."""
    frames = (TeachClass.Request.LATEST, TeachClass.Request.STAMP)
    if request.frame not in frames:
        return (
            f'frame {request.frame} is not LATEST (0) or STAMP (2): show an object on a frame '
            'the node has segmented'
        )
    if request.frame == TeachClass.Request.STAMP and stamp_problem(request.stamp):
        return f'the requested {stamp_problem(request.stamp)}'
    if request.proposal_index < -1:
        return f'proposal_index {request.proposal_index} is no proposal: give one >= 0, or -1'
    given = [
        name
        for name, is_given in (
            ('proposal_index', request.proposal_index >= 0),
            ('track_id', request.track_id > 0),
            ('mask', _mask_given(request.mask)),
        )
        if is_given
    ]
    if len(given) != 1:
        found = ' and '.join(given) or 'none'
        return (
            'show the example by exactly one of proposal_index (>= 0), track_id (> 0) or '
            f'mask (not empty); got {found}'
        )
    return None


def _mask_given(mask: Image) -> bool:
    return bool(mask.height or mask.width or len(mask.data) or mask.encoding)


def _track_proposal(record: FrameRecord, track_id: int) -> int:
    """The proposal of a track in view on the frame (as a find by track id reads it)."""
    if record.tracks is None:
        raise ExemplarError(UNTRACKED_FRAME)
    if track_id not in record.tracks.in_view:
        raise ExemplarError(record.tracks.absence(track_id))
    return int(record.tracks.in_view[track_id].query_index)


def _drawn_mask(mask: Image, max_pixels: int) -> np.ndarray:
    """A mask image as the bool array ``Predictor.teach`` takes (its size checked there)."""
    if mask.encoding not in MASK_ENCODINGS:
        raise ExemplarError(
            f"the mask's encoding is {mask.encoding!r}: send mono8 (or 8UC1), non-zero on the "
            'object'
        )
    try:
        return image_msg_to_array(mask, max_pixels) > 0
    except ImageConversionError as error:
        raise ExemplarError(f'the mask is no usable image: {error}') from error


def taught_entries(vocabulary: Vocabulary) -> tuple[VocabularyEntry, ...]:
    """The exemplar classes of ``vocabulary`` (taught by showing them), in index order."""
    return tuple(entry for entry in vocabulary.entries if entry.exemplar is not None)


class ExemplarStore:
    """The teach.file: the taught classes read at configure and written after every change of
    them (a teach, the REMOVE of one, a REPLACE reordering them or changing one's
    ``is_thing``). The callers serialise the calls.

    :param path: the file; None keeps nothing (``load`` and ``save`` do nothing).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._saved: tuple[VocabularyEntry, ...] = ()

    def load(self, vocabulary: Vocabulary, model: str | None) -> Vocabulary:
        """The vocabulary of the parameters over the file's classes, as a REPLACE makes it
        (``replaced_keeping_exemplars``): a class of the file the parameters do not name
        follows theirs, one they name keeps its exemplar; as it is when the file does not
        exist yet.

        :param vocabulary: the vocabulary the parameters name.
        :param model: the predictor's ``model_fingerprint``.
        :raises VocabularyError: for a file that cannot be read or holds classes of other
            weights (``load_exemplars``'s messages), or parameters giving synonyms to a class
            of the file; the file is left as it is.
        """
        if self.path is None or not self.path.exists():
            return vocabulary
        entries = load_exemplars(self.path, model)
        try:
            merged = replaced_keeping_exemplars(Vocabulary(entries), vocabulary.entries)
        except VocabularyError as error:
            raise ExemplarError(
                f'the vocabulary parameters do not fit the taught classes of teach.file '
                f'{self.path}: {error}'
            ) from error
        self._saved = entries
        return merged

    def save(self, vocabulary: Vocabulary) -> str | None:
        """Write the taught classes of ``vocabulary`` if they differ from those last read or
        written.

        :return: why they could not be written (a warning: they stay in force, and the next
            change tries again); None when written or unchanged.
        """
        entries = taught_entries(vocabulary)
        if self.path is None or entries == self._saved:
            return None
        try:
            save_exemplars(self.path, vocabulary)
        except OSError as error:
            return (
                f'the taught classes are in force but not saved to teach.file {self.path}: {error}'
            )
        self._saved = entries
        return None
