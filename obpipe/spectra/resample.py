"""Flux-conserving rebinning of a spectrum onto the common grid (pure numpy).

A spectrum is a set of pixels, each the mean flux density over its wavelength
bin. Rebinning onto new bins keeps that meaning: the flux in a new bin is the
overlap-weighted mean of the old bins it covers, so the integral of the flux
density over any range made of whole bins is conserved (unlike interpolation,
which conserves neither flux nor noise). The variance propagates with the squared
weights: for a new bin ``j`` made of old pixels ``i`` with overlaps ``L_ij``
(in AA),

    f_j = sum_i L_ij f_i / sum_i L_ij,     var_j = sum_i L_ij^2 var_i / (sum_i L_ij)^2.

Bin edges are the midpoints in log10(lambda) between pixel centres (the LAMOST
pixels are uniform in log10 lambda); the overlaps are measured in AA.

Masks are never interpolated into good pixels: a new bin that overlaps a bad old
pixel (``ivar <= 0``, non-finite flux, or a ``bad_bits`` mask bit), by more than
a tolerance that absorbs floating-point slivers, gets ``ivar = 0`` and the old
pixel's bits; a bin not fully covered by the old spectrum gets ``ivar = 0`` and
the ``no_coverage`` bit. Informational bits (sky, telluric) are OR-ed into the
new bins they touch without changing the ivar.
"""

from __future__ import annotations

import functools

import numpy as np

from obpipe.io.store import MASK_BITS
from obpipe.spectra.grid import SPEED_OF_LIGHT_KMS, wavelength_grid

#: mask bits that make a pixel unusable (ivar = 0 on output)
BAD_BITS = MASK_BITS["bad_pixel"] | MASK_BITS["no_coverage"]
#: overlaps shorter than this fraction of a new bin are floating-point slivers
SLIVER_TOL = 1e-6


@functools.cache
def _default_grid_edges() -> tuple[np.ndarray, np.ndarray]:
    edges = bin_edges(wavelength_grid())
    edges.flags.writeable = False
    width = np.diff(edges)
    width.flags.writeable = False
    return edges, width


def bin_edges(wave_aa: np.ndarray) -> np.ndarray:
    """Bin edges (AA, length n + 1) of pixels centred at ``wave_aa`` (ascending, n >= 2).

    Edges are the log10-midpoints between centres; the outer edges are placed
    half a (log) pixel beyond the first and last centres.
    """
    lw = np.log10(np.asarray(wave_aa, dtype=np.float64))
    mid = 0.5 * (lw[1:] + lw[:-1])
    edges = np.concatenate(([2.0 * lw[0] - mid[0]], mid, [2.0 * lw[-1] - mid[-1]]))
    return 10.0**edges


def rest_frame_wavelength(wave_obs_aa: np.ndarray, z: float) -> np.ndarray:
    """Rest-frame wavelength (AA) of observed wavelengths for a redshift ``z``: lambda / (1 + z)."""
    return np.asarray(wave_obs_aa, dtype=np.float64) / (1.0 + z)


def redshift_to_rv(z: float) -> float:
    """Radial velocity in km/s of a (LAMOST, non-relativistic) redshift: v = c z."""
    return float(z) * SPEED_OF_LIGHT_KMS


