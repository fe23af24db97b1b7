"""GPU throughput of the image path at a camera resolution: torch fp32, torch fp16 (autocast,
as the predictor runs it) and TensorRT fp16, with GPU memory; for a machine with a GPU.

    python -m masqclip.export.bench_gpu --json docs/benchmarks/gpu_<gpu>.json

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

from masqclip.export.command import parse_frame_size
from masqclip.export.engine_cache import DEFAULT_CACHE_DIR
from masqclip.export.image_model import build_image_model
from masqclip.factory import build_model
from masqclip.inference.transforms import plan_resize

MIB = 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='masqclip_r50_vitl14_336')
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
    args = parser.parse_args(argv)
    figures = measure(args.model, args.frame_size, args.device, args.runs, args.engine_cache_dir)
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def measure(
    model: str, frame_size: tuple[int, int], device: str, runs: int, engine_cache_dir: str
) -> dict[str, object]:
    """FPS and memory per backend; see the module docstring."""
    device = torch.device(device)
    torch.manual_seed(0)
    network, config = build_model(model)
    network = network.to(device).eval()
    # The frame's content fills the network input up to its resized size; the rest is padding.
    pre = config['preprocess']
    plan = plan_resize(*frame_size, pre['min_size'], pre['max_size'], pre['size_divisibility'])
    input_size = plan.padded
    inputs = (
        torch.rand(1, 3, *input_size, device=device) * 255,
        torch.tensor([plan.resized], device=device),
    )
    weights_mib = sum(p.numel() * p.element_size() for p in network.parameters()) / MIB

    def torch_fp16(images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast('cuda', dtype=torch.float16):
            return network(images, sizes)

    results: dict[str, dict[str, float]] = {
        'torch_fp32': _run(network, inputs, runs),
        'torch_fp16': _run(torch_fp16, inputs, runs),
    }
    free_before = torch.cuda.mem_get_info(device)[0]
    engine = build_image_model(
        network,
        config,
        'tensorrt',
        str(device),
        'fp16',
        input_size,
        engine_cache_dir=engine_cache_dir,
        model_name=model,
    )
    results['tensorrt_fp16'] = _run(engine, inputs, runs)
    results['tensorrt_fp16']['engine_device_mib'] = (
        free_before - torch.cuda.mem_get_info(device)[0]
    ) / MIB
    with torch.inference_mode():
        reference = network(*inputs)
        fast = engine(*inputs)
    masks_ref, masks_fast = reference[0] > 0, fast[0].float() > 0
    union = (masks_ref | masks_fast).flatten(2).sum(-1).clamp(min=1)
    iou = ((masks_ref & masks_fast).flatten(2).sum(-1) / union).mean()
    fp32_fps = results['torch_fp32']['fps']
    return {
        'model': model,
        'frame': f'{frame_size[1]}x{frame_size[0]}',
        'input_size': list(input_size),
        'gpu': torch.cuda.get_device_name(device),
        'weights_fp32_mib': weights_mib,
        'backends': results,
        'torch_fp16_vs_torch_fp32_speedup': results['torch_fp16']['fps'] / fp32_fps,
        'tensorrt_fp16_vs_torch_fp32_speedup': results['tensorrt_fp16']['fps'] / fp32_fps,
        'tensorrt_fp16_mask_iou_vs_torch_fp32': float(iou),
        'environment': {
            'torch': torch.__version__,
            'cuda': torch.version.cuda,
            'python': platform.python_version(),
        },
    }


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
