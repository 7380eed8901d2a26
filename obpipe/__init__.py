"""obpipe: distances, luminosities and binarity of hot stars from survey spectra.

Implements Xiang et al. (LAMOST OB stars) as a Dask/xarray pipeline over a
chunked Zarr cube of spectra.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("obpipe")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
