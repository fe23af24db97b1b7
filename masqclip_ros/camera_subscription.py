"""A camera stream's subscription (colour or depth) whose reliability follows its publishers.

With ``input.reliability: auto`` each stream picks its QoS from the publishers present on its
own topic (``image_qos``), and ``follow()`` re-subscribes when they change: a camera driver
started after the node is usually reliable, and best effort would lose large frames in
transport. The colour and the depth topic may come from different drivers, so each follows its
own publishers.
"""

from __future__ import annotations

from collections.abc import Callable

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile

from masqclip_ros.image_qos import image_qos


class CameraSubscription:
    """Subscribes ``callback`` to ``topic`` (resolved in ``node``) at the QoS ``reliability``
    (a value of ``input.reliability``) picks, while ``subscribe``-d.

    :param node: the node that owns the subscription.
    :param message_type: e.g. ``sensor_msgs.msg.Image``.
    :param topic: the topic name, relative to the node.
    :param callback: called with each message, in ``group``.
    """

    def __init__(
        self,
        node: Node,
        message_type: type,
        topic: str,
        callback: Callable[[object], None],
        group: CallbackGroup,
    ) -> None:
        self._node = node
        self._type = message_type
        self._callback = callback
        self._group = group
        self.topic = node.resolve_topic_name(topic)
        self.qos: QoSProfile | None = None
        self._reliability = 'auto'
        self._subscription = None

    def publishers(self) -> list:
        """The topic's publishers, with their QoS."""
        return self._node.get_publishers_info_by_topic(self.topic)

    def subscribe(self, reliability: str) -> None:
        """Subscribe (again) at the QoS ``reliability`` picks for the publishers present now."""
        self.destroy()
        self._reliability = reliability
        self.qos = image_qos(reliability, self.publishers())
        self._subscription = self._node.create_subscription(
            self._type, self.topic, self._callback, self.qos, callback_group=self._group
        )

    def follow(self) -> bool:
        """Re-subscribe when the publishers now call for another reliability.

        :return: whether it re-subscribed.
        """
        if self._subscription is None:
            return False
        wanted = image_qos(self._reliability, self.publishers())
        if wanted.reliability == self.qos.reliability:
            return False
        self.subscribe(self._reliability)
        return True

    def destroy(self) -> None:
        """Unsubscribe; a no-op when not subscribed."""
        if self._subscription is not None:
            self._node.destroy_subscription(self._subscription)
            self._subscription = None
