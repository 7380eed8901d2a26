"""E(B-V) from adjacent-band colour excesses (Sec. 4) and A_Ks (eq. 24)."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.photometry import extinction as ext
from obpipe.photometry.synthetic import absolute_magnitudes, law_coefficients

BANDS = ext.EBV_BANDS
#: the estimator's algebra is tested with constant (low-extinction) F99 coefficients and
#: no R_V scatter; the extinction-dependent G23 default has its own tests below
LINEAR = {"law": "F99", "extinction_dependent": False, "r_v_scatter": 0.0}


def _ebv(*args, **kwargs):
    return ext.ebv_from_colour_excess(*args, **{**LINEAR, **kwargs})


def extinction_coefficients(teff, a0=0.01, law="F99"):
    return law_coefficients(teff, a0, law)


def _reddened(teff, logg, log_l, dist_mod, ebv, coeff_teff=None, law="F99",
              a0_dependent=False):
    """Apparent magnitudes (n, B) of stars reddened through the estimator's coefficients
    (unit tests of its algebra; accuracy is measured on the mock and on real stars)."""
    teff, logg, log_l, dist_mod, ebv = np.broadcast_arrays(
        *(np.asarray(x, float) for x in (teff, logg, log_l, dist_mod, ebv)))
    absm = absolute_magnitudes(teff, logg, log_l)
    a0 = np.clip(3.1 * ebv, 0.01, None) if a0_dependent else 0.01
    r = extinction_coefficients(
        teff if coeff_teff is None else np.full(teff.shape, coeff_teff), a0, law)
    return np.column_stack([absm[b] + dist_mod + r[b] * ebv for b in BANDS])


@pytest.fixture
def stars():
    teff = np.array([11000.0, 15000.0, 22000.0, 31000.0, 40000.0, 18000.0])
    logg = np.array([4.2, 4.0, 3.8, 4.1, 3.9, 4.3])
    log_l = np.array([1.8, 2.6, 3.5, 4.6, 5.2, 3.0])
    ebv = np.array([0.0, 0.35, 1.1, 2.7, 0.05, 3.4])
    dm = np.array([9.0, 11.5, 12.0, 13.3, 14.0, 10.0])
    return teff, logg, log_l, dm, ebv


def test_known_ebv_is_recovered_exactly(stars) -> None:
    teff, logg, log_l, dm, ebv = stars
    mags = _reddened(teff, logg, log_l, dm, ebv)
    errs = np.full(mags.shape, 0.02)
    out = _ebv(mags, errs, teff, logg, 0.03 * teff, np.full(6, 0.1))
    np.testing.assert_allclose(out["ebv"], ebv, atol=1e-9)
    np.testing.assert_allclose(out["chi2_red"], 0.0, atol=1e-12)
    assert np.all(out["n_bands"] == len(BANDS))
    assert np.all(out["flags"] == 0)
    assert np.all(np.isfinite(out["ebv_err"]) & (out["ebv_err"] > 0))
    # A_Ks = R_Ks E(B-V) (eq. 24) with R_Ks of the same (star's Teff) coefficients
    aks, aks_err = ext.aks_from_ebv(out["ebv"], out["ebv_err"], out["r_ks"])
    np.testing.assert_allclose(aks, extinction_coefficients(teff)["Ks"] * ebv, atol=1e-9)
    np.testing.assert_allclose(aks_err, out["r_ks"] * out["ebv_err"])


def test_paper_fixed_coefficients_recover_stars_reddened_with_them(stars) -> None:
    teff, logg, log_l, dm, ebv = stars
    mags = _reddened(teff, logg, log_l, dm, ebv, coeff_teff=ext.PAPER_COEFFICIENT_TEFF_K)
    errs = np.full(mags.shape, 0.02)
    fixed = _ebv(mags, errs, teff, logg, coefficients="fixed")
    np.testing.assert_allclose(fixed["ebv"], ebv, atol=1e-9)
    np.testing.assert_allclose(fixed["r_ks"], extinction_coefficients(12000.0)["Ks"])
    # ... and the star's-Teff coefficients do not (hot reddened stars differ by several %)
    star = _ebv(mags, errs, teff, logg, coefficients="star")
    assert np.max(np.abs(star["ebv"] - ebv)) > 0.05


PATTERNS = {
    "all": BANDS,
    "no_optical_survey": ("BP", "RP", "J", "H"),
    "gaia_only": ("BP", "RP"),
    "twomass_only": ("J", "H"),
    "no_g": ("r", "i", "BP", "RP", "J", "H"),
    "gap_in_middle": ("g", "i", "RP", "H"),
    "no_twomass": ("g", "r", "i", "BP", "RP"),
    "two_far_apart": ("g", "H"),
}


@pytest.mark.parametrize("name", list(PATTERNS))
def test_missing_band_patterns_reduce_n_and_still_recover(stars, name) -> None:
    teff, logg, log_l, dm, ebv = stars
    mags = _reddened(teff, logg, log_l, dm, ebv)
    keep = np.array([b in PATTERNS[name] for b in BANDS])
    mags[:, ~keep] = np.nan
    errs = np.where(np.isfinite(mags), 0.03, np.nan)
    out = _ebv(mags, errs, teff, logg)
    np.testing.assert_allclose(out["ebv"], ebv, atol=1e-9)
    assert np.all(out["n_bands"] == keep.sum())
    assert np.all((out["flags"] & ext.FLAG_EBV_FEW_BANDS) == 0)


@pytest.mark.parametrize("kept", [(), ("J",), ("BP",)])
def test_fewer_than_two_bands_gives_nan_and_a_reason(stars, kept) -> None:
    teff, logg, log_l, dm, ebv = stars
    mags = _reddened(teff, logg, log_l, dm, ebv)
    keep = np.array([b in kept for b in BANDS])
    mags[:, ~keep] = np.nan
    errs = np.full(mags.shape, 0.03)
    out = _ebv(mags, errs, teff, logg)
    assert out["ebv"].shape == (6,)  # no dropped row
    assert np.all(np.isnan(out["ebv"])) and np.all(np.isnan(out["ebv_err"]))
    assert np.all(out["flags"] & ext.FLAG_EBV_FEW_BANDS)
    assert np.all(out["n_bands"] == len(kept))


def test_band_with_missing_error_is_not_used(stars) -> None:
    teff, logg, log_l, dm, ebv = stars
    mags = _reddened(teff, logg, log_l, dm, ebv)
    errs = np.full(mags.shape, 0.03)
    errs[:, BANDS.index("r")] = np.nan
    mags[:, BANDS.index("r")] += 5.0  # would ruin E(B-V) if it were used
    out = _ebv(mags, errs, teff, logg)
    np.testing.assert_allclose(out["ebv"], ebv, atol=1e-9)
    assert np.all(out["n_bands"] == len(BANDS) - 1)


def test_ks_is_refused() -> None:
    with pytest.raises(ValueError, match="K_s"):
        ext.ebv_from_colour_excess(np.zeros((1, 3)), np.ones((1, 3)), [2e4], [4.0],
                                   bands=("J", "H", "Ks"))


def test_missing_teff_keeps_the_row_flagged_with_inflated_error(stars) -> None:
    teff, logg, log_l, dm, ebv = stars
    mags = _reddened(teff, logg, log_l, dm, ebv)
    errs = np.full(mags.shape, 0.02)
    known = _ebv(mags, errs, teff, logg, 0.03 * teff, np.full(6, 0.1))
    no_t = np.full(6, np.nan)
    blind = _ebv(mags, errs, no_t, no_t, no_t, no_t)
    assert np.all(np.isfinite(blind["ebv"]))
    assert np.all(blind["flags"] & ext.FLAG_DEFAULT_TEFF)
    assert np.all(blind["flags"] & ext.FLAG_DEFAULT_LOGG)
    assert np.all(blind["ebv_err"] > known["ebv_err"])
    # the default (20 kK) intrinsic colours are within the inflated error for OB stars
    ob = teff >= 13000
    assert np.all(np.abs(blind["ebv"] - ebv)[ob] < 2.0 * blind["ebv_err"][ob])


def test_weighted_mean_matches_hand_computation() -> None:
    """Three bands g, r, i: two colours, weights (R_X - R_Y)^2 / sigma_c^2 with the floor."""
    teff, logg = np.array([20000.0]), np.array([4.0])
    bands = ("g", "r", "i")
    mags = np.array([[12.31, 12.05, 11.93]])
    errs = np.array([[0.005, 0.006, 0.04]])
    out = _ebv(mags, errs, teff, logg, bands=bands,
                                     include_parameter_error=False)
    r = extinction_coefficients(teff)
    m0 = ext.intrinsic_magnitudes(teff, logg, bands)[0]
    e1 = ((mags[0, 0] - mags[0, 1]) - (m0[0] - m0[1])) / (r["g"] - r["r"])[0]
    e2 = ((mags[0, 1] - mags[0, 2]) - (m0[1] - m0[2])) / (r["r"] - r["i"])[0]
    s1 = max(np.hypot(0.005, 0.006), 0.014)
    s2 = max(np.hypot(0.006, 0.04), 0.014)
    w1 = (r["g"] - r["r"])[0] ** 2 / s1**2
    w2 = (r["r"] - r["i"])[0] ** 2 / s2**2
    np.testing.assert_allclose(out["ebv"][0], (w1 * e1 + w2 * e2) / (w1 + w2), rtol=1e-12)


def test_propagated_error_matches_monte_carlo() -> None:
    """ebv_err (shared-band covariance, floor off) equals the scatter of noisy realisations."""
    rng = np.random.default_rng(3)
    n = 40000
    teff, logg = np.full(n, 24000.0), np.full(n, 4.0)
    mags0 = _reddened(teff[:1], logg[:1], [3.5], [12.0], [1.3])
    sig = np.array([0.03, 0.035, 0.04, 0.02, 0.025, 0.05, 0.06])
    mags = mags0 + rng.normal(size=(n, len(BANDS))) * sig
    out = _ebv(mags, np.broadcast_to(sig, mags.shape), teff, logg,
                                     colour_floor_mag=0.0, include_parameter_error=False,
                                     intrinsic_mag_error_mag=0.0)
    assert np.std(out["ebv"]) == pytest.approx(np.mean(out["ebv_err"]), rel=0.03)
    assert np.mean(out["ebv"]) == pytest.approx(1.3, abs=3 * np.std(out["ebv"]) / np.sqrt(n))


def test_intrinsic_magnitude_error_matches_monte_carlo() -> None:
    """Stars whose intrinsic magnitudes scatter by 0.02 mag per band about the table: the
    default ``ebv_err`` (INTRINSIC_MAG_ERROR_MAG) matches their E(B-V) scatter; without the
    term it is too small."""
    rng = np.random.default_rng(4)
    n = 20000
    teff, logg = np.full(n, 18000.0), np.full(n, 4.0)
    mags0 = _reddened(teff[:1], logg[:1], [3.5], [12.0], [0.8])
    sig = np.full(len(BANDS), 0.01)
    offsets = rng.normal(size=(n, len(BANDS))) * ext.INTRINSIC_MAG_ERROR_MAG
    mags = mags0 + offsets + rng.normal(size=(n, len(BANDS))) * sig
    kw = {"colour_floor_mag": 0.0, "include_parameter_error": False, "r_v_scatter": 0.0}
    out = _ebv(mags, np.broadcast_to(sig, mags.shape), teff, logg, **kw)
    assert np.std(out["ebv"]) == pytest.approx(np.mean(out["ebv_err"]), rel=0.03)
    off = _ebv(mags, np.broadcast_to(sig, mags.shape), teff, logg,
               intrinsic_mag_error_mag=0.0, **kw)
    assert np.mean(off["ebv_err"]) < 0.7 * np.std(out["ebv"])


def test_parameter_error_is_added(stars) -> None:
    teff, logg, log_l, dm, ebv = stars
    mags = _reddened(teff, logg, log_l, dm, ebv)
    errs = np.full(mags.shape, 0.02)
    with_p = _ebv(mags, errs, teff, logg, 0.05 * teff, np.full(6, 0.2))
    without = _ebv(mags, errs, teff, logg, 0.05 * teff, np.full(6, 0.2),
                                         include_parameter_error=False)
    assert np.all(with_p["ebv_err"] > without["ebv_err"])
    # the cool star (11 kK, colours most Teff-sensitive) gains the most
    gain = with_p["ebv_err"] ** 2 - without["ebv_err"] ** 2
    assert np.argmax(gain) == 0


def test_vectorised_equals_row_by_row(stars) -> None:
    teff, logg, log_l, dm, ebv = stars
    rng = np.random.default_rng(0)
    mags = _reddened(teff, logg, log_l, dm, ebv) + rng.normal(0, 0.02, (6, len(BANDS)))
    mags[1, [0, 1]] = np.nan
    mags[2, 5] = np.nan
    errs = np.where(np.isfinite(mags), 0.02, np.nan)
    args = (0.04 * teff, np.full(6, 0.15))
    whole = _ebv(mags, errs, teff, logg, *args)
    for k in range(6):
        one = _ebv(mags[k:k + 1], errs[k:k + 1], teff[k:k + 1],
                                         logg[k:k + 1], args[0][k:k + 1], args[1][k:k + 1])
        for key in ("ebv", "ebv_err", "n_bands", "flags"):
            np.testing.assert_allclose(one[key][0], whole[key][k], rtol=1e-12)


def test_out_of_table_teff_is_flagged_not_dropped() -> None:
    mags = np.tile(np.linspace(12.0, 11.0, len(BANDS)), (2, 1))
    out = _ebv(mags, np.full(mags.shape, 0.02), [5000.0, 60000.0],
                                     [4.0, 4.0])
    assert np.all(out["flags"] & ext.FLAG_PARAMS_OUT_OF_RANGE)
    assert np.all(np.isfinite(out["ebv"]))


# ---------------------------------------------------------------- the default model (G23)


def test_extinction_dependent_coefficients_recover_stars_reddened_at_their_own_a0(stars):
    """G23 coefficients evaluated at each star's A0 = R_V E(B-V): the iteration converges."""
    teff, logg, log_l, dm, ebv = stars
    mags = _reddened(teff, logg, log_l, dm, ebv, law="G23", a0_dependent=True)
    errs = np.full(mags.shape, 0.02)
    out = ext.ebv_from_colour_excess(mags, errs, teff, logg, 0.03 * teff, np.full(6, 0.1))
    assert ext.DEFAULT_LAW == "G23"
    np.testing.assert_allclose(out["ebv"], ebv, atol=5e-3)
    # the low-extinction limit misses the most reddened stars by several per cent
    low = ext.ebv_from_colour_excess(mags, errs, teff, logg, 0.03 * teff, np.full(6, 0.1),
                                     extinction_dependent=False)
    assert np.max(np.abs(low["ebv"] - ebv)) > 0.05
    # A_Ks = R_Ks E(B-V) (eq. 24) with R_Ks at the star's Teff and A0
    np.testing.assert_allclose(out["aks"], out["r_ks"] * out["ebv"], rtol=1e-12)
    r_ks = law_coefficients(teff, np.clip(3.1 * out["ebv"], 0.01, None), "G23")["Ks"]
    np.testing.assert_allclose(out["r_ks"], r_ks, rtol=2e-3)


