"""The spectral chain end to end on the small mock survey, validated against truth."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from obpipe.engine.blockwise import open_products, stage_complete
from obpipe.io import store
from obpipe.pipeline import run_pipeline
from obpipe.validate import validate_survey

# end to end (an end-to-end run of the spectral stages): in make test, not in make test-fast
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def products(small_spectral_products, tmp_path_factory) -> str:
    """A copy of the session's spectral-stage products of the small survey (conftest:
    index, normalize, pca, emission; the luminosity tests start from the same run)."""
    out = str(tmp_path_factory.mktemp("spectral") / "products")
    shutil.copytree(small_spectral_products, out)
    return out


def test_products_one_row_per_spectrum(small_survey, products) -> None:
    survey = store.open_cube(small_survey)
    prods = open_products(products)
    n = survey.sizes["spec"]
    for name in ("norm_flux", "norm_ivar", "recon_flux", "pca_coeff", "halpha_excess",
                 "halpha_chi2", "em_flag", "em_flag_star", "quality_flags"):
        assert prods[name].sizes["spec"] == n, name
    assert prods["pca_coeff"].shape == (n, 100)
    assert np.array_equal(prods["specid"].values, survey["specid"].values)
    assert np.isin(prods["em_flag"].values, [-9, 0, 1]).all()
    assert np.isfinite(prods["recon_flux"].values[:, 1000:3000]).mean() > 0.99
    for stage in ("normalize", "pca", "emission"):
        assert stage_complete(products, stage)
    assert os.path.exists(os.path.join(products, "models", "pca_model.npz"))
    for fig in ("fig2_pca_reconstruction.png", "fig3_halpha_excess.png"):
        assert os.path.getsize(os.path.join(products, "figures", fig)) > 10_000


def test_emission_and_broken_flags_against_truth(small_survey, products) -> None:
    m = validate_survey(small_survey, products)["spectral"]
    # ~240 emission spectra with EW < -2 here: measured 0.92-0.97 between runs (float32 BLAS
    # sums differ with thread timing); the issue's >= 0.95 holds on the DR5-size mock (0.958)
    assert m["emission_completeness_ew_lt_-2"] >= 0.90
    assert m["emission_purity"] >= 0.97
    frac = m["emission_fraction_stars"]
    assert abs(frac["recovered"] - frac["truth"]) < 0.015
    # ~20 broken spectra here, half at S/N < 20; 0.94 on the DR5-size mock (closing note)
    assert m["broken_recall"] >= 0.65
    for band, chi2 in m["quality_chi2_clean_median_by_snr"].items():
        # the bases learn from only ~900 spectra here: at S/N > 300 their model error
        # shows (1.05 on the DR5-size mock, closing note)
        upper = 2.0 if band == "300-100000" else 1.5
        assert 0.8 <= chi2 <= upper, (band, chi2)


def test_star_flag_follows_best_visit(small_survey, products) -> None:
    survey = store.open_cube(small_survey)
    prods = open_products(products)
    star = survey["star_id"].values.astype(object).astype(str)
    uniq = survey["uniqflag"].values
    snr = survey["snr_g"].values
    own, star_flag = prods["em_flag"].values, prods["em_flag_star"].values
    best = {}
    for i in np.argsort(-snr):
        best.setdefault(star[i], i)
    assert all(star_flag[i] == own[best[star[i]]] for i in range(0, star.size, 7))
    single = np.isin(star, [s for s in best if np.sum(star == s) == 1][:200])
    assert np.array_equal(own[single], star_flag[single])
    assert (uniq >= 1).all()


def test_rerun_skips_complete_stages(small_survey, products) -> None:
    report = run_pipeline(small_survey, products, ["normalize", "pca", "emission"],
                          scheduler="threads")
    assert all(v["status"].startswith("skipped") for v in report.values())
