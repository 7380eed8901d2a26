"""The distance stage and the Table 1 catalog on a small survey run end to end."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from astropy.table import Table

from obpipe import catalog as catalog_mod
from obpipe.catalog import CATALOG_COLUMNS, QUALITY_BITS, combine_visits
from obpipe.config import DistanceConfig
from obpipe.distance import DISTANCE_FLAG_BITS, distance_modulus_terms
from obpipe.distance import summarize_distance_posteriors as summarize
from obpipe.engine.blockwise import open_products
from obpipe.io import store
from obpipe.pipeline import run_pipeline
from tests.small_run import small_run

# end to end (an end-to-end run builds the catalogs): in make test, not in make test-fast
pytestmark = pytest.mark.slow

TABLE1 = ["specid", "fitsname", "ra", "dec", "uniqflag", "star_id", "snr_g", "rv", "rv_err",
          "MKs", "MKs_err", "MKs_geo", "MKs_geo_err", "dis", "dis_low", "dis_high", "logdis",
          "logdis_err", "ebv", "ebv_err", "snr_dparallax", "binary_flag", "em_flag", "gaia_id",
          "parallax", "parallax_error", "parallax_offset", "pmra", "pmra_error", "pmdec",
          "pmdec_error", "ruwe", "J", "J_err", "H", "H_err", "Ks", "Ks_err", "X", "Y", "Z"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return small_run(tmp_path_factory)


def test_every_table1_column_with_units_one_row_per_spectrum(run: tuple[str, str]) -> None:
    survey_path, products = run
    survey = store.open_cube(survey_path)
    n = int(survey.sizes["spec"])
    cat = pd.read_parquet(Path(products) / "catalog.parquet")
    assert len(cat) == n
    assert list(cat["specid"]) == list(survey["specid"].values)  # same order, none dropped
    assert set(TABLE1) <= set(cat.columns) and "quality_flags" in cat.columns
    for fmt in ("parquet", "fits"):
        tab = Table.read(Path(products) / f"catalog.{fmt}")
        assert len(tab) == n
        assert str(tab["dis"].unit) == "kpc" and str(tab["parallax"].unit) == "mas"
        if fmt == "parquet":
            assert "16th percentile" in tab["dis_low"].description
            # product columns: unit and description from the product schema, not restated
            from obpipe.stages import binary, distance, luminosity, photometry

            schema = {**distance.OUTPUTS, **luminosity.OUTPUTS, **binary.OUTPUTS,
                      **photometry.OUTPUTS}
            for name in ("dis_low", "MKs_err", "binary_flag", "ebv", "X"):
                assert tab[name].description == schema[name].description, name
                assert (str(tab[name].unit or "") == schema[name].units), name
            assert tab["star_id"][0] == cat["star_id"].iloc[0]
    from astropy.io import fits

    header = fits.getheader(Path(products) / "catalog.fits", 1)
    assert header["TTYPE1"] == "specid" and "spectrum id" in header["TCOMM1"]
    # the distance products are the catalog's (no reordering or truncation on the way)
    prods = open_products(products)
    np.testing.assert_array_equal(cat["dis"].to_numpy(), prods["dis"].values)
    finite = np.isfinite(cat["dis"].to_numpy())
    assert finite.mean() > 0.95
    d = cat.loc[finite]
    assert (d["dis_low"] <= d["dis_high"]).all()  # equal if narrower than 0.1 pc
    # the mode lies between the percentiles unless the posterior is very skewed
    inside = (d["dis_low"] <= d["dis"]) & (d["dis"] <= d["dis_high"])
    assert inside[d["logdis_err"] < 0.03].all() and inside.mean() > 0.9
    # X/Y/Z: the heliocentric distance back from the Sun at (-8.1, 0, 0)
    r = np.sqrt((d["X"] + 8.1) ** 2 + d["Y"] ** 2 + d["Z"] ** 2)
    np.testing.assert_allclose(r, d["dis"], rtol=1e-4, atol=2e-4)


def test_distance_stage_equals_the_numpy_function(run: tuple[str, str]) -> None:
    """The blockwise Dask stage gives what the pure function gives on the inputs (to float64
    rounding)."""
    _, products = run
    p = open_products(products)[["parallax_corrected", "parallax_corrected_error", "Ks0",
                                 "Ks0_err", "MKs", "MKs_err", "binary_flag", "dis", "dis_low",
                                 "dis_high", "logdis", "distance_flags"]].load()
    dm0, sig = distance_modulus_terms(p["Ks0"].values, p["Ks0_err"].values, p["MKs"].values,
                                      p["MKs_err"].values)
    from obpipe.distance import parallax_only_binary

    binary = parallax_only_binary(p["binary_flag"].values, p["parallax_corrected"].values,
                                  p["parallax_corrected_error"].values)
    dm0 = np.where(binary, np.nan, dm0)
    # the default population prior, with the hyperparameters the stage fitted and recorded
    from obpipe.distance import block_prior_terms
    from obpipe.stages.distance import fitted_prior

    cfg = DistanceConfig()
    assert cfg.prior == "population"
    hyper = fitted_prior(products)
    assert hyper is not None and hyper.disk_scale_length_kpc > 0
    survey = store.open_cube(run[0])
    pt = block_prior_terms(survey["ra"].values, survey["dec"].values, p["MKs"].values, cfg,
                           hyper)
    ref = summarize(p["parallax_corrected"].values, p["parallax_corrected_error"].values, dm0,
                    sig, cfg, prior_terms=pt)
    # equal to float64 rounding: numpy's vectorised loops may round the last bit
    # differently for a 526-row array than for the stage's blocks (seen: 4e-16 relative)
    for k in ("dis", "dis_low", "dis_high"):
        np.testing.assert_allclose(p[k].values, ref[k], rtol=1e-12, atol=0.0)
        assert np.array_equal(np.isnan(p[k].values), np.isnan(ref[k]))
    flags = p["distance_flags"].values
    assert ((flags[binary] & DISTANCE_FLAG_BITS["binary_parallax_only"]) > 0).all()
    assert ((flags[binary] & DISTANCE_FLAG_BITS["parallax_only"]) > 0).all()


def test_unique_star_view_combines_visits(run: tuple[str, str]) -> None:
    _, products = run
    cat = pd.read_parquet(Path(products) / "catalog.parquet")
    uniq = pd.read_parquet(Path(products) / "catalog_unique.parquet")
    assert uniq["star_id"].is_unique
    assert set(uniq["star_id"]) == set(cat["star_id"])
    assert (uniq["MKs_nvisits"] >= 1).all() and uniq["MKs_nvisits"].max() >= 2
    multi = uniq[uniq["MKs_nvisits"] >= 2].iloc[0]
    visits = cat[cat["star_id"] == multi["star_id"]]
    w = 1.0 / visits["MKs_err"].to_numpy(dtype=float) ** 2
    expect = np.sum(w * visits["MKs"].to_numpy(dtype=float)) / np.sum(w)
    assert multi["MKs"] == pytest.approx(expect, abs=1e-5)
    assert multi["MKs_err"] < visits["MKs_err"].max() + 1e-6


def test_combine_visits_keeps_the_intrinsic_scatter() -> None:
    """12 visits of one star at sigma_int = 0.25 and sigma_s = 0.1 each: the combined
    uncertainty is sqrt(0.25^2 + 0.1^2/12), not the naive 0.27/sqrt(12) (Sec. 8)."""
    err = np.full(12, np.hypot(0.25, 0.1))
    mks = np.linspace(-1.2, -0.6, 12)
    out = combine_visits(np.array(["S1"] * 12 + ["S2"]), np.r_[mks, np.nan],
                         np.r_[err, 0.3], np.r_[np.full(12, 0.25), 0.25])
    assert out.loc["S1", "MKs"] == pytest.approx(mks.mean())
    assert out.loc["S1", "MKs_err"] == pytest.approx(np.sqrt(0.25**2 + 0.1**2 / 12), rel=1e-6)
    assert out.loc["S1", "MKs_nvisits"] == 12
    assert np.isnan(out.loc["S2", "MKs"]) and out.loc["S2", "MKs_nvisits"] == 0


def test_missing_parallax_and_ks_keep_their_rows(run: tuple[str, str], tmp_path: Path) -> None:
    """Blank the parallax of some spectra and the Ks of others (as in a real survey
    without a Gaia or 2MASS match), rerun photometry -> catalog: every spectrum still has
    one row, with NaN / -9 and the quality bits, and the others keep a distance."""
    survey_path, products = run
    survey_copy = tmp_path / "survey.zarr"
    prod_copy = tmp_path / "products"
    shutil.copytree(survey_path, survey_copy)
    shutil.copytree(products, prod_copy)
    grp = zarr.open_group(str(survey_copy), mode="r+", zarr_format=store.ZARR_FORMAT)
    n = grp["parallax"].shape[0]
    no_plx = np.arange(0, n, 7)
    no_ks = np.arange(3, n, 11)
    plx = grp["parallax"][:]
    plx[no_plx] = np.nan
    grp["parallax"][:] = plx
    ks = grp["Ks"][:]
    ks[no_ks] = np.nan
    grp["Ks"][:] = ks
    run_pipeline(str(survey_copy), str(prod_copy), ["photometry", "binary", "distance",
                                                    "catalog"], scheduler="threads",
                 force=True)
    cat = pd.read_parquet(prod_copy / "catalog.parquet")
    assert len(cat) == n and cat["specid"].is_unique
    q = cat["quality_flags"].to_numpy()
    assert ((q[no_plx] & QUALITY_BITS["no_parallax"]) > 0).all()
    assert ((q[no_ks] & QUALITY_BITS["no_ks"]) > 0).all()
    assert np.isnan(cat["MKs_geo"].to_numpy()[no_plx]).all()
    assert (cat["binary_flag_paper"].to_numpy()[no_plx] == -9).all()
    # the combined flag still has the RV scatter and RUWE; a flagged binary without a
    # parallax keeps its spectro-photometric distance (nothing else to use)
    no_plx_bin = no_plx[cat["binary_flag"].to_numpy()[no_plx] == 1]
    usable_mks = np.isfinite(cat["MKs"].to_numpy()) & ((q & QUALITY_BITS["no_ebv"]) == 0)
    keep = [i for i in no_plx_bin if usable_mks[i] and i not in set(no_ks)]
    assert np.isfinite(cat["dis"].to_numpy()[keep]).all()
    # no Ks: no spectro-photometric term, a parallax-only distance
    both = np.setdiff1d(no_ks, no_plx)
    assert ((q[both] & QUALITY_BITS["distance_parallax_only"]) > 0).all()
    assert np.isfinite(cat["dis"].to_numpy()[both]).all()
    # no parallax but Ks and M_Ks: a spectro-photometric distance
    usable = np.isfinite(cat["MKs"].to_numpy()) & ((q & QUALITY_BITS["no_ebv"]) == 0)
    phot = [i for i in no_plx if i not in set(no_ks) and usable[i]]
    assert phot and np.isfinite(cat["dis"].to_numpy()[phot]).all()
    # neither: no distance, flagged, row kept
    neither = np.intersect1d(no_plx, no_ks)
    if neither.size:
        assert np.isnan(cat["dis"].to_numpy()[neither]).all()
        assert ((q[neither] & QUALITY_BITS["no_distance"]) > 0).all()
    assert set(CATALOG_COLUMNS) == set(cat.columns)


def _astropy_whole_table_files(parquet_file: Path, out: Path) -> None:
    """FITS and ECSV written by astropy from the whole table (the reference for the
    block-by-block writer), with the catalog's TCOMMn, EXTNAME, int16 flags and the
    provenance cards made from the Parquet file's metadata."""
    from astropy.io import fits

    from obpipe.engine.blockwise import open_products

    columns = {**catalog_mod.described_columns(CATALOG_COLUMNS,
                                               open_products(str(parquet_file.parent))),
               **catalog_mod._UNIQUE_EXTRA}
    table = Table.read(parquet_file, format="parquet")
    hdu = fits.table_to_hdu(catalog_mod.fits_flag_columns(table))
    for i, name in enumerate(table.colnames, start=1):
        hdu.header[f"TCOMM{i}"] = columns[name].description[:68]
    hdu.header["EXTNAME"] = "CATALOG"
    hdu.header.extend(catalog_mod.fits_provenance_cards(
        catalog_mod.read_catalog_provenance(str(parquet_file))))
    hdu.writeto(out.with_suffix(".fits"))
    table.write(out.with_suffix(".ecsv"), format="ascii.ecsv")


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_streamed_files_equal_whole_table_writes(run: tuple[str, str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 scheduler: str) -> None:
    """catalog.fits / .ecsv and catalog_unique.* written block by block are byte for byte
    what astropy and pyarrow write from the whole tables (here with 100-row Parquet row
    groups for the unique view, so that several are streamed), on either scheduler."""
    import pyarrow.parquet as pq

    survey_path, products = run
    prod_copy = tmp_path / "products"
    shutil.copytree(products, prod_copy)
    for f in prod_copy.glob("catalog*"):
        f.unlink()
    monkeypatch.setattr(catalog_mod, "ROW_GROUP_ROWS", 100)
    res = catalog_mod.write_catalog(survey_path, str(prod_copy),
                                    formats=("parquet", "fits", "ecsv"), scheduler=scheduler)
    assert res["unique_stars"] > 200  # several row groups of the unique view
    for name in ("catalog", "catalog_unique"):
        ref = tmp_path / f"ref_{name}"
        _astropy_whole_table_files(prod_copy / f"{name}.parquet", ref)
        for fmt in ("fits", "ecsv"):
            assert (prod_copy / f"{name}.{fmt}").read_bytes() == \
                ref.with_suffix(f".{fmt}").read_bytes(), f"{name}.{fmt}"
    whole = pq.read_table(prod_copy / "catalog_unique.parquet")
    pq.write_table(whole, tmp_path / "u.parquet", row_group_size=100)
    assert (prod_copy / "catalog_unique.parquet").read_bytes() == \
        (tmp_path / "u.parquet").read_bytes()
    assert pq.ParquetFile(prod_copy / "catalog_unique.parquet").num_row_groups >= 3
    # and the same rows as in the run's own catalog files
    for name in ("catalog", "catalog_unique"):
        assert pq.read_table(prod_copy / f"{name}.parquet").equals(
            pq.read_table(Path(products) / f"{name}.parquet"))


def test_python_bound_stages_leave_threads_for_processes_only_when_it_pays() -> None:
    import dask

    from obpipe.engine.pools import MIN_BLOCKS_FOR_PROCESSES, gil_free_scheduler

    many = MIN_BLOCKS_FOR_PROCESSES
    with dask.config.set(num_workers=2):
        assert gil_free_scheduler("threads", many) == "processes"
        assert gil_free_scheduler("threads", many - 1) == "threads"
        for other in ("processes", "synchronous", None, "tcp://127.0.0.1:8786"):
            assert gil_free_scheduler(other, many) == other
    with dask.config.set(num_workers=1):
        assert gil_free_scheduler("threads", many) == "threads"


def test_fits_flags_read_back_as_in_parquet(run: tuple[str, str]) -> None:
    """binary_flag / em_flag keep -9 (unclassified) in FITS: int8 would be FITS logical."""
    _, products = run
    for name in ("catalog", "catalog_unique"):
        fits_tab = Table.read(Path(products) / f"{name}.fits")
        pq_tab = pd.read_parquet(Path(products) / f"{name}.parquet")
        for col in ("binary_flag", "binary_flag_paper", "em_flag", "em_flag_star"):
            assert fits_tab[col].dtype.kind == "i", col
            np.testing.assert_array_equal(np.asarray(fits_tab[col]), pq_tab[col].to_numpy())
    assert (pq_tab["binary_flag_paper"] == -9).any()  # the case that logical columns lose


def test_binary_flag_from_every_visit_and_the_paper_flag_kept(run: tuple[str, str]) -> None:
    """The catalog's binary_flag is the per-star probability above its threshold, equal on
    every visit of a star; the paper's single-spectrum flag stays as binary_flag_paper."""
    from obpipe.binary import BINARY_PROB_THRESHOLD

    _, products = run
    cat = pd.read_parquet(Path(products) / "catalog.parquet")
    prob = cat["binary_prob"].to_numpy(dtype=float)
    flag = cat["binary_flag"].to_numpy()
    known = np.isfinite(prob)
    assert known.mean() > 0.9
    np.testing.assert_array_equal(flag[known], (prob[known] > BINARY_PROB_THRESHOLD))
    assert (flag[~known] == -9).all()
    assert cat.groupby("star_id")["binary_prob"].nunique(dropna=False).max() == 1
    paper = cat["binary_flag_paper"].to_numpy()
    snr = cat["snr_dparallax"].to_numpy(dtype=float)
    ok = np.isfinite(snr)
    np.testing.assert_array_equal(paper[ok] == 1, snr[ok] > 2.0)


def test_catalog_files_carry_the_run_provenance(run: tuple[str, str], tmp_path: Path) -> None:
    """Issue 17 item 1: the Parquet metadata and the FITS headers of catalog.* and
    catalog_unique.* carry the effective config, the survey's identity and every stage's
    provenance record, equal to run_summary.json's; a mock run used no simulated-survey
    models on a real survey, so no row has the simulated_models bit."""
    import json

    from astropy.io import fits

    from obpipe.pipeline import summarize_run
    from obpipe.provenance import digest

    survey_path, products = run
    prod_copy = tmp_path / "products"  # run_summary.json written here, not into the fixture
    shutil.copytree(products, prod_copy)
    summary = summarize_run(survey_path, str(prod_copy), {})
    on_disk = json.loads((prod_copy / "run_summary.json").read_text())
    assert on_disk["survey_identity"]["id"] == summary["survey_identity"]["id"]
    for name in ("catalog", "catalog_unique"):
        for fmt in ("parquet", "fits"):
            meta = catalog_mod.read_catalog_provenance(str(prod_copy / f"{name}.{fmt}"))
            where = f"{name}.{fmt}"
            assert json.loads(meta["obpipe_config"]) == on_disk["config"], where
            assert meta["obpipe_config_digest"] == digest(on_disk["config"]), where
            assert json.loads(meta["obpipe_survey"]) == on_disk["survey_identity"], where
            assert meta["obpipe_survey_id"] == on_disk["survey_identity"]["id"], where
            records = json.loads(meta["obpipe_provenance"])
            assert set(records) >= {"pca", "luminosity", "distance", "catalog"}, where
            for stage in ("pca", "luminosity", "distance"):
                assert records[stage]["key"] == on_disk["provenance"][stage]["key"], where
            assert json.loads(meta["obpipe_simulated_models"]) == [], where
            assert meta["obpipe_uses_simulated_models"] == "false", where
        header = fits.getheader(prod_copy / f"{name}.fits", 1)
        assert header["OBPIPE USES SIMULATED MODELS"] is False
        assert header["OBPIPE SURVEY ID"] == on_disk["survey_identity"]["id"]
        q = pd.read_parquet(prod_copy / f"{name}.parquet")["quality_flags"].to_numpy()
        assert not (q & QUALITY_BITS["simulated_models"]).any(), name


def test_catalog_rerun_alone_records_its_own_config(run: tuple[str, str],
                                                    tmp_path: Path) -> None:
    """A catalog stage rerun alone under a changed [catalog] section writes that run's
    configuration into the catalogs' metadata, not the previous run's."""
    import json

    from obpipe.config import CatalogConfig, PipelineConfig

    survey_path, products = run
    prod_copy = tmp_path / "products"
    shutil.copytree(products, prod_copy)
    cfg = PipelineConfig(catalog=CatalogConfig(formats=("parquet", "ecsv")))
    run_pipeline(survey_path, str(prod_copy), ["catalog"], scheduler="threads", config=cfg)
    meta = catalog_mod.read_catalog_provenance(str(prod_copy / "catalog.parquet"))
    assert json.loads(meta["obpipe_config"])["catalog"]["formats"] == ["parquet", "ecsv"]
    assert (prod_copy / "catalog.ecsv").exists()
