"""Tests of obpipe.photometry.synthetic (run-time lookups: intrinsic photometry and extinction
coefficients of hot stars) and obpipe.photometry.synthetic_builder (the offline table builder)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from obpipe.photometry import synthetic as syn
from obpipe.photometry import synthetic_builder as builder

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MAMAJEK = SHARED_DATA / builder.MAMAJEK_FILENAME

needs_mamajek = pytest.mark.skipif(
    not MAMAJEK.exists(), reason=f"needs the Mamajek table of ../shared/data ({MAMAJEK} not found)")


@pytest.fixture(scope="module")
def mamajek():
    return builder.read_mamajek_dwarfs(MAMAJEK)


def _row(tab, spt):
    (k,) = np.flatnonzero(np.asarray(tab["SpT"]) == spt)
    return tab[k]


def _dwarf_logg(row) -> float:
    return float(np.log10(row["Msun"] / row["R_Rsun"] ** 2) + 4.438)


def test_table_has_all_bands_and_full_grid():
    tab = syn.intrinsic_colour_table()
    assert {"teff", "logg"} | {f"BC_{b}" for b in syn.BANDS} <= set(tab.colnames)
    teff = np.unique(tab["teff"])
    logg = np.unique(tab["logg"])
    assert len(tab) == teff.size * logg.size
    assert teff.min() <= 7000.0 and teff.max() >= 50000.0
    assert logg.min() <= 2.5 and logg.max() >= 8.0
    for key in ("sed", "filters", "magnitude_systems", "citations"):
        assert key in tab.meta
    assert tab.meta["magnitude_systems"]["g"] == "AB"
    assert tab.meta["magnitude_systems"]["Ks"] == "Vega"


@needs_mamajek
def test_shipped_table_equals_rebuild():
    shipped = syn.intrinsic_colour_table()
    rebuilt = builder.build_intrinsic_photometry_table(mamajek_path=MAMAJEK)
    assert len(shipped) == len(rebuilt)
    np.testing.assert_array_equal(shipped["teff"], rebuilt["teff"])
    np.testing.assert_array_equal(shipped["logg"], rebuilt["logg"])
    for b in syn.BANDS:
        np.testing.assert_allclose(shipped[f"BC_{b}"], rebuilt[f"BC_{b}"], rtol=0, atol=1e-6)
    assert dict(shipped.meta) == dict(rebuilt.meta)  # provenance names the builder


def test_run_time_lookups_do_not_load_the_builder():
    """The pipeline's lookups read the shipped table only: neither the offline builder nor
    its passband library (pyphot) is imported by them."""
    code = ("import sys, numpy as np\n"
            "from obpipe.photometry import synthetic\n"
            "m = synthetic.absolute_magnitudes(np.array([2e4]), np.array([4.0]), np.array([3.0]))\n"
            "assert np.isfinite(m['Ks']).all()\n"
            "print(sorted(n for n in ('pyphot', 'obpipe.photometry.synthetic_builder')"
            " if n in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out


@needs_mamajek
@pytest.mark.parametrize("spt", ["B0V", "B5V", "A0V"])
def test_mks_matches_mamajek(mamajek, spt):
    row = _row(mamajek, spt)
    teff, logl, logg = float(row["Teff"]), float(row["logL"]), _dwarf_logg(row)
    bc_ks_ref = float(row["BCv"] + row["V-Ks"])
    bc_ks = syn.bolometric_correction(np.array([teff]), np.array([logg]), "Ks")[0]
    assert abs(bc_ks - bc_ks_ref) < 0.15
    mks = syn.absolute_magnitudes(np.array([teff]), np.array([logg]), np.array([logl]))["Ks"][0]
    assert abs(mks - float(row["M_Ks"])) < 0.15
    # M_Ks is M_bol - BC_Ks (the paper's usage)
    assert mks == pytest.approx(4.74 - 2.5 * logl - bc_ks, abs=1e-12)


@needs_mamajek
def test_adjacent_colours_match_mamajek(mamajek):
    spt = list(np.asarray(mamajek["SpT"]))
    sel = mamajek[spt.index("O9V") : spt.index("A0V") + 1]
    teff = np.asarray(sel["Teff"], dtype=float)
    logg = np.array([_dwarf_logg(r) for r in sel])
    mags = syn.absolute_magnitudes(teff, logg, np.zeros_like(teff))
    n_checked = 0
    for blue, red in (("J", "H"), ("H", "Ks"), ("g", "r")):
        ref = np.asarray(sel[f"{blue}-{red}"], dtype=float)
        ok = np.isfinite(ref)
        n_checked += ok.sum()
        resid = (mags[blue] - mags[red])[ok] - ref[ok]
        assert np.max(np.abs(resid)) < 0.06, (blue, red, resid)
    assert n_checked > 30


def test_bp_rp_matches_kurucz_grid():
    kur = builder._read_kurucz_gaia_bcs()
    teff = np.asarray(kur["teff"], dtype=float)
    sel = (np.asarray(kur["logg"]) == 4.0) & (teff >= 10000) & (teff <= 40000)
    assert sel.sum() > 20
    ref = np.asarray(kur["BC_RP"])[sel] - np.asarray(kur["BC_BP"])[sel]  # BP - RP
    t, g = teff[sel], np.full(sel.sum(), 4.0)
    mags = syn.absolute_magnitudes(t, g, np.zeros_like(t))
    np.testing.assert_allclose(mags["BP"] - mags["RP"], ref, atol=0.05)
    # and off the Kurucz Teff nodes (interpolated) it stays close
    mid = 0.5 * (t[1:] + t[:-1])
    m_mid = syn.absolute_magnitudes(mid, np.full(mid.size, 4.0), np.zeros_like(mid))
    np.testing.assert_allclose(m_mid["BP"] - m_mid["RP"], 0.5 * (ref[1:] + ref[:-1]), atol=0.05)


def test_absolute_magnitudes_vectorised_and_bc_consistent():
    rng = np.random.default_rng(1)
    teff = rng.uniform(7000, 50000, 500)
    logg = rng.uniform(2.5, 8.0, 500)
    logl = rng.uniform(-2, 6, 500)
    mags = syn.absolute_magnitudes(teff, logg, logl)
    assert set(mags) == set(syn.BANDS)
    for b in syn.BANDS:
        assert mags[b].shape == teff.shape
        assert np.all(np.isfinite(mags[b]))
        np.testing.assert_allclose(
            mags[b], 4.74 - 2.5 * logl - syn.bolometric_correction(teff, logg, b), atol=1e-12
        )
    # hotter at fixed L: fainter in Ks (more negative BC)
    bc = syn.bolometric_correction(np.array([10000.0, 20000.0, 40000.0]), np.full(3, 4.0), "Ks")
    assert np.all(np.diff(bc) < 0)
    with pytest.raises(KeyError):
        syn.bolometric_correction(teff, logg, "V")


def test_extinction_ks_over_a0_at_12kK():
    r = syn.extinction_coefficients(12000.0)
    assert r["Ks"] / syn.R_V == pytest.approx(0.122, abs=0.005)


def test_extinction_coefficients_decrease_with_wavelength():
    # Order of decreasing effective wavelength for a hot spectrum. The broad G band sits
    # bluer than SDSS r; SDSS i (pivot 749 nm) and RP (775 nm, but with a blue wing) are
    # almost tied (R_i - R_RP = +0.07 at 7 kK, -0.01 at >= 20 kK), so they share a rank.
    ranks = (("g",), ("BP",), ("G",), ("r",), ("i", "RP"), ("J",), ("H",), ("Ks",))
    assert {b for rank in ranks for b in rank} == set(syn.BANDS)
    teff = np.array([7000.0, 12000.0, 20000.0, 30000.0, 45000.0])
    r = syn.extinction_coefficients(teff)
    for bluer, redder in zip(ranks[:-1], ranks[1:], strict=True):
        for b1 in bluer:
            for b2 in redder:
                assert np.all(r[b1] > r[b2]), (b1, b2, r[b1], r[b2])
    for family in (("g", "r", "i"), ("BP", "G", "RP"), ("J", "H", "Ks")):
        stacked = np.stack([r[b] for b in family])
        assert np.all(np.diff(stacked, axis=0) < 0), family
    assert np.all(np.abs(r["i"] - r["RP"]) < 0.1)
    assert np.all(r["Ks"] > 0)


def test_extinction_coefficients_vectorised():
    teff = np.linspace(7000, 50000, 30000)
    r = syn.extinction_coefficients(teff)
    for b in syn.BANDS:
        assert r[b].shape == teff.shape
        assert np.all(np.isfinite(r[b]))
    scalar = syn.extinction_coefficients(15000.0)
    assert np.ndim(scalar["g"]) == 0


def _blackbody_band_extinction(curve, teff_k, a0_mag, band):
    """A_X of a blackbody reddened by a dust_extinction curve, integrated through the
    pyphot passband here (independent of dustapprox's grids and polynomials)."""
    import astropy.units as u

    wave = np.arange(3100.0, 30000.0, 5.0)
    k = np.asarray(curve(wave * u.AA), float)
    flux = builder._planck_surface_flux(wave, np.array([teff_k]))[0]
    filt = builder._pyphot_filters()[band]
    unit = u.Unit("erg/(s cm2 AA)")
    red = filt.get_flux(wave * u.AA, flux * 10 ** (-0.4 * a0_mag * k) * unit).value
    return float(-2.5 * np.log10(red / filt.get_flux(wave * u.AA, flux * unit).value))


@pytest.mark.parametrize("law", ["G23", "F99"])
def test_law_coefficients_match_an_independent_integration(law):
    """dustapprox's A_X/A0 after the optical-depth correction (DUSTAPPROX_TAU_PER_MAG)
    equal dust_extinction's curve integrated over a hot blackbody: to 2 % in the NIR and
    RP, 4 % in BP (a blackbody has no Balmer jump); without the correction they are 8.6 %
    too large everywhere."""
    import dust_extinction.parameter_averages as pa

    curve = getattr(pa, law)(Rv=3.1)
    for a0 in (0.05, 3.0):
        r = syn.law_coefficients(20000.0, a0, law, 3.1)
        for band, tol in (("BP", 0.04), ("RP", 0.02), ("J", 0.02), ("H", 0.02), ("Ks", 0.02)):
            ref = _blackbody_band_extinction(curve, 20000.0, a0, band) / a0 * 3.1
            assert float(r[band]) == pytest.approx(ref, rel=tol), (band, a0)
            assert float(r[band]) * syn.DUSTAPPROX_TAU_PER_MAG > ref * (1 + tol)


def test_law_coefficients_fall_with_extinction_and_rise_with_r_v():
    low = syn.law_coefficients(20000.0, 0.01, "G23", 3.1)
    high = syn.law_coefficients(20000.0, 4.0, "G23", 3.1)
    assert high["BP"] - high["RP"] < 0.95 * (low["BP"] - low["RP"])  # effective wavelength
    r_ks = [float(syn.law_coefficients(20000.0, 1.0, "G23", rv)["Ks"]) for rv in (2.8, 3.1, 3.4)]
    assert np.all(np.diff(r_ks) > 0)  # A_Ks/E(B-V) grows with R_V
    with pytest.raises(ValueError, match="R_V"):
        syn.law_coefficients(20000.0, 1.0, "G23", 6.0)
    with pytest.raises(ValueError, match="law"):
        syn.law_coefficients(20000.0, 1.0, "XYZ", 3.1)


def test_law_grid_is_built_once_for_threads_asking_together():
    """The Dask threads of the photometry stage ask for the same law grid at once: they
    share one build (before, each thread built and kept its own, ~1-1.5 s apiece)."""
    import threading

    key = ("F99", 3.7)
    syn._LAW_GRIDS.pop(key, None)
    start = threading.Barrier(3)
    got: list[dict] = []

    def ask() -> None:
        start.wait()
        got.append(syn._law_grid(*key))

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and all(g is got[0] for g in got)
    assert syn._law_grid(*key) is got[0]
