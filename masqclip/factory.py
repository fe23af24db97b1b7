"""Named architectures (JSON files in ``model_configs/``), the single model builder, and
``create_predictor``, which assembles a predictor on any backend from a model's name or file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from masqclip.checkpoint import (
    CheckpointError,
    fingerprint_mask_clip,
    fingerprint_module,
    load_checkpoint,
    load_clip_weights,
)
from masqclip.export import DEFAULT_CACHE_DIR, build_image_model, network_input_size
from masqclip.export.inductor import InductorImageModel
from masqclip.inference.predictor import Predictor, PredictorCfg
from masqclip.inference.transforms import PreprocessCfg
from masqclip.modeling.mask_clip import MaskCLIPVisual, build_clip
from masqclip.modeling.masqclip import MasQCLIP
from masqclip.modeling.precision import TORCH_BACKENDS, check_precision
from masqclip.modeling.proposer import MaskProposer, build_proposer
from masqclip.modeling.text_encoder import TextEncoder

logger = logging.getLogger('masqclip')

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


# Parameter-name prefixes of the parts a checkpoint may leave out.
CLIP_TOWERS = ('mask_clip.visual.', 'text.')
_Q_PROJ = 'mask_clip.new_q_proj.'
_MASK_EMBEDDINGS = 'mask_clip.mask_embeddings'


def resolve_checkpoint(model: str | None, checkpoint: str | Path | None) -> Path | None:
    """The checkpoint file ``build_model`` loads: ``DEMO_CHECKPOINT`` for 'demo', and for no
    model and no checkpoint either; None for an architecture built without one."""
    if checkpoint == 'demo' or (checkpoint is None and model is None):
        return DEMO_CHECKPOINT
    return None if checkpoint is None else Path(checkpoint)


def model_name(model: str | None, checkpoint: str | Path | None) -> str:
    """A short name for a model (its exports and logs): the architecture's name, else the
    checkpoint file's ('masqclip_demo' for masqclip_demo.pt.gz, 'arch' for configs/arch.json)."""
    return Path(model or resolve_checkpoint(model, checkpoint)).name.split('.')[0]


def build_model(
    model: str | None = None,
    checkpoint: str | Path | None = None,
    clip_weights: str | Path | None = None,
    q_proj_init: str = 'random',
) -> tuple[MasQCLIP, dict]:
    """Build a MasQCLIP and load its weights.

    CLIP weights fill only what the checkpoint lacks: they load first, the checkpoint's own
    tensors go over them, so a tuned ``mask_embeddings`` or ``new_q_proj`` (or any other
    stored weight) is never replaced. A stage-1 checkpoint stores the proposer alone (or with
    the CLIP it was built on), so its CLIP comes from ``clip_weights``.

    :param model: architecture name or JSON path; None takes the one stored in ``checkpoint``
        (with no checkpoint either: the shipped demo model).
    :param checkpoint: a checkpoint of this project; 'demo' for the shipped demo model
        (``DEMO_CHECKPOINT``).
    :param clip_weights: CLIP weights for the towers the checkpoint does not hold: 'openai'
        (open_clip downloads them where the internet is reachable) or a local file.
    :param q_proj_init: for query projections the checkpoint does not hold: 'random' keeps
        them as built (the reference, method.md trap 1); 'clip' copies CLIP's own (the
        MaskCLIP-equivalent start).
    :return: the model (eval mode, on the CPU) and its architecture config.
    :raises CheckpointError: for a checkpoint that does not fit the architecture or lacks the
        proposer.
    """
    if q_proj_init not in ('random', 'clip'):
        raise ModelConfigError(f"q_proj_init must be 'random' or 'clip', got {q_proj_init!r}")
    state_dict = {}
    checkpoint = resolve_checkpoint(model, checkpoint)
    if checkpoint is not None:
        stored_config, state_dict = load_checkpoint(checkpoint)
        config = stored_config if model is None else get_model_config(model)
    else:
        config = get_model_config(model)
    network = build_model_from_config(config)
    if clip_weights is not None:
        load_clip_weights(network, clip_weights, config)
    if checkpoint is not None:
        _load_checkpoint_over(network, state_dict, checkpoint, model, clip_weights)
    if q_proj_init == 'clip' and not any(k.startswith(_Q_PROJ) for k in state_dict):
        network.mask_clip.copy_clip_q_proj()
    return network.eval(), config


