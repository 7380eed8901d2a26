"""``obpipe report``: the paper's figures and summary numbers of a run, as PNG + one HTML page.

:func:`write_report` reads a products directory (and its survey cube, found through the
products' ``survey`` root attribute unless given) and writes into ``OUT_DIR`` (default
``PRODUCTS_DIR/report``):

=====================================  ==================================================
file                                   content (Xiang et al.)
=====================================  ==================================================
``fig2_pca_reconstruction.png``        Fig. 2: spectra, PCA reconstructions, clean windows
``fig3_halpha_excess.png``             Fig. 3: H-alpha excess vs reduced chi2, threshold
``fig4_ebv_comparison.png``            Fig. 4: E(B-V) vs a reference E(B-V) (the simulated
                                       truth stands in for the Green et al. 2019 3D map),
                                       plx/err > 5, emission vs non-emission; without
                                       truth: E(B-V) vs distance and its distribution
``fig5_mks_spec_vs_geo.png``           Fig. 5: spectroscopic vs geometric M_Ks, test stars
``fig8_noise_model_{a,b}.png``         Fig. 8: posterior of (eps, delta, sigma_int,
                                       sigma_s^100) of each network (eqs. 7-14)
``fig9_composites.png``                truth only: Fig. 9, M_Ks(composite) - M_Ks(primary)
                                       vs q for OB+OB and OB+AFGK binaries
``fig10_parallax_excess.png``          Fig. 10: S/N of the parallax excess (eq. 16)
``fig11_distance.png``                 Fig. 11: distance histogram; relative uncertainty
                                       ln(10) sigma_logd vs d, running median, and the
                                       parallax-only sigma_plx / plx (single stars)
``fig12_xy_map.png``                   Fig. 12: Galactic X-Y map, Sun at X = -8.1 kpc,
                                       1 kpc rings
``validation_mks.png``                 truth only: M_Ks vs the true M_Ks (primary), the
                                       residual vs S/N, the pull distribution
``validation_distance.png``            truth only: distance vs the true distance, the
                                       log-distance pull, relative error vs distance
``report.html``                        the figures (relative paths) and the numbers
``report_summary.json``                the numbers (counts, fractions, highlights and,
                                       with truth, :func:`obpipe.validate.validate_survey`)
=====================================  ==================================================

A figure whose products are missing (a stage not run yet) is skipped with a logged reason
that the page shows too. Figs. 2, 3, 5 and 10 come from the stages' own figure code
(:mod:`obpipe.spectra.figures`, :func:`obpipe.stages.luminosity.write_fig5`,
:func:`~obpipe.stages.luminosity.write_fig10`), re-drawn from the current products.
Large surveys: scatter panels show at most ``MAX_POINTS`` randomly chosen spectra.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from obpipe.io import store
from obpipe.products import open_products
from obpipe.stats import summary_stats
from obpipe.version import __version__

log = logging.getLogger(__name__)

#: Sun's Galactocentric X (kpc), Y = Z = 0: the paper's convention (DESIGN.md).
SUN_X_KPC = -8.1
#: at most this many points in a scatter panel (random subset, fixed seed)
MAX_POINTS = 200_000
#: per-spectrum product variables the report reads (those present)
PRODUCT_COLUMNS = ("specid", "star_id", "uniqflag", "em_flag", "em_flag_star", "quality_flags",
                   "halpha_excess", "halpha_chi2", "ebv", "MKs", "MKs_err", "MKs_geo",
                   "luminosity_set", "snr_dparallax", "binary_flag", "parallax_corrected",
                   "parallax_corrected_error", "dis", "dis_low", "dis_high", "logdis",
                   "logdis_err", "distance_flags", "X", "Y", "Z", "binary_flag_paper",
                   "binary_prob", "parallax_spec", "parallax_spec_err", "MKs_err")
#: survey columns the report reads besides the products
SURVEY_COLUMNS = ("snr_g", "parallax", "parallax_error", "ruwe", "ra", "dec")
#: truth columns the validation figures read
TRUTH_COLUMNS = ("MKs_true", "MKs_system_true", "distance_kpc_true", "ebv_true", "is_binary",
                 "has_emission", "star_class", "is_broken", "mass_ratio",
                 "teff_secondary_true")
#: a secondary at least this hot (K) makes an "OB+OB" system in Fig. 9, else "OB+AFGK"
FIG9_OB_SECONDARY_TEFF_K = 10_000.0
REPORT_HTML = "report.html"
SUMMARY_JSON = "report_summary.json"


class MissingProducts(Exception):
    """A figure cannot be drawn: the products it needs are absent (reason in the message)."""


@dataclass
class FigureResult:
    """One entry of the report: the PNG (relative to the report directory) or why not."""

    key: str
    title: str
    caption: str
    files: list[str] = field(default_factory=list)
    skipped: str | None = None


# ----------------------------------------------------------------- pure numpy helpers
def binned_median(x: np.ndarray, y: np.ndarray, edges: np.ndarray, min_count: int = 5
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``y`` in bins of ``x`` (bin centres, medians; NaN with < min_count points).

    The running median of the relative distance uncertainty in Fig. 11.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    edges = np.asarray(edges, float)
    ok = np.isfinite(x) & np.isfinite(y)
    idx = np.digitize(x[ok], edges) - 1
    yv = y[ok]
    med = np.full(edges.size - 1, np.nan)
    for b in range(edges.size - 1):
        sel = idx == b
        if np.count_nonzero(sel) >= min_count:
            med[b] = np.median(yv[sel])
    return 0.5 * (edges[:-1] + edges[1:]), med


def relative_distance_uncertainty(logdis_err: np.ndarray) -> np.ndarray:
    """sigma_d / d = ln(10) sigma_log10(d) (Fig. 11 caption)."""
    return np.log(10.0) * np.asarray(logdis_err, float)


def parallax_relative_uncertainty(parallax_mas: np.ndarray, parallax_error_mas: np.ndarray
                                  ) -> np.ndarray:
    """sigma_plx / plx of the zero-point-corrected parallax; NaN where plx <= 0 (Fig. 11)."""
    plx = np.asarray(parallax_mas, float)
    err = np.asarray(parallax_error_mas, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(plx > 0, err / plx, np.nan)


def parallax_snr(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """plx / sigma_plx of the zero-point-corrected parallax (survey parallax if absent)."""
    if "parallax_corrected" in cols:
        plx, err = cols["parallax_corrected"], cols["parallax_corrected_error"]
    else:
        plx, err = cols["parallax"], cols["parallax_error"]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(plx, float) / np.asarray(err, float)


def summary_numbers(cols: Mapping[str, np.ndarray], attrs: Mapping[str, Any]
                    ) -> dict[str, Any]:
    """Counts and fractions of a run (no truth needed): sizes, stages, flags, medians."""
    def has(*names: str) -> bool:
        return all(n in cols for n in names)

    n = int(next(iter(cols.values())).size) if cols else 0
    out: dict[str, Any] = {"n_spectra": n}
    if has("star_id"):
        out["n_stars"] = int(np.unique(np.asarray(cols["star_id"]).astype(object).astype(str)).size)
    if has("uniqflag"):
        out["n_unique_visits"] = int(np.sum(cols["uniqflag"] == 1))
    out["stages_complete"] = sorted(k[len("stage_"):-len("_complete")] for k, v in attrs.items()
                                    if k.startswith("stage_") and k.endswith("_complete") and v)
    frac: dict[str, float] = {}
    if n == 0:
        return out
    if has("em_flag"):
        em = cols["em_flag"]
        frac["emission_spectra"] = float(np.mean(em == 1))
        frac["emission_undetermined_spectra"] = float(np.mean(em == -9))
    if has("em_flag_star", "uniqflag") and np.any(cols["uniqflag"] == 1):
        frac["emission_stars"] = float(np.mean(cols["em_flag_star"][cols["uniqflag"] == 1] == 1))
    if has("quality_flags"):
        frac["broken_spectra"] = float(np.mean((cols["quality_flags"] & 1) > 0))
    if has("ebv"):
        frac["ebv_measured"] = float(np.mean(np.isfinite(cols["ebv"])))
        out["median_ebv"] = _nanmedian(cols["ebv"])
    if has("parallax") and has("parallax_error"):
        frac["parallax_snr_gt_5"] = float(np.mean(parallax_snr(cols) > 5))
        frac["parallax_snr_gt_10"] = float(np.mean(parallax_snr(cols) > 10))
    if has("MKs"):
        frac["MKs_measured"] = float(np.mean(np.isfinite(cols["MKs"])))
    if has("MKs_err"):
        out["median_MKs_err"] = _nanmedian(cols["MKs_err"])
    if has("binary_flag"):
        flag = cols["binary_flag"]
        classified = flag != -9
        frac["binary_classified"] = float(np.mean(classified))
        frac["binary_of_classified"] = float(np.mean(flag[classified] == 1)) \
            if classified.any() else float("nan")
    if has("dis"):
        dis = np.asarray(cols["dis"], float)
        frac["distance_measured"] = float(np.mean(np.isfinite(dis)))
        frac["distance_gt_5kpc"] = float(np.mean(dis[np.isfinite(dis)] > 5)) \
            if np.isfinite(dis).any() else float("nan")
        out["median_distance_kpc"] = _nanmedian(dis)
    if has("logdis_err"):
        out["median_relative_distance_uncertainty"] = _nanmedian(
            relative_distance_uncertainty(cols["logdis_err"]))
    if has("distance_flags"):
        frac["distance_flags_zero"] = float(np.mean(cols["distance_flags"] == 0))
    out["fractions"] = frac
    return out


def distance_truth_metrics(dis_kpc: np.ndarray, logdis: np.ndarray, logdis_err: np.ndarray,
                           true_kpc: np.ndarray, single: np.ndarray) -> dict[str, Any]:
    """Distances against the truth of a simulated survey (single stars, all).

    Relative error (d - d_true) / d_true of the mode, and the pull
    (logdis - log10 d_true) / logdis_err of the log-distance (eqs. 18-24, Sec. 7).
    """
    dis = np.asarray(dis_kpc, float)
    true = np.asarray(true_kpc, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = (dis - true) / true
        pull = (np.asarray(logdis, float) - np.log10(true)) / np.asarray(logdis_err, float)
    single = np.asarray(single, bool)
    return {"relative_error_single": summary_stats(rel[single]),
            "relative_error_all": summary_stats(rel),
            "logdis_pull_single": summary_stats(pull[single]),
            "fraction_nan": float(np.mean(~np.isfinite(dis)))}


def _nanmedian(x: np.ndarray) -> float:
    x = np.asarray(x, float)
    return float(np.median(x[np.isfinite(x)])) if np.isfinite(x).any() else float("nan")


def _subset(mask: np.ndarray, max_points: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Row indices where ``mask``; a fixed random subset if more than ``max_points``."""
    idx = np.flatnonzero(mask)
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    return idx


