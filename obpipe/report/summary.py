"""Summary numbers of a run for ``obpipe report`` (pure numpy, no plotting, no I/O).

Counts and fractions from the products (:func:`summary_numbers`), distances against the
truth of a simulated survey (:func:`distance_truth_metrics`), and the array helpers the
figures share (running median, relative distance and parallax uncertainties, Fig. 11).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from obpipe.stats import summary_stats


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
