"""keep_freed_memory: a process that frees and reallocates a frame's activations stops
faulting in fresh pages. Each side runs in its own interpreter: the setting is process-wide."""

import platform
import subprocess
import sys

import pytest

from masqclip.cpu_memory import keep_freed_memory

# Frames of four 24 MiB blocks (under glibc's 32 MiB mmap ceiling). 'return' pins glibc's
# starting thresholds (128 KiB), as its adaptive default often leaves them, so that every
# freed block goes back to the kernel; 'keep' is the setting under test.
_FRAMES = """
import resource, sys, torch
from masqclip.cpu_memory import keep_freed_memory, set_malloc_thresholds
if sys.argv[1] == 'keep':
    assert keep_freed_memory()
else:
    assert set_malloc_thresholds(128 << 10, 128 << 10)
def frame():
    blocks = [torch.ones(6 << 20) for _ in range(4)]
    del blocks
for _ in range(3):  # the heap grows to its working size
    frame()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    frame()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _page_faults(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, '-c', _FRAMES, mode], capture_output=True, text=True, check=True
    )
    return int(run.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='mallopt is glibc-only')
def test_kept_memory_is_reused_instead_of_faulted_in_again():
    # Ten frames of 96 MiB returned to the kernel are about 245 000 fresh 4 KiB pages. Kept,
    # they are reused: at most a late growth of the heap by a block or so (6 144 pages each)
    # may remain, far under one frame's 24 576.
    assert _page_faults('return') > 200_000
    assert _page_faults('keep') < 24_576 / 2


def test_a_retention_beyond_a_c_int_is_refused():
    with pytest.raises(ValueError, match='retain_bytes'):
        keep_freed_memory(1 << 31)
