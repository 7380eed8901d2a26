"""The products store and the one thin Dask wrapper that every per-spectrum stage uses.

``PRODUCTS_DIR/products.zarr`` has the survey's ``spec`` dimension (same order,
same chunks) and gains variables stage by stage. A blockwise stage is a pure
numpy function ``block_fn(inputs: dict[str, ndarray]) -> dict[str, ndarray]`` on
one chunk of rows; :func:`run_blockwise_stage` maps it over the chunks with
``dask.delayed`` (any scheduler, or a ``distributed`` cluster), writes each result
as a chunk-aligned region, and records each finished block in a small
``<stage>_blocks_done`` array, so that a killed run resumes from the blocks in
flight and a finished stage is skipped.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from obpipe.engine.lock import process_gone, process_start
from obpipe.io import store

log = logging.getLogger(__name__)

PRODUCTS_STORE = "products.zarr"


@dataclass(frozen=True)
class Output:
    """A product variable: its dims after ``spec``, dtype, fill and attributes."""

    dtype: str
    units: str = ""
    description: str = ""
    #: extra dimensions after ``spec``: (name, size) pairs, e.g. (("wave", 3909),)
    extra_dims: tuple[tuple[str, int], ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fill(self) -> Any:
        if self.dtype.startswith("float"):
            return np.nan
        if self.dtype == "bool":
            return False
        return -9


def products_path(products_dir: str) -> str:
    return os.path.join(products_dir, PRODUCTS_STORE)


def open_products(products_dir: str) -> xr.Dataset:
    """Open the products store lazily (error naming the path if it is missing)."""
    path = products_path(products_dir)
    try:
        return xr.open_zarr(path, consolidated=store.CONSOLIDATED, zarr_format=store.ZARR_FORMAT)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise FileNotFoundError(f"{path}: no products store (run the 'index' stage)") from exc


def _group(path: str, mode: str = "r+") -> zarr.Group:
    return zarr.open_group(path, mode=mode, zarr_format=store.ZARR_FORMAT)


def read_arrays(path: str, names: Sequence[str], rows: slice | None = None
                ) -> dict[str, np.ndarray]:
    """Whole arrays ``names`` of a Zarr store (the survey cube, or a products store:
    :func:`products_path`), read with zarr alone: the values of
    ``xr.open_zarr(path)[name].values`` (the stores' floats are filled with NaN and
    their integers have no fill attribute, so xarray's decoding changes nothing), without
    opening every array's metadata and building a Dask graph per array (~0.1 s per open
    plus ~15 ms per array on a 30k-spectrum run). For the whole-column reads of a stage's
    serial part; blocks are read by :func:`read_block`. ``rows``: only these rows."""
    grp = _group(path, mode="r")
    missing = [k for k in names if k not in grp]
    if missing:
        raise KeyError(f"{path}: no array(s) {missing}")
    return {k: grp[k][...] if rows is None else grp[k][rows] for k in names}


def array_attrs(path: str, name: str) -> dict[str, Any]:
    """The attributes of array ``name`` of a Zarr store, read with zarr alone (the keys
    obpipe writes; xarray would also move ``_FillValue`` to the encoding)."""
    return dict(_group(path, mode="r")[name].attrs)


def spec_chunking(path: str) -> tuple[int, int]:
    """(number of spectra, spectra per chunk) of a store's ``specid`` array, from its
    metadata (zarr: ~1 ms, where opening the store with xarray takes ~0.1 s)."""
    specid = _group(path, mode="r")["specid"]
    return int(specid.shape[0]), int(specid.chunks[0])


def stored_arrays(path: str) -> set[str]:
    """The names of the arrays of a Zarr store (its variables and any coordinates)."""
    return set(_group(path, mode="r").array_keys())


def _blocks_var(stage: str) -> str:
    return f"{stage}_blocks_done"


def block_bounds(n_spec: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, n_spec)) for s in range(0, n_spec, chunk)]


def stage_complete(products_dir: str, stage: str) -> bool:
    """True if every block of ``stage`` has been written."""
    try:
        grp = _group(products_path(products_dir), mode="r")
    except (FileNotFoundError, ValueError):
        return False
    if _blocks_var(stage) not in grp:
        return False
    return bool(np.all(grp[_blocks_var(stage)][:]))


def mark_blocks_done(products_dir: str, stage: str) -> None:
    """Record every block of ``stage`` as written (for a stage written in one piece by
    :func:`write_products_block`): the only writer of block registers besides
    :func:`run_blockwise_stage`."""
    grp = _group(products_path(products_dir))
    grp[_blocks_var(stage)][:] = True


def force_requested(ctx: Any) -> bool:
    """True when the run reruns complete stages (``RunContext.force``: ``obpipe run --force``
    or ``[run] force``); a context without the attribute (a test's namespace) does not."""
    return bool(getattr(ctx, "force", False))


def ensure_outputs(
    products_dir: str, stage: str, outputs: Mapping[str, Output], n_spec: int, chunk: int
) -> None:
    """Create the stage's output variables (metadata only) and its block register."""
    path = products_path(products_dir)
    grp = _group(path)
    missing = {k: v for k, v in outputs.items() if k not in grp}
    n_blocks = len(block_bounds(n_spec, chunk))
    if missing:
        data_vars = {}
        encoding = {}
        for name, out in missing.items():
            dims = ("spec", *[d for d, _ in out.extra_dims])
            shape = (n_spec, *[s for _, s in out.extra_dims])
            chunks = (chunk, *[s for _, s in out.extra_dims])
            attrs = {"units": out.units, "description": out.description, "stage": stage,
                     **dict(out.attrs)}
            data_vars[name] = xr.Variable(dims, da.full(shape, out.fill, dtype=out.dtype,
                                                        chunks=chunks), attrs=attrs)
            encoding[name] = {"chunks": chunks}
            if out.extra_dims:  # spectra-sized arrays (31 MB per block of 2,000 float32
                # spectra, written once, read by later stages): the fast lossless codec
                encoding[name]["compressors"] = store.spectra_compressors()
        # xarray's append rewrites the root attributes: carry the existing ones over, or
        # the stage-complete marks and thresholds of earlier stages would be lost
        xr.Dataset(data_vars, attrs=dict(grp.attrs)).to_zarr(
            path, mode="a", compute=False, consolidated=store.CONSOLIDATED,
            zarr_format=store.ZARR_FORMAT, encoding=encoding)
    if _blocks_var(stage) not in grp:
        # one chunk per block: concurrent tasks never write the same chunk
        arr = grp.create_array(_blocks_var(stage), shape=(n_blocks,), dtype="bool",
                               fill_value=False, chunks=(1,),
                               dimension_names=(f"{stage}_block",))
        arr[:] = np.zeros(n_blocks, dtype=bool)


@functools.lru_cache(maxsize=8)
def _open_zarr_cached(path: str, token: tuple[int, ...]) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=store.CONSOLIDATED, zarr_format=store.ZARR_FORMAT)


