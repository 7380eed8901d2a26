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


def test_sigma_s_table_interpolates_and_extends_as_a_power_law() -> None:
    snr_t = np.array([10.0, 20.0, 40.0])
    sig_t = np.array([0.8, 0.4, 0.2])  # sigma_s = 8 / (S/N): the table is eq. (10)'s law
    snr = np.array([5.0, 10.0, 14.142, 30.0, 80.0, 0.0])
    got = nm.sigma_s_from_table(snr, snr_t, sig_t)
    np.testing.assert_allclose(got[:5], [0.8, 0.8, 8 / 14.142, 8 / 30.0, 0.1], rtol=1e-3)
    assert np.isnan(got[5])
    err = nm.mks_uncertainty(np.array([30.0]), 0.2, 99.0, sigma_s_table=(snr_t, sig_t))
    np.testing.assert_allclose(err, np.hypot(0.2, 8 / 30.0), rtol=1e-3)  # sigma_s100 unused
    with pytest.raises(ValueError, match="increasing S/N"):
        nm.sigma_s_from_table(snr, snr_t[::-1], sig_t)


def test_degraded_scatter_measures_the_noise_response() -> None:
    """A linear 'network' (M = 5 x mean flux over 400 pixels) on spectra of S/N 300-600
    with a masked pixel block: the std of M(degraded) - M(clean) at each target S/N must
    be 5 sqrt(1/S/N_t^2 - 1/S/N_0^2) / sqrt(n_good) per spectrum, and the shift zero."""
    rng = np.random.default_rng(3)
    n, npix = 3000, 400
    snr0 = rng.uniform(300, 600, n)
    ivar = np.repeat((snr0**2)[:, None], npix, axis=1)
    ivar[:, :40] = 0.0  # masked pixels stay masked: they never get noise
    flux = 1.0 + rng.standard_normal((n, npix)) / np.sqrt(np.where(ivar > 0, ivar, 1.0))
    flux[:, :40] = 1e3  # garbage under the mask: unchanged, so it cancels in the difference

    seen: list[np.ndarray] = []

    def predict(f: np.ndarray, iv: np.ndarray, rows: np.ndarray) -> np.ndarray:
        assert f.shape[0] == rows.size
        seen.append(rows)
        return 5.0 * np.mean(np.where(iv > 0, f, 0.0), axis=1) * npix / (npix - 40)

    for per_level in (None, 500):
        seen.clear()
        out = nm.degraded_snr_scatter(flux, ivar, snr0, predict,
                                      target_snr=(10.0, 50.0, 250.0), max_per_level=per_level)
        assert out["snr"] == [10.0, 50.0]  # no spectrum at S/N >= 3 x 250
        assert out["n"] == ([n, n] if per_level is None else [per_level, per_level])
        # the clean spectra are predicted once; the two levels share theirs
        assert seen[0].size == (n if per_level is None else per_level)
        for t, s, err, shift in zip(out["snr"], out["sigma_mag"], out["sigma_err_mag"],
                                    out["shift_mag"], strict=True):
            expect = 5.0 * np.mean(np.sqrt(1 / t**2 - 1 / snr0**2)) / np.sqrt(npix - 40)
            # the quoted statistical error is the Gaussian one, sqrt(1 / 2n) of the std
            assert abs(err / (s / np.sqrt(2 * out["n"][0])) - 1) < 0.2, (err, s)
            assert abs(s / expect - 1) < max(4 * err / s, 0.01), (t, s, expect, err)
            assert abs(shift) < 4 * s / np.sqrt(out["n"][0])


