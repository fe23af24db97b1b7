"""Play a recorded sequence into masqclip_node as a robot's camera driver would, and record
what comes back.

Every frame goes out on ``image`` (rgb8), ``depth`` (16UC1 millimetres) and ``camera_info``
under one header (stamp, the camera's frame_id), at the sequence's frame rate times a speed
factor. Stamps are the wall clock at the start plus the frame's time in the sequence
(``k / fps``), so they keep the recording's spacing at any speed. ``~/overlay`` and
``~/instances`` are kept by stamp with their arrival times: the node drops frames while it is
busy (its queue holds one), and a segmented frame's latency is the arrival of its instances
minus the publish time of its stamp.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from masqclip_ros.msg import InstanceSegmentation
from masqclip_ros.srv import FindObjects, TeachClass
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image, RegionOfInterest
from std_msgs.msg import Header

from masqclip_ros.conversions import array_to_image_msg
from masqclip_ros.recorded_sequence import RecordedSequence

QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
"""Reliable, as camera drivers publish by default; for the outputs too, so none is lost."""


@dataclass(frozen=True)
class Sent:
    """A frame published: its index in the sequence played and when (monotonic seconds)."""

    index: int
    published: float


def stamp_key(stamp: Time) -> int:
    """A header stamp as one integer of nanoseconds (what outputs are matched by)."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def camera_info_msg(fields: dict, header: Header) -> CameraInfo:
    """A ``sensor_msgs/CameraInfo`` from its fields as ``camera_info.json`` holds them."""
    return CameraInfo(
        header=header,
        height=fields['height'],
        width=fields['width'],
        distortion_model=fields['distortion_model'],
        d=fields['d'],
        k=fields['k'],
        r=fields['r'],
        p=fields['p'],
        binning_x=fields['binning_x'],
        binning_y=fields['binning_y'],
        roi=RegionOfInterest(**fields['roi']),
    )


class Replay:
    """The camera side of a replay: publishers of the three inputs, recorders of the outputs,
    a client of ``~/find``, on a node of its own in ``context``.

    :param node_name: the segmentation node's fully qualified name.
    """

    def __init__(self, context: Context, node_name: str = '/masqclip_node') -> None:
        self.sent: dict[int, Sent] = {}
        """stamp -> the frame published with it."""
        self.overlays: dict[int, Image] = {}
        """stamp -> the node's overlay."""
        self.instances: dict[int, tuple[float, InstanceSegmentation]] = {}
        """stamp -> (arrival in monotonic seconds, the node's instances)."""
        self.node = Node('masqclip_replay', context=context)
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self.node)
        create = self.node.create_publisher
        self._publishers = {'image': create(Image, 'image', QOS),
                            'depth': create(Image, 'depth', QOS),
                            'camera_info': create(CameraInfo, 'camera_info', QOS)}  # fmt: skip
        self._subscriptions = [
            self.node.create_subscription(Image, f'{node_name}/overlay', self._on_overlay, QOS),
            self.node.create_subscription(
                InstanceSegmentation, f'{node_name}/instances', self._on_instances, QOS
            ),
        ]
        self._find = self.node.create_client(FindObjects, f'{node_name}/find')
        self._teach = self.node.create_client(TeachClass, f'{node_name}/teach')

    def _on_overlay(self, msg: Image) -> None:
        self.overlays[stamp_key(msg.header.stamp)] = msg

    def _on_instances(self, msg: InstanceSegmentation) -> None:
        self.instances[stamp_key(msg.header.stamp)] = (time.monotonic(), msg)

    def spin_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Serve callbacks until ``done()``; False when ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._executor.spin_once(timeout_sec=min(left, 0.05))
        return True

    def wait_ready(self, alive: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until the node subscribes every input, publishes both outputs recorded and
        serves find; False when it died or ``timeout_s`` passed."""

        def ready() -> bool:
            return not alive() or (
                all(p.get_subscription_count() > 0 for p in self._publishers.values())
                and all(s.get_publisher_count() > 0 for s in self._subscriptions)
                and self._find.service_is_ready()
            )

        return self.spin_until(ready, timeout_s) and alive()

    def play(self, sequence: RecordedSequence, rate: float) -> None:
        """Publish every frame of ``sequence`` on schedule, ``rate`` times its speed, serving
        callbacks in between; the next frame is read while waiting for its time."""
        frame_id = sequence.camera_info['header']['frame_id']
        start_stamp = self.node.get_clock().now().nanoseconds
        start = time.monotonic()
        for index in range(len(sequence)):
            stamp = Time(nanoseconds=start_stamp + round(index / sequence.fps * 1e9)).to_msg()
            header = Header(stamp=stamp, frame_id=frame_id)
            messages = {
                'camera_info': camera_info_msg(sequence.camera_info, header),
                'depth': array_to_image_msg(sequence.depth(index), '16UC1', header),
                'image': array_to_image_msg(sequence.color(index), 'rgb8', header),
            }
            due = start + index / (sequence.fps * rate)
            self.spin_until(lambda due=due: time.monotonic() >= due, due - time.monotonic())
            # Image last: the node pairs depth and camera_info already received with it.
            for topic, message in messages.items():
                self._publishers[topic].publish(message)
            self.sent[stamp_key(stamp)] = Sent(index, time.monotonic())

    def settle(self, quiet_s: float) -> None:
        """Serve callbacks until the last frame sent has come back, or no output came for
        ``quiet_s`` seconds."""
        last = max(self.sent, default=None)

        def received() -> int:
            return len(self.instances) + len(self.overlays)

        while last not in self.instances or last not in self.overlays:
            count = received()
            if not self.spin_until(lambda count=count: received() > count, quiet_s):
                return

    def latencies(self) -> dict[int, float]:
        """stamp -> seconds from publishing to the instances' arrival, per segmented frame."""
        return {
            stamp: arrival - self.sent[stamp].published
            for stamp, (arrival, _) in self.instances.items()
            if stamp in self.sent
        }

    def find(self, request: FindObjects.Request, timeout_s: float) -> FindObjects.Response | None:
        """Call ``~/find``; None when no answer came within ``timeout_s``."""
        return self._call(self._find, request, timeout_s)

    def teach(self, request: TeachClass.Request, timeout_s: float) -> TeachClass.Response | None:
        """Call ``~/teach``; None when no answer came within ``timeout_s``."""
        return self._call(self._teach, request, timeout_s)

    def _call(self, client: object, request: object, timeout_s: float) -> object | None:
        future = client.call_async(request)
        self.spin_until(future.done, timeout_s)
        return future.result() if future.done() else None

    def close(self) -> None:
        self._executor.shutdown()
        self.node.destroy_node()
