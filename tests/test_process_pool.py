"""obpipe.engine.pools.process_pool_for: the Python-bound stages share one pool of
worker processes on Dask's "processes" scheduler (real Dask, real processes)."""

from __future__ import annotations

import os

import dask

from obpipe.engine.pools import process_pool_for, shared_process_pool


def _pid(_: int) -> int:
    return os.getpid()


def _pids(scheduler: str) -> set[int]:
    tasks = [dask.delayed(_pid)(i) for i in range(6)]
    return set(dask.compute(*tasks, scheduler=scheduler))


def test_processes_share_one_pool_and_threads_are_untouched():
    with dask.config.set(num_workers=2):
        with process_pool_for("processes"):
            assert dask.config.get("chunksize") == 1
            first = _pids("processes")
        with process_pool_for("processes"):
            second = _pids("processes")
        with process_pool_for("threads"):
            assert dask.config.get("pool", None) is None
            threads = _pids("threads")
    assert os.getpid() not in first
    assert first | second <= {p.pid for p in shared_process_pool(2)._processes.values()}
    assert threads == {os.getpid()}
    assert dask.config.get("pool", None) is None  # restored on exit
