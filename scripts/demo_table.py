"""Print the demo's results tables (markdown) from the metrics JSONs scripts/train_demo.sh
writes: the method's rows, the proposers' recall, and the shipped model on camera-sized frames.
Usage: demo_table.py OUT"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = {
    'untuned': '(a) mask tokens, CLIP q-projection, no tuning (teacher proposer)',
    'tuned_teacher': '(b) + MasQ-Tuning (teacher proposer)',
    'tuned_student': '(c) + progressively distilled proposer (the shipped model)',
    'tuned_student_clipinit': "(c') as (c), q-projections initialised from CLIP's",
}
RECALL_ROWS = {
    'teacher': 'teacher (2500 steps, base only)',
    'teacher_only': 'teacher trained 4000 steps (ablation)',
    'student': 'student (teacher + 1500 distillation steps)',
}
CAMERA_ROWS = {
    'tuned_student': '64x64 scenes (300, seed 2)',
    'camera_test_640x480': '640x480 scenes (100, seed 2)',
    'camera_example_sequence': 'examples/sequence (150 frames, seed 10)',
    'camera_test_sequence11': 'sequence of seed 11 (150 frames)',
    'camera_test_sequences': '30 sequences, seeds 11-40 (every 30th frame: 150)',
}
SPLITS = ('_base', '_novel', '')


def percent(metrics: dict, key: str) -> str:
    value = metrics.get(key)
    return 'n/a' if value is None or value != value else f'{100 * value:.1f}'


def main(out: str) -> None:
    def load(name: str) -> dict:
        return json.loads((Path(out) / f'metrics_{name}.json').read_text())

    def splits(metrics: dict) -> list[str]:
        return [
            ' / '.join(percent(metrics, f'{prefix}{split}') for split in SPLITS)
            for prefix in ('panoptic/PQ', 'semantic/mIoU', 'segm/AP')
        ]

    header = ['model', 'PQ base / novel / all', 'mIoU base / novel / all', 'AP base / novel / all']
    print('| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header))
    for name, label in ROWS.items():
        print(f'| {label} | ' + ' | '.join(splits(load(name))) + ' |')
    print('\n| proposer | recall@IoU0.5 base / novel | recall@IoU0.75 base / novel |')
    print('|---|---|---|')
    for name, label in RECALL_ROWS.items():
        metrics = load(name)
        cells = [
            ' / '.join(percent(metrics, f'proposals/recall{t}{s}') for s in ('_base', '_novel'))
            for t in (50, 75)
        ]
        print(f'| {label} | ' + ' | '.join(cells) + ' |')
    header = ['shipped model on', 'PQ base / novel / all', 'mIoU base / novel / all',
              'AP base / novel / all', 'PQ things / stuff']  # fmt: skip
    print('\n| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header))
    for name, label in CAMERA_ROWS.items():
        metrics = load(name)
        things = ' / '.join(percent(metrics, f'panoptic/PQ_{k}') for k in ('th', 'st'))
        print(f'| {label} | ' + ' | '.join([*splits(metrics), things]) + ' |')


if __name__ == '__main__':
    main(*sys.argv[1:])
