"""Helpers of the ROS tests: start masqclip_node in its own process, talk to it over DDS."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from masqclip_ros import node_process
from masqclip_ros.conversions import array_to_image_msg

ROOT = Path(__file__).resolve().parents[2]
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
MANY_CALLS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
"""For a service client with more than ten calls in flight: the default depth of 10 drops
requests and answers beyond ten at once."""


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


def scene(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
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


def image_msg(sec: int, encoding: str = 'rgb8', seed: int = 0):
    pixels = scene(seed=seed)
    if encoding == 'mono8':
        pixels = pixels[:, :, 0].copy()
    elif encoding == 'bgra8':
        pixels = np.concatenate(
            [pixels[:, :, ::-1], np.full(pixels.shape[:2] + (1,), 255, np.uint8)], 2
        )
    return array_to_image_msg(pixels, encoding, stamped(sec))


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
