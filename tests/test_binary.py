"""Eqs. (15)-(17): spectro-photometric parallax, parallax-excess S/N and the binary flag."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.binary import (
    expected_detection_probability,
    identify_binaries,
    spectrophotometric_parallax_mas,
)


def test_parallax_of_known_distance() -> None:
    # M = 0 at 1 kpc, no extinction: Ks0 = 10 -> 1 mas
    np.testing.assert_allclose(spectrophotometric_parallax_mas(10.0, 0.0), 1.0)
    np.testing.assert_allclose(spectrophotometric_parallax_mas(15.0, 0.0), 0.1)


def _survey(n: int, seed: int):
    rng = np.random.default_rng(seed)
    mks_true = rng.uniform(-3, 1, n)
    d_kpc = rng.uniform(0.3, 1.5, n)
    plx_true = 1.0 / d_kpc
    ks0 = mks_true + 5 * np.log10(d_kpc * 100)
    plx_err = 0.05 * plx_true
    return rng, mks_true, plx_true, ks0, plx_err


def test_single_star_snr_near_zero_equal_mass_binary_positive() -> None:
    rng, mks, plx_true, ks0, plx_err = _survey(4000, 0)
    sig = 0.15
    mks_obs = mks + rng.normal(0, sig, mks.size)
    plx = plx_true + rng.normal(0, 1, mks.size) * plx_err
    ks0_err = np.full(mks.size, 0.03)
    single = identify_binaries(mks_obs, np.full(mks.size, sig), ks0, ks0_err, plx, plx_err)
    snr = single["snr_dparallax"]
    assert abs(np.median(snr)) < 0.1
    assert 0.8 < np.std(snr) < 1.25
    assert np.mean(single["binary_flag"] == 1) < 0.05
    # an equal-mass binary: the system is 0.75 mag brighter than the star the spectrum shows
    binary = identify_binaries(mks_obs, np.full(mks.size, sig), ks0 - 2.5 * np.log10(2),
                               ks0_err, plx, plx_err)
    assert np.median(binary["snr_dparallax"]) > 2
    assert np.mean(binary["binary_flag"] == 1) > 0.8
    # exact agreement gives exactly zero
    exact = identify_binaries(np.array([0.0]), np.array([0.2]), np.array([10.0]),
                              np.array([0.02]), np.array([1.0]), np.array([0.05]))
    np.testing.assert_allclose(exact["snr_dparallax"], 0.0, atol=1e-12)
    np.testing.assert_allclose(exact["parallax_spec_err"],
                               0.2 * np.log(10) * np.hypot(0.2, 0.02))


def test_missing_inputs_unclassified_negative_parallax_kept() -> None:
    out = identify_binaries(np.array([0.0, 0.0, np.nan, 0.0]), np.full(4, 0.2),
                            np.array([10.0, np.nan, 10.0, 10.0]), np.full(4, 0.02),
                            np.array([np.nan, 1.0, 1.0, -0.2]), np.full(4, 0.1))
    np.testing.assert_array_equal(out["binary_flag"], [-9, -9, -9, 1])
    assert np.isnan(out["snr_dparallax"][:3]).all()
    assert out["binary_flag"].dtype == np.int8


def test_expected_detection_probability_matches_repeated_predictions() -> None:
    """The quadrature bound equals the flag rate of many unbiased M_Ks draws (eqs. 15-17)."""
    rng, mks, plx_true, ks0, plx_err = _survey(300, 3)
    plx = plx_true + rng.normal(0, 1, mks.size) * plx_err
    ks0_sys, ks0_err = ks0 - 2.5 * np.log10(2), np.full(mks.size, 0.03)  # equal-mass pairs
    sig = np.full(mks.size, 0.3)
    found = mks + 0.4  # a biased prediction: the bound must not depend on it
    out = identify_binaries(found, sig, ks0_sys, ks0_err, plx, plx_err)
    prob = expected_detection_probability(out["parallax_spec"], out["parallax_spec_err"],
                                          plx, plx_err, found, sig, mks)
    draws = [identify_binaries(mks + rng.normal(0, 0.3, mks.size), sig, ks0_sys, ks0_err,
                               plx, plx_err)["binary_flag"] == 1 for _ in range(800)]
    rate = np.mean(draws, axis=0)
    np.testing.assert_allclose(prob, rate, atol=0.07)
    assert abs(prob.mean() - rate.mean()) < 0.01
    assert 0.3 < prob.mean() < 0.99  # neither trivially 0 nor 1 at these errors
    # with a vanishing error the bound is the flag of the centre itself
    at_centre = identify_binaries(mks, sig, ks0_sys, ks0_err, plx, plx_err)
    sharp = expected_detection_probability(at_centre["parallax_spec"],
                                           at_centre["parallax_spec_err"], plx, plx_err, mks,
                                           np.full(mks.size, 1e-9), mks)
    np.testing.assert_array_equal(sharp, (at_centre["binary_flag"] == 1).astype(float))
    # huge errors (a <= t b) go through the numerical branch, negative parallaxes too
    big = expected_detection_probability(out["parallax_spec"], out["parallax_spec_err"] * 8,
                                         plx, plx_err, found, np.full(mks.size, 2.4), mks)
    draws = [identify_binaries(mks + rng.normal(0, 2.4, mks.size), np.full(mks.size, 2.4),
                               ks0_sys, ks0_err, plx, plx_err)["binary_flag"] == 1
             for _ in range(800)]
    np.testing.assert_allclose(big, np.mean(draws, axis=0), atol=0.07)
    neg = expected_detection_probability(np.array([1.0]), np.array([0.1]), np.array([-1.0]),
                                         np.array([0.1]), np.array([0.0]), np.array([0.3]),
                                         np.array([0.0]))
    np.testing.assert_allclose(neg, 1.0)
    nan = expected_detection_probability(np.array([np.nan]), np.array([0.1]), np.array([1.0]),
                                         np.array([0.1]), np.array([0.0]), np.array([0.3]),
                                         np.array([0.0]))
    assert np.isnan(nan).all()


# ------------------------------------------------- beyond the paper: every visit, RV, RUWE
def test_rv_chi2_flags_orbital_motion_not_noise() -> None:
    """Three stars: A constant within its errors, B swinging by 40 km/s (orbital RVs),
    C with one visit (no chi2): -log10 p small, large, 0; the value is per spectrum."""
    from obpipe.binary import rv_chi2_log10_p

    star = np.array(["A", "A", "A", "B", "B", "B", "C"])
    rv = np.array([10.0, 11.0, 9.5, -20.0, 20.0, 0.0, 5.0])
    err = np.array([2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 2.0])
    lp, n = rv_chi2_log10_p(star, rv, err)
    assert list(n) == [3, 3, 3, 3, 3, 3, 1]
    assert (lp[:3] < 1).all() and (lp[:3] == lp[0]).all()
    chi2_b = (20.0**2 + 20.0**2 + 0.0) / 9.0
    from scipy.stats import chi2

    assert lp[3] == pytest.approx(-np.log10(chi2.sf(chi2_b, 2)))
    assert lp[3] > 10 and lp[6] == 0.0
    # a missing or non-positive error drops that visit
    lp2, n2 = rv_chi2_log10_p(star, rv, np.r_[err[:6], -1.0])
    assert n2[6] == 0 and lp2[6] == 0.0


def test_binary_probability_rises_with_each_feature_and_needs_one() -> None:
    from obpipe.binary import BINARY_PROB_THRESHOLD, binary_probability

    base = {"snr_dparallax_combined": np.zeros(4), "rv_chi2_log10_p": np.zeros(4),
            "log10_ruwe": np.zeros(4), "n_rv_visits": np.full(4, 2)}
    p0 = binary_probability(base)[0]
    assert p0 < BINARY_PROB_THRESHOLD  # a quiet single star is not flagged
    # each feature alone at a clearly binary value: a 6-sigma parallax excess (5 sits
    # on the refitted threshold, p = 0.50 against 0.485), p = 1e-10 for constant RVs,
    # RUWE 2
    for name, value in (("snr_dparallax_combined", 6.0), ("rv_chi2_log10_p", 10.0),
                        ("log10_ruwe", np.log10(2.0))):
        f = {k: v.copy() for k, v in base.items()}
        f[name][:] = value
        assert binary_probability(f)[0] > BINARY_PROB_THRESHOLD > p0
    none = {"snr_dparallax_combined": np.full(1, np.nan), "rv_chi2_log10_p": np.zeros(1),
            "log10_ruwe": np.zeros(1), "n_rv_visits": np.ones(1)}
    assert np.isnan(binary_probability(none)[0])
