"""obpipe: distances, luminosities and binarity of hot stars from survey spectra.

Implements Xiang et al. (LAMOST OB stars) as a Dask/xarray pipeline over a
chunked Zarr cube of spectra. ``import obpipe`` registers the ``ds.obpipe``
xarray accessor (:mod:`obpipe.accessor`); :func:`open_run` opens a survey and
its products as one lazy Dataset.

The accessor module (and with it dask.array, which pulls in sparse and numba) is
imported on first use: of ``ds.obpipe``, ``obpipe.open_run`` or
``obpipe.ObpipeAccessor``. Commands that need none of them (``obpipe ingest``)
start without it.
"""

from typing import Any

import xarray as xr

from obpipe.version import __version__

__all__ = ["ObpipeAccessor", "__version__", "open_run"]


def _accessor_module() -> Any:
    """Import :mod:`obpipe.accessor`, which registers the real ``ds.obpipe`` accessor in
    place of :class:`_DeferredAccessor` (removed first, so xarray does not warn about
    an override)."""
    import sys

    if "obpipe.accessor" not in sys.modules and \
            getattr(xr.Dataset, "obpipe", None) is _DeferredAccessor:
        delattr(xr.Dataset, "obpipe")
    import obpipe.accessor

    return obpipe.accessor


class _DeferredAccessor:
    """``ds.obpipe`` until :mod:`obpipe.accessor` is imported: imports it and returns its
    :class:`~obpipe.accessor.ObpipeAccessor` for ``ds``."""

    def __new__(cls, ds: xr.Dataset) -> Any:
        return _accessor_module().ObpipeAccessor(ds)


xr.register_dataset_accessor("obpipe")(_DeferredAccessor)


def __getattr__(name: str) -> Any:
    """``obpipe.open_run`` / ``obpipe.ObpipeAccessor``: from :mod:`obpipe.accessor`."""
    if name in ("ObpipeAccessor", "open_run"):
        return getattr(_accessor_module(), name)
    raise AttributeError(f"module 'obpipe' has no attribute {name!r}")
