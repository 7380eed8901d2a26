"""The common wavelength grid of the cube (DESIGN.md, "The cube").

LAMOST low-resolution spectra are sampled uniformly in log10 wavelength:
log10(lambda / AA) = 3.5682 + 1e-4 i, i = 0..3908 (vacuum, 3,700-9,100 AA). A
uniform log-lambda grid is uniform in velocity: one pixel is
c ln(10) 1e-4 = 69.03 km/s, which lets broadening kernels be applied as
convolutions with a fixed kernel per star.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# LAMOST low-resolution grid (DESIGN.md, "The cube"): log10(lambda/AA) = 3.5682 + 1e-4 i.
LAMOST_LOG10_WAVE_START = 3.5682
LAMOST_LOG10_WAVE_STEP = 1.0e-4
LAMOST_N_PIXELS = 3909


@dataclass(frozen=True)
class GridConfig:
    """The common wavelength grid (vacuum, rest frame)."""

    log10_start: float = LAMOST_LOG10_WAVE_START
    log10_step: float = LAMOST_LOG10_WAVE_STEP
    n_pixels: int = LAMOST_N_PIXELS

SPEED_OF_LIGHT_KMS = 299_792.458


def wavelength_grid(grid: GridConfig | None = None) -> np.ndarray:
    """Vacuum wavelengths in AA of the common grid (float64, ascending)."""
    g = grid or GridConfig()
    return 10.0 ** (g.log10_start + g.log10_step * np.arange(g.n_pixels))


def velocity_per_pixel_kms(grid: GridConfig | None = None) -> float:
    """Velocity width of one pixel of the log-lambda grid, in km/s."""
    g = grid or GridConfig()
    return SPEED_OF_LIGHT_KMS * np.log(10.0) * g.log10_step


def pixel_of_wavelength(wave_aa: np.ndarray | float, grid: GridConfig | None = None) -> np.ndarray:
    """Fractional pixel index of a vacuum wavelength (AA) on the grid."""
    g = grid or GridConfig()
    return (np.log10(np.asarray(wave_aa, dtype=float)) - g.log10_start) / g.log10_step


def is_lamost_grid(wave_aa: np.ndarray, rtol: float = 1e-7) -> bool:
    """True if ``wave_aa`` is exactly the common grid (to ``rtol``)."""
    ref = wavelength_grid()
    wave_aa = np.asarray(wave_aa)
    return wave_aa.shape == ref.shape and bool(np.allclose(wave_aa, ref, rtol=rtol, atol=0))
