"""GPU throughput of the image path at a camera resolution: torch fp32, torch fp16 (autocast,
as the predictor runs it) and TensorRT fp16, with GPU memory; for a machine with a GPU.

    python -m masqclip.tools.bench_gpu --model masqclip_r50_vitb16 masqclip_r50_vitl14_336 \\
        --markdown docs/benchmarks/gpu_<gpu>.md

Random weights are fine for timing. FPS counts image-path runs on a frame already on the GPU
(the part the backends change); memory is the torch allocator's peak during the runs and, for
TensorRT, the device memory its engine and context took (from ``cudaMemGetInfo``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from masqclip.export.backends import build_image_model
from masqclip.export.engine_cache import DEFAULT_CACHE_DIR
from masqclip.export.errors import BackendUnavailableError
from masqclip.factory import build_model
from masqclip.tools.benchmarking import frame_inputs
from masqclip.tools.export import parse_frame_size

MIB = 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', nargs='+', default=['masqclip_r50_vitl14_336'])
    parser.add_argument(
        '--frame-size',
        type=parse_frame_size,
        default=(480, 640),
        help='WIDTHxHEIGHT (default: 640x480)',
    )
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--runs', type=int, default=50, help='timed runs per backend')
    parser.add_argument('--engine-cache-dir', default=str(DEFAULT_CACHE_DIR))
    parser.add_argument('--json', help='also write the figures to this file')
    parser.add_argument('--markdown', help='also write them as a markdown report to this file')
    args = parser.parse_args(argv)
    figures = [
        measure(model, args.frame_size, args.device, args.runs, args.engine_cache_dir)
        for model in args.model
    ]
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if args.markdown:
        command = 'python -m masqclip.tools.bench_gpu ' + ' '.join(
            sys.argv[1:] if argv is None else argv
        )
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown_report(figures, command))
    return 0


def markdown_report(figures: list[dict[str, object]], command: str) -> str:
    """The figures of ``measure`` runs as a markdown page, with the command that made them."""
    first = figures[0]
    lines = [
        f'# The image path on {first["gpu"]}',
        '',
        f'Frame {first["frame"]}, random weights, fp32 weights in memory; torch '
        f'{first["environment"]["torch"]}, CUDA {first["environment"]["cuda"]}.',
        '',
        '| model | input | backend | FPS | latency (ms) | peak allocated (MiB) |',
        '|---|---|---|---|---|---|',
    ]
    for run in figures:
        size = 'x'.join(str(side) for side in run['input_size'])
        for backend, numbers in run['backends'].items():
            lines.append(
                f'| {run["model"]} | {size} | {backend} | {numbers["fps"]:.1f} | '
                f'{1000 * numbers["latency_s"]:.1f} | {numbers["peak_allocated_mib"]:.0f} |'
            )
    lines += ['', '| model | TensorRT fp16 vs torch fp32 | torch fp16 vs fp32 | fp16 mask IoU |']
    lines.append('|---|---|---|---|')
    for run in figures:
        if 'tensorrt_unavailable' in run:
            tensorrt = iou = f'not measured: {run["tensorrt_unavailable"]}'
        else:
            tensorrt = f'{run["tensorrt_fp16_vs_torch_fp32_speedup"]:.2f}x'
            iou = f'{run["tensorrt_fp16_mask_iou_vs_torch_fp32"]:.3f}'
        lines.append(
            f'| {run["model"]} | {tensorrt} | {run["torch_fp16_vs_torch_fp32_speedup"]:.2f}x | '
            f'{iou} |'
        )
    lines += ['', 'Command:', '', '```', command, '```', '']
    return '\n'.join(lines)


def measure(
    model: str, frame_size: tuple[int, int], device: str, runs: int, engine_cache_dir: str
) -> dict[str, object]:
    """FPS and memory per backend; see the module docstring."""
    device = torch.device(device)
    torch.manual_seed(0)
    network, config = build_model(model)
    network = network.to(device).eval()
    inputs = frame_inputs(config, frame_size, device)
    input_size = tuple(inputs[0].shape[-2:])
    weights_mib = sum(p.numel() * p.element_size() for p in network.parameters()) / MIB

    def torch_fp16(images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast('cuda', dtype=torch.float16):
            return network(images, sizes)

    results: dict[str, dict[str, float]] = {
        'torch_fp32': _run(network, inputs, runs),
        'torch_fp16': _run(torch_fp16, inputs, runs),
    }
    fp32_fps = results['torch_fp32']['fps']
    figures = {
        'model': model,
        'frame': f'{frame_size[1]}x{frame_size[0]}',
        'input_size': list(input_size),
        'gpu': torch.cuda.get_device_name(device),
        'weights_fp32_mib': weights_mib,
        'backends': results,
        'torch_fp16_vs_torch_fp32_speedup': results['torch_fp16']['fps'] / fp32_fps,
        'environment': {
            'torch': torch.__version__,
            'cuda': torch.version.cuda,
            'python': platform.python_version(),
        },
    }
    try:
        tensorrt = _measure_tensorrt(network, config, model, inputs, runs, engine_cache_dir)
    except BackendUnavailableError as error:  # the torch figures still stand
        figures['tensorrt_unavailable'] = str(error)
        return figures
    results['tensorrt_fp16'], iou = tensorrt
    figures['tensorrt_fp16_vs_torch_fp32_speedup'] = results['tensorrt_fp16']['fps'] / fp32_fps
    figures['tensorrt_fp16_mask_iou_vs_torch_fp32'] = iou
    return figures


def _measure_tensorrt(
    network: torch.nn.Module,
    config: dict,
    model: str,
    inputs: tuple[torch.Tensor, torch.Tensor],
    runs: int,
    engine_cache_dir: str,
) -> tuple[dict[str, float], float]:
    """TensorRT fp16 timings (with the engine's build time and device memory) and the mean
    mask IoU of its proposals against torch fp32."""
    device = inputs[0].device
    free_before = torch.cuda.mem_get_info(device)[0]
    start = time.perf_counter()
    engine = build_image_model(
        network,
        config,
        'tensorrt',
        str(device),
        'fp16',
        tuple(inputs[0].shape[-2:]),
        engine_cache_dir=engine_cache_dir,
        model_name=model,
    )
    build_s = time.perf_counter() - start
    timings = _run(engine, inputs, runs)
    timings['engine_device_mib'] = (free_before - torch.cuda.mem_get_info(device)[0]) / MIB
    timings['export_and_build_s'] = build_s
    with torch.inference_mode():
        reference = network(*inputs)
        fast = engine(*inputs)
    masks_ref, masks_fast = reference[0] > 0, fast[0].float() > 0
    union = (masks_ref | masks_fast).flatten(2).sum(-1).clamp(min=1)
    iou = ((masks_ref & masks_fast).flatten(2).sum(-1) / union).mean()
    return timings, float(iou)


def _run(
    image_model: Callable, inputs: tuple[torch.Tensor, torch.Tensor], runs: int
) -> dict[str, float]:
    device = inputs[0].device
    with torch.inference_mode():
        for _ in range(5):
            image_model(*inputs)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(runs):
            image_model(*inputs)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return {
        'fps': runs / seconds,
        'latency_s': seconds / runs,
        'peak_allocated_mib': torch.cuda.max_memory_allocated(device) / MIB,
    }


if __name__ == '__main__':
    sys.exit(main())
