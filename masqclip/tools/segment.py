"""Segment one image: writes an overlay PNG, a JSON of the instances and panoptic segments
(masks as COCO RLE), and the semantic (16-bit class index) and panoptic (COCO RGB id) PNGs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from masqclip.cli import CommandError
from masqclip.inference.results import SegmentationResult, semantic_to_uint16
from masqclip.tools.common import (
    add_model_arguments,
    add_vocabulary_arguments,
    parse_tasks,
    predictor_from_args,
    vocabulary_from_args,
)
from masqclip.visualization import draw_overlay

# The demo model's own world, shipped with the package's configs.
DEMO_VOCABULARY = 'config/vocabularies/demo_scenes.yaml'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('image', help='an image file OpenCV can read (PNG, JPEG, ...)')
    add_vocabulary_arguments(parser)
    parser.add_argument(
        '--tasks',
        type=parse_tasks,
        default=('instance', 'semantic', 'panoptic'),
        help='comma list of instance, semantic, panoptic (default: all)',
    )
    parser.add_argument('--out', default='out', help='output folder (default: %(default)s)')
    parser.add_argument(
        '--score-threshold',
        type=float,
        default=0.3,
        help='drop instances scoring lower (default: %(default)s)',
    )
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    image_bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if image_bgr is None:
        raise CommandError(f'cannot read {args.image} as an image')
    predictor = predictor_from_args(args, score_threshold=args.score_threshold)
    vocabulary = vocabulary_from_args(args)
    predictor.set_vocabulary(vocabulary)
    unknown = predictor.unknown_words_warning(vocabulary)
    if unknown:
        print(f'warning: {unknown}', file=sys.stderr)
    result = predictor.predict(image_bgr, color='bgr', tasks=args.tasks)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    overlay = draw_overlay(image_bgr[..., ::-1], result)
    cv2.imwrite(str(out / f'{stem}_overlay.png'), overlay[..., ::-1])
    if result.semantic is not None:
        cv2.imwrite(str(out / f'{stem}_semantic.png'), semantic_to_uint16(result.semantic))
    if result.panoptic is not None:
        cv2.imwrite(str(out / f'{stem}_panoptic.png'), id_map_to_rgb(result.panoptic)[..., ::-1])
    (out / f'{stem}.json').write_text(json.dumps(result_to_json(result), indent=1))
    print(
        f'{len(result.instances)} instances, {len(result.segments)} panoptic segments '
        f'-> {out}/{stem}_*'
    )
    if unknown and not result.instances:
        print(
            'found nothing, as expected: the vocabulary uses words this model never learned '
            f'(see the warning above). Try its own vocabulary: --vocabulary-file '
            f'{DEMO_VOCABULARY}, or a checkpoint trained on open vocabulary (README, Weights)',
            file=sys.stderr,
        )
    return 0


def id_map_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG encoding: id = R + 256 G + 256^2 B."""
    ids = ids.astype(np.uint32)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def encode_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {'size': list(rle['size']), 'counts': rle['counts'].decode('ascii')}


def result_to_json(result: SegmentationResult) -> dict:
    return {
        'image_size': list(result.image_size),
        'vocabulary': list(result.vocabulary),
        'instances': [
            {
                'label': i.label,
                'class_id': i.class_id,
                'score': i.score,
                'objectness': i.objectness,
                'box_xyxy': i.box.tolist(),
                'area': i.area,
                'mask_rle': encode_rle(i.mask),
            }
            for i in result.instances
        ],
        'panoptic_segments': [vars(s) for s in result.segments],
        'timings_s': result.timings,
    }
