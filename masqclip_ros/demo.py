"""One-command demo: replay the shipped camera sequence through masqclip_node, ask find, save
what came back.

``masqclip_ros_demo --out demo_out`` starts the node in a child process (the same command a
robot runs) with its default model, the demo model this project trains itself, and depth on;
replays ``examples/sequence`` (150 frames of 640x480 colour, registered depth and camera_info
at 10 fps; the demo model's world of colour x fill-pattern objects over grass, sky and water)
as a camera driver would, at its frame rate; keeps every ``~/overlay`` and ``~/instances``.
Then it calls ``~/find`` three times on the last segmented frame: a class the ground truth
shows there, one absent from every frame played, and the first again with the other classes in
view as negative queries; and it teaches that object under a new name from an earlier frame
(``~/teach``) and finds it by that name on the last one. It writes ``overlay.gif``,
``contact_sheet.png`` (the node's overlays: each tracked object in its track's colour, labelled
with its track id), ``find.json`` and ``summary.json`` beside ``node.log``, and prints a
summary, with the tracks the node saw and their IDF1 and ID switches against the sequence's
ground truth. DDS stays on loopback unless the environment says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import rclpy
from masqclip_ros.msg import InstanceSegmentation
from PIL import Image

from masqclip.animation import contact_sheet, evenly_spaced, shrink, write_gif
from masqclip.evaluation import tracking as evaluation
from masqclip_ros.conversions import image_msg_to_array
from masqclip_ros.demo_find import ANSWERED, ask
from masqclip_ros.demo_teach import teach_and_find
from masqclip_ros.demo_tracks import track_figures
from masqclip_ros.node_process import NodeProcess, share_directory
from masqclip_ros.recorded_sequence import RecordedSequence, load_sequence
from masqclip_ros.replay import Replay

PICTURE_WIDTH = 320
"""Overlays are this wide in the GIF and the contact sheet: at 640x480 the GIF of the whole
sequence would hold four times the pixels (3 MB at 320x240)."""
SHEET_TILES, SHEET_COLUMNS = 12, 4
NODE_START_S = 120.0
SETTLE_S = 3.0
"""Seconds without output after which the frames still in flight are taken as dropped."""


def latency_percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 and p95 in milliseconds of at least one latency in seconds."""
    return {f'p{q}': round(float(np.percentile(seconds, q)) * 1000, 1) for q in (50, 95)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    share = share_directory()
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', type=Path, default=Path('masqclip_demo_out'))
    parser.add_argument('--sequence', type=Path, default=share / 'examples' / 'sequence')
    parser.add_argument('--rate', type=float, default=1.0, help='speed factor (%(default)s)')
    parser.add_argument('--frames', type=int, default=None, help='replay only the first N')
    parser.add_argument('--query', default=None, help='default: the largest object in view')
    parser.add_argument(
        '--negative', action='append', default=[], help='negative query (repeatable)'
    )
    parser.add_argument(
        '--min-score', type=float, default=0.1, help='matches scoring lower are not reported'
    )
    parser.add_argument('--params-file', default=str(share / 'config' / 'segment.yaml'))
    parser.add_argument(
        '--vocabulary-file', default=str(share / 'config' / 'vocabularies' / 'demo_scenes.yaml')
    )
    args = parser.parse_args(argv)
    if args.rate <= 0 or (args.frames is not None and args.frames < 1):
        parser.error('--rate must be > 0 and --frames >= 1')
    return args


def write_pictures(replay: Replay, sequence: RecordedSequence, out: Path) -> dict:
    """overlay.gif (every overlay, at the pace they came in sequence time) and
    contact_sheet.png (evenly spaced ones with frame number and stamp); their details."""
    stamps = sorted(stamp for stamp in replay.overlays if stamp in replay.sent)
    if not stamps:
        return {}
    pictures = [shrink(image_msg_to_array(replay.overlays[s]), PICTURE_WIDTH) for s in stamps]
    fps = sequence.fps * len(stamps) / len(replay.sent)
    write_gif(pictures, out / 'overlay.gif', fps)
    chosen = evenly_spaced(len(stamps), SHEET_TILES)
    captions = [
        f'frame {sequence.frame_number(replay.sent[stamps[k]].index)}  '
        f'{stamps[k] // 10**9}.{stamps[k] % 10**9 // 10**6:03d}'
        for k in chosen
    ]
    sheet = contact_sheet([pictures[k] for k in chosen], SHEET_COLUMNS, captions)
    Image.fromarray(sheet).save(out / 'contact_sheet.png')
    return {'gif_frames': len(pictures), 'gif_fps': round(fps, 3), 'sheet_tiles': len(chosen)}


def segmented_instances(
    replay: Replay, sequence: RecordedSequence
) -> list[tuple[int, int, InstanceSegmentation]]:
    """(stamp, frame number, the node's instances) of each segmented frame, in time order."""
    return [
        (stamp, sequence.frame_number(replay.sent[stamp].index), msg)
        for stamp, (_, msg) in sorted(replay.instances.items())
        if stamp in replay.sent
    ]


def segmented_frames(replay: Replay, sequence: RecordedSequence) -> list[dict]:
    """Per segmented frame: number, stamp, latency and instance counts (with 3D)."""
    latencies = replay.latencies()
    return [
        {
            'frame': number,
            'stamp': [msg.header.stamp.sec, msg.header.stamp.nanosec],
            'latency_ms': round(latencies[stamp] * 1000, 1),
            'instances': len(msg.instances),
            'with_3d': sum(instance.has_3d for instance in msg.instances),
        }
        for stamp, number, msg in segmented_instances(replay, sequence)
    ]


def file_size(path: Path) -> str:
    size = path.stat().st_size
    return f'{size / 1e6:.1f} MB' if size >= 1e6 else f'{size / 1e3:.1f} kB'


def print_summary(summary: dict, found: dict, out: Path) -> None:
    frames, latency = summary['segmented'], summary['latency_ms']
    print(
        f'replayed {summary["frames_sent"]} frames of {summary["sequence"]} '
        f'({summary["width"]}x{summary["height"]} rgb8 + 16UC1 depth + camera_info, '
        f'{summary["fps"]:g} fps x {summary["rate"]:g}) in {summary["seconds"]["replay"]} s'
    )
    print(
        f'segmented {len(frames)} of {summary["frames_sent"]} frames '
        f'({summary["frames_sent"] - len(frames)} dropped while the node was busy); '
        f'3D for {sum(f["with_3d"] for f in frames)} of '
        f'{sum(f["instances"] for f in frames)} instances'
    )
    print(f'latency publish -> ~/instances: p50 {latency["p50"]} ms, p95 {latency["p95"]} ms')
    tracks = summary['tracks']
    reidentified, reentries = tracks['reidentified']
    print(
        f'tracks: {tracks["seen"]} seen; against the ground truth over the '
        f'{tracks["frames_scored"]} segmented frames: IDF1 {tracks["idf1"]:.3f}, '
        f'MOTA {tracks["mota"]:.3f}, {tracks["id_switches"]} ID switches, '
        f'{reidentified}/{reentries} re-entries re-identified'
    )
    truth = ', '.join(f'{o["label"]} at {o["depth_m"]} m' for o in found['ground_truth'])
    sec, nanosec = found['stamp']
    print(f'find on frame {found["frame"]} (stamp {sec}.{nanosec:09d}; in view: {truth}):')
    for answer in found['answers']:
        negatives = f' not {answer["negatives"]}' if answer['negatives'] else ''
        matches = '; '.join(
            f'{m["score"]:.2f} at {m["position"]} m' if m['position'] else f'{m["score"]:.2f}'
            for m in answer['matches'][:3]
        )
        print(
            f'  {answer["kind"]:8} {answer["query"]!r}{negatives}: {answer["status"]}'
            f'{", " + matches if matches else ""}'
        )
    taught = found['teach']
    if taught['taught']:
        best = taught['matches'][:1]
        matches = '; '.join(f'{m["score"]:.2f} at {m["position"]} m' for m in best)
        same = 'an object of the class shown' if taught['same_object'] else 'another object'
        print(
            f'  teach    {taught["name"]!r} = the {taught["object"]} shown on frame '
            f'{taught["shown_on_frame"]}; find {taught["name"]!r} on frame '
            f'{taught["found_on_frame"]}: {taught["status"]}'
            f'{", " + matches + " (" + same + ")" if matches else ""}'
        )
    else:
        print(f'  teach    not taught: {taught["message"]}')
    files = ', '.join(f'{path.name} ({file_size(path)})' for path in sorted(out.iterdir()))
    print(f'wrote {out}: {files}')
    print(f'node started in {summary["seconds"]["node_start"]} s')


def main(argv: list[str] | None = None) -> int:
    """Run the demo.

    :param argv: command-line arguments (default ``sys.argv[1:]``).
    :return: 0 when the node segmented frames and answered every find, 1 otherwise.
    """
    started = time.monotonic()
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    # A 640x480 rgb8 frame (900 KiB) is larger than Fast DDS's default shared-memory segment.
    profile = share_directory() / 'config' / 'fastdds_local.xml'
    if profile.is_file():
        os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(profile))
    context = rclpy.Context()
    rclpy.init(context=context)
    # The camera's publishers exist before the node starts: it activates with a QoS matching
    # them (input.reliability auto), not with best effort switched a second later.
    replay = Replay(context)
    overrides = {'vocabulary_file': args.vocabulary_file, 'depth.enabled': 'true'}
    node = NodeProcess(args.out / 'node.log', args.params_file, overrides)
    sequence = load_sequence(args.sequence, args.frames)  # while the node starts
    try:
        if not replay.wait_ready(node.alive, NODE_START_S):
            print(f'the node did not start; see {args.out / "node.log"}', file=sys.stderr)
            return 1
        ready = time.monotonic()
        replay.play(sequence, args.rate)
        replay.settle(SETTLE_S)
        played = time.monotonic()
        frames = segmented_frames(replay, sequence)
        if not frames:
            print(f'the node segmented no frame; see {args.out / "node.log"}', file=sys.stderr)
            return 1
        try:
            found = ask(replay, sequence, args.min_score, args.query, tuple(args.negative))
        except ValueError as error:
            print(f'no find asked: {error}', file=sys.stderr)
            return 1
        found['teach'] = teach_and_find(replay, sequence, args.min_score)
        (args.out / 'find.json').write_text(json.dumps(found, indent=1))
        truth = evaluation.load_sequence(args.sequence)
        segmented = [(number, msg) for _, number, msg in segmented_instances(replay, sequence)]
        summary = {
            'sequence': str(args.sequence),
            'width': sequence.camera_info['width'],
            'height': sequence.camera_info['height'],
            'fps': sequence.fps,
            'rate': args.rate,
            'frames_sent': len(replay.sent),
            'frames_segmented': len(frames),
            'latency_ms': latency_percentiles(list(replay.latencies().values())),
            'tracks': track_figures(truth, segmented),
            'pictures': write_pictures(replay, sequence, args.out),
            'find': [answer['status'] for answer in found['answers']],
            'seconds': {
                'node_start': round(ready - started, 1),
                'replay': round(played - ready, 1),
            },
            'segmented': frames,
        }
        (args.out / 'summary.json').write_text(json.dumps(summary, indent=1))
        print_summary(summary, found, args.out)
        return 0 if all(status in ANSWERED for status in summary['find']) else 1
    finally:
        replay.close()
        rclpy.try_shutdown(context=context)
        node.stop()


if __name__ == '__main__':
    sys.exit(main())
