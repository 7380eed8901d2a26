"""Distributed runs for real: a `dask scheduler` and two `dask worker` processes on
127.0.0.1, driven by `obpipe run --scheduler tcp://...`.

* the products of a run on the cluster equal those of a local threaded run, every
  variable bitwise (and the catalog tables, where the catalog stage writes them);
* a worker killed (SIGKILL, nanny and worker) in the middle of a stage: the run
  finishes on the other worker and the products are identical;
* the driver (`obpipe run`) killed in the middle of a stage: a re-run skips the blocks
  that were written and the products are identical.

The kill tests run the blockwise stages without model fits (index, normalize,
photometry) to stay fast, on a dedicated survey and against a local run of those stages.
The full pipeline runs once on the cluster, on the survey of the session's shared small run
(``tests/small_run.py``, run locally in the test process with the threaded scheduler): that
run is the reference, so no second local run is needed. Its short training (no
binary-cleaning round, 8 epochs) loses nothing here: training and cleaning run in the
driver (torch on arrays read from the store), the cluster maps the stages' blocks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from obpipe.cli import main
from obpipe.config import SimulationConfig
from obpipe.simulate.survey import simulate_survey
from tests.small_run import FAST_LUMINOSITY_TOML, OBPIPE, small_run

pytestmark = pytest.mark.slow

#: the kill tests' survey: 300 stars, ~540 spectra in 14 blocks
SURVEY = SimulationConfig(n_stars=300, seed=23, chunk_size=40)
#: a stage is caught half-way with at least this many blocks still to do: more than the
#: two workers can have running and queued (worker-saturation) when the driver dies
MARGIN_BLOCKS = 6
KILL_STAGES = ("index", "normalize", "photometry")
BIN = Path(sys.executable).parent
TIMEOUT_S = 240


def _obpipe(*args: str) -> list[str]:
    return [*OBPIPE, *args]


def _run(cmd: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}"
    return res


def _stop(proc: subprocess.Popen) -> None:
    """End a process we started and everything in its session (nanny + worker)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Cluster:
    """A scheduler and two single-threaded workers, each in its own session."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.address = ""

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        fh = open(self.workdir / log, "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([str(BIN / "dask"), *args], stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.workdir)
        fh.close()
        self.procs.append(proc)
        return proc

    def start(self, n_workers: int = 2) -> None:
        sched_file = self.workdir / "scheduler.json"
        self._spawn(["scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--dashboard-address", "127.0.0.1:0", "--scheduler-file",
                     str(sched_file)], "scheduler.log")
        deadline = time.monotonic() + 60
        while not sched_file.exists() or not sched_file.read_text().strip():
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError("dask scheduler did not start: "
                                   + (self.workdir / "scheduler.log").read_text()[-2000:])
            time.sleep(0.1)
        self.address = json.loads(sched_file.read_text())["address"]
        assert self.address.startswith("tcp://127.0.0.1:")
        for i in range(n_workers):
            self.workers.append(self._spawn(
                ["worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                 "--dashboard-address", "127.0.0.1:0", "--name", f"w{i}",
                 "--local-directory", str(self.workdir / f"w{i}")], f"worker{i}.log"))
        self.wait_for_workers(n_workers)

    def n_workers(self) -> int:
        from distributed import Client

        with Client(self.address, timeout="20s") as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])

    def wait_for_workers(self, n: int, timeout: float = 90) -> None:
        from distributed import Client

        with Client(self.address, timeout="20s") as client:
            client.wait_for_workers(n, timeout=timeout)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    c = Cluster(workdir)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def survey(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("dsurvey") / "survey.zarr")
    simulate_survey(path, SURVEY, scheduler="threads")
    return path


@pytest.fixture(scope="module")
def local_products(survey: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The stages of the kill tests, local threaded scheduler (in this process): their
    reference."""
    out = str(tmp_path_factory.mktemp("dlocal") / "products")
    with contextlib.redirect_stdout(io.StringIO()) as text:
        rc = main(["run", survey, "--out", out, "--stages", ",".join(KILL_STAGES),
                   "--scheduler", "threads", "--json"])
    assert rc == 0
    assert all(s["status"] == "done" for s in _summary(text.getvalue())["stages"].values())
    return out


# ------------------------------------------------------------------ comparisons
def _products(products_dir: str) -> xr.Dataset:
    return xr.open_zarr(os.path.join(products_dir, "products.zarr"), consolidated=False)


def assert_products_identical(got_dir: str, want_dir: str, stages: tuple[str, ...] | None
                              = None) -> int:
    """Every product variable of ``got_dir`` equals the reference bitwise (NaN == NaN);
    with ``stages``, the reference is restricted to the variables those stages write.
    Catalog tables present in the reference must be present and equal. Returns the
    number of variables compared."""
    got, want = _products(got_dir), _products(want_dir)
    names = [v for v in want.data_vars
             if stages is None or want[v].attrs.get("stage") in stages
             or v.removesuffix("_blocks_done") in stages
             or (v in ("specid", "star_id", "uniqflag", "fitsname") and "index" in stages)]
    assert names, "nothing to compare"
    missing = [v for v in names if v not in got.data_vars]
    assert not missing, f"variables missing from {got_dir}: {missing}"
    if stages is None:
        assert set(got.data_vars) == set(want.data_vars)
    differ = []
    for v in names:
        a, b = got[v].values, want[v].values
        same = (np.array_equal(a, b, equal_nan=True) if a.dtype.kind in "fc"
                else np.array_equal(a, b))
        if not same or a.dtype != b.dtype:
            differ.append(v)
    assert not differ, f"variables that differ from the reference: {differ}"
    if stages is None:
        import pandas as pd

        for path in sorted(Path(want_dir).glob("catalog*.parquet")):
            other = Path(got_dir) / path.name
            assert other.exists(), f"{other} missing"
            pd.testing.assert_frame_equal(pd.read_parquet(other), pd.read_parquet(path),
                                          check_exact=True)
    return len(names)