def _load_checkpoint_over(
    network: MasQCLIP,
    state_dict: dict,
    checkpoint: str | Path,
    model: str | None,
    clip_weights: str | Path | None,
) -> None:
    """Load every tensor of ``state_dict``; check that what it lacks may be left out."""

    def misfit(detail: str) -> CheckpointError:
        return CheckpointError(
            f'checkpoint {checkpoint} does not fit the architecture {model!r}; leave the '
            f'model name out to use the one stored in the checkpoint ({detail[:300]})'
        )

    try:
        missing, unexpected = network.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # a shape mismatch
        raise misfit(str(error)) from error
    if unexpected or any(k.startswith('proposer.') for k in missing):
        raise misfit(f'unexpected keys {unexpected[:3]}, missing keys {missing[:3]}')
    if any(k.startswith(CLIP_TOWERS) for k in missing) and clip_weights is None:
        logger.warning(
            'checkpoint %s holds no CLIP weights and none were given: CLIP is random, so '
            'labels mean nothing (fine for proposals alone); pass clip_weights',
            checkpoint,
        )
    if _MASK_EMBEDDINGS in missing:
        network.mask_clip.reset_mask_embeddings()  # from the CLIP now loaded


def checkpoint_holds_clip(checkpoint: str | Path) -> bool:
    """Whether a checkpoint stores CLIP's towers (a stage-1 file may hold the proposer alone)."""
    _, state_dict = load_checkpoint(checkpoint)
    return any(key.startswith(CLIP_TOWERS) for key in state_dict)


def load_proposer(checkpoint: str | Path) -> MaskProposer:
    """The proposer of a checkpoint alone, in eval mode (a stage-1 teacher needs no CLIP).

    :raises CheckpointError: for a checkpoint without a fitting proposer.
    """
    config, state_dict = load_checkpoint(checkpoint)
    proposer = build_proposer(config['proposer'])
    weights = {
        k.removeprefix('proposer.'): v for k, v in state_dict.items() if k.startswith('proposer.')
    }
    try:
        proposer.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f'checkpoint {checkpoint} holds no proposer of its architecture ({str(error)[:300]})'
        ) from error
    return proposer.eval()


BACKENDS = (*TORCH_BACKENDS, 'onnxruntime', 'tensorrt')
"""Where the image path runs: torch eager or compiled, or an exported graph."""


def create_predictor(
    model: str | None = None,
    checkpoint: str | Path | None = None,
    clip_weights: str | Path | None = None,
    device: str = 'cpu',
    backend: str = 'torch',
    precision: str = 'fp32',
    frame_size: tuple[int, int] = (480, 640),
    engine_cache_dir: str | Path | None = None,
    onnx_path: str | Path | None = None,
    **options: object,
) -> Predictor:
    """A predictor from a checkpoint (which names its architecture), or from a named
    architecture (random weights unless ``checkpoint`` or ``clip_weights`` give some); with
    neither, the shipped demo model.

    :param model: architecture name or JSON path (see ``build_model``).
    :param checkpoint: this project's checkpoint file, or 'demo'.
    :param clip_weights: CLIP weights for the towers the checkpoint lacks.
    :param device: 'cpu' or a CUDA device.
    :param backend: one of ``BACKENDS``. 'torch' runs the network eagerly; 'inductor' (CPU)
        serves eagerly while a background thread compiles it with TorchInductor for
        ``frame_size`` frames (H, W), then runs the compiled path for them
        (``export.inductor``); the exported backends ('onnxruntime', 'tensorrt') run the image
        path at the fixed input size of ``frame_size`` frames, exported once. Compiles,
        exports and engines are cached in ``engine_cache_dir``.
    :param precision: one of ``PRECISIONS``; ``check_precision`` refuses, before anything is
        built, one this device or backend cannot run, and says what to use instead.
    :param onnx_path: use (or write) this export instead of one in the cache folder.
    :param options: ``PredictorCfg`` fields.
    :raises ValueError: for an unusable precision, backend or option value.
    :raises CheckpointError: for weights that cannot be loaded.
    :raises ExportError, BackendUnavailableError: for an exported backend that cannot run.
    """
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    check_precision(precision, device, backend)
    checkpoint = resolve_checkpoint(model, checkpoint)  # the file an export records
    network, config = build_model(model, checkpoint=checkpoint, clip_weights=clip_weights)
    if backend == 'torch':
        return Predictor.from_network(network, config, device, precision, **options)
    if backend == 'inductor':
        plan = PreprocessCfg.of(config).plan(*frame_size)
        return Predictor.from_network(
            network,
            config,
            device,
            precision,
            compile_image_model=lambda eager: InductorImageModel(
                eager, plan.padded, plan.resized, device, engine_cache_dir or DEFAULT_CACHE_DIR
            ),
            **options,
        )
    model_fingerprint = fingerprint_mask_clip(network)  # of the weights as loaded, as torch's
    image_model = build_image_model(
        network,
        config,
        backend,
        device,
        precision,
        network_input_size(config, *frame_size),
        engine_cache_dir=engine_cache_dir or DEFAULT_CACHE_DIR,
        onnx_path=onnx_path,
        model_name=model_name(model, checkpoint),
        checkpoint=checkpoint,
    )
    text = network.text.eval().to(device)  # only the text tower stays in torch
    return Predictor(
        image_model,
        network.encode_classes,
        fingerprint_module(text),
        config,
        device,
        PredictorCfg(**options),
        model_fingerprint=model_fingerprint,
    )
