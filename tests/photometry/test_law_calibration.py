"""obpipe.photometry.law_calibration on synthetic data with a known slope (no Dask)."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.photometry.law_calibration import fit_aks_scale, predictable_fraction


def _sample(n: int = 4000, k: float = 0.13, seed: int = 1):
    rng = np.random.default_rng(seed)
    aks = rng.gamma(2.0, 0.15, n)  # mag
    err = rng.uniform(0.1, 0.4, n)
    resid = 0.02 + k * aks + rng.normal(0, err)
    return aks, err, resid, rng


def test_recovers_known_slope_within_error():
    aks, err, resid, _ = _sample(k=0.13)
    fit = fit_aks_scale(resid, aks, weight=1 / err**2, r_ks=0.327)
    assert abs(fit.k - 0.13) < 3 * fit.k_err
    assert 0.005 < fit.k_err < 0.05
    assert fit.delta_r_ks == pytest.approx(fit.k * 0.327)
    assert abs(fit.intercept_mag - 0.02) < 0.02


def test_zero_slope_is_zero_within_error():
    aks, err, resid, _ = _sample(k=0.0, seed=7)
    fit = fit_aks_scale(resid, aks, weight=1 / err**2)
    assert abs(fit.k) < 3 * fit.k_err
    assert np.isnan(fit.delta_r_ks)


def test_error_is_calibrated_over_repeats():
    """The sandwich error matches the scatter of k over independent samples."""
    ks, errs = [], []
    for s in range(30):
        aks, err, resid, _ = _sample(n=1500, k=0.1, seed=100 + s)
        f = fit_aks_scale(resid, aks, weight=1 / err**2)
        ks.append(f.k)
        errs.append(f.k_err)
    ratio = np.std(ks) / np.median(errs)
    assert 0.6 < ratio < 1.5
    assert abs(np.mean(ks) - 0.1) < 3 * np.median(errs) / np.sqrt(30)


def test_outliers_do_not_move_the_slope():
    """Binaries (2 % of rows, 0.75 mag too bright at high A_Ks) barely shift a Huber fit."""
    aks, err, resid, rng = _sample(k=0.13, seed=3)
    bad = rng.random(aks.size) < 0.02
    resid = resid.copy()
    resid[bad & (aks > 0.3)] += 0.75 + 3.0  # far tail
    fit = fit_aks_scale(resid, aks, weight=1 / err**2)
    ols = np.polyfit(aks, resid, 1)[0]
    assert abs(fit.k - 0.13) < 3 * fit.k_err
    assert abs(ols - 0.13) > abs(fit.k - 0.13)
    assert fit.n_downweighted > bad.sum() // 2


def test_nuisance_covariate_is_separated():
    """A trend in a correlated nuisance variable is absorbed by its own coefficient."""
    aks, err, _, rng = _sample(k=0.0, seed=11)
    frac = 0.02 + 0.5 * aks / aks.max() + rng.uniform(0, 0.05, aks.size)
    resid = 0.1 * aks + 1.5 * frac + rng.normal(0, err)
    alone = fit_aks_scale(resid, aks, weight=1 / err**2)
    joint = fit_aks_scale(resid, aks, weight=1 / err**2, covariates=frac)
    assert abs(alone.k - 0.1) > 5 * alone.k_err
    assert abs(joint.k - 0.1) < 3 * joint.k_err
    assert joint.covariates[0] == pytest.approx(1.5, abs=0.3)


def test_non_finite_rows_left_out_and_bad_input_named():
    aks, err, resid, _ = _sample(n=200)
    resid = resid.copy()
    resid[:10] = np.nan
    fit = fit_aks_scale(resid, aks, weight=1 / err**2)
    assert fit.n == 190
    with pytest.raises(ValueError, match="aks_mag"):
        fit_aks_scale(resid, aks[:-1])
    with pytest.raises(ValueError, match="usable rows"):
        fit_aks_scale(resid[:15], aks[:15])
    with pytest.raises(ValueError, match="does not vary"):
        fit_aks_scale(resid, np.full(aks.size, 0.2))


def test_predictable_fraction_blind_and_seeing_inputs():
    rng = np.random.default_rng(5)
    n = 3000
    aks = rng.gamma(2.0, 0.15, n)
    blind = rng.normal(size=(n, 20))
    seeing = blind.copy()
    seeing[:, 3] = 5.0 * aks + rng.normal(0, 0.5, n)  # a DIB strength ~ E(B-V), noisy
    assert predictable_fraction(aks, blind) < 0.05
    # R^2 = var(5 A) / (var(5 A) + 0.5^2) ~ 0.82 for this A_Ks distribution
    assert predictable_fraction(aks, seeing) == pytest.approx(
        np.var(5 * aks) / (np.var(5 * aks) + 0.25), abs=0.05)
    with pytest.raises(ValueError, match="features have"):
        predictable_fraction(aks, blind[:-1])
