"""The mock's real-sky systematics (issue 15, item 3) are present in its data, and the
mock does not share the pipeline's photometric assumptions (it would measure nothing)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from obpipe.config import SimulationConfig
from obpipe.simulate import sed, sky, stars, survey

CFG = SimulationConfig(n_stars=2000, seed=7)


@pytest.fixture(scope="module")
def tables():
    return survey.build_tables(CFG)


def _first(obs):
    return obs["uniqflag"] == 1


def test_simulator_never_imports_the_pipelines_photometry() -> None:
    """Reddening, intrinsic colours and the zero-point are the mock's own code."""
    for path in (Path(__file__).parents[2] / "obpipe" / "simulate").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(n.startswith("obpipe.photometry") for n in names), path.name


def test_zero_point_is_not_what_the_pipeline_removes(tables) -> None:
    """DR2 default: G-, colour- and position-dependent zero-point; the pipeline's published
    correction (a constant) leaves >= 10 uas rms, and the parallaxes carry it."""
    from obpipe.photometry.parallax import parallax_zero_point

    obs, truth, _ = tables
    assert set(obs["gaia_release"]) == {"DR2"}
    zp, _ = parallax_zero_point(obs["gaia_release"], obs["phot_g_mean_mag"],
                                obs["nu_eff_used_in_astrometry"], obs["pseudocolour"],
                                obs["ecl_lat"], obs["astrometric_params_solved"])
    res = truth["parallax_zp_true"] - zp
    assert 1000 * np.sqrt(np.mean(res**2)) >= 10.0
    g = obs["phot_g_mean_mag"]
    assert np.median(truth["parallax_zp_true"][g > 16]) - np.median(
        truth["parallax_zp_true"][g < 12.5]) > 0.015, "fainter stars: smaller |Z|"
    # the parallaxes carry the injected zero-point, not the pipeline's
    delta = obs["parallax"] - truth["parallax_mas_true"]
    w = 1.0 / truth["parallax_error_true"] ** 2
    fit_true = np.sum(w * (delta - truth["parallax_zp_true"])) / np.sum(w)
    fit_pipe = np.sum(w * (delta - zp)) / np.sum(w)
    assert abs(fit_true) < abs(fit_pipe) or abs(fit_true) < 0.003


def test_quoted_parallax_errors_underestimate_the_scatter(tables) -> None:
    obs, truth, _ = tables
    ratio = truth["parallax_error_true"] / obs["parallax_error"]
    assert np.median(ratio) >= 1.05 and np.all(ratio >= 1.0 - 1e-6)
    good = obs["ruwe"] < 1.4
    delta = obs["parallax"] - truth["parallax_zp_true"] - truth["parallax_mas_true"]
    assert np.std((delta / obs["parallax_error"])[good]) > 1.05
    assert abs(np.std((delta / truth["parallax_error_true"])[good]) - 1.0) < 0.08


def test_dr3_option_has_its_own_inflation_and_residual() -> None:
    from obpipe.photometry.parallax import parallax_zero_point

    obs, truth, _ = survey.build_tables(dataclasses.replace(CFG, n_stars=600,
                                                            gaia_release="dr3"))
    assert set(obs["gaia_release"]) == {"DR3"}
    assert np.median(truth["parallax_error_true"] / obs["parallax_error"]) >= 1.05
    zp, _ = parallax_zero_point(obs["gaia_release"], obs["phot_g_mean_mag"],
                                obs["nu_eff_used_in_astrometry"], obs["pseudocolour"],
                                obs["ecl_lat"], obs["astrometric_params_solved"])
    assert 1000 * np.std(truth["parallax_zp_true"] - zp) > 4.0


def test_r_v_varies_and_sets_the_band_extinction(tables) -> None:
    obs, truth, _ = tables
    first = _first(obs)
    assert 0.15 <= np.std(truth["R_V_true"][first]) <= 0.4
    reddened = first & (truth["ebv_true"] > 0.3)
    # A_Ks / E(B-V) = R_V A_Ks / A_V grows with R_V
    ratio = truth["AKs_true"][reddened] / truth["ebv_true"][reddened]
    assert spearmanr(ratio, truth["R_V_true"][reddened]).statistic > 0.9


