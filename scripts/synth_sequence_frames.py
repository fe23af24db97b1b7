"""Write frames of many sequences as one COCO panoptic dataset: the frames of `masqclip synth
OUT --sequence --seed S` (default settings: 640x480, 15 s at 10 fps) for each seed S, every
STEP-th frame (PNG, not JPEG). A single sequence holds 4-6 objects of at most 6 classes, so its
PQ counts every class the model confuses one with as a class of PQ 0; pooled over many
sequences, the classes occur as in the scene test sets and PQ / mIoU / AP compare with theirs.
Usage: synth_sequence_frames.py OUT --seeds 11-40 [--step 30]"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from masqclip.data.sequences import SequenceCfg, plan_sequence, render_frame
from masqclip.data.synthetic import write_scenes


def seed_range(text: str) -> range:
    first, last = (int(v) for v in text.split('-'))
    return range(first, last + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', type=Path)
    parser.add_argument('--seeds', type=seed_range, required=True, help='FIRST-LAST')
    parser.add_argument('--step', type=int, default=30, help='keep frames 0, STEP, 2 STEP, ...')
    args = parser.parse_args()
    cfg = SequenceCfg()
    frames = (
        render_frame(plan, index).scene
        for plan in (plan_sequence(np.random.default_rng(seed), cfg) for seed in args.seeds)
        for index in range(0, cfg.num_frames, args.step)
    )
    info = {'description': 'masqclip sequence frames', 'seeds': list(args.seeds)}
    info['step'] = args.step
    write_scenes(args.out_dir, frames, info)
    print(f'wrote every {args.step}th frame of sequences {args.seeds} to {args.out_dir}')


if __name__ == '__main__':
    main()
