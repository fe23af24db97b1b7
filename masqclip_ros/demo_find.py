"""The demo's three finds on a replayed frame: which queries to ask (a class the ground truth
shows in the frame, one shown in no frame played, the first with the other classes in view as
negative queries), asking them at that frame's stamp, and the answers as find.json holds them.
"""

from __future__ import annotations

from dataclasses import dataclass

from masqclip_ros.msg import Instance
from masqclip_ros.srv import FindObjects

from masqclip_ros.recorded_sequence import GroundTruthObject, RecordedSequence
from masqclip_ros.replay import Replay

STATUS_NAMES = {
    getattr(FindObjects.Response, name): name
    for name in ('FOUND', 'NOT_FOUND', 'NO_FRAME', 'TIMEOUT', 'ERROR')
}
ANSWERED = ('FOUND', 'NOT_FOUND')
FIND_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class FindQuery:
    """One find call: which kind of query it shows, its text and negative queries."""

    kind: str
    query: str
    negatives: tuple[str, ...] = ()


def choose_queries(
    in_frame: list[GroundTruthObject],
    absent: list[str],
    query: str | None = None,
    negatives: tuple[str, ...] = (),
) -> list[FindQuery]:
    """The three finds: present, absent and negated.

    :param in_frame: the ground truth of the frame asked, largest first.
    :param absent: class names shown in no frame played.
    :param query: the present query; default the largest object in the frame.
    :param negatives: the negated query's; default the other classes in the frame (else the
        absent query).
    :raises ValueError: no query given and no object in the frame, or no absent class.
    """
    if query is None:
        if not in_frame:
            raise ValueError('the frame asked shows no object: give --query')
        query = in_frame[0].label
    if not absent:
        raise ValueError('every class of the sequence is in view: no absent query to ask')
    # Same fill pattern (the last word), another colour: the model must tell colours apart.
    pattern = query.split()[-1]
    missing = next((name for name in absent if name.split()[-1] == pattern), absent[0])
    others = tuple(dict.fromkeys(o.label for o in in_frame if o.label != query))
    return [
        FindQuery('present', query),
        FindQuery('absent', missing),
        FindQuery('negated', query, negatives or others or (missing,)),
    ]


def answer_record(asked: FindQuery, answer: FindObjects.Response | None) -> dict:
    """A find answer as find.json holds it (status TIMEOUT when none came)."""
    record = {'kind': asked.kind, 'query': asked.query, 'negatives': list(asked.negatives)}
    if answer is None:
        return record | {'status': 'TIMEOUT', 'message': 'no answer', 'stamp': None,
                         'matches': []}  # fmt: skip
    return record | {
        'status': STATUS_NAMES[answer.status],
        'message': answer.message,
        'stamp': [answer.header.stamp.sec, answer.header.stamp.nanosec],
        'matches': [match_record(match) for match in answer.matches],
    }


def match_record(match: Instance) -> dict:
    """Score, box (x, y, width, height) and 3D position (metres, optical frame) or None."""
    position = (match.centroid.x, match.centroid.y, match.centroid.z)
    return {
        'score': round(float(match.score), 4),
        'box': [match.roi.x_offset, match.roi.y_offset, match.roi.width, match.roi.height],
        'position': [round(v, 3) for v in position] if match.has_3d else None,
        'depth_points': match.depth_points,
    }


def ask(
    replay: Replay,
    sequence: RecordedSequence,
    min_score: float,
    query: str | None = None,
    negatives: tuple[str, ...] = (),
) -> dict:
    """The three finds (``choose_queries``) on the last segmented frame, with that frame's
    ground truth, as find.json holds them.

    :raises ValueError: when there is no query to ask (see ``choose_queries``).
    """
    stamp = max(s for s in replay.instances if s in replay.sent)
    index = replay.sent[stamp].index
    in_frame = sequence.objects(index)
    absent = sorted(set(sequence.labels.values()) - sequence.labels_in_view())
    queries = choose_queries(in_frame, absent, query, negatives)
    answers = []
    for asked in queries:
        request = FindObjects.Request(
            query=asked.query,
            negative_queries=list(asked.negatives),
            min_score=min_score,
            frame=FindObjects.Request.STAMP,
            return_masks=False,
        )
        request.stamp.sec, request.stamp.nanosec = divmod(stamp, 10**9)
        answers.append(answer_record(asked, replay.find(request, FIND_TIMEOUT_S)))
    return {
        'frame': sequence.frame_number(index),
        'stamp': list(divmod(stamp, 10**9)),
        'min_score': min_score,
        'ground_truth': [
            {'label': o.label, 'box': list(o.box), 'depth_m': round(o.depth_m, 3)}
            for o in in_frame
        ],
        'answers': answers,
    }
