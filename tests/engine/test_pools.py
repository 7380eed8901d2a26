"""obpipe.engine.pools.process_pool_for and the distance stage's prepare: the Python-bound stages
share one pool of worker processes on Dask's "processes" scheduler (real Dask, real
processes). The worker processes are observed from the operating system (psutil: the
children of this process), not through the executor's private attributes."""

from __future__ import annotations

import os

import dask
import psutil

from obpipe.config import SimulationConfig
from obpipe.engine.pools import (
    MIN_BLOCKS_FOR_PROCESSES,
    process_pool_for,
    shared_process_pool,
)
from obpipe.io import store
from obpipe.pipeline import RunContext, run_pipeline
from obpipe.simulate.survey import simulate_survey
from obpipe.stages.distance import prepare as prestart_process_pool


def _pid(_: int) -> int:
    return os.getpid()


def _pids(scheduler: str) -> set[int]:
    tasks = [dask.delayed(_pid)(i) for i in range(6)]
    return set(dask.compute(*tasks, scheduler=scheduler))


def _worker_processes() -> set[int]:
    """pids of this process's live worker processes: its children, or under the
    "forkserver" start method the fork server's children (multiprocessing's resource
    tracker and the fork server itself excluded)."""
    out = set()
    me = os.getpid()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(child.cmdline())
            parent = child.ppid()
        except psutil.NoSuchProcess:
            continue
        if "resource_tracker" in cmd or ("forkserver" in cmd and parent == me):
            continue
        out.add(child.pid)
    return out


def _wait_for_workers(before: set[int], n: int, timeout_s: float = 120.0) -> set[int]:
    """The worker processes started since ``before``, once there are ``n`` (or at the
    timeout): the pool is started by a thread of its own."""
    import time

    t_end = time.monotonic() + timeout_s
    while len(started := _worker_processes() - before) < n and time.monotonic() < t_end:
        time.sleep(0.1)
    return started


def test_processes_share_one_pool_and_threads_are_untouched():
    with dask.config.set(num_workers=2):
        with process_pool_for("processes"):
            assert dask.config.get("chunksize") == 1
            pool = dask.config.get("pool")
            first = _pids("processes")
        with process_pool_for("processes"):
            assert dask.config.get("pool") is pool  # the same pool, not a new one
            second = _pids("processes")
        with process_pool_for("threads"):
            assert dask.config.get("pool", None) is None
            threads = _pids("threads")
    assert pool is shared_process_pool(2)
    assert os.getpid() not in first | second
    # both runs' tasks ran in at most two live worker processes of this process
    assert first | second <= _worker_processes()
    assert len(first | second) <= 2
    assert threads == {os.getpid()}
    assert dask.config.get("pool", None) is None  # restored on exit


def test_distance_pool_prestarts_when_the_stage_will_use_processes(tmp_path) -> None:
    """prestart_process_pool starts the shared pool's workers for a survey with enough
    blocks for the 'processes' scheduler, and starts nothing for another scheduler."""
    shared_process_pool(2).shutdown()  # a pool from an earlier test: the next is fresh
    path = str(tmp_path / "s.zarr")
    simulate_survey(path, SimulationConfig(n_stars=60, seed=5, chunk_size=10),
                    scheduler="threads")
    ctx = RunContext(path, str(tmp_path / "p"), scheduler="threads")
    run_pipeline(path, ctx.products_dir, stages=["index"], scheduler="threads")

    with dask.config.set(num_workers=2):
        assert store.open_cube(path).sizes["spec"] >= 10 * MIN_BLOCKS_FOR_PROCESSES
        before = _worker_processes()
        prestart_process_pool(ctx)
        started = _wait_for_workers(before, 2)
        assert len(started) == 2  # started now, before any distance block
        pool = shared_process_pool(2)
        assert pool.submit(os.getpid).result(timeout=120) in started
        # a single-block survey (or another scheduler) starts nothing
        ctx_sync = RunContext(path, ctx.products_dir, scheduler="synchronous")
        running = _worker_processes()
        prestart_process_pool(ctx_sync)
        assert _worker_processes() == running
        assert shared_process_pool(2) is pool


_DRIVER = """
import os, sys, time
from obpipe.engine.pools import shared_process_pool
if __name__ == "__main__":
    pool = shared_process_pool(2)
    pids = {pool.submit(os.getpid).result(timeout=120) for _ in range(8)}
    print(" ".join(map(str, sorted(pids))), flush=True)
    time.sleep(600)
"""


def test_idle_pool_workers_exit_when_the_driver_is_killed(tmp_path) -> None:
    """Workers started early (prestart) that never ran a block exit with the driver."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              text=True)
    try:
        pids = [int(p) for p in driver.stdout.readline().split()]
        workers = [psutil.Process(p) for p in pids]
        assert workers and all(w.is_running() for w in workers)
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert alive == [], f"orphan workers still running: {[p.pid for p in alive]}"


def _nested_compute_in_worker(_: int) -> tuple[bool, bool, float]:
    import sys

    import dask.array as da
    import dask.local

    total = float(da.ones(10, chunks=5).sum().compute())  # a block's nested graph
    return (dask.config.get("scheduler", None) is dask.local.get_sync,
            "distributed" in sys.modules, total)


def test_pool_workers_compute_nested_graphs_in_place() -> None:
    """A block's own graphs (its reads) run synchronously in the worker, without looking
    for a distributed client (which imports distributed in every worker)."""
    pool = shared_process_pool(2)
    in_place, imported, total = pool.submit(_nested_compute_in_worker, 0).result(
        timeout=120)
    assert in_place
    assert total == 10.0
    assert not imported


def _blas_threads(_: int) -> set[int]:
    from threadpoolctl import threadpool_info

    return {int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}


def test_a_pool_made_in_a_run_has_one_blas_thread_in_every_worker() -> None:
    """Workers of a pool made under single_threaded_blas use one BLAS thread, also when
    they are forks of a fork server started earlier, outside it (bitwise-identical
    products whatever the scheduler)."""
    from obpipe.engine.schedulers import single_threaded_blas

    shared_process_pool(2).shutdown()
    shared_process_pool(2).submit(os.getpid).result(timeout=120)  # started outside a run
    shared_process_pool(2).shutdown()
    with single_threaded_blas():
        pool = shared_process_pool(2)
        threads = [pool.submit(_blas_threads, i).result(timeout=120) for i in range(4)]
    pool.shutdown()
    assert all(t == {1} for t in threads), threads
