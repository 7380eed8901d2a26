"""What the three spectral stages (normalize, pca, emission) share."""

from __future__ import annotations

import functools
from typing import Any

from obpipe.memory import release_free_heap

#: pixels of the common wavelength grid (:mod:`obpipe.spectra.grid`)
N_WAVE = 3909


def _releases_heap(run: Any) -> Any:
    """A stage's run function that returns the block buffers kept by
    :func:`reuse_block_buffers` to the OS when it ends (later stages need other memory)."""
    @functools.wraps(run)
    def run_then_release(*args: Any, **kwargs: Any) -> Any:
        try:
            return run(*args, **kwargs)
        finally:
            release_free_heap()
    return run_then_release
