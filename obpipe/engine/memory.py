"""Process-level memory hygiene for long runs over many blocks (glibc malloc settings).

The settings are process-wide, so they are made where a process starts, never inside a
block function that may share its worker with other tasks: :func:`set_process_allocator`
at the command line's entry (for that process, and in its environment for the worker
processes it spawns), :func:`allocator_environment` in the Dask nanny's pre-spawn
environment of a local cluster (:mod:`obpipe.engine.schedulers`) and in the container image
(``deploy/Dockerfile``). Two policies (the last one applied wins):

* :func:`release_large_buffers_to_the_os`: every allocation of 4 MiB and more is its own
  mmap, returned to the OS when freed;
* :func:`reuse_block_buffers` (ingest, the spectral stages): block buffers up to 32 MiB come
  from the heap and stay there for the next block, so that a block does not pay for
  the kernel zeroing fresh pages (page faults were ~40% of the spectral chain's CPU
  under the first policy), with fixed thresholds so that memory stays flat in the
  number of blocks; :func:`release_free_heap`, at the end of such a stage, hands the
  kept memory back and returns to the first policy for the stages that follow.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from functools import lru_cache

log = logging.getLogger(__name__)

#: glibc ``mallopt`` parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: the largest fixed mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2)
MMAP_THRESHOLD_MAX_BYTES = 32 << 20
#: free memory kept at the top of a heap before it is returned to the OS: a few blocks'
#: buffers (a 2,000 x 3,909 float32 block is 31 MB)
REUSE_TRIM_THRESHOLD_BYTES = 128 << 20
#: extra memory obtained with each heap extension (fewer, larger extensions)
REUSE_TOP_PAD_BYTES = 16 << 20


def _reuse_arena_max() -> int:
    """Malloc arenas under :func:`reuse_block_buffers`: one per core (glibc's default is 8
    per core; each arena keeps its own free buffers, and with more arenas than threads at
    work the kept memory multiplies and ``malloc_trim`` gave little of it back)."""
    return max(2, os.cpu_count() or 2)


#: the policy in force in this process: "reuse", "release" or None (glibc's defaults)
_policy: str | None = None


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc has both
        return libc
    except (OSError, AttributeError):  # not glibc
        return None


def _mallopt(settings: tuple[tuple[int, int], ...]) -> bool:
    """Apply ``(parameter, value)`` pairs with glibc's ``mallopt``; False if not glibc or a
    setting was refused."""
    libc = _libc()
    return libc is not None and all(bool(libc.mallopt(p, v)) for p, v in settings)


@lru_cache(maxsize=1)
def release_large_buffers_to_the_os() -> bool:
    """Serve every allocation of 4 MiB and more with its own mmap (glibc only, best effort).

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB);
    block buffers of 8-60 MiB, allocated and freed for every block, then come from the
    heap, which fragments and grows with the number of blocks. A fixed threshold keeps
    a worker's memory flat in the number of blocks. Called once per process.
    """
    global _policy
    _policy = "release"
    return _mallopt(((M_MMAP_THRESHOLD, 4 << 20),))  # fixed: no dynamic raise


def reuse_block_buffers() -> bool:
    """Keep freed block buffers in the heap for the next block (glibc only, best effort).

    Fixed thresholds (no dynamic adjustment): allocations below 32 MiB (a block of
    2,000 float32 spectra and every smaller temporary) come from the heap, and up to
    128 MiB of free memory stays at the top of each heap (16 MiB padding per extension)
    instead of going back to the OS after every block, in at most one malloc arena per
    core. Every block then reuses the pages the previous one touched, instead of
    faulting in and zeroing fresh ones; the resident memory is higher by about two
    blocks' buffers per thread but does not grow with the number of blocks, and
    :func:`release_free_heap` hands it back at the end of a stage
    (``benchmarks/memory_policy.py``). Called by every block (it applies the settings only when
    another policy is in force).
    """
    global _policy
    if _policy == "reuse":
        return True
    ok = _mallopt(((M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX_BYTES),
                   (M_TRIM_THRESHOLD, REUSE_TRIM_THRESHOLD_BYTES),
                   (M_TOP_PAD, REUSE_TOP_PAD_BYTES),
                   (M_ARENA_MAX, _reuse_arena_max())))
    if ok:
        _policy = "reuse"
    else:
        log.debug("malloc settings for buffer reuse not applied (not glibc?)")
    return ok


def allocator_environment() -> dict[str, str]:
    """The :func:`reuse_block_buffers` policy as glibc's environment variables, which a
    process reads when it starts (worker processes, containers)."""
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_MAX_BYTES),
            "MALLOC_TRIM_THRESHOLD_": str(REUSE_TRIM_THRESHOLD_BYTES),
            "MALLOC_TOP_PAD_": str(REUSE_TOP_PAD_BYTES),
            "MALLOC_ARENA_MAX": str(_reuse_arena_max())}


def set_process_allocator() -> bool:
    """At a process's start (the command line's entry): the block-buffer policy
    (:func:`reuse_block_buffers`) for this process, and in its environment (unless already
    set there) for the worker processes it will start."""
    for key, value in allocator_environment().items():
        os.environ.setdefault(key, value)
    return reuse_block_buffers()


def release_free_heap() -> bool:
    """Return the free memory of every malloc heap to the OS (glibc ``malloc_trim(0)``,
    best effort): after each stage (:mod:`obpipe.pipeline`), so that the buffers a stage
    kept for its next block do not stay for the later stages; the policy itself stays.
    True if memory was released."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))
