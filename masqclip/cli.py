"""The ``masqclip`` command: segment images, benchmark, convert upstream weights.

Every subcommand is a module with ``add_arguments(parser)`` and ``run(args) -> int``, so a test
calls ``main([...])`` exactly as a user types it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from masqclip.cpu_memory import keep_freed_memory

# subcommand -> (module, one-line help)
COMMANDS = {
    'segment': ('masqclip.tools.segment', 'segment an image for a vocabulary'),
    'bench': ('masqclip.tools.bench', 'measure speed: mask tokens, vocabulary size, stages'),
    'convert-upstream': ('masqclip.tools.convert', 'convert an upstream MasQCLIP .pth'),
    'train': (
        'masqclip.training.cli',
        'train MasQCLIP: stage1 (proposer distillation) | stage2 (MasQ-Tuning)',
    ),
    'train-clip': (
        'masqclip.training.clip_pretrain',
        'contrastive CLIP pretraining of the demo model on procedural scenes',
    ),
    'eval': (
        'masqclip.training.evaluate',
        'evaluate a checkpoint: mask AP, PQ, mIoU (all/base/novel), proposal recall',
    ),
    'export': ('masqclip.tools.export', 'export the image path: ONNX graph or TensorRT engine'),
    'synth': ('masqclip.data.synthetic', 'write a procedural dataset in COCO formats'),
    'ov-split': ('masqclip.data.ov_split', 'write the open-vocabulary base/novel split'),
    'eval-tracks': (
        'masqclip.tools.eval_tracks',
        'track a sequence and score the tracks: IDF1, MOTA, ID switches, re-identification',
    ),
}


class CommandError(RuntimeError):
    """A failure the user can fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='masqclip', description=__doc__.splitlines()[0])
    parser.add_argument('-v', '--verbose', action='store_true', help='log debug messages')
    subparsers = parser.add_subparsers(dest='command', required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own progress at INFO; other libraries (the ONNX exporter is chatty) only warn.
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    logging.getLogger('masqclip').setLevel(logging.DEBUG if args.verbose else logging.INFO)
    keep_freed_memory()
    try:
        return args.run(args)
    except (CommandError, ValueError, RuntimeError, OSError) as error:
        # Library errors a user can cause (bad image, vocabulary, checkpoint) say what to do.
        print(f'masqclip {args.command}: error: {error}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