def test_r_v_scatter_enters_ebv_err_and_aks_err(stars) -> None:
    teff, logg, log_l, dm, ebv = stars
    mags = _reddened(teff, logg, log_l, dm, ebv, law="G23", a0_dependent=True)
    errs = np.full(mags.shape, 0.02)
    args = (mags, errs, teff, logg, 0.03 * teff, np.full(6, 0.1))
    with_rv = ext.ebv_from_colour_excess(*args)
    without = ext.ebv_from_colour_excess(*args, r_v_scatter=0.0)
    np.testing.assert_allclose(without["aks_err"], without["r_ks"] * without["ebv_err"],
                               rtol=1e-9)
    np.testing.assert_allclose(without["ebv_rv_err"], 0.0)
    np.testing.assert_allclose(with_rv["ebv_err"] ** 2 - without["ebv_err"] ** 2,
                               with_rv["ebv_rv_err"] ** 2, rtol=1e-6, atol=1e-12)
    # the R_V term grows with the extinction (~ a few per cent of E(B-V))
    order = np.argsort(ebv)
    assert np.all(np.diff(with_rv["ebv_rv_err"][order][1:]) > 0)
    assert 0.005 < with_rv["ebv_rv_err"][ebv.argmax()] / ebv.max() < 0.1
    assert np.all(with_rv["aks_err"][ebv > 0.1] > without["aks_err"][ebv > 0.1])


