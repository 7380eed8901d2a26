"""Process-level memory hygiene for long runs over many blocks."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def release_large_buffers_to_the_os() -> bool:
    """Serve every allocation of 4 MiB and more with its own mmap (glibc only, best effort).

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB);
    block buffers of 8-60 MiB, allocated and freed for every block, then come from the
    heap, which fragments and grows with the number of blocks. A fixed threshold keeps
    a worker's memory flat in the number of blocks. Called once per process.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 4 << 20))  # M_MMAP_THRESHOLD, fixed: no dynamic raise
    except (OSError, AttributeError):  # not glibc
        return False
