"""masqclip_node's policy, apart from its wiring: which requests and input stamps it accepts,
and what a vocabulary request makes of the vocabulary. No node state; unit-tested in
test/ros/test_runtime.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from builtin_interfaces.msg import Time
from masqclip_ros.srv import FindObjects, SetVocabulary

from masqclip.inference.vocabulary import (
    Vocabulary,
    VocabularyEntry,
    VocabularyError,
    validate_query,
)

MAX_FIND_WAIT_S = 60.0
"""Longest ``timeout_s`` a NEXT find may ask for."""

NANOSECONDS_PER_SECOND = 1_000_000_000


def stamp_problem(stamp: Time) -> str | None:
    """Why a header stamp is no ROS time, or None when it is one.

    rclpy's ``Time`` refuses negative seconds, and ``nanosec`` counts within one second; an
    input stamped otherwise must be refused on arrival, or it fails every frame it is later
    matched against (a depth image is kept for several frames).
    """
    if stamp.sec < 0 or stamp.nanosec >= NANOSECONDS_PER_SECOND:
        return (
            f'stamp {stamp.sec} s {stamp.nanosec} ns is not a ROS time '
            '(sec must be >= 0, nanosec < 1e9)'
        )
    return None


def find_request_problem(request: FindObjects.Request) -> str | None:
    """Why a find request cannot be served, or None.

    Every number is checked against its range, NaN and infinity included (a NaN timeout once
    made the wait spin forever), and every text must be a usable query.
    """
    frames = (FindObjects.Request.LATEST, FindObjects.Request.NEXT, FindObjects.Request.STAMP)
    if request.frame not in frames:
        return f'frame {request.frame} is not LATEST (0), NEXT (1) or STAMP (2)'
    if not _within(request.min_score, 0.0, 1.0):
        return f'min_score {request.min_score} must be in [0, 1]'
    if not _within(request.timeout_s, 0.0, MAX_FIND_WAIT_S):
        return f'timeout_s {request.timeout_s} must be in [0, {MAX_FIND_WAIT_S:g}] seconds'
    if request.max_results < 1:
        return 'max_results must be at least 1'
    if request.frame == FindObjects.Request.STAMP and stamp_problem(request.stamp):
        return f'the requested {stamp_problem(request.stamp)}'
    try:
        validate_query(request.query)
        for number, text in enumerate(request.negative_queries, 1):
            validate_query(text, f'negative query {number}')
    except VocabularyError as error:
        return str(error)
    return None


def _within(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


def changed_vocabulary(
    current: Vocabulary, entries: Sequence[VocabularyEntry], mode: int
) -> Vocabulary:
    """The vocabulary a SetVocabulary request asks for (the vocabulary topic is a REPLACE).

    REPLACE takes the entries as they are; ADD appends new names only; REMOVE drops the names
    given. Names are compared as the vocabulary compares them (case and surplus whitespace
    ignored), in every mode.

    :raises VocabularyError: for an unknown mode, a request naming nothing (ADD or REMOVE), a
        name ADD finds present or REMOVE finds absent, an invalid entry, or an empty result.
    """
    if mode == SetVocabulary.Request.REPLACE:
        vocabulary = Vocabulary(tuple(entries))
    elif mode == SetVocabulary.Request.ADD:
        vocabulary = current.add(entries)
    elif mode == SetVocabulary.Request.REMOVE:
        vocabulary = current.remove([entry.name for entry in entries])
    else:
        raise VocabularyError(f'mode {mode} is not REPLACE (0), ADD (1) or REMOVE (2)')
    # Cleans and validates every entry (empty or overlong names, duplicates once cleaned).
    vocabulary = Vocabulary.from_records(vocabulary.to_records())
    if len(vocabulary) == 0:
        raise VocabularyError('the vocabulary would be empty; keep at least one class')
    return vocabulary


def vocabulary_summary(vocabulary: Vocabulary) -> str:
    """'N classes: a, b, ...' (the first eight names)."""
    names = ', '.join(vocabulary.names[:8]) + (', ...' if len(vocabulary) > 8 else '')
    return f'{len(vocabulary)} classes: {names}'
