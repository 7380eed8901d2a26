"""The stellar population of the mock: tracks, fractions, binaries, Mamajek check."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.config import SimulationConfig
from obpipe.photometry.synthetic_builder import read_mamajek_dwarfs
from obpipe.simulate import stars


def _pop(**kw):
    cfg = SimulationConfig(n_stars=kw.pop("n_stars", 20000), **kw)
    return cfg, stars.sample_population(cfg, np.random.default_rng(5))


def test_eq5_luminosity_mass_teff_gravity_consistent() -> None:
    _, pop = _pop(n_stars=3000)
    lhs = pop["log_lum"]
    rhs = stars.log_l_from_m_teff_logg(pop["mass_msun"], pop["teff"], pop["logg"])
    assert np.allclose(lhs, rhs, atol=1e-9)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"interloper_fraction": 0.2, "subdwarf_fraction": 0.05, "white_dwarf_fraction": 0.03,
         "binary_fraction": 0.5, "emission_fraction": 0.2, "evolved_fraction": 0.15},
    ],
)
def test_population_fractions_follow_options(options) -> None:
    cfg, pop = _pop(**options)
    n = cfg.n_stars
    cls = pop["star_class"].astype(str)

    def close(measured: float, expected: float, n_eff: int) -> None:
        tol = 4.0 * np.sqrt(max(expected * (1 - expected), 1e-4) / n_eff)
        assert abs(measured - expected) < tol, (measured, expected)

    close(np.mean(cls == "interloper"), cfg.interloper_fraction, n)
    close(np.mean(cls == "subdwarf"), cfg.subdwarf_fraction, n)
    close(np.mean(cls == "white_dwarf"), cfg.white_dwarf_fraction, n)
    close(np.mean(pop["has_emission"]), cfg.emission_fraction, n)
    eligible = np.isin(cls, ["OB", "interloper"])
    close(np.mean(pop["is_binary"][eligible]), cfg.binary_fraction, int(eligible.sum()))
    ob = cls == "OB"
    close(np.mean(pop["is_evolved"][ob]), cfg.evolved_fraction, int(ob.sum()))
    assert not pop["has_emission"][~ob].any(), "emission is assigned to OB stars only"


def test_equal_mass_binaries_are_0p75_mag_brighter() -> None:
    _, pop = _pop(n_stars=2000, binary_fraction=1.0, min_mass_ratio=1.0)
    both = pop["is_binary"]
    assert both.sum() > 1500
    offset = pop["MKs"][both] - pop["MKs_system"][both]
    assert np.all(np.abs(offset - 2.5 * np.log10(2.0)) < 0.01)
    assert np.allclose(pop["MKs2"][both], pop["MKs"][both])


def test_unequal_binaries_are_brighter_but_less() -> None:
    _, pop = _pop(n_stars=4000, binary_fraction=1.0, min_mass_ratio=0.1)
    b = pop["is_binary"]
    offset = pop["MKs"][b] - pop["MKs_system"][b]
    q = pop["mass_ratio"][b]
    assert np.all(offset >= 0) and np.all(offset <= 0.7526 + 1e-6)
    assert np.median(offset[q < 0.3]) < 0.05 < np.median(offset[q > 0.8])


def test_population_spans_hot_star_parameters() -> None:
    _, pop = _pop()
    ob = pop["star_class"] == "OB"
    teff, logg = pop["teff"][ob], pop["logg"][ob]
    assert np.percentile(teff, 2) < 12000 and np.percentile(teff, 98) > 30000
    assert np.percentile(logg, 5) < 3.5 and 4.0 < np.percentile(logg, 60) < 4.5
    mks = pop["MKs"][ob]
    assert np.percentile(mks, 5) < -3.0 and np.percentile(mks, 95) > 0.5


def test_evolved_ob_stars_stay_blue_giants_and_supergiants() -> None:
    """DESIGN.md: OB stars span Teff ~ 10-45 kK and log g ~ 3-4.5; evolved ones cross
    only as far as an OB selection still sees them (no yellow/red supergiants)."""
    cfg, pop = _pop(evolved_fraction=0.5)
    evolved = pop["is_evolved"]
    teff, logg = pop["teff"][evolved], pop["logg"][evolved]
    # the cosmic mass scatter moves log g by a few hundredths of a dex at most
    assert logg.min() >= cfg.evolved_min_logg - 1e-9
    # on the tracks: every star that is hotter than the floor at the terminal-age main
    # sequence stays hotter through the whole crossing; cooler ones do not cross
    mass, tau = np.meshgrid(np.geomspace(2.5, 40.0, 60), np.linspace(1.0, 1.25, 11))
    mass, tau = mass.ravel(), tau.ravel()
    floors = {"min_teff_k": cfg.evolved_min_teff_k, "min_logg": cfg.evolved_min_logg}
    log_l, log_r = stars.track_log_l_r(mass, tau, **floors)
    log_l_tams, log_r_tams = stars.track_log_l_r(mass, np.ones_like(mass))
    teff_tams = stars.teff_from_l_r(log_l_tams, log_r_tams)
    teff = stars.teff_from_l_r(log_l, log_r)
    hot = teff_tams > cfg.evolved_min_teff_k
    assert teff[hot].min() >= cfg.evolved_min_teff_k * (1 - 1e-9)
    np.testing.assert_allclose(log_r[~hot], log_r_tams[~hot])
    assert stars.logg_from_m_r(mass, log_r).min() >= cfg.evolved_min_logg - 1e-9
    # ... and the crossing still happens: massive stars end well above their TAMS radius
    assert np.median((log_r - log_r_tams)[hot & (tau == 1.25)]) > 0.1
    # without the floors the same stars reach yellow-supergiant temperatures
    log_l_free, log_r_free = stars.track_log_l_r(mass, tau)
    assert (log_r <= log_r_free + 1e-12).all()
    assert np.median(stars.teff_from_l_r(log_l_free, log_r_free)[tau == 1.25]) < 8000.0


def test_mid_main_sequence_matches_mamajek_dwarfs(shared_data) -> None:
    """Mid-MS (t = 0.4 t_MS) M_Ks(Teff) within 0.3 mag of Pecaut & Mamajek (2013), B0V-A0V;
    the ZAMS lies below the mean dwarf sequence."""
    table = read_mamajek_dwarfs(shared_data / "EEM_dwarf_UBVIJHK_colors_Teff.txt")
    spt = np.array([str(s) for s in table["SpT"]])
    hot = np.array([s.startswith("B") or s == "A0V" for s in spt])
    teff_ref, mks_ref = np.asarray(table["Teff"][hot], float), np.asarray(table["M_Ks"][hot], float)
    mass = np.geomspace(1.8, 25.0, 500)
    for tau, lo, hi in ((0.4, -0.3, 0.3), (0.0, 0.3, 1.0)):
        log_l, log_r = stars.track_log_l_r(mass, np.full_like(mass, tau))
        teff = stars.teff_from_l_r(log_l, log_r)
        mks = stars.mks_of(teff, stars.logg_from_m_r(mass, log_r), log_l)
        order = np.argsort(teff)
        diff = np.interp(teff_ref, teff[order], mks[order]) - mks_ref
        detail = dict(zip(spt[hot], np.round(diff, 2), strict=True))
        assert np.all((diff > lo) & (diff < hi)), detail
