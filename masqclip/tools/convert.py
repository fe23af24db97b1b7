"""Convert an upstream MasQCLIP checkpoint (detectron2 ``.pth``, e.g. ``base_novel.pth``) into a
masqclip_ros checkpoint. The upstream file lacks the text tower, so the CLIP weights it was
trained with are needed too ('openai' where the internet is reachable, or a local file)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from masqclip.checkpoint import (
    CheckpointError,
    convert_upstream_checkpoint,
    read_clip_state_dict,
    save_checkpoint,
)
from masqclip.factory import build_model_from_config, get_model_config

logger = logging.getLogger('masqclip')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('upstream', help='the upstream .pth (state dict under "model")')
    parser.add_argument(
        '--clip-weights',
        required=True,
        help="'openai' or the OpenAI CLIP .pt the upstream model used",
    )
    parser.add_argument(
        '--model',
        default='masqclip_r50_vitl14_336',
        help='the architecture the upstream file holds (%(default)s)',
    )
    parser.add_argument('--out', required=True, help='where to write the converted .pt')


def run(args: argparse.Namespace) -> int:
    config = get_model_config(args.model)
    upstream = load_upstream_state_dict(args.upstream)
    clip_state_dict = read_clip_state_dict(args.clip_weights, config['clip'].get('open_clip_name'))
    model = build_model_from_config(config)
    try:
        model.load_state_dict(convert_upstream_checkpoint(upstream, clip_state_dict), strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f'{args.upstream} does not fit {args.model}: {str(error)[:500]}'
        ) from error
    save_checkpoint(args.out, model, config, source=str(Path(args.upstream).name))
    print(f'wrote {args.out}')
    return 0


def load_upstream_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``["model"]`` state dict of an upstream detectron2 checkpoint.

    Upstream files are pickles (optimiser state, iteration), so this is the one place that
    loads with ``weights_only=False``: only convert files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'upstream checkpoint {path} not found')
    logger.warning('loading %s with pickle (weights_only=False): only convert trusted files', path)
    data = torch.load(path, map_location='cpu', weights_only=False)
    state_dict = data.get('model', data) if isinstance(data, dict) else None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f'{path} holds no state dict (expected a dict with "model")')
    return state_dict
