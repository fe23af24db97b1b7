"""TensorRT backend: engines built from the exported ONNX, cached, and run on torch tensors.

TensorRT is imported only when this backend is used; ``import_tensorrt`` and
``require_cuda_device`` turn a missing package or GPU into an error that says what to install
or choose instead. Networks are built strongly typed: precision comes from the graph (an fp16
export for an fp16 engine), which TensorRT 11 requires and TensorRT 10 supports.

Written against the TensorRT 10/11 Python API (name-based I/O tensors, ``execute_async_v3``,
``build_serialized_network``, ``IProgressMonitor``).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

from masqclip.export.engine_cache import DEFAULT_CACHE_DIR, EngineCache, EngineKey
from masqclip.export.errors import (
    BackendUnavailableError,
    EngineBuildError,
    ForeignExportError,
    InputSizeError,
)
from masqclip.export.onnx import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    check_export_digests,
    check_onnx_metadata,
    export_input_size,
    hash_onnx,
)
from masqclip.export.progress import Heartbeat

logger = logging.getLogger('masqclip')

MIN_TENSORRT_MAJOR = 10


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or an error that says how to install it.

    :raises BackendUnavailableError: when TensorRT is missing or older than 10.
    """
    cuda = torch.version.cuda
    package = f'tensorrt-cu{cuda.split(".")[0]}' if cuda else 'tensorrt'
    try:
        import tensorrt as trt
    except ImportError as error:
        raise BackendUnavailableError(
            f'the tensorrt backend needs NVIDIA TensorRT >= {MIN_TENSORRT_MAJOR} in this Python '
            f'environment: `pip install {package}` (it must match the CUDA {cuda or "?"} of '
            f'this torch build and needs an NVIDIA driver), or choose backend onnxruntime or '
            f'torch ({error})'
        ) from error
    major = int(trt.__version__.split('.')[0])
    if major < MIN_TENSORRT_MAJOR:
        raise BackendUnavailableError(
            f'TensorRT {trt.__version__} is too old (need {MIN_TENSORRT_MAJOR} or newer): '
            f'`pip install -U {package}`'
        )
    return trt


def require_cuda_device(device: str | torch.device) -> torch.device:
    """The CUDA device TensorRT will use, with its index made explicit.

    :raises ValueError: for a non-CUDA device.
    :raises BackendUnavailableError: when torch sees no such GPU.
    """
    device = torch.device(device)
    if device.type != 'cuda':
        raise ValueError(
            f'the tensorrt backend runs on a CUDA device, got {str(device)!r}; '
            "set the device to 'cuda' (or 'cuda:N'), or use the onnxruntime or "
            'torch backend on the CPU'
        )
    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            f'the tensorrt backend needs an NVIDIA GPU, but torch {torch.__version__} sees no '
            'CUDA device; check the driver with nvidia-smi, or use the onnxruntime or torch '
            'backend on the CPU'
        )
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise BackendUnavailableError(
            f'no CUDA device {index}: this machine has {torch.cuda.device_count()}'
        )
    return torch.device('cuda', index)


def gpu_identity(device: torch.device) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') of a CUDA device."""
    props = torch.cuda.get_device_properties(device)
    return props.name, f'{props.major}.{props.minor}'


def engine_key(onnx_path: str | Path, precision: str, device: str | torch.device) -> EngineKey:
    """The cache key of the engine for this graph, precision and GPU.

    :raises ExportError: when the graph's metadata says another precision.
    """
    trt = import_tensorrt()
    device = require_cuda_device(device)
    metadata = check_onnx_metadata(onnx_path, precision=precision)
    gpu_name, compute_capability = gpu_identity(device)
    return EngineKey(
        onnx_sha256=hash_onnx(onnx_path),
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        precision=precision,
        input_shape=(1, 3, *export_input_size(metadata)),
    )


