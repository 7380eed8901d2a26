"""Robust statistics shared by the stages, the validation and the benchmarks.

The paper measures scatters robustly: the emission-line thresholds use robust standard
deviations of spectra of similar S/N (Sec. 3), and the accuracy figures quote the
dispersion of the core of a residual distribution (Secs. 4-7). One helper does it here,
so that the MAD-to-sigma factor is written once; the least-squares slope lives here
for the same reason.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: Gaussian standard deviation per median absolute deviation, 1 / Phi^-1(3/4): the
#: consistency factor b of MAD_n in Rousseeuw & Croux (1993, JASA 88, 1273).
MAD_TO_SIGMA = 1.4826

#: Keys of :func:`summary_stats`, in order.
SUMMARY_KEYS = ("n", "mean", "median", "std", "robust_std")


def robust_std(x: np.ndarray, axis: int | None = None) -> Any:
    """Robust standard deviation ``MAD_TO_SIGMA x median(|x - median(x)|)`` (units of ``x``).

    ``x`` is used as given (no NaN filtering: select the finite values first); ``axis`` as
    in :func:`numpy.median`. Returns a numpy scalar for ``axis=None``, an array otherwise.
    """
    x = np.asarray(x)
    med = np.median(x, axis=axis, keepdims=True)
    return MAD_TO_SIGMA * np.median(np.abs(x - med), axis=axis)


def summary_stats(x: np.ndarray) -> dict[str, float]:
    """``n``, ``mean``, ``median``, ``std`` and ``robust_std`` of the finite values of ``x``.

    Every key is present; with no finite value ``n`` is 0 and the others are NaN.
    """
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"n": 0, **{k: float("nan") for k in SUMMARY_KEYS[1:]}}
    return {"n": int(x.size), "mean": float(np.mean(x)), "median": float(np.median(x)),
            "std": float(np.std(x)), "robust_std": float(robust_std(x))}


def least_squares_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` on ``x`` (units of y per unit of x); NaN with fewer
    than 3 points or no spread in ``x``. Both used as given (select finite values first)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size < 3:
        return float("nan")
    xc = x - x.mean()
    var = float(np.sum(xc * xc))
    return float(np.sum(xc * (y - y.mean())) / var) if var > 0 else float("nan")
