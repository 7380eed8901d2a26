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


def _reference_statistics(f, iv, recon, sigma_model, clean):
    """residual_statistics written plainly in float64, one spectrum at a time."""
    wave = emission.wavelength_grid()
    core = emission._in(wave, (emission.HALPHA_CORE_AA,))
    wings = emission._in(wave, emission.HALPHA_WINGS_AA)
    quality = ~emission._in(wave, emission.EMISSION_WINDOWS_AA)
    telluric = emission._in(wave, emission.TELLURIC_WINDOWS_AA)
    narrow = quality & ~telluric
    wide = ~emission._in(wave, emission.EMISSION_WINDOWS_WIDE_AA) & ~telluric
    width = emission.QUALITY_WINDOW_PX
    out = {k: [] for k in ("halpha_excess", "halpha_excess_err", "halpha_chi2",
                           "quality_chi2", "window_chi2_max", "window_chi2_max_wide",
                           "clean_fraction")}
    for i in range(f.shape[0]):
        good = (iv[i] > 0) & np.isfinite(f[i]) & np.isfinite(recon[i])
        var = np.where(good, 1.0 / np.where(good, iv[i], 1.0), np.nan) + sigma_model**2
        r = f[i].astype(float) - recon[i]
        chi = r**2 / var
        gc = good & core
        out["halpha_excess"].append(r[gc].mean() if gc.any() else np.nan)
        out["halpha_excess_err"].append(np.sqrt(var[gc].sum()) / gc.sum() if gc.any()
                                        else np.nan)
        gw, gq = good & wings, good & quality
        out["halpha_chi2"].append(chi[gw].mean() if gw.any() else np.nan)
        out["quality_chi2"].append(chi[gq].mean() if gq.any() else np.nan)
        out["clean_fraction"].append((good & clean).sum() / clean.sum())
        for name, cols in (("window_chi2_max", narrow), ("window_chi2_max_wide", wide)):
            use = good & cols
            best = -np.inf
            for j in range(wave.size - width + 1):
                n_use = use[j:j + width].sum()
                if n_use >= width // 2:
                    best = max(best, chi[j:j + width][use[j:j + width]].sum() / n_use)
            out[name].append(best if np.isfinite(best) else np.nan)
    return {k: np.array(v) for k, v in out.items()}


def test_residual_statistics_match_float64_reference() -> None:
    """The chunked, vectorised statistics equal a per-spectrum float64 loop to float32
    precision, with masked pixels, NaNs, a spectrum with no H-alpha data, a dead segment
    (residuals 10^4 times the noise), no usable pixel, and chunks that split the rows."""
    rng = np.random.default_rng(3)
    wave = emission.wavelength_grid()
    n = 11
    iv = rng.uniform(1e3, 1e4, (n, wave.size)).astype(np.float32)
    recon = (1.0 + 0.1 * np.sin(wave / 50.0))[None, :] + np.zeros((n, 1))
    f = (recon + rng.normal(0, 1, (n, wave.size)) / np.sqrt(iv)).astype(np.float32)
    recon = recon.astype(np.float32)
    f[0, (wave > 6550) & (wave < 6580)] += 0.3  # H-alpha emission
    iv[1, rng.random(wave.size) < 0.2] = 0.0
    f[2, 100:140] = np.nan
    iv[3, (wave > 6500) & (wave < 6600)] = 0.0  # no H-alpha data
    f[4, 1000:1200] = 0.0  # dead segment, chi ~ 1e4 per pixel
    iv[5] = 0.0  # nothing usable
    sigma_model = rng.uniform(0.0, 0.01, wave.size)
    clean = rng.random(wave.size) < 0.6
    ref = _reference_statistics(f, iv, recon, sigma_model, clean)
    for chunk in (256, 4):
        got = emission.residual_statistics(f, iv, recon, sigma_model, clean, rows_per_chunk=chunk)
        for k, v in ref.items():
            assert got[k].dtype == np.float32
            assert np.array_equal(np.isnan(got[k]), np.isnan(v)), k
            ok = np.isfinite(v)
            assert np.allclose(got[k][ok], v[ok], rtol=2e-5, atol=1e-7), (k, got[k], v)
    assert np.isnan(ref["halpha_excess"][3]) and ref["window_chi2_max"][4] > 1e3


def test_window_chi2_any_width_matches_brute_force() -> None:
    """The doubling sums (powers of two) and the cumulative-sum path (other widths, and
    widths beyond the uint8 counts) give the same windows as a direct loop."""
    rng = np.random.default_rng(8)
    chi = rng.exponential(1.0, (3, 700)).astype(np.float32)
    good = rng.random(chi.shape) > 0.3
    chi[~good] = 0.0
    cols = rng.random(700) > 0.1
    for width in (4, 12, 16, 256, 300):
        use = good & cols[None, :]
        ref = []
        for i in range(3):
            best = -np.inf
            for j in range(700 - width + 1):
                n_use = use[i, j:j + width].sum()
                if n_use >= width // 2:
                    best = max(best, chi[i, j:j + width].astype(float)[use[i, j:j + width]].sum()
                               / n_use)
            ref.append(best if np.isfinite(best) else np.nan)
        got = emission._max_window_chi2(chi, good, cols, width)
        assert np.allclose(got, ref, rtol=1e-5, equal_nan=True), width