def _open_for_reading(path: str) -> xr.Dataset | None:
    """A lazily opened local store, reused by the blocks of a stage in this process (opening
    reads every array's metadata: ~0.1 s a time); None for a non-local or missing store.
    Reopened whenever the store's directory or root metadata changes (an array added, a
    stage's attributes, a store rewritten); chunk data is always read afresh."""
    try:
        st = os.stat(path)
        meta = os.stat(os.path.join(path, "zarr.json"))
    except OSError:
        return None
    return _open_zarr_cached(os.path.abspath(path), (st.st_ino, st.st_mtime_ns,
                                                     meta.st_ino, meta.st_mtime_ns))


def read_block(
    survey_path: str,
    products_dir: str,
    start: int,
    stop: int,
    survey_vars: Sequence[str] = (),
    product_vars: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """Load rows ``start:stop`` of the named survey and product variables as numpy."""
    out: dict[str, np.ndarray] = {}
    if survey_vars:
        ds = _open_for_reading(survey_path)
        if ds is None:
            ds = xr.open_zarr(survey_path, consolidated=store.CONSOLIDATED,
                              zarr_format=store.ZARR_FORMAT)
        sub = ds[list(survey_vars)].isel(spec=slice(start, stop)).load()
        out.update({k: sub[k].values for k in survey_vars})
    if product_vars:
        ds = _open_for_reading(products_path(products_dir))
        if ds is None or not set(product_vars) <= set(ds.variables):
            ds = open_products(products_dir)
        sub = ds[list(product_vars)].isel(spec=slice(start, stop)).load()
        out.update({k: sub[k].values for k in product_vars})
    return out


def write_products_block(products_dir: str, start: int, block: Mapping[str, np.ndarray]) -> None:
    """Write rows ``start:...`` of product variables (chunk-aligned region write)."""
    path = products_path(products_dir)
    grp = _group(path)
    for name, values in block.items():
        arr = grp[name]
        values = np.asarray(values)
        arr[start : start + values.shape[0]] = values.astype(arr.dtype, copy=False)


def _mark_block(products_dir: str, stage: str, index: int) -> None:
    grp = _group(products_path(products_dir))
    grp[_blocks_var(stage)][index] = True


#: rows per call of a :func:`row_tiled` block function
ROW_TILE = 256


def row_tiled(block_fn: Callable[..., dict[str, np.ndarray]]
              ) -> Callable[..., dict[str, np.ndarray]]:
    """``block_fn`` (row-independent: each output row depends on its input row only)
    called on tiles of exactly :data:`ROW_TILE` rows (the last one padded with copies of
    the block's last row), its outputs concatenated and trimmed. BLAS picks kernels and
    blocking by a matrix product's shape, so the last bits of a row's result depend on how
    many rows share the product: with every call the same shape, the same spectrum gives
    the same bits under any chunking (issue 17 item 5), for ~1-2 % more work on blocks of
    thousands of rows."""
    @functools.wraps(block_fn)
    def tiled(inputs: dict[str, np.ndarray], *args: Any, **kwargs: Any
              ) -> dict[str, np.ndarray]:
        return in_row_tiles(block_fn, inputs, ROW_TILE, *args, **kwargs)

    return tiled


def in_row_tiles(block_fn: Callable[..., dict[str, np.ndarray]], inputs: dict[str, np.ndarray],
                 tile: int, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
    """``block_fn(inputs, *args, **kwargs)`` on tiles of exactly ``tile`` rows (see
    :func:`row_tiled`; also for a subset of a tile's rows, e.g. the spectra that one step
    applies to, whose number depends on the tile's content)."""
    n = next(iter(inputs.values())).shape[0] if inputs else 0
    if n == 0:
        return block_fn(inputs, *args, **kwargs)
    parts: list[dict[str, np.ndarray]] = []
    for lo in range(0, n, tile):
        part = {k: v[lo: lo + tile] for k, v in inputs.items()}
        pad = tile - (min(lo + tile, n) - lo)
        if pad:
            part = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)])
                    for k, v in part.items()}
        parts.append(block_fn(part, *args, **kwargs))
    if len(parts) == 1:
        return {k: v[:n] for k, v in parts[0].items()}
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


