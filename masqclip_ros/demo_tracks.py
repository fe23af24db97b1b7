"""The demo's track figures: how many tracks the node's ``~/instances`` named, and how well
its track ids follow the sequence's ground truth over the frames it segmented (IDF1, MOTA, ID
switches, re-identified re-entries, scored by ``masqclip.evaluation.tracking``). No DDS.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from masqclip_ros.msg import InstanceSegmentation

from masqclip.evaluation.tracking import TrackingSequence, TrackScorer
from masqclip_ros.conversions import image_msg_to_array


def tracked_masks(msg: InstanceSegmentation) -> tuple[list[int], np.ndarray]:
    """The track ids of a frame's tracked instances, each once (its class copies share its
    mask), and their bool (N, H, W) masks."""
    ids, masks = [], []
    for instance in msg.instances:
        if instance.track_id == 0 or instance.track_id in ids:
            continue
        roi = instance.roi
        mask = np.zeros((msg.height, msg.width), bool)
        if roi.width:  # a mask was sent
            window = np.s_[roi.y_offset : roi.y_offset + roi.height,
                           roi.x_offset : roi.x_offset + roi.width]  # fmt: skip
            mask[window] = image_msg_to_array(instance.mask) > 0
        ids.append(instance.track_id)
        masks.append(mask)
    return ids, np.array(masks, bool).reshape(len(ids), msg.height, msg.width)


def track_figures(
    truth: TrackingSequence, segmented: Iterable[tuple[int, InstanceSegmentation]]
) -> dict:
    """The tracks seen and their scores, as summary.json holds them.

    :param truth: the sequence's ground truth (``evaluation.tracking.load_sequence``).
    :param segmented: (frame number, the node's instances) of each segmented frame, in time
        order; the frames the node dropped are not scored.
    """
    frames = {frame.frame_id: frame for frame in truth.frames}
    scorer = TrackScorer()
    seen: set[int] = set()
    for number, msg in segmented:
        ids, masks = tracked_masks(msg)
        seen.update(ids)
        scorer.add(frames[number], ids, masks)
    scores = scorer.scores()
    return {
        'seen': len(seen),
        'frames_scored': scores.frames,
        'idf1': round(scores.idf1, 3),
        'mota': round(scores.mota, 3),
        'id_switches': scores.id_switches,
        'reidentified': [scores.reidentified, scores.reentries],
        'recall': round(scores.recall, 3),
        'precision': round(scores.precision, 3),
    }