def test_extinction_law_is_an_option_and_curves_differ() -> None:
    t, e, rv = np.array([20000.0]), np.array([1.0]), np.array([3.1])
    g23 = sed.band_extinction(t, e, rv, "G23")
    f99 = sed.band_extinction(t, e, rv, "F99")
    assert abs(g23["Ks"][0] / f99["Ks"][0] - 1.0) > 0.03
    with pytest.raises(ValueError, match="extinction_law"):
        dataclasses.replace(CFG, extinction_law="XYZ").validate()


def test_pipeline_e_bv_on_the_mock_is_not_exact(tables) -> None:
    """The pipeline's colour-excess E(B-V), given the true Teff and log g, cannot recover
    the mock's E(B-V) to better than 0.015 mag (it did to 0.009 when the mock reddened
    with the pipeline's own law and colours)."""
    from obpipe.photometry.extinction import EBV_BANDS, ebv_from_colour_excess, stack_bands

    obs, truth, _ = tables
    sel = np.flatnonzero(_first(obs) & (truth["star_class"] == "OB") & ~truth["is_binary"]
                         & ~truth["has_emission"])[:400]
    cols = {b: obs[sky.BAND_COLUMNS[b]][sel] for b in EBV_BANDS}
    errs = {b: obs[(c if c.startswith("phot_") else c) + ("_error" if c.startswith("phot_")
                                                           else "_err")][sel]
            for b, c in ((b, sky.BAND_COLUMNS[b]) for b in EBV_BANDS)}
    mags, mag_errs = stack_bands(cols, errs, EBV_BANDS, sel.size)
    est = ebv_from_colour_excess(mags, mag_errs, truth["teff_true"][sel],
                                 truth["logg_true"][sel], include_parameter_error=False)
    d = est["ebv"] - truth["ebv_true"][sel]
    assert np.nanstd(d) > 0.015


def test_intrinsic_colours_scatter_from_star_to_star() -> None:
    cfg = dataclasses.replace(CFG, binary_fraction=0.0, emission_fraction=0.0)
    pop = stars.sample_population(cfg, np.random.default_rng(1))
    system = sky.system_absolute_magnitudes(pop)
    base = sed.absolute_magnitudes(pop["teff"], pop["log_lum"])
    for blue, red in (("g", "r"), ("BP", "RP"), ("J", "H"), ("H", "Ks")):
        scatter = np.std((system[blue] - system[red]) - (base[blue] - base[red]))
        assert 0.01 <= scatter <= 0.03, (blue, red, scatter)
    assert np.allclose(system["Ks"], base["Ks"])  # M_Ks itself carries no colour offset


def test_mock_colours_follow_mamajek_not_the_pipeline_table() -> None:
    """Dwarf colours equal Mamajek's where tabulated (B2V, B8V) to interpolation accuracy."""
    table = {row: (t, vals) for row, t, vals in (
        ("B2V", 20600.0, {"V-Ks": -0.602, "J-H": -0.113, "g-r": -0.475}),
        ("B8V", 12300.0, {"V-Ks": -0.254, "J-H": -0.067, "Bp-Rp": None}),
    )}
    for _, (t, vals) in table.items():
        m = sed.absolute_magnitudes(np.array([t]), np.array([2.0]))
        bc = np.interp(np.log10(t), *sed.eem_table()["BCv"])
        m_v = sed.M_BOL_SUN - 2.5 * 2.0 - bc
        assert m_v - m["Ks"][0] == pytest.approx(vals["V-Ks"], abs=2e-3)
        assert m["J"][0] - m["H"][0] == pytest.approx(vals["J-H"], abs=2e-3)


