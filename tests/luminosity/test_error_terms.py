"""The M_Ks error terms beyond eqs. (8)-(10) (issue 15, the tails at high S/N): a constant
term fitted with ``noise_model.fit_extra_scatter`` from parallaxes, the error of spectra
flagged broken (``fit_broken_scatter``), and ``extra_error_mag``, which applies them."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.luminosity import noise_model as nm
from obpipe.stats import robust_std


def survey(n: int, const: float, seed: int, n_broken: int = 0, broken_sigma: float = 1.0
           ) -> dict[str, np.ndarray]:
    """Stars whose spectroscopic M_Ks scatter by sqrt(mks_err^2 + const^2) about the truth
    (the quoted mks_err too small by ``const``), with Gaia parallaxes, 8 % unresolved
    binaries (brighter Ks0) and, last, ``n_broken`` spectra whose M_Ks is off by
    ``broken_sigma`` x a Student-t(3) draw (heavy tails, as broken spectra are)."""
    rng = np.random.default_rng(seed)
    m_true = rng.uniform(-5.0, 1.5, n)
    d_kpc = 10 ** rng.uniform(np.log10(0.3), np.log10(5.0), n)
    ebv = np.clip(0.3 * d_kpc + rng.normal(0, 0.15, n), 0, None)
    plx_true = 1.0 / d_kpc
    ks0 = m_true + 10.0 - 5.0 * np.log10(plx_true) + rng.normal(0, 0.03, n)
    binary = rng.random(n) < 0.08
    ks0[binary] -= rng.uniform(0.1, 0.75, binary.sum())
    snr = 10 ** rng.uniform(np.log10(50), 3, n)
    mks_err = np.hypot(0.15, 25.0 / snr)  # a sigma_int and a sigma_s(S/N)
    mks = m_true + rng.normal(0, 1, n) * np.hypot(mks_err, const)
    broken = np.zeros(n, bool)
    broken[n - n_broken:] = True
    mks[broken] = m_true[broken] + broken_sigma * rng.standard_t(3, n_broken)
    plx_err = rng.uniform(0.02, 0.05, n)
    plx = plx_true + rng.normal(0, 1, n) * plx_err
    mks_geo = ks0 + 5 * np.log10(np.clip(plx, 1e-3, None)) - 10  # eq. (11)
    mks_geo_err = np.hypot(0.03, 5 / np.log(10) * plx_err / np.clip(plx, 1e-3, None))
    return {"mks": mks, "mks_err": mks_err, "ks0": ks0, "ks0_err": np.full(n, 0.03),
            "plx": plx, "plx_err": plx_err, "ebv": ebv, "m_true": m_true, "snr": snr,
            "broken": broken, "mks_geo": mks_geo, "mks_geo_err": mks_geo_err}


def _fit(s: dict[str, np.ndarray], sel: np.ndarray, **kw: object) -> dict:
    return nm.fit_extra_scatter(*(s[k][sel] for k in ("mks", "mks_err", "ks0", "ks0_err",
                                                      "plx", "plx_err", "ebv")), **kw)


@pytest.mark.parametrize("const", [0.0, 0.18])
def test_the_constant_term_is_recovered_from_parallaxes(const: float) -> None:
    s = survey(8000, const, seed=11)
    res = _fit(s, ~s["broken"])
    c = res["sigma_const_mag"]
    if const == 0:
        assert c < 0.08, res  # a small term in quadrature: hard to tell from 0
    else:
        assert abs(c - const) < max(4 * res["sigma_const_err"], 0.05), res
        # it makes the pulls of the brightest spectra unit, where mks_err alone fails
        hi = s["snr"] > 200
        r = (s["mks"] - s["m_true"])[hi]
        before = np.std(r / s["mks_err"][hi])
        after = np.std(r / np.hypot(s["mks_err"][hi], nm.extra_error_mag(
            s["ebv"], s["mks"], s["broken"], res["slope_mag_per_ebv"],
            const_mag=c)[hi]))
        assert before > 1.3 and 0.9 < after < 1.1, (before, after)


def test_without_fit_constant_the_term_stays_zero() -> None:
    s = survey(3000, 0.2, seed=12)
    res = _fit(s, ~s["broken"], fit_constant=False)
    assert res["sigma_const_mag"] == 0.0


def test_an_injected_broken_population_gets_its_error() -> None:
    """300 broken spectra off by 1 mag x t(3) among 6,000: the error fitted from their
    parallaxes makes their robust pull ~1, and no other spectrum's error changes."""
    s = survey(6000, 0.0, seed=13, n_broken=300, broken_sigma=1.0)
    good = s["plx"] / s["plx_err"] > 10
    b = s["broken"] & good
    res = nm.fit_broken_scatter(s["mks"][b], s["mks_err"][b], s["mks_geo"][b],
                                s["mks_geo_err"][b])
    # robust_std of a t(3) variable: MAD 0.765 x 1.4826 = 1.13 per unit of scale
    assert 0.85 < res["sigma_mag"] < 1.4, res
    extra = nm.extra_error_mag(s["ebv"], s["mks"], s["broken"], 0.0,
                               broken_mag=res["sigma_mag"])
    assert np.all(extra[~s["broken"]] == 0)
    r = (s["mks"] - s["m_true"])[s["broken"]]
    before = robust_std(r / s["mks_err"][s["broken"]])
    after = robust_std(r / np.hypot(s["mks_err"], extra)[s["broken"]])
    assert before > 3 and 0.8 < after < 1.25, (before, after)