def _require(cols: Mapping[str, Any], names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if n not in cols]
    if missing:
        raise MissingProducts(f"{what}: products missing {', '.join(missing)}")


# ----------------------------------------------------------------- new figures (Agg)
def _figure(figsize: tuple[float, float], ncols: int = 1) -> tuple[Any, Any]:
    """A matplotlib Figure without pyplot (no global backend change, thread-safe)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig: Any, path: str) -> str:
    fig.tight_layout()
    return store.save_figure(fig, path, dpi=110)


def write_fig4(cols: Mapping[str, np.ndarray], path: str,
               truth: Mapping[str, np.ndarray] | None = None) -> str:
    """Fig. 4: derived E(B-V) against a reference for plx/err > 5, by emission flag.

    The paper compares with the Green et al. (2019) 3D map; no map ships here, so a
    simulated survey uses its true E(B-V) as the reference (left: scatter, right: the
    difference with its mean and std for non-emission and emission stars, paper: 0.04 /
    0.09 and 0.11 / 0.13 mag). Without truth: E(B-V) against distance (the ``dis``
    product, else 1 / parallax) and the E(B-V) distributions.
    """
    _require(cols, ("ebv", "em_flag"), "Fig. 4")
    ebv = np.asarray(cols["ebv"], float)
    em = np.asarray(cols["em_flag"])
    good = (parallax_snr(cols) > 5) & np.isfinite(ebv)
    fig, (ax0, ax1) = _figure((10, 4.4), 2)
    groups = ((em == 0, "C0", "no emission"), (em == 1, "C3", "emission"))
    if truth is not None and "ebv_true" in truth:
        ref = np.asarray(truth["ebv_true"], float)
        diff = ebv - ref
        hi = float(np.nanpercentile(np.r_[ebv[good], ref[good]], 99.5)) if good.any() else 1
        for sel, c, label in groups:
            idx = _subset(good & sel)
            ax0.scatter(ref[idx], ebv[idx], s=3, c=c, alpha=0.5, label=label, rasterized=True)
        ax0.plot([0, hi], [0, hi], "k-", lw=0.8)
        ax0.set_xlim(0, hi)
        ax0.set_ylim(0, hi)
        ax0.set_xlabel(r"reference $E_{B-V}$ (simulated truth) (mag)")
        ax0.set_ylabel(r"$E_{B-V}$, this work (mag)")
        bins = np.linspace(-0.4, 0.4, 81)
        for sel, c, label in groups:
            d = diff[good & sel]
            if d.size:
                ax1.hist(np.clip(d, bins[0], bins[-1]), bins=bins, histtype="step", color=c,
                         density=True,
                         label=f"{label}: mean {np.mean(d):+.3f}, std {np.std(d):.3f}")
        ax1.set_xlabel(r"$E_{B-V}$ - reference (mag)")
        ax1.set_ylabel("density")
    else:
        if "dis" in cols:
            dist = np.asarray(cols["dis"], float)
            dlabel = "distance (kpc)"
        else:
            plx = cols.get("parallax_corrected", cols.get("parallax"))
            with np.errstate(invalid="ignore", divide="ignore"):
                dist = np.where(np.asarray(plx, float) > 0, 1.0 / np.asarray(plx, float), np.nan)
            dlabel = "1 / parallax (kpc)"
        for sel, c, label in groups:
            idx = _subset(good & sel)
            ax0.scatter(dist[idx], ebv[idx], s=3, c=c, alpha=0.5, label=label, rasterized=True)
        ax0.set_xlabel(dlabel)
        ax0.set_ylabel(r"$E_{B-V}$ (mag)")
        fin = ebv[np.isfinite(ebv)]
        bins = np.linspace(min(-0.2, float(np.min(fin))) if fin.size else -0.2,
                           float(np.percentile(fin, 99.5)) if fin.size else 3.0, 61)
        for sel, c, label in groups:
            d = ebv[np.isfinite(ebv) & sel]
            if d.size:
                ax1.hist(np.clip(d, bins[0], bins[-1]), bins=bins, histtype="step", color=c,
                         label=f"{label}: median {np.median(d):.2f} (n = {d.size})")
        ax1.set_xlabel(r"$E_{B-V}$ (mag)")
        ax1.set_ylabel("spectra")
    ax0.legend(loc="upper left", markerscale=4, fontsize=8)
    ax1.legend(loc="upper left", fontsize=8)
    ax0.set_title(r"$\varpi/\sigma_\varpi > 5$" + f" (n = {int(good.sum())})", fontsize=9)
    return _save(fig, path)


def write_fig11(cols: Mapping[str, np.ndarray], path: str) -> str:
    """Fig. 11: distance histogram (left); relative distance uncertainty ln(10) sigma_logd
    vs distance for single stars with its running median (solid) and the parallax-only
    relative uncertainty sigma_plx / plx of the zero-point-corrected parallax (dashed)."""
    _require(cols, ("dis", "logdis_err"), "Fig. 11")
    dis = np.asarray(cols["dis"], float)
    rel = relative_distance_uncertainty(cols["logdis_err"])
    ok = np.isfinite(dis) & (dis > 0)
    single = ok.copy()
    if "binary_flag" in cols:  # the paper shows single stars only
        single &= np.asarray(cols["binary_flag"]) == 0
    dmax = float(np.percentile(dis[ok], 99.5)) if ok.any() else 15.0
    dmax = max(dmax, 1.0)
    fig, (ax0, ax1) = _figure((10, 4.2), 2)
    ax0.hist(np.clip(dis[ok], 0, dmax), bins=np.linspace(0, dmax, 61), histtype="step",
             color="k")
    ax0.set_xlabel("heliocentric distance (kpc)")
    ax0.set_ylabel("spectra")
    ax0.set_title(f"n = {int(ok.sum())}, median {np.median(dis[ok]) if ok.any() else np.nan:.2f}"
                  " kpc", fontsize=9)
    idx = _subset(single & np.isfinite(rel))
    ax1.scatter(dis[idx], rel[idx], s=2, c="0.6", alpha=0.5, rasterized=True)
    edges = np.linspace(0, dmax, 31)
    xc, med = binned_median(dis[single], rel[single], edges)
    ax1.plot(xc, med, "k-", lw=1.5, label=r"median $\ln 10\,\sigma_{\log d}$")
    if "parallax_corrected" in cols or "parallax" in cols:
        plx = cols.get("parallax_corrected", cols.get("parallax"))
        perr = cols.get("parallax_corrected_error", cols.get("parallax_error"))
        prel = parallax_relative_uncertainty(plx, perr)
        xc, pmed = binned_median(dis[single], prel[single], edges)
        ax1.plot(xc, pmed, "k--", lw=1.2, label=r"parallax only, $\sigma_\varpi/\varpi$")
    ax1.set_xlim(0, dmax)
    fin = rel[single & np.isfinite(rel)]
    ax1.set_ylim(0, max(0.3, float(np.percentile(fin, 98)) if fin.size else 0.5))
    ax1.set_xlabel("distance (kpc)")
    ax1.set_ylabel(r"relative distance uncertainty $\sigma_d / d$")
    ax1.set_title(f"single stars (n = {int(single.sum())}), median "
                  f"{np.median(fin) if fin.size else np.nan:.3f}", fontsize=9)
    ax1.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def write_fig12(cols: Mapping[str, np.ndarray], path: str) -> str:
    """Fig. 12: X-Y map (Galactocentric, kpc) with the Sun (+, X = -8.1 kpc) and dashed
    rings of constant heliocentric distance every 1 kpc."""
    _require(cols, ("X", "Y"), "Fig. 12")
    x = np.asarray(cols["X"], float)
    y = np.asarray(cols["Y"], float)
    ok = np.isfinite(x) & np.isfinite(y)
    fig, ax = _figure((6.5, 6))
    idx = _subset(ok)
    ax.scatter(x[idx], y[idx], s=2, c="C0", alpha=0.5, rasterized=True, lw=0)
    # the box holding 99 % of the stars and the Sun (the paper's: -16 < X < -5, -4 < Y < 5)
    if ok.any():
        xlo, xhi = np.percentile(x[ok], [0.5, 99.5])
        ylo, yhi = np.percentile(y[ok], [0.5, 99.5])
    else:
        xlo, xhi, ylo, yhi = SUN_X_KPC - 5, SUN_X_KPC + 5, -5.0, 5.0
    xlo, xhi = min(xlo, SUN_X_KPC - 1) - 0.5, max(xhi, SUN_X_KPC + 1) + 0.5
    ylo, yhi = min(ylo, -1.0) - 0.5, max(yhi, 1.0) + 0.5
    rmax = float(np.ceil(max(np.hypot(cx - SUN_X_KPC, cy) for cx in (xlo, xhi)
                             for cy in (ylo, yhi))))
    t = np.linspace(0, 2 * np.pi, 721)
    for ring in np.arange(1, rmax + 1):
        ax.plot(SUN_X_KPC + ring * np.cos(t), ring * np.sin(t), "k--", lw=0.5, alpha=0.5)
    ax.plot([SUN_X_KPC], [0], "r+", ms=14, mew=2, label=f"Sun (X = {SUN_X_KPC} kpc)")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    fig.set_size_inches(7.0, float(np.clip(6.2 * (yhi - ylo) / (xhi - xlo) + 1.0, 3.5, 9.0)))
    ax.set_aspect("equal")
    ax.set_xlabel("X (kpc)")
    ax.set_ylabel("Y (kpc)")
    ax.set_title(f"n = {int(ok.sum())}; rings every 1 kpc from the Sun", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def write_validation_mks(cols: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
                         path: str) -> str:
    """M_Ks against the truth (the primary's M_Ks: a binary's spectrum is its dominant
    star's): MKs vs MKs_true, MKs - MKs_true vs S/N with the running median and the
    median quoted error (eq. 10), and the pull distribution (single, not broken), for
    the OB stars (truth ``star_class``), as ``obpipe validate``'s M_Ks metrics: the
    subdwarfs and white dwarfs of a mock are not what the networks describe (their
    pulls reach tens of sigma) and would hide the OB stars' pull width."""
    _require(cols, ("MKs", "MKs_err", "snr_g"), "M_Ks validation")
    mks = np.asarray(cols["MKs"], float)
    err = np.asarray(cols["MKs_err"], float)
    true = np.asarray(truth["MKs_true"], float)
    snr = np.asarray(cols["snr_g"], float)
    single = ~np.asarray(truth["is_binary"], bool) & ~np.asarray(truth["is_broken"], bool)
    if "star_class" in truth:
        single &= np.asarray(truth["star_class"]).astype(object).astype(str) == "OB"
    em = np.asarray(truth["has_emission"], bool)
    ok = np.isfinite(mks) & np.isfinite(true)
    d = mks - true
    fig, (ax0, ax1, ax2) = _figure((14, 4.4), 3)
    lims = (float(np.nanpercentile(true[ok], 0.5)) - 0.5, float(np.nanpercentile(true[ok], 99.5))
            + 0.5) if ok.any() else (-6, 3)
    for sel, c, label in ((~em, "C0", "no emission (truth)"), (em, "C3", "emission (truth)")):
        idx = _subset(ok & single & sel & (snr > 20))
        ax0.scatter(true[idx], mks[idx], s=3, c=c, alpha=0.5, label=label, rasterized=True)
    ax0.plot(lims, lims, "k-", lw=0.8)
    ax0.set_xlim(lims)
    ax0.set_ylim(lims)
    ax0.set_xlabel(r"true $M_{K_s}$ (primary) (mag)")
    ax0.set_ylabel(r"spectroscopic $M_{K_s}$ (mag)")
    ax0.set_title("single OB stars, S/N > 20", fontsize=9)
    ax0.legend(loc="upper left", markerscale=4, fontsize=8)
    sel = ok & single & ~em & (snr > 0)
    idx = _subset(sel)
    ax1.scatter(snr[idx], d[idx], s=2, c="0.6", alpha=0.5, rasterized=True)
    edges = np.geomspace(max(float(np.nanmin(snr[sel])) if sel.any() else 5, 1), 1000, 13)
    xc, med = binned_median(snr[sel], d[sel], edges)
    _, emed = binned_median(snr[sel], err[sel], edges)
    ax1.plot(xc, med, "k-", lw=1.5, label="median residual")
    ax1.plot(xc, emed, "k--", lw=1, label=r"median quoted $\sigma_{M_{K_s}}$")
    ax1.plot(xc, -emed, "k--", lw=1)
    ax1.axhline(0, color="C1", lw=0.8)
    ax1.set_xscale("log")
    ax1.set_ylim(-3, 3)
    ax1.set_xlabel("S/N (g)")
    ax1.set_ylabel(r"$M_{K_s} - M_{K_s}^{\rm true}$ (mag)")
    ax1.set_title("single non-emission OB stars", fontsize=9)
    ax1.legend(loc="lower right", fontsize=8)
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = d / err
    p = pull[sel & (snr > 20) & np.isfinite(pull)]
    bins = np.linspace(-5, 5, 51)
    if p.size:
        ax2.hist(np.clip(p, -5, 5), bins=bins, density=True, histtype="step", color="k",
                 label=f"S/N > 20: std {np.std(p):.2f}, n = {p.size}")
    g = np.linspace(-5, 5, 201)
    ax2.plot(g, np.exp(-0.5 * g**2) / math.sqrt(2 * math.pi), "C1-", lw=1, label="N(0, 1)")
    ax2.set_xlabel(r"$(M_{K_s} - M_{K_s}^{\rm true}) / \sigma_{M_{K_s}}$")
    ax2.set_ylabel("density")
    ax2.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def write_fig9(cols: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
               path: str, min_snr: float = 50.0) -> str:
    """The paper's Fig. 9 from the mock: M_Ks of each composite spectrum (the networks'
    reading, catalog ``MKs``) minus the true M_Ks of its primary, against the mass ratio
    q, for OB+OB (secondary Teff >= 10 kK) and OB+AFGK systems (OB primaries, no
    emission, not broken, S/N > ``min_snr``), with running medians; for reference the
    system's photometric offset (``MKs_system_true - MKs_true``, -0.75 mag at q = 1)
    and the median residual of single OB stars at the same S/N (dotted). The paper
    (Sec. 6) finds its composites read about as faint as the primary, or slightly
    fainter."""
    _require(cols, ("MKs", "snr_g"), "Fig. 9")
    mks = np.asarray(cols["MKs"], float)
    snr = np.asarray(cols["snr_g"], float)
    true = np.asarray(truth["MKs_true"], float)
    q = np.asarray(truth["mass_ratio"], float)
    t2 = np.asarray(truth["teff_secondary_true"], float)
    binary = np.asarray(truth["is_binary"], bool)
    base = ((np.asarray(truth["star_class"]).astype(object).astype(str) == "OB")
            & ~np.asarray(truth["has_emission"], bool) & ~np.asarray(truth["is_broken"], bool)
            & np.isfinite(mks) & (snr > min_snr))
    d = mks - true
    offset = np.asarray(truth["MKs_system_true"], float) - true
    fig, axes = _figure((11, 4.2), 2)
    edges = np.linspace(0.1, 1.0, 10)
    single_med = float(np.nanmedian(d[base & ~binary])) if np.any(base & ~binary) else 0.0
    for ax, sel, title in ((axes[0], base & binary & (t2 >= FIG9_OB_SECONDARY_TEFF_K),
                            "OB + OB"),
                           (axes[1], base & binary & (t2 < FIG9_OB_SECONDARY_TEFF_K),
                            "OB + AFGK")):
        idx = _subset(sel)
        ax.scatter(q[idx], d[idx], s=4, c="C0", alpha=0.5, rasterized=True,
                   label=f"composite - primary (n = {int(sel.sum())})")
        if sel.sum() >= 5:
            xc, med = binned_median(q[sel], d[sel], edges, min_count=3)
            ax.plot(xc, med, "k-", lw=1.5, label="running median")
            xo, mo = binned_median(q[sel], offset[sel], edges, min_count=3)
            ax.plot(xo, mo, "C3--", lw=1, label="system - primary (photometry)")
        ax.axhline(single_med, color="0.4", ls=":", lw=1, label="single stars (median)")
        ax.axhline(0, color="C1", lw=0.8)
        ax.set_ylim(-2, 2)
        ax.set_xlim(0.05, 1.02)
        ax.set_xlabel("mass ratio q")
        ax.set_ylabel(r"$M_{K_s}$(composite) $-$ $M_{K_s}$(primary) (mag)")
        ax.set_title(f"{title}, S/N > {min_snr:g}", fontsize=9)
        ax.legend(loc="lower left", fontsize=7, markerscale=3)
    return _save(fig, path)


def write_validation_distance(cols: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
                              path: str) -> str:
    """Distances against the truth: d vs d_true, the log-distance pull, and the relative
    error vs d_true (running median and the median quoted ln(10) sigma_logd)."""
    _require(cols, ("dis", "logdis", "logdis_err"), "distance validation")
    dis = np.asarray(cols["dis"], float)
    true = np.asarray(truth["distance_kpc_true"], float)
    single = ~np.asarray(truth["is_binary"], bool) & ~np.asarray(truth["is_broken"], bool)
    ok = np.isfinite(dis) & np.isfinite(true) & (dis > 0) & (true > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = (np.asarray(cols["logdis"], float) - np.log10(true)) / np.asarray(
            cols["logdis_err"], float)
        rel = (dis - true) / true
    fig, (ax0, ax1, ax2) = _figure((14, 4.4), 3)
    lo = max(float(np.nanmin(true[ok])) * 0.8, 0.05) if ok.any() else 0.1
    hi = float(np.nanmax(true[ok])) * 1.25 if ok.any() else 20
    for sel, c, label in ((single, "C0", "single (truth)"), (~single, "C3", "binary (truth)")):
        idx = _subset(ok & sel)
        ax0.scatter(true[idx], dis[idx], s=3, c=c, alpha=0.5, label=label, rasterized=True)
    ax0.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax0.set_xscale("log")
    ax0.set_yscale("log")
    ax0.set_xlim(lo, hi)
    ax0.set_ylim(lo, hi)
    ax0.set_xlabel("true distance (kpc)")
    ax0.set_ylabel("distance, mode of the posterior (kpc)")
    ax0.legend(loc="upper left", markerscale=4, fontsize=8)
    p = pull[ok & single & np.isfinite(pull)]
    bins = np.linspace(-5, 5, 51)
    if p.size:
        ax1.hist(np.clip(p, -5, 5), bins=bins, density=True, histtype="step", color="k",
                 label=f"single: std {np.std(p):.2f}, n = {p.size}")
    g = np.linspace(-5, 5, 201)
    ax1.plot(g, np.exp(-0.5 * g**2) / math.sqrt(2 * math.pi), "C1-", lw=1, label="N(0, 1)")
    ax1.set_xlabel(r"$(\log d - \log d_{\rm true}) / \sigma_{\log d}$")
    ax1.set_ylabel("density")
    ax1.legend(loc="upper left", fontsize=8)
    sel = ok & single
    idx = _subset(sel)
    ax2.scatter(true[idx], rel[idx], s=2, c="0.6", alpha=0.5, rasterized=True)
    edges = np.linspace(0, hi, 26)
    xc, med = binned_median(true[sel], rel[sel], edges)
    _, emed = binned_median(true[sel], relative_distance_uncertainty(cols["logdis_err"])[sel],
                            edges)
    ax2.plot(xc, med, "k-", lw=1.5, label="median relative error")
    ax2.plot(xc, emed, "k--", lw=1, label=r"median quoted $\ln 10\,\sigma_{\log d}$")
    ax2.plot(xc, -emed, "k--", lw=1)
    ax2.axhline(0, color="C1", lw=0.8)
    ax2.set_ylim(-1, 1)
    ax2.set_xlabel("true distance (kpc)")
    ax2.set_ylabel(r"$(d - d_{\rm true}) / d_{\rm true}$")
    ax2.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def write_validation_distance_bins(cols: Mapping[str, np.ndarray],
                                   truth: Mapping[str, np.ndarray], path: str) -> str:
    """Per distance bin (:data:`obpipe.validate.DISTANCE_BINS_KPC`), binned by the true
    and by the catalogued distance, single stars (truth): the median of true/dis - 1
    with the closed-form bound s sigma^2 / 2 (:func:`obpipe.validate.distance_bin_metrics`)
    and the 16-84 % coverage with the 0.62-0.74 target band."""
    from obpipe.validate import distance_bin_metrics

    _require(cols, ("dis", "dis_low", "dis_high", "logdis_err", "binary_flag"),
             "distance bins")
    single = ~np.asarray(truth["is_binary"], bool) & (np.asarray(cols["binary_flag"]) == 0)
    m = distance_bin_metrics(truth["distance_kpc_true"], cols["dis"], cols["dis_low"],
                             cols["dis_high"], single, cols.get("distance_flags"),
                             logdis_err=cols["logdis_err"])
    fig, (ax0, ax1) = _figure((11, 4.2), 2)
    for k, (key, style) in enumerate((("by_true_distance", "C0o-"),
                                      ("by_catalog_distance", "C3s-"))):
        rows = m[f"distance_bins_{key}"]
        labels = list(rows)
        x = np.arange(len(labels)) + (k - 0.5) * 0.12
        bias = [np.nan if r["median_true_over_dis_minus_1"] is None
                else r["median_true_over_dis_minus_1"] for r in rows.values()]
        cov = [np.nan if r["coverage_16_84"] is None else r["coverage_16_84"]
               for r in rows.values()]
        ax0.plot(x, bias, style, label=key.replace("_", " "))
        ax1.plot(x, cov, style, label=key.replace("_", " "))
        if key == "by_true_distance":
            bound = [r.get("min_max_bias_bound", np.nan) for r in rows.values()]
            ax0.plot(x, bound, "k^", label=r"bound $s\sigma^2/2$ (either binning)")
            ax0.plot(x, -np.asarray(bound), "kv")
    for ax in (ax0, ax1):
        ax.set_xticks(np.arange(len(labels)), [f"{lab} kpc" for lab in labels])
        ax.legend(fontsize=8)
    ax0.axhspan(-0.03, 0.03, color="0.9", zorder=0)
    ax0.set_ylabel("median(true / dis) - 1")
    ax1.axhspan(0.62, 0.74, color="0.9", zorder=0)
    ax1.set_ylabel("fraction of true distances in [dis_low, dis_high]")
    ax1.set_ylim(0, 1)
    return _save(fig, path)


def write_validation_binaries(cols: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
                              path: str) -> str:
    """Binary completeness against the mass ratio q for plx / sigma > 10: the catalog's
    ``binary_flag`` (every visit, RV, RUWE), the paper's single-spectrum flag and the
    false-positive rates among single stars (truth; simulated survey only)."""
    _require(cols, ("binary_flag", "parallax_corrected", "parallax_corrected_error"),
             "binary validation")
    is_bin = np.asarray(truth["is_binary"], bool)
    q = np.asarray(truth["mass_ratio"], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        good = (np.asarray(cols["parallax_corrected"], float)
                / np.asarray(cols["parallax_corrected_error"], float)) > 10
    edges = np.array([0.1, 0.3, 0.5, 0.7, 0.85, 1.0001])
    xc = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = _figure((6, 4.2))
    flags = [("binary_flag", "C0o-", "binary_flag (visits, RV, RUWE)"),
             ("binary_flag_paper", "C1s--", "paper: one spectrum, S/N(dplx) > 2")]
    for name, style, label in flags:
        if name not in cols:
            continue
        f = np.asarray(cols[name]) == 1
        comp = [float(np.mean(f[is_bin & good & (q >= a) & (q < b)]))
                if np.any(is_bin & good & (q >= a) & (q < b)) else np.nan
                for a, b in zip(edges[:-1], edges[1:], strict=True)]
        fp = float(np.mean(f[~is_bin])) if np.any(~is_bin) else np.nan
        ax.plot(xc, comp, style, label=f"{label}; false positives {100 * fp:.1f} %")
    if all(k in cols for k in ("parallax_spec", "parallax_spec_err", "MKs", "MKs_err")):
        from obpipe.binary import expected_detection_probability

        bound = expected_detection_probability(
            cols["parallax_spec"], cols["parallax_spec_err"], cols["parallax_corrected"],
            cols["parallax_corrected_error"], cols["MKs"], cols["MKs_err"],
            truth["MKs_true"])
        b = [float(np.nanmean(bound[is_bin & good & (q >= lo) & (q < hi)]))
             if np.any(is_bin & good & (q >= lo) & (q < hi)) else np.nan
             for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
        ax.plot(xc, b, "k^:", label="bound of eqs. 15-17 for one spectrum")
    ax.axhline(0.6, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("mass ratio q (truth)")
    ax.set_ylabel("fraction flagged, parallax / error > 10")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


# ----------------------------------------------------------------- reading the run
def _load_columns(survey_path: str, products_dir: str
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The product variables and survey columns the report uses (those present), as numpy."""
    prods = open_products(products_dir)
    per_spec = [v for v in PRODUCT_COLUMNS if v in prods and prods[v].dims == ("spec",)]
    cols = {k: np.asarray(v.values) for k, v in prods[per_spec].load().data_vars.items()}
    survey = store.open_cube(survey_path)
    if survey.sizes["spec"] != prods.sizes["spec"]:
        raise ValueError(f"{survey_path} has {survey.sizes['spec']} spectra but the products "
                         f"{prods.sizes['spec']}: not the products of this survey")
    names = [c for c in SURVEY_COLUMNS if c in survey and c not in cols]
    cols.update({k: np.asarray(v.values) for k, v in survey[names].load().data_vars.items()})
    if "specid" in cols and not np.array_equal(cols["specid"], survey["specid"].values):
        raise ValueError(f"{survey_path}: specid differs from the products' (another survey?)")
    return cols, dict(prods.attrs)


def _load_truth(survey_path: str) -> dict[str, np.ndarray] | None:
    if not store.has_truth(survey_path):
        return None
    truth = store.open_truth(survey_path)
    names = [c for c in TRUTH_COLUMNS if c in truth]
    return {k: np.asarray(v.values) for k, v in truth[names].load().data_vars.items()}


def _thresholds(attrs: Mapping[str, Any]) -> Any:
    from obpipe.spectra.emission import Thresholds

    if "threshold_emission_significance" not in attrs:
        raise MissingProducts("Figs. 2-3: emission thresholds not in the products "
                              "(run the 'emission' stage)")
    return Thresholds(
        emission_significance=float(attrs["threshold_emission_significance"]),
        emission_min_excess=float(attrs.get("threshold_emission_min_excess", 0.0)),
        estimated_purity=float(attrs.get("threshold_estimated_purity", float("nan"))),
        broken_snr_edges=tuple(json.loads(attrs.get("threshold_broken_snr_edges", "[]"))),
        broken_log_chi2=tuple(json.loads(attrs.get("threshold_broken_log_chi2", "[]"))))


def _copy_into(paths: list[str], out_dir: str) -> list[str]:
    names = []
    for p in paths:
        dst = os.path.join(out_dir, os.path.basename(p))
        if store.absolute(p) != store.absolute(dst):
            store.copy_file(p, dst)
        names.append(os.path.basename(p))
    return names


# ----------------------------------------------------------------- the report
def _figure_specs(survey_path: str, products_dir: str, out_dir: str,
                  cols: Mapping[str, np.ndarray], attrs: Mapping[str, Any],
                  truth: Mapping[str, np.ndarray] | None
                  ) -> list[tuple[str, str, str, Callable[[], list[str]]]]:
    """(key, title, caption, draw) for every figure; draw returns file names in out_dir."""
    from obpipe.stages import luminosity as lum

    def out(name: str) -> str:
        return os.path.join(out_dir, name)

    def fig23() -> list[str]:
        _require(cols, ("em_flag", "quality_flags", "halpha_excess", "halpha_chi2"),
                 "Figs. 2-3")
        from obpipe.spectra.figures import write_spectral_figures

        return _copy_into(write_spectral_figures(survey_path, products_dir,
                                                 _thresholds(attrs)), out_dir)

    def fig5() -> list[str]:
        _require(cols, ("MKs", "MKs_geo", "luminosity_set"), "Fig. 5")
        return _copy_into([lum.write_fig5(survey_path, products_dir)], out_dir)

    def fig8() -> list[str]:
        from obpipe.luminosity import noise_model

        files = []
        for m in ("a", "b"):
            src = os.path.join(products_dir, lum.MODEL_DIR, lum.NOISE_FILES[m])
            if store.exists(src):
                r = noise_model.NoiseModelResult.load(src)
                files.append(noise_model.corner_plot(
                    r, out(f"fig8_noise_model_{m}.png"),
                    title=f"network ({m}): {r.meta.get('sample', '')}"))
        if not files:
            raise MissingProducts("Fig. 8: no noise-model posterior in models/ "
                                  "(run the 'luminosity' stage)")
        return [os.path.basename(f) for f in files]

    def fig10() -> list[str]:
        _require(cols, ("snr_dparallax", "MKs_geo"), "Fig. 10")
        return _copy_into([lum.write_fig10(survey_path, products_dir)], out_dir)

    specs: list[tuple[str, str, str, Callable[[], list[str]]]] = [
        ("fig2_3", "Figs. 2 and 3: PCA reconstruction and H-alpha emission",
         "Fig. 2: a non-emission and an emission spectrum (black) with the PCA reconstruction "
         "(red); the clean windows in blue. Fig. 3: mean H-alpha excess (6557-6571 AA) "
         "against the reduced chi2 around H-alpha; the dashed line is the emission cut.",
         fig23),
        ("fig4", "Fig. 4: E(B-V)",
         "E(B-V) from adjacent-band colour excesses (Sec. 4) for plx/err > 5, emission "
         "(red) and non-emission (blue) spectra. " + (
             "The reference is the simulated truth (the paper: the Green et al. 2019 map; "
             "paper: mean/std of the difference 0.04/0.09 mag without, 0.11/0.13 mag with "
             "emission)." if truth is not None else
             "No reference map ships with obpipe: E(B-V) against distance and its "
             "distribution."),
         lambda: [os.path.basename(write_fig4(cols, out("fig4_ebv_comparison.png"), truth))]),
        ("fig5", "Fig. 5: spectroscopic vs geometric M_Ks",
         "Test stars with plx/err > 10 and S/N > 20; left network (a) (full spectrum, "
         "non-emission), right network (b) (clean windows, emission). Solid: 1:1; dashed: "
         "+0.75 mag (equal-mass binaries).", fig5),
        ("fig8", "Fig. 8: noise model posterior",
         "emcee posterior of eps, delta, sigma_int and sigma_s^100 (eqs. 7-14) for each "
         "network (paper: sigma_int = 0.25, sigma_s^100 = 0.10 mag).", fig8),
        ("fig10", "Fig. 10: parallax excess",
         "S/N of the difference between spectro-photometric and Gaia parallax (eq. 16) for "
         "plx/err > 10 and S/N > 50; red: MKs_geo < 0. Dashed: the binary cut at 2.", fig10),
        ("fig11", "Fig. 11: distances",
         "Left: heliocentric distances. Right: relative uncertainty ln(10) sigma_logd of "
         "single stars vs distance, running median (solid) and the parallax-only "
         "sigma_plx/plx (dashed, zero-point-corrected parallax; paper: median 8 %).",
         lambda: [os.path.basename(write_fig11(cols, out("fig11_distance.png")))]),
        ("fig12", "Fig. 12: X-Y map",
         "Galactocentric X-Y positions; the Sun (+) at X = -8.1 kpc, dashed rings every "
         "1 kpc.", lambda: [os.path.basename(write_fig12(cols, out("fig12_xy_map.png")))]),
    ]
    if truth is not None:
        specs += [
            ("fig9", "Fig. 9: composite spectra against their primary",
             "M_Ks read by the networks from each binary's composite spectrum minus the "
             "true M_Ks of its primary, against q, for OB+OB (secondary >= 10 kK) and "
             "OB+AFGK systems, S/N > 50 (simulated survey only). Dashed: the system's "
             "photometric offset; dotted: single stars' median residual. Paper (Sec. 6): "
             "composites read as faint as the primary or slightly fainter.",
             lambda: [os.path.basename(write_fig9(cols, truth, out("fig9_composites.png")))]),
            ("validation_mks", "Validation: M_Ks against the truth",
             "Spectroscopic M_Ks against the true M_Ks of the primary (simulated survey "
             "only), the residual against S/N with the quoted error, and the pull.",
             lambda: [os.path.basename(write_validation_mks(cols, truth,
                                                            out("validation_mks.png")))]),
            ("validation_distance", "Validation: distances against the truth",
             "Mode of the distance posterior against the true distance, the pull of the "
             "log-distance, and the relative error against distance with the quoted "
             "uncertainty.",
             lambda: [os.path.basename(write_validation_distance(
                 cols, truth, out("validation_distance.png")))]),
            ("validation_distance_bins", "Validation: distance bias and coverage per bin",
             "Median of true/dis - 1 and the 16-84 % coverage per distance bin, binned by "
             "the true and by the catalogued distance (single stars), with the target bands "
             "and the closed-form bound s sigma^2 / 2 no prior can beat in both binnings.",
             lambda: [os.path.basename(write_validation_distance_bins(
                 cols, truth, out("validation_distance_bins.png")))]),
            ("validation_binaries", "Validation: binary completeness against q",
             "Fraction of true binaries flagged against the mass ratio, plx/sigma > 10, for "
             "the catalog's binary_flag and the paper's single-spectrum flag, with the "
             "false-positive rate among single stars and the closed-form bound of eqs. "
             "15-17 for one spectrum with an unbiased M_Ks. On a mock the binary model's "
             "training stars are included here; held-out figures: docs/validation.md.",
             lambda: [os.path.basename(write_validation_binaries(
                 cols, truth, out("validation_binaries.png")))]),
        ]
    return specs


def _highlights(summary: Mapping[str, Any], metrics: Mapping[str, Any] | None
                ) -> list[tuple[str, Any, str]]:
    """(label, value, paper / note) rows for the top of the page."""
    f = summary.get("fractions", {})
    rows: list[tuple[str, Any, str]] = [
        ("spectra", summary.get("n_spectra"), "27,784 (DR5)"),
        ("stars", summary.get("n_stars"), "16,002"),
        ("stages complete", ", ".join(summary.get("stages_complete", [])), ""),
        ("emission-line stars (fraction of stars)", f.get("emission_stars"), "0.13"),
        ("broken spectra (fraction)", f.get("broken_spectra"), ""),
        ("binary flag = 1 (fraction of classified)", f.get("binary_of_classified"), ""),
        ("median M_Ks error (mag)", summary.get("median_MKs_err"), ""),
        ("median distance (kpc)", summary.get("median_distance_kpc"), ""),
        ("median relative distance uncertainty", summary.get(
            "median_relative_distance_uncertainty"), "0.08"),
        ("distance > 5 kpc (fraction)", f.get("distance_gt_5kpc"), ""),
        ("catalog rows", summary.get("catalog_rows"), "one per spectrum"),
        ("catalog rows, unique stars", summary.get("catalog_unique_rows"), ""),
    ]
    if metrics:
        def get(*path: str) -> Any:
            cur: Any = metrics
            for p in path:
                if not isinstance(cur, Mapping) or p not in cur:
                    return None
                cur = cur[p]
            return cur

        rows += [
            ("truth: emission completeness (EW < -2 AA)",
             get("spectral", "emission_completeness_ew_lt_-2"), ""),
            ("truth: emission purity", get("spectral", "emission_purity"), ""),
            ("truth: broken-spectrum recall", get("spectral", "broken_recall"), ""),
            ("truth: E(B-V) bias, non-emission (mag)",
             get("photometry", "ebv", "non_emission", "bias"), "0.04 vs Green+19"),
            ("truth: E(B-V) scatter, non-emission (mag)",
             get("photometry", "ebv", "non_emission", "scatter"), "0.09 vs Green+19"),
            ("truth: M_Ks - true, single non-emission S/N > 50: median (mag)",
             get("luminosity", "mks_vs_truth", "single_nonemission_ob_snr_gt_50", "median"),
             ""),
            ("truth: same, robust scatter (mag)",
             get("luminosity", "mks_vs_truth", "single_nonemission_ob_snr_gt_50",
                 "robust_scatter"), ""),
            ("noise model (a): sigma_int (mag)",
             get("luminosity", "noise_model", "a", "sigma_int"), "0.25"),
            ("noise model (a): sigma_s at S/N = 100 (mag)",
             get("luminosity", "noise_model", "a", "sigma_s100"), "0.10"),
            ("truth: binary completeness, q >= 0.85, plx/err > 10",
             get("luminosity", "binary", "completeness_by_q", "q_ge_0.85", "plx_snr_gt_10",
                 "completeness"), ""),
            ("truth: binary false-positive rate (singles)",
             get("luminosity", "binary", "false_positive_rate_singles"), ""),
            ("truth: distance relative error, single: median",
             get("report_distance", "relative_error_single", "median"), ""),
            ("truth: distance relative error, single: robust std",
             get("report_distance", "relative_error_single", "robust_std"), ""),
            ("truth: log-distance pull std, single",
             get("report_distance", "logdis_pull_single", "std"), "1"),
        ]
    return [r for r in rows if r[1] is not None and r[1] != ""]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        v = float(v)
        if not math.isfinite(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


def _jsonable(v: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, NaN / inf to None (strict JSON)."""
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(float(v)) else None
    if v is None or isinstance(v, str):
        return v
    return str(v)


def _html(title: str, meta: list[tuple[str, str]], highlights: list[tuple[str, Any, str]],
          figures: list[FigureResult], metrics: Mapping[str, Any] | None) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:left;font-size:90%}img{max-width:100%;border:1px solid"
        " #eee}.skip{color:#a00}figure{margin:1.5em 0}figcaption{font-size:90%;color:#333}"
        "</style></head><body>",
        f"<h1>{e(title)}</h1>", "<table>",
        *[f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in meta], "</table>",
        "<h2>Summary</h2>",
        "<table><tr><th>quantity</th><th>this run</th><th>paper / expected</th></tr>",
        *[f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td><td>{e(n)}</td></tr>"
          for k, v, n in highlights],
        "</table>", "<h2>Figures</h2>", "<ul>",
        *[f'<li><a href="#{e(f.key)}">{e(f.title)}</a>'
          + (' <span class="skip">(skipped)</span>' if f.skipped else "") + "</li>"
          for f in figures],
        "</ul>",
    ]
    for f in figures:
        parts.append(f'<figure id="{e(f.key)}"><h3>{e(f.title)}</h3>')
        if f.skipped:
            parts.append(f'<p class="skip">skipped: {e(f.skipped)}</p>')
        for name in f.files:
            parts.append(f'<img src="{e(name)}" alt="{e(f.title)}">')
        parts.append(f"<figcaption>{e(f.caption)}</figcaption></figure>")
    if metrics:
        parts += ["<h2>All metrics against the truth</h2>",
                  "<details><summary>obpipe validate (flattened)</summary><table>",
                  *[f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td></tr>"
                    for k, v in _flatten(metrics)],
                  "</table></details>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def _catalog_rows(products_dir: str, summary: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    for key, name in (("catalog_rows", "catalog.parquet"),
                      ("catalog_unique_rows", "catalog_unique.parquet")):
        path = os.path.join(products_dir, name)
        fs, where = store.url_to_fs(path)  # (None, path) for a local path
        if store.exists(path):
            try:
                summary[key] = int(pq.ParquetFile(where, filesystem=fs).metadata.num_rows)
            except (OSError, ValueError) as exc:  # pragma: no cover - a broken file
                log.warning("report: cannot read %s: %s", path, exc)
        elif store.isdir(path):  # a partitioned catalog
            summary[key] = int(pq.ParquetDataset(where, filesystem=fs).read(columns=[])
                               .num_rows)


def write_report(products_dir: str, survey_path: str | None = None,
                 out_dir: str | None = None) -> str:
    """Write the figures, ``report.html`` and ``report_summary.json``; return the HTML path.

    ``survey_path`` defaults to the products' ``survey`` root attribute; ``out_dir`` to
    ``PRODUCTS_DIR/report``. Figures whose products are missing are skipped (logged, and
    listed on the page); metrics against the truth are added for a simulated survey.
    """
    prods_attrs = dict(open_products(products_dir).attrs)
    survey_path = survey_path or prods_attrs.get("survey")
    if not survey_path:
        raise ValueError(f"{products_dir}: no 'survey' attribute in the products; pass the "
                         "survey store (--survey)")
    out_dir = out_dir or os.path.join(products_dir, "report")
    store.makedirs(out_dir)
    cols, attrs = _load_columns(survey_path, products_dir)
    truth = _load_truth(survey_path)
    summary = summary_numbers(cols, attrs)
    _catalog_rows(products_dir, summary)
    metrics: dict[str, Any] | None = None
    if truth is not None:
        from obpipe.validate import validate_survey

        metrics = validate_survey(survey_path, products_dir)
        if all(k in cols for k in ("dis", "logdis", "logdis_err")):
            single = ~truth["is_binary"].astype(bool) & ~truth["is_broken"].astype(bool)
            metrics["report_distance"] = distance_truth_metrics(
                cols["dis"], cols["logdis"], cols["logdis_err"], truth["distance_kpc_true"],
                single)
    figures: list[FigureResult] = []
    for key, title, caption, draw in _figure_specs(survey_path, products_dir, out_dir,
                                                   cols, attrs, truth):
        res = FigureResult(key, title, caption)
        try:
            res.files = draw()
        except MissingProducts as exc:
            res.skipped = str(exc)
            log.info("report: %s skipped: %s", key, exc)
        except Exception as exc:  # a figure never stops the report
            res.skipped = f"failed: {type(exc).__name__}: {exc}"
            log.warning("report: %s failed: %s", key, exc, exc_info=True)
        figures.append(res)
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    meta = [("products", store.absolute(products_dir)), ("survey", str(survey_path)),
            ("truth", "yes (simulated survey)" if truth is not None else "no"),
            ("obpipe", __version__), ("products written by", str(attrs.get(
                "obpipe_version", "?"))), ("created (UTC)", created)]
    highlights = _highlights(summary, metrics)
    page = _html("obpipe report", meta, highlights, figures, metrics)
    path = os.path.join(out_dir, REPORT_HTML)
    with store.open_file(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    with store.open_file(os.path.join(out_dir, SUMMARY_JSON), "w", encoding="utf-8") as fh:
        json.dump(_jsonable({"summary": summary, "highlights": [list(r) for r in highlights],
                   "figures": [{"key": f.key, "files": f.files, "skipped": f.skipped}
                               for f in figures],
                   "metrics": metrics, "products": store.absolute(products_dir),
                   "survey": str(survey_path), "created_utc": created}),
                  fh, indent=1, allow_nan=False)
    log.info("report: %s (%d figures, %d skipped)", path,
             sum(bool(f.files) for f in figures), sum(bool(f.skipped) for f in figures))
    return path
