"""Helpers of the ROS tests: start masqclip_node in its own process, talk to it over DDS."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import rclpy
from masqclip_ros.msg import Vocabulary
from rcl_interfaces.msg import Log
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from masqclip_ros import node_process
from masqclip_ros.conversions import array_to_image_msg

ROOT = Path(__file__).resolve().parents[2]
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
MANY_CALLS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
"""For a service client with more than ten calls in flight: the default depth of 10 drops
requests and answers beyond ten at once."""
H, W = 48, 64
"""Height and width of the test camera's images (``scene``, ``camera_info``)."""
FOCAL_PX = 50.0
RGBD_NODE = {
    'vocabulary': '[mug, table, wall]',
    'depth.enabled': 'true',
    'depth.min_points': '5',
    'depth.sync_slop_s': '0.5',
    'input.reliability': 'reliable',
}
"""Overrides of a node that segments a reliable RGB-D camera into mug, table and wall, with 3D
for masks of a few depth pixels and depth up to half a second off its image."""


class NodeProcess(node_process.NodeProcess):
    """The node with the repository's YAML and random test_tiny weights (the tests check
    wiring, not labels, and it loads fastest), plus the test's overrides."""

    def __init__(
        self,
        log_path: Path,
        overrides: dict[str, str],
        name: str = 'masqclip_node',
        namespace: str = '/',
    ):
        overrides = {'model.config': 'test_tiny', 'model.checkpoint': "''", **overrides}
        super().__init__(log_path, ROOT / 'config' / 'segment.yaml', overrides, name, namespace)


class Client:
    """A plain rclpy node in the test process, spun on demand."""

    def __init__(self, name: str = 'masqclip_test_client') -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Spin until ``done()`` is true; fail naming ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out after {timeout} s waiting for {what}')
            self.executor.spin_once(timeout_sec=0.05)

    def call(self, client, request, timeout: float = 20.0):
        """Call a service (waiting for it to exist) and return the response."""
        assert client.wait_for_service(timeout_sec=timeout), f'{client.srv_name} never appeared'
        future = client.call_async(request)
        self.spin_until(future.done, timeout, f'the answer of {client.srv_name}')
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def scene(height: int = H, width: int = W, seed: int = 0) -> np.ndarray:
    """uint8 (H, W, 3): a few flat coloured rectangles on a grey gradient."""
    rng = np.random.default_rng(seed)
    image = np.repeat(np.linspace(60, 200, width, dtype=np.uint8)[None, :, None], height, 0)
    image = np.repeat(image, 3, 2)
    for _ in range(3):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        image[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.integers(0, 255, 3)
    return image


def stamped(sec: int, frame_id: str = 'camera_optical') -> Header:
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = sec, 1000
    return header


def camera_info(header: Header) -> CameraInfo:
    """The test camera: focal length ``FOCAL_PX``, principal point at the image centre."""
    info = CameraInfo(header=header, height=H, width=W)
    info.k = [FOCAL_PX, 0.0, W / 2 - 0.5, 0.0, FOCAL_PX, H / 2 - 0.5, 0.0, 0.0, 1.0]
    return info


def depth_plane(header: Header, metres: float) -> Image:
    """A 32FC1 depth image of a wall facing the camera at ``metres``."""
    return array_to_image_msg(np.full((H, W), metres, np.float32), '32FC1', header)


def image_msg(sec: int, encoding: str = 'rgb8', seed: int = 0):
    pixels = scene(seed=seed)
    if encoding == 'mono8':
        pixels = pixels[:, :, 0].copy()
    elif encoding == 'bgra8':
        pixels = np.concatenate(
            [pixels[:, :, ::-1], np.full(pixels.shape[:2] + (1,), 255, np.uint8)], 2
        )
    return array_to_image_msg(pixels, encoding, stamped(sec))


class CameraRig:
    """The client side of a test module's node: a reliable RGB-D camera and the vocabulary
    topic in the node's namespace, and /rosout recorded.

    :param process: the node (its log explains a wait that timed out).
    :param client: the test's client node.
    :param namespace: the node's namespace, '' for the root one.
    :param first_sec: the frames sent are stamped from the second after it on.
    :param depth_m: how far the depth plane sent is.
    """

    def __init__(
        self,
        process: NodeProcess,
        client: Client,
        namespace: str = '',
        first_sec: int = 0,
        depth_m: float = 1.25,
    ) -> None:
        self.process, self.client = process, client
        node = client.node
        self.image_pub = node.create_publisher(Image, f'{namespace}/image', RELIABLE)
        self.depth_pub = node.create_publisher(Image, f'{namespace}/depth', RELIABLE)
        self.info_pub = node.create_publisher(CameraInfo, f'{namespace}/camera_info', RELIABLE)
        self.vocabulary_pub = node.create_publisher(Vocabulary, f'{namespace}/vocabulary', LATCHED)
        self.rosout: list[Log] = []
        # Latched and deep: the logs of the node's start and of a burst arrive whole.
        rosout_qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)  # fmt: skip
        node.create_subscription(Log, '/rosout', self.rosout.append, rosout_qos)
        self.sec = first_sec
        self.depth_m = depth_m

    def wait_matched(self) -> None:
        """Spin until the node subscribes to the image, the depth and the camera_info."""
        camera = (self.image_pub, self.depth_pub, self.info_pub)
        self.client.spin_until(
            lambda: all(publisher.get_subscription_count() > 0 for publisher in camera),
            60,
            f'the node to subscribe\n{self.process.log()[-2000:]}',
        )

    def send(self, encoding: str = 'rgb8', depth_stamp: int | None = None) -> int:
        """Publish camera_info, depth and an image stamped with the next second; return it.

        :param depth_stamp: the depth image's stamp seconds; default: the frame's.
        """
        self.sec += 1
        self.info_pub.publish(camera_info(stamped(self.sec)))
        depth_header = stamped(self.sec if depth_stamp is None else depth_stamp)
        self.depth_pub.publish(depth_plane(depth_header, self.depth_m))
        self.image_pub.publish(image_msg(self.sec, encoding, seed=self.sec))
        return self.sec

    def logged(self, words: str) -> list[str]:
        """What the node logged on /rosout with ``words`` in it."""
        return [
            log.msg
            for log in self.rosout
            if words in log.msg and log.name.endswith('masqclip_node')
        ]


@contextlib.contextmanager
def serving(process: NodeProcess, namespace: str) -> Iterator[tuple[NodeProcess, Client]]:
    """``process`` once active, with a client of its own; afterwards both stop, and the node
    must exit cleanly."""
    client = Client(f'client{namespace.replace("/", "_")}')
    try:
        client.spin_until(lambda: 'active: segmenting' in process.log(), 60,
                          f'the node to activate\n{process.log()[-2000:]}')  # fmt: skip
        yield process, client
    finally:
        client.close()
        assert process.stop() == 0, process.log()[-3000:]
