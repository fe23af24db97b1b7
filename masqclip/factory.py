"""Named architectures (JSON files in ``model_configs/``) and the single model builder."""

from __future__ import annotations

import json
from pathlib import Path

from masqclip.checkpoint import CheckpointError, load_checkpoint, load_clip_weights
from masqclip.modeling.mask_clip import MaskCLIPVisual, build_clip
from masqclip.modeling.masqclip import MasQCLIP
from masqclip.modeling.proposer import build_proposer
from masqclip.modeling.text_encoder import TextEncoder

CONFIG_DIR = Path(__file__).parent / 'model_configs'
DEMO_CHECKPOINT = Path(__file__).parent / 'weights' / 'masqclip_demo.pt.gz'
"""The model this project trains itself (scripts/train_demo.sh); ``checkpoint='demo'``."""


class ModelConfigError(ValueError):
    """An unknown architecture name or an unreadable config file."""


def list_models() -> list[str]:
    """The names of the architectures shipped with the package."""
    return sorted(path.stem for path in CONFIG_DIR.glob('*.json'))


def get_model_config(name: str) -> dict:
    """The config of a named architecture, or of a JSON file given by path."""
    path = Path(name) if name.endswith('.json') else CONFIG_DIR / f'{name}.json'
    if not path.is_file():
        raise ModelConfigError(
            f'unknown model {name!r}: choose one of {", ".join(list_models())} '
            'or give the path of a .json architecture file'
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelConfigError(f'{path} is not valid JSON: {error}') from error


def build_model_from_config(config: dict) -> MasQCLIP:
    """Assemble a randomly initialised MasQCLIP from an architecture config."""
    clip = build_clip(config['clip'])
    return MasQCLIP(
        build_proposer(config['proposer']), MaskCLIPVisual(clip.visual), TextEncoder(clip)
    )


def build_model(
    model: str | None = None,
    checkpoint: str | Path | None = None,
    clip_weights: str | Path | None = None,
    q_proj_init: str = 'random',
) -> tuple[MasQCLIP, dict]:
    """Build a MasQCLIP and load its weights, in this order: the checkpoint, then CLIP weights
    over its CLIP towers, then the mask tokens' query projections.

    :param model: architecture name or JSON path; None takes the one stored in ``checkpoint``
        (with no checkpoint either: the shipped demo model).
    :param checkpoint: a checkpoint of this project (every weight of the model); 'demo' for
        the shipped demo model (``DEMO_CHECKPOINT``).
    :param clip_weights: CLIP weights replacing the towers': 'openai' (open_clip downloads
        them where the internet is reachable) or a local file.
    :param q_proj_init: 'random' keeps the query projections as built or loaded (random init is
        the reference, method.md trap 1); 'clip' copies CLIP's own (the MaskCLIP-equivalent
        start).
    :return: the model (eval mode, on the CPU) and its architecture config.
    """
    if q_proj_init not in ('random', 'clip'):
        raise ModelConfigError(f"q_proj_init must be 'random' or 'clip', got {q_proj_init!r}")
    state_dict = None
    if checkpoint == 'demo' or (checkpoint is None and model is None):
        checkpoint = DEMO_CHECKPOINT
    if checkpoint is not None:
        stored_config, state_dict = load_checkpoint(checkpoint)
        config = stored_config if model is None else get_model_config(model)
    else:
        config = get_model_config(model)
    network = build_model_from_config(config)
    if state_dict is not None:
        try:
            network.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            raise CheckpointError(
                f'checkpoint {checkpoint} does not fit the architecture {model!r}; leave the '
                f'model name out to use the one stored in the checkpoint ({str(error)[:300]})'
            ) from error
    if clip_weights is not None:
        load_clip_weights(network, clip_weights, config)
    if q_proj_init == 'clip':
        network.mask_clip.copy_clip_q_proj()
    return network.eval(), config
