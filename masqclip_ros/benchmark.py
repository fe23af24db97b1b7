"""Node benchmark (not a test): stream frames at a fixed rate and time the node end to end.

``python -m masqclip_ros.benchmark --rate 5 --seconds 20`` starts masqclip_node in a child
process, publishes 640x480 rgb8 frames at ``--rate`` Hz and prints: end-to-end latency (image
stamp to ``~/instances`` arrival), throughput, frames dropped by the depth-1 queue, and from
the node's /diagnostics the predictor's own time next to the node's overhead (conversion,
3D, message building and publishing), whose ratio should stay under 10%. While the frames
stream it also calls ``~/find`` on the latest frame, one call at a time, alternating a query
never asked before (its text is encoded) and one asked before (cached), and prints the round
trip of each kind next to the predictor's time: find must not wait for the image pass.

Then it prints the node process's peak resident memory (VmHWM, read from outside in /proc)
for that run and, in a fresh node, for maximum-size frames (square, ``input.max_pixels``
pixels): the goal is that a maximum-size frame adds at most 1 GB over the 640x480 peak.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from masqclip_ros.msg import InstanceSegmentation
from masqclip_ros.srv import FindObjects
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from masqclip_ros.conversions import array_to_image_msg
from masqclip_ros.node_process import NodeProcess, share_directory
from masqclip_ros.settings import SPECS

QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
SEEN_QUERY = 'red mug'
ANSWERED = (FindObjects.Response.FOUND, FindObjects.Response.NOT_FOUND)
MEMORY_GOAL_BYTES = 1 << 30
"""Most a maximum-size frame may add to the node's 640x480 peak."""


class FindProbe:
    """Calls ``~/find`` (LATEST) every ``period_s`` while frames stream, never two at once,
    and records each answer's round trip under 'new query' or 'seen query'."""

    def __init__(self, client: Node, period_s: float) -> None:
        self._service = client.create_client(FindObjects, '/masqclip_node/find')
        self._period = period_s
        self._next_call = 0.0
        self._busy = False
        self._warm = False  # SEEN_QUERY answered once, so its text is cached
        self._kinds = itertools.cycle(['new query', 'seen query'])
        self._new_queries = (f'thing number {n}' for n in itertools.count())
        self.latencies: dict[str, list[float]] = {'new query': [], 'seen query': []}
        self.failures: list[str] = []

    def poll(self) -> None:
        """Send the next call when it is due and none is outstanding."""
        if self._busy or time.monotonic() < self._next_call:
            return
        kind = next(self._kinds) if self._warm else 'warm-up'
        query = next(self._new_queries) if kind == 'new query' else SEEN_QUERY
        self._busy = True
        sent = time.perf_counter()
        future = self._service.call_async(FindObjects.Request(query=query))
        future.add_done_callback(lambda done: self._on_answer(kind, sent, done.result()))

    def _on_answer(self, kind: str, sent: float, answer: FindObjects.Response) -> None:
        elapsed = time.perf_counter() - sent
        self._busy = False
        self._next_call = time.monotonic() + self._period
        if answer.status not in ANSWERED:
            self.failures.append(answer.message)
        elif kind == 'warm-up':
            self._warm = True
        else:
            self.latencies[kind].append(elapsed)


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
        '--find-period', type=float, default=0.2, help='seconds between find calls; 0 = none'
    )
    parser.add_argument(
        '--params-file', default=str(share_directory() / 'config' / 'segment.yaml')
    )
    parser.add_argument('--log', type=Path, default=Path('masqclip_benchmark_node.log'))
    parser.add_argument(
        '--max-frames',
        type=int,
        default=2,
        help='maximum-size frames for the memory peak; 0 = none',
    )
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
    probe = FindProbe(client, args.find_period) if args.find_period > 0 else None
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
                if probe is not None and arrivals:  # find needs a processed frame
                    probe.poll()
                # Short spins: the probe's next call must not wait for the next frame.
                rclpy.spin_once(
                    client, timeout_sec=min(0.01, max(0.0, next_send - time.monotonic()))
                )
        end = time.monotonic() + 5
        while time.monotonic() < end:
            rclpy.spin_once(client, timeout_sec=0.1)
        if not arrivals:
            print(f'no output received; see {args.log}', file=sys.stderr)
            return 1
        predictor = report(args, sent, arrivals, diagnostics)
        if probe is not None:
            report_find(probe, predictor)
        stream_peak = peak_rss_bytes(node.process.pid)
        print(f'node peak RSS ({args.width}x{args.height} stream): {stream_peak / 2**20:.0f} MiB')
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
        node.stop()
    if args.max_frames > 0:
        return report_max_frame_memory(args, overrides, stream_peak)
    return 0


def peak_rss_bytes(pid: int) -> int:
    """A process's peak resident set size (VmHWM in /proc/<pid>/status), in bytes."""
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f'/proc/{pid}/status has no VmHWM')


