"""Reading and writing weights: this project's checkpoints, CLIP weights, upstream MasQCLIP,
and the fingerprints that identify weights (for the text cache and the exports).

This project's checkpoints hold plain tensors and the architecture config, and load with
``weights_only=True``. Files from elsewhere that need pickle (the upstream detectron2 ``.pth``)
go through ``convert_upstream_checkpoint`` once, never through the node.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from masqclip.modeling.masqclip import MasQCLIP
from masqclip.modeling.proposer import convert_upstream_proposer_state_dict

FORMAT = 'masqclip_ros/1'
WEIGHTS_HELP = 'see "Weights" in the README for how to get them'

# Entries of an OpenAI CLIP TorchScript archive that are metadata, not weights.
_OPENAI_METADATA = ('input_resolution', 'context_length', 'vocab_size')
_UPSTREAM_Q_PROJ = re.compile(
    r'^masqclip\.visual\.transformer\.resblocks\.(\d+)\.attn\.'
    r'new_q_proj\.(weight|bias)$'
)


class CheckpointError(RuntimeError):
    """Weights that cannot be loaded; the message says what to do."""


def fingerprint_module(module: nn.Module) -> str:
    """A hash of a module's parameters and buffers (identifies weights for the text cache)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fingerprint_image_path(network: MasQCLIP) -> str:
    """A hash of the weights the image path uses (proposer and CLIP image tower, not text):
    what an export records, so other weights never pick up a stale one."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (network.proposer, network.mask_clip):
        digest.update(fingerprint_module(part).encode())
    return digest.hexdigest()


def fingerprint_mask_clip(network: MasQCLIP) -> str:
    """A hash of the weights that embed masks (CLIP image tower, mask tokens and their query
    projections): what a taught class's embedding belongs to (``Predictor.model_fingerprint``).
    """
    return fingerprint_module(network.mask_clip)


def cast_floating(state_dict: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """A CPU copy of ``state_dict`` with its floating-point tensors in ``dtype`` (float16
    halves a shipped file; loading casts back to the model's own dtype)."""
    return {
        key: value.detach().to('cpu', dtype) if value.is_floating_point() else value.cpu()
        for key, value in state_dict.items()
    }


def write_atomically(path: str | Path, data: object) -> None:
    """``torch.save`` to ``path`` through a temporary file, so a crash mid-write never leaves a
    truncated file under ``path``; gzip-compressed when ``path`` ends in ``.gz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    if path.suffix == '.gz':
        buffer = io.BytesIO()
        torch.save(data, buffer)
        with gzip.open(tmp, 'wb') as file:
            file.write(buffer.getvalue())
    else:
        torch.save(data, tmp)
    os.replace(tmp, path)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: dict,
    dtype: torch.dtype = torch.float32,
    parts: tuple[str, ...] | None = None,
    **extra: object,
) -> None:
    """Write ``model``'s weights with its architecture config (see ``write_atomically``).

    :param dtype: storage type of the floating-point weights.
    :param parts: store only the weights whose names start with one of these prefixes (e.g.
        ``('proposer.',)``); None stores all. What is left out is filled at load time (see
        ``masqclip.factory.build_model``).
    :param extra: further plain entries (training step, metrics, ...).
    """
    state_dict = model.state_dict()
    if parts is not None:
        state_dict = {k: v for k, v in state_dict.items() if k.startswith(parts)}
    state_dict = cast_floating(state_dict, dtype)
    write_atomically(path, {'format': FORMAT, 'config': config, 'model': state_dict, **extra})


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file of this project (``.gz`` too) as a dict of tensors and plain
    types."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} not found; {WEIGHTS_HELP}')
    try:
        source = io.BytesIO(gzip.decompress(path.read_bytes())) if path.suffix == '.gz' else path
        data = torch.load(source, map_location='cpu', weights_only=True)
    except Exception as error:  # torch and gzip raise many types for a corrupt file
        raise CheckpointError(
            f'{path} is not a readable masqclip_ros checkpoint ({type(error).__name__}: '
            f'{str(error)[:200]}). If it is an upstream MasQCLIP .pth, convert it with '
            '`masqclip convert-upstream`; otherwise the file is corrupt: download or train it '
            'again'
        ) from error
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        raise CheckpointError(f'{path} is not a {FORMAT} checkpoint; {WEIGHTS_HELP}')
    return data


def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, Tensor]]:
    """Return (architecture config, state dict) of a checkpoint of this project."""
    data = read_checkpoint(path)
    return data['config'], data['model']


def read_clip_state_dict(
    source: str | Path, open_clip_name: str | None = None
) -> dict[str, Tensor]:
    """A whole CLIP state dict (open_clip / OpenAI names) from 'openai' or a local file.

    :param source: 'openai' (open_clip fetches the OpenAI weights where the internet is
        reachable) or the path of an OpenAI TorchScript ``.pt`` or an open_clip checkpoint.
    :param open_clip_name: open_clip's name of the architecture, needed for 'openai'.
    """
    if str(source) == 'openai':
        import open_clip

        if open_clip_name is None:
            raise CheckpointError(
                'this architecture names no open_clip model; '
                "'openai' weights cannot be fetched for it"
            )
        try:
            clip = open_clip.create_model(open_clip_name, pretrained='openai')
        except Exception as error:  # network errors surface as many types
            raise CheckpointError(
                f'could not fetch the OpenAI {open_clip_name} weights ({error}); download '
                f'them on a connected machine and pass the file instead; {WEIGHTS_HELP}'
            ) from error
        return clip.state_dict()
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f'CLIP weights {path} not found; {WEIGHTS_HELP}')
    try:
        if _is_torchscript(path):  # OpenAI's own release format
            state_dict = torch.jit.load(str(path), map_location='cpu').state_dict()
        else:
            state_dict = torch.load(path, map_location='cpu', weights_only=True)
            state_dict = state_dict.get('state_dict', state_dict)
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f'{path} is not a readable CLIP checkpoint: {error}') from error
    state_dict = {
        k.removeprefix('module.'): v for k, v in state_dict.items() if k not in _OPENAI_METADATA
    }
    return state_dict


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any('/code/' in name for name in archive.namelist())


def load_clip_weights(model: nn.Module, source: str | Path, config: dict) -> None:
    """Load CLIP weights into a ``MasQCLIP``'s image and text towers.

    ``mask_embeddings`` is re-initialised from the loaded CLS positional embedding (the
    reference init); ``new_q_proj`` is left as it is.
    """
    state_dict = read_clip_state_dict(source, config['clip'].get('open_clip_name'))
    try:
        model.mask_clip.load_clip_state_dict(state_dict)
        model.text.load_clip_state_dict(state_dict)
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(
            f'the CLIP weights {source} do not fit this architecture: {str(error)[:500]}'
        ) from error


def convert_upstream_checkpoint(
    upstream: Mapping[str, Tensor], clip_state_dict: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Map an upstream MasQCLIP (detectron2) state dict onto this project's ``MasQCLIP``.

    The upstream file holds the proposer (``backbone.``, ``sem_seg_head.``) and the image tower
    with its query projections (``masqclip.visual.``, ``masqclip.mask_embeddings``) but no text
    tower, which comes from the CLIP weights. ``criterion.empty_weight`` is dropped (its size
    depends on the training vocabulary, method.md 5.2).

    :param upstream: the ``["model"]`` entry of the upstream ``.pth``.
    :param clip_state_dict: the CLIP the upstream model was built on (open_clip names).
    """
    converted = {
        f'proposer.{k}': v for k, v in convert_upstream_proposer_state_dict(dict(upstream)).items()
    }
    for key, value in upstream.items():
        match = _UPSTREAM_Q_PROJ.match(key)
        if match:
            converted[f'mask_clip.new_q_proj.{match[1]}.{match[2]}'] = value
        elif key == 'masqclip.mask_embeddings':
            converted['mask_clip.mask_embeddings'] = value.reshape(-1)
        elif key.startswith('masqclip.visual.'):
            converted['mask_clip.visual.' + key.removeprefix('masqclip.visual.')] = value
    for key, value in clip_state_dict.items():
        if not key.startswith('visual.'):
            converted[f'text.clip.{key}'] = value
    return converted
