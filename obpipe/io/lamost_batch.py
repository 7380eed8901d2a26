"""Per-file ingest work: read, check and grid LAMOST files in batches for the workers.

:func:`process_file` reads one file (:mod:`obpipe.io.lamost`) and puts it on the
grid (:mod:`obpipe.io.lamost_grid`), never raising for bad content;
:func:`process_file_batch` does a batch and sends the rows back stacked, or writes
them into a :class:`SharedRows` mapping made by the driver before it forked its workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from obpipe.io.lamost import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    LamostFormatError,
    checksum,
    parse_lamost,
    read_bytes,
    too_large,
)
from obpipe.io.lamost_grid import to_grid

log = logging.getLogger(__name__)


def process_file(path: str, known_checksum: str | None = None,
                 max_bytes: int | None = DEFAULT_MAX_DECOMPRESSED_BYTES) -> dict[str, Any]:
    """Read, check and grid one file; never raises for bad content.

    Returns a record: path, checksum, size, status ("ok", "skipped", "already"),
    reason, and for "ok" the metadata and the gridded flux/ivar/mask and flags.
    ``max_bytes``: files larger than this once decompressed are skipped (a plain
    file before it is read, a gzipped one as soon as its output passes the limit).
    """
    rec: dict[str, Any] = {"path": path, "checksum": "", "size": -1, "layout": "",
                           "status": "skipped", "reason": ""}
    try:
        size = os.path.getsize(path)
        if max_bytes is not None and size > max_bytes:
            rec["size"] = size
            rec["reason"] = too_large(path, f"file size {size} bytes is", max_bytes).reason
            return rec
        raw = read_bytes(path)
    except OSError as exc:
        rec["reason"] = f"cannot read file ({exc})"
        return rec
    rec["size"] = len(raw)
    rec["checksum"] = checksum(raw)
    if known_checksum is not None and rec["checksum"] == known_checksum:
        rec["status"] = "already"
        return rec
    try:
        spec = parse_lamost(raw, path, max_bytes=max_bytes)
        gridded = to_grid(spec)
    except LamostFormatError as exc:
        rec["reason"] = exc.reason
        return rec
    except Exception as exc:  # an unforeseen defect of one file must not stop the ingest
        log.warning("%s: unexpected error: %r", path, exc)
        rec["reason"] = f"unexpected error ({type(exc).__name__}: {exc})"
        return rec
    rec.update(status="ok", layout=spec.layout, meta=spec.meta, flux=gridded.flux,
               ivar=gridded.ivar, mask=gridded.mask, rv=gridded.rv, rv_err=gridded.rv_err,
               flags=gridded.flags)
    return rec


def process_batch(paths: Sequence[str], known: Mapping[str, str],
                  max_bytes: int | None = DEFAULT_MAX_DECOMPRESSED_BYTES) -> list[dict[str, Any]]:
    """:func:`process_file` over a batch; ``known`` maps path -> checksum already ingested."""
    return [process_file(p, known.get(p), max_bytes) for p in paths]


class SharedRows:
    """flux / ivar / mask rows in one shared anonymous mapping, for forked workers.

    Made by the driver *before* it forks its worker pool and registered under a
    key: a forked worker finds it in :data:`_SHARED_ROWS`, writes a batch's gridded
    rows into the slots the batch names and sends back only the small records, not
    ~35 kB of arrays per file through a pipe (pickled, copied by the kernel twice,
    unpickled). Threads of the driver's own process use it the same way; a worker
    elsewhere (spawned, distributed) does not find the key and sends the arrays.
    """

    def __init__(self, n_slots: int, n_pix: int) -> None:
        import mmap
        import uuid

        self.key = uuid.uuid4().hex
        self.n_slots, self.n_pix = int(n_slots), int(n_pix)
        row_bytes = self.n_pix * (4 + 4 + 1)
        # MAP_POPULATE: the driver's page tables are filled now, so reading the rows
        # the workers wrote takes no page fault per 4 kB (~5x faster first reads)
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        self._map = mmap.mmap(-1, max(self.n_slots * row_bytes, 1), flags=flags)
        size = self.n_slots * self.n_pix
        self.flux = np.frombuffer(self._map, np.float32, size, 0).reshape(-1, self.n_pix)
        self.ivar = np.frombuffer(self._map, np.float32, size, 4 * size).reshape(-1, self.n_pix)
        self.mask = np.frombuffer(self._map, np.uint8, size, 8 * size).reshape(-1, self.n_pix)
        _SHARED_ROWS[self.key] = self

    def close(self) -> None:
        """Unregister; the mapping goes when the last view of it does."""
        _SHARED_ROWS.pop(self.key, None)


#: key -> SharedRows of this process (inherited by forked workers)
_SHARED_ROWS: dict[str, SharedRows] = {}


class FileBatch:
    """Files for one ingest task (a plain object: dask passes it through untouched).

    ``shared``: (key of a :class:`SharedRows`, first slot) where the batch's gridded
    rows go when the worker shares that memory; it owns ``len(paths)`` slots from there.
    ``max_bytes``: largest decompressed file size (see :func:`process_file`).
    """

    __slots__ = ("known", "max_bytes", "paths", "shared")

    def __init__(self, paths: Sequence[str], known: Mapping[str, str],
                 shared: tuple[str, int] | None = None,
                 max_bytes: int | None = DEFAULT_MAX_DECOMPRESSED_BYTES) -> None:
        self.paths = list(paths)
        self.known = dict(known)
        self.shared = shared
        self.max_bytes = max_bytes


def process_file_batch(batch: FileBatch) -> dict[str, Any]:
    """:func:`process_file` over a batch, the gridded arrays stacked (cheap to send back).

    Returns ``{"records": [...], "flux": (k, n_pix), "ivar": ..., "mask": ...}``: the
    records without their arrays; record ``i`` with status "ok" has ``slot`` = its
    row in the stacked arrays. When the batch's :class:`SharedRows` is in this
    process, the rows are written there and ``"shared": (key, first slot, k)``
    replaces the arrays (:func:`attach_shared_rows` makes them views again).
    """
    records = [process_file(p, batch.known.get(p), batch.max_bytes) for p in batch.paths]
    ok = [r for r in records if r["status"] == "ok"]
    n_pix = ok[0]["flux"].size if ok else 0
    shared = _SHARED_ROWS.get(batch.shared[0]) if batch.shared else None
    if (shared is not None and ok and shared.n_pix == n_pix
            and batch.shared[1] + len(batch.paths) <= shared.n_slots):
        start = batch.shared[1]
        span = slice(start, start + len(ok))
        out = {"records": records, "shared": (shared.key, start, len(ok))}
        dest = {"flux": shared.flux[span], "ivar": shared.ivar[span], "mask": shared.mask[span]}
    else:
        out = {"records": records, "flux": np.empty((len(ok), n_pix), np.float32),
               "ivar": np.empty((len(ok), n_pix), np.float32),
               "mask": np.empty((len(ok), n_pix), np.uint8)}
        dest = out
    for slot, r in enumerate(ok):
        for name in ("flux", "ivar", "mask"):
            dest[name][slot] = r.pop(name)
        r["slot"] = slot
    return out


def attach_shared_rows(result: dict[str, Any]) -> dict[str, Any]:
    """A :func:`process_file_batch` result with its arrays (views of the shared rows,
    valid until the slots are handed to another batch)."""
    if "shared" in result:
        key, start, n = result.pop("shared")
        shared = _SHARED_ROWS[key]
        span = slice(start, start + n)
        result.update(flux=shared.flux[span], ivar=shared.ivar[span], mask=shared.mask[span])
    return result
