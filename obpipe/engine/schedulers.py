"""How a run executes: which Dask scheduler it uses and the progress it shows.

Orchestration only (no science):

* :func:`dask_scheduler` turns ``--scheduler`` into something ``dask.compute`` can use:
  a local scheduler by name ("threads", "processes", "synchronous"), a
  ``distributed.LocalCluster`` on 127.0.0.1 ("local-cluster"; dashboard on a free
  port of 127.0.0.1, never 0.0.0.0), or a ``distributed.Client`` connected to a
  running scheduler given by address ("tcp://host:8786"). With a client the
  context yields ``None``: the client is Dask's default scheduler for the duration.
* :func:`dask_progress` shows a progress bar for every Dask computation inside it:
  ``dask.diagnostics.ProgressBar`` on the local schedulers, ``distributed.progress``
  on a cluster (the graph is submitted as futures, the bar follows them on the
  scheduler, then the results are gathered). :func:`iter_progress` is the same for
  plain Python loops (tqdm). Bars go to stderr, and only when stderr is a terminal
  and progress is switched on (:func:`progress_enabled`, :func:`show_progress`), so
  logs, pipes and tests stay clean.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import itertools
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

import dask

from obpipe.options import option

#: Local Dask schedulers by name; "local-cluster" starts a ``distributed.LocalCluster``.
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
LOCAL_CLUSTER = "local-cluster"


def is_scheduler_address(text: str) -> bool:
    """True for the address of a running Dask scheduler (``tcp://host:8786``, ``host:8786``)."""
    return "://" in text or bool(re.fullmatch(r"[\w.\-\[\]:]+:\d+", text))


@dataclass(frozen=True)
class RunConfig:
    """Options of ``obpipe run`` that are not science: where and how the stages run."""

    scheduler: str = option(
        "threads",
        doc="Dask scheduler: \"threads\", \"processes\" or \"synchronous\" (local), \"local-"
            "cluster\" (a distributed.LocalCluster on 127.0.0.1 for the duration of the "
            "run) or the address of a running scheduler, e.g. \"tcp://10.0.0.5:8786\"; the"
            " command line's --scheduler / --address take precedence")
    stages: tuple[str, ...] = option(
        (),
        doc="stages to run, a subset of the registered ones (empty: all), always in run order")
    force: bool = option(
        False,
        doc="rerun stages whose products are complete (default: skip them, i.e. resume)")
    local_cluster_workers: int = option(
        0,
        doc="worker processes of \"local-cluster\" (0: Dask's choice from the number of cores)")
    threads_per_worker: int = option(1, doc="threads per worker process of \"local-cluster\"")
    connect_timeout_s: float = option(
        30.0,
        doc="seconds to wait for the scheduler at an address to answer before giving up")
    progress: bool = option(
        True,
        doc="progress bars on a terminal (never when stderr is not a TTY; --quiet turns them off)")

    def __post_init__(self) -> None:
        known = (*LOCAL_SCHEDULERS, LOCAL_CLUSTER)
        if self.scheduler not in known and not is_scheduler_address(self.scheduler):
            raise ValueError(f"scheduler must be one of {', '.join(known)} or a scheduler "
                             f"address such as tcp://127.0.0.1:8786, got {self.scheduler!r}")
        if self.local_cluster_workers < 0:
            raise ValueError(f"local_cluster_workers must be >= 0, got "
                             f"{self.local_cluster_workers}")
        if self.threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {self.threads_per_worker}")
        if not self.connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {self.connect_timeout_s}")

log = logging.getLogger(__name__)

T = TypeVar("T")

#: whether progress bars are shown in this context (set by :func:`show_progress`)
_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("obpipe_progress",
                                                                 default=False)


def progress_enabled(requested: bool = True, stream: TextIO | None = None) -> bool:
    """True when progress was requested and ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(requested and stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


@contextlib.contextmanager
def show_progress(enabled: bool) -> Iterator[None]:
    """Switch progress bars on or off for :func:`iter_progress` and :func:`dask_progress`
    calls made inside the block (e.g. by stage code)."""
    token = _PROGRESS.set(bool(enabled))
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def iter_progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """``iterable`` with a tqdm bar on stderr when progress is shown (a loop in a stage)."""
    if not _PROGRESS.get():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def stage_banner(index: int, total: int, name: str, description: str) -> None:
    """One line on stderr before a stage's bars (shown only when progress is)."""
    if _PROGRESS.get():
        sys.stderr.write(f"[{index}/{total}] {name}: {description}\n")
        sys.stderr.flush()


#: environment variables that set the BLAS / OpenMP thread count of new processes
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _limit_blas_threads() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def _define_single_threaded_blas() -> type:
    """Worker plugin: one BLAS thread in every worker process, present and future.

    Built on first use (``obpipe.engine.schedulers.SingleThreadedBLAS``, PEP 562), so that importing
    this module -- every CLI command, ingest included -- does not import distributed."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class SingleThreadedBLAS(WorkerPlugin):
        """Worker plugin: one BLAS thread in every worker process, present and future."""

        name = "obpipe-single-threaded-blas"

        def setup(self, worker: Any) -> None:
            _limit_blas_threads()

    SingleThreadedBLAS.__module__ = __name__
    SingleThreadedBLAS.__qualname__ = "SingleThreadedBLAS"
    return SingleThreadedBLAS


def __getattr__(name: str) -> Any:
    if name == "SingleThreadedBLAS":  # pickled by reference: workers resolve it here too
        return globals().setdefault(name, _define_single_threaded_blas())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """One BLAS thread for every computation of the block, wherever it runs.

    Why: OpenBLAS's float32 matrix products differ in the last bits with its thread
    count (measured: normalised fluxes differ by up to 4e-6 between 1 and 2 threads),
    and ``threadpoolctl`` limits are process-wide, so per-block limits taken by
    concurrent Dask threads race and the numbers of a threaded run depend on timing.
    With one BLAS thread everywhere (this process, child processes of the
    "processes" scheduler, and the workers of a distributed client, through
    :class:`SingleThreadedBLAS`) the products are bitwise identical whatever the
    scheduler; Dask's task parallelism replaces BLAS threads. Torch keeps its own
    intra-op threads (user_api "blas" only).
    """
    from threadpoolctl import threadpool_limits

    saved = {k: os.environ.get(k) for k in _THREAD_ENV}
    os.environ.update({k: "1" for k in _THREAD_ENV})
    client = _active_client()
    if client is not None:
        plugin = sys.modules[__name__].SingleThreadedBLAS  # built once, by __getattr__
        client.register_plugin(plugin(), name=plugin.name)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _active_client() -> Any:
    """The default ``distributed.Client`` if Dask's default scheduler is one, else None."""
    if "distributed" not in sys.modules or dask.config.get("scheduler", None) != \
            "dask.distributed":
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def compute_ahead(batches: Iterable[Sequence[Any]], ahead: int = 2, **kwargs: Any
                  ) -> Iterator[tuple[Any, ...]]:
    """``dask.compute(*batch, **kwargs)`` of each batch of delayed objects, the results
    yielded in batch order, while up to ``ahead`` later batches compute (one at a time, in
    a background thread): serial work of the caller on a result (writing it to a file)
    overlaps the workers' computation of the next batches instead of leaving them idle.
    Memory: at most ``ahead + 1`` batches of results. Batches not yet started when the
    caller stops (an exception) are cancelled."""
    from concurrent.futures import ThreadPoolExecutor

    if ahead < 0:
        raise ValueError(f"ahead must be >= 0, got {ahead}")
    it = iter(batches)
    with ThreadPoolExecutor(1, thread_name_prefix="obpipe-compute-ahead") as ex:
        pending = collections.deque(ex.submit(dask.compute, *b, **kwargs)
                                    for b in itertools.islice(it, ahead + 1))
        # the first batch, then ``ahead`` more while the caller holds each result
        try:
            while pending:
                yield pending.popleft().result()
                for b in itertools.islice(it, 1):
                    pending.append(ex.submit(dask.compute, *b, **kwargs))
        finally:
            for fut in pending:
                fut.cancel()


@contextlib.contextmanager
def dask_progress(label: str = "") -> Iterator[None]:
    """Progress bars (stderr) for the Dask computations inside the block, when shown.

    Local schedulers: ``dask.diagnostics.ProgressBar`` (computations over 0.5 s).
    A distributed client: every ``dask.compute`` without an explicit scheduler is sent
    as futures and followed with ``distributed.progress`` before the results are
    gathered (same graph, same keys, same results).
    """
    if not _PROGRESS.get():
        yield
        return
    client = _active_client()
    if client is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=0.5, out=sys.stderr):
            yield
        return
    from distributed import progress

    def get_with_progress(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        futures = client.get(dsk, keys, sync=False, **kwargs)
        try:
            # distributed's text bar writes to stdout: keep stdout for results
            with contextlib.redirect_stdout(sys.stderr):
                progress(futures, notebook=False)
                sys.stderr.write("\n")
            return client.gather(futures)
        finally:
            del futures

    with dask.config.set(scheduler=get_with_progress):
        yield


@contextlib.contextmanager
def dask_scheduler(
    spec: str | None,
    default: str | None = None,
    local_cluster_workers: int = 0,
    threads_per_worker: int = 1,
    connect_timeout_s: float = 30.0,
) -> Iterator[str | None]:
    """The ``scheduler=`` value for ``dask.compute`` while the block runs.

    ``spec``: "threads" | "processes" | "synchronous" (yielded as is), "local-cluster"
    (a ``LocalCluster`` on 127.0.0.1 with ``local_cluster_workers`` worker processes,
    0 = Dask's choice, for the duration of the block) or a scheduler address (given up
    after ``connect_timeout_s``); with a cluster the yielded value is None (the client
    is the default scheduler). None or "": ``default``.
    """
    if not spec:
        yield default
        return
    if spec in LOCAL_SCHEDULERS:
        yield spec
        return
    from distributed import Client

    if spec == LOCAL_CLUSTER:
        from distributed import LocalCluster

        kwargs: dict[str, Any] = {"threads_per_worker": threads_per_worker}
        if local_cluster_workers:
            kwargs["n_workers"] = local_cluster_workers
        from obpipe.engine.memory import allocator_environment

        # the allocator policy in the environment of each worker process as it starts
        environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}),
                   **allocator_environment()}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
                LocalCluster(host="127.0.0.1", dashboard_address="127.0.0.1:0",
                             processes=True, **kwargs) as cluster, Client(cluster) as client:
            log.info("local cluster %s (dashboard %s), %d workers", cluster.scheduler_address,
                     client.dashboard_link, len(cluster.workers))
            yield None
        return
    if not is_scheduler_address(spec):
        raise ValueError(f"scheduler must be one of {', '.join(LOCAL_SCHEDULERS)}, "
                         f"{LOCAL_CLUSTER} or an address such as tcp://127.0.0.1:8786, "
                         f"got {spec!r}")
    try:
        client = Client(spec, timeout=f"{connect_timeout_s}s")
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(f"no Dask scheduler reachable at {spec}: {exc}") from exc
    with client:
        log.info("connected to %s: %d workers", spec,
                 len(client.scheduler_info().get("workers", {})))
        yield None
