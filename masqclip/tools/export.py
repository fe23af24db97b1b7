"""Export MasQCLIP's vocabulary-free image path: ``onnx`` writes the graph at a fixed input
size; ``tensorrt`` builds (or finds in the cache) the engine for this GPU, then warms it up and
times it unless ``--build-only``. The input size is the padded network input of a camera frame
of ``--frame-size`` (the predictor's resize rule), so deploy with frames of that size."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from masqclip.export.backends import ensure_onnx
from masqclip.export.canvas import network_input_size
from masqclip.export.engine_cache import DEFAULT_CACHE_DIR
from masqclip.export.onnx import DEFAULT_OPSET, export_input_size, export_onnx, read_onnx_metadata
from masqclip.modeling.precision import EXPORT_PRECISIONS
from masqclip.tools.common import add_model_arguments


def parse_frame_size(text: str) -> tuple[int, int]:
    """'640x480' (width x height) -> (480, 640) as (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}'
        ) from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f'frame size must be positive, got {text!r}')
    return height, width


def add_arguments(parser: argparse.ArgumentParser) -> None:
    formats = parser.add_subparsers(dest='format', required=True)
    onnx = formats.add_parser(
        'onnx',
        help='write the image path as ONNX',
        description='Write the image path as ONNX (graph + .data file).',
    )
    _add_common(onnx)
    onnx.add_argument(
        '--out',
        help='the .onnx file to write (default: in the export cache, '
        'named after model, size, precision and weights)',
    )
    onnx.add_argument(
        '--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset (default: %(default)s)'
    )
    trt = formats.add_parser(
        'tensorrt',
        help='build the TensorRT engine into the cache',
        description='Build (or reuse) the TensorRT engine for this GPU.',
    )
    _add_common(trt)
    trt.set_defaults(device='cuda')
    trt.add_argument(
        '--onnx',
        help='build from this export (default: export the model first, '
        'or reuse its export from the cache)',
    )
    trt.add_argument(
        '--build-only',
        action='store_true',
        help='build or find the engine and exit (no warm-up or timing)',
    )
    trt.add_argument('--rebuild', action='store_true', help='build even if one is cached')
    trt.add_argument('--workspace-gib', type=float, help="TensorRT's workspace limit")
    trt.add_argument('--runs', type=int, default=20, help='timed runs without --build-only')


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, EXPORT_PRECISIONS)
    parser.add_argument(
        '--frame-size',
        type=parse_frame_size,
        default=(480, 640),
        help='camera frames, WIDTHxHEIGHT (default: 640x480)',
    )
    parser.add_argument(
        '--engine-cache-dir',
        default=str(DEFAULT_CACHE_DIR),
        help='exports, engines and timing caches (default: %(default)s)',
    )


def run(args: argparse.Namespace) -> int:
    if args.format == 'onnx':
        return _run_onnx(args)
    return _run_tensorrt(args)


def _export(args: argparse.Namespace, out: str | None, opset: int = DEFAULT_OPSET) -> Path:
    from masqclip.factory import build_model, model_name, resolve_checkpoint

    checkpoint = resolve_checkpoint(args.model, args.checkpoint)  # the file the export records
    name = model_name(args.model, checkpoint)
    network, config = build_model(
        args.model, checkpoint=checkpoint, clip_weights=args.clip_weights
    )
    network = network.to(args.device if args.device.startswith('cuda') else 'cpu')
    input_size = network_input_size(config, *args.frame_size)
    if out is not None:
        return export_onnx(
            network,
            config,
            out,
            input_size,
            args.precision,
            opset,
            name,
            checkpoint,
        )
    return ensure_onnx(
        network,
        config,
        input_size,
        args.precision,
        args.engine_cache_dir,
        model_name=name,
        checkpoint=checkpoint,
    )


def _run_onnx(args: argparse.Namespace) -> int:
    path = _export(args, args.out, args.opset)
    metadata = read_onnx_metadata(path)
    height, width = export_input_size(metadata)
    print(
        f'{path}: input images [1, 3, {height}, {width}] for {args.frame_size[1]}x'
        f'{args.frame_size[0]} frames, {metadata["precision"]}, opset {metadata["opset"]}'
    )
    return 0


def _run_tensorrt(args: argparse.Namespace) -> int:
    from masqclip.export.tensorrt import (
        TensorRTImageModel,
        build_or_load_engine,
        import_tensorrt,
        require_cuda_device,
    )

    # Fail before the export where TensorRT cannot run.
    require_cuda_device(args.device)
    import_tensorrt()
    path = Path(args.onnx) if args.onnx else _export(args, None)
    workspace = int(args.workspace_gib * 2**30) if args.workspace_gib else None
    engine = build_or_load_engine(
        path,
        args.precision,
        args.device,
        args.engine_cache_dir,
        rebuild=args.rebuild,
        workspace_bytes=workspace,
    )
    print(f'engine: {engine}')
    if args.build_only:
        return 0
    model = TensorRTImageModel(engine, args.device)
    images = torch.rand(model.input_shape, device=model.device) * 255
    sizes = torch.tensor([model.input_size], device=model.device)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        model(images, sizes)
        torch.cuda.synchronize(model.device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(
        json.dumps(
            {
                'engine': str(engine),
                'input_shape': list(model.input_shape),
                'median_latency_s': median,
                'fps': 1 / median,
            },
            indent=1,
        )
    )
    return 0