def test_block_error_uses_the_degraded_table_and_it_survives_save_load(tmp_path) -> None:
    """luminosity_block's MKs_err takes sigma_s from the noise model's degraded-spectra
    table (issue 15) when there is one, eq. (10) otherwise; the table is saved with it."""
    from obpipe.luminosity.network_training import TrainConfig, train_network
    from obpipe.stages.luminosity import luminosity_block, noise_sigmas

    theta = np.array([TRUE[k] for k in nm.PARAM_NAMES])
    res = nm.NoiseModelResult(samples=np.tile(theta, (10, 1)), ml=theta,
                              keep=np.ones(10, bool), tau=np.ones(4), acceptance=0.3,
                              n_steps=10, converged=True, n_clip_iterations=1)
    table = {"snr": [5.0, 20.0, 100.0], "n": [50, 50, 50], "sigma_mag": [0.9, 0.5, 0.2],
             "shift_mag": [0.0, 0.0, 0.0]}
    res.meta["sigma_s_degraded"] = table
    res.save(str(tmp_path / "noise.npz"))
    back = nm.NoiseModelResult.load(str(tmp_path / "noise.npz"))
    np.testing.assert_allclose(back.sigma_s_table[1], table["sigma_mag"])
    rng = np.random.default_rng(0)
    x = (1.0 + 0.05 * rng.standard_normal((100, 3909))).astype(np.float32)
    y = x[:, 1000:1100].mean(axis=1) * 10
    paths = []
    for m in ("a", "b"):
        net, _ = train_network(x, y, kind=m, config=TrainConfig(max_epochs=2, loss="mag",
                                                                 n_members=2))
        paths.append((m, str(tmp_path / f"{m}.safetensors")))
        net.save(paths[-1][1])
    snr = np.array([5.0, 10.0, 20.0, 50.0, 100.0, 400.0])
    inputs = {"recon_flux": x[:6], "em_flag": np.zeros(6, np.int8),
              "quality_flags": np.zeros(6, np.int16), "snr_g": snr}
    sig = noise_sigmas({"a": back, "b": back})
    out = luminosity_block(inputs, tuple(paths), sig, "recon_flux")["MKs_err"]
    want = np.hypot(back.sigma_int, nm.sigma_s_from_table(snr, *back.sigma_s_table))
    np.testing.assert_allclose(out, want, rtol=1e-5)
    assert out[0] < nm.mks_uncertainty(snr[:1], back.sigma_int, 0.2)[0]  # eq. 10: 4.0 mag
    back.meta.pop("sigma_s_degraded")
    out10 = luminosity_block(inputs, tuple(paths), noise_sigmas({"a": back, "b": back}),
                             "recon_flux")["MKs_err"]
    np.testing.assert_allclose(out10, nm.mks_uncertainty(snr, back.sigma_int, back.sigma_s100),
                               rtol=1e-5)


def test_sampler_log_posterior_is_eq_13() -> None:
    """The sampler's in-place log-posterior equals log_prior + log_likelihood (eqs. 13-14)
    for walkers inside and outside the prior."""
    m_o, m_geo, geo_err, snr, _ = simulate(500, 4)
    lp = nm._LogProb(m_o, m_geo, geo_err, snr, nm.DEFAULT_PRIOR_BOUNDS)
    theta = np.array([TRUE[k] for k in nm.PARAM_NAMES]) + 0.05 * np.random.default_rng(
        0).standard_normal((16, 4))
    theta[3, 2] = -0.1  # outside the prior
    want = nm.log_prior(theta) + nm.log_likelihood(theta, m_o, m_geo, geo_err, snr)
    got = lp(theta)
    assert np.isneginf(got[3]) and np.isneginf(want[3])
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-12)


def test_chain_converges_within_the_default_steps() -> None:
    """With the differential-evolution moves the default chain is > 50 autocorrelation
    times long with an acceptance fraction in 0.15-0.8 (no extension needed), and
    recovers the injected parameters."""
    m_o, m_geo, geo_err, snr, _ = simulate(2000, 5)
    res = nm.fit_noise_model(m_o, m_geo, geo_err, snr, clip_sigma=np.inf, seed=1)
    assert res.converged and res.n_steps == 1000, (res.n_steps, res.tau, res.acceptance)
    assert np.all(res.tau < 20)
    for k, v in TRUE.items():
        assert abs(res.mean[k] - v) < 4 * res.std[k] + 0.005, (k, res.mean[k], v)


# ---- the pull toward the training mean at low S/N, and its undoing (issue 15 item 2) ----

