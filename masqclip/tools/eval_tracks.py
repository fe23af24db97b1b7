"""Track a sequence written by ``masqclip synth --sequence`` and score the tracks: IDF1, MOTA,
id switches and re-identified re-entries, with the tracker's cost per frame."""

from __future__ import annotations

import argparse
from pathlib import Path

from masqclip.cli import CommandError
from masqclip.evaluation.tracking import (
    TrackingScores,
    evaluate_tracking,
    ground_truth_detector,
    load_sequence,
    model_detector,
    tracker_cost,
)
from masqclip.factory import build_model
from masqclip.inference.predictor import Predictor
from masqclip.inference.tracking import TrackerCfg

# The instances of 100 objects a frame, the load the tracker is sized for.
CROWD = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        'sequence',
        nargs='?',
        default='examples/sequence',
        help='a sequence folder (annotations/panoptic.json, panoptic/, images/; '
        'default: %(default)s)',
    )
    parser.add_argument(
        '--checkpoint', default='demo', help="a masqclip_ros checkpoint, or 'demo' (default)"
    )
    parser.add_argument('--device', default='cpu', help='cpu, cuda, ... (%(default)s)')
    parser.add_argument(
        '--gt-masks',
        action='store_true',
        help="track the ground-truth masks, embedded by the model's mask-token CLIP, instead "
        "of the model's instances: measures the tracker alone",
    )
    parser.add_argument(
        '--score-threshold',
        type=float,
        default=0.3,
        help='model instances scoring lower are not tracked (default: %(default)s)',
    )
    parser.add_argument(
        '--reid-any-class',
        action='store_true',
        help='re-identify lost tracks from detections of any class (default: their own class)',
    )
    parser.add_argument('--max-frames', type=int, help='track only the first frames')


def run(args: argparse.Namespace) -> int:
    if not (Path(args.sequence) / 'annotations' / 'panoptic.json').is_file():
        raise CommandError(
            f'{args.sequence} holds no annotations/panoptic.json: give a folder written by '
            '"masqclip synth OUT --sequence"'
        )
    sequence = load_sequence(args.sequence)
    network, config = build_model(checkpoint=args.checkpoint)
    network.eval()
    predictor = Predictor.from_network(network, config, args.device)
    predictor.set_vocabulary(sequence.vocabulary)
    if args.gt_masks:
        mode, detect = 'ground-truth masks', ground_truth_detector(network, predictor)
    else:
        mode = f'model instances >= {args.score_threshold:g}'
        detect = model_detector(predictor, args.score_threshold)
    cfg = TrackerCfg(reid_same_class=not args.reid_any_class)
    scores = evaluate_tracking(sequence, detect, cfg, args.max_frames)
    print(format_table(args.sequence, mode, scores))
    crowd = tracker_cost(CROWD)
    print(
        f'tracker with {CROWD} instances a frame (synthetic, 512-d embeddings): '
        f'{crowd.ms_per_frame:.2f} ms/frame'
    )
    return 0


def format_table(sequence: str, mode: str, scores: TrackingScores) -> str:
    """A Markdown table of one run."""
    columns = {
        'detections': mode,
        'IDF1': f'{scores.idf1:.3f}',
        'MOTA': f'{scores.mota:.3f}',
        'ID sw': str(scores.id_switches),
        're-id': f'{scores.reidentified}/{scores.reentries}',
        'recall': f'{scores.recall:.3f}',
        'precision': f'{scores.precision:.3f}',
        'tracker ms/frame': f'{scores.tracker_ms:.2f}',
        # predicting, or embedding the ground-truth masks
        'detect ms/frame': f'{scores.detect_ms:.1f}',
    }
    return '\n'.join(
        [
            f'{sequence}: {scores.frames} frames, {scores.objects} annotated objects, '
            f'{scores.reentries} re-entries',
            '| ' + ' | '.join(columns) + ' |',
            '|' + '---|' * len(columns),
            '| ' + ' | '.join(columns.values()) + ' |',
        ]
    )
