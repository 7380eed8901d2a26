"""obpipe.stats: the one robust-scatter helper."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from obpipe.stats import MAD_TO_SIGMA, SUMMARY_KEYS, robust_std, summary_stats


def test_mad_factor_is_the_gaussian_consistency_constant() -> None:
    assert MAD_TO_SIGMA == pytest.approx(1.0 / norm.ppf(0.75), abs=5e-5)


def test_robust_std_of_a_gaussian_with_outliers() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 0.3, 200_000)
    x[:2000] = 1e6  # 1 % wild outliers: std explodes, the robust std does not
    assert robust_std(x) == pytest.approx(0.3, rel=0.02)
    assert np.std(x) > 1e4


def test_robust_std_axis_matches_rows() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_t(3, size=(5, 301))
    per_row = robust_std(x, axis=1)
    assert per_row.shape == (5,)
    for i in range(5):
        med = np.median(x[i])
        assert per_row[i] == 1.4826 * np.median(np.abs(x[i] - med))
    assert robust_std(x, axis=0).shape == (301,)


def test_summary_stats_uses_finite_values_only() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan, np.inf, -np.inf])
    s = summary_stats(x)
    assert tuple(s) == SUMMARY_KEYS
    assert s["n"] == 5
    assert s["median"] == 3.0
    assert s["mean"] == pytest.approx(22.0)
    assert s["robust_std"] == pytest.approx(1.4826 * 1.0)


def test_summary_stats_of_nothing_has_every_key() -> None:
    s = summary_stats(np.array([np.nan, np.inf]))
    assert s["n"] == 0
    assert tuple(s) == SUMMARY_KEYS
    assert all(math.isnan(s[k]) for k in SUMMARY_KEYS[1:])