def _blocks_done(products_dir: str, stage: str) -> np.ndarray | None:
    try:
        grp = zarr.open_group(os.path.join(products_dir, "products.zarr"), mode="r")
        return np.asarray(grp[f"{stage}_blocks_done"][:])
    except Exception:  # not created yet, or being created
        return None


def _wait_mid_stage(proc: subprocess.Popen, products_dir: str, stages: tuple[str, ...],
                    timeout: float = TIMEOUT_S) -> tuple[str, int] | None:
    """Poll the block registers until some stage has some blocks written and at least
    MARGIN_BLOCKS still to do; return (stage, blocks done) then, or None if the run
    ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for stage in stages:
            done = _blocks_done(products_dir, stage)
            if done is not None and 0 < done.sum() <= done.size - MARGIN_BLOCKS:
                return stage, int(done.sum())
        time.sleep(0.02)
    return None


def _start_and_catch(cmd: list[str], products_dir: str, attempts: int = 3
                     ) -> tuple[subprocess.Popen, tuple[str, int]]:
    """Start ``cmd`` and return it (still running) once a stage is half-way; a run that
    ends first is retried from an empty products directory."""
    for _ in range(attempts):
        shutil.rmtree(products_dir, ignore_errors=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        caught = _wait_mid_stage(proc, products_dir, KILL_STAGES[1:])
        if caught is not None:
            return proc, caught
        _stop(proc)
        proc.communicate()
    raise AssertionError(f"{attempts} runs ended before a stage could be caught half-way")


def _summary(stdout: str) -> dict:
    return json.loads(stdout)


# ------------------------------------------------------------------ tests
def test_worker_killed_mid_run(cluster: Cluster, survey: str, local_products: str,
                               tmp_path: Path) -> None:
    out = str(tmp_path / "products")
    cmd = _obpipe("run", survey, "--out", out, "--address", cluster.address,  # the alias
                  "--stages", ",".join(KILL_STAGES), "--json")
    proc, (stage, _) = _start_and_catch(cmd, out)
    try:
        os.killpg(cluster.workers[0].pid, signal.SIGKILL)  # nanny and worker: a lost node
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
        _stop(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert cluster.workers[0].wait(10) == -signal.SIGKILL
    assert cluster.n_workers() == 1
    summary = _summary(stdout)
    assert summary["stages"][stage]["status"] == "done"
    assert summary["stages"][stage]["blocks_written"] == _blocks_done(out, stage).size
    assert_products_identical(out, local_products, KILL_STAGES)


def test_driver_killed_then_resumed(cluster: Cluster, survey: str, local_products: str,
                                    tmp_path: Path) -> None:
    out = str(tmp_path / "products")
    cmd = _obpipe("run", survey, "--out", out, "--scheduler", cluster.address,
                  "--stages", ",".join(KILL_STAGES), "--json")
    for _attempt in range(3):
        proc, (stage, n_done) = _start_and_catch(cmd, out)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
        finally:
            _stop(proc)
        assert proc.returncode == -signal.SIGKILL
        # the blocks the workers had running finish (and are kept); queued ones are
        # dropped with the driver's client: the register is then what a re-run finds
        time.sleep(2.0)
        done = _blocks_done(out, stage)
        assert done is not None and done.sum() >= n_done
        if not done.all():
            break
    assert not done.all(), "the workers finished the stage of every killed driver"

    res = _run(cmd)
    summary = _summary(res.stdout)
    assert summary["stages"]["index"]["status"].startswith("skipped")
    rec = summary["stages"][stage]
    assert rec["status"] == "done"
    assert rec["blocks_skipped"] == int(done.sum()) > 0
    assert rec["blocks_written"] == done.size - int(done.sum()) > 0
    assert_products_identical(out, local_products, KILL_STAGES)


def test_cluster_run_identical_to_local(cluster: Cluster, tmp_path: Path,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Last in the file: under ``make test`` the other worker builds the shared small run
    meanwhile (the kill tests do not need it)."""
    survey, local = small_run(tmp_path_factory)  # the local run: the reference
    config = tmp_path / "fast.toml"  # the shared run's training, through --config
    config.write_text(FAST_LUMINOSITY_TOML)
    out = str(tmp_path / "products")
    res = _run(_obpipe("run", survey, "--out", out, "--config", str(config),
                       "--scheduler", cluster.address, "--json"))
    summary = _summary(res.stdout)
    assert summary["scheduler"] == cluster.address
    assert all(s["status"] == "done" for s in summary["stages"].values())
    blocks = [s["blocks_written"] for s in summary["stages"].values() if "blocks_written" in s]
    assert blocks and min(blocks) > 1  # blocks for both workers in every blockwise stage
    n = assert_products_identical(out, local)
    assert n > 40
    logs = [(cluster.workdir / f"worker{i}.log").read_text() for i in range(2)]
    assert all("Traceback" not in log for log in logs), logs
