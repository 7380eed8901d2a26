"""FITS and ECSV catalog files written block by block with astropy (the paper's Table 1).

A catalog is made in blocks of rows (pyarrow tables with the catalog's schema, the
rows of one chunk of the cube); its FITS and ECSV files are streamed, one block in
memory at a time, and are the files astropy writes from ``Table.read`` of the whole
Parquet catalog:

* every block goes through astropy's own Parquet reader (an in-memory file: the same
  null -> NaN / masked and fixed-width string conversions as for the whole file) and
  ``astropy.io.fits.table_to_hdu``; astropy renders the block's rows;
* the file starts with the empty primary HDU and the first block's table header with
  ``NAXIS2`` = the announced number of rows (``Header.tostring``); each block's rows
  follow as astropy renders them (the data part of the block's HDU written to memory);
  the data is padded to a whole 2,880-byte FITS record at the end. A block whose
  column layout (``TFORMn``, ``TNULLn``, ``NAXIS1``, ...) differs from the first
  block's is refused with a clear error, never written.
  (:class:`astropy.io.fits.StreamingHDU` does the same bookkeeping but opens its file
  in append mode, which fsspec's object stores -- ``s3://``, ``memory://`` -- lack;
  the catalogs are written there too);
* the ECSV file is the first block's ECSV followed by the data lines of the others.

Int8 flag columns are written as 16-bit integers (:func:`fits_flag_columns`).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from obpipe.io import store

log = logging.getLogger(__name__)

#: header keywords (with the column number appended, or alone) that fix a binary
#: table's row layout and the meaning of its bytes: every block must agree on them
_LAYOUT_KEYS = ("TTYPE", "TFORM", "TNULL", "TSCAL", "TZERO", "TDIM")
#: rows gathered from the blocks before astropy renders them: astropy's table, column
#: and header objects cost the same for every block however few its rows (~0.1 s for the
#: catalog's ~190 columns), so the blocks of a 30k-row catalog (2,000 rows each) are
#: rendered 8,192 rows at a time (~12 MB of catalog rows in memory; the files do not
#: change)
BATCH_ROWS = 8192
#: bytes of a FITS record; the empty primary HDU astropy writes is one record
_FITS_BLOCK = 2880
_PRIMARY_BYTES = _FITS_BLOCK


def fits_flag_columns(table: Any) -> Any:
    """``table`` with its int8 flag columns (``binary_flag``, ``em_flag``, ...) as int16
    for FITS: astropy writes int8 as FITS logical (T/F), which would read -9 back as
    True; as 16-bit integers (TFORM I) -9 / 0 / 1 survive."""
    from astropy.table import Column

    out = table.copy(copy_data=False)
    for name in out.colnames:
        col = out[name]
        if col.dtype == np.int8:
            out[name] = Column(np.asarray(col).astype(np.int16), name=name, unit=col.unit,
                               description=col.description)
    return out


def _row_layout(header: Any) -> dict[str, Any]:
    """The cards of a binary-table header that fix its row layout (see _LAYOUT_KEYS)."""
    n = int(header["TFIELDS"])
    out: dict[str, Any] = {"NAXIS1": header["NAXIS1"], "TFIELDS": n,
                           "PCOUNT": header.get("PCOUNT", 0)}
    for i in range(1, n + 1):
        for key in _LAYOUT_KEYS:
            if f"{key}{i}" in header:
                out[f"{key}{i}"] = header[f"{key}{i}"]
    return out


class TableStreamWriter:
    """``NAME.fits`` (and ``NAME.ecsv``) written block by block with astropy, the files
    astropy writes from ``Table.read(NAME.parquet)`` of the whole table (see the module
    docstring).

    ``columns``: name -> column with a ``description`` (``TCOMMn``, cut to 68
    characters); ``n_rows``: the number of rows the blocks will hold in all (the FITS
    header announces it; closing with another count raises); ``header_cards``: cards
    appended to the FITS table header after ``EXTNAME`` (the run's provenance,
    :func:`obpipe.catalog.fits_provenance_cards`). Files are written as
    ``NAME.<fmt>.partial`` and renamed when complete; removed on an exception.
    Memory: the blocks are rendered ``batch_rows`` (:data:`BATCH_ROWS`) rows at a time
    (a larger block alone; 1: every block alone).
    """

    def __init__(self, base: str, columns: Mapping[str, Any], n_rows: int,
                 formats: Sequence[str], header_cards: Sequence[tuple[str, Any, str]] = (),
                 batch_rows: int = BATCH_ROWS) -> None:
        self.base = base
        self.header_cards = list(header_cards)
        self.columns = columns
        self.n_rows = int(n_rows)
        self.fits = "fits" in formats
        self.ecsv = "ecsv" in formats
        self.rows = 0
        self._fh: dict[str, Any] = {}
        self._data_bytes = -1  # FITS data bytes written; -1 before the header
        self._layout: dict[str, Any] = {}
        self._schema: pa.Schema | None = None  # the blocks' schema (seen by write)
        self._lean = False  # read blocks without the table_meta_yaml (_astropy_table)
        self._pending: list[pa.Table] = []  # blocks not yet rendered (< BATCH_ROWS rows)
        self._pending_rows = 0
        self.batch_rows = int(batch_rows)

    @property
    def files(self) -> list[str]:
        return [self.base + "." + f for f, on in (("fits", self.fits), ("ecsv", self.ecsv))
                if on]

    def __enter__(self) -> TableStreamWriter:
        for fmt in ("fits", "ecsv"):
            if getattr(self, fmt):
                self._fh[fmt] = store.open_file(self.base + f".{fmt}.partial", "wb")
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self._flush()
        if exc_type is None and "fits" in self._fh and self._data_bytes < 0 \
                and self._schema is not None:  # no rows: the header alone
            self._start_fits(self._hdu(self._astropy_table(self._schema.empty_table())))
        if exc_type is None and self._data_bytes > 0:  # pad to whole FITS records
            self._fh["fits"].write(b"\0" * (-self._data_bytes % _FITS_BLOCK))
        for fh in self._fh.values():
            fh.close()
        if exc_type is not None:
            for fmt in self._fh:
                with contextlib.suppress(OSError):
                    store.remove(self.base + f".{fmt}.partial")
            return
        if self.rows != self.n_rows:
            raise RuntimeError(f"{self.base}: {self.rows} rows written, {self.n_rows} "
                               "announced in the FITS header")
        for fmt in self._fh:
            store.replace(self.base + f".{fmt}.partial", self.base + f".{fmt}")

    def _astropy_table(self, block: pa.Table) -> Any:
        """``block`` as astropy reads it from a Parquet file. After the first block the
        ``table_meta_yaml`` metadata (units, descriptions: header only) is left out when
        no column has a display ``format`` (which would change the ECSV data lines):
        the values read do not depend on it, and parsing it per block took ~40 % of the
        writing time."""
        from astropy.table import Table

        if self._lean and block.schema.metadata:
            meta = {k: v for k, v in block.schema.metadata.items()
                    if k != b"table_meta_yaml"}
            block = block.replace_schema_metadata(meta)
        buf = io.BytesIO()
        pq.write_table(block, buf)
        buf.seek(0)
        return Table.read(buf, format="parquet")

    def write(self, block: pa.Table) -> None:
        """Append the rows of ``block`` (a pyarrow table with the catalog's schema);
        rendered once ``batch_rows`` rows are pending, or at the end."""
        self._schema = block.schema
        if not self._fh or block.num_rows == 0:
            self.rows += block.num_rows
            return
        self._pending.append(block)
        self._pending_rows += block.num_rows
        if self._pending_rows >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        """Render and write the pending blocks (one astropy table)."""
        if not self._pending:
            return
        block = (self._pending[0] if len(self._pending) == 1
                 else pa.concat_tables(self._pending))
        self._pending, self._pending_rows = [], 0
        table = self._astropy_table(block)
        if self.fits:
            self._write_fits(table)
        if self.ecsv:
            self._write_ecsv(table)
        self.rows += block.num_rows
        self._lean = all(col.info.format is None for col in table.columns.values())

    def _hdu(self, table: Any, rows_only: bool = False) -> Any:
        """The block as astropy's binary-table HDU, with TCOMMn, EXTNAME and the cards
        (``rows_only``: without them, for a block whose header is not written)."""
        from astropy.io import fits

        hdu = fits.table_to_hdu(fits_flag_columns(table))
        if rows_only:
            return hdu
        for i, name in enumerate(table.colnames, start=1):
            hdu.header[f"TCOMM{i}"] = self.columns[name].description[:68]
        hdu.header["EXTNAME"] = "CATALOG"
        hdu.header.extend(self.header_cards)
        return hdu

    def _start_fits(self, hdu: Any) -> None:
        """The empty primary HDU and the table header (``NAXIS2`` = all rows)."""
        from astropy.io import fits

        header = hdu.header.copy()
        header["NAXIS2"] = self.n_rows
        self._layout = _row_layout(header)
        fh = self._fh["fits"]
        fh.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
        fh.write(header.tostring().encode("ascii"))
        self._data_bytes = 0

    def _write_fits(self, table: Any) -> None:
        from astropy.io import fits

        hdu = self._hdu(table, rows_only=self._data_bytes >= 0)
        if self._data_bytes < 0:
            self._start_fits(hdu)
        else:
            layout = _row_layout(hdu.header)
            if layout != self._layout:
                diff = sorted(k for k in set(layout) | set(self._layout)
                              if layout.get(k) != self._layout.get(k))
                raise ValueError(
                    f"{self.base}.fits: rows {self.rows}-{self.rows + len(table) - 1} have "
                    f"another FITS column layout than the first block ({', '.join(diff)}: "
                    f"{[layout.get(k) for k in diff]} vs {[self._layout.get(k) for k in diff]})"
                )
        # astropy renders the rows: the data part of this block's HDU written alone
        buf = io.BytesIO()
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
        raw = buf.getbuffer()
        offset = _PRIMARY_BYTES + len(hdu.header.tostring())
        nbytes = int(hdu.header["NAXIS1"]) * len(table)
        if len(raw) != offset + nbytes + (-nbytes % _FITS_BLOCK):
            raise RuntimeError(f"{self.base}.fits: astropy wrote {len(raw)} bytes for a "
                               f"{offset}-byte header and {nbytes} bytes of rows")
        if self._data_bytes + nbytes > int(self._layout["NAXIS1"]) * self.n_rows:
            raise RuntimeError(f"{self.base}.fits: more rows than the {self.n_rows} "
                               "announced in the FITS header")
        self._fh["fits"].write(raw[offset: offset + nbytes])
        self._data_bytes += nbytes

    def _write_ecsv(self, table: Any) -> None:
        out = io.StringIO()
        table.write(out, format="ascii.ecsv")
        text = out.getvalue()
        if self.rows > 0:  # data lines only: drop the '#' header and the column names
            lines = text.splitlines(keepends=True)
            first = next(i for i, ln in enumerate(lines) if not ln.startswith("#"))
            text = "".join(lines[first + 1:])
        self._fh["ecsv"].write(text.encode("utf-8"))
