"""The ``inductor`` backend: the torch image path compiled ahead of time by AOTInductor
(``torch.export`` then ``torch._inductor.aoti_compile_and_package``) for the CPU, at one
network-input size, and cached as a package beside the other engines.

Building the package for ``masqclip_r50_vitb16`` takes about 80 s on two cores; loading it
takes half a second. So a robot never waits for a build: with an intact package in the cache
the compiled path serves from the first frame; without one, the eager path serves while a
background thread builds the package, and the compiled path takes over when it is ready. Only
that build traces Python (it holds the interpreter lock, so frames are slower while it runs,
once per model, size, precision and torch version); loading runs none, unlike ``torch.compile``
whose tracing would run again at every start. Canvases of another size keep running eager. A
build that fails is logged and the eager path keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

from masqclip.export.engine_cache import (
    digest_path,
    record_digests,
    sha256_file,
    verify_digests,
)
from masqclip.export.errors import BackendUnavailableError, DamagedFileError
from masqclip.modeling.masqclip import ImageModel

logger = logging.getLogger('masqclip')


def package_path(
    cache_dir: str | Path,
    model_name: str,
    input_size: tuple[int, int],
    precision: str,
    weights: str,
) -> Path:
    """Where the package of these weights (``fingerprint_image_path``) lives: named after
    everything the compiled code depends on, so a change of any never picks up a stale one
    (the CPU's vector ISA too: the code is built for the machine that builds it)."""
    height, width = input_size
    isa = torch.backends.cpu.get_cpu_capability().lower()
    return (
        Path(cache_dir).expanduser()
        / f'{model_name or "masqclip"}-{height}x{width}-{precision}-torch{torch.__version__}-'
        f'{isa}-{weights}.pt2'
    )


class InductorImageModel:
    """An ImageModel that runs the AOTInductor package of ``image_model`` for canvases of
    ``input_size``, and ``image_model`` itself (eager) for other canvases and until the
    package is ready.

    :param image_model: the torch image path (a module, at any CPU precision
        ``torch_image_model`` makes).
    :param input_size: (Hp, Wp), the padded network input to compile for.
    :param content_size: (h, w) of the content in that canvas, for the build's sample input.
    :param device: the image path's device; only the CPU is supported.
    :param package: the package's path (see ``package_path``); loaded when intact, else built
        there.
    :param background: build in a thread (True) or before returning (False).
    :raises BackendUnavailableError: on a device other than the CPU.

    Once the package is ready, ``build_seconds`` holds the build's wall time (None when it was
    loaded from the cache); after a failed build, ``error`` says why.
    """

    def __init__(
        self,
        image_model: ImageModel,
        input_size: tuple[int, int],
        content_size: tuple[int, int],
        device: str | torch.device,
        package: str | Path,
        background: bool = True,
    ) -> None:
        if torch.device(device).type != 'cpu':
            raise BackendUnavailableError(
                f'the inductor backend is for the CPU, not {device}; on a GPU use the tensorrt '
                'backend (or torch)'
            )
        self._eager = image_model
        self.input_size = tuple(input_size)
        self._content_size = tuple(content_size)
        self.package = Path(package)
        self._compiled: ImageModel | None = None
        self.build_seconds: float | None = None
        self.error: Exception | None = None
        self._done = threading.Event()
        if _intact(self.package):
            try:
                self._compiled = _load(self.package)
            except Exception as error:  # noqa: BLE001 - any unloadable package is rebuilt
                logger.warning('cannot load %s (%s), building it again', self.package, error)
            else:
                self._done.set()
                return
        if background:
            threading.Thread(target=self._build, name='masqclip-inductor', daemon=True).start()
        else:
            self._build()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the package is loaded or its build ended (or ``timeout`` seconds
        passed); True when the compiled path serves."""
        self._done.wait(timeout)
        return self._compiled is not None

    def __call__(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        compiled = self._compiled
        if compiled is not None and tuple(images.shape[-2:]) == self.input_size:
            return compiled(images, image_sizes)
        return self._eager(images, image_sizes)

    def _build(self) -> None:
        start = time.perf_counter()
        sample = (torch.zeros(1, 3, *self.input_size), torch.tensor([self._content_size]))
        try:
            build_package(self._eager, sample, self.package)
            compiled = _load(self.package)
        except Exception as error:  # a failed build must not take the eager path down
            self.error = error
            logger.warning(
                'AOTInductor could not compile the image path (%s: %s); the eager path keeps '
                'serving. Use backend torch to silence this.',
                type(error).__name__,
                str(error)[:300],
            )
        else:
            self.build_seconds = time.perf_counter() - start
            self._compiled = compiled
            logger.info(
                'AOTInductor compiled the image path for %dx%d canvases in %.0f s: %s',
                *self.input_size[::-1],
                self.build_seconds,
                self.package,
            )
        finally:
            self._done.set()


def build_package(image_model: ImageModel, sample: tuple[Tensor, Tensor], path: Path) -> None:
    """Export ``image_model`` at ``sample``'s shapes, compile it with AOTInductor into a
    package at ``path`` and record its digest (until then it reads as damaged)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        program = torch.export.export(image_model, sample, strict=False)
    # A unique temporary name: two processes building the same package must not interleave.
    partial = path.with_name(f'.{path.name}.{os.getpid()}.{threading.get_ident()}.tmp.pt2')
    try:
        torch._inductor.aoti_compile_and_package(program, package_path=str(partial))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    record_digests(path, {path.name: sha256_file(path)})


def _intact(path: Path) -> bool:
    """Whether ``path`` holds a complete package; a damaged one is reported, to be rebuilt."""
    if not path.is_file() and not digest_path(path).is_file():
        return False  # not built yet
    try:
        verify_digests(path)
    except DamagedFileError as error:
        logger.warning('damaged AOTInductor package in the cache, building it again: %s', error)
        return False
    return True


def _load(path: Path) -> ImageModel:
    runner = torch._inductor.aoti_load_package(str(path))

    def run(images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(runner(images, image_sizes))

    return run
