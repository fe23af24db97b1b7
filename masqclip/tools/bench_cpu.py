"""CPU latency of the image path: onnxruntime against torch eager (and, on request, the
inductor-compiled torch path), on the same weights, and each as a share of what this
machine's matrix units reach.

Random weights are fine for timing. Every side gets the same thread count and they take turns,
so a busy machine slows all alike; the ratios are the figures to read.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from masqclip.cpu_memory import freed_memory_kept
from masqclip.export.inductor import InductorImageModel
from masqclip.export.onnx import export_onnx
from masqclip.export.onnxruntime_backend import OnnxRuntimeImageModel
from masqclip.factory import build_model
from masqclip.modeling.masqclip import ImageModel
from masqclip.modeling.precision import cpu_bf16_units, torch_image_model
from masqclip.tools.benchmarking import (
    GEMM_SIZE,
    frame_inputs,
    gemm,
    image_path_flops,
    image_path_rates,
    interleaved_medians,
    timer,
    top_operators,
)


def measure_onnxruntime_vs_torch(
    model: str = 'masqclip_r50_vitb16',
    frame_size: tuple[int, int] = (480, 640),
    repeats: int = 3,
    work_dir: str | Path | None = None,
) -> dict[str, object]:
    """Median seconds per image-path run with onnxruntime (CPU provider) and torch eager.

    Exports the model once (about a minute for masqclip_r50_vitb16).

    :param frame_size: camera frame (H, W); the input is its padded network size.
    :param work_dir: where the export goes; None uses a temporary folder.
    :return: ``onnxruntime_vs_torch_speedup`` (torch_s / onnxruntime_s), ``onnxruntime_s``,
        ``torch_s``, ``max_abs_diff`` (mask embeddings), ``input_size``, ``threads``,
        ``export_s``, ``model``.
    """
    return _measure_image_paths(model, frame_size, repeats, work_dir, gemm_size=None)


def measure_efficiency(
    model: str = 'masqclip_r50_vitb16',
    frame_size: tuple[int, int] = (480, 640),
    repeats: int = 3,
    work_dir: str | Path | None = None,
    gemm_size: int = GEMM_SIZE,
    inductor_cache_dir: str | Path | None = None,
) -> dict[str, object]:
    """``measure_onnxruntime_vs_torch``'s figures, with the image path's efficiency.

    Interleaved with the image paths (torch fp32, onnxruntime fp32, and torch bf16 where the
    CPU has bf16 units), a ``gemm_size``-square matrix product measures this machine's fp32
    (and bf16) GEMM rate; the image path's FLOPs are counted once; one profiled torch fp32 run
    names the operators the time goes to.

    :param inductor_cache_dir: also time the inductor backend at each precision, compiled
        first with its cache in this folder (about 90 s a precision for masqclip_r50_vitb16
        when the cache is empty, seconds when it holds the compile).
    :return: the figures of ``measure_onnxruntime_vs_torch`` and ``efficiency``: ``cpu``,
        ``threads``, ``freed_memory_kept`` (``masqclip.cpu_memory``), ``bf16_units``,
        ``input_size``, ``gemm_size``, ``gemm_gflops`` (per precision), ``image_path_flops``
        (``proposer``, ``mask_clip``, ``total``), ``image_paths`` (rows of
        ``image_path_rates``), ``top_operators``, and with ``inductor_cache_dir``
        ``inductor_compile_s`` (per precision).
    """
    return _measure_image_paths(
        model, frame_size, repeats, work_dir, gemm_size, inductor_cache_dir
    )


def _measure_image_paths(
    model: str,
    frame_size: tuple[int, int],
    repeats: int,
    work_dir: str | Path | None,
    gemm_size: int | None,
    inductor_cache_dir: str | Path | None = None,
) -> dict[str, object]:
    """The figures of both functions above; the efficiency ones unless ``gemm_size`` is None."""
    torch.manual_seed(0)
    network, config = build_model(model)
    network.eval()
    inputs = frame_inputs(config, frame_size)
    input_size = tuple(inputs[0].shape[-2:])
    threads = torch.get_num_threads()
    bf16_units = cpu_bf16_units() if gemm_size is not None else ()
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        path = export_onnx(
            network,
            config,
            Path(work_dir or scratch) / f'{model}-bench.onnx',
            input_size,
            model_name=model,
        )
        export_s = time.perf_counter() - start
        image_models: dict[str, ImageModel] = {
            'torch fp32': network,
            'onnxruntime fp32': OnnxRuntimeImageModel(path, 'cpu', threads=threads),
        }
        gemms = {}
        if gemm_size is not None:
            gemms['fp32'] = gemm(torch.float32, gemm_size)
        if bf16_units:
            gemms['bf16'] = gemm(torch.bfloat16, gemm_size)
            image_models['torch bf16'] = torch_image_model(network, 'cpu', 'bf16')
        compile_s = {}
        if inductor_cache_dir is not None:
            content_size = tuple(inputs[1][0].tolist())
            eager = [name for name in image_models if name.startswith('torch ')]
            for name in eager:
                precision = name.split()[1]
                compiled = InductorImageModel(
                    image_models[name],
                    input_size,
                    content_size,
                    'cpu',
                    inductor_cache_dir,
                    background=False,
                )
                if compiled.wait(0):  # a failed compile is logged and left out
                    image_models[f'inductor {precision}'] = compiled
                    compile_s[precision] = compiled.compile_seconds
        outputs, gemm_seconds, image_seconds = _interleaved_seconds(
            image_models, gemms, inputs, repeats
        )
    torch_s, onnxruntime_s = image_seconds['torch fp32'], image_seconds['onnxruntime fp32']
    embeddings_difference = outputs['onnxruntime fp32'][2] - outputs['torch fp32'][2]
    figures = {
        'model': model,
        'input_size': list(input_size),
        'threads': threads,
        'onnxruntime_vs_torch_speedup': torch_s / onnxruntime_s,
        'onnxruntime_s': onnxruntime_s,
        'torch_s': torch_s,
        'max_abs_diff': float(embeddings_difference.abs().max()),
        'export_s': export_s,
    }
    if gemm_size is None:
        return figures
    gemm_gflops = {
        precision: flops / gemm_seconds[precision] / 1e9 for precision, (_, flops) in gemms.items()
    }
    flops = image_path_flops(network, inputs)
    with torch.inference_mode():
        operators = top_operators(network, *inputs)
    figures['efficiency'] = {
        'cpu': torch.cpu.get_capabilities().get('cpu_name', 'unknown'),
        'threads': threads,
        'freed_memory_kept': freed_memory_kept(),
        'bf16_units': list(bf16_units),
        'input_size': 'x'.join(str(side) for side in input_size),
        'gemm_size': gemm_size,
        'gemm_gflops': gemm_gflops,
        'image_path_flops': flops,
        'image_paths': image_path_rates(image_seconds, flops['total'], gemm_gflops),
        'top_operators': operators,
    }
    if inductor_cache_dir is not None:
        figures['efficiency']['inductor_compile_s'] = compile_s
    return figures


def _interleaved_seconds(
    image_models: dict[str, ImageModel],
    gemms: dict[str, tuple[Callable[[], float], int]],
    inputs: tuple[torch.Tensor, torch.Tensor],
    repeats: int,
) -> tuple[dict[str, tuple[torch.Tensor, ...]], dict[str, float], dict[str, float]]:
    """Each image model's first outputs, then the median seconds of the GEMMs and of the
    image models, all taking turns."""
    with torch.inference_mode():
        # First runs: the torch warm-up, onnxruntime's memory planning; not timed.
        outputs = {name: run(*inputs) for name, run in image_models.items()}
        for measure, _ in gemms.values():
            measure()
        seconds = interleaved_medians(
            [measure for measure, _ in gemms.values()]
            + [timer(run, *inputs) for run in image_models.values()],
            repeats,
        )
    gemm_seconds = dict(zip(gemms, seconds[: len(gemms)], strict=True))
    return outputs, gemm_seconds, dict(zip(image_models, seconds[len(gemms) :], strict=True))
