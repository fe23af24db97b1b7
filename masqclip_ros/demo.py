"""One-command demo: start masqclip_node, replay sample frames, ask find, save what came back.

``python -m masqclip_ros.demo --out demo_out --query 'red mug'`` starts the node in a child
process (the same command a robot would run), publishes a few procedurally drawn tabletop
frames, saves every ``~/overlay`` it publishes as PNG, calls ``~/find`` on the last frame and
writes the answer to ``find.json``. DDS stays on loopback unless the environment says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from masqclip_ros.srv import FindObjects
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from masqclip_ros.conversions import array_to_image_msg, image_msg_to_array

QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def sample_frame(index: int, height: int = 120, width: int = 160) -> np.ndarray:
    """A tabletop drawn procedurally: wall, table, a red mug, a green bottle, a bowl.

    :param index: frame number; the objects drift a little from frame to frame.
    :return: uint8 (H, W, 3) RGB.
    """
    image = np.empty((height, width, 3), np.uint8)
    image[: height // 2] = (205, 200, 190)  # wall
    image[height // 2 :] = (140, 100, 60)  # table
    shift = 3 * index
    cv2.rectangle(image, (30 + shift, 50), (55 + shift, 85), (200, 30, 30), cv2.FILLED)
    cv2.ellipse(image, (58 + shift, 66), (7, 10), 0, -90, 90, (200, 30, 30), 3)  # handle
    cv2.rectangle(image, (95, 30 + index), (110, 85 + index), (40, 150, 60), cv2.FILLED)
    cv2.ellipse(image, (130, 92), (18, 8), 0, 0, 360, (230, 230, 235), cv2.FILLED)
    return image


def default_params_file() -> str:
    """The installed config/segment.yaml, else the checkout's."""
    try:
        share = Path(get_package_share_directory('masqclip_ros'))
    except PackageNotFoundError:
        share = Path(__file__).resolve().parents[1]
    return str(share / 'config' / 'segment.yaml')


def main(argv: list[str] | None = None) -> int:
    """Run the demo.

    :param argv: command-line arguments (default ``sys.argv[1:]``).
    :return: 0 when find answered, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=Path('masqclip_demo_out'))
    parser.add_argument('--query', default='red mug')
    parser.add_argument('--negative', action='append', default=[], help='negative query')
    parser.add_argument('--frames', type=int, default=4)
    parser.add_argument('--params-file', default=default_params_file())
    parser.add_argument('--vocabulary', default='[red mug, bottle, bowl, table, wall]')
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

    command = [
        sys.executable, '-m', 'masqclip_ros.node', '--ros-args',
        '--params-file', args.params_file, '-p', f'vocabulary:={args.vocabulary}',
    ]  # fmt: skip
    log = open(args.out / 'node.log', 'w')  # noqa: SIM115 - closed below
    node_process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    rclpy.init()
    client = Node('masqclip_demo')
    overlays: list[Image] = []
    client.create_subscription(Image, '/masqclip_node/overlay', overlays.append, QOS)
    publisher = client.create_publisher(Image, 'image', QOS)
    find = client.create_client(FindObjects, '/masqclip_node/find')
    try:
        deadline = time.monotonic() + 120
        while publisher.get_subscription_count() == 0 or not find.service_is_ready():
            if node_process.poll() is not None or time.monotonic() > deadline:
                print(f'the node did not start; see {args.out / "node.log"}', file=sys.stderr)
                return 1
            rclpy.spin_once(client, timeout_sec=0.1)
        for index in range(args.frames):
            header = Header(frame_id='demo_camera', stamp=client.get_clock().now().to_msg())
            publisher.publish(array_to_image_msg(sample_frame(index), 'rgb8', header))
            cv2.imwrite(str(args.out / f'frame_{index}.png'), sample_frame(index)[:, :, ::-1])
            wait_until = time.monotonic() + 30
            while len(overlays) <= index and time.monotonic() < wait_until:
                rclpy.spin_once(client, timeout_sec=0.1)
        for index, overlay in enumerate(overlays):
            cv2.imwrite(
                str(args.out / f'overlay_{index}.png'), image_msg_to_array(overlay)[..., ::-1]
            )
        request = FindObjects.Request(query=args.query, negative_queries=args.negative)
        future = find.call_async(request)
        rclpy.spin_until_future_complete(client, future, timeout_sec=30)
        answer = future.result()
        if answer is None:
            print('find did not answer', file=sys.stderr)
            return 1
        report = {
            'query': args.query,
            'negative_queries': args.negative,
            'status': answer.status,
            'message': answer.message,
            'stamp': [answer.header.stamp.sec, answer.header.stamp.nanosec],
            'matches': [
                {
                    'score': round(float(m.score), 6),
                    'roi': [m.roi.x_offset, m.roi.y_offset, m.roi.width, m.roi.height],
                    'area': m.area,
                }
                for m in answer.matches
            ],
        }
        (args.out / 'find.json').write_text(json.dumps(report, indent=2))
        print(f'{len(overlays)} overlays and find.json written to {args.out}: {answer.message}')
        return 0
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
        node_process.send_signal(signal.SIGINT)
        try:
            node_process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node_process.kill()
        log.close()


if __name__ == '__main__':
    sys.exit(main())
