"""The on-disk TensorRT engine cache: keys, lookup and atomic storage (no TensorRT needed).

An engine only runs on the TensorRT version and GPU model it was built for, with the graph,
precision and input shape it was built from. The key holds all five; the digest names the file
and a JSON sidecar repeats the fields, so a lookup compares them all and a stale or foreign
file is rebuilt, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger('masqclip')

DEFAULT_CACHE_DIR = Path('~/.cache/masqclip/engines')


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on.

    :param onnx_sha256: ``hash_onnx`` of the graph (and its weights) it is built from.
    :param tensorrt_version: ``tensorrt.__version__``.
    :param gpu_name: e.g. 'NVIDIA H100 80GB HBM3'.
    :param compute_capability: e.g. '9.0'.
    :param precision: 'fp32' or 'fp16'.
    :param input_shape: the fixed input shape, e.g. (1, 3, 480, 640).
    """

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    input_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able fields (the shape as a list)."""
        fields = asdict(self)
        fields['input_shape'] = [int(side) for side in self.input_shape]
        return fields

    def digest(self) -> str:
        """A short hex digest of every field: the engine's file name."""
        canonical = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]


class EngineCache:
    """A folder of ``<digest>.engine`` files with ``<digest>.json`` sidecars and timing caches.

    :param directory: created on first store; ``~`` is expanded.
    """

    def __init__(self, directory: str | Path = DEFAULT_CACHE_DIR) -> None:
        self.directory = Path(directory).expanduser()

    def engine_path(self, key: EngineKey) -> Path:
        """Where the engine for ``key`` lives (whether or not it exists)."""
        return self.directory / f'{key.digest()}.engine'

    def lookup(self, key: EngineKey) -> Path | None:
        """The cached engine for ``key``, or None when absent or its sidecar differs."""
        path = self.engine_path(key)
        sidecar = path.with_suffix('.json')
        if not path.is_file() or not sidecar.is_file():
            return None
        try:
            stored = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            stored = None
        if stored != key.to_dict():
            logger.warning(
                'engine cache entry %s does not match its key (stored %s); it will be rebuilt',
                path,
                stored,
            )
            return None
        return path

    def store(self, key: EngineKey, engine: bytes) -> Path:
        """Write an engine and its sidecar atomically (the engine first, then the sidecar that
        makes it visible to ``lookup``).

        :return: the engine's path.
        """
        path = self.engine_path(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, engine)
        _write_atomic(
            path.with_suffix('.json'), json.dumps(key.to_dict(), indent=1, sort_keys=True).encode()
        )
        return path

    def timing_cache_path(
        self, tensorrt_version: str, gpu_name: str, compute_capability: str
    ) -> Path:
        """The persistent timing cache for one TensorRT version on one GPU model.

        Timings are valid across graphs (TensorRT keys them by layer), not across versions or
        devices, so one file per (version, GPU) is shared by every engine built there.
        """
        ident = json.dumps([tensorrt_version, gpu_name, compute_capability])
        return self.directory / f'timing-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.cache'

    def read_timing_cache(self, path: Path) -> bytes:
        """The stored timing cache, or b'' (a fresh one) when there is none."""
        return path.read_bytes() if path.is_file() else b''

    def write_timing_cache(self, path: Path, data: bytes) -> None:
        """Replace the stored timing cache atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, data)


def _write_atomic(path: Path, data: bytes) -> None:
    # A unique temporary name: two processes building the same engine must not interleave.
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_bytes(data)
    os.replace(tmp, path)
