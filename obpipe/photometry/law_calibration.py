"""The extinction law's K-band scale from the data (beyond the paper; issue 15).

The pipeline de-reddens with one curve family (G23 at R_V = 3.1, eq. 24:
``A_Ks = R_Ks E(B-V)``), and real colours do not decide between families that differ by
~13 % in R_Ks (G23 0.327, F19 0.370 for a B star; docs/validation.md). If the true
``A_Ks`` is ``(1 + k) A_Ks,pipe``, the geometric training targets (eq. 11)
``M_Ks,geo = Ks - A_Ks,pipe + 5 log10(parallax) - 10`` are too faint by ``k A_Ks,pipe``,
so the residual ``M_Ks,geo - M_Ks,spec`` of a luminosity that does not know ``A_Ks``
grows as ``k A_Ks,pipe``. This module fits that slope, robustly and weighted, jointly with
a constant and optional nuisance covariates (:func:`fit_aks_scale`), and measures how much
of ``A_Ks`` the luminosity's inputs predict (:func:`predictable_fraction`): the slope is
the law's only where the inputs are blind to the reddening. Spectra with diffuse
interstellar bands, interstellar Ca II K and Na D are not: a network learns ``k A_Ks``
from its targets through them, the residual no longer carries it, and the fit must not be
applied (see docs/validation.md, "Extinction law from the data").

Pure numpy; no Dask. Magnitudes in mag, ``k`` dimensionless.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from obpipe.stats import robust_std

log = logging.getLogger(__name__)

#: Huber's tuning constant (95 % efficiency for Gaussian residuals; Huber 1964).
HUBER_C = 1.345


@dataclass(frozen=True)
class AksScaleFit:
    """Result of :func:`fit_aks_scale`.

    ``k``: fractional correction of A_Ks (true A_Ks = (1 + k) A_Ks,pipe), ``k_err`` its
    robust (sandwich) standard error; ``delta_r_ks = k * r_ks_median``: the implied change
    of R_Ks at the sample's median R_Ks (NaN if not given); ``intercept_mag`` the constant;
    ``covariates`` the nuisance coefficients in the order given; ``n`` rows used,
    ``n_downweighted`` rows with Huber weight < 1; ``scale_mag`` the robust residual scale.
    """

    k: float
    k_err: float
    delta_r_ks: float
    intercept_mag: float
    covariates: tuple[float, ...]
    n: int
    n_downweighted: int
    scale_mag: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mad_sigma(r: np.ndarray) -> float:
    return float(robust_std(r))


def fit_aks_scale(
    resid_mag: np.ndarray,
    aks_mag: np.ndarray,
    weight: np.ndarray | None = None,
    covariates: np.ndarray | None = None,
    r_ks: np.ndarray | float | None = None,
    huber_c: float = HUBER_C,
    n_iter: int = 20,
    min_rows: int = 20,
) -> AksScaleFit:
    """Robust weighted fit ``resid = c0 + k A_Ks + sum_j b_j cov_j`` (Huber IRLS).

    Parameters
    ----------
    resid_mag : numpy.ndarray
        ``M_Ks,geo - M_Ks,spec`` per row (mag), the spectroscopic value out-of-fold.
    aks_mag : numpy.ndarray
        The pipeline's ``A_Ks = R_Ks E(B-V)`` of the same rows (eq. 24), mag.
    weight : numpy.ndarray, optional
        Inverse variances (1 / mag^2); None: equal weights.
    covariates : numpy.ndarray, optional
        (n, m) nuisance regressors fitted jointly (e.g. parallax_error / parallax for a
        Lutz-Kelker-like trend).
    r_ks : numpy.ndarray or float, optional
        R_Ks of the rows, to express ``k`` as ``delta_r_ks`` at their median.

    Rows with any non-finite value or non-positive weight are left out. Raises
    ``ValueError`` naming the problem when fewer than ``min_rows`` rows remain, the
    shapes disagree, or A_Ks does not vary.
    """
    y = np.asarray(resid_mag, float).ravel()
    a = np.asarray(aks_mag, float).ravel()
    if y.shape != a.shape:
        raise ValueError(f"fit_aks_scale: resid_mag has {y.size} rows, aks_mag {a.size}")
    w = np.ones_like(y) if weight is None else np.asarray(weight, float).ravel()
    if w.shape != y.shape:
        raise ValueError(f"fit_aks_scale: weight has {w.size} rows, resid_mag {y.size}")
    cols = [np.ones_like(y), a]
    if covariates is not None:
        cov = np.asarray(covariates, float)
        cov = cov[:, None] if cov.ndim == 1 else cov
        if cov.shape[0] != y.size:
            raise ValueError(f"fit_aks_scale: covariates have {cov.shape[0]} rows, "
                             f"resid_mag {y.size}")
        cols += [cov[:, j] for j in range(cov.shape[1])]
    x = np.column_stack(cols)
    ok = np.isfinite(y) & np.all(np.isfinite(x), axis=1) & np.isfinite(w) & (w > 0)
    if ok.sum() < min_rows:
        raise ValueError(f"fit_aks_scale: {int(ok.sum())} usable rows (finite residual, "
                         f"A_Ks, covariates and weight > 0), need {min_rows}")
    x, y, w = x[ok], y[ok], w[ok]
    if np.ptp(x[:, 1]) <= 0:
        raise ValueError("fit_aks_scale: A_Ks does not vary over the usable rows")
    sw = np.sqrt(w)
    hub = np.ones_like(y)
    beta = np.zeros(x.shape[1])
    scale = 1.0
    for _ in range(n_iter):
        ww = np.sqrt(hub) * sw
        beta_new = np.linalg.lstsq(x * ww[:, None], y * ww, rcond=None)[0]
        u = (y - x @ beta_new) * sw
        scale = _mad_sigma(u) or 1.0
        z = np.abs(u) / (huber_c * scale)
        hub = np.where(z <= 1.0, 1.0, 1.0 / np.maximum(z, 1e-12))
        done = np.allclose(beta_new, beta, rtol=0, atol=1e-7)
        beta = beta_new
        if done:
            break
    # sandwich covariance of the M-estimator (Huber psi on standardised residuals)
    u = (y - x @ beta) * sw / scale
    psi = np.clip(u, -huber_c, huber_c)
    dpsi = (np.abs(u) <= huber_c).astype(float)
    xs = x * sw[:, None]
    bread = np.linalg.pinv(xs.T @ (xs * dpsi[:, None]))
    meat = xs.T @ (xs * (psi**2)[:, None])
    cov_beta = scale**2 * bread @ meat @ bread * y.size / max(y.size - x.shape[1], 1)
    k = float(beta[1])
    r_med = (float(np.nanmedian(np.asarray(r_ks, float)[ok])) if np.ndim(r_ks)
             else (float(r_ks) if r_ks is not None else np.nan))
    return AksScaleFit(k=k, k_err=float(np.sqrt(cov_beta[1, 1])), delta_r_ks=k * r_med,
                       intercept_mag=float(beta[0]),
                       covariates=tuple(float(b) for b in beta[2:]), n=int(y.size),
                       n_downweighted=int(np.sum(hub < 1.0)), scale_mag=float(scale))


def predictable_fraction(
    aks_mag: np.ndarray,
    features: np.ndarray,
    n_folds: int = 5,
    ridge: float = 1e-3,
    seed: int = 0,
) -> float:
    """Cross-fitted R^2 of ``A_Ks`` from ``features`` by ridge regression (linear).

    The share of the A_Ks variance that the luminosity's inputs (e.g. the PCA
    coefficients of the spectra) predict on rows they were not fitted on: near 0 the
    inputs are blind to the reddening and :func:`fit_aks_scale` on the residuals of a
    model of those inputs measures the law; near 1 a model of the inputs can learn
    ``k A_Ks`` from its targets and the residual slope is not the law. ``ridge`` is the
    penalty relative to the mean diagonal of the standardised normal matrix. Rows with
    non-finite values are left out; ``ValueError`` if fewer than ``5 n_folds`` remain.
    """
    a = np.asarray(aks_mag, float).ravel()
    f = np.asarray(features, float)
    f = f[:, None] if f.ndim == 1 else f
    if f.shape[0] != a.size:
        raise ValueError(f"predictable_fraction: features have {f.shape[0]} rows, "
                         f"aks_mag {a.size}")
    ok = np.isfinite(a) & np.all(np.isfinite(f), axis=1)
    if ok.sum() < 5 * n_folds:
        raise ValueError(f"predictable_fraction: {int(ok.sum())} usable rows, "
                         f"need {5 * n_folds}")
    a, f = a[ok], f[ok]
    fold = np.random.default_rng(seed).integers(0, n_folds, a.size)
    pred = np.empty_like(a)
    for i in range(n_folds):
        tr = fold != i
        mu, sd = f[tr].mean(axis=0), f[tr].std(axis=0)
        sd[sd == 0] = 1.0
        xt = np.column_stack([np.ones(tr.sum()), (f[tr] - mu) / sd])
        g = xt.T @ xt
        pen = ridge * np.trace(g) / g.shape[0] * np.eye(g.shape[0])
        pen[0, 0] = 0.0
        beta = np.linalg.solve(g + pen, xt.T @ a[tr])
        xv = np.column_stack([np.ones((~tr).sum()), (f[~tr] - mu) / sd])
        pred[~tr] = xv @ beta
    return float(1.0 - np.mean((a - pred) ** 2) / np.var(a))
