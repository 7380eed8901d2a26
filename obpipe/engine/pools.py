"""Process pools for the Python-bound stages (distance, catalog).

Their per-star work (the two-level posterior evaluation of :mod:`obpipe.distance`) holds
the GIL, so on the "threads" scheduler they run their blocks on "processes" instead
(:func:`gil_free_scheduler`) when there are enough blocks to repay starting the worker
processes (~2x on 2 cores); any other scheduler (a cluster, "processes", "synchronous")
is used as given. On "processes" the stages share one pool of worker processes
(:func:`shared_process_pool`) and hand out one block at a time (Dask's default hands 6 to
a worker at once, which leaves the other idle at the end of a stage).

Start method (:func:`pool_context`): Dask's "spawn" starts each worker as a new Python
that imports numpy, pandas, dask, xarray, zarr and obpipe by itself (~2.5 CPU s each, on
the cores the spectral stages are using); where the platform has it and Dask's
``multiprocessing.context`` is not set, the pool uses "forkserver" instead, with the
modules the blocks need preloaded: one server process imports them once and every
worker is a fork of it (a fresh single-threaded process, so forking it is safe, unlike
forking the driver with its Dask threads).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any

import dask

from obpipe.engine.blockwise import (
    DriverToken,
    _watch_driver,
    block_bounds,
    driver_token,
    open_products,
    products_path,
    spec_chunking,
)
from obpipe.io import store

log = logging.getLogger(__name__)

#: fewest blocks for which "threads" becomes "processes" (:func:`gil_free_scheduler`)
MIN_BLOCKS_FOR_PROCESSES = 8
#: what the fork server of the shared pool imports before it forks the workers, besides
#: the modules the stages name (:func:`prestart_process_pool`): the run's figures, drawn
#: in the pool (:class:`obpipe.report.run_figures.FigureDrawer`; matplotlib ~1 CPU s)
POOL_PRELOAD: tuple[str, ...] = ("obpipe.report.run_figures",
                                 "obpipe.report.spectral_figures", "matplotlib.figure",
                                 "matplotlib.backends.backend_agg")
_preload: dict[str, None] = dict.fromkeys(POOL_PRELOAD)  # ordered set
_pool_lock = threading.Lock()


def gil_free_scheduler(scheduler: str | None, n_blocks: int, stores: tuple[str, ...] = ()
                       ) -> str | None:
    """``scheduler``, or "processes" in place of "threads" for Python-bound blockwise work
    of at least :data:`MIN_BLOCKS_FOR_PROCESSES` blocks when Dask has more than one
    worker (``num_workers`` or the CPU count), unless one of ``stores`` is a ``memory://``
    URL (worker processes would not see it)."""
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    if any(store.in_process_memory(p) for p in stores):
        return scheduler
    if scheduler == "threads" and n_blocks >= MIN_BLOCKS_FOR_PROCESSES and workers > 1:
        log.info("%d blocks of Python-bound work: 'processes' (%d workers) instead of "
                 "'threads'", n_blocks, workers)
        return "processes"
    return scheduler


def pool_context(preload: Iterable[str] = ()) -> BaseContext:
    """The start method of the shared pool: Dask's (``multiprocessing.context``, "spawn"
    by default) where the configuration sets one or the platform has no "forkserver";
    else "forkserver" with ``preload`` (module names) imported by the server before it
    forks (the main module of a ``python -m`` run first: each worker runs it again as
    ``__mp_main__``, as under "spawn"). The fork server is one per process: a preload list
    given after it started has no effect (the workers then import what they need)."""
    import dask.multiprocessing as dmp

    if dask.config.get("multiprocessing.context", None) is not None \
            or "forkserver" not in multiprocessing.get_all_start_methods():
        return dmp.get_context()
    ctx = multiprocessing.get_context("forkserver")
    main = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None)
    ctx.set_forkserver_preload(["__main__", *([main] if main else []), *preload])
    return ctx


@functools.lru_cache(maxsize=1)
def _process_pool(num_workers: int) -> ProcessPoolExecutor:
    # as dask.multiprocessing.get makes its own pool: a fixed hash seed, its start method
    # (or the fork server, :func:`pool_context`) and worker initialiser
    if os.environ.get("PYTHONHASHSEED") in (None, "0"):
        os.environ["PYTHONHASHSEED"] = "6640"
    from obpipe.engine.schedulers import _THREAD_ENV

    one_blas_thread = all(os.environ.get(k) == "1" for k in _THREAD_ENV)
    return ProcessPoolExecutor(num_workers, mp_context=pool_context(_preload),
                               initializer=_initialize_worker,
                               initargs=(driver_token(), one_blas_thread))


def _initialize_worker(driver: DriverToken | None = None, one_blas_thread: bool = False
                       ) -> None:
    """Dask's worker initialiser (the allocator policy comes with the environment the
    worker process starts with: :func:`obpipe.engine.memory.set_process_allocator`), and
    the watch on the driver from the start: a worker that never got a block (started
    early by :func:`prestart_process_pool`) exits too when the driver is killed.
    ``one_blas_thread``: the pool was made under
    :func:`obpipe.engine.schedulers.single_threaded_blas` (a spawned worker reads it from
    its environment; a fork of a fork server that started earlier has the server's). The
    graphs a block computes inside the worker (its reads) run in place (Dask's
    synchronous ``get``, given as the function: a scheduler named by a string makes
    Dask import ``distributed``, ~0.3 CPU s, in every worker) without a thread pool of
    the worker's own."""
    import dask.local
    import dask.multiprocessing as dmp

    dmp.initialize_worker_process()
    dask.config.set(scheduler=dask.local.get_sync)
    if one_blas_thread:
        from obpipe.engine.schedulers import _limit_blas_threads

        _limit_blas_threads()
    if driver is not None:
        _watch_driver(driver)


def shared_process_pool(num_workers: int, preload: Iterable[str] = ()) -> ProcessPoolExecutor:
    """One pool of ``num_workers`` worker processes for the Python-bound stages of this
    process (started on first use, shut down at exit; replaced if a worker died).
    ``preload``: modules its workers will need, imported once by the fork server when
    this call starts the pool (:func:`pool_context`)."""
    with _pool_lock:
        _preload.update(dict.fromkeys(preload))
        pool = _process_pool(num_workers)
        if getattr(pool, "_broken", False) or getattr(pool, "_shutdown_thread", False):
            _process_pool.cache_clear()
            pool = _process_pool(num_workers)
        return pool


def _import_modules(names: tuple[str, ...]) -> None:
    """Run in a pool worker: import the modules the blocks will need."""
    import importlib

    for name in names:
        importlib.import_module(name)


def prestart_process_pool(ctx: Any, modules: tuple[str, ...]) -> None:
    """Start the worker processes of :func:`shared_process_pool` now, without waiting for
    them, and import ``modules`` (what the blocks need) in each.

    When the Python-bound stages (distance, catalog) will use the pool (see
    :func:`gil_free_scheduler`), its workers start and import numpy, dask, xarray, zarr
    and obpipe (under "forkserver" once, in the server, :func:`pool_context`) while the
    spectral stages run, instead of at the start of the distance stage, when nothing
    else does. The pool is the same one the stages then use; no product is touched.
    Returns at once: the first worker of a fork server waits for the server's imports,
    so the pool is started by a thread of its own."""
    scheduler = scheduler_for(ctx)
    if scheduler != "processes" or dask.config.get("pool", None) is not None:
        return
    workers = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)

    def start() -> None:
        try:
            pool = shared_process_pool(workers, modules)
            for _ in range(workers):  # one submission per worker process to start
                pool.submit(_import_modules, modules)
        except Exception as exc:  # an optimisation only: the stage starts the pool itself
            log.warning("worker processes not started early (%s)", exc)

    threading.Thread(target=start, name="obpipe-pool-start", daemon=True).start()
    log.info("distance / catalog: %d worker processes starting", workers)


