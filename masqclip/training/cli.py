"""Train MasQCLIP: ``masqclip train {stage1,stage2} [--recipe R] [--out DIR] [--resume]
[key=value ...]``.

A recipe (``masqclip/recipes/<name>.yaml`` or a YAML file) holds every setting; ``key=value``
arguments override them (``train.steps=2000 data.root=/data/synth``). The resolved recipe is
saved as ``DIR/config.yaml`` beside the checkpoints; ``--resume`` continues the run in
``DIR`` from its ``last.pt`` with that saved recipe (overrides still apply, e.g. more steps).

The same command runs on several GPUs or machines under torchrun, e.g.
``torchrun --standalone --nproc-per-node 8 -m masqclip.training.cli stage1 ...``
(docs/distributed.md).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from masqclip.training import distributed
from masqclip.training.recipe import list_recipes

# stage -> (module, training function, default recipe)
STAGES = {
    'stage1': ('masqclip.training.stage1', 'train_stage1', 'stage1'),
    'stage2': ('masqclip.training.stage2', 'train_stage2', 'stage2'),
}
STAGE_HELP = {
    'stage1': 'progressive distillation of the class-agnostic proposer (teacher, students)',
    'stage2': 'MasQ-Tuning of the mask tokens (query projections + mask embedding)',
}


def add_stage_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one stage (everything but the stage name)."""
    parser.add_argument(
        'overrides',
        nargs='*',
        metavar='KEY=VALUE',
        help='recipe settings to change, e.g. train.steps=100 data.root=DIR',
    )
    parser.add_argument(
        '--recipe',
        help="recipe name or YAML file (default: the stage's own); "
        f'shipped: {", ".join(list_recipes())}',
    )
    parser.add_argument('--out', help="run folder (default: the recipe's output_dir)")
    parser.add_argument(
        '--resume', action='store_true', help='continue the run in the folder from its last.pt'
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # One sub-parser per stage: argparse cannot mix a choice positional, options and a
    # variable-length positional (``stage1 --out DIR k=v`` would fail) in one parser.
    stages = parser.add_subparsers(dest='stage', required=True, metavar='STAGE')
    for name, text in STAGE_HELP.items():
        add_stage_arguments(stages.add_parser(name, help=text, description=text))


def run(args: argparse.Namespace) -> int:
    from masqclip.training.recipe import RecipeError
    from masqclip.training.run import resolve_recipe

    module_name, function, default_recipe = STAGES[args.stage]
    recipe, run_dir = resolve_recipe(
        args.recipe or default_recipe, args.overrides, args.out, args.resume
    )
    if recipe.get('stage') != args.stage:
        raise RecipeError(
            f'this recipe is for {recipe.get("stage")!r}, not {args.stage!r}: '
            f'use `masqclip train {recipe.get("stage")}` or another --recipe'
        )
    train = getattr(importlib.import_module(module_name), function)
    try:
        final = train(recipe, run_dir, resume=args.resume)
        if distributed.is_main_process():
            print(f'{args.stage} done: weights in {final}, metrics and curves in {run_dir}')
    finally:
        distributed.shutdown()  # leave the process group the training joined (torchrun)
    return 0


def run_command(
    parser: argparse.ArgumentParser,
    run_fn: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """Parse ``argv`` and run, turning errors a user can fix into a message and status 2, as
    ``masqclip.cli.main`` does."""
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        return run_fn(args)
    except (ValueError, RuntimeError, OSError) as error:
        rank = distributed.rank_and_world()[0]
        where = f' (rank {rank})' if distributed.is_distributed() else ''
        print(f'{parser.prog}: error{where}: {error}', file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``masqclip train`` as a function: ``main(['stage1', 'train.steps=2', ...])``."""
    parser = argparse.ArgumentParser(prog='masqclip train', description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_command(parser, run, argv)


def main_for_stage(stage: str, argv: Sequence[str] | None = None) -> int:
    """``masqclip train <stage>`` with the stage fixed (the stages' own ``main``)."""
    return main([stage, *(sys.argv[1:] if argv is None else argv)])


if __name__ == '__main__':
    sys.exit(main())
