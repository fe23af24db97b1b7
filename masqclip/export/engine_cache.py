"""The on-disk cache: file digests, TensorRT engine keys, lookup and atomic storage (no
TensorRT needed).

Every cached file (ONNX graph and weights, engine, timing cache) has its SHA-256 recorded
beside it in ``<file>.sha256`` (``sha256sum`` format, so ``sha256sum -c`` checks it too),
written atomically once the file is complete. A file that differs from its digest, or has none
(an interrupted write), reads as damaged and is rebuilt with a warning.

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
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from masqclip.export.errors import DamagedFileError

logger = logging.getLogger('masqclip')

DEFAULT_CACHE_DIR = Path('~/.cache/masqclip/engines')
# One ``sha256sum`` line: 64 hex digits, two spaces (or space and '*'), a plain file name.
_DIGEST_LINE = re.compile(r'([0-9a-f]{64}) [ *]([^/\\]+)')


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 24) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def digest_path(path: Path) -> Path:
    """Where the digests of ``path`` (and of the files that belong with it) are recorded."""
    return path.with_name(path.name + '.sha256')


def record_digests(path: Path, digests: Mapping[str, str]) -> None:
    """Record {file name: hex SHA-256} for ``path`` and the files beside it that belong with
    it, atomically. Call it once they are complete: until then they read as damaged."""
    lines = ''.join(f'{digest}  {name}\n' for name, digest in sorted(digests.items()))
    _write_atomic(digest_path(path), lines.encode())


def recorded_digests(path: Path) -> dict[str, str] | None:
    """The digests recorded for ``path``, {file name: hex}; None when there are none.

    :raises DamagedFileError: for a digest file that is not what ``record_digests`` writes.
    """
    try:
        text = digest_path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedFileError(f'cannot read {digest_path(path)}: {error}') from error
    matches = [_DIGEST_LINE.fullmatch(line) for line in text.splitlines()]
    if not matches or not all(matches):
        raise DamagedFileError(f'{digest_path(path)} is not a list of SHA-256 digests')
    digests = {match[2]: match[1] for match in matches}
    if path.name not in digests:
        raise DamagedFileError(f'{digest_path(path)} records no digest of {path.name}')
    return digests


def verify_digests(path: Path) -> dict[str, str]:
    """Hash ``path`` and the files recorded with it, each once, and compare with the record.

    :return: the verified digests, {file name: hex}.
    :raises DamagedFileError: when there is no record, a recorded file is missing, or one
        differs from its digest.
    """
    digests = recorded_digests(path)
    if digests is None:
        raise DamagedFileError(
            f'{path} has no recorded digest ({digest_path(path).name} is missing: its write '
            'was interrupted, or it was written before digests were recorded)'
        )
    for name, digest in digests.items():
        part = path.parent / name
        if not part.is_file():
            raise DamagedFileError(f'{part} is missing')
        if sha256_file(part) != digest:
            raise DamagedFileError(f'{part} differs from its recorded SHA-256')
    return digests


def write_with_digest(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and then its digest, each atomically."""
    _write_atomic(path, data)
    record_digests(path, {path.name: hashlib.sha256(data).hexdigest()})


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
    """A folder of ``<digest>.engine`` files with ``<digest>.json`` sidecars, timing caches,
    and the ``.sha256`` digest of each engine and timing cache.

    :param directory: created on first store; ``~`` is expanded.
    """

    def __init__(self, directory: str | Path = DEFAULT_CACHE_DIR) -> None:
        self.directory = Path(directory).expanduser()

    def engine_path(self, key: EngineKey) -> Path:
        """Where the engine for ``key`` lives (whether or not it exists)."""
        return self.directory / f'{key.digest()}.engine'

    def lookup(self, key: EngineKey) -> Path | None:
        """The cached engine for ``key``, or None when absent, its sidecar differs or the
        engine is damaged (each of these is then rebuilt)."""
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
        if not _intact(path, 'the engine will be rebuilt'):
            return None
        return path

    def store(self, key: EngineKey, engine: bytes) -> Path:
        """Write an engine, its digest and its sidecar, each atomically and in this order: the
        sidecar makes the entry visible to ``lookup``, the digest proves it complete.

        :return: the engine's path.
        """
        path = self.engine_path(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_with_digest(path, engine)
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
        """The stored timing cache, or b'' (a fresh one) when there is none or it is damaged."""
        if not path.is_file() or not _intact(path, 'starting a fresh timing cache'):
            return b''
        return path.read_bytes()

    def write_timing_cache(self, path: Path, data: bytes) -> None:
        """Replace the stored timing cache and its digest atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_with_digest(path, data)


def _intact(path: Path, remedy: str) -> bool:
    """Whether a cached file matches its recorded digest; a warning says ``remedy`` if not."""
    try:
        verify_digests(path)
    except DamagedFileError as error:
        logger.warning('damaged cache file: %s; %s', error, remedy)
        return False
    return True


def _write_atomic(path: Path, data: bytes) -> None:
    # A unique temporary name: two processes building the same engine must not interleave.
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    tmp.write_bytes(data)
    os.replace(tmp, path)
