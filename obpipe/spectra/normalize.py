"""Pseudo-continuum normalisation (Sec. 2 and Fig. 2 of the paper).

The pseudo-continuum is the spectrum smoothed with a Gaussian kernel of 50 AA
width, in the running-mean form used for LAMOST spectra (Ho et al. 2017, after
Ness et al. 2015)::

    c(l0) = sum_i w_i ivar_i f_i / sum_i w_i ivar_i,   w_i = exp(-(l_i - l0)^2 / L^2)

with L = 50 AA. The width is in AA, so on the log-lambda grid the kernel spans
~41 pixels (sigma) at 3,700 AA and ~17 at 9,100 AA. Masked and zero-ivar pixels
have no weight, so they do not pull the continuum.

``weighting="uniform"`` drops the ivar from the weights (every usable pixel counts the
same: the paper's plain Gaussian smoothing, Sec. 2 and Fig. 2). The ivar weights pull the
estimate toward the kernel's low-flux side wherever the ivar follows the flux (noise
relative to the flux, ivar ~ 1/f^2; Poisson noise, ivar ~ 1/f): toward line cores, and
toward the blue on a steeply reddened continuum, so that part of the reddening survives
normalisation as a slope and curvature of the normalised lines (issue 15 item 2:
``benchmarks/low_snr_ablation.py``, docs/validation.md). The normalised flux is f / c
and its inverse variance ivar c^2 (the continuum is treated as exact); bad or
uncovered pixels get norm_ivar = 0.

The smoothing is a banded matrix product, evaluated in column tiles so only the
non-zero band (|dlambda| < 4 L / sqrt 2) is multiplied: exact, and a BLAS call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from obpipe.io.store import MASK_BITS
from obpipe.spectra.grid import wavelength_grid

#: The paper's kernel width, AA.
CONTINUUM_KERNEL_AA = 50.0
#: mask bits whose pixels carry no information (norm_ivar = 0); any set bit (e.g. a sky
#: residual) keeps the pixel out of the continuum estimate.
UNUSABLE_MASK_BITS = MASK_BITS["bad_pixel"] | MASK_BITS["no_coverage"]
_TILE = 64
#: weights of the pseudo-continuum's running mean: "ivar" (Ho et al. 2017) or "uniform"
CONTINUUM_WEIGHTINGS = ("ivar", "uniform")


@dataclass(frozen=True)
class _BandedKernel:
    tiles: tuple[tuple[int, int, int, int, np.ndarray], ...]  # (j0, j1, i0, i1, K[i0:i1, j0:j1])


@lru_cache(maxsize=4)
def _kernel(width_aa: float, n_pix: int) -> _BandedKernel:
    wave = wavelength_grid()[:n_pix]
    cutoff = 4.0 * width_aa / np.sqrt(2.0)
    tiles = []
    for j0 in range(0, n_pix, _TILE):
        j1 = min(j0 + _TILE, n_pix)
        i0 = int(np.searchsorted(wave, wave[j0] - cutoff))
        i1 = int(np.searchsorted(wave, wave[j1 - 1] + cutoff, side="right"))
        d = wave[i0:i1, None] - wave[None, j0:j1]
        k = np.exp(-((d / width_aa) ** 2))
        k[np.abs(d) > cutoff] = 0.0
        tiles.append((j0, j1, i0, i1, k.astype(np.float32)))
    return _BandedKernel(tuple(tiles))


def gaussian_smooth(values: np.ndarray, width_aa: float = CONTINUUM_KERNEL_AA) -> np.ndarray:
    """Smooth rows of ``values`` (n, n_pix) on the common grid with exp(-dl^2/L^2) weights
    (unnormalised sums; divide two smoothed arrays to get a weighted mean)."""
    values = np.asarray(values, dtype=np.float32)
    out = np.empty_like(values)
    for j0, j1, i0, i1, k in _kernel(float(width_aa), values.shape[1]).tiles:
        out[:, j0:j1] = values[:, i0:i1] @ k
    return out


def _check_weighting(weighting: str) -> None:
    if weighting not in CONTINUUM_WEIGHTINGS:
        raise ValueError(f"continuum weighting must be one of {CONTINUUM_WEIGHTINGS}, got "
                         f"{weighting!r}")


def pseudo_continuum(
    flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray | None = None,
    width_aa: float = CONTINUUM_KERNEL_AA, weighting: str = "ivar",
    exclude: np.ndarray | None = None, shape_degree: int = 0,
) -> np.ndarray:
    """Gaussian running mean of the flux (n, n_pix), inverse-variance weighted
    (``weighting="ivar"``) or with the same weight for every usable pixel ("uniform").

    Pixels with ``mask != 0`` or ivar <= 0 or non-finite flux carry no weight, nor do the
    pixels where ``exclude`` (n_pix,) is True (e.g. the interstellar lines' windows,
    :func:`obpipe.spectra.pca.interstellar_mask`): the continuum there is interpolated by
    the kernel from its neighbours.
    Where no pixel within the kernel has weight the continuum is NaN.

    ``shape_degree`` > 0 (beyond the paper, issue 15 item 2): the spectrum's broad shape
    s(lambda) = exp(P(1/lambda)), P a polynomial of that degree fitted to the log of a
    first running mean (:func:`broad_shape`), is divided out first, and the continuum is
    s times the running mean of f / s (weights ivar s^2, the ivar of f / s). A reddening
    or flux-calibration factor whose log is smooth in 1/lambda then leaves the normalised
    spectrum as it was: without it, the running mean of a sloped spectrum leans toward
    the kernel's faint side and across asymmetric line wings, so that part of the slope
    survives normalisation in the shape of the lines.
    """
    _check_weighting(weighting)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    weight = np.array(np.atleast_2d(ivar), dtype=np.float32)  # a copy
    good = np.isfinite(flux)
    good &= np.isfinite(weight)
    good &= weight > 0
    if mask is not None:
        good &= np.atleast_2d(mask) == 0
    if exclude is not None:
        good &= ~np.asarray(exclude, dtype=bool)[None, :]
    if weighting == "uniform":
        weight[...] = 1.0
    cont = _running_mean(flux, weight, good, width_aa)
    if shape_degree <= 0:
        return cont
    shape = broad_shape(cont, good, shape_degree)
    if weighting == "ivar":
        weight *= shape * shape  # the ivar of f / s
    return shape * _running_mean(flux / shape, weight, good, width_aa)


def _running_mean(flux: np.ndarray, weight: np.ndarray, good: np.ndarray, width_aa: float
                  ) -> np.ndarray:
    """sum_i w_i weight_i f_i / sum_i w_i weight_i over the ``good`` pixels (NaN where no
    pixel within the kernel has weight); ``weight`` is rescaled in place."""
    np.copyto(weight, np.float32(0.0), where=~good)
    # scale the weights per row to O(1) so float32 sums keep their precision
    scale = np.max(weight, axis=1, keepdims=True)
    weight /= np.where(scale > 0, scale, np.float32(1.0))
    weighted = np.where(good, flux, np.float32(0.0))
    weighted *= weight
    cont = gaussian_smooth(weighted, width_aa)  # the numerator, then the continuum
    del weighted
    den = gaussian_smooth(weight, width_aa)
    with np.errstate(invalid="ignore", divide="ignore"):
        cont /= den
    cont[~(den > 1e-6)] = np.nan
    return cont


def broad_shape(continuum: np.ndarray, good: np.ndarray, degree: int) -> np.ndarray:
    """exp(P(x)), x = 1 / lambda, P the least-squares polynomial of ``degree`` to
    ln(continuum) over the ``good`` pixels where the continuum is positive, per row, with
    every such pixel alike (so a factor exp(Q(x)), deg Q <= degree, on the continuum
    multiplies the shape by exactly that factor). A row with too few such pixels gets a
    flat shape (its median continuum, or 1). (n, n_pix) float32."""
    n, n_pix = continuum.shape
    x = 1e4 / wavelength_grid()[:n_pix]
    x = (x - x.mean()) / x.std()
    design = np.vander(x, degree + 1, increasing=True)  # (n_pix, degree + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        use = good & np.isfinite(continuum) & (continuum > 0)
        y = np.where(use, np.log(np.where(use, continuum, 1.0)), 0.0)
    w = use.astype(np.float64)
    normal = np.einsum("np,pk,pl->nkl", w, design, design)
    rhs = (w * y) @ design
    enough = use.sum(axis=1) > 4 * (degree + 1)
    coeff = np.zeros((n, degree + 1))
    if enough.any():
        coeff[enough] = np.linalg.solve(normal[enough], rhs[enough][..., None])[..., 0]
    for j in np.flatnonzero(~enough):
        if use[j].any():
            coeff[j, 0] = np.log(np.median(continuum[j, use[j]]))
    return np.exp(coeff @ design.T).astype(np.float32)


def normalize(
    flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray | None = None,
    width_aa: float = CONTINUUM_KERNEL_AA, rows_per_chunk: int = 256,
    weighting: str = "ivar", exclude: np.ndarray | None = None, shape_degree: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Continuum-normalised flux and its inverse variance, (n, n_pix) float32 each.

    norm_flux = f / c and norm_ivar = ivar c^2 (0 where the pixel is masked, has no
    data, or the continuum is not positive); norm_flux is NaN where it is undefined.
    ``weighting``, ``exclude``, ``shape_degree``: the pseudo-continuum's weights, the
    pixels left out of it and the broad shape divided out first (:func:`pseudo_continuum`);
    excluded pixels are normalised like the others.
    Rows are independent: they are done ``rows_per_chunk`` at a time, so that the
    temporaries stay in cache and their memory does not grow with the number of rows.
    """
    _check_weighting(weighting)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float32))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float32))
    mask = None if mask is None else np.atleast_2d(mask)
    norm_flux, norm_ivar = np.empty_like(flux), np.empty_like(ivar)
    for lo in range(0, flux.shape[0], rows_per_chunk):
        rows = slice(lo, lo + rows_per_chunk)
        m = None if mask is None else mask[rows]
        f, iv = flux[rows], ivar[rows]
        cont = pseudo_continuum(f, iv, m, width_aa, weighting, exclude, shape_degree)
        ok = np.isfinite(cont)
        ok &= cont > 0
        ok &= np.isfinite(f)
        nf, ni = norm_flux[rows], norm_ivar[rows]  # views
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(f, cont, out=nf)
            np.copyto(nf, np.float32(np.nan), where=~ok)
            np.multiply(cont, cont, out=cont)
            np.multiply(iv, cont, out=ni)
        ok &= iv > 0
        if m is not None:
            ok &= (m & UNUSABLE_MASK_BITS) == 0
        np.copyto(ni, np.float32(0.0), where=~ok)
    return norm_flux, norm_ivar
