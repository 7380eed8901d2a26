"""Provenance-keyed stages (issue 17 item 1), with real ``obpipe run`` processes on a copy of
the shared small run: a changed config reruns the stage and everything downstream, a
different survey is never silently skipped, and the config a stage ran with is recorded."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from obpipe.config import SimulationConfig
from obpipe.engine.blockwise import open_products
from obpipe.io.store import open_cube
from obpipe.pipeline import provenance_records
from obpipe.simulate.survey import simulate_survey
from tests.small_run import FAST_LUMINOSITY_TOML, OBPIPE, small_run

FAST = FAST_LUMINOSITY_TOML


def _run(*args: str) -> dict:
    out = subprocess.run([*OBPIPE, "run", *args, "-q", "--json"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_stale_stages_rerun_and_provenance_is_recorded(tmp_path, tmp_path_factory):
    survey, base = small_run(tmp_path_factory)
    products = str(tmp_path / "products")
    shutil.copytree(base, products)

    # a forced distance rerun with another prior records the prior it used ...
    edsd = tmp_path / "edsd.toml"
    edsd.write_text(FAST + '\n[distance]\nprior = "edsd"\n')
    s = _run(survey, "--out", products, "--stages", "distance", "--force", "--config",
             str(edsd))
    assert s["provenance"]["distance"]["config"]["prior"] == "edsd"
    assert json.loads(open_products(products).attrs["obpipe_config"])[
        "distance"]["prior"] == "edsd"
    # ... and the catalog, made from the flat-prior distances, is stale now
    s = _run(survey, "--out", products, "--stages", "catalog", "--config", str(edsd))
    assert s["stages"]["catalog"]["status"] == "done"
    assert "distance" in s["stages"]["catalog"]["rerun_because"]

    # photometry forced with a changed config, then a full run: everything downstream
    # of photometry reruns, nothing upstream does, and the catalog matches the products
    changed = tmp_path / "changed.toml"
    changed.write_text(FAST + '\n[distance]\nprior = "edsd"\n\n[photometry]\nr_v = 4.0\n')
    s = _run(survey, "--out", products, "--stages", "photometry", "--force", "--config",
             str(changed))
    assert s["provenance"]["photometry"]["config"]["r_v"] == 4.0
    s = _run(survey, "--out", products, "--config", str(changed))
    status = {k: v["status"] for k, v in s["stages"].items()}
    for name in ("index", "normalize", "pca", "emission", "photometry"):
        assert status[name] == "skipped (complete)", (name, status)
    for name in ("luminosity", "binary", "distance", "catalog"):
        assert status[name] == "done", (name, status)
    assert "photometry" in s["stages"]["luminosity"]["rerun_because"]
    cat = pd.read_parquet(f"{products}/catalog.parquet")
    prods = open_products(products)
    np.testing.assert_array_equal(cat["ebv"].to_numpy(), prods["ebv"].values)
    np.testing.assert_array_equal(cat["dis"].to_numpy(), prods["dis"].values)
    records = provenance_records(products)
    assert records["luminosity"]["upstream"]["photometry"] == records["photometry"]["key"]
    assert s["config"]["photometry"]["r_v"] == 4.0

    # a different survey pointed at these products is not skipped
    other = str(tmp_path / "other.zarr")
    simulate_survey(other, SimulationConfig(n_stars=40, seed=8, chunk_size=30),
                    scheduler="synchronous")
    s = _run(other, "--out", products, "--stages", "index,normalize")
    assert s["stages"]["index"]["status"] == "done"
    assert "survey changed" in s["stages"]["index"]["rerun_because"]
    assert s["stages"]["normalize"]["status"] == "done"
    assert s["n_spectra"] == int(open_cube(other).sizes["spec"])
    assert s["survey_identity"]["path"] == other


def test_resume_under_another_config_reruns_the_whole_stage(tmp_path):
    """A killed stage resumes its missing blocks under the same config; under another one
    it is rerun from scratch (old and new blocks are never mixed)."""
    import dataclasses

    import zarr

    from obpipe.config import PipelineConfig
    from obpipe.engine.blockwise import products_path
    from obpipe.pipeline import run_pipeline

    survey = str(tmp_path / "tiny.zarr")
    simulate_survey(survey, SimulationConfig(n_stars=30, seed=3, chunk_size=20),
                    scheduler="synchronous")
    products = str(tmp_path / "products")
    run_pipeline(survey, products, ["index", "normalize"], scheduler="synchronous")
    n_blocks = zarr.open_group(products_path(products))["normalize_blocks_done"].shape[0]
    assert n_blocks > 1

    def kill_after_first_block() -> None:  # what a SIGKILL during the stage leaves
        grp = zarr.open_group(products_path(products), mode="r+")
        grp["normalize_blocks_done"][1:] = False
        rec = dict(grp.attrs["provenance_normalize"], status="running")
        grp.attrs.update({"provenance_normalize": rec, "stage_normalize_complete": False})

    kill_after_first_block()
    rep = run_pipeline(survey, products, ["normalize"], scheduler="synchronous")
    assert rep["normalize"]["blocks_written"] == n_blocks - 1
    assert "rerun_because" not in rep["normalize"]

    kill_after_first_block()
    cfg = PipelineConfig()
    cfg = dataclasses.replace(cfg, spectral=dataclasses.replace(cfg.spectral,
                                                                continuum_kernel_aa=60.0))
    rep = run_pipeline(survey, products, ["normalize"], scheduler="synchronous", config=cfg)
    assert rep["normalize"]["blocks_written"] == n_blocks
    assert "continuum_kernel_aa" in rep["normalize"]["rerun_because"]
    assert provenance_records(products)["normalize"]["config"]["continuum_kernel_aa"] == 60.0