def build_or_load_engine(
    onnx_path: str | Path,
    precision: str,
    device: str = 'cuda',
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
    rebuild: bool = False,
    workspace_bytes: int | None = None,
    heartbeat_s: float = 10.0,
) -> Path:
    """The cached engine for this graph, precision and GPU, built first when there is none.

    :param onnx_path: a graph from ``export_onnx`` at this precision.
    :param rebuild: build even when a matching engine is cached.
    :param workspace_bytes: TensorRT's workspace limit; None leaves TensorRT's default.
    :param heartbeat_s: seconds between progress lines during a build.
    :return: the engine file.
    :raises DamagedFileError: when the graph to build from differs from its recorded digests.
    :raises EngineBuildError: when TensorRT cannot parse the graph or build it.
    """
    device = require_cuda_device(device)
    key = engine_key(onnx_path, precision, device)
    cache = EngineCache(cache_dir)
    cached = None if rebuild else cache.lookup(key)
    if cached is not None:
        logger.info('using the cached TensorRT engine %s', cached)
        return cached
    logger.info(
        'building a TensorRT %s engine from %s for %s (sm %s, TensorRT %s); the first '
        'build of a model takes minutes',
        precision,
        onnx_path,
        key.gpu_name,
        key.compute_capability,
        key.tensorrt_version,
    )
    # The key holds the digests recorded at export: check the files still have them, or a
    # damaged graph's engine would be cached under a sound graph's key.
    check_export_digests(onnx_path)
    start = time.perf_counter()
    with torch.cuda.device(device):
        engine = build_engine(onnx_path, cache, key, workspace_bytes, heartbeat_s)
    path = cache.store(key, engine)
    logger.info(
        'built %s (%.0f MB) in %.0f s', path, len(engine) / 1e6, time.perf_counter() - start
    )
    return path