def invalidate_stage(products_dir: str, stage: str) -> None:
    """Forget that ``stage`` was (partly) written: its block register and completion mark
    go, so that its next run computes every block again."""
    path = products_path(products_dir)
    grp = _group(path)
    if _blocks_var(stage) in grp:
        del grp[_blocks_var(stage)]
    store.update_attrs(path, {f"stage_{stage}_complete": False})


def temp_name(path: str) -> str:
    """A unique temporary name next to ``path`` (same extension) to write a file under
    before :func:`obpipe.io.store.replace` publishes it: concurrent writers never share
    a temporary file, and a failed write leaves ``path`` as it was."""
    root, ext = os.path.splitext(path)
    return f"{root}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}"


# ------------------------------------------------------------------ driver liveness
#: (host, pid, process start time) of a driver process
DriverToken = tuple[str, int, float | None]


def driver_token() -> DriverToken:
    """This process as the driver of the blocks it submits to its local worker pool."""
    return (socket.gethostname(), os.getpid(), process_start(os.getpid()))


def driver_alive(token: DriverToken) -> bool:
    """False only when the driver is known to be gone: a process on this host that no
    longer runs (or whose pid now belongs to another process). A driver on another host
    (a distributed cluster) cannot be checked from here and counts as alive."""
    host, pid, start = token
    if host != socket.gethostname() or pid == os.getpid():
        return True
    return process_gone(pid, start) is None


_WATCHED: set[DriverToken] = set()
_WATCH_LOCK = threading.Lock()
#: how often a worker process checks that its driver lives, seconds
DRIVER_POLL_S = 0.5


