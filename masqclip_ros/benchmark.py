"""Node benchmark (not a test): stream frames at a fixed rate and time the node end to end.

``python -m masqclip_ros.benchmark --rate 5 --seconds 20`` starts masqclip_node in a child
process, publishes 640x480 rgb8 frames at ``--rate`` Hz and prints: end-to-end latency (image
stamp to ``~/instances`` arrival), throughput, frames dropped by the depth-1 queue, and from
the node's /diagnostics the predictor's own time next to the node's overhead (conversion,
3D, message building and publishing), whose ratio should stay under 10%.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from masqclip_ros.msg import InstanceSegmentation
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from masqclip_ros.conversions import array_to_image_msg
from masqclip_ros.node_process import NodeProcess, share_directory

QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its numbers.

    :param argv: command-line arguments (default ``sys.argv[1:]``).
    :return: 0, or 1 when the node produced no output.
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rate', type=float, default=5.0, help='frames per second sent')
    parser.add_argument('--seconds', type=float, default=20.0)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument(
        '--params-file', default=str(share_directory() / 'config' / 'segment.yaml')
    )
    parser.add_argument('--log', type=Path, default=Path('masqclip_benchmark_node.log'))
    parser.add_argument(
        'overrides', nargs='*', help='node parameters as name:=value, e.g. model.device:=cuda'
    )
    args = parser.parse_args(argv)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

    overrides = dict(item.split(':=', 1) for item in args.overrides)
    node = NodeProcess(args.log, args.params_file, overrides)
    rclpy.init()
    client = Node('masqclip_benchmark')
    arrivals: list[tuple[float, float]] = []  # (stamp, arrival) in seconds

    def on_instances(msg: InstanceSegmentation) -> None:
        now = client.get_clock().now().nanoseconds * 1e-9
        arrivals.append((Time.from_msg(msg.header.stamp).nanoseconds * 1e-9, now))

    diagnostics: list[dict[str, str]] = []

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(': segmentation'):
                diagnostics.append({kv.key: kv.value for kv in status.values})

    client.create_subscription(InstanceSegmentation, '/masqclip_node/instances', on_instances, QOS)
    client.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10)
    publisher = client.create_publisher(Image, 'image', QOS)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (args.height, args.width, 3), np.uint8) for _ in range(4)]
    try:
        deadline = time.monotonic() + 120
        while publisher.get_subscription_count() == 0:
            if not node.alive() or time.monotonic() > deadline:
                print(f'the node did not start; see {args.log}', file=sys.stderr)
                return 1
            rclpy.spin_once(client, timeout_sec=0.1)
        sent = 0
        start = time.monotonic()
        while time.monotonic() - start < args.seconds:
            header = Header(frame_id='camera', stamp=client.get_clock().now().to_msg())
            publisher.publish(array_to_image_msg(frames[sent % len(frames)], 'rgb8', header))
            sent += 1
            next_send = start + sent / args.rate
            while time.monotonic() < next_send:
                rclpy.spin_once(client, timeout_sec=max(0.0, next_send - time.monotonic()))
        end = time.monotonic() + 5
        while time.monotonic() < end:
            rclpy.spin_once(client, timeout_sec=0.1)
        if not arrivals:
            print(f'no output received; see {args.log}', file=sys.stderr)
            return 1
        latency = np.array([arrival - stamp for stamp, arrival in arrivals])
        span = arrivals[-1][1] - arrivals[0][1]
        print(f'sent {sent} frames of {args.width}x{args.height} at {args.rate:g} Hz; '
              f'received {len(arrivals)} outputs')  # fmt: skip
        print(f'throughput: {(len(arrivals) - 1) / span if span > 0 else 0:.2f} frames/s')
        print(f'latency stamp->output: mean {latency.mean() * 1e3:.1f} ms, '
              f'p50 {np.percentile(latency, 50) * 1e3:.1f} ms, '
              f'p95 {np.percentile(latency, 95) * 1e3:.1f} ms')  # fmt: skip
        windows = [d for d in diagnostics if float(d.get('predictor time (s)', 0)) > 0]
        if windows:
            predictor = np.mean([float(d['predictor time (s)']) for d in windows])
            overhead = np.mean([float(d['node overhead (s)']) for d in windows])
            print(
                f'predictor time: {predictor * 1e3:.1f} ms/frame; node overhead: '
                f'{overhead * 1e3:.2f} ms/frame ({100 * overhead / predictor:.1f}% of predictor)'
            )
            print(f'dropped by the depth-1 queue: {windows[-1]["dropped (queue)"]}')
        return 0
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
        node.stop()


if __name__ == '__main__':
    sys.exit(main())
