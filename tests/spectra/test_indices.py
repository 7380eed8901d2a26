"""Tests of obpipe.spectra.indices (EWs, resolution, resampling) and the MILES reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from obpipe.io.miles import (
    MILES_PARAMS_FILE,
    load_miles_hot_stars,
    read_miles_parameters,
    read_miles_spectrum,
)
from obpipe.spectra.indices import (
    BALMER_INDICES,
    LINE_INDICES,
    air_to_vacuum,
    degrade_resolution,
    equivalent_width,
    equivalent_widths,
    resample_to_loglam,
    vacuum_to_air,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MILES_DIR = SHARED_DATA / "miles"
EW_CSV = Path(__file__).resolve().parents[1] / "data" / "miles_hot_star_ews.csv"

needs_miles = pytest.mark.skipif(
    not (MILES_DIR / MILES_PARAMS_FILE).exists(),
    reason=f"needs the MILES spectra of ../shared/data (not found at {MILES_DIR})"
)


def lamost_wave() -> np.ndarray:
    wave, _ = resample_to_loglam(np.array([3000.0, 10000.0]), np.ones(2))
    return wave


def gaussian_line(wave: np.ndarray, center: float, ew: float, sigma: float) -> np.ndarray:
    return 1.0 - ew / (np.sqrt(2.0 * np.pi) * sigma) * np.exp(-0.5 * ((wave - center) / sigma) ** 2)


def measured_fwhm(wave: np.ndarray, depth: np.ndarray) -> float:
    """FWHM (AA) of a single positive peak, half-maximum crossings interpolated."""
    half = 0.5 * depth.max()
    i = np.flatnonzero(depth >= half)
    lo, hi = i[0], i[-1]
    x_lo = np.interp(half, [depth[lo - 1], depth[lo]], [wave[lo - 1], wave[lo]])
    x_hi = np.interp(half, [depth[hi + 1], depth[hi]], [wave[hi + 1], wave[hi]])
    return x_hi - x_lo


# --------------------------------------------------------------------------- indices


def test_index_definitions_are_consistent() -> None:
    for name in ("Hbeta", "Hgamma", "Hdelta", "HeI4471", "HeI4026", "HeII4686", "Halpha"):
        idx = LINE_INDICES[name]
        assert idx.blue_continuum[1] <= idx.band[0] < idx.center_vac_aa < idx.band[1]
        assert idx.band[1] <= idx.red_continuum[0]
    for name in BALMER_INDICES:  # wide bands for the Stark wings of hot stars
        idx = LINE_INDICES[name]
        assert idx.band[1] - idx.band[0] >= 60.0
    hei = LINE_INDICES["HeI4471"]
    assert hei.band[1] - hei.band[0] <= 16.0
    assert hei.band[1] < air_to_vacuum(4481.2) - 2.0  # stops short of Mg II 4481
    assert abs(LINE_INDICES["Hbeta"].center_vac_aa - 4862.68) < 0.02


@pytest.mark.parametrize("name", list(LINE_INDICES))
def test_gaussian_ew_recovered_on_lamost_grid(name: str) -> None:
    wave = lamost_wave()
    idx = LINE_INDICES[name]
    true_ew = 1.2 if name.startswith("He") else 8.0
    sigma = 1.5 if name.startswith("He") else 5.0
    # sloped continuum: EW is relative to the straight-line continuum
    continuum = 2.0 * (1.0 + 2e-4 * (wave - 5000.0))
    flux = continuum * gaussian_line(wave, idx.center_vac_aa, true_ew, sigma)
    ew = equivalent_width(wave, flux, idx)
    assert isinstance(ew, float)
    assert ew == pytest.approx(true_ew, rel=0.02)
    # emission gives a negative EW
    assert equivalent_width(wave, continuum * (2.0 - flux / continuum), idx) == pytest.approx(
        -true_ew, rel=0.02
    )


def test_ew_vectorised_and_nan_handling() -> None:
    wave = lamost_wave()
    idx = LINE_INDICES["Hgamma"]
    ews_true = np.array([2.0, 5.0, 10.0, 15.0])
    flux = np.vstack([gaussian_line(wave, idx.center_vac_aa, e, 6.0) for e in ews_true])
    flux[2, np.argmin(np.abs(wave - 4280.0))] = np.nan  # blue continuum window
    ews = equivalent_width(wave, flux, idx)
    assert ews.shape == (4,)
    assert np.isnan(ews[2])
    np.testing.assert_allclose(ews[[0, 1, 3]], ews_true[[0, 1, 3]], rtol=0.02)
    # not covered: a grid that stops inside the red window
    cut = wave < 4400.0
    assert np.isnan(equivalent_width(wave[cut], flux[0, cut], idx))
    assert set(equivalent_widths(wave, flux)) == set(LINE_INDICES)


# --------------------------------------------------------------------------- air/vacuum


def test_air_to_vacuum() -> None:
    assert float(air_to_vacuum(6562.8)) == pytest.approx(6564.6, abs=0.03)
    assert float(air_to_vacuum(4861.33)) == pytest.approx(4862.69, abs=0.03)
    w = np.linspace(3500.0, 9500.0, 50)
    np.testing.assert_allclose(vacuum_to_air(air_to_vacuum(w)), w, atol=2e-3)
    assert float(air_to_vacuum(1500.0)) == 1500.0


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize("center", [4000.0, 8000.0])
def test_degrade_delta_line_gives_target_fwhm(center: float) -> None:
    wave = np.arange(center - 60.0, center + 60.0, 0.02)
    fwhm_in = 0.06
    flux = gaussian_line(wave, center, 0.05, fwhm_in / 2.3548)  # delta-like line
    out = degrade_resolution(wave, flux, fwhm_in, target_R=1800.0)
    assert out.shape == flux.shape
    expected = center / 1800.0
    assert measured_fwhm(wave, 1.0 - out) == pytest.approx(expected, rel=0.05)
    # EW is conserved by the convolution
    line = (wave > center - 30) & (wave < center + 30)
    assert np.sum((1.0 - out)[line]) * 0.02 == pytest.approx(0.05, rel=0.01)


def test_degrade_from_constant_fwhm_input_and_2d() -> None:
    wave = np.arange(5000.0, 7000.0, 0.5)
    centers = (5500.0, 6500.0)
    fwhm_in = 2.5
    flux = np.ones((2, wave.size))
    for k, c in enumerate(centers):
        flux[k] = gaussian_line(wave, c, 0.5, fwhm_in / 2.3548)
    out = degrade_resolution(wave, flux, fwhm_in, target_R=1800.0)
    assert out.shape == flux.shape
    for k, c in enumerate(centers):
        assert measured_fwhm(wave, 1.0 - out[k]) == pytest.approx(c / 1800.0, rel=0.05)
    # input already coarser than the target (2.5 AA > 4000/1800 AA): unchanged
    wave_b = np.arange(3800.0, 4200.0, 0.5)
    flux_b = gaussian_line(wave_b, 4000.0, 0.5, 1.0)
    np.testing.assert_allclose(degrade_resolution(wave_b, flux_b, 2.5, 1800.0), flux_b)


def test_resample_to_loglam() -> None:
    wave_in = np.arange(3540.5, 7410.0, 0.9)
    flux_in = 1.0 + 1e-4 * wave_in
    for method in ("linear", "flux"):
        wave, flux = resample_to_loglam(wave_in, flux_in, method=method)
        assert wave.shape == flux.shape == (3909,)
        assert wave[0] == pytest.approx(10**3.5682)
        assert wave[-1] == pytest.approx(10 ** (3.5682 + 3908e-4))
        inside = np.isfinite(flux)
        assert np.all(~inside[wave > 7410.0])
        # (flux method: pixel mean vs value at the geometric pixel centre differ by ~5e-6)
        np.testing.assert_allclose(flux[inside], 1.0 + 1e-4 * wave[inside], rtol=2e-5)
    _, f2 = resample_to_loglam(wave_in, np.vstack([flux_in, 2 * flux_in]))
    assert f2.shape == (2, 3909)


# --------------------------------------------------------------------------- MILES


@pytest.fixture(scope="module")
def miles() -> tuple:
    table, wave, flux = load_miles_hot_stars(MILES_DIR)
    ews = equivalent_widths(wave, flux)
    return table, wave, flux, ews


@needs_miles
def test_read_miles_parameters() -> None:
    t = read_miles_parameters(MILES_DIR / MILES_PARAMS_FILE)
    assert len(t) > 900
    row = t[np.asarray(t["miles_id"].filled(-1)) == 11][0]
    assert row["name"] == "HD000886"  # gamma Peg, B2IV
    assert row["teff"] == pytest.approx(21581.0)
    assert row["logg"] == pytest.approx(3.86)
    assert np.ma.getmaskarray(t["miles_id"]).sum() >= 1  # the '022.' entry


@needs_miles
def test_read_miles_spectrum() -> None:
    wave, flux = read_miles_spectrum(MILES_DIR / "MILES_res2.50_star_m0011V.fits")
    assert wave.shape == flux.shape == (4300,)
    assert wave[0] == pytest.approx(3540.5)
    assert np.diff(wave) == pytest.approx(0.9)
    assert np.all(np.isfinite(flux)) and np.median(flux) > 0
    assert flux.dtype.isnative


@needs_miles
def test_miles_hot_dwarf_hbeta(miles) -> None:
    table, wave, flux, ews = miles
    assert len(table) == 74
    assert flux.shape == (74, 3909)
    i = int(np.flatnonzero(np.asarray(table["miles_id"]) == 11)[0])  # HD 886, B2IV
    assert 2.0 < ews["Hbeta"][i] < 8.0
    assert 0.7 < ews["HeI4471"][i] < 2.0
    # an A0-A2 dwarf has much stronger Balmer lines, and no He I
    a_dwarfs = (np.asarray(table["teff"]) < 10000) & (np.asarray(table["logg"]) > 4.0)
    assert np.all(ews["Hbeta"][a_dwarfs] > 12.0)
    assert np.all(np.abs(ews["HeI4471"][a_dwarfs]) < 0.4)


@needs_miles
def test_miles_luminosity_effect(miles) -> None:
    """At fixed Teff (9.5-20 kK) supergiants have weaker Balmer lines than dwarfs.

    Field stars only: the one cluster star with log g < 3 in this range, NGC 7789
    342(502) (Teff 10,023 K, log g 2.25 in MILES), has dwarf-like Balmer lines
    (Hbeta EW ~ 13 AA); it is a blue straggler whose catalogue log g is not
    spectroscopic. The range starts at 9.5 kK to include the two A0 Ib stars.
    """
    table, _, _, ews = miles
    teff = np.asarray(table["teff"])
    logg = np.asarray(table["logg"])
    field = ~np.asarray(table["cluster"])
    in_range = (teff >= 9500) & (teff <= 20000) & field
    giants = np.flatnonzero(in_range & (logg < 3.0))
    dwarfs = in_range & (logg > 3.8) & (logg < 5.0)
    assert len(giants) >= 4
    for name in ("Hdelta", "Hgamma", "Hbeta"):
        for i in giants:
            near = dwarfs & (np.abs(teff - teff[i]) <= 2500.0)
            assert near.sum() >= 2
            assert ews[name][i] < 0.6 * np.median(ews[name][near])


@needs_miles
def test_committed_ew_table_matches_code(miles) -> None:
    table, _, _, ews = miles
    df = pd.read_csv(EW_CSV)
    assert len(df) == len(table)
    assert list(df["miles_id"]) == list(np.asarray(table["miles_id"]))
    for name in LINE_INDICES:
        np.testing.assert_allclose(df[f"ew_{name}"], ews[name], atol=2e-3)
