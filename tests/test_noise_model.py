"""Sec. 5.3 noise model: emcee recovers injected eps, delta, sigma_int, sigma_s100."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.luminosity import noise_model as nm

TRUE = {"eps": -0.05, "delta": 0.10, "sigma_int": 0.25, "sigma_s100": 0.10}


def simulate(n: int, seed: int, binary_fraction: float = 0.0):
    """Data drawn from eqs. (7)-(12), optionally with equal-mass binaries in M_geo."""
    rng = np.random.default_rng(seed)
    m_geo_true = rng.uniform(-4, 2, n)
    snr = 10 ** rng.uniform(np.log10(15), np.log10(600), n)
    geo_err = rng.uniform(0.03, 0.2, n)
    m_bar = (1 + TRUE["eps"]) * m_geo_true + TRUE["delta"]
    m_s = m_bar + rng.normal(0, TRUE["sigma_int"], n)
    m_o = m_s + rng.normal(0, 1, n) * TRUE["sigma_s100"] / (snr / 100)
    m_geo = m_geo_true + rng.normal(0, 1, n) * geo_err
    is_bin = rng.random(n) < binary_fraction
    m_geo[is_bin] -= 0.75
    return m_o, m_geo, geo_err, snr, is_bin


@pytest.fixture(scope="module")
def fit():
    m_o, m_geo, geo_err, snr, _ = simulate(3000, 1)
    return nm.fit_noise_model(m_o, m_geo, geo_err, snr, clip_sigma=np.inf, n_steps=1500,
                              seed=2)


def test_recovers_injected_parameters(fit) -> None:
    mean, std = fit.mean, fit.std
    for k, v in TRUE.items():
        assert abs(mean[k] - v) < 4 * std[k] + 0.005, (k, mean[k], std[k], v)
    assert fit.converged
    assert 0.15 < fit.acceptance < 0.8
    assert np.all(fit.n_steps > 50 * fit.tau)


def test_binary_clipping_removes_binaries() -> None:
    m_o, m_geo, geo_err, snr, is_bin = simulate(3000, 5, binary_fraction=0.2)
    keep, theta, n_it = nm.clip_binaries(m_o, m_geo, geo_err, snr, clip_sigma=2.0)
    assert n_it >= 2
    # at sigma_tot ~ 0.3 mag a 0.75 mag offset is ~2.5 sigma: about half are clipped
    assert np.mean(~keep[is_bin]) > 0.3
    assert np.mean(~keep[~is_bin]) < 0.1
    # without clipping sigma_int is inflated by the binaries
    _, theta_all, _ = nm.clip_binaries(m_o, m_geo, geo_err, snr, clip_sigma=np.inf)
    assert theta_all[2] > theta[2]
    assert abs(theta[2] - TRUE["sigma_int"]) < 0.06


def test_save_load_and_corner(tmp_path, fit) -> None:
    path = str(tmp_path / "noise.npz")
    fit.save(path)
    back = nm.NoiseModelResult.load(path)
    assert back.mean["sigma_int"] == pytest.approx(fit.mean["sigma_int"], rel=1e-5)
    assert back.converged == fit.converged
    fig = nm.corner_plot(back, str(tmp_path / "fig8.png"))
    import os

    assert os.path.getsize(fig) > 10_000


def test_mks_uncertainty() -> None:
    err = nm.mks_uncertainty(np.array([100.0, 50.0, np.nan, 0.0]), 0.25, 0.10)
    np.testing.assert_allclose(err[:2], [np.hypot(0.25, 0.1), np.hypot(0.25, 0.2)])
    assert np.isnan(err[2:]).all()


def test_bright_outliers_at_low_snr_inflate_sigma_s100_unless_clipped() -> None:
    """Stars the networks do not describe (a subdwarf given an OB star's M_Ks) sit on the
    bright side at low S/N; the lower clip keeps them out of sigma_s100."""
    m_o, m_geo, geo_err, snr, _ = simulate(3000, 11)
    rng = np.random.default_rng(12)
    low = np.flatnonzero(snr < 60)
    bad = rng.choice(low, size=150, replace=False)
    m_o[bad] -= rng.uniform(2.0, 5.0, bad.size)  # predicted far too bright
    _, theta_paper, _ = nm.clip_binaries(m_o, m_geo, geo_err, snr, clip_sigma=2.0)
    keep, theta, _ = nm.clip_binaries(m_o, m_geo, geo_err, snr, clip_sigma=2.0,
                                      clip_lower_sigma=3.0)
    assert np.mean(~keep[bad]) > 0.95
    assert theta_paper[3] > 2 * TRUE["sigma_s100"]
    assert abs(theta[3] - TRUE["sigma_s100"]) < 0.03
    assert abs(theta[2] - TRUE["sigma_int"]) < 0.04


def test_ensemble_spread_is_a_known_variance_term() -> None:
    """With a per-star epistemic term e_i in the data, fitting with it recovers sigma_int;
    ignoring it inflates sigma_int. The per-spectrum error then adds e_i in quadrature."""
    m_o, m_geo, geo_err, snr, _ = simulate(3000, 21)
    rng = np.random.default_rng(22)
    spread = rng.uniform(0.0, 0.5, m_o.size)
    m_o = m_o + rng.normal(0, 1, m_o.size) * spread
    res = nm.fit_noise_model(m_o, m_geo, geo_err, snr, clip_sigma=np.inf, n_steps=1500,
                             seed=3, epistemic_mag=spread)
    ignored = nm.fit_noise_model(m_o, m_geo, geo_err, snr, clip_sigma=np.inf, n_steps=1500,
                                 seed=3)
    assert res.includes_epistemic and not ignored.includes_epistemic
    assert abs(res.sigma_int - TRUE["sigma_int"]) < 0.03
    assert ignored.sigma_int > TRUE["sigma_int"] + 0.05
    err = nm.mks_uncertainty(snr, res.sigma_int, res.sigma_s100, spread)
    pull = (m_o - ((1 + res.mean["eps"]) * m_geo + res.mean["delta"])) / np.hypot(err, geo_err)
    assert 0.93 < np.std(pull) < 1.07
    np.testing.assert_allclose(
        nm.mks_uncertainty(np.array([100.0]), 0.25, 0.10, np.array([0.2])),
        [np.sqrt(0.25**2 + 0.1**2 + 0.2**2)])
