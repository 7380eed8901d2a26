"""Thresholds and visit/star flag logic of the emission module (pure numpy)."""

from __future__ import annotations

import numpy as np

from obpipe.spectra import emission


def test_mirror_threshold_controls_contamination() -> None:
    rng = np.random.default_rng(0)
    null = rng.normal(0, 1, 20000)
    tail = rng.uniform(6, 40, 2000)
    t, purity = emission.emission_threshold(np.r_[null, tail], target_purity=0.99)
    assert 3.0 <= t < 6.0
    false_pos = np.sum(null > t)
    true_pos = np.sum(tail > t)
    assert false_pos / (false_pos + true_pos) < 0.02
    assert purity > 0.98
    # a noisier null moves the threshold up: it comes from the data
    t2, _ = emission.emission_threshold(np.r_[2.5 * null, tail], target_purity=0.99)
    assert t2 > t + 2


def test_star_flag_comes_from_highest_snr_visit() -> None:
    star = np.array(["A", "B", "A", "C", "B", "A"], dtype=object)
    snr = np.array([10.0, 80.0, 90.0, 30.0, 20.0, 50.0])
    visit = np.array([1, 0, 0, 1, 1, 1], dtype=np.int8)
    out = emission.star_flag_from_best_visit(star, snr, visit)
    assert list(out) == [0, 0, 0, 1, 0, 0]


def test_broken_thresholds_follow_snr_bins() -> None:
    rng = np.random.default_rng(1)
    snr = rng.uniform(5, 500, 5000)
    chi2 = 10 ** rng.normal(0.1 + 0.2 * (snr > 200), 0.05)
    edges, cuts = emission.broken_thresholds(chi2, snr)
    assert len(cuts) == 10 and cuts[-1] > cuts[0]
    assert edges[0] == -np.inf and edges[-1] == np.inf
