"""The ``inductor`` backend: the torch image path compiled by TorchInductor (``torch.compile``)
for the CPU, at one network-input size.

Compiling ``masqclip_r50_vitb16`` takes about 90 s on two cores the first time and about 8 s
once inductor's on-disk cache holds it, so a robot never waits for it: the eager image path
serves from the first frame while a background thread compiles for the configured frame size,
and the compiled path takes over when it is ready. Canvases of another size keep running
eager (a recompile would stall the stream for as long). The cache lives under the engine cache
folder, not in /tmp, which a reboot clears. A compile that fails is logged and the eager path
keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

from masqclip.export.errors import BackendUnavailableError
from masqclip.modeling.masqclip import ImageModel

logger = logging.getLogger('masqclip')

CACHE_ENV = 'TORCHINDUCTOR_CACHE_DIR'


class InductorImageModel:
    """An ImageModel that runs ``image_model`` eagerly until its compiled twin for canvases of
    ``input_size`` is ready, then runs that one for those canvases.

    :param image_model: the torch image path (any precision ``torch_image_model`` makes).
    :param input_size: (Hp, Wp), the padded network input to compile for.
    :param content_size: (h, w) of the content in that canvas, for the compile's sample input.
    :param device: the image path's device; only the CPU is supported.
    :param cache_dir: inductor's cache goes to ``cache_dir / 'inductor'``, unless the user
        set ``TORCHINDUCTOR_CACHE_DIR`` (it is one folder for the whole process, so the first
        inductor backend of a process decides).
    :param background: compile in a thread (True) or before returning (False).
    :raises BackendUnavailableError: on a device other than the CPU.

    After the compile, ``compile_seconds`` holds its wall time, or ``error`` why it failed.
    """

    def __init__(
        self,
        image_model: ImageModel,
        input_size: tuple[int, int],
        content_size: tuple[int, int],
        device: str | torch.device,
        cache_dir: str | Path,
        background: bool = True,
    ) -> None:
        if torch.device(device).type != 'cpu':
            raise BackendUnavailableError(
                f'the inductor backend is for the CPU, not {device}; on a GPU use the tensorrt '
                'backend (or torch)'
            )
        _use_cache_dir(Path(cache_dir).expanduser() / 'inductor')
        self._eager = image_model
        self.input_size = tuple(input_size)
        self._content_size = tuple(content_size)
        self._compiled: ImageModel | None = None
        self.compile_seconds: float | None = None
        self.error: Exception | None = None
        self._done = threading.Event()
        if background:
            threading.Thread(target=self._compile, name='masqclip-inductor', daemon=True).start()
        else:
            self._compile()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the compile ended (or ``timeout`` seconds passed); True when the
        compiled path serves."""
        self._done.wait(timeout)
        return self._compiled is not None

    def __call__(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        compiled = self._compiled
        if compiled is not None and tuple(images.shape[-2:]) == self.input_size:
            return compiled(images, image_sizes)
        return self._eager(images, image_sizes)

    def _compile(self) -> None:
        start = time.perf_counter()
        # Static shapes: one canvas size, so inductor may specialise every kernel to it.
        compiled = torch.compile(self._eager, dynamic=False)
        images = torch.zeros(1, 3, *self.input_size)
        image_sizes = torch.tensor([self._content_size])
        try:
            with torch.inference_mode():
                compiled(images, image_sizes)  # the compile happens at the first call
        except Exception as error:  # a failed compile must not take the eager path down
            self.error = error
            logger.warning(
                'inductor could not compile the image path (%s: %s); the eager path keeps '
                'serving. Use backend torch to silence this.',
                type(error).__name__,
                str(error)[:300],
            )
        else:
            self.compile_seconds = time.perf_counter() - start
            self._compiled = compiled
            logger.info(
                'inductor compiled the image path for %dx%d canvases in %.0f s (cache: %s)',
                *self.input_size[::-1],
                self.compile_seconds,
                os.environ[CACHE_ENV],
            )
        finally:
            self._done.set()


def _use_cache_dir(folder: Path) -> None:
    """Point inductor's on-disk cache at ``folder`` unless the user chose one.

    Importing open_clip already sets ``TORCHINDUCTOR_CACHE_DIR`` to inductor's default under
    /tmp, so that value counts as not chosen.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get(CACHE_ENV)
    if current is None or Path(current).resolve() == Path(default_cache_dir()).resolve():
        os.environ[CACHE_ENV] = str(folder)