def test_spectral_noise_is_misscaled_and_pixel_correlated(tables) -> None:
    """Two noise draws of the same spectra: their difference, in units of the quoted
    sigma, has the std of ivar_scale_true and neighbouring pixels correlate."""
    obs, truth, synth = tables
    rows = np.flatnonzero((synth["broken_kind"] == "none") & (synth["snr"] > 30))[:6]
    part = {k: v[rows] for k, v in synth.items()}
    a = survey.synthesize_spectra(part, 1, noise_neighbour_correlation=0.25)
    b = survey.synthesize_spectra(part, 2, noise_neighbour_correlation=0.25)
    for j in range(rows.size):
        ok = (a["ivar"][j] > 0) & (b["ivar"][j] > 0) & (a["mask"][j] == 0) & (b["mask"][j] == 0)
        z = (a["flux"][j] - b["flux"][j]) * np.sqrt(a["ivar"][j]) / np.sqrt(2.0)
        z = np.where(ok, z, np.nan)
        assert np.nanstd(z) == pytest.approx(truth["ivar_scale_true"][rows[j]], rel=0.08)
        pair = ok[1:] & ok[:-1]
        rho = np.corrcoef(z[1:][pair], z[:-1][pair])[0, 1]
        assert 0.15 < rho < 0.35
    p5, p95 = np.percentile(truth["ivar_scale_true"], [5, 95])
    assert p95 - p5 >= 0.2 and 0.8 <= truth["ivar_scale_true"].min()
    assert truth["ivar_scale_true"].max() <= 1.3


def test_rv_offsets_per_plate(tables) -> None:
    obs, truth, _ = tables
    plate = truth["plate_id"]
    resid = obs["rv"] - truth["rv_true"]
    plates = np.unique(plate)
    assert plates.size >= 10
    w = 1.0 / obs["rv_err"] ** 2
    mean = np.array([np.sum((w * resid)[plate == p]) / np.sum(w[plate == p]) for p in plates])
    offset = np.array([truth["plate_rv_offset_true"][plate == p][0] for p in plates])
    assert np.corrcoef(mean, offset)[0, 1] > 0.9
    assert np.std(offset) > 1.0
    # a plate is one night: its spectra share the MJD in the file name
    for p in plates[:5]:
        assert len({n.split("-")[1] for n in obs["fitsname"][plate == p]}) == 1


def test_supergiants_and_bright_giants(tables) -> None:
    obs, truth, synth = tables
    first = _first(obs)
    ob = first & (truth["star_class"] == "OB")
    low = ob & (truth["logg_true"] < 3.0)
    assert low.sum() / ob.sum() >= 0.02
    sg = first & truth["is_supergiant"]
    assert np.all((truth["logg_true"][sg] >= 1.5) & (truth["logg_true"][sg] <= 3.0))
    assert np.all((truth["teff_true"][sg] >= 10000) & (truth["teff_true"][sg] <= 30000))
    # luminous: brighter in M_Ks than main-sequence OB stars of the same Teff
    ms = ob & ~truth["is_supergiant"] & ~truth["is_evolved"]
    for lo, hi in ((10000, 15000), (15000, 22000)):
        a = sg & (truth["teff_true"] >= lo) & (truth["teff_true"] < hi)
        b = ms & (truth["teff_true"] >= lo) & (truth["teff_true"] < hi)
        if a.sum() >= 3:
            assert np.median(truth["MKs_true"][a]) < np.median(truth["MKs_true"][b]) - 1.5
    # the hottest, lowest-gravity ones fill in H-alpha with wind emission
    wind = synth["emission_type"] == "wind"
    assert wind.any() and np.all(truth["is_supergiant"][wind])
    from obpipe.simulate.spectra import emission_spectrum
    from obpipe.spectra.grid import wavelength_grid

    wave = wavelength_grid()
    idx = np.flatnonzero(wind)[:3]
    em = emission_spectrum(wave, synth["emission_type"][idx], synth["halpha_ew"][idx],
                           synth["vsini"][idx], synth["ism_velocity_kms"][idx], 1800.0)
    core = np.abs(wave - 6565.5) < 6
    assert np.all(em[:, core].max(axis=1) > 0)


