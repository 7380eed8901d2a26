"""Spectral synthesis of the mock: resolution, rotation, gravity signal, ISM lines."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.simulate import spectra
from obpipe.spectra.grid import velocity_per_pixel_kms, wavelength_grid
from obpipe.spectra.indices import LINE_INDICES, equivalent_width

WAVE = wavelength_grid()


def _one(teff, logg, vsini=50.0, feh=0.0):
    arr = np.atleast_1d
    return spectra.normalized_spectrum(WAVE, arr(float(teff)), arr(float(logg)), arr(feh),
                                       arr(float(vsini)))[0]


def test_instrumental_resolution_is_r1800() -> None:
    line = np.zeros((1, WAVE.size))
    line[0, 2000] = 1.0
    sigma = spectra.instrumental_sigma_px(1800.0)
    out = spectra.broaden(line, np.array([0.0]), sigma)[0]
    x = np.arange(WAVE.size)
    mean = np.sum(x * out) / out.sum()
    fwhm_px = 2.3548 * np.sqrt(np.sum((x - mean) ** 2 * out) / out.sum())
    fwhm_kms = fwhm_px * velocity_per_pixel_kms()
    assert fwhm_kms == pytest.approx(299792.458 / 1800.0, rel=0.03)
    assert out.sum() == pytest.approx(1.0, abs=1e-6)


def test_rotation_preserves_equivalent_width_and_widens_lines() -> None:
    slow, fast = _one(20000, 4.0, vsini=10.0), _one(20000, 4.0, vsini=350.0)
    idx = LINE_INDICES["HeI4471"]
    # wide window so that rotation does not push flux out of the band
    ew_slow = np.trapezoid(1 - slow[(WAVE > 4440) & (WAVE < 4505)],
                           WAVE[(WAVE > 4440) & (WAVE < 4505)])
    ew_fast = np.trapezoid(1 - fast[(WAVE > 4440) & (WAVE < 4505)],
                           WAVE[(WAVE > 4440) & (WAVE < 4505)])
    assert ew_fast == pytest.approx(ew_slow, rel=0.05)
    core = np.argmin(np.abs(WAVE - idx.center_vac_aa))
    assert fast[core] > slow[core] + 0.05, "rotation makes line cores shallower"


def test_balmer_width_rises_with_gravity_at_fixed_teff() -> None:
    for teff in (12000.0, 18000.0, 25000.0):
        ews = [equivalent_width(WAVE, _one(teff, g), LINE_INDICES["Hgamma"])
               for g in (3.0, 3.5, 4.0, 4.5)]
        assert np.all(np.diff(ews) > 0), (teff, ews)
        # wing flux deficit 15-30 AA from H-delta: pressure broadening
        wing = (np.abs(WAVE - 4102.9) > 15) & (np.abs(WAVE - 4102.9) < 30)
        deficits = [np.mean(1 - _one(teff, g)[wing]) for g in (3.0, 4.5)]
        assert deficits[1] > 1.5 * deficits[0]


def test_helium_lines_follow_temperature() -> None:
    he1 = [equivalent_width(WAVE, _one(t, 4.0), LINE_INDICES["HeI4471"])
           for t in (10000.0, 22000.0, 40000.0)]
    assert he1[1] > 3 * he1[0] and he1[1] > he1[2]
    he2 = [equivalent_width(WAVE, _one(t, 4.0), LINE_INDICES["HeII4686"])
           for t in (20000.0, 40000.0)]
    assert he2[1] > 0.3 > he2[0]


def test_interstellar_features_grow_with_reddening() -> None:
    ebv = np.array([0.05, 0.5, 2.0])
    t = spectra.ism_transmission(WAVE, ebv, np.zeros(3), 1800.0)
    na = (WAVE > 5880) & (WAVE < 5910)
    dib = (WAVE > 6275) & (WAVE < 6296)
    ew_na = np.trapezoid(1 - t[:, na], WAVE[na], axis=1)
    ew_dib = np.trapezoid(1 - t[:, dib], WAVE[dib], axis=1)
    assert np.all(np.diff(ew_na) > 0) and np.all(np.diff(ew_dib) > 0)
    assert spectra.na_d_ew_aa(np.array([1.0]))[0] == pytest.approx(1.85 / 1.17, rel=1e-6)


def test_be_disc_emission_is_double_peaked() -> None:
    em = spectra.emission_spectrum(WAVE, np.array(["be_disc"], dtype=object),
                                   np.array([-30.0]), np.array([300.0]), np.array([0.0]),
                                   1800.0)[0]
    sel = (WAVE > 6520) & (WAVE < 6610)
    ew = np.trapezoid(em[sel], WAVE[sel])
    assert ew == pytest.approx(30.0, rel=0.05)
    prof = em[sel]
    center = np.argmin(np.abs(WAVE[sel] - 6564.61))
    assert prof[center] < prof.max(), "a dip at line centre between two peaks"
