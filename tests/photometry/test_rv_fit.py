"""Per-star R_V fit (``extinction.ebv_rv_fit``, beyond the paper), without Dask.

The stars are reddened by the mock survey's own band integration
(:func:`obpipe.simulate.sed.band_extinction`: a ``dust_extinction`` curve over a blackbody
through the pyphot passbands), not by the dustapprox Kurucz coefficients the fit uses.
"""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.photometry import extinction as ext
from obpipe.photometry.block import photometry_block
from obpipe.photometry.options import PhotometryConfig
from obpipe.simulate import sed

BANDS = ext.EBV_BANDS


def reddened(teff: np.ndarray, logg: np.ndarray, ebv: np.ndarray, r_v: np.ndarray,
             err: float = 0.01, law: str = "G23", seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """Apparent magnitudes (n, 7) of stars at distance modulus 10: the pipeline's intrinsic
    magnitudes plus the mock's band extinction of ``law``, with Gaussian noise ``err``."""
    rng = np.random.default_rng(seed)
    m0 = ext.intrinsic_magnitudes(teff, logg, BANDS)
    a = sed.band_extinction(teff, ebv, r_v, law, bands=BANDS)
    mags = m0 + 10.0 + np.column_stack([a[b] for b in BANDS])
    mags += rng.normal(0.0, err, mags.shape)
    return mags, np.full(mags.shape, err)


def fit(mags, errs, teff, logg, **kw):
    return ext.ebv_rv_fit(mags, errs, teff, logg, 0.02 * teff, np.full(teff.size, 0.1), **kw)


def test_reddened_stars_recover_r_v_within_error() -> None:
    n_each = 40
    r_true = np.repeat([2.6, 3.1, 3.7], n_each)
    teff = np.full(r_true.size, 22000.0)
    logg = np.full(r_true.size, 4.0)
    ebv = np.full(r_true.size, 2.0)
    mags, errs = reddened(teff, logg, ebv, r_true, seed=1)
    out = fit(mags, errs, teff, logg)
    assert np.all(np.isfinite(out["r_v"])) and np.all(out["r_v_err"] > 0)
    for r in (2.6, 3.1, 3.7):
        s = r_true == r
        mean_fit = out["r_v"][s].mean()
        # a different band integration than the fit's (blackbody vs Kurucz): within the
        # median posterior error of the truth, and the prior pulls 2.6 / 3.7 toward 3.1
        assert abs(mean_fit - r) < 1.5 * np.median(out["r_v_err"][s]) + 0.1, (r, mean_fit)
    means = [out["r_v"][r_true == r].mean() for r in (2.6, 3.1, 3.7)]
    assert means[0] < means[1] - 0.2 and means[2] > means[1] + 0.2
    # E(B-V) at the fitted R_V beats the fixed R_V = 3.1 estimator on the off-3.1 stars
    fixed = ext.ebv_from_colour_excess(mags, errs, teff, logg, 0.02 * teff,
                                       np.full(teff.size, 0.1))
    off = r_true != 3.1
    assert (np.abs(out["ebv"][off] - 2.0).mean()
            < 0.5 * np.abs(fixed["ebv"][off] - 2.0).mean())


def test_low_extinction_stars_keep_the_prior() -> None:
    n = 30
    teff = np.linspace(12000.0, 35000.0, n)
    logg = np.full(n, 4.0)
    mags, errs = reddened(teff, logg, np.full(n, 0.02), np.full(n, 4.0), seed=2)
    out = fit(mags, errs, teff, logg)
    # R_V = 4 in the sky, but 0.02 mag of reddening says nothing about it
    np.testing.assert_allclose(out["r_v"], 3.1, atol=0.05)
    np.testing.assert_allclose(out["r_v_err"], 0.18, atol=0.02)
    assert np.all(np.abs(out["ebv"] - 0.02) < 3 * out["ebv_err"])


def test_prior_only_below_three_bands_and_nan_below_two() -> None:
    teff = np.full(3, 20000.0)
    logg = np.full(3, 4.0)
    mags, errs = reddened(teff, logg, np.full(3, 1.5), np.full(3, 3.8), seed=3)
    mags[0, 2:] = np.nan  # g, r only: E(B-V) but no R_V information
    mags[1, 1:] = np.nan  # g only: nothing
    out = fit(mags, errs, teff, logg)
    assert out["n_bands"].tolist() == [2, 1, 7]
    assert abs(out["r_v"][0] - 3.1) < 0.01 and abs(out["r_v_err"][0] - 0.18) < 0.01
    assert np.isfinite(out["ebv"][0]) and np.isnan(out["ebv"][1]) and np.isnan(out["r_v"][1])
    assert out["flags"][1] & ext.FLAG_EBV_FEW_BANDS
    assert out["r_v"][2] > 3.4  # all bands: the data move it


def test_errors_marginalise_r_v() -> None:
    n = 200
    rng = np.random.default_rng(4)
    r_true = rng.normal(3.1, 0.25, n)
    ebv = rng.uniform(0.05, 3.0, n)
    teff = rng.uniform(12000.0, 35000.0, n)
    logg = np.full(n, 4.0)
    mags, errs = reddened(teff, logg, ebv, r_true, err=0.02, seed=5)
    out = fit(mags, errs, teff, logg)
    # the R_V part of the E(B-V) error grows with E(B-V), and the errors are calibrated
    # (pulls of E(B-V) and R_V against the truth of order one)
    lo, hi = ebv < 0.5, ebv > 2.0
    assert np.median(out["ebv_rv_err"][hi]) > 2 * np.median(out["ebv_rv_err"][lo])
    assert np.all(out["ebv_err"] >= out["ebv_rv_err"])
    pull_e = (out["ebv"] - ebv) / out["ebv_err"]
    pull_r = (out["r_v"] - r_true) / out["r_v_err"]
    assert 0.5 < np.std(pull_e) < 1.6, np.std(pull_e)
    assert 0.5 < np.std(pull_r) < 1.6, np.std(pull_r)
    # A_Ks = R_Ks E(B-V) at the posterior
    np.testing.assert_allclose(out["aks"], out["r_ks"] * out["ebv"], rtol=1e-6)


def test_block_columns_and_options() -> None:
    teff = np.array([20000.0, 20000.0, 15000.0])
    logg = np.full(3, 4.0)
    mags, errs = reddened(teff, logg, np.array([2.0, 0.5, 1.0]), np.array([3.6, 3.1, 2.7]),
                          seed=6)
    inputs = {"teff": teff, "logg": logg, "teff_err": 0.02 * teff, "logg_err": np.full(3, 0.1),
              "parallax": np.full(3, 0.5), "parallax_error": np.full(3, 0.05)}
    from obpipe.photometry.options import BAND_COLUMNS
    for i, b in enumerate(BANDS):
        inputs[BAND_COLUMNS[b][0]] = mags[:, i]
        inputs[BAND_COLUMNS[b][1]] = errs[:, i]
    inputs["phot_bp_mean_mag"] = np.where([True, True, False], inputs["phot_bp_mean_mag"],
                                          np.nan)
    for name in BANDS[1:]:  # the third star: g only, no E(B-V)
        inputs[BAND_COLUMNS[name][0]][2] = np.nan
    fixed = photometry_block(inputs)
    np.testing.assert_allclose(fixed["r_v"][:2], 3.1)
    np.testing.assert_allclose(fixed["r_v_err"][:2], 0.18, rtol=1e-6)
    assert np.isnan(fixed["r_v"][2]) and np.isnan(fixed["ebv"][2])
    fitted = photometry_block(inputs, fit_r_v=True)
    assert fitted["r_v"][0] > 3.3 and 0 < fitted["r_v_err"][0] < 0.18
    assert np.isnan(fitted["r_v"][2])
    assert set(fitted) == set(fixed)
    with pytest.raises(ValueError, match="fit_r_v"):
        photometry_block(inputs, fit_r_v=True, coefficients="fixed")
    with pytest.raises(ValueError, match="fit_r_v"):
        PhotometryConfig(fit_r_v=True, r_v_scatter=0.0)
    assert PhotometryConfig(fit_r_v=True).fit_r_v


def test_law_grid_lookup_equals_law_coefficients() -> None:
    from obpipe.photometry import synthetic

    rng = np.random.default_rng(7)
    teff = rng.uniform(3000.0, 60000.0, 50)  # beyond both Teff edges too
    a0 = rng.uniform(0.0, 25.0, 50)
    bands = ("g", "BP", "J", "Ks")
    look = synthetic.LawGridLookup(teff, "G23", bands)
    for r_v in (2.5, 3.1, 4.2):
        ref = synthetic.law_coefficients(teff, a0, "G23", r_v, bands)
        np.testing.assert_allclose(look(r_v, a0), np.column_stack([ref[b] for b in bands]),
                                   rtol=1e-12)