def build_engine(
    onnx_path: str | Path,
    cache: EngineCache,
    key: EngineKey,
    workspace_bytes: int | None = None,
    heartbeat_s: float = 10.0,
) -> bytes:
    """Build a serialized engine with the persistent timing cache (updated afterwards).

    Runs on the current CUDA device; a log line at least every ``heartbeat_s`` seconds.

    :raises EngineBuildError: when TensorRT cannot parse the graph or build it.
    """
    trt = import_tensorrt()
    trt_logger = _make_logger(trt)
    builder = trt.Builder(trt_logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED', None)
    if strongly_typed is not None:  # the default (and only) mode from TensorRT 11 on
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    # From a path (not bytes) so the parser finds the weights file beside the graph.
    if not parser.parse_from_file(str(onnx_path)):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f'TensorRT cannot parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    timing_path = cache.timing_cache_path(
        key.tensorrt_version, key.gpu_name, key.compute_capability
    )
    _use_timing_cache(config, cache.read_timing_cache(timing_path), timing_path)
    with Heartbeat('TensorRT engine build', heartbeat_s) as heartbeat:
        if hasattr(trt, 'IProgressMonitor'):
            # Held in a local for the whole build: TensorRT keeps only a raw pointer.
            monitor = _make_progress_monitor(trt, heartbeat)
            config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f'TensorRT failed to build an engine from {onnx_path}: '
            f'{"; ".join(trt_logger.errors) or "see the log above"}'
        )
    cache.write_timing_cache(timing_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


class TensorRTImageModel:
    """Runs a TensorRT engine of the image path on torch CUDA tensors (the ImageModel contract).

    Inputs and outputs stay on the GPU: the input's memory is bound directly and each call
    allocates fresh output tensors (from torch's caching allocator), so a result is never
    overwritten by the next frame. Work is enqueued on torch's current stream, so later torch
    ops see finished outputs without a synchronisation.

    :param engine_path: a serialized engine (from ``build_or_load_engine``).
    :param device: the CUDA device it was built for.
    :param warmup: runs on a zero image before serving (first-run allocations, lazy kernels).
    :raises EngineBuildError: for a file TensorRT cannot load.
    :raises ForeignExportError: for an engine with other inputs or outputs.
    """

    def __init__(self, engine_path: str | Path, device: str = 'cuda', warmup: int = 3) -> None:
        trt = import_tensorrt()
        self.device = require_cuda_device(device)
        self._logger = _make_logger(trt)
        self._lock = threading.Lock()
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self._engine is None:
                raise EngineBuildError(
                    f'TensorRT cannot load the engine {engine_path} '
                    f'({"; ".join(self._logger.errors)}); delete it so it is rebuilt'
                )
            self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if tuple(inputs) != INPUT_NAMES or sorted(set(names) - set(inputs)) != sorted(
            OUTPUT_NAMES
        ):
            raise ForeignExportError(
                f'{engine_path} has I/O tensors {names}; expected '
                f'{INPUT_NAMES} -> {OUTPUT_NAMES}: it is not a MasQCLIP '
                'image-path engine (or one exported before version 2; delete it)'
            )
        self.input_shape = tuple(self._engine.get_tensor_shape(INPUT_NAMES[0]))
        self._input_dtypes = [
            _torch_dtype(trt, self._engine.get_tensor_dtype(name)) for name in INPUT_NAMES
        ]
        self._outputs = [
            (
                name,
                tuple(self._engine.get_tensor_shape(name)),
                _torch_dtype(trt, self._engine.get_tensor_dtype(name)),
            )
            for name in OUTPUT_NAMES
        ]
        if (
            any(side < 0 for _, shape, _ in self._outputs for side in shape)
            or min(self.input_shape) < 0
        ):
            raise EngineBuildError(f'{engine_path} has dynamic shapes; export at a fixed size')
        self.warmup(warmup)

    @property
    def input_size(self) -> tuple[int, int]:
        """(Hp, Wp) the engine takes."""
        return int(self.input_shape[2]), int(self.input_shape[3])

    def __call__(
        self, images: torch.Tensor, image_sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the engine.

        :param images: float [1, 3, Hp, Wp] RGB 0-255 at the engine's size (any device).
        :param image_sizes: int [1, 2], the (h, w) of the content before padding.
        :return: mask logits [1, Q, Hp/4, Wp/4], objectness [1, Q], mask embeddings [1, Q, D],
            CUDA tensors in the engine's output dtypes (float32 for this project's exports).
        :raises InputSizeError: for another input shape.
        """
        if tuple(images.shape) != self.input_shape:
            raise InputSizeError(
                f'the engine takes {list(self.input_shape)} images, got {list(images.shape)}'
            )
        inputs = [
            tensor.to(self.device, dtype).contiguous()
            for tensor, dtype in zip((images, image_sizes), self._input_dtypes, strict=True)
        ]
        outputs = [
            torch.empty(shape, dtype=dtype, device=self.device)
            for _, shape, dtype in self._outputs
        ]
        with self._lock:
            for name, tensor in zip(INPUT_NAMES, inputs, strict=True):
                self._context.set_tensor_address(name, tensor.data_ptr())
            for (name, _, _), output in zip(self._outputs, outputs, strict=True):
                self._context.set_tensor_address(name, output.data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f'TensorRT execution failed: {"; ".join(self._logger.errors)}')
        return tuple(outputs)

    def warmup(self, runs: int) -> float:
        """Run ``runs`` times on a zero image and wait; returns the seconds it took."""
        if runs <= 0:
            return 0.0
        start = time.perf_counter()
        zeros = torch.zeros(self.input_shape, device=self.device)
        sizes = torch.tensor([self.input_size], device=self.device)
        for _ in range(runs):
            self(zeros, sizes)
        torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        logger.info('TensorRT engine warmed up (%d runs, %.2f s)', runs, seconds)
        return seconds


def _use_timing_cache(config: object, data: bytes, path: Path) -> None:
    try:
        cache = config.create_timing_cache(data)
        accepted = config.set_timing_cache(cache, ignore_mismatch=False)
    except Exception as error:  # a truncated or foreign file: TensorRT raises its own types
        logger.warning('ignoring unreadable timing cache %s (%s)', path, error)
        accepted = False
    if not accepted:
        if data:
            logger.warning('timing cache %s does not fit this TensorRT/GPU; starting anew', path)
        config.set_timing_cache(config.create_timing_cache(b''), ignore_mismatch=False)


def _torch_dtype(trt: ModuleType, dtype: object) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.bool: torch.bool,
    }
    if hasattr(trt, 'bfloat16'):
        table[trt.bfloat16] = torch.bfloat16
    if dtype not in table:
        raise EngineBuildError(f'unsupported engine output type {dtype}')
    return table[dtype]


def _make_logger(trt: ModuleType) -> object:
    """A TensorRT logger that forwards to the 'masqclip' logger and keeps the error lines."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: object, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(msg)
                logger.error('TensorRT: %s', msg)
            elif severity == trt.ILogger.WARNING:
                logger.warning('TensorRT: %s', msg)
            else:
                logger.debug('TensorRT: %s', msg)

    return _Logger()


def _make_progress_monitor(trt: ModuleType, heartbeat: Heartbeat) -> object:
    """An ``IProgressMonitor`` that logs top-level phases and feeds the heartbeat's status."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT may call from several threads
            self._phases: dict[str, list[int]] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._phases[phase_name] = [0, num_steps]
                self._publish()
            if parent_phase is None:
                logger.info('TensorRT build: %s (%d steps)', phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                if phase_name in self._phases:
                    self._phases[phase_name][0] = step + 1
                self._publish()
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                self._phases.pop(phase_name, None)
                self._publish()

        def _publish(self) -> None:
            heartbeat.set_status(
                ' > '.join(
                    f'{name} {done}/{total}' for name, (done, total) in self._phases.items()
                )
                or 'preparing'
            )

    return _Monitor()
