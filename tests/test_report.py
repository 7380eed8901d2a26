"""``obpipe report``: figure helpers on arrays, and the report of a small run end to end."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from obpipe import report
from obpipe.cli import main
from obpipe.engine.blockwise import open_products, stage_complete
from obpipe.io import store
from obpipe.pipeline import run_pipeline
from tests.small_run import small_run

# end to end (an end-to-end run feeds the report): in make test, not in make test-fast
pytestmark = pytest.mark.slow

PAPER_FIGURES = ("fig2_pca_reconstruction.png", "fig3_halpha_excess.png",
                 "fig4_ebv_comparison.png", "fig5_mks_spec_vs_geo.png",
                 "fig8_noise_model_a.png", "fig8_noise_model_b.png",
                 "fig10_parallax_excess.png", "validation_mks.png")
DISTANCE_FIGURES = ("fig11_distance.png", "fig12_xy_map.png", "validation_distance.png")


# ------------------------------------------------------------------ pure helpers
def test_binned_median_per_bin_and_sparse_bins() -> None:
    x = np.r_[np.full(7, 0.5), np.full(5, 1.5), np.full(2, 2.5), np.nan]
    y = np.r_[np.arange(7.0), 10 + np.arange(5.0), [100.0, 200.0], 1.0]
    centres, med = report.binned_median(x, y, np.array([0.0, 1.0, 2.0, 3.0]), min_count=5)
    np.testing.assert_allclose(centres, [0.5, 1.5, 2.5])
    np.testing.assert_allclose(med[:2], [3.0, 12.0])
    assert np.isnan(med[2])  # 2 points < min_count


def test_uncertainty_conversions() -> None:
    np.testing.assert_allclose(report.relative_distance_uncertainty([0.0, 0.1]),
                               [0.0, 0.1 * np.log(10)])
    rel = report.parallax_relative_uncertainty(np.array([2.0, 0.0, -1.0]),
                                               np.array([0.2, 0.1, 0.1]))
    assert rel[0] == pytest.approx(0.1) and np.isnan(rel[1]) and np.isnan(rel[2])


def test_summary_numbers_counts_and_fractions() -> None:
    cols = {
        "star_id": np.array(["a", "a", "b", "c"], dtype=object),
        "uniqflag": np.array([1, 2, 1, 1]),
        "em_flag": np.array([1, 0, -9, 0]),
        "em_flag_star": np.array([1, 1, 0, 0]),
        "quality_flags": np.array([0, 1, 0, 4]),
        "binary_flag": np.array([1, 0, -9, 0]),
        "dis": np.array([1.0, 6.0, np.nan, 10.0]),
        "logdis_err": np.array([0.1, 0.1, np.nan, 0.2]),
    }
    s = report.summary_numbers(cols, {"stage_pca_complete": True, "stage_x_complete": False})
    assert s["n_spectra"] == 4 and s["n_stars"] == 3 and s["n_unique_visits"] == 3
    assert s["stages_complete"] == ["pca"]
    f = s["fractions"]
    assert f["emission_spectra"] == 0.25 and f["emission_undetermined_spectra"] == 0.25
    assert f["emission_stars"] == pytest.approx(1 / 3)
    assert f["broken_spectra"] == 0.25
    assert f["binary_of_classified"] == pytest.approx(1 / 3)
    assert f["distance_gt_5kpc"] == pytest.approx(2 / 3)
    assert s["median_distance_kpc"] == 6.0
    assert s["median_relative_distance_uncertainty"] == pytest.approx(0.1 * np.log(10))


def _mock_distances(n: int = 3000, seed: int = 1) -> tuple[dict, dict]:
    """Distances with known log-normal errors around a true distance, and X/Y/Z."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.3, 12.0, n)
    err = rng.uniform(0.02, 0.08, n)
    logdis = np.log10(true) + err * rng.normal(size=n)
    lon = rng.uniform(0, 2 * np.pi, n)
    plx = 1.0 / true + 0.03 * rng.normal(size=n)
    cols = {"dis": 10**logdis, "logdis": logdis, "logdis_err": err,
            "binary_flag": (rng.uniform(size=n) < 0.1).astype(np.int8),
            "parallax_corrected": plx, "parallax_corrected_error": np.full(n, 0.03),
            "X": report.SUN_X_KPC + true * np.cos(lon), "Y": true * np.sin(lon)}
    truth = {"distance_kpc_true": true, "is_binary": cols["binary_flag"] == 1,
             "is_broken": np.zeros(n, bool)}
    return cols, truth


