"""The report's own figures (Figs. 4, 9, 11, 12 and the validation figures), as PNG.

Each ``write_*`` function takes the per-spectrum columns as numpy arrays (and the truth
for the validation figures), draws one matplotlib ``Figure`` without pyplot (no global
backend change) and returns the path written. A figure whose columns are missing raises
:class:`MissingProducts`; :mod:`obpipe.report.page` shows the reason instead of the figure.
Scatter panels show at most :data:`MAX_POINTS` randomly chosen spectra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from obpipe.io import store
from obpipe.report.summary import (
    binned_median,
    parallax_relative_uncertainty,
    parallax_snr,
    relative_distance_uncertainty,
)

#: Sun's Galactocentric X (kpc), Y = Z = 0: the paper's convention (DESIGN.md).
SUN_X_KPC = -8.1
#: at most this many points in a scatter panel (random subset, fixed seed)
MAX_POINTS = 200_000
#: a secondary at least this hot (K) makes an "OB+OB" system in Fig. 9, else "OB+AFGK"
FIG9_OB_SECONDARY_TEFF_K = 10_000.0


class MissingProducts(Exception):
    """A figure cannot be drawn: the products it needs are absent (reason in the message)."""


def _subset(mask: np.ndarray, max_points: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Row indices where ``mask``; a fixed random subset if more than ``max_points``."""
    idx = np.flatnonzero(mask)
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    return idx


def require_columns(cols: Mapping[str, Any], names: tuple[str, ...], what: str) -> None:
    """Raise :class:`MissingProducts` naming the ``names`` absent from ``cols`` (for ``what``)."""
    missing = [n for n in names if n not in cols]
    if missing:
        raise MissingProducts(f"{what}: products missing {', '.join(missing)}")


# ----------------------------------------------------------------- drawing
def _figure(figsize: tuple[float, float], ncols: int = 1) -> tuple[Any, Any]:
    """A matplotlib Figure without pyplot (no global backend change, thread-safe)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig: Any, path: str) -> str:
    fig.tight_layout()
    return store.save_figure(fig, path, dpi=110)


def _pull_panel(ax: Any, pulls: np.ndarray, label: str, xlabel: str) -> None:
    """Histogram of ``pulls`` (clipped to +-5) with N(0, 1) over it; the legend gives the
    pulls' std and number under ``label``."""
    if pulls.size:
        ax.hist(np.clip(pulls, -5, 5), bins=np.linspace(-5, 5, 51), density=True,
                histtype="step", color="k",
                label=f"{label}: std {np.std(pulls):.2f}, n = {pulls.size}")
    g = np.linspace(-5, 5, 201)
    ax.plot(g, np.exp(-0.5 * g**2) / math.sqrt(2 * math.pi), "C1-", lw=1, label="N(0, 1)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(loc="upper left", fontsize=8)


def write_fig4(cols: Mapping[str, np.ndarray], path: str,
               truth: Mapping[str, np.ndarray] | None = None) -> str:
    """Fig. 4: derived E(B-V) against a reference for plx/err > 5, by emission flag.

    The paper compares with the Green et al. (2019) 3D map; no map ships here, so a
    simulated survey uses its true E(B-V) as the reference (left: scatter, right: the
    difference with its mean and std for non-emission and emission stars, paper: 0.04 /
    0.09 and 0.11 / 0.13 mag). Without truth: E(B-V) against distance (the ``dis``
    product, else 1 / parallax) and the E(B-V) distributions.
    """
    require_columns(cols, ("ebv", "em_flag"), "Fig. 4")
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
    require_columns(cols, ("dis", "logdis_err"), "Fig. 11")
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
    require_columns(cols, ("X", "Y"), "Fig. 12")
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
    require_columns(cols, ("MKs", "MKs_err", "snr_g"), "M_Ks validation")
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
    _pull_panel(ax2, pull[sel & (snr > 20) & np.isfinite(pull)], "S/N > 20",
                r"$(M_{K_s} - M_{K_s}^{\rm true}) / \sigma_{M_{K_s}}$")
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
    require_columns(cols, ("MKs", "snr_g"), "Fig. 9")
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
    require_columns(cols, ("dis", "logdis", "logdis_err"), "distance validation")
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
    ax0.set_ylabel("catalogued distance dis (kpc)")
    ax0.legend(loc="upper left", markerscale=4, fontsize=8)
    _pull_panel(ax1, pull[ok & single & np.isfinite(pull)], "single",
                r"$(\log d - \log d_{\rm true}) / \sigma_{\log d}$")
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

    require_columns(cols, ("dis", "dis_low", "dis_high", "logdis_err", "binary_flag"),
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
    require_columns(cols, ("binary_flag", "parallax_corrected", "parallax_corrected_error"),
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

