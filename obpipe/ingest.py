"""``obpipe ingest``: LAMOST FITS files + a star table -> the survey cube (thin Dask layer).

Work split:

* workers (``dask.delayed`` over batches of ``files_per_task`` files; with
  ``scheduler="processes"`` one pool of *forked* workers for the whole run, so a
  worker starts in milliseconds with the driver's modules already imported): read
  each file, checksum it, parse it (:func:`obpipe.io.lamost.parse_lamost`), shift
  it to the rest frame and rebin it onto the grid (:func:`obpipe.io.lamost_grid.to_grid`;
  LAMOST's log-linear COEFF0/COEFF1 dispersion takes a vectorised fractional-pixel
  shift, :func:`obpipe.spectra.resample.rebin_loglinear`). A batch comes back as
  small per-file records plus three stacked arrays; forked workers (and threads)
  write the arrays into memory shared with the driver instead
  (:class:`obpipe.io.lamost_batch.SharedRows`, a ring of one region per window in
  flight) and send only the records. Pure per-file work; a bad file gives a report
  line, never an exception.
* the driver, window by window (``WINDOW_FILES`` files, in file order; the next
  ``WINDOWS_AHEAD`` windows are being read meanwhile): drops duplicates (same
  checksum or obsid as a file already in the store), joins the star table
  (:class:`obpipe.io.tables.StarTable`) on the small metadata, and writes rows in
  whole chunks of the store (rows that do not fill a chunk wait for the next
  window: no chunk is ever read back and rewritten), then commits: the report
  lines of the files whose rows are written, and the root attributes
  ``ingest_n_rows`` / ``ingest_n_report``. Memory is bounded by a few windows and
  one chunk, whatever the number of files; the store's arrays are sized once per
  run, not per window.
* at the end: repeat visits are grouped into stars (``star_id``, ``uniqflag``,
  :func:`obpipe.io.tables.assign_stars`) over the whole store, the report is
  written as CSV too, and the store is marked complete.

Resume: a killed run leaves at most the rows of one uncommitted chunk; re-running
the same command cuts the store back to the last commit and skips files whose path
and checksum are already in the report, so the result equals an uninterrupted run
(rows are always in sorted file order). ``append=True`` adds new files to a
complete store the same way.

Every input file gets one report line: ``ingested``; ``flagged`` (a row with
``ingest_flags``: e.g. no_table_match, negative_parallax, zero_ivar, off_grid);
``skipped`` (not a readable LAMOST spectrum: not FITS, truncated, wrong shape, no
wavelength); or ``duplicate`` (same content or obsid as an earlier file).
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import itertools
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dask
import numpy as np
import pandas as pd
import zarr

from obpipe.engine.memory import release_free_heap, reuse_block_buffers
from obpipe.io import store
from obpipe.io.lamost import DEFAULT_MAX_DECOMPRESSED_BYTES, write_lamost_fits  # noqa: F401
from obpipe.io.lamost_batch import (  # noqa: F401
    FileBatch,
    SharedRows,
    attach_shared_rows,
    process_batch,
    process_file,
    process_file_batch,
)
from obpipe.io.store import Column
from obpipe.io.tables import TABLE_COLUMNS, StarTable, assign_stars
from obpipe.options import option
from obpipe.spectra.grid import wavelength_grid
from obpipe.version import __version__

log = logging.getLogger(__name__)

PRODUCER = "obpipe ingest"
REPORT_GROUP = "ingest_report"
FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fz")
#: extra per-spectrum column of an ingested cube
INGEST_COLUMNS: dict[str, Column] = {
    "ingest_flags": Column("str", "", "comma-separated ingest flags of the row (empty = clean)"),
}
#: the per-file report (group ``ingest_report``, dimension ``file``)
REPORT_COLUMNS: dict[str, Column] = {
    "path": Column("str", "", "input file (absolute path)"),
    "fitsname": Column("str", "", "file name from the header (FILENAME) or the path"),
    "checksum": Column("str", "", "BLAKE2b-128 of the file's bytes"),
    "size": Column("int64", "byte", "file size"),
    "obsid": Column("int64", "", "LAMOST obsid (synthetic id if the header has none; -9)"),
    "layout": Column("str", "", "image, image-subcontinuum or bintable"),
    "status": Column("str", "", "ingested, flagged, skipped or duplicate"),
    "reason": Column("str", "", "why flagged / skipped / duplicate"),
    "row": Column("int64", "", "row in the cube (spec index), -1 if none"),
}
ROW_STATUSES = ("ingested", "flagged")
#: windows (of up to WINDOW_FILES files) being read while the driver assembles and writes
#: the current one: 3 keeps both workers busy while the driver compresses a whole chunk
WINDOWS_AHEAD = 3
#: files per window (one dask.compute); a window never spans more than one chunk of files
WINDOW_FILES = 500
#: most memory (bytes) of the shared rows that forked workers write their spectra into
SHARED_ROWS_MAX_BYTES = 256 * 2**20


class IngestError(RuntimeError):
    """An ingest that cannot go on (strict mode, unusable store or inputs)."""


@dataclass(frozen=True)
class IngestConfig:
    """Options of ``obpipe ingest`` (each documented in its field's metadata)."""

    chunk_size: int = option(
        2000, doc="spectra per Zarr chunk (new stores) and per commit window.")
    files_per_task: int = option(100, doc="input FITS files read by one Dask task.")
    match_radius_arcsec: float = option(
        3.0, doc="radius (arcsec) of the sky-position join of spectra to the star table.")
    group_radius_arcsec: float = option(
        2.0, doc="visits closer than this (arcsec), and without a shared Gaia id, are one star.")
    gaia_release: str = option(
        "auto",
        doc="the star table's Gaia release: \"DR2\", \"DR3\", or \"auto\" (the table's "
            "``gaia_release`` column, else DR3 if DR3-only columns are present).")
    strict: bool = option(
        False, doc="stop at the first file that is not cleanly ingested (default: flag it).")
    max_decompressed_mib: float = option(
        DEFAULT_MAX_DECOMPRESSED_BYTES / 2**20,
        doc="an input file larger than this (MiB) once decompressed is skipped with a reason; a "
            "gzipped file is inflated only up to the limit (a gzip bomb never fills memory).")

    @property
    def max_decompressed_bytes(self) -> int:
        return int(self.max_decompressed_mib * 2**20)

    def validate(self) -> None:
        from obpipe.options import check_ranges

        check_ranges(self)  # finite and within obpipe.options.OPTION_RANGES
        if self.chunk_size <= 0 or self.files_per_task <= 0:
            raise ValueError("chunk_size and files_per_task must be positive")
        if self.match_radius_arcsec <= 0 or self.group_radius_arcsec <= 0:
            raise ValueError("match and group radii must be positive")


# ------------------------------------------------------------------ input files


def find_files(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Absolute paths of the input files: files as given, directories searched recursively
    for ``*.fits``, ``*.fit`` (optionally ``.gz``); sorted, without repeats."""
    found: set[str] = set()
    for item in inputs:
        path = os.path.abspath(os.fspath(item))
        if os.path.isdir(path):
            for root, _, names in os.walk(path):
                for name in names:
                    if name.lower().endswith(FITS_SUFFIXES):
                        found.add(os.path.join(root, name))
        elif os.path.exists(path):
            found.add(path)
        else:
            raise IngestError(f"{path}: no such file or directory")
    return sorted(found)


# ------------------------------------------------------------------ the store


def _all_columns() -> dict[str, Column]:
    return {**store.SPECTRUM_COLUMNS, **INGEST_COLUMNS}


def _store_exists(path: str) -> bool:
    if not store.is_url(path):
        return os.path.exists(path)
    try:
        zarr.open_group(path, mode="r", zarr_format=store.ZARR_FORMAT)
        return True
    except (FileNotFoundError, ValueError):
        return False


def _read_report(path: str, n: int) -> pd.DataFrame:
    if n == 0:
        return pd.DataFrame({k: pd.Series(dtype=object) for k in REPORT_COLUMNS})
    group = zarr.open_group(path, path=REPORT_GROUP, mode="r", zarr_format=store.ZARR_FORMAT)
    cols = {}
    for name, col in REPORT_COLUMNS.items():
        values = group[name][:n]
        cols[name] = pd.Series(values.astype(object) if col.dtype == "str" else values,
                               dtype=object if col.dtype == "str" else values.dtype)
    return pd.DataFrame(cols)


SPECTRAL = ("flux", "ivar", "mask")


def _empty_row_block(n: int, spectra: bool = True) -> dict[str, np.ndarray]:
    block: dict[str, np.ndarray] = {}
    for name, col in _all_columns().items():
        if col.dtype == "str":
            block[name] = np.full(n, "", dtype=object)
        else:
            block[name] = np.full(n, col.fill, dtype=np.dtype(col.dtype))
    if spectra:
        n_pix = wavelength_grid().size
        block["flux"] = np.zeros((n, n_pix), np.float32)
        block["ivar"] = np.zeros((n, n_pix), np.float32)
        block["mask"] = np.zeros((n, n_pix), np.uint8)
    return block


class _SpectraBuffer:
    """flux / ivar / mask rows planned but not yet written, in arrays allocated once.

    Rows are gathered straight from the workers' batches into the next free rows
    and written from here, whole chunks at a time; the few rows left after a write
    move to the front. One allocation per run instead of fresh (page-faulted)
    blocks and a concatenation per window.
    """

    def __init__(self, capacity: int) -> None:
        n_pix = wavelength_grid().size
        self.arrays = {"flux": np.zeros((capacity, n_pix), np.float32),
                       "ivar": np.zeros((capacity, n_pix), np.float32),
                       "mask": np.zeros((capacity, n_pix), np.uint8)}
        self.filled = 0

    def take(self, n: int) -> dict[str, np.ndarray]:
        """Views of the next ``n`` free rows, counted as filled (the caller fills them all)."""
        need = self.filled + n
        if need > len(self.arrays["flux"]):  # not with the run's windows; kept safe
            self.arrays = {k: np.concatenate([v[: self.filled],
                                              np.zeros((need - self.filled, *v.shape[1:]),
                                                       v.dtype)])
                           for k, v in self.arrays.items()}
        views = {k: v[self.filled : need] for k, v in self.arrays.items()}
        self.filled = need
        return views

    def head(self, n: int) -> dict[str, np.ndarray]:
        return {k: v[:n] for k, v in self.arrays.items()}

    def drop_head(self, n: int) -> None:
        """Forget the first ``n`` rows (written); the rest move to the front."""
        rest = self.filled - n
        if rest > 0:
            for v in self.arrays.values():
                v[:rest] = v[n : self.filled].copy()
        self.filled = max(rest, 0)


@dataclass
class _State:
    n_rows: int
    n_report: int
    known: dict[str, str]  # path -> checksum (files already reported)
    seen_checksum: dict[str, str]  # checksum -> path (files with a row)
    seen_obsid: dict[int, str]  # obsid -> path (files with a row)


@dataclass
class _Existing:
    n_rows: int
    n_report: int
    report: pd.DataFrame
    chunk_size: int


def _existing_store(out: str, append: bool) -> _Existing | None:
    """The committed state of an existing store (read only), None if there is none."""
    if not _store_exists(out):
        return None
    root = zarr.open_group(out, mode="r", zarr_format=store.ZARR_FORMAT)
    a = dict(root.attrs)
    if a.get("producer") != PRODUCER or "ingest_n_rows" not in a:
        raise IngestError(f"{out}: exists and was not made by obpipe ingest; choose a new "
                          "--out")
    if a.get(store.COMPLETE_ATTR) and not append:
        raise IngestError(f"{out}: exists and is complete; pass --append to add files "
                          "(files already in it are skipped)")
    n_rows, n_report = int(a["ingest_n_rows"]), int(a["ingest_n_report"])
    chunk = int(a.get("chunk_size") or root["flux"].chunks[0])
    return _Existing(n_rows, n_report, _read_report(out, n_report), chunk)


def _open_or_create(
    out: str, existing: _Existing | None, cfg: IngestConfig, attrs: dict[str, Any],
) -> _State:
    """Cut an existing store back to its last commit, or create one (of one row: the
    run's :class:`_Writer` grows it once to the most rows the run can add, and it is
    cut to size at the end: no resize per window)."""
    if existing is not None:
        n_rows, n_report, rep = existing.n_rows, existing.n_report, existing.report
        store.resize_rows(out, n_rows)  # cut back to the last commit
        store.resize_rows(out, n_report, group=REPORT_GROUP, dim="file")
        store.update_attrs(out, {store.COMPLETE_ATTR: False})
        log.info("%s: resuming/appending after %d rows, %d report lines", out, n_rows, n_report)
    else:
        if not store.is_url(out):
            parent = os.path.dirname(os.path.abspath(out)) or "."
            if not os.path.isdir(parent):
                raise IngestError(f"{parent}: output directory does not exist")
        # one row of fill values written now (no dask placeholders to build and tokenise);
        # _Writer grows the arrays to the run's rows
        store.create_cube(out, 1, cfg.chunk_size, attrs=attrs, columns=_all_columns(),
                          spectra_compressors=store.spectra_compressors(), lazy_fill=False)
        store.create_row_group(out, REPORT_GROUP, REPORT_COLUMNS, 10_000, "file",
                               attrs={"description": "one line per input file of obpipe "
                                      "ingest: ingested, flagged, skipped or duplicate"})
        store.update_attrs(out, {"ingest_n_rows": 0, "ingest_n_report": 0})
        n_rows = n_report = 0
        rep = _read_report(out, 0)
    with_row = rep[rep["status"].isin(ROW_STATUSES)]
    return _State(
        n_rows=n_rows,
        n_report=n_report,
        known=dict(zip(rep["path"], rep["checksum"], strict=True)),
        seen_checksum=dict(zip(with_row["checksum"], with_row["path"], strict=True)),
        seen_obsid={int(o): p for o, p in zip(with_row["obsid"], with_row["path"], strict=True)},
    )


# ------------------------------------------------------------------ driver side


def _assemble(
    batches: list[dict[str, Any]], state: _State, table: StarTable | None, strict: bool,
    start_row: int, spectra: _SpectraBuffer | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Rows (from ``start_row`` on) and report lines of one window.

    ``batches``: results of :func:`obpipe.io.lamost_batch.process_file_batch`, in file order.
    With ``spectra``, flux / ivar / mask go to its next rows instead of the block.
    """
    report: list[dict[str, Any]] = []
    keep: list[dict[str, Any]] = []
    take: list[tuple[int, int]] = []  # (batch, slot) of the kept rows
    for b, batch in enumerate(batches):
        for rec in batch["records"]:
            if _screen(rec, state, report):
                keep.append(rec)
                take.append((b, rec["slot"]))
    return _build_rows(batches, keep, take, report, state, table, strict, start_row, spectra)


def _screen(rec: dict[str, Any], state: _State, report: list[dict[str, Any]]) -> bool:
    """Append the report line of ``rec``; True if it gets a row (read, not a duplicate)."""
    if rec["status"] == "already":
        return False
    kept = False
    ok = rec["status"] == "ok"
    line = {"path": rec["path"],
            "fitsname": rec["meta"]["fitsname"] if ok else os.path.basename(rec["path"]),
            "checksum": rec["checksum"], "size": rec["size"], "obsid": -9,
            "layout": rec["layout"], "status": rec["status"], "reason": rec["reason"],
            "row": -1}
    if ok:
        meta = rec["meta"]
        line["obsid"] = int(meta["obsid"])
        if rec["checksum"] in state.seen_checksum:
            line.update(status="duplicate", reason="same content as "
                        f"{state.seen_checksum[rec['checksum']]}")
        elif int(meta["obsid"]) in state.seen_obsid:
            line.update(status="duplicate", reason=f"obsid {meta['obsid']} already "
                        f"ingested from {state.seen_obsid[int(meta['obsid'])]}")
        else:
            state.seen_checksum[rec["checksum"]] = rec["path"]
            state.seen_obsid[int(meta["obsid"])] = rec["path"]
            kept = True
    report.append(line)
    state.known[rec["path"]] = rec["checksum"]
    return kept


def _build_rows(
    batches: list[dict[str, Any]], keep: list[dict[str, Any]], take: list[tuple[int, int]],
    report: list[dict[str, Any]], state: _State, table: StarTable | None, strict: bool,
    start_row: int, spectra: _SpectraBuffer | None = None,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    n = len(keep)
    block = _empty_row_block(n, spectra=spectra is None)
    dest = block if spectra is None else spectra.take(n)
    flags: list[list[str]] = [list(r["flags"]) for r in keep]
    if n:
        meta = pd.DataFrame({
            "obsid": [int(r["meta"]["obsid"]) for r in keep],
            "obsid_synthetic": ["no_obsid_in_header" in r["flags"] for r in keep],
            "fitsname": [r["meta"]["fitsname"] for r in keep],
            "ra": [r["meta"]["ra"] for r in keep],
            "dec": [r["meta"]["dec"] for r in keep],
        })
        block["specid"] = np.array(meta["obsid"], dtype=np.int64)
        block["fitsname"] = np.array(meta["fitsname"], dtype=object)
        block["ra"] = np.array(meta["ra"], dtype=np.float64)
        block["dec"] = np.array(meta["dec"], dtype=np.float64)
        block["mjd"] = np.array([r["meta"]["mjd"] for r in keep], np.int32)
        block["snr_g"] = np.array([r["meta"]["snr_g"] for r in keep], np.float32)
        block["rv"] = np.array([r["rv"] for r in keep], np.float32)
        block["rv_err"] = np.array([r["rv_err"] for r in keep], np.float32)
        bidx = np.array([b for b, _ in take])
        slots = np.array([slot for _, slot in take])
        for b in np.unique(bidx):
            rows = np.flatnonzero(bidx == b)  # consecutive: kept rows are in file order
            span = slice(int(rows[0]), int(rows[-1]) + 1)
            for name in SPECTRAL:
                np.take(batches[b][name], slots[rows], axis=0, out=dest[name][span])
        if table is not None:
            joined, table_flags = table.join(meta)
            for name in TABLE_COLUMNS:
                if name in joined:
                    block[name] = joined[name].astype(block[name].dtype)
            for pos in ("ra", "dec"):  # a header without a position: take the table's
                if pos in joined:
                    missing = ~np.isfinite(block[pos])
                    block[pos][missing] = joined[pos][missing]
            if "obsid" in joined:  # a file without OBSID matched by name: the table's obsid
                syn = meta["obsid_synthetic"].to_numpy(bool) & (joined["_match"] == "fitsname")
                tob = np.asarray(joined["obsid"], dtype=np.float64)
                use = syn & np.isfinite(tob) & (tob > 0)
                block["specid"][use] = tob[use].astype(np.int64)
                for k in np.flatnonzero(use):
                    flags[k] = [f for f in flags[k] if f != "no_obsid_in_header"]
            for k in range(n):
                flags[k].extend(table_flags[k])
        else:
            for k in range(n):
                flags[k].append("no_table")
        block["ingest_flags"] = np.array([",".join(f) for f in flags], dtype=object)
    # report lines for the kept rows
    row_of = {r["path"]: start_row + k for k, r in enumerate(keep)}
    for line in report:
        if line["path"] in row_of:
            k = row_of[line["path"]] - start_row
            line["row"] = row_of[line["path"]]
            line["obsid"] = int(block["specid"][k])
            line["status"] = "flagged" if flags[k] else "ingested"
            line["reason"] = ",".join(flags[k])
    if strict:
        for line in report:
            if line["status"] != "ingested":
                raise IngestError(f"{line['path']}: {line['status']}: {line['reason']} "
                                  "(--strict)")
    return block, report


def _report_block(lines: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {
        name: np.array([line[name] for line in lines],
                       dtype=object if col.dtype == "str" else np.dtype(col.dtype))
        for name, col in REPORT_COLUMNS.items()
    }


def _finalize(out: str, group_radius_arcsec: float) -> None:
    """Group visits into stars over the whole store: star_id and uniqflag."""
    root = zarr.open_group(out, mode="r+", zarr_format=store.ZARR_FORMAT)
    n = root["specid"].shape[0]
    if n == 0:
        return
    star_id, uniqflag = assign_stars(root["ra"][:], root["dec"][:], root["gaia_id"][:],
                                     root["snr_g"][:], group_radius_arcsec)
    root["star_id"][:] = star_id
    root["uniqflag"][:] = uniqflag


def report_frame(out: str) -> pd.DataFrame:
    """The ``ingest_report`` of a store as a DataFrame (committed lines only)."""
    root = zarr.open_group(out, mode="r", zarr_format=store.ZARR_FORMAT)
    return _read_report(out, int(root.attrs.get("ingest_n_report", 0)))


def default_report_csv(out: str) -> str | None:
    """``<store without .zarr>.ingest_report.csv`` next to a local store (None for URLs)."""
    if store.is_url(out):
        return None
    base = out.rstrip("/")
    base = base[:-5] if base.endswith(".zarr") else base
    return base + ".ingest_report.csv"


def _arrays_along(group: zarr.Group, dim: str) -> dict[str, zarr.Array]:
    """The group's arrays along ``dim``, opened to write every chunk as it comes.

    ``write_empty_chunks``: zarr otherwise compares each chunk with the fill value
    before writing it (an isnan pass over 2000 x 3909 values for flux); an ingested
    chunk is never empty, and an all-fill chunk reads back the same either way.
    """
    out = {}
    for name, arr in group.arrays():
        names = getattr(arr.metadata, "dimension_names", None) or ()
        if names and names[0] == dim:
            out[name] = arr.with_config({"write_empty_chunks": True})
    return out


class _Writer:
    """The store's row arrays (``spec``) and report arrays (``file``), opened once per run.

    The arrays are grown once to the most rows / lines the run can add (instead of
    once per window: ~60 metadata writes each time) and cut to the committed size
    at the end; a killed run is cut back to its last commit by the next one.
    """

    def __init__(self, out: str, max_rows: int, max_report: int) -> None:
        self.out = out
        root = zarr.open_group(out, mode="r+", zarr_format=store.ZARR_FORMAT)
        self.root = root
        self.rows = _arrays_along(root, "spec")
        self.report = _arrays_along(root[REPORT_GROUP], "file")
        self.resize(max_rows, max_report)

    def resize(self, n_rows: int, n_report: int) -> None:
        for arrays, n in ((self.rows, n_rows), (self.report, n_report)):
            for arr in arrays.values():
                if arr.shape[0] != n:
                    arr.resize((n, *arr.shape[1:]))

    @staticmethod
    def _write(arrays: dict[str, zarr.Array], start: int, block: Mapping[str, Any]) -> None:
        missing = sorted(set(arrays) - set(block))
        if missing:
            raise ValueError(f"block misses variables {missing}")
        for name, arr in arrays.items():
            value = np.asarray(block[name])
            if value.dtype.kind == "U":
                value = value.astype(object)
            if len(value):
                arr[start : start + len(value)] = value

    def commit(self, attrs: Mapping[str, Any]) -> None:
        """Merge ``attrs`` into the root attributes (the group stays open: one write)."""
        self.root.attrs.update(dict(attrs))

    def write_rows(self, start: int, block: Mapping[str, Any]) -> None:
        self._write(self.rows, start, block)

    def write_report(self, start: int, block: Mapping[str, Any]) -> None:
        self._write(self.report, start, block)


def _rows_of(block: dict[str, np.ndarray]) -> int:
    return len(block["specid"])


def _concat_blocks(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    blocks = [b for b in blocks if _rows_of(b)] or blocks[:1]
    if len(blocks) == 1:
        return blocks[0]
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def _run_windows(
    windows: list[list[str]],
    compute: Callable[[list[str]], list[dict[str, Any]]],
    pending: list[concurrent.futures.Future[list[dict[str, Any]]]],
    submit: Callable[[list[str]], concurrent.futures.Future[list[dict[str, Any]]]],
    state: _State,
    star_table: StarTable | None,
    cfg: IngestConfig,
    writer: _Writer,
    chunk: int,
    counts: dict[str, int],
    _after_append: Callable[[int], None] | None,
) -> None:
    """Assemble, write and commit the windows in order while the next ones are read.

    ``pending`` holds the futures of the first windows (already submitted); one more
    is submitted each time one is taken, so the workers never wait for the driver.
    Rows are written in whole chunks (``chunk`` rows, aligned on the store's
    chunks): the rows of a window that do not fill a chunk are carried to the next
    window, with the report lines of their files, and written (and committed) with
    it; the last window writes everything. A commit is: rows up to a chunk
    boundary, the report lines of every file up to the first file whose row is not
    written yet, then the root attributes ``ingest_n_rows`` / ``ingest_n_report``.
    """
    blocks: list[dict[str, np.ndarray]] = []  # rows planned but not written yet (no spectra)
    spectra = _SpectraBuffer(chunk + max(len(w) for w in windows))  # ... and their spectra
    carry_lines: list[dict[str, Any]] = []
    planned = state.n_rows
    for w in range(len(windows)):
        records = pending.pop(0).result()
        if w + len(pending) + 1 < len(windows):
            pending.append(submit(windows[w + len(pending) + 1]))
        counts["already"] += sum(r["status"] == "already" for b in records
                                 for r in b["records"])
        block, lines = _assemble(records, state, star_table, cfg.strict, planned, spectra)
        del records
        planned += _rows_of(block)
        blocks.append(block)
        del block
        lines = carry_lines + lines
        last = w == len(windows) - 1
        boundary = planned if last else max(state.n_rows, planned // chunk * chunk)
        n_write = boundary - state.n_rows
        if n_write:  # whole chunks (all rows in the last window): one concatenation
            rows = _concat_blocks(blocks)
            writer.write_rows(state.n_rows, {**{k: v[:n_write] for k, v in rows.items()},
                                             **spectra.head(n_write)})
            blocks = [{k: v[n_write:].copy() for k, v in rows.items()}]  # frees `rows`
            spectra.drop_head(n_write)
            del rows
        if _after_append is not None:
            _after_append(w)
        k = next((i for i, line in enumerate(lines) if line["row"] >= boundary), len(lines))
        commit, carry_lines = lines[:k], lines[k:]
        if commit:
            writer.write_report(state.n_report, _report_block(commit))
        state.n_rows = boundary
        state.n_report += len(commit)
        writer.commit({"ingest_n_rows": state.n_rows, "ingest_n_report": state.n_report})
        for line in commit:
            counts[str(line["status"])] += 1
        log.info("window %d/%d: %d rows written (store %d), %d report lines committed",
                 w + 1, len(windows), n_write, state.n_rows, len(commit))
    assert not carry_lines and not sum(_rows_of(b) for b in blocks) and not spectra.filled


def _worker_pool(num_workers: int | None) -> concurrent.futures.ProcessPoolExecutor:
    """A process pool for the whole run, its workers started now.

    Where the OS can fork (Linux), workers are forked from the driver: they inherit
    its imported modules and start in milliseconds (a spawned worker re-imports
    numpy, dask, xarray, zarr ...: seconds). Created before the driver opens the
    store; zarr resets its event loop in a forked child.
    """
    import gc
    import multiprocessing

    n_proc = num_workers or os.cpu_count() or 1
    # the documented use of gc.freeze: objects alive at the fork go to the permanent
    # generation, so neither the workers' collections (copy-on-write faults on every
    # inherited object) nor the driver's full collections traverse them again (~0.2 s
    # of driver CPU per 10,000 files); :func:`ingest` unfreezes at the end
    gc.freeze()
    if "fork" in multiprocessing.get_all_start_methods():
        ctx: Any = multiprocessing.get_context("fork")
    else:  # pragma: no cover - macOS / Windows
        from dask.multiprocessing import get_context

        ctx = get_context()
    try:
        pool = concurrent.futures.ProcessPoolExecutor(n_proc, mp_context=ctx)
        for f in [pool.submit(process_batch, [], {}) for _ in range(n_proc)]:
            f.result()
    except BaseException:
        gc.unfreeze()  # no pool for ingest() to unfreeze after
        raise
    return pool


def ingest(
    inputs: Sequence[str | os.PathLike[str]],
    table: str | os.PathLike[str] | StarTable | None,
    out: str,
    append: bool = False,
    config: IngestConfig | None = None,
    scheduler: str | None = None,
    column_map: Mapping[str, str] | None = None,
    report_csv: str | None = None,
    num_workers: int | None = None,
    _after_append: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Ingest LAMOST FITS files (paths or directories) and a star table into the cube ``out``.

    ``table``: a table file (CSV, ECSV, FITS, Parquet, VOTable), a
    :class:`StarTable`, or None (rows flagged ``no_table``). ``scheduler``: a dask
    scheduler name or None for the current default (a ``distributed.Client`` if
    one is active); "processes" uses one pool of forked workers for the whole run.
    Returns a summary (counts by status, paths). Raises :class:`IngestError` in
    strict mode at the first file not cleanly ingested.
    """
    cfg = config or IngestConfig()
    cfg.validate()
    # the driver's chunk buffers (2,000 x 3,909 float32 = 31 MB each, several per chunk
    # in Zarr's encode path) stay in the heap for the next chunk instead of being
    # mmapped, faulted in and unmapped every time (~56,000 page faults and ~0.9 s of
    # system CPU per 10,000 files); fixed thresholds keep memory flat, and the kept
    # memory goes back to the OS at the end
    reuse_block_buffers()
    files = find_files(inputs)
    if not files:
        raise IngestError("no input files found (directories are searched for *.fits, "
                          "*.fit, *.fits.gz)")
    kwargs: dict[str, Any] = {"scheduler": scheduler} if scheduler else {}
    if num_workers:
        kwargs["num_workers"] = num_workers
    shared = None
    if scheduler in ("processes", "threads", "synchronous", "sync", "single-threaded"):
        # shared memory before the fork: forked workers write their spectra there
        shared = _shared_rows(len(files), cfg.files_per_task)
    process_pool = _worker_pool(num_workers) if scheduler == "processes" else None
    if process_pool is not None:
        import dask.multiprocessing

        kwargs["pool"] = process_pool
        # the scheduler function itself: dask resolves a scheduler *name* only after
        # importing distributed to look for a client (~0.15-0.3 s of CPU per run)
        kwargs["scheduler"] = dask.multiprocessing.get
    threads = concurrent.futures.ThreadPoolExecutor(max_workers=WINDOWS_AHEAD)
    try:
        return _ingest(files, inputs, table, out, append, cfg, kwargs, threads, column_map,
                       report_csv, _after_append, shared)
    finally:
        threads.shutdown(wait=False, cancel_futures=True)
        if process_pool is not None:
            process_pool.shutdown(cancel_futures=True)
            import gc

            gc.unfreeze()
        if shared is not None:
            shared.close()
        release_free_heap()


def _shared_rows(n_files: int, files_per_task: int) -> SharedRows | None:
    """Slots for the windows in flight (WINDOWS_AHEAD + the one being assembled), each
    as large as the largest window; None if that is more than SHARED_ROWS_MAX_BYTES."""
    n_pix = wavelength_grid().size
    per_window = min(n_files, max(WINDOW_FILES, files_per_task))
    n_slots = (WINDOWS_AHEAD + 1) * per_window
    if n_slots * n_pix * 9 > SHARED_ROWS_MAX_BYTES:
        return None
    return SharedRows(n_slots, n_pix)


def _ingest(
    files: list[str],
    inputs: Sequence[str | os.PathLike[str]],
    table: str | os.PathLike[str] | StarTable | None,
    out: str,
    append: bool,
    cfg: IngestConfig,
    kwargs: dict[str, Any],
    threads: concurrent.futures.ThreadPoolExecutor,
    column_map: Mapping[str, str] | None,
    report_csv: str | None,
    _after_append: Callable[[int], None] | None,
    shared: SharedRows | None = None,
) -> dict[str, Any]:
    existing = _existing_store(out, append)
    known: dict[str, str] = {}
    chunk = cfg.chunk_size
    if existing is not None:
        known = dict(zip(existing.report["path"], existing.report["checksum"], strict=True))
        chunk = existing.chunk_size
    # windows of files read per dask.compute: at most WINDOW_FILES (bounded memory in
    # flight); rows are still written in whole chunks of the store
    window = min(chunk, max(WINDOW_FILES, cfg.files_per_task))
    windows = [files[k : k + window] for k in range(0, len(files), window)]

    task = dask.delayed(process_file_batch, name="lamost-batch", pure=False)
    run_id = uuid.uuid4().hex
    # shared slots: a ring of WINDOWS_AHEAD + 1 regions, one per window in flight. Window
    # w + WINDOWS_AHEAD + 1 (same region as w) is submitted only after window w was
    # assembled (its rows copied out), see _run_windows
    n_regions = WINDOWS_AHEAD + 1
    region = shared.n_slots // n_regions if shared is not None else 0
    submitted = itertools.count()

    def compute(paths: list[str], first_slot: int | None = None) -> list[dict[str, Any]]:
        # opaque FileBatch arguments and explicit keys: dask neither traverses nor
        # tokenizes (pickles) them
        step = cfg.files_per_task
        tasks = [task(FileBatch(paths[k : k + step],
                                {p: known[p] for p in paths[k : k + step] if p in known},
                                None if first_slot is None else (shared.key, first_slot + k),
                                cfg.max_decompressed_bytes),
                      dask_key_name=f"lamost-batch-{run_id}-{paths[k]}")
                 for k in range(0, len(paths), step)]
        return [attach_shared_rows(r) for r in dask.compute(*tasks, **kwargs)]

    def submit(paths: list[str]) -> concurrent.futures.Future[list[dict[str, Any]]]:
        w = next(submitted)
        first = (w % n_regions) * region if shared is not None and len(paths) <= region \
            else None
        return threads.submit(compute, paths, first)

    # the workers start reading while the driver loads the table and prepares the store
    pending = [submit(w) for w in windows[:WINDOWS_AHEAD]]
    if isinstance(table, StarTable) or table is None:
        star_table = table
    else:
        star_table = StarTable.from_file(table, column_map, cfg.gaia_release,
                                         cfg.match_radius_arcsec)
    if star_table is not None and cfg.strict and star_table.problems:
        raise IngestError(f"{star_table.source}: {', '.join(star_table.problems)} (--strict)")
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    attrs = {
        "title": "obpipe survey cube ingested from LAMOST FITS files",
        "obpipe_version": __version__,
        "producer": PRODUCER,
        "created_utc": now,
        "ingest_config": json.dumps(asdict(cfg)),
        "flux_unit": store.FLUX_UNIT,
        "wavelength_frame": "vacuum, rest frame (shifted by rv = c z from the FITS header)",
        "resampling": "flux-conserving rebinning, ivar propagated, masks never interpolated",
    }
    state = _open_or_create(out, existing, cfg, attrs)
    root = zarr.open_group(out, mode="r+", zarr_format=store.ZARR_FORMAT)
    writer = _Writer(out, state.n_rows + len(files), state.n_report + len(files))
    counts = {"ingested": 0, "flagged": 0, "skipped": 0, "duplicate": 0, "already": 0}
    _run_windows(windows, compute, pending, submit, state, star_table, cfg, writer, chunk,
                 counts, _after_append)
    writer.resize(state.n_rows, state.n_report)
    _finalize(out, cfg.group_radius_arcsec)
    report = report_frame(out)
    csv = report_csv or default_report_csv(out)
    if csv:
        report.to_csv(csv, index=False)
    table_issues = star_table.issues if star_table is not None else []
    if state.n_rows == 0:  # nothing a stage could run on: not complete, and say why
        reasons = report.loc[~report["status"].isin(ROW_STATUSES), "reason"]
        top = reasons.str.split(" [(]").str[0].value_counts().head(5)
        why = "; ".join(f"{n} x {r}" for r, n in top.items()) or "no input lines"
        raise IngestError(f"{out}: no spectrum ingested from {len(files)} files ({why}); "
                          f"the store is left incomplete; per-file reasons in "
                          f"{csv or 'its ingest_report group'}")
    runs = list(root.attrs.get("ingest_runs", []))
    runs.append({"finished_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                 "inputs": [os.fspath(i) for i in inputs][:100],
                 "table": getattr(star_table, "source", None), "append": bool(append),
                 "table_issues": table_issues,
                 **{k: int(v) for k, v in counts.items()}})
    store.update_attrs(out, {"ingest_runs": runs})
    store.mark_complete(out)
    summary = {"store": out, "report_csv": csv, "n_files": len(files), "n_rows": state.n_rows,
               **counts, "table_issues": table_issues}
    log.info("ingest done: %s", summary)
    return summary


# ------------------------------------------------------------------ mock round trip


def export_fits(
    cube: str,
    out_dir: str,
    layout: str = "image",
    gzip: bool = False,
    table_path: str | None = None,
    rows: slice | None = None,
) -> tuple[list[str], str]:
    """Write a cube (e.g. a simulated survey) as LAMOST-layout FITS files plus its star table.

    The table has one row per spectrum, keyed by ``obsid``, with Gaia archive and
    2MASS column names (``source_id``, ``parallax`` ..., ``j_m``, ``j_msigcom`` ...)
    and survey parameters. Ingesting the files with the table gives back the
    cube's spectra and columns (to float32 precision). Returns (files, table).
    """
    ds = store.open_cube(cube)
    if rows is not None:
        ds = ds.isel(spec=rows)
    os.makedirs(out_dir, exist_ok=True)
    cols = {name: ds[name].values for name in store.SPECTRUM_COLUMNS if name in ds}
    files = []
    chunk = 500
    for lo in range(0, ds.sizes["spec"], chunk):
        part = ds.isel(spec=slice(lo, lo + chunk))
        flux, ivar, mask = part["flux"].values, part["ivar"].values, part["mask"].values
        for k in range(flux.shape[0]):
            i = lo + k
            name = str(cols["fitsname"][i]) + (".gz" if gzip else "")
            path = os.path.join(out_dir, name)
            meta = {c: cols[c][i] for c in ("specid", "fitsname", "ra", "dec", "mjd", "snr_g",
                                             "rv", "rv_err")}
            meta["obsid"] = int(meta.pop("specid"))
            write_lamost_fits(path, flux[k], ivar[k], mask[k], meta, layout=layout,
                              overwrite=True)
            files.append(path)
    table_path = table_path or os.path.join(out_dir, "stars.ecsv")
    write_star_table(cols, table_path)
    return files, table_path


#: cube name -> archive name used by :func:`write_star_table`
ARCHIVE_NAMES = {"gaia_id": "source_id", "J": "j_m", "J_err": "j_msigcom", "H": "h_m",
                 "H_err": "h_msigcom", "Ks": "ks_m", "Ks_err": "ks_msigcom"}


def write_star_table(cols: Mapping[str, np.ndarray], path: str) -> None:
    """Write per-spectrum table columns with Gaia archive / 2MASS names (format from suffix)."""
    from astropy.table import Table

    from obpipe.io.tables import table_format

    t = Table()
    t["obsid"] = np.asarray(cols["specid"], np.int64)
    t["ra"] = np.asarray(cols["ra"], np.float64)
    t["dec"] = np.asarray(cols["dec"], np.float64)
    for name in TABLE_COLUMNS:
        if name in cols:
            values = np.asarray(cols[name])
            if values.dtype.kind in "OT":  # object / numpy StringDType from zarr
                values = np.array([str(v) for v in values.tolist()], dtype="U")
            t[ARCHIVE_NAMES.get(name, name)] = values
    t.write(path, format=table_format(path), overwrite=True)