def test_per_colour_estimates_name_adjacent_pairs_and_skip_missing_bands(stars) -> None:
    teff, logg, log_l, dm, ebv = stars
    mags = _reddened(teff, logg, log_l, dm, ebv)
    mags[0, BANDS.index("RP")] = np.nan
    errs = np.where(np.isfinite(mags), 0.02, np.nan)
    out = _ebv(mags, errs, teff, logg)
    assert list(out["per_colour"]) == ext.colour_names(BANDS)
    assert "bp_rp" in out["per_colour"] and "rp_j" in out["per_colour"]
    for name, e in out["per_colour"].items():
        if name in ("bp_rp", "rp_j"):
            assert np.isnan(e[0])  # RP missing: BP-J is used for ebv but is not adjacent
            np.testing.assert_allclose(e[1:], ebv[1:], atol=1e-9)
        else:
            np.testing.assert_allclose(e, ebv, atol=1e-9)


def test_missing_errors_get_documented_defaults_and_a_flag() -> None:
    mags = np.array([[12.0, 11.5, 11.0], [12.0, np.nan, 11.0]])
    errs = np.array([[0.01, np.nan, 0.02], [0.01, np.nan, -1.0]])
    filled, flags = ext.fill_default_errors(mags, errs, ("BP", "J", "H"))
    assert filled[0, 1] == ext.DEFAULT_MAG_ERRORS_MAG["J"]
    assert filled[1, 2] == ext.DEFAULT_MAG_ERRORS_MAG["H"]
    assert np.isnan(filled[1, 1])  # no magnitude: stays unusable
    assert filled[0, 0] == 0.01 and filled[0, 2] == 0.02
    assert np.all(flags == ext.FLAG_DEFAULT_MAG_ERROR)