PIVOT, SPREAD2, DEPTH = -1.0, 1.44, 0.015


def _shrinking_reader(pattern: np.ndarray):
    """A reader that behaves like the networks on prior-projected spectra: the line depth
    along ``pattern`` measures M_Ks, and the reading is shrunk toward the population mean
    PIVOT as far as the row's noise makes it uncertain (a posterior mean)."""
    norm = DEPTH * float(pattern @ pattern)

    def predict(f: np.ndarray, iv: np.ndarray, rows: np.ndarray) -> np.ndarray:
        est = (np.asarray(f, float) - 1.0) @ pattern / norm
        noise_var = np.mean(1.0 / iv, axis=1) / (DEPTH * norm)
        return PIVOT + SPREAD2 / (SPREAD2 + noise_var) * (est - PIVOT)

    return predict


def _line_spectra(m_true: np.ndarray, pattern: np.ndarray, snr: float, rng):
    flux = 1.0 + DEPTH * m_true[:, None] * pattern[None, :]
    flux = flux + rng.normal(0.0, 1.0 / snr, flux.shape)
    return flux.astype(np.float32), np.full(flux.shape, snr**2, dtype=np.float32)


def test_degraded_spectra_measure_the_pull_and_deshrink_undoes_it() -> None:
    """On degraded copies the slope of the noisy on the clean reading falls with the S/N as
    the reader's shrinkage does; de-shrunk with that attenuation, fresh noisy spectra of
    known M_Ks read without the pull (slope ~1 on the truth) where the raw readings are
    pulled toward the pivot, and the de-shrunk sigma is the larger one."""
    rng = np.random.default_rng(5)
    pattern = rng.normal(size=200)
    predict = _shrinking_reader(pattern)
    m_clean = rng.normal(PIVOT, np.sqrt(SPREAD2), 1500)
    flux, ivar = _line_spectra(m_clean, pattern, 400.0, rng)
    out = nm.degraded_snr_scatter(flux, ivar, np.full(m_clean.size, 400.0), predict,
                                  target_snr=(5.0, 8.0, 12.0, 25.0, 50.0, 100.0),
                                  max_per_level=None, pivot_mag=PIVOT, deshrink_below_snr=50.0)
    att = dict(zip(out["snr"], out["attenuation"], strict=True))
    slope = dict(zip(out["snr"], out["slope"], strict=True))
    assert slope[5.0] < 0.7 and slope[50.0] > 0.95, slope
    assert att[5.0] < att[8.0] < att[12.0] < att[25.0] < 1.0, att
    assert att[50.0] == att[100.0] == 1.0
    for lev, s_sh, s in zip(out["snr"], out["sigma_shrunk_mag"], out["sigma_mag"],
                            strict=True):
        assert (s > s_sh) if lev < 50 else (s == s_sh), (lev, s, s_sh)
    table = (tuple(out["snr"]), tuple(out["attenuation"]), out["pivot_mag"],
             out["deshrink_below_snr"])
    m_true = rng.normal(PIVOT, np.sqrt(SPREAD2), 3000)
    for snr in (5.5, 7.0):
        f, iv = _line_spectra(m_true, pattern, snr, rng)
        raw = predict(f, iv, np.arange(m_true.size))
        fixed, gain = nm.deshrink(raw, np.full(m_true.size, snr), table)
        raw_slope = np.polyfit(m_true, raw, 1)[0]
        fixed_slope = np.polyfit(m_true, fixed, 1)[0]
        assert raw_slope < 0.8, (snr, raw_slope)
        assert abs(fixed_slope - 1.0) < 0.1, (snr, fixed_slope)
        assert abs(np.mean(fixed - m_true)) < 0.1
        assert np.all(gain > 1.0)


