"""Line-strength indices (equivalent widths) of hot-star lines at LAMOST resolution.

All wavelengths in this module are VACUUM Angstrom (LAMOST convention) unless a name
says ``air``. Fluxes may be in any unit (flux density per Angstrom); equivalent widths
are in Angstrom, positive for absorption.

Index definitions (``LINE_INDICES``)
------------------------------------
Each index has a central band and two pseudo-continuum windows. The continuum is the
straight line through the mean flux of the two windows, evaluated at the window
mid-points (as for the Lick indices, Worthey et al. 1994), and

    EW = integral over band of (1 - F / F_cont) dlambda      [Angstrom].

The windows were chosen for B/A stars at R ~ 1800 (FWHM ~ 2.2-3.6 AA over 4000-6600 AA):

* Balmer lines: in hot stars the Stark wings are tens of AA wide, so the bands are
  wide (+-31 AA for Hdelta and Hgamma, +-35 AA for Hbeta and Halpha). The continuum
  windows sit just beyond the band, avoid the neighbouring Balmer lines and the
  He I lines (4026, 4144, 4388, 4471, 4713, 4922, 6678) and, for Halpha, the
  6614 AA diffuse interstellar band. In A-type dwarfs the Balmer wings still depress
  the windows by a few per cent, so these are *pseudo*-equivalent widths: compare
  measured-to-measured (mock vs real), never to model total EWs.
* He I 4471: a narrow band (4465-4479 AA vac, i.e. -7.7/+6.3 AA about the line) that
  stops ~3 AA (1.2 FWHM at R=1800) short of Mg II 4481 (4482.5 AA vac), whose blue
  wing still leaks in slightly in late-B/A stars where He I is absent anyway.
  The red window (4487-4500) lies between Mg II 4481 and Ti II/Fe II 4501-4508.
* He I 4026 (blended with He II 4026 in O stars): +-7.5 AA band; the blue window lies
  between the Hepsilon wing and He I 4009, the red one before the Hdelta band.
* He II 4686: +-7 AA band; windows avoid C III/O II 4650-4662 and He I 4713.

Definitions (vacuum AA): see the table in ``LINE_INDICES``; the air wavelengths of the
line centres are from the NIST Atomic Spectra Database, converted with
:func:`air_to_vacuum`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

#: FWHM = FWHM_PER_SIGMA * sigma for a Gaussian.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class LineIndex:
    """A line-strength index: central band and two pseudo-continuum windows.

    Attributes
    ----------
    name : str
        Index name (key in ``LINE_INDICES``).
    center_vac_aa : float
        Vacuum wavelength of the line centre, AA.
    band : tuple of float
        (lo, hi) of the integration band, vacuum AA.
    blue_continuum, red_continuum : tuple of float
        (lo, hi) of the continuum windows, vacuum AA.
    """

    name: str
    center_vac_aa: float
    band: tuple[float, float]
    blue_continuum: tuple[float, float]
    red_continuum: tuple[float, float]

    def __post_init__(self) -> None:
        for w in (self.band, self.blue_continuum, self.red_continuum):
            if not w[0] < w[1]:
                raise ValueError(f"{self.name}: window {w} must have lo < hi")
        if not (
            self.blue_continuum[1] <= self.band[0]
            and self.band[1] <= self.red_continuum[0]
            and self.band[0] < self.center_vac_aa < self.band[1]
        ):
            raise ValueError(f"{self.name}: need blue continuum < band < red continuum")

    @property
    def wave_range(self) -> tuple[float, float]:
        """(lo, hi) vacuum AA spanned by the index including both continuum windows."""
        return (self.blue_continuum[0], self.red_continuum[1])


def air_to_vacuum(wave_air_aa: np.ndarray | float) -> np.ndarray:
    """Convert air wavelengths (AA) to vacuum wavelengths (AA).

    Uses the IAU standard refractive index of air (Morton 2000, ApJS 130, 403, eq. 8,
    after Edlen 1966 / Birch & Downs 1994) in the closed-form inversion of
    N. Piskunov (VALD3 documentation; also used by SDSS/IDL ``airtovac``)::

        s = 1e4 / lambda_air
        n = 1 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s^2)
              + 1.599740894897e-4 / (38.92568793293 - s^2)
        lambda_vac = n * lambda_air

    Wavelengths below 2000 AA are returned unchanged (by convention they are already
    vacuum). E.g. Halpha 6562.80 AA (air) -> 6564.61 AA (vacuum).
    """
    w = np.asarray(wave_air_aa, dtype=float)
    s2 = (1.0e4 / np.where(w > 0, w, np.nan)) ** 2
    n = (
        1.0
        + 8.336624212083e-5
        + 2.408926869968e-2 / (130.1065924522 - s2)
        + 1.599740894897e-4 / (38.92568793293 - s2)
    )
    return np.where(w >= 2000.0, w * n, w)


def vacuum_to_air(wave_vac_aa: np.ndarray | float) -> np.ndarray:
    """Convert vacuum wavelengths (AA) to air (AA); IAU / Morton (2000) eq. 8.

    ``n = 1 + 8.34254e-5 + 2.406147e-2/(130 - s^2) + 1.5998e-4/(38.9 - s^2)`` with
    ``s = 1e4/lambda_vac``; wavelengths below 2000 AA are returned unchanged.
    """
    w = np.asarray(wave_vac_aa, dtype=float)
    s2 = (1.0e4 / np.where(w > 0, w, np.nan)) ** 2
    n = 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)
    return np.where(w >= 2000.0, w / n, w)


def _air(x: float) -> float:
    return float(air_to_vacuum(x))


#: Line indices for hot stars at R ~ 1800 (vacuum AA). Centres: NIST air wavelengths.
LINE_INDICES: dict[str, LineIndex] = {
    idx.name: idx
    for idx in (
        LineIndex("Hdelta", _air(4101.734), (4072.0, 4134.0), (4040.0, 4060.0), (4152.0, 4168.0)),
        LineIndex("Hgamma", _air(4340.462), (4310.0, 4374.0), (4272.0, 4292.0), (4398.0, 4418.0)),
        LineIndex("Hbeta", _air(4861.323), (4828.0, 4898.0), (4795.0, 4815.0), (4935.0, 4955.0)),
        LineIndex("Halpha", _air(6562.797), (6530.0, 6600.0), (6490.0, 6515.0), (6620.0, 6645.0)),
        LineIndex("HeI4471", _air(4471.479), (4465.0, 4479.0), (4445.0, 4460.0), (4487.0, 4500.0)),
        LineIndex("HeI4026", _air(4026.191), (4020.0, 4035.0), (4000.0, 4007.0), (4040.0, 4052.0)),
        LineIndex("HeII4686", _air(4685.710), (4680.0, 4694.0), (4665.0, 4675.0), (4698.0, 4708.0)),
    )
}

#: The Balmer-line indices in ``LINE_INDICES``.
BALMER_INDICES: tuple[str, ...] = ("Hdelta", "Hgamma", "Hbeta", "Halpha")


def pixel_edges(wave_aa: np.ndarray) -> np.ndarray:
    """Pixel edges (n+1,) of a strictly increasing grid of pixel centres (n,), AA.

    Interior edges are the mid-points between centres; the outer edges are
    extrapolated by half a pixel. (For a log-uniform grid the arithmetic mid-point
    differs from the geometric one by < 1e-9 relative: negligible.)
    """
    w = np.asarray(wave_aa, dtype=float)
    if w.ndim != 1 or w.size < 2:
        raise ValueError("wave_aa must be 1-D with at least 2 pixels")
    if not np.all(np.diff(w) > 0):
        raise ValueError("wave_aa must be strictly increasing")
    mid = 0.5 * (w[1:] + w[:-1])
    return np.concatenate(([w[0] - (mid[0] - w[0])], mid, [w[-1] + (w[-1] - mid[-1])]))


def _overlap_weights(edges: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Length (AA) of the overlap of each pixel [edges[i], edges[i+1]] with [lo, hi]."""
    return np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)