def test_distance_truth_metrics_recover_unit_pulls() -> None:
    cols, truth = _mock_distances()
    single = ~truth["is_binary"]
    m = report.distance_truth_metrics(cols["dis"], cols["logdis"], cols["logdis_err"],
                                      truth["distance_kpc_true"], single)
    assert m["logdis_pull_single"]["std"] == pytest.approx(1.0, abs=0.06)
    assert abs(m["logdis_pull_single"]["median"]) < 0.06
    assert abs(m["relative_error_single"]["median"]) < 0.01
    assert m["relative_error_single"]["n"] == int(single.sum())
    # biased distances show up
    biased = report.distance_truth_metrics(cols["dis"] * 1.2, cols["logdis"] + np.log10(1.2),
                                           cols["logdis_err"], truth["distance_kpc_true"],
                                           single)
    assert biased["relative_error_single"]["median"] == pytest.approx(0.2, abs=0.02)
    assert biased["logdis_pull_single"]["median"] > 1.0


def test_distance_figures_from_arrays(tmp_path: Path) -> None:
    cols, truth = _mock_distances()
    for path in (report.write_fig11(cols, str(tmp_path / "f11.png")),
                 report.write_fig12(cols, str(tmp_path / "f12.png")),
                 report.write_validation_distance(cols, truth, str(tmp_path / "vd.png"))):
        assert os.path.getsize(path) > 20_000
    with pytest.raises(report.MissingProducts, match="dis"):
        report.write_fig11({"X": cols["X"]}, str(tmp_path / "no.png"))
    with pytest.raises(report.MissingProducts, match="X, Y"):
        report.write_fig12({"dis": cols["dis"]}, str(tmp_path / "no.png"))
    assert not (tmp_path / "no.png").exists()


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return small_run(tmp_path_factory)


@pytest.fixture(scope="module")
def written(run: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, products = run
    out = tmp_path_factory.mktemp("report")
    html = report.write_report(products, out_dir=str(out))  # survey from the attrs
    assert html == str(out / report.REPORT_HTML)
    return out


def test_report_page_and_figures(run: tuple[str, str], written: Path) -> None:
    survey, products = run
    page = (written / report.REPORT_HTML).read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all(not os.path.isabs(i) for i in images)
    for name in images:  # every image on the page is beside it and is a real PNG
        data = (written / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    for name in PAPER_FIGURES:
        assert name in images, name
    summary = json.loads((written / report.SUMMARY_JSON).read_text())
    skipped = {f["key"]: f["skipped"] for f in summary["figures"] if f["skipped"]}
    if stage_complete(products, "distance"):
        assert not skipped, skipped
        for name in DISTANCE_FIGURES:
            assert name in images
    else:  # distances not there yet: skipped with the reason, on the page too
        assert {"fig11", "fig12", "validation_distance"} <= set(skipped)
        assert "products missing dis" in page
    assert set(skipped) <= {"fig11", "fig12", "validation_distance"}


def test_report_numbers_match_the_products(run: tuple[str, str], written: Path) -> None:
    survey, products = run
    summary = json.loads((written / report.SUMMARY_JSON).read_text())
    s = summary["summary"]
    prods = open_products(products)
    n = store.open_cube(survey).sizes["spec"]
    assert s["n_spectra"] == n
    em = prods["em_flag"].values
    assert s["fractions"]["emission_spectra"] == pytest.approx(float(np.mean(em == 1)))
    flag = prods["binary_flag"].values
    assert s["fractions"]["binary_of_classified"] == pytest.approx(
        float(np.mean(flag[flag != -9] == 1)))
    assert s["median_MKs_err"] == pytest.approx(float(np.nanmedian(prods["MKs_err"].values)))
    # truth exists: the validate metrics are in, and the highlights quote them
    m = summary["metrics"]
    assert {"spectral", "photometry", "luminosity"} <= set(m)
    labels = dict((row[0], row[1]) for row in summary["highlights"])
    assert labels["truth: emission purity"] == pytest.approx(m["spectral"]["emission_purity"])
    if stage_complete(products, "distance"):
        d = m["report_distance"]["relative_error_single"]
        assert d["n"] > 100 and abs(d["median"]) < 0.3
        assert 0 < s["median_relative_distance_uncertainty"] < 1
    if os.path.exists(os.path.join(products, "catalog.parquet")):
        assert s["catalog_rows"] == n  # one row per input spectrum
    page = (written / report.REPORT_HTML).read_text()
    assert f"{n:,}" in page and "truth: emission purity" in page


def test_cli_report_and_missing_stages(run: tuple[str, str], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    survey, _ = run
    # products of the index stage only: the report is written, every figure skipped
    partial = str(tmp_path / "partial")
    run_pipeline(survey, partial, ["index"], scheduler="threads")
    out = tmp_path / "out"
    assert main(["report", partial, "--survey", survey, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / report.REPORT_HTML)
    summary = json.loads((out / report.SUMMARY_JSON).read_text())
    assert all(f["skipped"] and not f["files"] for f in summary["figures"])
    assert summary["summary"]["n_spectra"] == store.open_cube(survey).sizes["spec"]
    assert "skipped" in (out / report.REPORT_HTML).read_text()
    # products that are not those of the survey: a one-line error, exit 2
    assert main(["report", partial, "--survey", str(tmp_path / "nope.zarr"),
                 "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err
