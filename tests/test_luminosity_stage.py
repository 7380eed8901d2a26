"""Stages ``luminosity`` and ``binary`` end to end on the small mock survey."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from obpipe.io import store
from obpipe.luminosity import stage as lum
from obpipe.pipeline import RunContext, run_pipeline
from obpipe.products import open_products


@pytest.fixture(scope="module")
def products(small_survey, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("luminosity") / "products")
    run_pipeline(small_survey, out, ["index", "normalize", "pca", "emission", "photometry"],
                 scheduler="threads")
    ctx = RunContext(small_survey, out, scheduler="threads",
                     options={"luminosity": {"noise_n_steps": 1000,
                                             "network": {"max_epochs": 250}}})
    lum.run_luminosity(ctx)
    lum.run_binary(ctx)
    return out


def test_products_and_model_files(small_survey, products) -> None:
    survey = store.open_cube(small_survey)
    prods = open_products(products)
    n = survey.sizes["spec"]
    for name in ("MKs", "MKs_err", "MKs_model", "MKs_flag", "luminosity_set", "parallax_spec",
                 "parallax_spec_err", "snr_dparallax", "binary_flag"):
        assert prods[name].sizes["spec"] == n, name
    em = prods["em_flag"].values
    model = prods["MKs_model"].values
    ok = np.isfinite(prods["MKs"].values)
    assert ok.mean() > 0.97
    assert np.all(model[ok & (em == 0)] == 0) and np.all(model[ok & (em == 1)] == 1)
    assert np.isin(prods["binary_flag"].values, [-9, 0, 1]).all()
    err = prods["MKs_err"].values[ok]
    assert np.all(err > 0.05) and np.all(np.isfinite(err))
    for m in ("a", "b"):
        path = os.path.join(products, "models", lum.NETWORK_FILES[m])
        assert "meta_json" in torch.load(path, weights_only=True)
        assert os.path.exists(os.path.join(products, "models", lum.NOISE_FILES[m]))
    for fig in ("fig8_noise_model_a.png", "fig5_mks_spec_vs_geo.png",
                "fig10_parallax_excess.png"):
        assert os.path.getsize(os.path.join(products, "figures", fig)) > 10_000
    ctx = RunContext(small_survey, products)
    assert lum.is_complete(ctx) and lum.is_binary_complete(ctx)


def test_mks_precision_against_truth(small_survey, products) -> None:
    survey = store.open_cube(small_survey)
    prods = open_products(products).load()
    truth = store.open_truth(small_survey).load()
    m = lum.luminosity_metrics(survey, prods, truth)
    hi = m["mks_vs_truth"]["single_nonemission_ob_snr_gt_50"]
    pop = m["mks_vs_truth"]["population_scatter_single_nonemission_ob"]
    # ~500 training spectra only: far from the DR5-size numbers, but clearly informative
    assert hi["n"] > 100
    assert hi["robust_scatter"] < 0.5 * pop, (hi, pop)
    assert abs(hi["median"]) < 0.25
    noise = m["noise_model"]["a"]
    assert 0.05 < noise["sigma_int"] < 1.0
    assert 0.0 < noise["sigma_s100"] < 1.0
    b = m["binary"]
    assert b["false_positive_rate_singles"] < 0.10
    # the flag carries information: equal-mass binaries are flagged more often than singles
    # (the issue's >= 80 % needs sigma_int ~ 0.25 mag; see the closing note for the gap)
    comp = b["completeness_by_q"]["q_ge_0.85"]["plx_snr_gt_10"]["completeness"]
    assert comp > 2 * b["false_positive_rate_singles"], (comp, b)


def test_rerun_skips_training(small_survey, products) -> None:
    path = os.path.join(products, "models", lum.NETWORK_FILES["a"])
    before = os.path.getmtime(path)
    mks = open_products(products)["MKs"].values
    ctx = RunContext(small_survey, products, scheduler="synchronous", force=False)
    grp_out = lum.run_luminosity(ctx)
    assert grp_out["blocks_written"] == 0
    assert os.path.getmtime(path) == before
    np.testing.assert_array_equal(open_products(products)["MKs"].values, mks)