def test_binaries_move_between_visits_with_sana_periods(tables) -> None:
    """Issue 18, item 3: orbital RVs per visit (the phase of the visit's date), periods
    from Sana et al. (2012): median P ~ 10-20 d, most between 1.4 d and 3,000 d."""
    obs, truth, _ = tables
    first = _first(obs)
    binary = first & truth["is_binary"]
    period = truth["orbital_period_days_true"][binary]
    assert 8 < np.median(period) < 30
    assert np.percentile(period, 5) > 1.3 and np.percentile(period, 95) < 3200
    assert np.all(np.isnan(truth["orbital_period_days_true"][~truth["is_binary"]]))
    star = truth["star_index"]
    scatter_bin, scatter_single = [], []
    for s_ in np.unique(star[truth["is_binary"]])[:400]:
        rows = star == s_
        if rows.sum() >= 2 and truth["orbital_period_days_true"][rows][0] < 10:
            scatter_bin.append(np.std(truth["rv_true"][rows]))
    for s_ in np.unique(star[~truth["is_binary"]])[:400]:
        rows = star == s_
        if rows.sum() >= 2:
            scatter_single.append(np.std(truth["rv_true"][rows]))
    assert np.median(scatter_bin) > 10.0
    assert np.max(scatter_single) < 1e-6


def test_fig9_composites_figure(tmp_path) -> None:
    """Issue 15 item 3f: the report draws Fig. 9 from truth and the catalog's M_Ks, and
    says why not when M_Ks is missing."""
    from obpipe import report

    rng = np.random.default_rng(0)
    n = 400
    q = rng.uniform(0.1, 1.0, n)
    binary = rng.random(n) < 0.5
    true = rng.normal(-1.0, 1.0, n)
    truth = {"MKs_true": true, "MKs_system_true": true - np.where(binary, 0.75 * q**3, 0.0),
             "mass_ratio": np.where(binary, q, 0.0),
             "teff_secondary_true": np.where(binary, 8000 + 20000 * q, np.nan),
             "is_binary": binary, "has_emission": np.zeros(n, bool),
             "is_broken": np.zeros(n, bool), "star_class": np.full(n, "OB", dtype=object)}
    cols = {"MKs": true + rng.normal(0, 0.2, n), "snr_g": np.full(n, 80.0)}
    out = report.write_fig9(cols, truth, str(tmp_path / "fig9.png"))
    assert Path(out).stat().st_size > 10_000
    with pytest.raises(report.MissingProducts, match="Fig. 9"):
        report.write_fig9({"snr_g": cols["snr_g"]}, truth, str(tmp_path / "x.png"))


def test_ism_absorption_option_removes_only_the_interstellar_lines(tables) -> None:
    """``ism_absorption=False`` (a diagnostic for validate's ism_shortcut) removes the
    4430 AA DIB and keeps the continuum: same seed, same rows, same noise."""
    _, truth, synth = tables
    rows = np.flatnonzero((synth["broken_kind"] == "none") & (synth["ebv"] > 1.0)
                          & (synth["snr"] > 50))[:4]
    part = {k: v[rows] for k, v in synth.items()}
    off = dict(part, ism_ebv=np.zeros(rows.size))
    a, b = survey.synthesize_spectra(part, 3), survey.synthesize_spectra(off, 3)
    from obpipe.spectra.grid import wavelength_grid

    wave = wavelength_grid()
    dib = np.abs(wave - 4429.0) < 8
    cont = (wave > 4600) & (wave < 4800)
    with np.errstate(invalid="ignore", divide="ignore"):  # edge pixels are 0 / 0
        ratio = a["flux"] / b["flux"]
    assert np.all(np.median(ratio[:, dib], axis=1) < 0.97)
    assert np.allclose(np.median(ratio[:, cont], axis=1), 1.0, atol=0.01)
