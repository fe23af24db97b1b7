"""onnxruntime backend: the exported image path behind the ImageModel contract.

On the CPU, tensors cross as numpy arrays (zero-copy views where possible). On a CUDA device,
IO binding hands onnxruntime the torch tensors' GPU memory directly, so frames never leave the
GPU. Execution providers: the CPU one by default; on a CUDA device the CUDA one (then CPU for
the few ops it lacks); the TensorRT one only when asked for (its first run builds an engine,
cached under ``engine_cache_dir``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from masqclip.export.engine_cache import DEFAULT_CACHE_DIR
from masqclip.export.errors import BackendUnavailableError, ForeignExportError, InputSizeError
from masqclip.export.onnx import INPUT_NAMES, OUTPUT_NAMES

logger = logging.getLogger('masqclip')

CPU_PROVIDER = 'CPUExecutionProvider'
CUDA_PROVIDER = 'CUDAExecutionProvider'
TENSORRT_PROVIDER = 'TensorrtExecutionProvider'
GPU_PROVIDERS = (CUDA_PROVIDER, TENSORRT_PROVIDER)

_NUMPY_TYPES = {'tensor(float)': np.float32, 'tensor(float16)': np.float16}
# The graph's inputs in the order of INPUT_NAMES: torch dtype -> numpy dtype.
_INPUT_DTYPES = {torch.float32: np.float32, torch.int64: np.int64}


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or an error that says how to install it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailableError(
            'the onnxruntime backend needs onnxruntime: `pip install onnxruntime` (CPU) or '
            f'`pip install onnxruntime-gpu` (CUDA), or choose backend torch ({error})'
        ) from error
    return onnxruntime


def resolve_providers(
    device: str | torch.device, requested: Sequence[str] | None, available: Sequence[str]
) -> list[str]:
    """The execution providers to use, in priority order.

    :param device: 'cpu' or a CUDA device; decides the default and must agree with the list.
    :param requested: provider names, or None for the default.
    :param available: ``onnxruntime.get_available_providers()``.
    :raises BackendUnavailableError: when a needed provider is not in this onnxruntime build.
    :raises ValueError: for a list that cannot run on ``device``.
    """
    on_gpu = torch.device(device).type == 'cuda'
    if requested is None:
        requested = [CUDA_PROVIDER, CPU_PROVIDER] if on_gpu else [CPU_PROVIDER]
    requested = list(dict.fromkeys(requested))
    if not requested:
        raise ValueError('give at least one onnxruntime execution provider')
    missing = [name for name in requested if name not in available]
    if missing:
        hint = (
            ' (`pip install onnxruntime-gpu` in place of onnxruntime provides the CUDA '
            'and TensorRT ones)'
            if set(missing) & set(GPU_PROVIDERS)
            else ''
        )
        raise BackendUnavailableError(
            f'onnxruntime execution providers {missing} are not available in this build; '
            f'available: {list(available)}{hint}'
        )
    gpu_listed = any(name in GPU_PROVIDERS for name in requested)
    if on_gpu and not gpu_listed:
        raise ValueError(
            f'device {str(device)!r} needs a GPU execution provider '
            f'({" or ".join(GPU_PROVIDERS)}); got {requested}'
        )
    if not on_gpu and gpu_listed:
        raise ValueError(
            f'providers {requested} run on a GPU: set the device to cuda, or use '
            f'[{CPU_PROVIDER!r}] on the CPU'
        )
    return requested


class OnnxRuntimeImageModel:
    """An ``InferenceSession`` over an exported image path, taking and returning torch tensors.

    :param onnx_path: a graph from ``export_onnx``.
    :param device: 'cpu' or a CUDA device (outputs are returned there).
    :param providers: execution providers; None picks the default for ``device``.
    :param threads: intra-op threads on the CPU; None leaves onnxruntime's default.
    :param engine_cache_dir: where the TensorRT execution provider keeps its engines.
    :raises ForeignExportError: for a graph with other inputs or outputs.
    """

    def __init__(
        self,
        onnx_path: str | Path,
        device: str = 'cpu',
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        engine_cache_dir: str | Path = DEFAULT_CACHE_DIR,
    ) -> None:
        ort = import_onnxruntime()
        self.device = torch.device(device)
        if self.device.type == 'cuda' and self.device.index is None:
            self.device = torch.device('cuda', torch.cuda.current_device())
        names = resolve_providers(self.device, providers, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        # Idle worker threads would spin-wait for the next frame, taking the cores from the
        # rest of the robot's processes (and from whatever a benchmark compares with).
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        provider_options = [self._provider_options(name, engine_cache_dir) for name in names]
        self.session = ort.InferenceSession(
            str(onnx_path),
            sess_options=options,
            providers=names,
            provider_options=provider_options,
        )
        self.providers = self.session.get_providers()
        logger.info('onnxruntime session on %s with %s', self.device, self.providers)
        inputs = self.session.get_inputs()
        outputs = {o.name: o for o in self.session.get_outputs()}
        if tuple(i.name for i in inputs) != INPUT_NAMES or set(outputs) != set(OUTPUT_NAMES):
            raise ForeignExportError(
                f'{onnx_path} is not a MasQCLIP image-path export (inputs '
                f'{[i.name for i in inputs]}, outputs {sorted(outputs)})'
            )
        self.input_shape = tuple(inputs[0].shape)
        self._outputs = [
            (name, tuple(outputs[name].shape), _NUMPY_TYPES[outputs[name].type])
            for name in OUTPUT_NAMES
        ]

    def _provider_options(self, name: str, engine_cache_dir: str | Path) -> dict[str, str]:
        if name == CUDA_PROVIDER:
            return {'device_id': str(self.device.index)}
        if name == TENSORRT_PROVIDER:
            cache = Path(engine_cache_dir).expanduser() / 'onnxruntime-trt'
            return {
                'device_id': str(self.device.index),
                'trt_engine_cache_enable': 'True',
                'trt_engine_cache_path': str(cache),
                'trt_timing_cache_enable': 'True',
                'trt_timing_cache_path': str(cache),
            }
        return {}

    def __call__(
        self, images: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the session.

        :param images: float [1, 3, Hp, Wp] RGB 0-255 at the export's size.
        :param image_sizes: int [1, 2], the (h, w) of the content before padding.
        :return: mask logits [1, Q, Hp/4, Wp/4], objectness [1, Q], mask embeddings [1, Q, D]
            on this model's device.
        :raises InputSizeError: for another input shape.
        """
        if tuple(images.shape) != self.input_shape:
            raise InputSizeError(
                f'the ONNX model takes {list(self.input_shape)} images, got {list(images.shape)}'
            )
        if self.device.type == 'cuda':
            return self._run_bound(images, image_sizes)
        feeds = {
            name: tensor.numpy() for name, tensor in _typed_inputs(images, image_sizes, 'cpu')
        }
        outputs = self.session.run(list(OUTPUT_NAMES), feeds)
        return tuple(torch.from_numpy(output) for output in outputs)

    def _run_bound(
        self, images: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = [
            torch.empty(
                shape, dtype=torch.from_numpy(np.zeros(0, dtype)).dtype, device=self.device
            )
            for _, shape, dtype in self._outputs
        ]
        binding = self.session.io_binding()
        inputs = _typed_inputs(images, image_sizes, self.device)  # alive until the run ends
        for name, tensor in inputs:
            binding.bind_input(
                name,
                'cuda',
                self.device.index,
                _INPUT_DTYPES[tensor.dtype],
                list(tensor.shape),
                tensor.data_ptr(),
            )
        for (name, shape, dtype), output in zip(self._outputs, outputs, strict=True):
            binding.bind_output(
                name, 'cuda', self.device.index, dtype, list(shape), output.data_ptr()
            )
        # onnxruntime runs on its own stream: the input must be complete before it starts.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return tuple(outputs)


def _typed_inputs(
    images: torch.Tensor, image_sizes: torch.Tensor, device: str | torch.device
) -> list[tuple[str, torch.Tensor]]:
    """The graph's inputs by name: contiguous, on ``device``, in the dtypes it takes."""
    tensors = (images, image_sizes)
    return [
        (name, tensor.detach().to(device, dtype).contiguous())
        for name, tensor, dtype in zip(INPUT_NAMES, tensors, _INPUT_DTYPES, strict=True)
    ]
