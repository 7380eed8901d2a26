"""Measurement (aleatoric) and intrinsic (epistemic) uncertainty of M_Ks (Sec. 5.3, eqs. 7-14).

Model (the paper's):

* mean spectroscopic magnitude linear in the geometric one,
  ``Mbar_s = (1 + eps) M_g + delta``                                        (7)
* intrinsic scatter ``M_s ~ G(Mbar_s, sigma_int)``                          (8)
* measurement scatter ``M_o ~ G(M_s, sigma_s)``                             (9)
  with ``sigma_s = sigma_s100 / ((S/N) / 100)``                             (10)
* geometric magnitude ``M_g = m0 + 5 log10(plx) - 10`` with the error of
  eqs. (11)-(12) (``MKs_geo_err`` of the photometry stage),
* so that each star contributes the Gaussian likelihood                     (14)
  ``G(M_o - [(1 + eps) M_g + delta],
      sqrt(sigma_int^2 + sigma_s^2 + sigma_geo^2))``
  and the posterior is their product times flat priors                      (13).

The posterior is sampled with ``emcee`` (vectorised log-probability). Binaries are
removed iteratively, as in the paper: stars whose spectroscopic M_Ks is more than
``clip_sigma`` (2) standard deviations fainter than the model (geometric brighter:
the binary direction; ``clip="both"`` clips both sides) are dropped and the
parameters re-fitted until the kept set no longer changes. The clipping iterations
use the maximum-likelihood point (fast, deterministic); the MCMC runs on the final
set, with differential-evolution moves (``emcee.moves.DEMove``). Convergence: the chain
must be longer than ``50 tau`` (integrated autocorrelation time of every parameter) with
a mean acceptance fraction within 0.15-0.8; otherwise it is extended up to ``max_steps``
and flagged.

Per-spectrum uncertainty of M_Ks: ``sqrt(sigma_int^2 + (sigma_s100 / (S/N / 100))^2)``
(:func:`mks_uncertainty`). Beyond the paper (issue 15): eq. (10) is fitted on
good-parallax stars, few of which lie below S/N 50, so the stage replaces its sigma_s by
one measured on held-out high-S/N spectra degraded to S/N 5-100
(:func:`degraded_snr_scatter`, :func:`sigma_s_from_table`) and keeps eq. (14)'s sigma_int.
Eq. (14)'s sample (good parallaxes) holds few of the distant, reddened, luminous stars, whose
errors that sigma_int leaves too small; :func:`fit_extra_scatter` measures an extra term for
them, ``sigma_extra = k E(B-V)`` at M_Ks < -3, from their parallaxes (eqs. 15-17's
parallax space), together with a constant term for every spectrum (eq. 14's sigma_int is
measured about the fitted line of eq. 7, and left the brightest spectra's errors ~25 % too
small); :func:`fit_broken_scatter` measures the error of spectra flagged broken (App. A)
from theirs; :func:`extra_error_mag` applies the three.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from obpipe.stats import least_squares_slope, robust_std

log = logging.getLogger(__name__)

PARAM_NAMES = ("eps", "delta", "sigma_int", "sigma_s100")
PARAM_LABELS = (r"$\varepsilon$", r"$\delta$", r"$\sigma_{\rm int}$", r"$\sigma_s^{100}$")
#: flat prior bounds (eq. 13): eps, delta (mag), sigma_int (mag), sigma_s100 (mag)
DEFAULT_PRIOR_BOUNDS: tuple[tuple[float, float], ...] = (
    (-1.0, 1.0), (-5.0, 5.0), (0.0, 3.0), (0.0, 3.0),
)
FORMAT_VERSION = 1
#: S/N levels of :func:`degraded_snr_scatter` (the LAMOST OB range, 5-100)
DEGRADE_SNR: tuple[float, ...] = (5.0, 8.0, 12.0, 17.0, 25.0, 35.0, 50.0, 70.0, 100.0)
#: spectra degraded per S/N level of :func:`degraded_snr_scatter`: the standard error of
#: the measured sigma_s is then ~ sqrt(1 / (2 x 600)) = 3 % (sigma_err_mag says it per
#: level), small beside the 0.85-1.2 band of the pulls (up to 2,000 per level before)
DEGRADE_PER_LEVEL = 600
#: smallest attenuation :func:`deshrink` divides by (a reading moved by at most 1 / this)
MIN_ATTENUATION = 0.5
#: the stars that get :func:`fit_extra_scatter`'s term: catalog M_Ks brighter than this (mag).
#: Chosen on the mock's truth (``benchmarks/mks_tails.py``: pull std 1.5-1.9 at E(B-V) > 1 and
#: M_Ks < -3, 1.0-1.2 elsewhere); fitted without it (docs/validation.md)
EXTRA_SCATTER_MAX_MKS = -3.0
#: E(B-V) bin edges (mag) of :func:`fit_extra_scatter`'s per-cell M_Ks offsets
EXTRA_SCATTER_EBV_EDGES: tuple[float, ...] = (0.5, 1.0, 2.0)
_K_PLX = 0.2 * np.log(10.0)  # d ln(parallax) / d M_Ks (eq. 17)


def mks_uncertainty(snr: np.ndarray, sigma_int: float, sigma_s100: float,
                    epistemic_mag: np.ndarray | None = None,
                    sigma_s_table: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Total M_Ks uncertainty (mag), eqs. (8)-(10): sqrt(sigma_int^2 + sigma_s^2).

    ``epistemic_mag`` (beyond the paper): the per-star spread of the network ensemble,
    added in quadrature (a star far from the training set gets a larger error; the
    noise model fitted with the same term then leaves sigma_int for what no member sees).
    ``sigma_s_table`` (beyond the paper, issue 15): (S/N, sigma_s in mag) measured on
    degraded held-out spectra (:func:`degraded_snr_scatter`); replaces eq. (10)'s
    ``sigma_s100 / (S/N / 100)`` through :func:`sigma_s_from_table`.
    """
    snr = np.asarray(snr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if sigma_s_table is not None:
            sigma_s = sigma_s_from_table(snr, *sigma_s_table)
        else:
            sigma_s = sigma_s100 / (snr / 100.0)
    var = sigma_int**2 + sigma_s**2
    if epistemic_mag is not None:
        var = var + np.nan_to_num(np.asarray(epistemic_mag, dtype=np.float64)) ** 2
    out = np.sqrt(var)
    return np.where(np.isfinite(snr) & (snr > 0), out, np.nan)


def extra_scatter_mag(ebv: np.ndarray, mks: np.ndarray, slope_mag_per_ebv: float,
                      max_mks: float = EXTRA_SCATTER_MAX_MKS) -> np.ndarray:
    """Extra M_Ks error term (mag) of the luminous reddened stars (beyond the paper, issue 15):
    ``slope_mag_per_ebv * max(E(B-V), 0)`` where M_Ks < ``max_mks``, else 0 (also where
    E(B-V) or M_Ks is missing: NaN or the -9 flag). Added in quadrature to
    :func:`mks_uncertainty`; the slope comes from :func:`fit_extra_scatter`."""
    e = np.asarray(ebv, dtype=np.float64)
    m = np.asarray(mks, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        on = np.isfinite(e) & (e > -9) & np.isfinite(m) & (m > -9) & (m < max_mks)
    return np.where(on, float(slope_mag_per_ebv) * np.clip(np.nan_to_num(e), 0.0, None), 0.0)


def fit_extra_scatter(mks: np.ndarray, mks_err: np.ndarray, ks0: np.ndarray,
                      ks0_err: np.ndarray, plx_mas: np.ndarray, plx_err_mas: np.ndarray,
                      ebv: np.ndarray, max_mks: float = EXTRA_SCATTER_MAX_MKS,
                      ebv_edges: tuple[float, ...] = EXTRA_SCATTER_EBV_EDGES,
                      clip_sigma: float = 2.0, clip_upper_sigma: float = 3.0,
                      min_group: int = 30, max_iter: int = 30, fit_constant: bool = True
                      ) -> dict[str, Any]:
    """Fit the slope k of ``sigma_extra = k E(B-V)`` (M_Ks < ``max_mks``) from parallaxes,
    and (``fit_constant``) a term ``sigma_const`` that every spectrum gets in quadrature.

    Eq. (14) in parallax space (the variable of eqs. 15-17, where a poor or negative
    parallax still counts with its own weight): the corrected parallax of each star is
    ``plx_s 10^(-0.2 delta_c)`` (``plx_s``: eq. 15 from its spectroscopic M_Ks and
    dereddened Ks0; ``delta_c``: an M_Ks offset per cell of E(B-V) bins ``ebv_edges`` x
    {M_Ks < ``max_mks``, not}, since the targets' biases differ by cell and absorb what
    the zero-point correction left; a free parallax offset as well would trade against
    them: within a cell of E(B-V), i.e. of distance, ``plx_s`` spans little beside its
    own noise, so a line with an intercept is diluted) with variance
    ``plx_err^2 + (0.2 ln10 plx_s)^2 (mks_err^2 + sigma_const^2 + sigma_extra^2 +
    ks0_err^2)`` (eq. 17). ``sigma_const`` (issue 15's pull std 1.24-1.27 at S/N > 200):
    eq. (14)'s sigma_int is the scatter about the fitted line ``(1 + eps) M_g + delta``
    (eq. 7), whose slope absorbs part of the scatter, and the stage pairs it with a sigma_s
    measured on degraded spectra rather than eq. (14)'s own sigma_s100; the M_Ks errors of
    the brightest spectra, ~sigma_int, are then too small. Here the scatter is measured
    about M_Ks itself (cell offsets only), as the catalog's error must describe it.
    ``mks`` / ``mks_err`` must be out of fold (never from a member that saw the star). As
    in the paper's fit, binaries are clipped iteratively: stars more than ``clip_sigma``
    below the model (the parallax of a binary is smaller than its spectro-photometric one)
    or ``clip_upper_sigma`` above; the likelihood of the kept stars is the Gaussian
    truncated at those bounds, so that the clipping does not shrink the fitted scatter.
    Maximum likelihood (L-BFGS-B, k >= 0); the error of k from the curvature of the
    profile likelihood. Non-finite rows are ignored.

    Returns ``slope_mag_per_ebv``, ``slope_err``, ``sigma_const_mag`` (0 without
    ``fit_constant``), ``sigma_const_err``, ``max_mks``, ``ebv_edges``,
    ``offsets_mag`` (per cell, E(B-V) bins for M_Ks < max_mks
    then the rest), ``n_input``, ``n_used``, ``n_group_used``; the slope is 0 with
    ``skipped`` set when fewer than ``min_group`` stars of the group are usable.
    """
    from scipy.optimize import minimize
    from scipy.special import ndtr

    a = [np.asarray(v, dtype=np.float64) for v in (mks, mks_err, ks0, ks0_err, plx_mas,
                                                    plx_err_mas, ebv)]
    ok = np.all([np.isfinite(v) for v in a], axis=0) & (a[5] > 0) & (a[1] > 0)
    ok &= (a[0] > -9) & (a[6] > -9)
    m, me, k0, k0e, plx, pe, e = (v[ok] for v in a)
    group = m < max_mks
    edges = np.asarray(ebv_edges, dtype=np.float64)
    n_bins = edges.size + 1
    cell = np.searchsorted(edges, e, side="right") + np.where(group, 0, n_bins)
    n_cells = 2 * n_bins
    out: dict[str, Any] = {"max_mks": float(max_mks), "ebv_edges": [float(x) for x in edges],
                           "n_input": int(ok.sum()), "clip_sigma": clip_sigma,
                           "clip_upper_sigma": clip_upper_sigma}
    if group.sum() < min_group:
        log.warning("extra M_Ks scatter: %d usable stars with M_Ks < %g (need %d); none "
                    "fitted", group.sum(), max_mks, min_group)
        return {**out, "slope_mag_per_ebv": 0.0, "slope_err": float("nan"),
                "sigma_const_mag": 0.0, "sigma_const_err": float("nan"),
                "offsets_mag": [], "n_used": 0,
                "n_group_used": int(group.sum()), "skipped": "too few stars in the group"}
    plx_s = 10.0 ** (-0.2 * (k0 - m - 10.0))  # eq. (15)
    base_var = me**2 + k0e**2
    e_pos = np.where(group, np.clip(e, 0.0, None), 0.0)

    def resid_var(th: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model = plx_s[k] * 10.0 ** (-0.2 * th[cell[k]])
        # eq. (17) at plx_s itself: a variance that moved with the offsets would let the
        # fit shrink it by trading offsets against zp (the ln-variance term of ML)
        var = pe[k] ** 2 + (_K_PLX * plx_s[k]) ** 2 * (base_var[k] + th[-1] ** 2
                                                        + (th[-2] * e_pos[k]) ** 2)
        return plx[k] - model, var

    keep = np.ones(m.size, dtype=bool)
    lo = np.full(m.size, -np.inf)
    hi = np.full(m.size, np.inf)

    def nll(th: np.ndarray, k: np.ndarray) -> float:
        r, var = resid_var(th, k)
        sd = np.sqrt(var)
        norm = np.clip(ndtr(hi[k] / sd) - ndtr(lo[k] / sd), 1e-300, None)
        return float(0.5 * np.sum(r**2 / var + np.log(var)) + np.sum(np.log(norm)))

    bounds = [(-3.0, 3.0)] * n_cells + [(0.0, 5.0), (0.0, 2.0 if fit_constant else 0.0)]
    th = np.r_[np.zeros(n_cells), 0.1, 0.05 if fit_constant else 0.0]
    n_it = 0
    for n_it in range(1, max_iter + 1):  # noqa: B007  (n_it is reported)
        th = minimize(nll, th, args=(keep,), method="L-BFGS-B", bounds=bounds).x
        r, var = resid_var(th, np.arange(m.size))
        lo, hi = -clip_sigma * np.sqrt(var), clip_upper_sigma * np.sqrt(var)
        new = (r >= lo) & (r <= hi)
        if np.array_equal(new, keep):
            break
        keep = new
    errs = []
    for j in (-2, -1):  # the curvature of the likelihood in k, then in sigma_const
        step = max(0.01, 0.05 * th[j])
        f = []
        for d in (-step, 0.0, step):
            t = th.copy()
            t[j] = max(t[j] + d, 0.0)
            f.append(nll(t, keep))
        curv = (f[0] - 2 * f[1] + f[2]) / step**2 if th[j] >= step else float("nan")
        errs.append(float(1.0 / np.sqrt(curv)) if curv > 0 else float("nan"))
    out.update({"slope_mag_per_ebv": float(th[-2]), "slope_err": errs[0],
                "sigma_const_mag": float(th[-1]), "sigma_const_err": errs[1],
                "offsets_mag": [float(x) for x in th[:n_cells]], "n_used": int(keep.sum()),
                "n_group_used": int((keep & group).sum()), "n_clip_iterations": n_it})
    log.info("extra M_Ks scatter at M_Ks < %g: %.3f +- %.3f mag per mag of E(B-V); constant "
             "term %.3f +- %.3f mag (%d of %d stars kept, %d in the group)", max_mks,
             out["slope_mag_per_ebv"], out["slope_err"], out["sigma_const_mag"],
             out["sigma_const_err"], out["n_used"], out["n_input"], out["n_group_used"])
    return out


def fit_broken_scatter(mks: np.ndarray, mks_err: np.ndarray, mks_geo: np.ndarray,
                       mks_geo_err: np.ndarray, min_n: int = 20) -> dict[str, Any]:
    """The M_Ks error of spectra flagged broken (App. A, Fig. 15; beyond the paper, issue 15)
    from their parallaxes: ``sigma_broken^2 = robust_std(M_Ks - M_Ks,geo)^2 -
    median(mks_err^2 + mks_geo_err^2)`` (eq. 11's geometric M_Ks; ``robust_std``: MAD-based,
    since a broken spectrum's M_Ks can be off by several mag). ``mks`` / ``mks_err``: the
    stage's out-of-fold values and errors of the broken spectra with a good parallax.
    Applied in quadrature by :func:`extra_error_mag`: a broken spectrum keeps its M_Ks and
    its flag, with an error bar that says how little it is worth. Returns ``sigma_mag`` (0
    with ``skipped`` set when fewer than ``min_n`` spectra are usable), ``n_used``,
    ``robust_std_mag``, ``median_bias_mag``."""
    a = [np.asarray(v, dtype=np.float64) for v in (mks, mks_err, mks_geo, mks_geo_err)]
    ok = np.all([np.isfinite(v) for v in a], axis=0) & (a[0] > -9) & (a[2] > -9)
    m, me, g, ge = (v[ok] for v in a)
    out: dict[str, Any] = {"n_used": int(ok.sum())}
    if ok.sum() < min_n:
        log.warning("broken spectra: %d with an M_Ks and a good parallax (need %d); no extra "
                    "error fitted", ok.sum(), min_n)
        return {**out, "sigma_mag": 0.0, "skipped": "too few broken spectra with a parallax"}
    d = m - g
    rs = float(robust_std(d))
    sigma = float(np.sqrt(max(rs**2 - float(np.median(me**2 + ge**2)), 0.0)))
    out.update({"sigma_mag": sigma, "robust_std_mag": rs, "median_bias_mag": float(np.median(d))})
    log.info("broken spectra: M_Ks - M_Ks,geo robust std %.2f mag over %d spectra; extra error "
             "%.2f mag", rs, out["n_used"], sigma)
    return out


def extra_error_mag(ebv: np.ndarray, mks: np.ndarray, broken: np.ndarray,
                    slope_mag_per_ebv: float, max_mks: float = EXTRA_SCATTER_MAX_MKS,
                    const_mag: float = 0.0, broken_mag: float = 0.0) -> np.ndarray:
    """Every M_Ks error term beyond eqs. (8)-(10), as one term (mag) to add in quadrature
    to :func:`mks_uncertainty` (issue 15): ``const_mag`` for every spectrum and ``k
    E(B-V)`` at M_Ks < ``max_mks`` (:func:`fit_extra_scatter`, :func:`extra_scatter_mag`),
    and ``broken_mag`` where ``broken`` (a spectrum flagged broken, App. A;
    :func:`fit_broken_scatter`)."""
    var = (extra_scatter_mag(ebv, mks, slope_mag_per_ebv, max_mks) ** 2 + float(const_mag) ** 2
           + np.where(np.asarray(broken, bool), float(broken_mag), 0.0) ** 2)
    return np.sqrt(var)


def total_mks_error(snr: np.ndarray, sigma_int: float, sigma_s100: float,
                    epistemic_mag: np.ndarray | None = None,
                    sigma_s_table: tuple[np.ndarray, np.ndarray] | None = None,
                    extra: tuple[float, ...] | None = None, ebv: np.ndarray | None = None,
                    mks: np.ndarray | None = None, broken: np.ndarray | None = None
                    ) -> np.ndarray:
    """``MKs_err`` as the luminosity stage writes it (mag): :func:`mks_uncertainty` (eqs.
    8-10, with ``epistemic_mag`` and ``sigma_s_table`` as there) and, with ``extra`` =
    ``(max_mks, slope_mag_per_ebv[, const_mag[, broken_mag]])`` (issue 15;
    :attr:`NoiseModelResult.extra_terms`), :func:`extra_error_mag` of ``ebv``, ``mks`` and
    ``broken`` in quadrature."""
    err = mks_uncertainty(snr, sigma_int, sigma_s100, epistemic_mag,
                          sigma_s_table=sigma_s_table)
    if extra is None:
        return err
    return np.hypot(err, extra_error_mag(ebv, mks, broken, extra[1], extra[0], *extra[2:4]))


def sigma_s_from_table(snr: np.ndarray, table_snr: np.ndarray, table_sigma_mag: np.ndarray
                       ) -> np.ndarray:
    """Measurement term sigma_s (mag) of eq. (9) at each S/N from a measured table.

    Linear interpolation in log sigma_s - log S/N between the table's points; below the
    lowest S/N the first value, above the highest the power law of the last two points
    (the high-S/N behaviour of eq. 10 with the measured slope). NaN where S/N <= 0.
    """
    ls = np.log(np.asarray(table_snr, dtype=np.float64))
    lsig = np.log(np.asarray(table_sigma_mag, dtype=np.float64))
    if ls.size < 2 or np.any(np.diff(ls) <= 0):
        raise ValueError("sigma_s table: need >= 2 points in increasing S/N, got "
                         f"{np.exp(ls).tolist()}")
    snr = np.asarray(snr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lx = np.log(np.where(snr > 0, snr, np.nan))
    slope = (lsig[-1] - lsig[-2]) / (ls[-1] - ls[-2])
    inside = np.interp(lx, ls, lsig)
    tail = lsig[-1] + slope * (lx - ls[-1])
    return np.exp(np.where(lx > ls[-1], tail, inside))


def degraded_snr_scatter(norm_flux: np.ndarray, norm_ivar: np.ndarray, snr: np.ndarray,
                         predict: Any, target_snr: tuple[float, ...] = DEGRADE_SNR,
                         min_ratio: float = 3.0, seed: int = 0,
                         max_per_level: int | None = DEGRADE_PER_LEVEL,
                         pivot_mag: float | None = None,
                         deshrink_below_snr: float | None = None) -> dict[str, Any]:
    """Measure eq. (9)'s measurement term sigma_s(S/N) without parallaxes (issue 15).

    Copies of held-out high-S/N spectra (normalised flux and ivar, (n, n_wave); ``snr``
    their S/N) are degraded to each ``target_snr``: ivar scaled by (target / S/N)^2 and
    Gaussian noise of variance 1 / ivar_new - 1 / ivar = ((S/N / target)^2 - 1) / ivar
    added to every pixel with ivar > 0 (masked pixels stay masked). ``predict(flux, ivar,
    rows) -> M_Ks (mag)`` (``rows``: the input rows these spectra are copies of) must run
    the spectra through the pipeline's own projection and the member(s) that gave their
    catalog value. Only spectra with S/N >= ``min_ratio`` x target enter a level, so their
    own noise adds <= 1 / min_ratio^2 of the variance; of those, the first
    ``max_per_level`` of one random order (None: all), so that the levels share their
    spectra and the clean predictions are made once for the union.

    Returns per level ``snr``, ``n``, ``sigma_mag`` (std of M_Ks(degraded) - M_Ks(clean)),
    ``sigma_err_mag`` (the standard error of that std from its n values and their
    kurtosis, the statistical error that ``max_per_level`` buys), ``shift_mag`` (the
    mean difference: what noise alone does to the mean reading) and ``slope`` (the least-
    squares slope of M_Ks(degraded) on M_Ks(clean): below 1, noise pulls every reading
    toward one magnitude).

    ``pivot_mag`` and ``deshrink_below_snr`` (beyond the paper, issue 15; both or
    neither; ``deshrink_below_snr`` must be one of ``target_snr``): the readings below
    that S/N are to be de-shrunk by :func:`deshrink` around ``pivot_mag`` with the
    ``attenuation`` returned per level, the slope relative to the slope at
    ``deshrink_below_snr`` (clipped to [:data:`MIN_ATTENUATION`, 1]; 1 at and above it).
    ``sigma_mag``, ``sigma_err_mag`` and ``shift_mag`` then describe the de-shrunk
    readings, and ``sigma_shrunk_mag`` keeps the std before; ``pivot_mag`` and
    ``deshrink_below_snr`` are returned too.
    """
    if (pivot_mag is None) != (deshrink_below_snr is None):
        raise ValueError("pivot_mag and deshrink_below_snr go together")
    if deshrink_below_snr is not None and deshrink_below_snr not in target_snr:
        raise ValueError(f"deshrink_below_snr {deshrink_below_snr} is not a level of "
                         f"target_snr {tuple(target_snr)}")
    snr = np.asarray(snr, dtype=np.float64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(snr.size)
    chosen: dict[float, np.ndarray] = {}
    for target in sorted(target_snr):
        rows = order[snr[order] >= min_ratio * target]
        chosen[target] = np.sort(rows[:max_per_level] if max_per_level else rows)
    union = np.unique(np.concatenate([np.arange(0)] + list(chosen.values())))
    pos = np.full(snr.size, -1)
    pos[union] = np.arange(union.size)
    f0 = np.asarray(norm_flux[union], dtype=np.float32)
    iv0 = np.asarray(norm_ivar[union], dtype=np.float32)
    with np.errstate(divide="ignore"):
        sd0 = np.where(iv0 > 0, 1.0 / np.sqrt(np.where(iv0 > 0, iv0, 1.0)), 0.0).astype(
            np.float32)  # noise of each pixel, 0 under the mask
    clean = np.full(snr.size, np.nan)
    if union.size:
        clean[union] = np.asarray(predict(f0, iv0, union), dtype=np.float64)
    pairs: dict[float, tuple[np.ndarray, np.ndarray]] = {}  # level: (degraded, clean)
    for target in sorted(target_snr):
        rows = chosen[target][np.isfinite(clean[chosen[target]])]
        if rows.size < 20:
            log.warning("sigma_s at S/N %g: only %d spectra at S/N >= %g; level skipped",
                        target, rows.size, min_ratio * target)
            continue
        p = pos[rows]
        ratio = snr[rows] / target
        iv = iv0[p] * (1.0 / ratio**2).astype(np.float32)[:, None]
        noise = rng.standard_normal(iv.shape, dtype=np.float32)
        noise *= sd0[p]
        noise *= np.sqrt(ratio**2 - 1.0).astype(np.float32)[:, None]
        noise += f0[p]
        deg = np.asarray(predict(noise, iv, rows), dtype=np.float64)
        ok = np.isfinite(deg)
        pairs[float(target)] = (deg[ok], clean[rows][ok])
    slope = {t: least_squares_slope(c, d) for t, (d, c) in pairs.items()}
    ref = None
    if deshrink_below_snr is not None:
        ref = slope.get(float(deshrink_below_snr))
        if ref is None or not np.isfinite(ref) or ref <= 0:
            log.warning("sigma_s: no usable slope at S/N %g; readings not de-shrunk",
                        deshrink_below_snr)
            ref = None
    out: dict[str, Any] = {"snr": [], "n": [], "sigma_mag": [], "sigma_err_mag": [],
                           "shift_mag": [], "slope": []}
    if ref is not None:
        out.update({"attenuation": [], "sigma_shrunk_mag": [], "pivot_mag": float(pivot_mag),
                    "deshrink_below_snr": float(deshrink_below_snr)})
    for target, (deg, cl) in pairs.items():
        out["slope"].append(slope[target])
        if ref is not None:
            att = (float(np.clip(slope[target] / ref, MIN_ATTENUATION, 1.0))
                   if target < deshrink_below_snr else 1.0)
            out["attenuation"].append(att)
            out["sigma_shrunk_mag"].append(float(np.std(deg - cl)))
            deg = pivot_mag + (deg - pivot_mag) / att
        d = deg - cl
        sig = float(np.std(d))
        out["snr"].append(float(target))
        out["n"].append(int(d.size))
        out["sigma_mag"].append(sig)
        out["sigma_err_mag"].append(_std_error(d))
        out["shift_mag"].append(float(np.mean(d)))
        log.info("sigma_s at S/N %g: %.3f +- %.3f mag (mean shift %+.3f, slope %.3f) from %d "
                 "degraded spectra", target, sig, out["sigma_err_mag"][-1],
                 out["shift_mag"][-1], slope[target], d.size)
    return out


def deshrink(mks_mag: np.ndarray, snr: np.ndarray, table: tuple[Any, ...] | None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Undo the pull of noise toward one magnitude (beyond the paper, issue 15).

    At low S/N the networks' readings are attenuated toward the training set's mean
    M_Ks: E[M_Ks(noisy) | M_Ks(clean)] ~ p + b (M_Ks(clean) - p) with b < 1 (measured on
    degraded held-out spectra, :func:`degraded_snr_scatter`), so luminous stars read faint
    and faint ones bright, and a bin's bias depends on its mix of stars. The reading
    ``p + (M_Ks - p) / b`` has no such pull; its error is larger by 1 / b (the de-shrunk
    ``sigma_mag`` of the table says how much).

    ``table``: ``(snr_levels, attenuation, pivot_mag, below_snr)``
    (:attr:`NoiseModelResult.attenuation_table`), or None (readings returned as they are).
    b is interpolated in log S/N between the levels (the end values beyond them); rows at
    S/N >= ``below_snr`` or with a non-finite S/N are left alone. Returns the de-shrunk
    M_Ks and the factor 1 / b applied to each row (1 where untouched), for the members'
    spread."""
    m = np.asarray(mks_mag, dtype=np.float64)
    if table is None:
        return m, np.ones(m.shape)
    levels, att, pivot, below = table
    s = np.asarray(snr, dtype=np.float64)
    low = np.isfinite(s) & (s < below)
    b = np.ones(m.shape)
    b[low] = np.interp(np.log(np.maximum(s[low], 1e-3)), np.log(np.asarray(levels, float)),
                       np.asarray(att, float))
    return np.where(low, pivot + (m - pivot) / b, m), 1.0 / b


def _std_error(d: np.ndarray) -> float:
    """Standard error of the standard deviation of ``d``: Var(s^2) = (m4 - s^4 (n - 3) /
    (n - 1)) / n for n values with fourth central moment m4, and SE(s) = SE(s^2) / (2 s)
    (e.g. Rao 1973, Linear Statistical Inference, Sec. 6h; sqrt(1 / (2 n)) s for a
    Gaussian)."""
    n = d.size
    c = d - d.mean()
    s2 = float(np.mean(c**2))
    if n < 4 or s2 <= 0:
        return float("nan")
    var_s2 = max(float(np.mean(c**4)) - s2**2 * (n - 3) / (n - 1), 0.0) / n
    return float(np.sqrt(var_s2) / (2.0 * np.sqrt(s2)))


def _with_epistemic(mks_geo_err: np.ndarray, epistemic_mag: np.ndarray | None) -> np.ndarray:
    """The per-star variance terms of eq. (14) that are not fitted, as one error (mag):
    the geometric error and (when given) the ensemble spread."""
    geo = np.asarray(mks_geo_err, dtype=np.float64)
    if epistemic_mag is None:
        return geo
    return np.hypot(geo, np.nan_to_num(np.asarray(epistemic_mag, dtype=np.float64)))


def log_likelihood(theta: np.ndarray, mks_spec: np.ndarray, mks_geo: np.ndarray,
                   mks_geo_err: np.ndarray, snr: np.ndarray) -> np.ndarray:
    """Sum over stars of the log of eq. (14); ``theta`` (..., 4) -> (...,)."""
    theta = np.asarray(theta, dtype=np.float64)
    eps, delta, s_int, s_100 = (theta[..., k, None] for k in range(4))
    resid = mks_spec - ((1.0 + eps) * mks_geo + delta)
    var = s_int**2 + (s_100 / (snr / 100.0)) ** 2 + mks_geo_err**2
    return -0.5 * np.sum(resid**2 / var + np.log(2.0 * np.pi * var), axis=-1)


def log_prior(theta: np.ndarray,
              bounds: tuple[tuple[float, float], ...] = DEFAULT_PRIOR_BOUNDS) -> np.ndarray:
    """Flat priors (eq. 13): 0 inside ``bounds``, -inf outside; ``theta`` (..., 4)."""
    theta = np.atleast_2d(theta)
    inside = np.ones(theta.shape[0], dtype=bool)
    for k, (lo, hi) in enumerate(bounds):
        inside &= (theta[:, k] > lo) & (theta[:, k] < hi)
    return np.where(inside, 0.0, -np.inf)


class _LogProb:
    """Picklable vectorised log-posterior for emcee (walkers x 4 -> walkers): eq. (13),
    :func:`log_prior` + :func:`log_likelihood`, with the per-star terms that do not depend
    on theta ((100 / S/N)^2, sigma_geo^2) computed once and the (walkers, stars) arrays
    updated in place (the likelihood is most of the sampler's time)."""

    def __init__(self, mks_spec, mks_geo, mks_geo_err, snr, bounds) -> None:  # noqa: ANN001
        self.args = (mks_spec, mks_geo, mks_geo_err, snr)
        self.bounds = bounds
        self.mks_spec = np.asarray(mks_spec, dtype=np.float64)
        self.mks_geo = np.asarray(mks_geo, dtype=np.float64)
        self.geo_var = np.asarray(mks_geo_err, dtype=np.float64) ** 2
        self.inv_snr2 = (100.0 / np.asarray(snr, dtype=np.float64)) ** 2
        self.log_2pi_n = self.mks_spec.size * np.log(2.0 * np.pi)

    def __call__(self, theta: np.ndarray) -> np.ndarray:
        theta = np.atleast_2d(theta)
        lp = log_prior(theta, self.bounds)
        out = np.full(theta.shape[0], -np.inf)
        ok = np.isfinite(lp)
        if ok.any():
            t = theta[ok].astype(np.float64)
            resid = np.multiply((1.0 + t[:, 0])[:, None], self.mks_geo)  # eq. (7)
            resid += t[:, 1, None]
            np.subtract(self.mks_spec, resid, out=resid)
            var = np.multiply((t[:, 3] ** 2)[:, None], self.inv_snr2)  # eq. (10)^2
            var += (t[:, 2] ** 2)[:, None]
            var += self.geo_var
            resid *= resid
            resid /= var
            np.log(var, out=var)
            resid += var
            out[ok] = lp[ok] - 0.5 * (resid.sum(axis=1) + self.log_2pi_n)  # eq. (14)
        return out


def standardized_residual(theta: np.ndarray, mks_spec: np.ndarray, mks_geo: np.ndarray,
                          mks_geo_err: np.ndarray, snr: np.ndarray) -> np.ndarray:
    """(M_o - model) / total sigma of eq. (14) per star; > 0: geometric brighter."""
    eps, delta, s_int, s_100 = (float(t) for t in theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = s_int**2 + (s_100 / (snr / 100.0)) ** 2 + mks_geo_err**2
        return (mks_spec - ((1.0 + eps) * mks_geo + delta)) / np.sqrt(var)


def maximum_likelihood(mks_spec: np.ndarray, mks_geo: np.ndarray, mks_geo_err: np.ndarray,
                       snr: np.ndarray, start: np.ndarray | None = None,
                       bounds: tuple[tuple[float, float], ...] = DEFAULT_PRIOR_BOUNDS
                       ) -> np.ndarray:
    """Maximum of eq. (13) with flat priors (L-BFGS-B within the prior bounds)."""
    from scipy.optimize import minimize

    args = tuple(np.asarray(a, dtype=np.float64) for a in (mks_spec, mks_geo, mks_geo_err, snr))
    if start is None:
        resid = args[0] - args[1]
        start = np.array([0.0, float(np.median(resid)),
                          max(float(robust_std(resid)), 0.05),
                          0.1])

    def nll(t: np.ndarray) -> float:
        return -float(log_likelihood(t[None, :], *args)[0])

    eps_b = [(lo + 1e-6, hi - 1e-6) for lo, hi in bounds]
    eps_b[2] = (1e-4, bounds[2][1])
    eps_b[3] = (1e-4, bounds[3][1])
    res = minimize(nll, np.clip(start, [b[0] for b in eps_b], [b[1] for b in eps_b]),
                   method="L-BFGS-B", bounds=eps_b)
    return np.asarray(res.x, dtype=np.float64)


@dataclass
class NoiseModelResult:
    """Posterior of (eps, delta, sigma_int, sigma_s100) and the clipping record."""

    samples: np.ndarray  # (n_samples, 4) flat, burn-in discarded, thinned
    ml: np.ndarray  # (4,) maximum likelihood on the final kept set
    keep: np.ndarray  # (n,) bool: used in the final fit
    tau: np.ndarray  # (4,) integrated autocorrelation times (steps)
    acceptance: float
    n_steps: int
    converged: bool
    n_clip_iterations: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> dict[str, float]:
        return {k: float(v) for k, v in zip(PARAM_NAMES, self.samples.mean(axis=0), strict=True)}

    @property
    def std(self) -> dict[str, float]:
        return {k: float(v) for k, v in zip(PARAM_NAMES, self.samples.std(axis=0), strict=True)}

    @property
    def sigma_int(self) -> float:
        return self.mean["sigma_int"]

    @property
    def includes_epistemic(self) -> bool:
        """True when the fit carried the ensemble spread (``mks_uncertainty`` needs it)."""
        return bool(self.meta.get("epistemic_spread", False))

    @property
    def sigma_s100(self) -> float:
        return self.mean["sigma_s100"]

    def _degraded_table(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(S/N, ``meta["sigma_s_degraded"][key]`` in mag), or None with fewer than 2
        levels."""
        t = self.meta.get("sigma_s_degraded")
        if not t or len(t.get("snr", [])) < 2:
            return None
        return np.asarray(t["snr"], dtype=np.float64), np.asarray(t[key], np.float64)

    @property
    def sigma_s_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(S/N, sigma_s in mag) measured on degraded spectra (``meta["sigma_s_degraded"]``,
        :func:`degraded_snr_scatter`), or None: then eq. (10) gives sigma_s."""
        return self._degraded_table("sigma_mag")

    @property
    def sigma_s_table_shrunk(self) -> tuple[np.ndarray, np.ndarray] | None:
        """:attr:`sigma_s_table` of the readings before de-shrinking (``sigma_shrunk_mag``
        where :func:`degraded_snr_scatter` de-shrank them; else the same table)."""
        t = self.meta.get("sigma_s_degraded") or {}
        return self._degraded_table("sigma_shrunk_mag" if "sigma_shrunk_mag" in t
                                    else "sigma_mag")

    @property
    def attenuation_table(self) -> tuple[tuple[float, ...], tuple[float, ...], float, float] | None:
        """``(snr_levels, attenuation, pivot_mag, below_snr)`` of :func:`deshrink` from
        ``meta["sigma_s_degraded"]`` (:func:`degraded_snr_scatter` with a pivot), or None
        (the readings stay as the networks give them; older files)."""
        t = self.meta.get("sigma_s_degraded") or {}
        if "attenuation" not in t or len(t["attenuation"]) < 1:
            return None
        return (tuple(map(float, t["snr"])), tuple(map(float, t["attenuation"])),
                float(t["pivot_mag"]), float(t["deshrink_below_snr"]))

    @property
    def extra_scatter_slope(self) -> float:
        """k of :func:`extra_scatter_mag` (mag per mag of E(B-V)) from
        ``meta["extra_scatter"]`` (:func:`fit_extra_scatter`), 0 without it (older files)."""
        t = self.meta.get("extra_scatter") or {}
        return float(t.get("slope_mag_per_ebv", 0.0))

    @property
    def extra_scatter_const(self) -> float:
        """``sigma_const_mag`` of :func:`fit_extra_scatter` (mag; every spectrum, in
        quadrature), 0 without it (older files)."""
        t = self.meta.get("extra_scatter") or {}
        return float(t.get("sigma_const_mag", 0.0))

    @property
    def broken_scatter(self) -> float:
        """``sigma_mag`` of :func:`fit_broken_scatter` (``meta["broken_scatter"]``; mag, for
        spectra flagged broken), 0 without it (older files)."""
        t = self.meta.get("broken_scatter") or {}
        return float(t.get("sigma_mag", 0.0))

    @property
    def extra_scatter_max_mks(self) -> float:
        """The M_Ks below which :func:`extra_scatter_mag` applies (mag)."""
        t = self.meta.get("extra_scatter") or {}
        return float(t.get("max_mks", EXTRA_SCATTER_MAX_MKS))

    @property
    def extra_terms(self) -> tuple[float, float, float, float]:
        """The ``extra`` of :func:`total_mks_error`: (:attr:`extra_scatter_max_mks`,
        :attr:`extra_scatter_slope`, :attr:`extra_scatter_const`, :attr:`broken_scatter`)."""
        return (self.extra_scatter_max_mks, self.extra_scatter_slope, self.extra_scatter_const,
                self.broken_scatter)

    def summary(self) -> dict[str, Any]:
        q = np.percentile(self.samples, [16, 50, 84], axis=0)
        return {
            "mean": self.mean, "std": self.std,
            "p16": dict(zip(PARAM_NAMES, map(float, q[0]), strict=True)),
            "p50": dict(zip(PARAM_NAMES, map(float, q[1]), strict=True)),
            "p84": dict(zip(PARAM_NAMES, map(float, q[2]), strict=True)),
            "ml": dict(zip(PARAM_NAMES, map(float, self.ml), strict=True)),
            "n_used": int(self.keep.sum()), "n_clipped": int(self.meta.get("n_input", 0)
                                                             - self.keep.sum()),
            "tau_steps": dict(zip(PARAM_NAMES, map(float, self.tau), strict=True)),
            "acceptance_fraction": float(self.acceptance), "n_steps": int(self.n_steps),
            "converged": bool(self.converged), "n_clip_iterations": int(self.n_clip_iterations),
            **{k: v for k, v in self.meta.items() if k not in ("n_input",)},
        }

    def save(self, path: str) -> None:
        """Write an ``.npz`` (plain arrays + JSON metadata with the obpipe version and the
        training survey, :func:`obpipe.provenance.stamped`; read with allow_pickle=False).

        ``path``: a local path (numpy adds ``.npz`` if it lacks it) or an fsspec URL
        (written as named)."""
        from obpipe import provenance
        from obpipe.io import store

        self.meta = provenance.stamped(self.meta)
        if store.is_url(path):
            with store.open_file(path, "wb") as fh:
                self._savez(fh)
        else:
            self._savez(path)

    def _savez(self, file: Any) -> None:
        np.savez_compressed(
            file, samples=self.samples.astype(np.float32), ml=self.ml, keep=self.keep,
            tau=self.tau, param_names=np.array(PARAM_NAMES),
            meta_json=np.array(json.dumps({**self.meta, "acceptance": self.acceptance,
                                           "n_steps": self.n_steps,
                                           "converged": self.converged,
                                           "n_clip_iterations": self.n_clip_iterations,
                                           "format_version": FORMAT_VERSION})),
        )

    @classmethod
    def load(cls, path: str) -> NoiseModelResult:
        """Read a file written by :meth:`save` (local path or fsspec URL)."""
        from obpipe.io import store

        with store.open_file(path, "rb") as fh, np.load(fh, allow_pickle=False) as d:
            meta = json.loads(str(d["meta_json"]))
            return cls(samples=d["samples"].astype(np.float64), ml=d["ml"], keep=d["keep"],
                       tau=d["tau"], acceptance=float(meta.pop("acceptance")),
                       n_steps=int(meta.pop("n_steps")), converged=bool(meta.pop("converged")),
                       n_clip_iterations=int(meta.pop("n_clip_iterations")), meta=meta)


def clip_binaries(mks_spec: np.ndarray, mks_geo: np.ndarray, mks_geo_err: np.ndarray,
                  snr: np.ndarray, clip_sigma: float = 2.0, clip: str = "upper",
                  max_iter: int = 20,
                  bounds: tuple[tuple[float, float], ...] = DEFAULT_PRIOR_BOUNDS,
                  clip_lower_sigma: float | None = None,
                  epistemic_mag: np.ndarray | None = None,
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """Iterative ``clip_sigma`` clipping of likely binaries (Sec. 5.3).

    ``clip_lower_sigma`` (with ``clip="upper"``; beyond the paper): also drop stars whose
    spectroscopic M_Ks is more than this many sigma *brighter* than the model -- not
    binaries but stars the networks do not describe (subdwarfs and white dwarfs with a
    parallax, failed reconstructions). Left in, they sit at low S/N and inflate
    sigma_s100. ``epistemic_mag``: per-star ensemble spread, a known variance term of
    eq. (14) (see :func:`mks_uncertainty`).
    Returns (keep mask, maximum-likelihood theta on the kept set, iterations).
    """
    mks_geo_err = _with_epistemic(mks_geo_err, epistemic_mag)
    ok = (np.isfinite(mks_spec) & np.isfinite(mks_geo) & np.isfinite(mks_geo_err)
          & np.isfinite(snr) & (snr > 0))
    keep = ok.copy()
    theta = None
    it = 0
    for _ in range(max_iter):
        it += 1
        theta = maximum_likelihood(mks_spec[keep], mks_geo[keep], mks_geo_err[keep], snr[keep],
                                   start=theta, bounds=bounds)
        if clip_sigma is None or not np.isfinite(clip_sigma):
            break
        z = standardized_residual(theta, mks_spec, mks_geo, mks_geo_err, snr)
        new = ok & ((z <= clip_sigma) if clip == "upper" else (np.abs(z) <= clip_sigma))
        if clip == "upper" and clip_lower_sigma is not None:
            new &= z >= -clip_lower_sigma
        if np.array_equal(new, keep):
            break
        keep = new
    assert theta is not None
    return keep, theta, it


def fit_noise_model(
    mks_spec: np.ndarray,
    mks_geo: np.ndarray,
    mks_geo_err: np.ndarray,
    snr: np.ndarray,
    clip_sigma: float = 2.0,
    clip: str = "upper",
    n_walkers: int = 32,
    n_steps: int = 1000,
    max_steps: int = 12000,
    seed: int = 0,
    bounds: tuple[tuple[float, float], ...] = DEFAULT_PRIOR_BOUNDS,
    meta: dict[str, Any] | None = None,
    clip_lower_sigma: float | None = None,
    epistemic_mag: np.ndarray | None = None,
) -> NoiseModelResult:
    """Sample the eq. (13) posterior with emcee after iterative binary clipping.

    Inputs per star: spectroscopic M_Ks (``mks_spec``), geometric M_Ks and its error
    (eqs. 11-12), spectral S/N. Non-finite rows are ignored. ``clip_lower_sigma`` and
    ``epistemic_mag``: see :func:`clip_binaries`; with ``epistemic_mag`` the result's
    ``includes_epistemic`` is True and the per-spectrum error must add the spread too.
    """
    import emcee

    t0 = time.perf_counter()
    arrs = [np.asarray(a, dtype=np.float64) for a in (mks_spec, mks_geo, mks_geo_err, snr)]
    arrs[2] = _with_epistemic(arrs[2], epistemic_mag)
    keep, theta_ml, n_it = clip_binaries(*arrs, clip_sigma=clip_sigma, clip=clip,
                                         bounds=bounds, clip_lower_sigma=clip_lower_sigma)
    if keep.sum() < 10:
        raise ValueError(f"noise model: only {int(keep.sum())} stars after clipping")
    data = [a[keep] for a in arrs]
    rng = np.random.default_rng(seed)
    scale = np.array([1e-3, 1e-3, 1e-3, 1e-3])
    p0 = theta_ml + scale * rng.standard_normal((n_walkers, 4))
    p0[:, 2:] = np.abs(p0[:, 2:])
    # differential-evolution proposals (ter Braak 2006; emcee's DEMove, Nelson et al.
    # 2014): on this near-Gaussian 4-d posterior the autocorrelation time is ~12 steps
    # against ~40 with the default stretch move, so 50 tau is reached 3x sooner
    sampler = emcee.EnsembleSampler(n_walkers, 4, _LogProb(*data, bounds), vectorize=True,
                                    moves=emcee.moves.DEMove())
    sampler.random_state = np.random.RandomState(int(rng.integers(2**31))).get_state()
    state = sampler.run_mcmc(p0, n_steps, progress=False)
    total = n_steps
    while True:
        tau = np.asarray(sampler.get_autocorr_time(tol=0), dtype=np.float64)
        acc = float(np.mean(sampler.acceptance_fraction))
        converged = bool(np.all(total > 50 * tau) and 0.15 <= acc <= 0.8)
        if converged or total >= max_steps:
            break
        extra = min(max(int(50 * np.max(tau)) - total, 1000), max_steps - total)
        state = sampler.run_mcmc(state, extra, progress=False)
        total += extra
    burn = int(min(max(3 * np.max(tau), 200), total // 2))
    thin = max(1, int(np.max(tau) / 2))
    samples = sampler.get_chain(discard=burn, thin=thin, flat=True)
    if not converged:
        log.warning("noise model: chain not converged after %d steps (tau %s, acceptance "
                    "%.2f)", total, np.round(tau, 1), acc)
    res = NoiseModelResult(
        samples=samples, ml=theta_ml, keep=keep, tau=tau, acceptance=acc, n_steps=total,
        converged=converged, n_clip_iterations=n_it,
        meta={"n_input": int(np.isfinite(arrs[0]).sum()), "clip_sigma": clip_sigma,
              "clip": clip, "clip_lower_sigma": clip_lower_sigma,
              "epistemic_spread": epistemic_mag is not None, "n_walkers": n_walkers,
              "burn": burn, "thin": thin,
              "prior_bounds": [list(b) for b in bounds], "seconds": time.perf_counter() - t0,
              **(meta or {})},
    )
    m, s = res.mean, res.std
    log.info("noise model: %d of %d stars kept after %d clipping iterations; eps %.3f+-%.3f "
             "delta %.3f+-%.3f sigma_int %.3f+-%.3f sigma_s100 %.3f+-%.3f (tau max %.0f, "
             "acceptance %.2f, %.1f s)", keep.sum(), res.meta["n_input"], n_it, m["eps"],
             s["eps"], m["delta"], s["delta"], m["sigma_int"], s["sigma_int"],
             m["sigma_s100"], s["sigma_s100"], np.max(tau), acc, res.meta["seconds"])
    return res


def corner_plot(result: NoiseModelResult, path: str, title: str = "") -> str:
    """A corner-style plot of the posterior (Fig. 8 of the paper) with matplotlib."""
    from matplotlib.figure import Figure

    s = result.samples
    k = s.shape[1]
    fig = Figure(figsize=(2.2 * k, 2.2 * k))
    axes = fig.subplots(k, k, squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            if i == j:
                ax.hist(s[:, i], bins=40, histtype="step", color="k")
                q = np.percentile(s[:, i], [16, 50, 84])
                for v in q:
                    ax.axvline(v, color="C0", ls="--", lw=0.8)
                ax.set_title(f"{PARAM_LABELS[i]} = {q[1]:.3f}$^{{+{q[2] - q[1]:.3f}}}"
                             f"_{{-{q[1] - q[0]:.3f}}}$", fontsize=8)
                ax.set_yticks([])
            else:
                ax.hist2d(s[:, j], s[:, i], bins=40, cmap="Greys")
            if i == k - 1:
                ax.set_xlabel(PARAM_LABELS[j])
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(PARAM_LABELS[i])
            elif j > 0:
                ax.set_yticklabels([])
            ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from obpipe.io import store

    store.save_figure(fig, path, dpi=110)  # a local path or an fsspec URL
    return path
