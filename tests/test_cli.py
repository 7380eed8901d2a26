"""The command line: bad arguments, resumable runs, validate/info output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import xarray as xr

from obpipe.cli import main
from obpipe.io import store


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "obpipe.cli", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("args, reason", [
    (["--n-stars", "-5"], "must be positive"),
    (["--n-stars", "0"], "must be positive"),
    (["--chunk-size", "-1"], "must be positive"),
    (["--binary-fraction", "1.5"], "within [0, 1]"),
])
def test_bad_arguments_exit_nonzero_with_reason(tmp_path, args, reason) -> None:
    out = tmp_path / "s.zarr"
    res = _run("simulate", "--out", str(out), *args)
    assert res.returncode != 0
    assert reason in res.stderr
    assert not out.exists()


def test_existing_output_needs_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "exists.zarr"
    out.mkdir()
    assert main(["simulate", "--n-stars", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]


def test_unwritable_output_path(tmp_path, capsys) -> None:
    assert main(["simulate", "--n-stars", "5", "--out", "/proc/obpipe/s.zarr"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["simulate", "--n-stars", "5", "--out",
                 str(tmp_path / "missing-dir" / "s.zarr")]) == 2


def test_interrupted_store_does_not_look_complete(tmp_path, capsys) -> None:
    path = str(tmp_path / "half.zarr")
    store.create_cube(path, 100, 50)  # a producer that died before mark_complete
    assert main(["info", path]) == 2
    assert "not completely written" in capsys.readouterr().err
    assert main(["run", path, "--out", str(tmp_path / "p")]) == 2


def test_simulate_run_validate_info(tmp_path, capsys) -> None:
    survey = str(tmp_path / "s.zarr")
    assert main(["simulate", "--n-stars", "60", "--seed", "2", "--out", survey,
                 "--scheduler", "threads", "--chunk-size", "40"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_stars"] == 60 and summary["n_spectra"] >= 60

    products = str(tmp_path / "products")
    # too few high-S/N spectra for K = 100 PCA components: a clear one-line error
    assert main(["run", survey, "--out", products, "--stages", "index,normalize,pca"]) == 2
    assert "need 200 to fit K = 100" in capsys.readouterr().err
    assert main(["run", survey, "--out", products, "--stages", "index"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["index"]["status"].startswith(("done", "skipped"))
    prod = xr.open_zarr(os.path.join(products, "products.zarr"), consolidated=False)
    assert prod.sizes["spec"] == summary["n_spectra"]
    # resume: a complete stage is skipped
    assert main(["run", survey, "--out", products, "--stages", "index"]) == 0
    assert json.loads(capsys.readouterr().out)["index"]["status"].startswith("skipped")
    assert main(["run", survey, "--out", products, "--stages", "nonsense"]) == 2
    assert "unknown stage" in capsys.readouterr().err

    assert main(["validate", survey, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("snr", "population", "binaries", "parallax", "extinction"):
        assert key in metrics
    assert metrics["population"]["n_stars"] == 60

    assert main(["info", survey]) == 0
    info = capsys.readouterr().out
    assert "spectra:" in info and "chunks:" in info and "truth:" in info
