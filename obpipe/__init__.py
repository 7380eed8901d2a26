"""obpipe: distances, luminosities and binarity of hot stars from survey spectra.

Implements Xiang et al. (LAMOST OB stars) as a Dask/xarray pipeline over a
chunked Zarr cube of spectra. ``import obpipe`` registers the ``ds.obpipe``
xarray accessor (:mod:`obpipe.accessor`); :func:`open_run` opens a survey and
its products as one lazy Dataset.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("obpipe")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from obpipe.accessor import ObpipeAccessor, open_run  # noqa: E402  (registers ds.obpipe)

__all__ = ["ObpipeAccessor", "__version__", "open_run"]