def equivalent_width(
    wave_aa: np.ndarray, flux: np.ndarray, index: LineIndex | str
) -> np.ndarray | float:
    """Equivalent width (AA, positive for absorption) of ``index``.

    Parameters
    ----------
    wave_aa : (n_pix,) array
        Strictly increasing vacuum wavelengths of the pixel centres, AA (any sampling;
        pixels are integrated with fractional overlap at the window edges).
    flux : (n_pix,) or (n_spec, n_pix) array
        Flux density per AA (any unit; normalised or not).
    index : LineIndex or str
        Index definition or a key of ``LINE_INDICES``.

    Returns
    -------
    EW in AA: a float for 1-D ``flux``, an (n_spec,) array for 2-D. NaN where a window is
    not fully covered by the grid or contains a non-finite pixel, or where the
    continuum is not positive.

    Notes
    -----
    The continuum is the straight line through (mid-point, mean flux) of the blue and
    red windows; the mean is the pixel-overlap-weighted mean flux density.
    """
    if isinstance(index, str):
        index = LINE_INDICES[index]
    wave, f2, one_d = _rows_on_grid(wave_aa, flux)
    n_spec = f2.shape[0]
    edges = pixel_edges(wave)
    lo_all, hi_all = index.wave_range
    if lo_all < edges[0] or hi_all > edges[-1]:
        out = np.full(n_spec, np.nan)
        return float(out[0]) if one_d else out

    def window_mean(win: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        wt = _overlap_weights(edges, *win)
        sel = wt > 0
        sub = f2[:, sel]
        bad = ~np.all(np.isfinite(sub), axis=1)
        mean = np.where(bad[:, None], 0.0, sub) @ wt[sel] / wt[sel].sum()
        return mean, bad

    fb, bad_b = window_mean(index.blue_continuum)
    fr, bad_r = window_mean(index.red_continuum)
    xb = 0.5 * sum(index.blue_continuum)
    xr = 0.5 * sum(index.red_continuum)

    wt = _overlap_weights(edges, *index.band)
    sel = wt > 0
    wb = wave[sel]
    sub = f2[:, sel]
    bad = bad_b | bad_r | ~np.all(np.isfinite(sub), axis=1)
    cont = fb[:, None] + (fr - fb)[:, None] * ((wb - xb) / (xr - xb))[None, :]
    bad |= ~np.all(cont > 0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ew = (1.0 - np.where(bad[:, None], 0.0, sub) / np.where(bad[:, None], 1.0, cont)) @ wt[sel]
    ew = np.where(bad, np.nan, ew)
    return float(ew[0]) if one_d else ew


def equivalent_widths(
    wave_aa: np.ndarray, flux: np.ndarray, names: tuple[str, ...] | None = None
) -> dict[str, np.ndarray | float]:
    """EWs (AA) of several indices (default: all of ``LINE_INDICES``), keyed by name."""
    names = tuple(LINE_INDICES) if names is None else names
    return {n: equivalent_width(wave_aa, flux, LINE_INDICES[n]) for n in names}


def _rows_on_grid(wave_aa: np.ndarray, flux: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(wave, flux as 2-D rows, whether the input was 1-D), checking the shapes agree."""
    wave = np.asarray(wave_aa, dtype=float)
    f = np.asarray(flux, dtype=float)
    f2 = np.atleast_2d(f)
    if f2.ndim != 2 or f2.shape[-1] != wave.size:
        raise ValueError(f"flux shape {f.shape} does not match wave ({wave.size},)")
    return wave, f2, f.ndim == 1


def degrade_resolution(
    wave_aa: np.ndarray,
    flux: np.ndarray,
    fwhm_in: float,
    target_R: float = 1800.0,
    *,
    input_kind: Literal["fwhm_aa", "R"] = "fwhm_aa",
    n_sigma: float = 5.0,
) -> np.ndarray:
    """Convolve spectra to constant resolving power ``target_R`` (Gaussian LSF).

    Parameters
    ----------
    wave_aa : (n_pix,) array
        Strictly increasing wavelengths of the pixel centres, AA (any sampling).
    flux : (n_pix,) or (n_spec, n_pix) array
        Flux density per AA.
    fwhm_in : float
        Resolution of the input: its constant FWHM in AA (``input_kind="fwhm_aa"``,
        e.g. 2.5 for MILES) or its constant resolving power (``input_kind="R"``).
    target_R : float
        Output resolving power lambda / FWHM.
    n_sigma : float
        Kernel truncation, in kernel sigmas.

    Returns
    -------
    Flux on the input grid, same shape as ``flux``.

    Notes
    -----
    The kernel FWHM needed at each wavelength is
    ``sqrt((lambda/target_R)^2 - FWHM_in(lambda)^2)``; it varies with lambda both in AA
    and in log lambda (constant-AA input, constant-R output), so the convolution is
    done exactly with a per-output-pixel Gaussian ("gather" form):
    ``out_i = sum_j K_i(lambda_j - lambda_i) F_j dlambda_j / sum_j K_i(...) dlambda_j``.
    Where the input is already at or below the target resolution (e.g. MILES, 2.5 AA,
    below 4500 AA at R=1800) the flux is returned unchanged there (a debug message is
    logged): resolution cannot be improved. Non-finite input pixels are excluded
    from the sums and stay non-finite in the output.
    """
    wave, f2, one_d = _rows_on_grid(wave_aa, flux)
    if input_kind == "fwhm_aa":
        fwhm_in_aa = np.full_like(wave, float(fwhm_in))
    elif input_kind == "R":
        fwhm_in_aa = wave / float(fwhm_in)
    else:
        raise ValueError(f"unknown input_kind {input_kind!r}")
    fwhm_out = wave / float(target_R)
    k2 = fwhm_out**2 - fwhm_in_aa**2
    sigma = np.sqrt(np.clip(k2, 0.0, None)) / FWHM_PER_SIGMA  # AA, per output pixel
    if np.any(k2 < 0):
        logger.debug(
            "input resolution coarser than R=%g over %.0f-%.0f AA: left unchanged there",
            target_R,
            wave[k2 < 0].min(),
            wave[k2 < 0].max(),
        )
    dlam = np.diff(pixel_edges(wave))
    active = sigma > 0.05 * dlam  # narrower kernels are a no-op at this sampling
    if not np.any(active):
        return (f2[0] if one_d else f2).copy()
    half = int(np.ceil(n_sigma * np.max(sigma[active] / dlam[active]))) + 1

    good = np.isfinite(f2)
    fz = np.where(good, f2, 0.0) * dlam
    gz = good * dlam
    num = np.zeros_like(f2)
    den = np.zeros_like(f2)
    n = wave.size
    inv2s2 = np.where(active, 0.5 / np.where(active, sigma, 1.0) ** 2, 0.0)
    for k in range(-half, half + 1):
        # output pixel i gathers input pixel j = i + k
        i0, i1 = max(0, -k), min(n, n - k)
        if i0 >= i1:
            continue
        dl = wave[i0 + k : i1 + k] - wave[i0:i1]
        w = np.exp(-(dl**2) * inv2s2[i0:i1])
        w = np.where(active[i0:i1] | (k == 0), w, 0.0)
        w = np.where(np.abs(dl) <= n_sigma * sigma[i0:i1] + (k == 0), w, 0.0)
        num[:, i0:i1] += w * fz[:, i0 + k : i1 + k]
        den[:, i0:i1] += w * gz[:, i0 + k : i1 + k]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    out = np.where(good, out, f2)
    return out[0] if one_d else out


def resample_to_loglam(
    wave_aa: np.ndarray,
    flux: np.ndarray,
    log10_start: float = 3.5682,
    log10_step: float = 1e-4,
    n_pix: int = 3909,
    *,
    method: Literal["linear", "flux"] = "linear",
) -> tuple[np.ndarray, np.ndarray]:
    """Resample spectra onto a log10-uniform grid (default: the LAMOST grid).

    Parameters
    ----------
    wave_aa : (n_pix_in,) array
        Strictly increasing input wavelengths, AA (must already be in the frame and
        medium, vacuum for LAMOST, of the target grid).
    flux : (n_pix_in,) or (n_spec, n_pix_in) array
        Flux density per AA.
    log10_start, log10_step, n_pix : grid ``log10(lambda/AA) = start + step * i``.
    method : "linear" or "flux"
        "linear": linear interpolation at the output pixel centres (appropriate for
        well-sampled spectra, e.g. after :func:`degrade_resolution`). "flux": the mean
        flux density over each output pixel (flux-conserving; piecewise-constant
        input model).

    Returns
    -------
    (wave_out, flux_out): vacuum AA (n_pix,) and flux (same leading shape as input).
    Output pixels not fully inside the input coverage are NaN.
    """
    wave, f2, one_d = _rows_on_grid(wave_aa, flux)
    wave_out = 10.0 ** (log10_start + log10_step * np.arange(n_pix))
    if method == "linear":
        j = np.clip(np.searchsorted(wave, wave_out) - 1, 0, wave.size - 2)
        t = (wave_out - wave[j]) / (wave[j + 1] - wave[j])
        out = f2[:, j] * (1.0 - t) + f2[:, j + 1] * t
        outside = (wave_out < wave[0]) | (wave_out > wave[-1])
    elif method == "flux":
        e_in = pixel_edges(wave)
        e_out = 10.0 ** (log10_start + log10_step * (np.arange(n_pix + 1) - 0.5))
        cum = np.concatenate(
            [np.zeros((f2.shape[0], 1)), np.cumsum(f2 * np.diff(e_in), axis=1)], axis=1
        )
        j = np.clip(np.searchsorted(e_in, e_out) - 1, 0, wave.size - 1)
        t = np.clip((e_out - e_in[j]) / (e_in[j + 1] - e_in[j]), 0.0, 1.0)
        cum_out = cum[:, j] * (1.0 - t) + cum[:, j + 1] * t
        out = np.diff(cum_out, axis=1) / np.diff(e_out)
        outside = (e_out[:-1] < e_in[0]) | (e_out[1:] > e_in[-1])
        # a non-finite input pixel poisons the cumulative sum: mask what it touches
        bad_in = ~np.isfinite(f2)
        if np.any(bad_in):
            cbad = np.concatenate([np.zeros((f2.shape[0], 1)), np.cumsum(bad_in, axis=1)], axis=1)
            jl = np.clip(np.searchsorted(e_in, e_out[:-1], side="right") - 1, 0, wave.size - 1)
            jr = np.clip(np.searchsorted(e_in, e_out[1:], side="left"), 1, wave.size)
            touched = (cbad[:, jr] - cbad[:, jl]) > 0
            out = np.where(touched, np.nan, out)
    else:
        raise ValueError(f"unknown method {method!r}")
    out = np.where(outside[None, :], np.nan, out)
    return wave_out, (out[0] if one_d else out)
