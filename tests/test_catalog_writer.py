"""The catalog's FITS / ECSV files streamed block by block with astropy
(obpipe.io.catalog_writer): the same files as astropy's whole-table writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.table import Table

from obpipe import catalog as catalog_mod
from obpipe.catalog import CATALOG_COLUMNS, fits_provenance_cards, read_catalog_provenance
from obpipe.io.catalog_writer import TableStreamWriter

META = {"obpipe_version": "0.test", "obpipe_config": json.dumps({"a": 1, "b": "x" * 200}),
        "obpipe_uses_simulated_models": "true"}


def _catalog_table(n: int, seed: int) -> pa.Table:
    """``n`` rows in the catalog's schema: every column, NaN / null floats, -9 flags."""
    rng = np.random.default_rng(seed)
    lengths = {name: 24 for name, c in CATALOG_COLUMNS.items() if c.dtype == "str"}
    schema = catalog_mod._arrow_schema(CATALOG_COLUMNS, lengths, META)
    cols = {}
    for name, c in CATALOG_COLUMNS.items():
        if c.dtype == "str":
            cols[name] = pa.array([f"{name[:4]}-{seed}-{i}" for i in range(n)])
        elif c.dtype.startswith("float"):
            v = rng.normal(0, 10, n).astype(c.dtype)
            v[::7] = np.nan  # NaN values
            mask = np.zeros(n, bool)
            mask[3::11] = True  # and nulls (read back as NaN)
            cols[name] = pa.array(v, mask=mask, from_pandas=False)
        else:
            info = np.iinfo(c.dtype)
            v = rng.integers(max(info.min, -9), min(info.max, 1000), n).astype(c.dtype)
            v[::5] = -9
            cols[name] = pa.array(v)
    return pa.table(cols, schema=schema)


def _native(dtype: np.dtype) -> np.dtype:
    """The dtype in native byte order (FITS columns read back big-endian)."""
    return dtype.newbyteorder("=")


def _stream(base: Path, blocks: list[pa.Table], n_rows: int | None = None,
            formats: tuple[str, ...] = ("fits", "ecsv"), batch_rows: int = 1) -> None:
    """Stream ``blocks``; ``batch_rows`` 1 (default here): astropy renders every block
    alone, the path that a real catalog's blocks take after the first batch."""
    n = sum(b.num_rows for b in blocks) if n_rows is None else n_rows
    with TableStreamWriter(str(base), CATALOG_COLUMNS, n, formats,
                           fits_provenance_cards(META), batch_rows=batch_rows) as w:
        for b in blocks:
            w.write(b)


def _whole_table_files(parquet_file: Path, out: Path) -> None:
    """What astropy writes from the whole table (TCOMMn, EXTNAME, int16 flags, cards)."""
    table = Table.read(parquet_file, format="parquet")
    hdu = fits.table_to_hdu(catalog_mod.fits_flag_columns(table))
    for i, name in enumerate(table.colnames, start=1):
        hdu.header[f"TCOMM{i}"] = CATALOG_COLUMNS[name].description[:68]
    hdu.header["EXTNAME"] = "CATALOG"
    hdu.header.extend(fits_provenance_cards(read_catalog_provenance(str(parquet_file))))
    hdu.writeto(out.with_suffix(".fits"))
    table.write(out.with_suffix(".ecsv"), format="ascii.ecsv")


@pytest.mark.parametrize("batch_rows", [1, 100, 8192])
def test_streamed_blocks_equal_the_whole_table_written_by_astropy(
        tmp_path: Path, batch_rows: int) -> None:
    """Every block alone, blocks gathered (37 + 1 + 120 rows, then 5) and all at once."""
    blocks = [_catalog_table(n, seed) for seed, n in enumerate((37, 1, 120, 5))]
    _stream(tmp_path / "cat", blocks, batch_rows=batch_rows)
    whole = pa.concat_tables(blocks)
    pq.write_table(whole, tmp_path / "cat.parquet")
    _whole_table_files(tmp_path / "cat.parquet", tmp_path / "ref")
    for fmt in ("fits", "ecsv"):
        assert (tmp_path / f"cat.{fmt}").read_bytes() == \
            (tmp_path / f"ref.{fmt}").read_bytes(), fmt
    assert not list(tmp_path.glob("*.partial"))


def test_fits_read_back_has_every_column_unit_null_and_the_provenance(
        tmp_path: Path) -> None:
    blocks = [_catalog_table(n, seed) for seed, n in enumerate((50, 64))]
    _stream(tmp_path / "cat", blocks, formats=("fits",))
    whole = pa.concat_tables(blocks)
    back = Table.read(tmp_path / "cat.fits", hdu=1)
    assert back.colnames == list(CATALOG_COLUMNS)
    for name, c in CATALOG_COLUMNS.items():
        col, ref = back[name], whole.column(name)
        assert (col.unit or "") == (c.unit or ""), name
        if c.dtype == "str":
            assert list(np.asarray(col).astype(str)) == ref.to_pylist(), name
        elif c.dtype.startswith("float"):
            assert _native(col.dtype) == np.dtype(c.dtype), name
            want = ref.to_numpy(zero_copy_only=False).astype(c.dtype)  # null -> NaN
            np.testing.assert_array_equal(np.asarray(col), want, err_msg=name)
            assert np.isnan(np.asarray(col)[3]), name  # the null
        else:  # int8 flags as int16 (FITS logical would turn -9 into True)
            want = np.dtype("int16") if c.dtype == "int8" else np.dtype(c.dtype)
            assert _native(col.dtype) == want, name
            np.testing.assert_array_equal(np.asarray(col), ref.to_numpy(), err_msg=name)
    header = fits.getheader(tmp_path / "cat.fits", 1)
    assert header["NAXIS2"] == whole.num_rows and header["EXTNAME"] == "CATALOG"
    assert header["TCOMM1"] == CATALOG_COLUMNS["specid"].description[:68]
    assert read_catalog_provenance(str(tmp_path / "cat.fits")) == META


def test_a_block_with_another_column_layout_is_refused(tmp_path: Path) -> None:
    first = _catalog_table(10, 0)
    second = _catalog_table(10, 1)
    # an integer column with a null: astropy's Parquet reader makes it float (TFORMn D),
    # the header says int16 (I)
    idx = second.schema.get_field_index("uniqflag")
    nulled = pa.array([None] + second.column(idx).to_pylist()[1:], pa.int16())
    second = second.set_column(idx, second.schema.field(idx), nulled)
    with pytest.raises(ValueError,
                       match=r"cat\.fits: rows 10-19 .*TFORM5: \[\d+, 'D'\] vs \[\d+, 'I'\]"):
        _stream(tmp_path / "cat", [first, second])
    assert not list(tmp_path.iterdir())  # the partial files are removed


def test_row_count_other_than_announced_raises_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="9 rows written, 10 announced"):
        _stream(tmp_path / "cat", [_catalog_table(9, 0)], n_rows=10)
    assert not (tmp_path / "cat.fits").exists()
    with pytest.raises(RuntimeError, match="more rows than the 10 announced"):
        _stream(tmp_path / "cat", [_catalog_table(9, 0), _catalog_table(2, 1)], n_rows=10)
    assert not list(tmp_path.iterdir())


def test_a_catalog_of_no_rows_is_a_valid_empty_table(tmp_path: Path) -> None:
    _stream(tmp_path / "cat", [_catalog_table(0, 0)], formats=("fits",))
    back = Table.read(tmp_path / "cat.fits", hdu=1)
    assert len(back) == 0 and back.colnames == list(CATALOG_COLUMNS)