def rebin_spectrum(
    wave_aa: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    mask: np.ndarray | None = None,
    grid_aa: np.ndarray | None = None,
    bad_bits: int = BAD_BITS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rebin one spectrum onto ``grid_aa`` (default: the common grid), conserving flux.

    Parameters
    ----------
    wave_aa : (n,) pixel centres in AA, strictly increasing (rest frame if the output is).
    flux : (n,) flux density (any unit per AA; output has the same unit).
    ivar : (n,) inverse variance of ``flux`` (unit**-2); <= 0 or non-finite means no data.
    mask : (n,) uint8 bits of :data:`obpipe.io.store.MASK_BITS` (None = all zero).
    grid_aa : (m,) output pixel centres in AA, strictly increasing.
    bad_bits : bits of ``mask`` that make a pixel unusable.

    Returns
    -------
    flux (m,) float32, ivar (m,) float32, mask (m,) uint8 on the output grid. Pixels
    not usable have ``ivar = 0``; their flux is the mean of whatever finite input
    covers them (0 where nothing does).

    Raises ``ValueError`` if the input wavelengths are not finite and strictly increasing.
    """
    wave = np.asarray(wave_aa, dtype=np.float64)
    f = np.asarray(flux, dtype=np.float64)
    iv = np.asarray(ivar, dtype=np.float64)
    m_in = np.zeros(wave.size, np.uint8) if mask is None else np.asarray(mask, dtype=np.uint8)
    if not (wave.ndim == 1 and f.shape == wave.shape == iv.shape == m_in.shape):
        raise ValueError(
            f"wave, flux, ivar and mask must be 1-D of one length, got {wave.shape}, "
            f"{f.shape}, {iv.shape}, {m_in.shape}"
        )
    if wave.size < 2 or not np.all(np.isfinite(wave)) or np.any(np.diff(wave) <= 0):
        raise ValueError("wavelengths must be finite and strictly increasing (>= 2 pixels)")
    if grid_aa is None:
        e_out, width = _default_grid_edges()
    else:
        e_out = bin_edges(np.asarray(grid_aa, dtype=np.float64))
        width = np.diff(e_out)
    e_in = bin_edges(wave)
    n, m = wave.size, width.size

    # every segment between consecutive edges of either grid belongs to one old and one new
    # bin: merge the two sorted edge lists and count how many edges of each precede a segment
    both = np.concatenate((e_in, e_out))
    order = np.argsort(both, kind="stable")
    edges = both[order]
    from_in = order <= n
    i = np.cumsum(from_in)[:-1] - 1
    j = np.cumsum(~from_in)[:-1] - 1
    seg_len = np.diff(edges)
    keep = (i >= 0) & (i < n) & (j >= 0) & (j < m)
    i, j, seg_len = i[keep], j[keep], seg_len[keep]
    keep = seg_len > SLIVER_TOL * width[j]
    i, j, seg_len = i[keep], j[keep], seg_len[keep]

    finite = np.isfinite(f)
    good_in = finite & np.isfinite(iv) & (iv > 0) & ((m_in & bad_bits) == 0)
    g = good_in[i]
    covered = np.bincount(j, seg_len, minlength=m)
    bad_len = np.bincount(j, seg_len * ~g, minlength=m)
    w_good = np.bincount(j, seg_len * g, minlength=m)
    with np.errstate(divide="ignore", invalid="ignore"):
        var_in = np.where(good_in, 1.0 / np.where(good_in, iv, 1.0), 0.0)
        f_good = np.bincount(j, np.where(g, seg_len * f[i], 0.0), minlength=m) / w_good
        var_out = np.bincount(j, np.where(g, seg_len**2 * var_in[i], 0.0), minlength=m) / w_good**2
        fin = finite[i]
        w_fin = np.bincount(j, seg_len * fin, minlength=m)
        f_any = np.bincount(j, np.where(fin, seg_len * f[i], 0.0), minlength=m) / w_fin
    full = covered >= (1.0 - SLIVER_TOL) * width
    usable = full & (bad_len <= SLIVER_TOL * width) & (w_good > 0)

    out_mask = np.zeros(m, np.uint8)
    flagged = m_in[i] != 0
    if flagged.any():
        np.bitwise_or.at(out_mask, j[flagged], m_in[i][flagged])
    # bad input pixels without a bad bit (ivar = 0 or NaN flux) still mark the output as bad
    unflagged_bad = np.zeros(m, bool)
    unflagged_bad[j[~g & ((m_in[i] & bad_bits) == 0)]] = True
    out_mask[unflagged_bad & full] |= MASK_BITS["bad_pixel"]
    out_mask[~full] |= MASK_BITS["no_coverage"]

    out_flux = np.where(usable, f_good, np.where(w_fin > 0, f_any, 0.0))
    out_ivar = np.where(usable, 1.0 / np.where(usable, var_out, 1.0), 0.0)
    return out_flux.astype(np.float32), out_ivar.astype(np.float32), out_mask


def rebin_loglinear(
    log10_start: float,
    log10_step: float,
    flux: np.ndarray,
    ivar: np.ndarray,
    mask: np.ndarray | None = None,
    grid_log10_start: float | None = None,
    grid_log10_step: float | None = None,
    grid_size: int | None = None,
    bad_bits: int = BAD_BITS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Fast path of :func:`rebin_spectrum` for a log-linear input on the grid's log step.

    The input pixel ``i`` is centred at ``log10(lambda) = log10_start + log10_step i``
    (LAMOST ``COEFF0``/``COEFF1``, shifted to the rest frame); the output grid
    (default: the common grid) is log-linear with the same step. Then every output
    pixel overlaps at most two input pixels, ``i - 1`` and ``i``, with the same
    fractions for every pixel (a fractional-pixel shift): ``w_left = (10**(s t) - 1)
    / (10**s - 1)`` of the output bin (in AA), ``t`` the fractional shift. The rules
    are exactly those of :func:`rebin_spectrum` (same overlap weights, sliver
    tolerance, mask propagation, coverage), vectorised over the two neighbours; the
    results agree with it to float32 rounding.

    Returns None when the steps differ by more than a 1e-7-pixel drift over the
    spectrum (use :func:`rebin_spectrum`).
    """
    from obpipe.spectra.grid import GridConfig

    if grid_log10_start is None or grid_log10_step is None or grid_size is None:
        g = GridConfig()
        grid_log10_start, grid_log10_step, grid_size = g.log10_start, g.log10_step, g.n_pixels
    f = np.asarray(flux, dtype=np.float64)
    iv = np.asarray(ivar, dtype=np.float64)
    n, m = f.size, int(grid_size)
    m_in = np.zeros(n, np.uint8) if mask is None else np.asarray(mask, dtype=np.uint8)
    s = float(grid_log10_step)
    if (n < 2 or iv.shape != f.shape or m_in.shape != f.shape or f.ndim != 1
            or not np.isfinite(log10_start) or not log10_step > 0
            or abs(log10_step - s) * max(n, m) > 1e-7 * s):
        return None
    # position of input pixel 0 in output pixel units, d = p + t with 0 <= t < 1: input
    # pixel i covers output coordinates [i + d - 1/2, i + d + 1/2], so output j overlaps
    # input j - p - 1 on [j - 1/2, j + t - 1/2] and input j - p on [j + t - 1/2, j + 1/2]
    d = (float(log10_start) - float(grid_log10_start)) / s
    p = int(np.floor(d))
    t = d - p
    q = 10.0**s
    w_left = (10.0 ** (s * t) - 1.0) / (q - 1.0)  # fraction of the output bin, in AA
    w_right = (q - 10.0 ** (s * t)) / (q - 1.0)

    # a floating-point sliver of an overlap is dropped, as in rebin_spectrum
    wl = w_left if w_left > SLIVER_TOL else 0.0
    wr = w_right if w_right > SLIVER_TOL else 0.0
    finite = np.isfinite(f)
    good_in = np.isfinite(iv)
    good_in &= iv > 0
    good_in &= finite
    if mask is not None:
        good_in &= (m_in & bad_bits) == 0
    # padded rows: element k is input pixel k - p - 1, so output j reads its left
    # neighbour (overlap wl) at [j] and its right one (overlap wr) at [j + 1]; absent
    # pixels are zero. Every output bin overlaps only these two, so each sum of
    # rebin_spectrum is two products (the same floating-point operations, in the same
    # order, as a sum over overlap segments), and its conditions are per-neighbour tests.
    lo, hi = max(0, p + 1), min(m + 1, n + p + 1)
    f_fin = np.zeros(m + 1)  # flux where finite
    fin = np.zeros(m + 1)  # 1.0 where finite
    var = np.zeros(m + 1)  # 1 / ivar where good
    good = np.zeros(m + 1, bool)
    mk = np.zeros(m + 1, np.uint8)
    unfl = np.zeros(m + 1, bool)  # bad input pixels without a bad bit (ivar = 0, NaN flux)
    present = np.zeros(m + 1, bool)
    if hi > lo:
        src = slice(lo - p - 1, hi - p - 1)
        present[lo:hi] = True
        g_s, fin_s = good_in[src], finite[src]
        np.copyto(f_fin[lo:hi], f[src], where=fin_s)
        fin[lo:hi] = fin_s
        with np.errstate(divide="ignore"):
            np.divide(1.0, iv[src], out=var[lo:hi], where=g_s)
        good[lo:hi] = g_s
        if mask is not None:
            mk[lo:hi] = m_in[src]
            unfl[lo:hi] = ~g_s & ((m_in[src] & bad_bits) == 0)
        else:
            unfl[lo:hi] = ~g_s
    # coverage and bad-overlap length take only a few values (which neighbours are
    # present / bad), so their tests are per neighbour: a bin is fully covered when its
    # overlapping neighbours are all present (the overlaps sum to the bin up to
    # rounding; the sums are formed as rebin_spectrum forms them), and usable when they
    # are all good (an overlap is either 0 or longer than the sliver tolerance)
    full = np.ones(m, bool)
    usable = np.ones(m, bool)
    out_mask = np.zeros(m, np.uint8)
    unflagged_bad = np.zeros(m, bool)
    for w, side in ((wl, slice(0, m)), (wr, slice(1, m + 1))):
        if w:
            full &= present[side]
            usable &= good[side]
            out_mask |= mk[side]
            unflagged_bad |= unfl[side]
    if not (wl + wr >= 1.0 - SLIVER_TOL):  # pragma: no cover - the overlaps sum to 1
        full[:] = False
    usable &= full
    out_mask[unflagged_bad & full] |= MASK_BITS["bad_pixel"]
    out_mask[~full] |= MASK_BITS["no_coverage"]
    # flux: the overlap-weighted mean of the finite neighbours (for a usable bin these
    # are its good neighbours: the same sums as the mean of the good ones)
    sum_fin = wl * f_fin[:m]
    sum_fin += wr * f_fin[1:]
    w_fin = wl * fin[:m]
    w_fin += wr * fin[1:]
    flux_out = np.zeros(m)
    np.divide(sum_fin, w_fin, out=flux_out, where=w_fin > 0)
    # ivar of a usable bin: (sum of overlaps)**2 / sum of overlap**2 * variance
    sum_var = (wl * wl) * var[:m]
    sum_var += (wr * wr) * var[1:]
    ivar_out = np.zeros(m)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(sum_var, w_fin * w_fin, out=sum_var)
        np.divide(1.0, sum_var, out=ivar_out, where=usable)
    return flux_out.astype(np.float32), ivar_out.astype(np.float32), out_mask
