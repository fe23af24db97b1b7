"""ONNX export of MasQCLIP's vocabulary-free image path (proposer + CLIP with mask tokens).

The graph takes ``images`` (float32 [1, 3, Hp, Wp], RGB 0-255, zero-padded) and
``image_sizes`` (int64 [1, 2], the (h, w) of the content before padding) and returns
``mask_logits``, ``objectness`` and ``mask_embeddings`` (float32, as ``MasQCLIP.forward``). Text
stays outside, so a new vocabulary never needs a new export. The input size is fixed per file:
the proposer's feature-map sizes are Python ints when the graph is traced.

No ``exportable`` switch is needed: every layer of the image path exports as written (deformable
attention is ``F.grid_sample``; ``F.scaled_dot_product_attention`` is decomposed by the
exporter).

Files are written with their weights in a ``<name>.data`` file beside the graph, so reading the
metadata or hashing the graph never parses a gigabyte of protobuf, and models over protobuf's
2 GiB limit export the same way. Metadata (``metadata_props``, keys prefixed ``masqclip.``):
format, model, input_size (``HxW``), precision, opset, weights (fingerprint of the image path's
weights), checkpoint_sha256 (of the source checkpoint file, when there is one) and the
architecture config as JSON.

Each export records the SHA-256 of its graph and weights file in ``<name>.sha256`` (see
``engine_cache``), moved into place last, so a damaged or half-written export is detected.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from masqclip.checkpoint import fingerprint_image_path
from masqclip.export.canvas import validate_input_size
from masqclip.export.engine_cache import (
    digest_path,
    record_digests,
    recorded_digests,
    sha256_file,
    verify_digests,
)
from masqclip.export.errors import DamagedFileError, ExportError, ForeignExportError
from masqclip.modeling.masqclip import MasQCLIP
from masqclip.modeling.precision import EXPORT_PRECISIONS

logger = logging.getLogger('masqclip')

INPUT_NAMES = ('images', 'image_sizes')
OUTPUT_NAMES = ('mask_logits', 'objectness', 'mask_embeddings')
# torch's exporter has no implementations below opset 18 (asking for 17 yields 18 anyway).
DEFAULT_OPSET = 18
# Version 2: the proposer sees its padding as the pixel-mean colour (the image_sizes input);
# version-1 files and the engines built from them are never reused.
EXPORT_VERSION = 2
FORMAT = f'masqclip_ros.image_path/{EXPORT_VERSION}'
METADATA_PREFIX = 'masqclip.'


class _HalfImagePath(nn.Module):
    """The image path in float16 between float32 inputs and outputs.

    TensorRT 11 dropped the builder's fp16 flag (weak typing): its precision comes from the
    graph's own types, so an fp16 engine is built from an fp16 graph. Keeping float32 at the
    boundary leaves the ImageModel contract, and the input copy, unchanged.
    """

    def __init__(self, network: MasQCLIP) -> None:
        super().__init__()
        self.network = copy.deepcopy(network).half()

    def forward(
        self, images: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = self.network(images.half(), image_sizes)
        return tuple(t.float() for t in outputs)


def onnx_data_path(path: str | Path) -> Path:
    """Where the weights of an exported graph live (beside it, ``<name>.data``)."""
    path = Path(path)
    return path.with_name(path.name + '.data')


def export_digests(path: Path) -> dict[str, str]:
    """The SHA-256 of an export's files: the graph and its weights file (when it has one)."""
    return {
        part.name: sha256_file(part) for part in (path, onnx_data_path(path)) if part.is_file()
    }


def hash_onnx(path: str | Path) -> str:
    """Hex SHA-256 over an exported graph and its weights file: what an engine is built from.

    Taken from the digests recorded at export when there are some (``check_export_digests``
    verifies them), so finding a cached engine hashes no gigabyte of weights a second time.
    """
    path = Path(path)
    digests = recorded_digests(path) or export_digests(path)
    combined = hashlib.sha256()
    for name in sorted(digests):
        combined.update(name.encode())
        combined.update(digests[name].encode())
    return combined.hexdigest()


def check_export_digests(path: str | Path) -> None:
    """Check a given export against the digests recorded when it was written, if any (a file
    from elsewhere may have none: its metadata is all there is to check).

    :raises DamagedFileError: when its files differ from the record; the file is the user's,
        so it is refused, never replaced.
    """
    path = Path(path)
    if not digest_path(path).is_file():
        return
    try:
        verify_digests(path)
    except DamagedFileError as error:
        raise DamagedFileError(
            f'refusing the ONNX export {path}: {error}. Export it again (`masqclip export '
            'onnx`) or restore it; delete its .sha256 file only if you trust it as it is'
        ) from error


