"""The blockwise stage wrapper: one row per spectrum, region writes, resume after a kill."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import zarr

from obpipe.config import SimulationConfig
from obpipe.engine.blockwise import (
    Output,
    open_products,
    products_path,
    run_blockwise_stage,
    stage_complete,
)
from obpipe.io import store
from obpipe.pipeline import run_pipeline
from obpipe.simulate.survey import simulate_survey

OUTPUTS = {
    "flux_median": Output("float32", "1e-17 erg / (s cm2 Angstrom)", "median flux"),
    "n_good": Output("int32", "", "pixels with ivar > 0"),
    "profile": Output("float32", "", "first 5 pixels", extra_dims=(("first", 5),)),
}


def _block_fn(inputs, fail_at_specid=None):
    if fail_at_specid is not None and fail_at_specid in inputs["specid"]:
        raise RuntimeError("worker killed")
    flux, ivar = inputs["flux"], inputs["ivar"]
    return {
        "flux_median": np.nanmedian(np.where(ivar > 0, flux, np.nan), axis=1),
        "n_good": (ivar > 0).sum(axis=1),
        "profile": flux[:, :5],
    }


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("prod") / "s.zarr")
    simulate_survey(path, SimulationConfig(n_stars=120, seed=4, chunk_size=50),
                    scheduler="threads")
    return path


def _run(survey, products, fn, scheduler="threads"):
    return run_blockwise_stage(survey, products, "toy", fn, OUTPUTS,
                               survey_vars=("specid", "flux", "ivar"), scheduler=scheduler)


def test_blockwise_stage_writes_one_row_per_spectrum(survey, tmp_path) -> None:
    products = str(tmp_path / "p")
    run_pipeline(survey, products, ["index"])
    report = _run(survey, products, _block_fn)
    assert report["blocks_written"] > 1
    ds = open_products(products).load()
    n = ds.sizes["spec"]
    assert report["spectra_written"] == n
    assert np.all(np.isfinite(ds["flux_median"].values))
    assert ds["profile"].shape == (n, 5)
    assert stage_complete(products, "toy")
    # adding a stage's variables keeps the earlier stages' marks: a rerun of the pipeline
    # skips 'index' (which would otherwise rewrite the store and wipe every product)
    assert open_products(products).attrs.get("stage_index_complete") is True
    again = run_pipeline(survey, products, ["index"])
    assert again["index"]["status"].startswith("skipped")
    assert "flux_median" in open_products(products)
    # a complete stage writes nothing the second time
    assert _run(survey, products, _block_fn)["blocks_written"] == 0
    # spectra-sized arrays (extra dimensions) use the spectra codec (Blosc LZ4 + shuffle),
    # per-spectrum columns Zarr's default; exactly the values
    grp = zarr.open_group(products_path(products), mode="r")
    codecs = {k: [c.to_dict()["name"] for c in grp[k].metadata.codecs]
              for k in ("profile", "n_good")}
    spectra = [c.to_dict()["name"] for c in store.spectra_compressors()]
    assert spectra == ["blosc"] and set(spectra) <= set(codecs["profile"])
    assert not set(spectra) & set(codecs["n_good"])
    assert np.array_equal(open_products(products)["profile"].values,
                          store.open_cube(survey)["flux"].values[:, :5], equal_nan=True)


def test_resume_after_a_failed_block_gives_identical_products(survey, tmp_path) -> None:
    ref = str(tmp_path / "ref")
    run_pipeline(survey, ref, ["index"])
    _run(survey, ref, _block_fn)
    expected = open_products(ref).load()

    products = str(tmp_path / "killed")
    run_pipeline(survey, products, ["index"])
    specids = expected["specid"].values
    with pytest.raises(RuntimeError, match="worker killed"):
        _run(survey, products, functools.partial(_block_fn, fail_at_specid=specids[120]),
             scheduler="synchronous")
    assert not stage_complete(products, "toy")
    report = _run(survey, products, _block_fn)
    assert 0 < report["blocks_written"] < len(range(0, len(specids), 50))
    got = open_products(products).load()
    for name in OUTPUTS:
        assert np.array_equal(got[name].values, expected[name].values, equal_nan=True)


def test_block_reads_follow_the_store_through_the_opened_dataset_cache(survey, tmp_path) -> None:
    """read_block reuses an opened store within a stage, yet sees a later stage's new
    variables, data written after the first read, and a store rewritten at the same path."""
    import shutil

    from obpipe.engine.blockwise import products_path, read_block, write_products_block

    products = str(tmp_path / "p")
    run_pipeline(survey, products, ["index"])
    _run(survey, products, _block_fn)
    first = read_block(survey, products, 0, 50, ("specid",), ("flux_median",))
    assert np.all(np.isfinite(first["flux_median"]))
    write_products_block(products, 0, {"flux_median": np.full(50, -1.0, np.float32)})
    assert np.all(read_block(survey, products, 0, 50, (), ("flux_median",))["flux_median"]
                  == -1.0)
    run_blockwise_stage(survey, products, "toy2", _double_median,
                        {"twice": Output("float32")}, product_vars=("flux_median",),
                        scheduler="threads")
    twice = read_block(survey, products, 0, 50, (), ("twice",))["twice"]
    np.testing.assert_array_equal(twice, np.full(50, -2.0, np.float32))
    shutil.rmtree(products_path(products))
    run_pipeline(survey, products, ["index"], force=True)
    assert "twice" not in open_products(products)
    with pytest.raises(KeyError):
        read_block(survey, products, 0, 50, (), ("twice",))


def _double_median(inputs):
    return {"twice": 2 * inputs["flux_median"]}


def test_prepare_hooks_run_once_and_only_for_stages_that_will_run(tmp_path) -> None:
    """run_pipeline's prepare step: each distinct hook once, skipped for complete stages
    (unless forced), and a failing hook only logged (the stage starts what it needs)."""
    from obpipe.pipeline import RunContext, Stage, _prepare_later_stages

    calls: list[str] = []

    def hook(ctx: RunContext) -> None:
        calls.append("shared")

    def other(ctx: RunContext) -> None:
        calls.append("other")

    def broken(ctx: RunContext) -> None:
        raise RuntimeError("no pool today")

    def run(ctx: RunContext) -> dict:
        return {}

    stages = [Stage("z", "", run, lambda ctx: True, hook),    # complete: its twin still runs
              Stage("a", "", run, lambda ctx: False, hook),
              Stage("b", "", run, lambda ctx: False, hook),   # same hook: not again
              Stage("c", "", run, lambda ctx: True, other),   # complete: not prepared
              Stage("d", "", run, lambda ctx: False, broken),
              Stage("e", "", run, lambda ctx: False)]
    ctx = RunContext(str(tmp_path / "s.zarr"), str(tmp_path / "p"))
    _prepare_later_stages(ctx, stages, force=False)
    assert calls == ["shared"]
    _prepare_later_stages(ctx, stages, force=True)
    assert calls == ["shared", "shared", "other"]  # forced: each distinct hook once
