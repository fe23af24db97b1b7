"""The image subscription's QoS (masqclip_ros.image_qos) without a node: what auto picks from
the publishers present, and what the silence warning tells the user."""

from types import SimpleNamespace

import pytest

pytest.importorskip('rclpy')

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from masqclip_ros.image_qos import image_qos, silence_report  # noqa: E402

RELIABLE, BEST_EFFORT = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT


def publisher(reliability: ReliabilityPolicy) -> SimpleNamespace:
    """What ``get_publishers_info_by_topic`` lists, as far as the QoS choice reads it."""
    return SimpleNamespace(qos_profile=QoSProfile(depth=10, reliability=reliability))


@pytest.mark.parametrize(
    ('setting', 'publishers', 'chosen'),
    [
        ('reliable', [publisher(BEST_EFFORT)], RELIABLE),
        ('best_effort', [publisher(RELIABLE)], BEST_EFFORT),
        ('auto', [], BEST_EFFORT),
        ('auto', [publisher(RELIABLE), publisher(RELIABLE)], RELIABLE),
        ('auto', [publisher(RELIABLE), publisher(BEST_EFFORT)], BEST_EFFORT),
    ],
)
def test_auto_is_reliable_only_when_every_publisher_is(setting, publishers, chosen) -> None:
    qos = image_qos(setting, publishers)
    assert (qos.reliability, qos.depth, qos.history) == (chosen, 1, HistoryPolicy.KEEP_LAST)


def test_the_silence_report_names_topic_qos_and_the_missing_publisher() -> None:
    assert silence_report('/image', 6.04, image_qos('best_effort', []), []) == (
        'no image received for 6.0 s on /image (best_effort, depth 1); no publisher exists on '
        'it (check the remapping and ROS_DOMAIN_ID)'
    )
    assert silence_report('/image', 2.0, None, [publisher(RELIABLE)]) == (
        'no image received for 2.0 s on /image (unknown QoS); 1 publisher(s) with reliability '
        'reliable'
    )


def test_the_silence_report_says_why_a_reliable_subscription_hears_nothing() -> None:
    publishers = [publisher(BEST_EFFORT), publisher(RELIABLE)]
    assert silence_report('/cam', 9.0, image_qos('reliable', []), publishers) == (
        'no image received for 9.0 s on /cam (reliable, depth 1); 2 publisher(s) with '
        'reliability best_effort/reliable: a reliable subscription never receives from '
        'best_effort publishers; set input.reliability to best_effort or auto'
    )
