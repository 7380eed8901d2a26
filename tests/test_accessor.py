"""``obpipe.open_run`` and the ``ds.obpipe`` accessor on a small run (real Zarr, real Dask)."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import matplotlib
import numpy as np
import pytest
import xarray as xr

matplotlib.use("Agg")

import obpipe  # noqa: E402  (registers ds.obpipe)
from obpipe.config import SimulationConfig  # noqa: E402
from obpipe.engine.blockwise import open_products  # noqa: E402
from obpipe.io import store  # noqa: E402
from obpipe.pipeline import run_pipeline  # noqa: E402
from obpipe.simulate.survey import simulate_survey  # noqa: E402
from obpipe.spectra.grid import wavelength_grid  # noqa: E402
from tests.small_run import small_run  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    return small_run(tmp_path_factory)


@pytest.fixture(scope="module")
def ds(run: tuple[str, str]) -> xr.Dataset:
    return obpipe.open_run(*run)


def test_open_run_is_lazy_and_aligned(run: tuple[str, str], ds: xr.Dataset) -> None:
    survey, products = run
    cube = store.open_cube(survey)
    prods = open_products(products)
    assert ds.sizes["spec"] == cube.sizes["spec"] == prods.sizes["spec"]
    for name in ("flux", "ivar", "norm_flux", "recon_flux", "MKs", "ebv", "em_flag"):
        assert isinstance(ds[name].data, da.Array), name  # nothing loaded
    assert not any(name.endswith("_blocks_done") for name in ds.variables)
    assert "specid" in ds.xindexes and "star_id" in ds.xindexes
    assert ds.attrs["survey"] == survey and ds.attrs["products"] == products
    assert ds["MKs"].attrs["stage"] == "luminosity" and ds["flux"].attrs["units"]
    # the product of row i is the survey's row i
    i = 7
    sid = int(cube["specid"].values[i])
    row = ds.sel(specid=sid)
    assert float(row["snr_g"]) == float(cube["snr_g"].values[i])
    np.testing.assert_array_equal(row["norm_flux"].values, prods["norm_flux"].values[i])


def test_spectrum_matches_the_stores(run: tuple[str, str], ds: xr.Dataset) -> None:
    survey, products = run
    cube = store.open_cube(survey)
    prods = open_products(products)
    i = int(np.argmax(cube["snr_g"].values))
    sid = int(cube["specid"].values[i])
    sp = ds.obpipe.spectrum(sid)
    assert set(sp.data_vars) == {"flux", "ivar", "mask", "norm_flux", "norm_ivar", "recon_flux"}
    assert sp.sizes == {"wave": 3909}
    np.testing.assert_allclose(sp["wave"].values, wavelength_grid())
    np.testing.assert_array_equal(sp["flux"].values, cube["flux"].values[i])
    np.testing.assert_array_equal(sp["mask"].values, cube["mask"].values[i])
    np.testing.assert_array_equal(sp["recon_flux"].values, prods["recon_flux"].values[i])
    assert int(sp["specid"]) == sid and str(sp["star_id"].values) == str(cube["star_id"].values[i])
    assert float(sp["MKs"]) == pytest.approx(float(prods["MKs"].values[i]), nan_ok=True)
    lazy = ds.obpipe.spectrum(sid, load=False)
    assert isinstance(lazy["flux"].data, da.Array)
    with pytest.raises(KeyError, match="specid not found"):
        ds.obpipe.spectrum(-1)


def test_star_returns_every_visit_best_first(run: tuple[str, str], ds: xr.Dataset) -> None:
    survey, _ = run
    ids = store.open_cube(survey)["star_id"].values.astype(object).astype(str)
    counts = ds.obpipe.visits()
    star_id = counts.index[0]
    assert counts.iloc[0] == np.sum(ids == star_id) > 1
    visits = ds.obpipe.star(star_id)
    assert visits.sizes["spec"] == counts.iloc[0]
    assert list(visits["uniqflag"].values) == sorted(visits["uniqflag"].values)
    assert visits["uniqflag"].values[0] == 1
    assert set(visits["specid"].values) == set(ds["specid"].values[ids == star_id])
    assert isinstance(visits["flux"].data, da.Array)
    # the index works the same
    assert ds.sel(star_id=star_id).sizes["spec"] == counts.iloc[0]
    with pytest.raises(KeyError, match="star_id not found"):
        ds.obpipe.star("S000000+000000x")


def test_plot_spectrum_draws_observed_and_reconstruction(ds: xr.Dataset) -> None:
    sid = int(ds["specid"].values[3])
    ax = ds.obpipe.plot_spectrum(sid)
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["observed", "PCA reconstruction"]
    sp = ds.obpipe.spectrum(sid)
    shown = np.where(sp["norm_ivar"].values > 0, sp["norm_flux"].values, np.nan)
    np.testing.assert_array_equal(lines[0].get_ydata(), shown)
    assert str(sid) in ax.get_title()
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    ax2 = ds.obpipe.plot_spectrum(sid, ax=axes[1], normalised=False)
    assert ax2 is axes[1] and len(ax2.get_lines()) == 1  # observed flux, no reconstruction
    plt.close("all")


def test_table_reads_columns(run: tuple[str, str], ds: xr.Dataset) -> None:
    survey, products = run
    t = ds.obpipe.table(["snr_g", "MKs", "star_id"])
    assert list(t.columns) == ["snr_g", "MKs", "star_id"]
    np.testing.assert_array_equal(t.index.values, store.open_cube(survey)["specid"].values)
    np.testing.assert_array_equal(t["MKs"].values, open_products(products)["MKs"].values)
    assert t["star_id"].map(type).eq(str).all()
    full = ds.obpipe.table()
    assert {"ebv", "em_flag", "ra", "parallax"} <= set(full.columns)
    assert "flux" not in full.columns and len(full) == ds.sizes["spec"]
    with pytest.raises(KeyError, match="norm_flux"):
        ds.obpipe.table(["norm_flux"])


def test_survey_alone_and_truth(run: tuple[str, str]) -> None:
    survey, products = run
    cube = obpipe.open_run(survey)
    sid = int(cube["specid"].values[0])
    assert set(cube.obpipe.spectrum(sid).data_vars) == {"flux", "ivar", "mask"}
    ax = cube.obpipe.plot_spectrum(sid)  # observed flux: no products
    assert len(ax.get_lines()) == 1
    # the accessor on a plain xr.open_zarr dataset too (no index: positions from values)
    plain = store.open_cube(survey)
    np.testing.assert_array_equal(plain.obpipe.spectrum(sid)["flux"].values,
                                  cube.obpipe.spectrum(sid)["flux"].values)
    with_truth = obpipe.open_run(survey, products, truth=True)
    truth = store.open_truth(survey)
    np.testing.assert_array_equal(with_truth["truth_MKs_true"].values, truth["MKs_true"].values)


def test_products_of_another_survey_are_refused(run: tuple[str, str], tmp_path: Path) -> None:
    survey, products = run
    other = str(tmp_path / "other.zarr")
    simulate_survey(other, SimulationConfig(n_stars=20, seed=9, chunk_size=50),
                    scheduler="threads")
    run_pipeline(other, str(tmp_path / "p"), ["index"], scheduler="threads")
    with pytest.raises(ValueError, match="spectra|specid"):
        obpipe.open_run(survey, str(tmp_path / "p"))
