"""CPU latency of the image path: onnxruntime against torch eager, on the same weights.

Random weights are fine for timing. Both sides get the same thread count and take turns, so a
busy machine slows both alike; the ratio is the figure to read.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from masqclip.benchmarking import frame_inputs, interleaved_medians, timer
from masqclip.export.onnx import export_onnx
from masqclip.export.onnxruntime_backend import OnnxRuntimeImageModel
from masqclip.factory import build_model


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
    torch.manual_seed(0)
    network, config = build_model(model)
    inputs = frame_inputs(config, frame_size)
    input_size = tuple(inputs[0].shape[-2:])
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(work_dir) if work_dir is not None else Path(scratch)
        start = time.perf_counter()
        path = export_onnx(
            network, config, folder / f'{model}-bench.onnx', input_size, model_name=model
        )
        export_s = time.perf_counter() - start
        session = OnnxRuntimeImageModel(path, 'cpu', threads=threads)
        with torch.inference_mode():
            reference = network(*inputs)  # also the torch warm-up
            exported = session(*inputs)  # onnxruntime's first run plans memory: not timed
            onnxruntime_s, torch_s = interleaved_medians(
                [timer(session, *inputs), timer(network, *inputs)], repeats
            )
    return {
        'model': model,
        'input_size': list(input_size),
        'threads': threads,
        'onnxruntime_vs_torch_speedup': torch_s / onnxruntime_s,
        'onnxruntime_s': onnxruntime_s,
        'torch_s': torch_s,
        'max_abs_diff': float((exported[2] - reference[2]).abs().max()),
        'export_s': export_s,
    }
