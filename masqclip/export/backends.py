"""The exported backends behind one entry point: an ImageModel for the predictor.

``build_image_model`` makes sure an intact export of the right weights, size and precision
exists (reusing one from the cache folder, or exporting it when there is none or it is
damaged), builds or loads the runtime, and wraps it in a ``FixedSizeImageModel`` so frames of
another padded size are letter-padded or refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from masqclip.checkpoint import fingerprint_image_path
from masqclip.export.canvas import FixedSizeImageModel, validate_input_size
from masqclip.export.engine_cache import DEFAULT_CACHE_DIR, digest_path, verify_digests
from masqclip.export.errors import DamagedFileError, ExportError
from masqclip.export.onnx import (
    EXPORT_VERSION,
    check_export_digests,
    check_onnx_metadata,
    export_input_size,
    export_onnx,
)
from masqclip.modeling.masqclip import ImageModel, MasQCLIP
from masqclip.modeling.precision import check_precision

logger = logging.getLogger('masqclip')

EXPORT_BACKENDS = ('onnxruntime', 'tensorrt')


def ensure_onnx(
    network: MasQCLIP | None,
    config: dict,
    input_size: tuple[int, int] | None,
    precision: str = 'fp32',
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    onnx_path: str | Path | None = None,
    model_name: str = '',
    checkpoint: str | Path | None = None,
) -> Path:
    """An ONNX export of ``network``'s image path at this size and precision, made if needed.

    :param network: the model; None uses ``onnx_path`` as it is (no weights check).
    :param input_size: (Hp, Wp); None takes the size stored in an existing ``onnx_path``.
    :param cache_dir: where exports are kept when ``onnx_path`` is None, named after the model,
        size, precision, export version and weights, so other weights or an older graph
        never pick up a stale file; a damaged one is exported again, with a warning.
    :param onnx_path: a file to use (checked against the network and its recorded digests)
        or to export to.
    :return: the export's path.
    :raises ExportError: for an ``onnx_path`` made from other weights, size or precision, or
        a missing one without a network to export it from.
    :raises DamagedFileError: for an ``onnx_path`` whose files differ from their digests.
    """
    if input_size is not None:
        input_size = validate_input_size(config, input_size)
    weights = fingerprint_image_path(network) if network is not None else None
    if onnx_path is None:
        if network is None or input_size is None:
            raise ExportError(
                'without a network and an input size there is nothing to export;'
                ' give the path of an exported ONNX file'
            )
        height, width = input_size
        onnx_path = (
            Path(cache_dir).expanduser()
            / f'{model_name or "masqclip"}-{height}x{width}-{precision}-v{EXPORT_VERSION}-'
            f'{weights}.onnx'
        )
        reusable = _intact_cache_entry(onnx_path)
    else:
        onnx_path = Path(onnx_path)
        reusable = onnx_path.is_file()
        if reusable:
            check_export_digests(onnx_path)  # the user's file: refused if damaged, not replaced
    if reusable:
        check_onnx_metadata(onnx_path, input_size, precision, weights)
        logger.info('using the ONNX export %s', onnx_path)
        return onnx_path
    if network is None or input_size is None:
        raise ExportError(
            f'ONNX file {onnx_path} not found; export it with '
            '`masqclip export onnx` or give the model weights to export from'
        )
    return export_onnx(
        network,
        config,
        onnx_path,
        input_size,
        precision,
        model_name=model_name,
        checkpoint=checkpoint,
    )


def _intact_cache_entry(path: Path) -> bool:
    """Whether the export cache holds an intact export at ``path``. A damaged one (its files
    differ from their recorded digests, or these were never written) is reported, to be
    exported again over it."""
    if not path.is_file() and not digest_path(path).is_file():
        return False  # not exported yet
    try:
        verify_digests(path)
    except DamagedFileError as error:
        logger.warning('damaged ONNX export in the cache, exporting it again: %s', error)
        return False
    return True


def build_image_model(
    network: MasQCLIP | None,
    config: dict,
    backend: str,
    device: str = 'cpu',
    precision: str = 'fp32',
    input_size: tuple[int, int] | None = None,
    engine_cache_dir: str | Path = DEFAULT_CACHE_DIR,
    onnx_path: str | Path | None = None,
    model_name: str = '',
    checkpoint: str | Path | None = None,
    providers: Sequence[str] | None = None,
    on_mismatch: str = 'pad',
    warmup: int = 3,
) -> ImageModel:
    """The image path on an exported backend, as an ImageModel (torch tensors in and out).

    :param network: the model to export from (and whose weights an existing export must
        match); None to run a given ``onnx_path`` as it is.
    :param config: the architecture config.
    :param backend: 'onnxruntime' or 'tensorrt' (the torch backend needs no export).
    :param device: 'cpu' (onnxruntime only) or a CUDA device.
    :param precision: 'fp32' or 'fp16' (see ``check_precision``).
    :param input_size: (Hp, Wp) padded network input, see ``network_input_size``; None takes
        the size of an existing ``onnx_path``.
    :param engine_cache_dir: exports, TensorRT engines and timing caches live here.
    :param onnx_path: use (or write) this export instead of one in the cache folder.
    :param model_name: names cached exports and goes in their metadata.
    :param checkpoint: the weights' source file, recorded in the export's metadata.
    :param providers: onnxruntime execution providers (None: the device's default).
    :param on_mismatch: 'pad' or 'error', for frames of another padded size.
    :param warmup: TensorRT runs before serving.
    :return: a callable images [1, 3, H, W] -> (mask logits, objectness, mask embeddings).
    :raises BackendUnavailableError: when the runtime or the GPU it needs is missing.
    :raises ExportError: when an export cannot be made or does not fit.
    :raises DamagedFileError: for an ``onnx_path`` whose files differ from their digests
        (damaged cached files are rebuilt instead).
    """
    if backend not in EXPORT_BACKENDS:
        raise ValueError(
            f'backend must be one of {EXPORT_BACKENDS} here, got {backend!r}; '
            'the torch backend runs the network itself'
        )
    check_precision(precision, device, backend)
    if backend == 'tensorrt':
        from masqclip.export.tensorrt import import_tensorrt, require_cuda_device

        # Before a possibly long export: fail at once where TensorRT cannot run.
        require_cuda_device(device)
        import_tensorrt()
    path = ensure_onnx(
        network, config, input_size, precision, engine_cache_dir, onnx_path, model_name, checkpoint
    )
    size = export_input_size(check_onnx_metadata(path, precision=precision))
    if backend == 'onnxruntime':
        from masqclip.export.onnxruntime_backend import OnnxRuntimeImageModel

        runtime = OnnxRuntimeImageModel(path, device, providers, engine_cache_dir=engine_cache_dir)
    else:
        from masqclip.export.tensorrt import TensorRTImageModel, build_or_load_engine

        engine = build_or_load_engine(path, precision, device, engine_cache_dir)
        runtime = TensorRTImageModel(engine, device, warmup=warmup)
    return FixedSizeImageModel(runtime, size, on_mismatch)
