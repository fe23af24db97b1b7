"""Helpers for the benchmarks: medians of interleaved runs, image-path inputs, and what the
machine could do (GEMM rates, FLOPs, profiles) to measure the image path against.

On a shared machine the load changes from second to second; taking turns between the things
compared makes that noise hit each alike, so their ratio is what a benchmark should report.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from masqclip.inference.transforms import PreprocessCfg

GEMM_SIZE = 4096


def timer(function: Callable[..., object], *args: object) -> Callable[[], float]:
    """A measurement: calling it runs ``function(*args)`` once and returns the seconds taken."""

    def once() -> float:
        start = time.perf_counter()
        function(*args)
        return time.perf_counter() - start

    return once


def interleaved_medians(measurements: list[Callable[[], float]], repeats: int) -> list[float]:
    """Median seconds of each measurement over ``repeats`` rounds, taking turns each round."""
    samples: list[list[float]] = [[] for _ in measurements]
    for _ in range(repeats):
        for measure, times in zip(measurements, samples, strict=True):
            times.append(measure())
    return [statistics.median(times) for times in samples]


def frame_inputs(
    config: dict, frame_size: tuple[int, int], device: str | torch.device = 'cpu', seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """An image-path input as the predictor makes it for a camera frame of ``frame_size``
    (H, W): the network-input canvas with random content and black padding, and the content's
    size (images [1, 3, Hp, Wp], image sizes [1, 2])."""
    plan = PreprocessCfg.of(config).plan(*frame_size)
    (h, w), generator = plan.resized, torch.Generator().manual_seed(seed)
    images = torch.zeros(1, 3, *plan.padded)
    images[..., :h, :w] = torch.rand(1, 3, h, w, generator=generator) * 255
    return images.to(device), torch.tensor([plan.resized], device=device)


def gemm(dtype: torch.dtype, size: int = GEMM_SIZE) -> tuple[Callable[[], float], int]:
    """A measurement of one ``size`` x ``size`` matrix product in ``dtype``, and its FLOPs:
    the rate torch reaches on this machine's matrix units, to measure models against."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    return timer(torch.matmul, a, b), 2 * size**3


def image_path_flops(network: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """FLOPs of one run of a ``MasQCLIP`` image path, as torch's FlopCounterMode counts them
    (matrix products, convolutions, attention; elementwise work and sampling count 0).

    :return: ``proposer``, ``mask_clip`` (the mask-token CLIP) and ``total``.
    """
    # FlopCounterMode attributes FLOPs to modules through autograd hooks, which fail under
    # inference_mode and no_grad; with the weights frozen no graph is kept either.
    with _weights_frozen(network), FlopCounterMode(display=False) as counter:
        network(*inputs)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(network).__name__
    return {
        'proposer': per_module.get(f'{root}.proposer', 0),
        'mask_clip': per_module.get(f'{root}.mask_clip', 0),
        'total': counter.get_total_flops(),
    }


@contextmanager
def _weights_frozen(module: torch.nn.Module) -> Iterator[None]:
    trainable = [p for p in module.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def top_operators(
    function: Callable[..., object], *args: object, limit: int = 12
) -> list[dict[str, object]]:
    """The operators that took the most self time in one run of ``function(*args)``.

    :return: up to ``limit`` rows, most expensive first: ``operator`` (aten name), ``self_s``
        (seconds in the operator itself, not in operators it called), ``share`` (of the
        run's total self time), ``calls``.
    """
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        function(*args)
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(event.self_cpu_time_total for event in events)
    return [
        {
            'operator': event.key,
            'self_s': event.self_cpu_time_total / 1e6,
            'share': event.self_cpu_time_total / total_us,
            'calls': event.count,
        }
        for event in events[:limit]
    ]


def image_path_rates(
    seconds: dict[str, float], flops: int, gemm_gflops: dict[str, float]
) -> list[dict[str, object]]:
    """Each image path's rate as a share of this machine's GEMM rate at its own precision.

    :param seconds: per run, keyed ``'<backend> <precision>'`` (e.g. ``'torch fp32'``);
        ``'torch fp32'`` is the reference for the speedups.
    :param flops: of one image-path run.
    :param gemm_gflops: GFLOP/s per precision (``'fp32'``, and ``'bf16'`` where measured).
    :return: one row per image path: ``backend``, ``precision``, ``seconds``, ``gflops``,
        ``share`` (of ``gemm_gflops[precision]``), ``speedup_vs_torch_fp32``.
    """
    rows = []
    for name, run_s in seconds.items():
        backend, precision = name.split()
        gflops = flops / run_s / 1e9
        rows.append(
            {
                'backend': backend,
                'precision': precision,
                'seconds': run_s,
                'gflops': gflops,
                'share': gflops / gemm_gflops[precision],
                'speedup_vs_torch_fp32': seconds['torch fp32'] / run_s,
            }
        )
    return rows


def efficiency_table(efficiency: dict) -> str:
    """The ``efficiency`` figures of ``measure_efficiency`` as text for a terminal."""
    flops = {name: count / 1e9 for name, count in efficiency['image_path_flops'].items()}
    gemm_gflops = efficiency['gemm_gflops']
    units = ', '.join(efficiency['bf16_units']) or 'none (bf16 not measured)'
    size = efficiency['gemm_size']
    memory = 'kept for reuse' if efficiency['freed_memory_kept'] else 'returned (libc default)'
    lines = [
        f'{efficiency["cpu"]}, {efficiency["threads"]} threads, bf16 units: {units}, '
        f'freed CPU memory: {memory}',
        f'image path at {efficiency["input_size"]}: {flops["total"]:.1f} GFLOP '
        f'(proposer {flops["proposer"]:.1f}, mask-token CLIP {flops["mask_clip"]:.1f})',
        '',
        f'{"what":<30} {"s/frame":>8} {"GFLOP/s":>8}  share',
    ]
    for precision, rate in gemm_gflops.items():
        what = f'{precision} GEMM {size}x{size}'
        lines.append(f'{what:<30} {"":>8} {rate:8.1f}  {rate / gemm_gflops["fp32"]:.2f}x fp32')
    for row in efficiency['image_paths']:
        what = f'image path, {row["backend"]} {row["precision"]}'
        share = f'{row["share"]:.0%} of {row["precision"]} GEMM'
        speedup = f'{row["speedup_vs_torch_fp32"]:.2f}x torch fp32'
        lines.append(f'{what:<30} {row["seconds"]:8.3f} {row["gflops"]:8.1f}  {share}, {speedup}')
    for precision, seconds in efficiency.get('inductor_compile_s', {}).items():
        lines.append(f'inductor {precision}: compiled in {seconds:.1f} s (eager serves meanwhile)')
    lines += ['', 'top operators by self time, torch fp32 image path (one profiled run):']
    for op in efficiency['top_operators']:
        calls = f'{op["calls"]} calls'
        lines.append(f'  {op["operator"]:<50} {op["self_s"]:7.3f} s {op["share"]:6.1%}  {calls}')
    return '\n'.join(lines)