def report_max_frame_memory(
    args: argparse.Namespace, overrides: dict[str, str], stream_peak: int
) -> int:
    """Segment ``args.max_frames`` square frames of ``input.max_pixels`` pixels, one at a time,
    in a fresh node; print its peak RSS against the stream's. Return 0, or 1 without output."""
    max_pixels = int(overrides.get('input.max_pixels', SPECS['input.max_pixels'].default))
    side = math.isqrt(max_pixels)
    node = NodeProcess(args.log.with_suffix('.max.log'), args.params_file, overrides)
    rclpy.init()
    client = Node('masqclip_benchmark_memory')
    done: set[int] = set()
    client.create_subscription(
        InstanceSegmentation,
        '/masqclip_node/instances',
        lambda msg: done.add(msg.header.stamp.sec),
        QOS,
    )
    publisher = client.create_publisher(Image, 'image', QOS)
    try:
        if not spin_until(client, lambda: publisher.get_subscription_count() > 0, 120, node):
            print(f'the node did not start; see {node.log_path}', file=sys.stderr)
            return 1
        frame = np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)
        seconds = []
        for sec in range(1, args.max_frames + 1):
            started = time.monotonic()
            header = Header(frame_id='camera')
            header.stamp.sec = sec
            publisher.publish(array_to_image_msg(frame, 'rgb8', header))
            if not spin_until(client, lambda sec=sec: sec in done, 600, node):
                print(f'no output for a {side}x{side} frame; see {node.log_path}', file=sys.stderr)
                return 1
            seconds.append(time.monotonic() - started)
        peak = peak_rss_bytes(node.process.pid)
    finally:
        client.destroy_node()
        rclpy.try_shutdown()
        node.stop()
    added = peak - stream_peak
    verdict = 'within' if added <= MEMORY_GOAL_BYTES else 'OVER'
    print(f'node peak RSS ({side}x{side} = input.max_pixels, {args.max_frames} frames, '
          f'{", ".join(f"{s:.1f}" for s in seconds)} s each): {peak / 2**20:.0f} MiB, '
          f'{added / 2**20:+.0f} MiB over the stream: {verdict} the 1 GiB goal')  # fmt: skip
    return 0


def spin_until(client: Node, done, timeout: float, node: NodeProcess) -> bool:
    """Spin ``client`` until ``done()``; False after ``timeout`` s or when the node died."""
    deadline = time.monotonic() + timeout
    while not done():
        if not node.alive() or time.monotonic() > deadline:
            return False
        rclpy.spin_once(client, timeout_sec=0.1)
    return True


def report(
    args: argparse.Namespace,
    sent: int,
    arrivals: list[tuple[float, float]],
    diagnostics: list[dict[str, str]],
) -> float | None:
    """Print latency, throughput and the node's own times; return the predictor's seconds."""
    latency = np.array([arrival - stamp for stamp, arrival in arrivals])
    span = arrivals[-1][1] - arrivals[0][1]
    print(f'sent {sent} frames of {args.width}x{args.height} at {args.rate:g} Hz; '
          f'received {len(arrivals)} outputs')  # fmt: skip
    print(f'throughput: {(len(arrivals) - 1) / span if span > 0 else 0:.2f} frames/s')
    print(f'latency stamp->output: mean {latency.mean() * 1e3:.1f} ms, '
          f'p50 {np.percentile(latency, 50) * 1e3:.1f} ms, '
          f'p95 {np.percentile(latency, 95) * 1e3:.1f} ms')  # fmt: skip
    windows = [d for d in diagnostics if float(d.get('predictor time (s)', 0)) > 0]
    if not windows:
        return None
    predictor = float(np.mean([float(d['predictor time (s)']) for d in windows]))
    overhead = float(np.mean([float(d['node overhead (s)']) for d in windows]))
    print(
        f'predictor time: {predictor * 1e3:.1f} ms/frame; node overhead: '
        f'{overhead * 1e3:.2f} ms/frame ({100 * overhead / predictor:.1f}% of predictor)'
    )
    print(f'dropped by the depth-1 queue: {windows[-1]["dropped (queue)"]}')
    return predictor


def report_find(probe: FindProbe, predictor: float | None) -> None:
    """Print find's round trip per kind of query, as a share of the predictor's time."""
    for kind, latencies in probe.latencies.items():
        if not latencies:
            print(f'find ({kind}): no answer')
            continue
        p50, p95 = (float(np.percentile(latencies, p)) for p in (50, 95))
        share = f' ({100 * p95 / predictor:.1f}% of predictor)' if predictor else ''
        print(f'find LATEST while streaming ({kind}): p50 {p50 * 1e3:.1f} ms, '
              f'p95 {p95 * 1e3:.1f} ms{share}, max {max(latencies) * 1e3:.1f} ms, '
              f'{len(latencies)} calls')  # fmt: skip
    if probe.failures:
        print(f'find failed {len(probe.failures)} times, e.g.: {probe.failures[0]}')


if __name__ == '__main__':
    sys.exit(main())
