"""The photometry stage on a small mock survey: one row per spectrum, resume, accuracy vs truth."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.engine.blockwise import open_products
from obpipe.io import store
from obpipe.photometry import extinction, parallax
from obpipe.photometry.block import SURVEY_VARS, photometry_block
from obpipe.pipeline import RunContext, run_pipeline
from obpipe.stages.photometry import OUTPUTS, is_complete, run
from obpipe.validate import photometry_metrics


@pytest.fixture(scope="module")
def photometry_run(small_survey, tmp_path_factory):
    products = str(tmp_path_factory.mktemp("phot") / "products")
    run_pipeline(small_survey, products, ["index"])
    ctx = RunContext(small_survey, products, scheduler="threads")
    assert not is_complete(ctx)
    report = run(ctx)
    return ctx, report


@pytest.fixture(scope="module")
def metrics(photometry_run):
    ctx, _ = photometry_run
    return photometry_metrics(store.open_cube(ctx.survey_path),
                              open_products(ctx.products_dir).load(),
                              store.open_truth(ctx.survey_path).load())


def test_stage_writes_every_output_for_every_spectrum(photometry_run) -> None:
    ctx, report = photometry_run
    prods = open_products(ctx.products_dir)
    n = store.open_cube(ctx.survey_path).sizes["spec"]
    assert report["spectra_written"] == n
    assert is_complete(ctx)
    for name, out in OUTPUTS.items():
        assert prods[name].shape == (n,)
        assert prods[name].attrs["units"] == out.units
    # every spectrum keeps its row, and almost all get an E(B-V) and a zero-point
    assert np.mean(np.isfinite(prods["ebv"].values)) > 0.97
    assert np.all(np.isfinite(prods["parallax_offset"].values))
    # a complete stage is skipped
    assert run(ctx)["blocks_written"] == 0


def _single_ob(truth, prods) -> np.ndarray:
    """Single, non-emission OB stars with all E(B-V) bands and a survey Teff."""
    flags = np.asarray(prods["photometry_flags"].values)
    return ((np.asarray(truth["star_class"].values) == "OB")
            & ~np.asarray(truth["has_emission"].values, bool)
            & ~np.asarray(truth["is_binary"].values, bool)
            & (np.asarray(prods["ebv_nbands"].values) == len(extinction.EBV_BANDS))
            & ((flags & extinction.FLAG_DEFAULT_TEFF) == 0))


def _mock_curve(law: str) -> extinction.CoefficientModel:
    """The mock's own band integration of its curve family (obpipe.simulate.sed), as a
    coefficient model for an oracle (never used by the pipeline)."""
    from obpipe.simulate import sed

    def model(teff, a0, r_v, bands):
        ebv = np.maximum(a0 / r_v, 1e-3)
        a = sed.band_extinction(teff, ebv, np.full(np.shape(teff), r_v), law, bands=bands)
        return {b: a[b] / ebv for b in bands}
    return model


@pytest.fixture(scope="module")
def ebv_residuals(photometry_run):
    """E(B-V) - truth of the stage and of an oracle (true Teff / log g, the mock's own curve
    family and band integration, R_V = 3.1) for single non-emission OB stars."""
    import json

    ctx, _ = photometry_run
    survey = store.open_cube(ctx.survey_path)
    truth = store.open_truth(ctx.survey_path).load()
    prods = open_products(ctx.products_dir).load()
    sel = _single_ob(truth, prods)
    true = truth["ebv_true"].values[sel]
    cols = {v: np.asarray(survey[v].values)[sel] for v in SURVEY_VARS if v in survey}
    cols.update(teff=truth["teff_true"].values[sel], logg=truth["logg_true"].values[sel],
                teff_err=0.01 * truth["teff_true"].values[sel],
                logg_err=np.full(sel.sum(), 0.05))
    law = json.loads(survey.attrs["simulation_config"])["extinction_law"]
    oracle = photometry_block(cols, law=_mock_curve(law))
    return {"diff": prods["ebv"].values[sel] - true,
            "pull": (prods["ebv"].values[sel] - true) / prods["ebv_err"].values[sel],
            "true": true, "oracle_diff": oracle["ebv"] - true, "law": law}


def test_ebv_accuracy_on_the_honest_mock(ebv_residuals) -> None:
    """Issue 15's E(B-V) targets on the mock that reddens with F19 at R_V ~ N(3.1, 0.25) and
    Mamajek colours + 0.02 mag scatter (docs/validation.md, "E(B-V) on the honest mock").

    Scatter <= 0.05 is out of reach for an estimator at a fixed R_V: the oracle (true Teff,
    the mock's own F19 integration, R_V = 3.1) scatters 0.101 mag on a 4,000-star mock
    (``benchmarks/ebv_on_mock.py``), the R_V scatter of the most reddened stars; asserted
    here: the stage within 25 % of that oracle (0.113 vs 0.101 there). Bias: the mock's
    intrinsic colours read 0.026 mag bluer than the pipeline's table (the oracle at each
    star's true R_V has bias -0.026), so |bias| <= 0.05 instead of 0.02."""
    d, o = ebv_residuals["diff"], ebv_residuals["oracle_diff"]
    assert ebv_residuals["law"] != extinction.DEFAULT_LAW  # the mock is not circular by law
    assert d.size > 300 and np.all(np.isfinite(d))
    assert np.std(o) > 0.05  # the 0.05 is beyond a fixed-R_V oracle on this mock
    assert np.std(d) <= 1.25 * np.std(o)
    assert np.std(d) >= 0.015  # below: the mock would still be circular (issue 15)
    assert abs(np.mean(d)) <= 0.05
    # low extinction (R_V scatter small): the targets hold
    low = ebv_residuals["true"] < 0.7
    assert low.sum() > 50
    assert abs(np.mean(d[low])) <= 0.03 and np.std(d[low]) <= 0.05


def test_ebv_errors_on_the_honest_mock(ebv_residuals, metrics) -> None:
    """Pulls ~1 where the R_V scatter does not dominate; the mock's sigma(R_V) = 0.25 (above
    the 0.18 of Schlafly et al. 2016 that the pipeline propagates) and F19's steeper R_V
    dependence make the reddest stars' errors too small: pull std 1.72 overall on the
    4,000-star mock, 1.08 at E(B-V) < 0.7 (``benchmarks/ebv_on_mock.py``)."""
    p, true = ebv_residuals["pull"], ebv_residuals["true"]
    low = true < 0.7
    assert 0.8 <= np.std(p[low]) <= 1.3
    assert np.std(p) <= 2.2
    # emission stars' disc excess reddens them (Fig. 4): positive mean pull
    assert metrics["ebv"]["emission"]["pull_mean"] > metrics["ebv"]["non_emission"]["pull_mean"]


def test_geometric_mks_and_zero_point_on_the_mock(photometry_run, metrics) -> None:
    """M_Ks_geo pulls (eq. 11-12) and the parallax zero-point on the honest mock.

    On this survey the pull median is 0.35 (std 1.21): 0.17 with the true zero-point
    substituted (the E(B-V) bias, -0.035 mag, times R_Ks), the rest the mock's zero-point
    that varies with G, colour and sky position (mean residual -17 uas here, +0.1 uas on
    the 4,000-star seed-7 mock, where the pull median is -0.06)."""
    pull = metrics["MKs_geo"]["pull_plx_snr_gt_10"]
    assert pull["n"] > 200
    assert abs(pull["median"]) < 0.5
    assert 0.8 <= pull["std"] <= 1.3
    ctx, _ = photometry_run
    survey = store.open_cube(ctx.survey_path)
    truth = store.open_truth(ctx.survey_path).load()
    prods = open_products(ctx.products_dir).load()
    zp_true = truth["parallax_zp_true"].values.astype(float)
    geo = parallax.geometric_absolute_magnitude(
        survey["Ks"].values, survey["Ks_err"].values, prods["AKs"].values,
        prods["AKs_err"].values, survey["parallax"].values - zp_true,
        prods["parallax_corrected_error"].values)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = prods["parallax_corrected"].values / prods["parallax_corrected_error"].values
        p_zp = (geo["MKs_geo"] - truth["MKs_system_true"].values) / geo["MKs_geo_err"]
    sel = (~truth["has_emission"].values.astype(bool) & (survey["ruwe"].values < 1.4)
           & (snr > 10) & np.isfinite(p_zp))
    assert abs(np.median(p_zp[sel])) < 0.25 and 0.8 <= np.std(p_zp[sel]) <= 1.25
    # the mock's zero-point varies with G, colour and sky position (issue 15 item 3a): the
    # pipeline's published correction removes most of the mean offset, not all of it
    offset = prods["parallax_offset"].values.astype(float)
    assert abs(np.mean(zp_true - offset)) < 0.5 * abs(np.mean(zp_true))
    assert metrics["zero_point"]["residual_std_mas"] >= 0.010


def test_negative_parallax_rows_are_nan_and_flagged(photometry_run) -> None:
    ctx, _ = photometry_run
    prods = open_products(ctx.products_dir).load()
    plx = prods["parallax_corrected"].values
    flags = prods["photometry_flags"].values
    neg = np.isfinite(plx) & (plx <= 0)
    assert neg.any(), "the small survey should contain some non-positive parallaxes"
    assert np.all(np.isnan(prods["MKs_geo"].values[neg]))
    assert np.all(flags[neg] & parallax.FLAG_PLX_NONPOSITIVE)
    assert np.all(np.isfinite(prods["MKs_geo"].values[(plx > 0) & np.isfinite(prods["Ks0"])]))


def _toy_inputs(n: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    cols = {v: rng.uniform(11.0, 13.0, n) for v in SURVEY_VARS}
    for v in SURVEY_VARS:
        if v.endswith("_err") or v.endswith("_error"):
            cols[v] = np.full(n, 0.02)
    cols.update(teff=np.full(n, 20000.0), teff_err=np.full(n, 600.0), logg=np.full(n, 4.0),
                logg_err=np.full(n, 0.1), parallax=np.array([0.5, -0.2, 0.3, np.nan]),
                gaia_release=np.array(["DR3", "DR3", "DR2", "DR3"], dtype=object),
                astrometric_params_solved=np.array([31, 95, 31, 3]),
                nu_eff_used_in_astrometry=np.full(n, 1.6),
                pseudocolour=np.full(n, 1.5), ecl_lat=np.full(n, 10.0))
    return cols


def test_block_handles_missing_columns_and_never_uses_ks_for_ebv() -> None:
    cols = _toy_inputs()
    out = photometry_block(cols)
    assert set(out) == set(OUTPUTS) and all(v.shape == (4,) for v in out.values())
    cols2 = dict(cols, Ks=cols["Ks"] + 1.0)
    out2 = photometry_block(cols2)
    np.testing.assert_array_equal(out["ebv"], out2["ebv"])
    np.testing.assert_allclose(out2["Ks0"] - out["Ks0"], 1.0, atol=1e-5)
    # a survey without the optical survey, Teff or the Gaia colour columns still works
    drop = {"g", "g_err", "r", "r_err", "i", "i_err", "teff", "teff_err", "pseudocolour"}
    out3 = photometry_block({k: v for k, v in cols.items() if k not in drop})
    assert np.all(np.isfinite(out3["ebv"]))
    assert np.all(out3["photometry_flags"] & extinction.FLAG_DEFAULT_TEFF)
    assert out3["ebv_nbands"][0] == 4
    # 2p solution and 6p without pseudocolour fall back, flagged; DR2 gets Leung & Bovy
    assert out3["photometry_flags"][3] & parallax.FLAG_ZP_FALLBACK
    assert out3["photometry_flags"][1] & parallax.FLAG_ZP_FALLBACK
    assert out["parallax_offset"][2] == pytest.approx(-0.0523)
