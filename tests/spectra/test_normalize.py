"""Pseudo-continuum normalisation (Sec. 2): pure numpy, no Dask."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.io.store import MASK_BITS
from obpipe.spectra.grid import wavelength_grid
from obpipe.spectra.normalize import gaussian_smooth, normalize, pseudo_continuum

WAVE = wavelength_grid()


def test_pure_continuum_normalises_to_one() -> None:
    flux = np.full((3, WAVE.size), 250.0)
    ivar = np.full_like(flux, 0.01)
    nf, ni = normalize(flux, ivar)
    assert np.allclose(nf, 1.0, atol=1e-5)
    assert np.allclose(ni, 0.01 * 250.0**2, rtol=1e-4)
    smooth = 1e3 * (WAVE / 5000.0) ** -2.5
    nf, _ = normalize(smooth[None, :], np.ones((1, WAVE.size)))
    inner = (WAVE > 4000) & (WAVE < 8800)
    assert np.max(np.abs(nf[0, inner] - 1.0)) < 2e-3


def test_masked_and_zero_ivar_pixels_do_not_pull_the_continuum() -> None:
    rng = np.random.default_rng(1)
    flux = np.full((1, WAVE.size), 100.0) + rng.normal(0, 1, (1, WAVE.size))
    ivar = np.ones_like(flux)
    mask = np.zeros(flux.shape, np.uint8)
    ref = pseudo_continuum(flux, ivar, mask)
    bad = flux.copy()
    bad[0, 1000:1040] = 1e6
    mask[0, 1000:1040] = MASK_BITS["bad_pixel"]
    cont = pseudo_continuum(bad, ivar, mask)
    assert np.max(np.abs(cont - ref)[0, 900:1140] / ref[0, 900:1140]) < 0.01
    zero = bad.copy()
    iv0 = ivar.copy()
    iv0[0, 1000:1040] = 0.0
    assert np.max(np.abs(pseudo_continuum(zero, iv0)[0, 900:1140] - ref[0, 900:1140])) < 1.0
    nf, ni = normalize(bad, ivar, mask)
    assert np.all(ni[0, 1000:1040] == 0)


def test_kernel_width_is_in_angstrom_not_pixels() -> None:
    """The response to a narrow spike has the same width in AA at 4,000 and 8,000 AA."""
    spikes = np.zeros((1, WAVE.size), np.float32)
    i_blue, i_red = np.searchsorted(WAVE, 4000.0), np.searchsorted(WAVE, 8000.0)
    spikes[0, [i_blue, i_red]] = 1.0
    resp = gaussian_smooth(spikes)[0]

    def width_aa(i0: int) -> float:
        sl = slice(i0 - 300, i0 + 300)
        w, r = WAVE[sl], resp[sl]
        mean = np.sum(w * r) / r.sum()
        return float(np.sqrt(np.sum((w - mean) ** 2 * r) / r.sum()))

    assert width_aa(i_blue) == pytest.approx(50.0 / np.sqrt(2.0), rel=0.03)
    assert width_aa(i_red) == pytest.approx(50.0 / np.sqrt(2.0), rel=0.03)


def test_absorption_lines_survive_normalisation() -> None:
    from obpipe.simulate.spectra import normalized_spectrum, planck_shape

    line = normalized_spectrum(WAVE, np.array([15000.0]), np.array([4.0]), np.zeros(1),
                               np.array([100.0]))
    flux = 500.0 * planck_shape(WAVE, np.array([15000.0])) * line
    nf, _ = normalize(flux, np.ones_like(flux))
    hb = np.argmin(np.abs(WAVE - 4862.7))
    assert nf[0, hb] < 0.75
    assert abs(np.median(nf[0, (WAVE > 5200) & (WAVE < 5800)]) - 1.0) < 0.02


def test_normalize_matches_float64_reference() -> None:
    """The banded float32 matrix products give the plain float64 weighted Gaussian mean
    (the sum over every pixel within the kernel's 4 L / sqrt 2 cutoff) to float32
    precision, with masked, zero-ivar and NaN pixels."""
    rng = np.random.default_rng(7)
    n = 6
    cont = 300.0 * (WAVE / 5000.0)[None, :] ** rng.uniform(-3, 0, (n, 1))
    ivar = rng.uniform(0.5, 2.0, (n, WAVE.size)) / cont
    flux = cont * (1 + 0.05 * np.sin(WAVE / 30.0)) + rng.normal(0, 1, cont.shape) / np.sqrt(ivar)
    mask = np.zeros(flux.shape, np.uint8)
    mask[0, 2000:2100] = MASK_BITS["bad_pixel"]
    ivar[1, rng.random(WAVE.size) < 0.1] = 0.0
    flux[2, 500:520] = np.nan
    flux, ivar = flux.astype(np.float32), ivar.astype(np.float32)
    nf, ni = normalize(flux, ivar, mask)
    cutoff = 4.0 * 50.0 / np.sqrt(2.0)
    for i in range(n):
        good = (ivar[i] > 0) & np.isfinite(flux[i]) & (mask[i] == 0)
        w = np.where(good, ivar[i].astype(float), 0.0)
        f = np.where(good, flux[i].astype(float), 0.0)
        ref_cont = np.empty(WAVE.size)
        for j in range(WAVE.size):
            near = np.abs(WAVE - WAVE[j]) <= cutoff
            k = np.exp(-(((WAVE[near] - WAVE[j]) / 50.0) ** 2)) * w[near]
            ref_cont[j] = np.sum(k * f[near]) / np.sum(k)
        ok = np.isfinite(flux[i])
        assert np.allclose(nf[i, ok], flux[i, ok] / ref_cont[ok], rtol=1e-5), i
        usable = ok & (mask[i] == 0) & (ivar[i] > 0)
        assert np.allclose(ni[i, usable], ivar[i, usable] * ref_cont[usable] ** 2, rtol=3e-5)
        assert np.all(ni[i, ~usable] == 0) and np.all(np.isnan(nf[i, ~ok]))