def test_deshrink_leaves_high_snr_and_untabled_readings_alone() -> None:
    mks = np.array([-4.0, -1.0, 2.0, -3.0, 0.5])
    snr = np.array([5.0, 20.0, 50.0, 300.0, np.nan])
    same, gain = nm.deshrink(mks, snr, None)
    assert np.array_equal(same, mks) and np.all(gain == 1.0)
    table = ((5.0, 20.0, 50.0), (0.5, 0.8, 1.0), -1.0, 50.0)
    out, gain = nm.deshrink(mks, snr, table)
    assert np.allclose(out[:2], [-1.0 + (-3.0) / 0.5, -1.0 + 0.0 / 0.8])
    assert np.array_equal(out[2:], mks[2:])  # at or above the training S/N, or no S/N
    assert np.allclose(gain, [2.0, 1.25, 1.0, 1.0, 1.0])


def test_degraded_scatter_unchanged_without_a_pivot() -> None:
    """Off (no pivot), the sigma table is what it was: the same draws, the same numbers."""
    rng = np.random.default_rng(9)
    pattern = rng.normal(size=120)
    predict = _shrinking_reader(pattern)
    m = rng.normal(PIVOT, 1.2, 400)
    flux, ivar = _line_spectra(m, pattern, 300.0, rng)
    kw = dict(target_snr=(8.0, 25.0, 50.0), max_per_level=None, seed=3)
    off = nm.degraded_snr_scatter(flux, ivar, np.full(m.size, 300.0), predict, **kw)
    on = nm.degraded_snr_scatter(flux, ivar, np.full(m.size, 300.0), predict, pivot_mag=PIVOT,
                                 deshrink_below_snr=50.0, **kw)
    assert "attenuation" not in off
    assert off["sigma_mag"][-1] == on["sigma_mag"][-1]  # level 50: attenuation 1
    assert on["sigma_shrunk_mag"] == off["sigma_mag"]
    with pytest.raises(ValueError, match="not a level"):
        nm.degraded_snr_scatter(flux, ivar, np.full(m.size, 300.0), predict, pivot_mag=0.0,
                                deshrink_below_snr=40.0, **kw)


def test_block_deshrinks_low_snr_rows_with_the_saved_attenuation(tmp_path) -> None:
    """luminosity_block applies the noise model's attenuation (it survives save / load) to
    the rows below its S/N, M_Ks and spread alike, and leaves the others as they were."""
    from obpipe.stages.luminosity import luminosity_block, noise_sigmas
    from tests.luminosity._block_inputs import fixed_noise_model, tiny_network

    res = fixed_noise_model()
    x, path = tiny_network(tmp_path)  # M_Ks ~ 10
    snr = np.array([5.0, 10.0, 49.0, 50.0, 200.0])
    inputs = {"recon_flux": x[:5], "em_flag": np.zeros(5, np.int8),
              "quality_flags": np.zeros(5, np.int16), "snr_g": snr}
    paths = (("a", path), ("b", path))
    base = luminosity_block(inputs, paths, noise_sigmas({"a": res, "b": res}), "recon_flux")
    res.meta["sigma_s_degraded"] = {
        "snr": [5.0, 12.0, 50.0], "sigma_mag": [0.9, 0.6, 0.3], "attenuation": [0.6, 0.8, 1.0],
        "pivot_mag": 2.0, "deshrink_below_snr": 50.0}
    res.save(str(tmp_path / "noise.npz"))
    back = nm.NoiseModelResult.load(str(tmp_path / "noise.npz"))
    assert back.attenuation_table == ((5.0, 12.0, 50.0), (0.6, 0.8, 1.0), 2.0, 50.0)
    out = luminosity_block(inputs, paths, noise_sigmas({"a": back, "b": back}), "recon_flux")
    b = np.interp(np.log(snr[:3]), np.log([5.0, 12.0, 50.0]), [0.6, 0.8, 1.0])
    raw = base["MKs"].astype(float)
    np.testing.assert_allclose(out["MKs"][:3], 2.0 + (raw[:3] - 2.0) / b, rtol=1e-5)
    np.testing.assert_array_equal(out["MKs"][3:], base["MKs"][3:])
    np.testing.assert_allclose(out["MKs_spread"][:3], base["MKs_spread"][:3] / b, rtol=1e-5)
    assert np.all(np.abs(out["MKs"][:2] - raw[:2]) > 1.0)  # M_Ks ~ 10, pivot 2: a big move
