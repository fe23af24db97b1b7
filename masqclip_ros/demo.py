"""One-command demo: start masqclip_node, replay sample frames, ask find, save what came back.

``masqclip_ros_demo --out demo_out --query 'purple checkered' --negative 'purple dotted'``
starts the node in a child process (the same command a robot would run) with its default
model, the demo model this project trains itself; replays the sample frames shipped in
``examples/frames`` (the demo model's world: colour x fill-pattern objects on sky, grass,
brick, water); saves every ``~/overlay`` it publishes as PNG; calls ``~/find`` on the last
frame and writes the answer to ``find.json``. DDS stays on loopback unless the environment
says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from masqclip_ros.srv import FindObjects
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from masqclip_ros.conversions import array_to_image_msg, image_msg_to_array
from masqclip_ros.node_process import NodeProcess, share_directory

QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def sample_frames(folder: Path) -> list[np.ndarray]:
    """The camera frames to replay: the PNGs of ``folder`` in name order, as RGB.

    :raises FileNotFoundError: when the folder holds no PNG.
    """
    paths = sorted(folder.glob('*.png'))
    if not paths:
        raise FileNotFoundError(f'no PNG frames in {folder}')
    return [cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1].copy() for path in paths]


def main(argv: list[str] | None = None) -> int:
    """Run the demo.

    :param argv: command-line arguments (default ``sys.argv[1:]``).
    :return: 0 when find answered, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    share = share_directory()
    parser.add_argument('--out', type=Path, default=Path('masqclip_demo_out'))
    parser.add_argument('--query', default='purple checkered')
    parser.add_argument(
        '--negative', action='append', default=[], help='negative query (repeatable)'
    )
    parser.add_argument(
        '--min-score', type=float, default=0.1, help='matches scoring lower are not reported'
    )
    parser.add_argument('--frames', type=Path, default=share / 'examples' / 'frames')
    parser.add_argument('--params-file', default=str(share / 'config' / 'segment.yaml'))
    parser.add_argument(
        '--vocabulary-file', default=str(share / 'config' / 'vocabularies' / 'demo_scenes.yaml')
    )
    args = parser.parse_args(argv)
    frames = sample_frames(args.frames)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')

    node = NodeProcess(
        args.out / 'node.log', args.params_file, {'vocabulary_file': args.vocabulary_file}
    )
    rclpy.init()
    client = Node('masqclip_demo')
    overlays: list[Image] = []
    client.create_subscription(Image, '/masqclip_node/overlay', overlays.append, QOS)
    publisher = client.create_publisher(Image, 'image', QOS)
    find = client.create_client(FindObjects, '/masqclip_node/find')
    try:
        deadline = time.monotonic() + 120
        while publisher.get_subscription_count() == 0 or not find.service_is_ready():
            if not node.alive() or time.monotonic() > deadline:
                print(f'the node did not start; see {args.out / "node.log"}', file=sys.stderr)
                return 1
            rclpy.spin_once(client, timeout_sec=0.1)
        for frame in frames:
            # A frame sent while discovery completes can be lost: send it again if no overlay
            # comes back.
            for _attempt in range(3):
                before = len(overlays)
                header = Header(frame_id='demo_camera', stamp=client.get_clock().now().to_msg())
                publisher.publish(array_to_image_msg(frame, 'rgb8', header))
                wait_until = time.monotonic() + 10
                while len(overlays) == before and time.monotonic() < wait_until:
                    rclpy.spin_once(client, timeout_sec=0.1)
                if len(overlays) > before:
                    break
        for index, overlay in enumerate(overlays):
            cv2.imwrite(
                str(args.out / f'overlay_{index}.png'), image_msg_to_array(overlay)[..., ::-1]
            )
        request = FindObjects.Request(
            query=args.query, negative_queries=args.negative, min_score=args.min_score
        )
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
        node.stop()


if __name__ == '__main__':
    sys.exit(main())
