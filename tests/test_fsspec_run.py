"""The whole pipeline with the survey and the products at an fsspec URL (issue 8, item 3).

``obpipe run memory://.../survey.zarr --out memory://.../products`` (every stage, the
PCA fit and the network training included) and ``obpipe report memory://.../products``:
the model files (PCA basis, networks, noise-model posteriors), the figures, the catalogs
(Parquet, FITS, unique-star view), the run summary and the report are written through
fsspec, nothing lands in the working directory, and everything equals a run of the same
survey at a local path (the pipeline is deterministic: the distributed tests compare
products bitwise too). ``memory://`` stands in for ``s3://`` (the DaskJob of
``deploy/``). The local run is then resumed and read back through ``file://`` URLs
(``test_deploy.py`` writes the first stages at ``file://``).

A tiny survey (150 stars, ~250 spectra in 3 chunks) and a short training keep it fast:
``spectral.train_min_snr`` is lowered so that the PCA has its 200 training spectra.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import dask
import fsspec
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.table import Table

from obpipe.cli import main
from obpipe.config import SimulationConfig
from obpipe.engine.blockwise import open_products
from obpipe.luminosity.network import MKsNetwork
from obpipe.luminosity.noise_model import NoiseModelResult
from obpipe.simulate.survey import simulate_survey
from obpipe.spectra.bases import MODEL_FILE
from obpipe.spectra.pca import PCAModel
from obpipe.stages.luminosity import MODEL_DIR, NETWORK_FILES, NOISE_FILES

# end to end (a whole run at a memory:// URL): in make test, not in make test-fast
pytestmark = pytest.mark.slow

SURVEY = SimulationConfig(n_stars=150, seed=5, chunk_size=100)
CONFIG = """
[spectral]
train_min_snr = 15.0
max_train = 200
[luminosity]
n_clean_iterations = 0
noise_n_steps = 50
[luminosity.network]
max_epochs = 3
patience = 1
n_members = 1
"""
CATALOGS = ("catalog.parquet", "catalog.fits", "catalog_unique.parquet",
            "catalog_unique.fits")
FIGURES = ("fig2_pca_reconstruction.png", "fig3_halpha_excess.png",
           "fig5_mks_spec_vs_geo.png", "fig8_noise_model_a.png", "fig8_noise_model_b.png",
           "fig10_parallax_excess.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read(url_or_path: str) -> bytes:
    with fsspec.open(url_or_path, "rb") as fh:
        return fh.read()


def _run(capsys: pytest.CaptureFixture[str], survey: str, products: str, config: str
         ) -> dict:
    assert main(["run", survey, "--out", products, "--config", config,
                 "--scheduler", "threads", "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def _fits_header(raw: bytes):
    from astropy.io import fits

    with fits.open(io.BytesIO(raw)) as hdul:
        return hdul[1].header.copy()


def _fits_without_provenance(raw: bytes) -> tuple[bytes, list]:
    """A catalog FITS file's table bytes and its header cards other than the run's
    provenance (``OBPIPE ...`` and COMMENT cards: survey paths and stage times differ
    between two runs of the same survey)."""
    from astropy.io import fits

    with fits.open(io.BytesIO(raw)) as hdul:
        start = hdul.fileinfo(1)["datLoc"]
        cards = [(c.keyword, c.value) for c in hdul[1].header.cards
                 if not c.keyword.startswith("OBPIPE") and c.keyword != "COMMENT"]
    return raw[start:], cards


def test_full_run_and_report_at_a_memory_url(tmp_path, monkeypatch, capsys) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = tmp_path / "obpipe.toml"
    config.write_text(CONFIG)
    local_survey, local_products = str(tmp_path / "survey.zarr"), str(tmp_path / "products")
    simulate_survey(local_survey, SURVEY, scheduler="threads")
    mem = fsspec.filesystem("memory")
    base = f"memory://obpipe-run-{uuid.uuid4().hex}"
    survey, products = f"{base}/survey.zarr", f"{base}/products"
    try:
        # the same survey, byte for byte, in the object store
        mem.put(local_survey, survey.split("://", 1)[1], recursive=True)
        cube = xr.open_zarr(survey, consolidated=False)
        n = int(cube.sizes["spec"])
        assert n > SURVEY.n_stars  # repeat visits
        specid = cube["specid"].values

        summary = _run(capsys, survey, products, str(config))
        assert all(s["status"] == "done" for s in summary["stages"].values()), summary
        assert summary["n_spectra"] == n
        files = summary["files"]
        assert files["summary"] == f"{products}/run_summary.json"
        assert json.loads(_read(files["summary"]))["n_spectra"] == n
        assert {os.path.basename(p) for p in files["catalogs"]} >= set(CATALOGS)
        assert {os.path.basename(p) for p in files["figures"]} >= set(FIGURES)
        assert all(p.startswith("memory://") for k in ("catalogs", "models", "figures")
                   for p in files[k])

        # a rerun finds every stage complete through the URL (resume), training included
        again = _run(capsys, survey, products, str(config))
        assert {s["status"] for s in again["stages"].values()} == {"skipped (complete)"}

        assert main(["report", products]) == 0
        assert capsys.readouterr().out.strip() == f"{products}/report/report.html"
        report = json.loads(_read(f"{products}/report/report_summary.json"))
        assert report["summary"]["catalog_rows"] == n
        drawn = [f for f in report["figures"] if f["files"]]
        assert not [f for f in report["figures"] if f["skipped"]], report["figures"]
        assert len(drawn) >= 9  # Figs. 2-5, 8, 10-12 and the two validations (truth)
        page = _read(f"{products}/report/report.html").decode()
        for fig in drawn:
            for name in fig["files"]:
                assert f'src="{name}"' in page
                assert _read(f"{products}/report/{name}").startswith(PNG_MAGIC), name
        for name in FIGURES:
            assert _read(f"{products}/figures/{name}").startswith(PNG_MAGIC), name

        # the reference: the same survey and configuration at local paths
        local = _run(capsys, local_survey, local_products, str(config))
        assert all(s["status"] == "done" for s in local["stages"].values())

        # the local run through file:// URLs: a rerun finds every stage complete (model
        # files and catalogs looked up through fsspec's local filesystem)
        local_uri = Path(local_products).as_uri()
        again = _run(capsys, Path(local_survey).as_uri(), local_uri, str(config))
        assert {s["status"] for s in again["stages"].values()} == {"skipped (complete)"}
        assert again["files"]["catalogs"] == [f"file://{p}" for p in local["files"]["catalogs"]]

        # the catalog through fsspec: one row per input spectrum, in the survey's order,
        # equal to the local run's (Parquet tables exactly, FITS files byte for byte)
        with fsspec.open(f"{products}/catalog.parquet", "rb") as fh:
            cat = pd.read_parquet(fh)
        assert len(cat) == n
        np.testing.assert_array_equal(cat["specid"].to_numpy(), specid)
        for name in CATALOGS:
            got = _read(f"{products}/{name}")
            want = _read(f"{local_uri}/{name}")
            if name.endswith(".parquet"):
                pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(got)),
                                              pd.read_parquet(io.BytesIO(want)),
                                              check_exact=True)
            else:  # the rows and the header, but the run's provenance (paths, times)
                assert _fits_without_provenance(got) == _fits_without_provenance(want), name
                assert _fits_header(got)["OBPIPE CONFIG DIGEST"] == \
                    _fits_header(want)["OBPIPE CONFIG DIGEST"], name
        uniq = Table.read(io.BytesIO(_read(f"{products}/catalog_unique.fits")))
        assert len(uniq) == len(np.unique(cube["star_id"].values)) == SURVEY.n_stars

        # every product variable equals the local run's (NaN == NaN)
        got_p, want_p = open_products(products), open_products(local_products)
        assert set(got_p.data_vars) == set(want_p.data_vars)
        differ = [v for v in want_p.data_vars if not np.array_equal(
            got_p[v].values, want_p[v].values,
            equal_nan=want_p[v].dtype.kind in "fc")]
        assert not differ, differ

        # the model files load back from the URL and equal the local ones
        pca_url = PCAModel.load(f"{products}/{MODEL_FILE}")
        pca_loc = PCAModel.load(os.path.join(local_products, MODEL_FILE))
        for basis in ("full", "clean"):
            np.testing.assert_array_equal(getattr(pca_url, basis).components,
                                          getattr(pca_loc, basis).components)
        x = np.nan_to_num(got_p["recon_flux"].values[:20])
        for m, name in NETWORK_FILES.items():
            net = MKsNetwork.load(f"{products}/{MODEL_DIR}/{name}")
            ref = MKsNetwork.load(f"{local_uri}/{MODEL_DIR}/{name}")
            np.testing.assert_array_equal(net.predict(x), ref.predict(x), err_msg=m)
        for m, name in NOISE_FILES.items():
            noise = NoiseModelResult.load(f"{products}/{MODEL_DIR}/{name}")
            ref_noise = NoiseModelResult.load(os.path.join(local_products, MODEL_DIR, name))
            np.testing.assert_array_equal(noise.samples, ref_noise.samples, err_msg=m)
            assert noise.samples.shape[1] == 4  # eps, delta, sigma_int, sigma_s100

        # nothing was written beside the URL (before, every model file and figure went to
        # ./memory:/... in the working directory)
        assert os.listdir(cwd) == []
    finally:
        mem.rm(base.split("://", 1)[1], recursive=True)


def test_memory_url_keeps_threads_for_python_bound_stages() -> None:
    """distance / catalog switch "threads" to "processes" from 8 blocks; not for a
    ``memory://`` store, which worker processes would find empty."""
    from obpipe.engine.pools import MIN_BLOCKS_FOR_PROCESSES, gil_free_scheduler

    many = MIN_BLOCKS_FOR_PROCESSES
    with dask.config.set(num_workers=2):
        assert gil_free_scheduler("threads", many, ("/data/s.zarr", "/data/p")) == "processes"
        assert gil_free_scheduler("threads", many, ("s3://b/s.zarr", "s3://b/p")) == "processes"
        assert gil_free_scheduler("threads", many, ("/data/s.zarr", "memory://b/p")) == "threads"
        assert gil_free_scheduler("threads", many, ("memory://b/s.zarr", "/data/p")) == "threads"
