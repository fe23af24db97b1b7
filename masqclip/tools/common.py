"""Command-line options shared by the subcommands that build a predictor."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from masqclip.factory import create_predictor, list_models
from masqclip.inference.predictor import TASKS, Predictor, validate_tasks
from masqclip.inference.vocabulary import Vocabulary
from masqclip.modeling.precision import PRECISIONS


def add_model_arguments(
    parser: argparse.ArgumentParser, precisions: Sequence[str] = PRECISIONS
) -> None:
    """--model, --checkpoint, --clip-weights, --device and --precision (one of
    ``precisions``: an export takes fewer than the torch backend)."""
    group = parser.add_argument_group('model (default: the demo model shipped with masqclip)')
    group.add_argument(
        '--model',
        help=f'architecture: one of {", ".join(list_models())} or a .json path; alone, it '
        'builds that architecture with random (or --clip-weights) weights',
    )
    group.add_argument('--checkpoint', help="a masqclip_ros checkpoint (.pt, .pt.gz), or 'demo'")
    group.add_argument('--clip-weights', help="'openai' or a CLIP weights file")
    group.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1 ... (%(default)s)')
    group.add_argument(
        '--precision',
        default='fp32',
        choices=precisions,
        help='fp16 needs CUDA; bf16 a CPU with bf16 units (%(default)s)',
    )


def add_vocabulary_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument('--vocabulary', help='comma-separated class names, e.g. "red mug,table"')
    group.add_argument('--vocabulary-file', help='YAML vocabulary (names, synonyms, is_thing)')


def parse_tasks(text: str, allowed: Sequence[str] = TASKS) -> tuple[str, ...]:
    """The tasks of a comma list such as 'instance,panoptic', for argparse's ``type``."""
    tasks = tuple(t.strip() for t in text.split(',') if t.strip())
    try:
        validate_tasks(tasks, allowed)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return tasks


def vocabulary_from_args(args: argparse.Namespace) -> Vocabulary:
    if args.vocabulary_file:
        vocabulary = Vocabulary.from_yaml(args.vocabulary_file)
    else:
        vocabulary = Vocabulary.parse(args.vocabulary)
    return vocabulary.require_classes()


def predictor_from_args(args: argparse.Namespace, **options: object) -> Predictor:
    return create_predictor(
        args.model,
        checkpoint=args.checkpoint,
        clip_weights=args.clip_weights,
        device=args.device,
        precision=args.precision,
        **options,
    )