def test_too_few_broken_spectra_fit_nothing() -> None:
    res = nm.fit_broken_scatter(np.zeros(5), np.full(5, 0.2), np.ones(5), np.full(5, 0.1))
    assert res["sigma_mag"] == 0.0 and "skipped" in res


def test_extra_error_mag_adds_each_term_where_it_applies() -> None:
    ebv = np.array([1.0, 1.0, 1.0, np.nan])
    mks = np.array([-4.0, -1.0, -4.0, -4.0])
    broken = np.array([False, False, True, True])
    out = nm.extra_error_mag(ebv, mks, broken, 0.3, const_mag=0.2, broken_mag=1.0)
    np.testing.assert_allclose(out, [np.hypot(0.3, 0.2), 0.2, np.sqrt(0.09 + 0.04 + 1.0),
                                     np.hypot(0.2, 1.0)])
    assert np.all(nm.extra_error_mag(ebv, mks, broken, 0.0) == 0)


def test_the_terms_survive_save_and_load(tmp_path) -> None:
    theta = np.array([0.0, 0.0, 0.2, 0.1])
    res = nm.NoiseModelResult(samples=np.tile(theta, (10, 1)), ml=theta,
                              keep=np.ones(10, bool), tau=np.ones(4), acceptance=0.3,
                              n_steps=10, converged=True, n_clip_iterations=1)
    assert res.extra_scatter_const == 0.0 and res.broken_scatter == 0.0  # older files
    res.meta["extra_scatter"] = {"slope_mag_per_ebv": 0.1, "sigma_const_mag": 0.17}
    res.meta["broken_scatter"] = {"sigma_mag": 1.1}
    res.save(str(tmp_path / "noise.npz"))
    back = nm.NoiseModelResult.load(str(tmp_path / "noise.npz"))
    assert back.extra_scatter_const == 0.17 and back.broken_scatter == 1.1


def test_block_applies_the_constant_and_broken_terms(tmp_path) -> None:
    """luminosity_block: the constant term on every row, the broken term on the rows whose
    quality_flags say broken (MKs_flag 2) only; M_Ks itself unchanged."""
    from obpipe.stages.luminosity import luminosity_block, noise_sigmas
    from tests.luminosity._block_inputs import fixed_noise_model, tiny_network

    res = fixed_noise_model()
    x, path = tiny_network(tmp_path)
    inputs = {"recon_flux": x[:4], "em_flag": np.zeros(4, np.int8),
              "quality_flags": np.array([0, 1, 0, 1], np.int16), "snr_g": np.full(4, 300.0),
              "ebv": np.full(4, 0.5, np.float32)}
    paths = (("a", path), ("b", path))
    base = luminosity_block(inputs, paths, noise_sigmas({"a": res, "b": res}), "recon_flux")
    res.meta["extra_scatter"] = {"slope_mag_per_ebv": 0.0, "sigma_const_mag": 0.17}
    res.meta["broken_scatter"] = {"sigma_mag": 1.1}
    out = luminosity_block(inputs, paths, noise_sigmas({"a": res, "b": res}), "recon_flux")
    want = np.sqrt(base["MKs_err"].astype(float) ** 2 + 0.17**2
                   + np.array([0, 1, 0, 1]) * 1.1**2)
    np.testing.assert_allclose(out["MKs_err"], want, rtol=1e-5)
    np.testing.assert_array_equal(out["MKs"], base["MKs"])
    assert np.array_equal((out["MKs_flag"] & 2) > 0, [False, True, False, True])


def test_the_unique_star_view_keeps_the_constant_term_intrinsic(tmp_path) -> None:
    """Visits of one star average sigma_s down, not the intrinsic terms: the catalog's
    per-visit sigma_int includes the constant term (``catalog._sigma_int_per_visit``)."""
    import xarray as xr

    from obpipe.catalog import _sigma_int_per_visit, combine_visits
    from obpipe.engine.blockwise import products_path
    from obpipe.io import store

    err = xr.DataArray(np.full(2, 0.3, np.float32), dims="spec")
    err.attrs.update({"noise_a_sigma_int": 0.15,
                      "noise_a_extra_scatter": {"sigma_const_mag": 0.2}})
    xr.Dataset({"MKs_err": err}).to_zarr(products_path(str(tmp_path)),
                                          zarr_format=store.ZARR_FORMAT,
                                          consolidated=store.CONSOLIDATED)
    sint = _sigma_int_per_visit(str(tmp_path), np.array([0, 0]))
    np.testing.assert_allclose(sint, 0.25)
    comb = combine_visits(np.array(["s", "s"]), np.array([1.0, 1.2]), np.full(2, 0.3), sint)
    # sqrt(0.25^2 + (0.3^2 - 0.25^2) / 2): the 0.25 does not shrink
    np.testing.assert_allclose(comb["MKs_err"].iloc[0], np.sqrt(0.0625 + 0.0275 / 2))
