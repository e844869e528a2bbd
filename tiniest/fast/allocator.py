"""Keep the C allocator from handing activation memory back to the OS between batches.

Every call of the compiled model allocates and frees tens of MB of activations. glibc's malloc
maps large blocks fresh and trims freed memory at the top of its heap, so the next call faults
every page in again: about 95,000 page faults and a quarter of the time per 500 images on
2 cores. ``keep_freed_memory`` raises both thresholds once per process, so freed blocks are
reused. It changes the whole process's allocator, which is why the CLI calls it and the library
leaves the choice to its callers.
"""

from __future__ import annotations

import ctypes
import platform

from tiniest.env import env_text

__all__ = ["keep_freed_memory"]

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap (glibc's ceiling for the threshold on 64-bit is 32 MiB);
# the largest activation of a 15-image chunk is about 6 MB.
MMAP_THRESHOLD = 32 << 20
# Free heap memory kept before any is returned to the OS.
TRIM_THRESHOLD = 1 << 30
# glibc reads these at start-up; a user who set them has chosen already.
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed blocks of up to 32 MiB instead of returning them to the OS.

    Returns whether it changed anything: ``False`` where the C library is not glibc, or where the
    environment already configures the allocator (``MALLOC_*_``, ``GLIBC_TUNABLES``, or another
    allocator through ``LD_PRELOAD``). The cost is that up to ``TRIM_THRESHOLD`` of freed memory
    stays with the process.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(env_text(name) for name in _USER_SETTINGS):
        return False
    libc = ctypes.CDLL(None)
    mapped = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mapped) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