@contextlib.contextmanager
def process_pool_for(scheduler: str | None) -> Iterator[None]:
    """Dask's "processes" scheduler on :func:`shared_process_pool`, one block per dispatch,
    inside the block; any other scheduler unchanged."""
    if scheduler != "processes" or dask.config.get("pool", None) is not None:
        yield
        return
    workers = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    with dask.config.set(pool=shared_process_pool(workers), chunksize=1):
        yield


def background_pool(ctx: Any) -> ProcessPoolExecutor | None:
    """The shared pool of worker processes when it is already started and the run
    ``ctx`` uses it for its Python-bound stages (:func:`scheduler_for` is "processes" and
    Dask has no pool of its own), for work off the stages' path (the run's figures); else
    None (do it in place: no pool is started for it)."""
    if _process_pool.cache_info().currsize == 0:
        return None
    try:
        if scheduler_for(ctx) != "processes" or dask.config.get("pool", None) is not None:
            return None
    except FileNotFoundError:  # no products store yet
        return None
    return shared_process_pool(int(dask.config.get("num_workers", None) or os.cpu_count()
                                   or 1))


def n_blocks(products_dir: str) -> int:
    """Row blocks (chunks) of the products store, from its ``specid`` array's metadata
    (zarr: ~1 ms, where opening the products with xarray takes ~0.1 s; the run asks a
    few times). Raises FileNotFoundError if the store is missing."""
    try:
        n_spec, chunk = spec_chunking(products_path(products_dir))
    except FileNotFoundError:
        open_products(products_dir)  # the products store's own message
        raise
    except KeyError as exc:
        raise FileNotFoundError(f"{products_path(products_dir)}: no 'specid' array (run "
                                "the 'index' stage)") from exc
    return len(block_bounds(n_spec, chunk))


def scheduler_for(ctx: Any) -> str | None:
    """The scheduler of a Python-bound stage of the run ``ctx`` (:func:`gil_free_scheduler`
    over the products' row blocks)."""
    return gil_free_scheduler(ctx.scheduler, n_blocks(ctx.products_dir),
                              (ctx.survey_path, ctx.products_dir))
