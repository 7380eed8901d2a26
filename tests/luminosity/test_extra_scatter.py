"""The extra M_Ks error of luminous reddened stars (issue 15): fitted from parallaxes
(``noise_model.fit_extra_scatter``) and applied (``extra_scatter_mag``)."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.luminosity import noise_model as nm


def simulate(n: int, slope: float, seed: int, binary_fraction: float = 0.1,
             mks_bias: float = 0.1) -> dict[str, np.ndarray]:
    """Stars whose spectroscopic M_Ks scatter by mks_err, plus slope * E(B-V) at M_Ks < -3,
    and read ``mks_bias`` x E(B-V) too faint (the fit's per-cell offsets must absorb it);
    Gaia parallaxes with errors; unresolved binaries (0.1-0.75 mag brighter Ks0) that the
    fit must clip."""
    rng = np.random.default_rng(seed)
    m_true = rng.uniform(-5.5, 1.0, n)
    d_kpc = 10 ** rng.uniform(np.log10(0.3), np.log10(8.0), n)
    ebv = np.clip(0.35 * d_kpc + rng.normal(0, 0.2, n), 0, None)
    plx_true = 1.0 / d_kpc
    ks0 = m_true + 10.0 - 5.0 * np.log10(plx_true)
    ks0_err = np.full(n, 0.03)
    ks0_obs = ks0 + rng.normal(0, 0.03, n)
    binary = rng.random(n) < binary_fraction
    ks0_obs[binary] -= rng.uniform(0.1, 0.75, binary.sum())
    mks_err = rng.uniform(0.18, 0.3, n)
    mks = m_true + rng.normal(0, 1, n) * mks_err
    extra = np.where(m_true < -3, slope * ebv, 0.0)
    mks += rng.normal(0, 1, n) * extra + mks_bias * ebv
    plx_err = rng.uniform(0.03, 0.08, n)
    plx = plx_true + rng.normal(0, 1, n) * plx_err
    return {"mks": mks, "mks_err": mks_err, "ks0": ks0_obs, "ks0_err": ks0_err, "plx": plx,
            "plx_err": plx_err, "ebv": ebv, "m_true": m_true}


def _fit(s: dict[str, np.ndarray]) -> dict:
    return nm.fit_extra_scatter(s["mks"], s["mks_err"], s["ks0"], s["ks0_err"], s["plx"],
                                s["plx_err"], s["ebv"])


@pytest.mark.parametrize("slope", [0.0, 0.25])
def test_fit_recovers_the_injected_extra_scatter(slope: float) -> None:
    s = simulate(8000, slope, seed=3)
    res = _fit(s)
    k, err = res["slope_mag_per_ebv"], res["slope_err"]
    if slope == 0:
        assert k < 0.15, res  # a small k adds in quadrature: hard to tell from 0
    else:
        assert abs(k - slope) < max(4 * err, 0.07), res
    assert res["n_used"] < res["n_input"]  # binaries clipped


def test_the_extra_term_makes_the_group_pulls_unit() -> None:
    s = simulate(8000, 0.3, seed=4, binary_fraction=0.0)
    res = _fit(s)
    extra = nm.extra_scatter_mag(s["ebv"], s["mks"], res["slope_mag_per_ebv"])
    grp = (s["mks"] < -3) & (s["ebv"] > 1)
    r = s["mks"] - s["m_true"]
    before = np.std(r[grp] / s["mks_err"][grp])
    after = np.std(r[grp] / np.hypot(s["mks_err"][grp], extra[grp]))
    assert before > 1.4
    assert 0.9 < after < 1.1
    # the other stars keep their errors
    assert np.all(extra[s["mks"] >= -3] == 0)


def test_extra_scatter_mag_ignores_missing_values_and_negative_reddening() -> None:
    out = nm.extra_scatter_mag(np.array([1.0, np.nan, -9.0, -0.2, 2.0, 2.0]),
                               np.array([-4.0, -4.0, -4.0, -4.0, -9.0, -2.0]), 0.2)
    assert out.tolist() == [0.2, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_too_few_luminous_stars_fit_nothing() -> None:
    s = simulate(400, 0.3, seed=5)
    keep = s["mks"] > -3
    res = nm.fit_extra_scatter(*(s[k][keep] for k in ("mks", "mks_err", "ks0", "ks0_err",
                                                        "plx", "plx_err", "ebv")))
    assert res["slope_mag_per_ebv"] == 0.0 and "skipped" in res


def test_block_adds_the_term_where_the_noise_model_has_it(tmp_path) -> None:
    """luminosity_block adds k E(B-V) in quadrature at M_Ks < max_mks when the noise model
    carries ``meta["extra_scatter"]`` (it survives save / load), and nothing without it."""
    from obpipe.stages.luminosity import luminosity_block, noise_sigmas
    from tests.luminosity._block_inputs import fixed_noise_model, tiny_network

    res = fixed_noise_model()
    x, path = tiny_network(tmp_path)  # M_Ks ~ 10
    snr = np.full(4, 100.0)
    inputs = {"recon_flux": x[:4], "em_flag": np.zeros(4, np.int8),
              "quality_flags": np.zeros(4, np.int16), "snr_g": snr,
              "ebv": np.array([0.0, 1.0, 2.5, np.nan], np.float32)}
    paths = (("a", path), ("b", path))
    base = luminosity_block(inputs, paths, noise_sigmas({"a": res, "b": res}), "recon_flux")
    assert res.extra_scatter_slope == 0.0
    res.meta["extra_scatter"] = {"slope_mag_per_ebv": 0.3, "max_mks": 50.0}
    res.save(str(tmp_path / "noise.npz"))
    back = nm.NoiseModelResult.load(str(tmp_path / "noise.npz"))
    assert back.extra_scatter_slope == 0.3 and back.extra_scatter_max_mks == 50.0
    out = luminosity_block(inputs, paths, noise_sigmas({"a": back, "b": back}), "recon_flux")
    want = np.hypot(base["MKs_err"], 0.3 * np.nan_to_num(inputs["ebv"]))
    np.testing.assert_allclose(out["MKs_err"], want, rtol=1e-5)
    assert out["MKs_err"][2] > base["MKs_err"][2] + 0.5
    np.testing.assert_array_equal(out["MKs"], base["MKs"])
    back.meta["extra_scatter"]["max_mks"] = -3.0  # M_Ks ~ 10: not luminous, no term
    out = luminosity_block(inputs, paths, noise_sigmas({"a": back, "b": back}), "recon_flux")
    np.testing.assert_allclose(out["MKs_err"], base["MKs_err"], rtol=1e-6)