def _exit_orphan(token: DriverToken, what: str) -> None:
    try:
        print(f"obpipe worker {os.getpid()}: driver pid {token[1]} is gone; exiting ({what})",
              file=sys.stderr, flush=True)
    except (OSError, ValueError):
        # stderr went with the driver (a pipe whose reader is gone: EPIPE): a raise here
        # would end the watchdog thread and leave the worker, and its fork server, alive
        pass
    os._exit(70)


def _watch_driver(token: DriverToken) -> None:
    """In a worker process (not the driver): a daemon thread that ends the process once
    the driver is gone, so that pool workers never outlive a killed ``obpipe run``."""
    if token[1] == os.getpid() or token in _WATCHED:
        return
    with _WATCH_LOCK:
        if token in _WATCHED:
            return
        _WATCHED.add(token)

    def watch() -> None:
        while driver_alive(token):
            time.sleep(DRIVER_POLL_S)
        _exit_orphan(token, "watchdog")

    threading.Thread(target=watch, name="obpipe-driver-watch", daemon=True).start()


def _commit_guard(token: DriverToken | None) -> None:
    """Before a block is committed: exit (committing nothing) if the driver is gone."""
    if token is not None and not driver_alive(token):
        _exit_orphan(token, "block not committed")


def _run_one_block(
    block_fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    survey_path: str,
    products_dir: str,
    stage: str,
    index: int,
    start: int,
    stop: int,
    survey_vars: Sequence[str],
    product_vars: Sequence[str],
    output_names: Sequence[str],
    driver: DriverToken | None = None,
) -> int:
    if driver is not None:
        _watch_driver(driver)
    inputs = read_block(survey_path, products_dir, start, stop, survey_vars, product_vars)
    result = block_fn(inputs)
    missing = set(output_names) - set(result)
    if missing:
        raise ValueError(f"stage {stage}: block {index} did not produce {sorted(missing)}")
    rows = {k: v.shape[0] for k, v in result.items()}
    if any(n != stop - start for n in rows.values()):
        raise ValueError(f"stage {stage}: block {index} returned {rows} rows, "
                         f"expected {stop - start} (one per input spectrum)")
    _commit_guard(driver)
    write_products_block(products_dir, start, {k: result[k] for k in output_names})
    _commit_guard(driver)
    _mark_block(products_dir, stage, index)
    return stop - start


def run_blockwise_stage(
    survey_path: str,
    products_dir: str,
    stage: str,
    block_fn: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    outputs: Mapping[str, Output],
    survey_vars: Sequence[str] = (),
    product_vars: Sequence[str] = (),
    scheduler: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Map ``block_fn`` over the survey's row chunks and write its outputs (resumable).

    ``block_fn`` must be picklable (a module-level function or a
    ``functools.partial`` of one with small arguments, e.g. model weights as arrays).
    """
    prods = open_products(products_dir)
    n_spec = int(prods.sizes["spec"])
    chunk = int(prods["specid"].chunks[0][0])
    if force and stage_complete(products_dir, stage):
        grp = _group(products_path(products_dir))
        del grp[_blocks_var(stage)]
    ensure_outputs(products_dir, stage, outputs, n_spec, chunk)
    done = _group(products_path(products_dir))[_blocks_var(stage)][:]
    # worker processes of a local pool are this driver's children: they watch it and
    # commit nothing once it is gone (a distributed cluster's workers outlive clients)
    local_pool = scheduler == "processes" or (
        scheduler is None and dask.config.get("scheduler", None) in ("processes",
                                                                      "multiprocessing"))
    driver = driver_token() if local_pool else None
    tasks = []
    for index, (start, stop) in enumerate(block_bounds(n_spec, chunk)):
        if done[index] and not force:
            continue
        tasks.append(dask.delayed(_run_one_block)(
            block_fn, survey_path, products_dir, stage, index, start, stop,
            tuple(survey_vars), tuple(product_vars), tuple(outputs), driver,
            dask_key_name=f"{stage}-block-{index}",
        ))
    kwargs = {"scheduler": scheduler} if scheduler else {}
    written = sum(dask.compute(*tasks, **kwargs)) if tasks else 0
    store.update_attrs(products_path(products_dir), {f"stage_{stage}_complete": True})
    log.info("stage %s: %d blocks (%d spectra) written, %d skipped", stage, len(tasks), written,
             int(done.sum()))
    return {"blocks_written": len(tasks), "spectra_written": int(written),
            "blocks_skipped": int(np.sum(done)) if not force else 0}
