"""Keep the memory torch frees on the CPU in the process, so that the next frame reuses it
instead of faulting in fresh pages.

torch's CPU allocator is the C library's ``malloc``. glibc hands a large block back to the
kernel when it is freed (blocks above its mmap threshold, and free memory at the top of the
heap above its trim threshold). The next frame then gets fresh pages, which the kernel faults
in and zeroes one by one. For ``masqclip_r50_vitb16`` at 640x480 that is 20-80 thousand page
faults a frame, 0.1-0.34 s of system time. Raising both thresholds keeps the blocks in the heap
for reuse, as CUDA's caching allocator, onnxruntime's arena and jemalloc do. The price is that
the process keeps up to ``retain_bytes`` of freed heap instead of returning it between frames.

This is process-wide policy, so the library never applies it on its own: the processes this
project starts (the ``masqclip`` CLI, the ROS node) call :func:`keep_freed_memory` first.
"""

from __future__ import annotations

import ctypes
import logging
import platform

logger = logging.getLogger('masqclip')

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses mmap thresholds above half its heap size (HEAP_MAX_SIZE): 32 MiB on 64-bit.
# Larger blocks stay mmapped; the image path's activations at 640x480 are all smaller.
_MAX_MMAP_THRESHOLD = 32 << 20

DEFAULT_RETAIN_BYTES = 1 << 30

_kept = False


def keep_freed_memory(retain_bytes: int = DEFAULT_RETAIN_BYTES) -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MiB, and up to ``retain_bytes`` of
    free heap, for reuse. Call it once, early in a process that runs the CPU image path.

    :param retain_bytes: free memory at the top of the heap that is kept, not returned to the
        kernel.
    :return: True when the C library took the settings; False on a C library other than glibc
        (musl, macOS), where nothing changes.
    """
    global _kept
    if not 0 <= retain_bytes < 2**31:  # mallopt takes a C int
        raise ValueError(f'retain_bytes must be in [0, 2**31), got {retain_bytes}')
    if platform.libc_ver()[0] != 'glibc':
        logger.debug('not glibc: freed CPU memory is returned as the C library decides')
        return False
    _kept = set_malloc_thresholds(_MAX_MMAP_THRESHOLD, retain_bytes)
    return _kept


def set_malloc_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    """Set glibc's mmap and trim thresholds (``mallopt``); glibc only.

    :return: True when glibc took both.
    """
    libc = ctypes.CDLL('libc.so.6')
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes) and libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes)
    )


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process."""
    return _kept
