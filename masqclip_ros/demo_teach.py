"""The demo's teach step: show the node one object of an earlier frame under a new name
(``~/teach``), then ask ``~/find`` for that name on the last segmented frame, and say whether
the answer is the same object there, as find.json's ``teach`` entry holds it.
"""

from __future__ import annotations

from masqclip_ros.msg import Instance, InstanceSegmentation
from masqclip_ros.srv import FindObjects, TeachClass

from masqclip_ros.demo_find import FIND_TIMEOUT_S, STATUS_NAMES, match_record
from masqclip_ros.recorded_sequence import GroundTruthObject, RecordedSequence
from masqclip_ros.replay import Replay

TAUGHT_NAME = 'my toy'
FRAMES_BACK = 6
"""How many segmented frames before the last one the object is shown: within the frames the
node keeps for its services (``find.buffer_size``, 8 by default), and far enough back that the
object has moved."""
SAME_OBJECT_IOU = 0.5


def box_iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """IoU of two (x, y, width, height) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _roi(instance: Instance) -> tuple[int, int, int, int]:
    roi = instance.roi
    return (roi.x_offset, roi.y_offset, roi.width, roi.height)


def shown_object(
    segmented: InstanceSegmentation, objects: list[GroundTruthObject]
) -> tuple[GroundTruthObject, Instance] | None:
    """The largest annotated object the node segmented (an instance's box covers it at IoU >=
    ``SAME_OBJECT_IOU``), with that instance; None when it segmented none."""
    for target in objects:  # largest first
        covering = [
            i for i in segmented.instances if box_iou(_roi(i), target.box) >= SAME_OBJECT_IOU
        ]
        if covering:
            return target, max(covering, key=lambda i: box_iou(_roi(i), target.box))
    return None


def teach_and_find(replay: Replay, sequence: RecordedSequence, min_score: float) -> dict:
    """Teach the largest object the node segmented on an earlier frame under ``TAUGHT_NAME``,
    then find it by that name on the last frame.

    :return: what was shown, the teach answer, and the find answer with whether its best match
        is an object of the class shown (box IoU >= ``SAME_OBJECT_IOU``).
    """
    stamps = sorted(stamp for stamp in replay.instances if stamp in replay.sent)
    last, shown_at = stamps[-1], stamps[max(0, len(stamps) - 1 - FRAMES_BACK)]
    shown = shown_object(
        replay.instances[shown_at][1], sequence.objects(replay.sent[shown_at].index)
    )
    record = {
        'name': TAUGHT_NAME,
        'object': shown[0].label if shown else None,
        'shown_on_frame': sequence.frame_number(replay.sent[shown_at].index),
        'found_on_frame': sequence.frame_number(replay.sent[last].index),
    }
    if shown is None:
        return record | {'taught': False, 'message': 'the node segmented no annotated object'}
    target, instance = shown
    request = TeachClass.Request(
        name=TAUGHT_NAME, frame=TeachClass.Request.STAMP, proposal_index=instance.proposal_index
    )
    request.stamp.sec, request.stamp.nanosec = divmod(shown_at, 10**9)
    taught = replay.teach(request, FIND_TIMEOUT_S)
    record |= {
        'taught': bool(taught and taught.success),
        'message': taught.message if taught else 'no answer',
    }
    if not record['taught']:
        return record
    find = FindObjects.Request(
        query=TAUGHT_NAME, min_score=min_score, frame=FindObjects.Request.STAMP,
        return_masks=False,
    )  # fmt: skip
    find.stamp.sec, find.stamp.nanosec = divmod(last, 10**9)
    answer = replay.find(find, FIND_TIMEOUT_S)
    if answer is None:
        return record | {'status': 'TIMEOUT', 'same_object': False, 'matches': []}
    alike = [o for o in sequence.objects(replay.sent[last].index) if o.label == target.label]
    same = bool(answer.matches) and any(
        box_iou(_roi(answer.matches[0]), o.box) >= SAME_OBJECT_IOU for o in alike
    )
    return record | {
        'status': STATUS_NAMES[answer.status],
        'same_object': same,
        'matches': [match_record(match) for match in answer.matches[:3]],
    }
