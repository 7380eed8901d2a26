"""The command line: bad arguments, resumable runs, validate/info output."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import xarray as xr

from obpipe.cli import main
from obpipe.io import store
from tests.small_run import OBPIPE


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*OBPIPE, *args], capture_output=True,
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
    assert main(["run", survey, "--out", products, "--stages", "index", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["stages"]
    assert report["index"]["status"].startswith(("done", "skipped"))
    prod = xr.open_zarr(os.path.join(products, "products.zarr"), consolidated=False)
    assert prod.sizes["spec"] == summary["n_spectra"]
    # resume: a complete stage is skipped
    assert main(["run", survey, "--out", products, "--stages", "index", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"]["index"]["status"].startswith(
        "skipped")
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


# ------------------------------------------------------------ run / config / progress
@pytest.fixture(scope="module")
def tiny_survey(tmp_path_factory: pytest.TempPathFactory) -> str:
    from obpipe.config import SimulationConfig
    from obpipe.simulate.survey import simulate_survey

    path = str(tmp_path_factory.mktemp("cli") / "tiny.zarr")
    simulate_survey(path, SimulationConfig(n_stars=60, seed=2, chunk_size=40),
                    scheduler="threads")
    return path


def test_config_show_and_config_file(tmp_path, capsys) -> None:
    import tomllib

    from obpipe.config import PipelineConfig, config_from_dict

    assert main(["config", "--show"]) == 0
    shown = capsys.readouterr().out
    assert config_from_dict(tomllib.loads(shown)) == PipelineConfig()
    assert "[luminosity.network]" in shown and "# " in shown
    path = tmp_path / "my.toml"
    path.write_text('[distance]\nprior = "edsd"\n[luminosity.network]\nmax_epochs = 5\n')
    assert main(["config", "--show", "--config", str(path)]) == 0
    merged = tomllib.loads(capsys.readouterr().out)
    assert merged["distance"]["prior"] == "edsd"
    assert merged["luminosity"]["network"]["max_epochs"] == 5
    default_patience = PipelineConfig().luminosity.network.patience
    assert merged["luminosity"]["network"]["patience"] == default_patience
    path.write_text("[luminosity.network]\nmax_epochs = -5\n")
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "luminosity.network.max_epochs" in err[0]


def test_run_summary_and_scheduler_choices(tiny_survey, tmp_path, capsys) -> None:
    products = str(tmp_path / "p")
    assert main(["run", tiny_survey, "--out", products, "--stages", "index,normalize",
                 "--scheduler", "synchronous"]) == 0
    text = capsys.readouterr().out
    assert "normalize" in text and "done" in text
    assert os.path.join(products, "products.zarr") in text
    with open(os.path.join(products, "run_summary.json")) as fh:
        summary = json.load(fh)
    n_blocks = -(-summary["n_spectra"] // 40)
    assert summary["stages"]["normalize"]["blocks_written"] == n_blocks
    assert summary["stages"]["normalize"]["seconds"] > 0
    assert summary["n_stars"] == 60 and summary["files"]["summary"].endswith("run_summary.json")
    # unknown scheduler names are refused by the parser, with the choices
    res = _run("run", tiny_survey, "--out", products, "--scheduler", "gpu")
    assert res.returncode == 2 and "local-cluster" in res.stderr
    # a scheduler address that nobody listens on: a one-line reason naming the address and
    # the configured connect timeout (the time it takes: benchmarks/connect_timeout.py)
    config = tmp_path / "c.toml"
    config.write_text("[run]\nconnect_timeout_s = 2\n")
    assert main(["run", tiny_survey, "--out", products, "--address", "tcp://127.0.0.1:9",
                 "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tcp://127.0.0.1:9" in err[0], err
    assert re.search(r"\b2(\.0)? ?s\b", err[0]), err  # the 2 s of the config, not 30 s


def _run_in_terminal(args: list[str], timeout: float = 240) -> tuple[int, str, str]:
    """Run obpipe with stderr on a pseudo-terminal (as a person would); (rc, out, err)."""
    import pty
    import threading

    master, slave = pty.openpty()
    proc = subprocess.Popen([*OBPIPE, *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(10)
        os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_progress_on_a_terminal_with_a_local_cluster(tiny_survey, tmp_path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[run]\nlocal_cluster_workers = 1\n")
    products = str(tmp_path / "p")
    rc, out, err = _run_in_terminal(["run", tiny_survey, "--out", products, "--stages",
                                     "index,normalize", "--scheduler", "local-cluster",
                                     "--config", str(config)])
    assert rc == 0, err[-2000:]
    # a banner per stage run and distributed's progress bar, on stderr only
    assert "[1/2] index" in err and "[2/2] normalize" in err
    assert "100% Completed" in err
    assert "Completed" not in out and "scheduler: local-cluster" in out
    # --quiet: no bars, and a complete stage is skipped
    rc, out, err = _run_in_terminal(["run", tiny_survey, "--out", products, "--stages",
                                     "index,normalize", "--quiet"])
    assert rc == 0 and "Completed" not in err and "[1/2]" not in err
    assert out.count("skipped (complete)") == 2


def test_loop_progress_only_when_shown() -> None:
    from obpipe.engine.schedulers import iter_progress, show_progress

    items = [1, 2, 3]
    assert iter_progress(items, "loop") is items  # not shown: the iterable itself
    with show_progress(True):
        bar = iter_progress(items, "loop")
        assert bar is not items and list(bar) == items  # a tqdm bar over the same items
    assert iter_progress(items, "loop") is items