def export_onnx(
    network: MasQCLIP,
    config: dict,
    path: str | Path,
    input_size: tuple[int, int],
    precision: str = 'fp32',
    opset: int = DEFAULT_OPSET,
    model_name: str = '',
    checkpoint: str | Path | None = None,
) -> Path:
    """Export the image path of ``network`` to ONNX at a fixed input size and check it.

    :param network: the model (its text tower is not exported); any device.
    :param config: its architecture config (stored in the metadata).
    :param path: the ``.onnx`` file to write; ``<path>.data`` holds the weights.
    :param input_size: (Hp, Wp), the padded network input (see ``network_input_size``).
    :param precision: 'fp32', or 'fp16' (float16 inside, float32 inputs and outputs).
    :param opset: ONNX opset (18 or newer).
    :param model_name: the architecture's name, for the metadata.
    :param checkpoint: the checkpoint the weights came from; its SHA-256 goes in the metadata.
    :return: ``path``.
    :raises ExportError: when the exporter or the ONNX checker fails.
    """
    import onnx

    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f'precision must be one of {EXPORT_PRECISIONS}, got {precision!r}')
    if opset < DEFAULT_OPSET:
        raise ValueError(
            f'opset must be >= {DEFAULT_OPSET} (torch exports nothing older), got {opset}'
        )
    height, width = validate_input_size(config, input_size)
    path = Path(path)
    metadata = {
        'format': FORMAT,
        'model': model_name,
        'input_size': f'{height}x{width}',
        'precision': precision,
        'opset': str(opset),
        'weights': fingerprint_image_path(network),
        'checkpoint_sha256': sha256_file(checkpoint) if checkpoint else '',
        'config': json.dumps(config, sort_keys=True),
    }
    was_training = network.training
    network.eval()
    module = _HalfImagePath(network).eval() if precision == 'fp16' else network
    device = next(network.parameters()).device
    example = (
        torch.zeros(1, 3, height, width, device=device),
        torch.tensor([[height, width]], device=device),
    )
    logger.info(
        'exporting the %s image path at %dx%d (%s, opset %d) to %s',
        model_name or 'model',
        height,
        width,
        precision,
        opset,
        path,
    )
    start = time.perf_counter()
    try:
        program = torch.onnx.export(
            module,
            example,
            None,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    except Exception as error:  # the exporter raises many types; say which model failed
        raise ExportError(
            f'torch.onnx.export failed for the image path at {height}x{width}: '
            f'{type(error).__name__}: {str(error)[:500]}'
        ) from error
    finally:
        network.train(was_training)
    program.model.metadata_props.update(
        {METADATA_PREFIX + key: value for key, value in metadata.items()}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written and hashed in a scratch folder, then moved into place.
    with tempfile.TemporaryDirectory(dir=path.parent, prefix='.export-') as scratch:
        scratch_path = Path(scratch) / path.name
        program.save(str(scratch_path), external_data=True)
        try:
            onnx.checker.check_model(str(scratch_path), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
            raise ExportError(f'the exported graph fails the ONNX checker: {error}') from error
        record_digests(scratch_path, export_digests(scratch_path))
        _move_export(scratch_path, path)
    logger.info(
        'exported %s (%.0f MB) in %.1f s',
        path,
        (path.stat().st_size + _size(onnx_data_path(path))) / 1e6,
        time.perf_counter() - start,
    )
    return path


def _move_export(source: Path, path: Path) -> None:
    """Move an export's files from ``source`` (of the same name: the graph names its weights
    file) to ``path``: the old digest out first and the new one in last, so an export
    interrupted in between reads as damaged, never as complete."""
    digest_path(path).unlink(missing_ok=True)
    for name in (onnx_data_path(path).name, path.name, digest_path(path).name):
        if (source.parent / name).is_file():
            os.replace(source.parent / name, path.parent / name)


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``masqclip.`` metadata of an exported graph, prefix removed.

    :raises ExportError: when the file is missing.
    :raises ForeignExportError: when it is not an ONNX model.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f'ONNX file {path} not found; export it with `masqclip export onnx`')
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError and others for a foreign file
        raise ForeignExportError(f'{path} is not a readable ONNX model: {error}') from error
    return {
        prop.key[len(METADATA_PREFIX) :]: prop.value
        for prop in model.metadata_props
        if prop.key.startswith(METADATA_PREFIX)
    }


def check_onnx_metadata(
    path: str | Path,
    input_size: tuple[int, int] | None = None,
    precision: str | None = None,
    weights: str | None = None,
) -> dict[str, str]:
    """Read an export's metadata and check it was made for this input size, precision, weights.

    :param weights: ``fingerprint_image_path`` of the network the caller will pair it with;
        None skips the check (an engine-only deployment without the torch weights).
    :return: the metadata.
    :raises ForeignExportError: for a file that is not an export of this version.
    :raises ExportError: naming every field that differs and what to do.
    """
    metadata = read_onnx_metadata(path)
    if metadata.get('format') != FORMAT:
        raise ForeignExportError(
            f'{path} was not written by `masqclip export onnx` (format '
            f'{metadata.get("format")!r}); export the model again'
        )
    expected = {'precision': precision, 'weights': weights}
    if input_size is not None:
        expected['input_size'] = f'{input_size[0]}x{input_size[1]}'
    wrong = [
        f'{key} is {metadata.get(key)!r}, needed {value!r}'
        for key, value in expected.items()
        if value is not None and metadata.get(key) != value
    ]
    if wrong:
        raise ExportError(
            f'{path} does not fit this model: {"; ".join(wrong)}. Export again '
            '(or give another ONNX path, or none to use the export cache)'
        )
    return metadata


def export_input_size(metadata: dict[str, str]) -> tuple[int, int]:
    """The (Hp, Wp) stored in an export's metadata."""
    height, width = metadata['input_size'].split('x')
    return int(height), int(width)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0
