"""A newcomer's first hour (issue 17, item 11): --version, --scheduler on validate and
report, ``obpipe info`` on products, a quiet local cluster, the demo's summary lines,
the M_Ks validation figure without compact stars, skip reasons and make targets."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from obpipe import __version__
from obpipe.cli import main
from obpipe.config import SimulationConfig
from obpipe.pipeline import run_pipeline
from obpipe.simulate.survey import simulate_survey
from tests.small_run import OBPIPE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("newcomer")
    survey, products = str(root / "survey.zarr"), str(root / "products")
    simulate_survey(survey, SimulationConfig(n_stars=40, seed=3, chunk_size=40),
                    scheduler="threads")
    run_pipeline(survey, products, ["index", "normalize"], scheduler="threads")
    return survey, products


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"obpipe {__version__}"


def test_validate_and_report_take_a_scheduler(tiny: tuple[str, str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    survey, products = tiny
    assert main(["validate", survey, "--scheduler", "synchronous"]) == 0
    assert json.loads(capsys.readouterr().out)["store"] == survey
    out = tmp_path / "report"
    assert main(["report", products, "--survey", survey, "--out", str(out),
                 "--scheduler", "synchronous"]) == 0
    assert (out / "report.html").exists()
    for argv in (["validate", survey], ["report", products]):
        with pytest.raises(SystemExit):  # argparse: not a scheduler
            main([*argv, "--scheduler", "gpu"])


def test_info_on_a_products_directory_and_store(tiny: tuple[str, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    survey, products = tiny
    for path in (products, os.path.join(products, "products.zarr")):
        assert main(["info", path]) == 0
        text = capsys.readouterr().out
        assert "not completely written" not in text
        assert "stages complete: index, normalize" in text
        assert f"survey: {survey}" in text
    assert main(["info", survey]) == 0
    assert "pixels: 3909" in capsys.readouterr().out


def test_demo_photometry_line_is_whole_json() -> None:
    from obpipe.cli import _photometry_line

    long = {f"band_{k}": {"bias": np.float32(0.0123456789), "std": 0.123456789,
                          "n": np.int64(1234)} for k in range(12)}
    line = _photometry_line({"photometry": {"ebv": {"non_emission_all_bands": long}}})
    prefix = "photometry vs truth: "
    assert line.startswith(prefix)
    back = json.loads(line[len(prefix):])  # the old line was cut at 300 characters
    assert back["band_11"] == {"bias": 0.01235, "std": 0.1235, "n": 1234}


@pytest.mark.slow
def test_local_cluster_is_quiet_without_verbose(tiny: tuple[str, str], tmp_path: Path) -> None:
    survey, _ = tiny
    cmd = [*OBPIPE, "run", survey, "--out", str(tmp_path / "p"),
           "--stages", "index", "--scheduler", "local-cluster", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    noisy = [line for line in res.stderr.splitlines()
             if re.search(r"distributed\.\S+ INFO|Sending large graph", line)]
    assert not noisy, noisy[:5]


def test_validation_mks_figure_pulls_are_ob_stars_only(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """White dwarfs and subdwarfs (pulls of tens of sigma) stay out of the OB pulls."""
    from obpipe.report import figures as report

    rng = np.random.default_rng(1)
    n_ob, n_compact = 400, 40
    n = n_ob + n_compact
    true = rng.uniform(-5, 1, n)
    err = np.full(n, 0.3)
    mks = true + rng.normal(0, 0.3, n)
    mks[n_ob:] = true[n_ob:] - 8.0  # compact stars read as OB stars: far too bright
    cls = np.array(["OB"] * n_ob + ["white_dwarf", "subdwarf"] * (n_compact // 2), object)
    cols = {"MKs": mks, "MKs_err": err, "snr_g": np.full(n, 80.0)}
    truth = {"MKs_true": true, "is_binary": np.zeros(n, bool), "is_broken": np.zeros(n, bool),
             "has_emission": np.zeros(n, bool), "star_class": cls}
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or path)
    report.write_validation_mks(cols, truth, str(tmp_path / "v.png"))
    labels = [t.get_text() for t in figures[0].axes[2].get_legend().get_texts()]
    m = re.search(r"std ([\d.]+), n = (\d+)", labels[0])
    assert m and int(m.group(2)) == n_ob, labels
    assert 0.8 < float(m.group(1)) < 1.2


def test_shared_data_skips_say_so_and_make_shows_them() -> None:
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert "../shared/data" in conftest
    makefile = (ROOT / "Makefile").read_text()
    test_rule = makefile.split("\ntest:")[1].split("\n\n")[0]
    assert "-rs" in test_rule or "-ra" in test_rule
    fast = makefile.split("\ntest-fast:")[1].split("\n\n")[0]
    assert '-m "not slow"' in fast


@pytest.mark.slow
def test_local_cluster_binds_loopback_only() -> None:
    """The scheduler, its dashboard and the workers of ``--scheduler local-cluster`` listen
    on 127.0.0.1 only (no port open to the network)."""
    from urllib.parse import urlparse

    from distributed import get_client

    from obpipe.engine.schedulers import dask_scheduler

    with dask_scheduler("local-cluster", local_cluster_workers=1) as scheduler:
        assert scheduler is None  # the cluster's client is the default
        client = get_client()
        info = client.scheduler_info()
        hosts = {urlparse(client.scheduler.address).hostname,
                 urlparse(client.dashboard_link).hostname,
                 *(urlparse(w).hostname for w in info["workers"])}
    assert hosts == {"127.0.0.1"}, hosts
