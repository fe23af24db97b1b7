"""The camera subscription's QoS: the reliability that ``input.reliability`` picks given the
publishers present, and why a subscription that receives nothing may hear no publisher (the
silence report). Pure functions of QoS profiles; unit-tested in test/ros/test_image_qos.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.topic_endpoint_info import TopicEndpointInfo


def image_qos(setting: str, publishers: Sequence[TopicEndpointInfo]) -> QoSProfile:
    """Depth 1, keep last; reliability from the setting or, for 'auto', the publishers.

    :param setting: 'reliable', 'best_effort' or 'auto'.
    :param publishers: the camera topic's publishers (read for 'auto' only).
    """
    if setting == 'reliable':
        reliability = ReliabilityPolicy.RELIABLE
    elif setting == 'best_effort':
        reliability = ReliabilityPolicy.BEST_EFFORT
    else:
        # Best effort matches every publisher, so it is the choice unless all the publishers
        # present are reliable (then reliable delivery costs nothing).
        all_reliable = bool(publishers) and all(
            info.qos_profile.reliability == ReliabilityPolicy.RELIABLE for info in publishers
        )
        reliability = ReliabilityPolicy.RELIABLE if all_reliable else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=reliability)


def silence_report(
    topic: str,
    silent_s: float,
    qos: QoSProfile | None,
    publishers: Sequence[TopicEndpointInfo],
) -> str:
    """The warning for a camera topic silent for ``silent_s`` seconds: the subscription's QoS
    (``qos``, None when unknown) and the publishers', and the fix when they cannot match."""
    ours = f'{qos.reliability.name.lower()}, depth {qos.depth}' if qos else 'unknown QoS'
    if not publishers:
        theirs = 'no publisher exists on it (check the remapping and ROS_DOMAIN_ID)'
    else:
        kinds = sorted({info.qos_profile.reliability.name.lower() for info in publishers})
        theirs = f'{len(publishers)} publisher(s) with reliability {"/".join(kinds)}'
        if qos and qos.reliability == ReliabilityPolicy.RELIABLE and 'best_effort' in kinds:
            theirs += ': a reliable subscription never receives from best_effort ' \
                'publishers; set input.reliability to best_effort or auto'  # fmt: skip
    return f'no image received for {silent_s:.1f} s on {topic} ({ours}); {theirs}'
