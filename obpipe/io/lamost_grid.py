"""A LAMOST spectrum onto the cube's wavelength grid: rest frame, flux-conserving rebin.

The reader (:mod:`obpipe.io.lamost`) gives the file's arrays in the observed frame;
:func:`to_grid` shifts them to the rest frame with the header's redshift and rebins
them onto the common grid with :mod:`obpipe.spectra.resample` (the exact log-linear
fast path :func:`~obpipe.spectra.resample.rebin_loglinear` for COEFF0/COEFF1
wavelengths, :func:`~obpipe.spectra.resample.rebin_spectrum` otherwise), with the
LAMOST mask bits translated to the cube's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from obpipe.io.lamost import LamostSpectrum, lamost_mask_to_cube
from obpipe.spectra.grid import SPEED_OF_LIGHT_KMS, wavelength_grid
from obpipe.spectra.resample import rebin_loglinear, rebin_spectrum, rest_frame_wavelength


@dataclass
class GriddedSpectrum:
    """A spectrum on the common grid (rest frame): float32 flux/ivar, uint8 mask, flags."""

    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray
    rv: float
    rv_err: float
    flags: list[str]


def _any_finite(x: np.ndarray) -> bool:
    """np.any(np.isfinite(x)), answered from the middle element when it is finite."""
    if x.size and np.isfinite(x[x.size // 2]):
        return True
    return bool(np.any(np.isfinite(x)))


def _any_positive(x: np.ndarray) -> bool:
    """np.any(np.isfinite(x) & (x > 0)), answered from the middle element when it is."""
    if x.size and 0.0 < x[x.size // 2] < np.inf:
        return True
    return bool(np.any(np.isfinite(x) & (x > 0)))


@functools.cache
def _grid_ends() -> tuple[float, float]:
    grid = wavelength_grid()
    return float(grid[0]), float(grid[-1])


def to_grid(spec: LamostSpectrum, grid_aa: np.ndarray | None = None) -> GriddedSpectrum:
    """Shift ``spec`` to the rest frame with its header redshift and rebin onto the grid.

    Flux is conserved (:func:`obpipe.spectra.resample.rebin_spectrum`); the ivar
    is propagated; masked pixels stay masked; pixels outside the coverage get
    ivar = 0 and the ``no_coverage`` bit. Unusable data does not raise: it gives
    an all-ivar-0 row with flags (``all_nan_flux``, ``zero_ivar``, ``off_grid``,
    ``no_redshift``) so that the spectrum keeps its row.
    """
    flags = list(spec.notes)
    grid = _grid_ends() if grid_aa is None else grid_aa
    z = spec.meta["z"]
    if not np.isfinite(z):
        flags.append("no_redshift")
        z_use = 0.0
    else:
        z_use = z
    rv = z * SPEED_OF_LIGHT_KMS if np.isfinite(z) else float("nan")
    rv_err = spec.meta["z_err"] * SPEED_OF_LIGHT_KMS
    flux, ivar = spec.flux, spec.ivar
    if not _any_finite(flux):
        flags.append("all_nan_flux")
    if not _any_positive(ivar):
        flags.append("zero_ivar")
    mask = lamost_mask_to_cube(spec.andmask)
    fast = None
    if spec.loglam is not None and grid_aa is None:
        # log-linear input (COEFF0/COEFF1): the rest-frame shift is a shift in log10
        # lambda, and on the grid's step the rebinning is a fractional-pixel shift
        c0 = spec.loglam[0] - float(np.log10(1.0 + z_use))
        lo, hi = 10.0**c0, 10.0 ** (c0 + spec.loglam[1] * (flux.size - 1))
        fast = rebin_loglinear(c0, spec.loglam[1], flux, ivar, mask)
    if fast is not None:
        f, iv, m = fast
    else:
        wave = rest_frame_wavelength(spec.wave, z_use)
        lo, hi = wave[0], wave[-1]
        f, iv, m = rebin_spectrum(wave, flux, ivar, mask, grid_aa)
    if hi <= grid[0] or lo >= grid[-1]:
        flags.append("off_grid")
    if "off_grid" not in flags and not np.any(iv > 0) and "zero_ivar" not in flags \
            and "all_nan_flux" not in flags:
        flags.append("no_usable_pixel")
    return GriddedSpectrum(f, iv, m, rv, rv_err, flags)
