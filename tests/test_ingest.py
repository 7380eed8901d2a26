"""``obpipe ingest``: round trip with the mock, bad files, duplicates, resume, append."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.table import Table

from obpipe.cli import main
from obpipe.config import SimulationConfig
from obpipe.ingest import IngestConfig, IngestError, export_fits, ingest, report_frame
from obpipe.io import store
from obpipe.io.lamost import read_lamost, write_lamost_fits
from obpipe.simulate.survey import simulate_survey

CFG = IngestConfig(chunk_size=16, files_per_task=5)
COMPARE = ("flux", "ivar", "mask", "specid", "fitsname", "ra", "dec", "mjd", "snr_g", "rv",
           "rv_err", "teff", "logg", "feh", "gaia_id", "gaia_release", "parallax",
           "parallax_error", "ruwe", "astrometric_params_solved", "phot_g_mean_mag", "J",
           "Ks", "Ks_err", "g", "star_id")


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("ingest")
    sim = str(root / "sim.zarr")
    simulate_survey(sim, SimulationConfig(n_stars=24, seed=5, chunk_size=16),
                    scheduler="threads")
    n = store.open_cube(sim).sizes["spec"]
    half = n // 2
    files_a, table = export_fits(sim, str(root / "fits"), layout="image", gzip=True,
                                 rows=slice(0, half), table_path=str(root / "a.ecsv"))
    files_b, _ = export_fits(sim, str(root / "fits"), layout="bintable", gzip=False,
                             rows=slice(half, n), table_path=str(root / "b.ecsv"))
    full = Table.read(sim.replace("sim.zarr", "a.ecsv"))
    from astropy.table import vstack

    table = str(root / "stars.parquet")
    vstack([full, Table.read(str(root / "b.ecsv"))]).write(table)
    return {"root": root, "sim": sim, "files": sorted(files_a + files_b), "table": table,
            "dir": str(root / "fits")}


def _by_specid(path: str) -> xr.Dataset:
    ds = store.open_cube(path)
    return ds.isel(spec=np.argsort(ds["specid"].values)).load()


def _assert_same(a: xr.Dataset, b: xr.Dataset, names: tuple[str, ...] = COMPARE) -> None:
    assert a.sizes["spec"] == b.sizes["spec"]
    for name in names:
        x, y = a[name].values, b[name].values
        if x.dtype.kind in "OTU":
            assert [str(v) for v in x] == [str(v) for v in y], name
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_simulate_fits_ingest_gives_the_simulated_cube(mock: dict, tmp_path: Path) -> None:
    out = str(tmp_path / "ing.zarr")
    summary = ingest([mock["dir"]], mock["table"], out, config=CFG, scheduler="threads")
    assert summary["n_rows"] == len(mock["files"]) and summary["skipped"] == 0
    _assert_same(_by_specid(mock["sim"]), _by_specid(out))
    rep = report_frame(out)
    assert set(rep["status"]) <= {"ingested", "flagged"}
    flagged = rep[rep["status"] == "flagged"]
    assert set(flagged["reason"]) <= {"negative_parallax"}
    csv = pd.read_csv(tmp_path / "ing.ingest_report.csv")
    assert len(csv) == len(mock["files"])
    uniq = store.open_cube(out)["uniqflag"].values
    assert set(np.unique(uniq)) >= {1}


def _bad_files(d: Path, good: Path) -> dict[str, str]:
    """Every kind of bad input next to good files; returns name -> expected status."""
    raw = good.read_bytes()
    spec = read_lamost(good)
    (d / "truncated.fits").write_bytes(raw[: len(raw) // 3])
    (d / "notfits.fits").write_text("SIMPLE? no.\n" * 300)
    from astropy.io import fits

    fits.PrimaryHDU(np.ones((3, 100), np.float32)).writeto(d / "shape.fits")
    fits.PrimaryHDU(np.ones((5, 3909), np.float32)).writeto(d / "nowave.fits")
    base = {"ra": spec.meta["ra"], "dec": spec.meta["dec"], "mjd": 58000, "snr_g": 20.0,
            "rv": 10.0, "rv_err": 2.0}
    g = np.ones(3909, np.float32)
    m = np.zeros(3909, np.uint8)
    write_lamost_fits(d / "nanflux.fits", g * np.nan, g, m,
                      {**base, "obsid": 900000001, "fitsname": "nanflux.fits"})
    write_lamost_fits(d / "zeroivar.fits", g, g * 0, m,
                      {**base, "obsid": 900000002, "fitsname": "zeroivar.fits"})
    write_lamost_fits(d / "offgrid.fits", g, g, m,
                      {**base, "obsid": 900000003, "fitsname": "offgrid.fits"},
                      wave_rest_aa=10 ** (4.3 + 1e-4 * np.arange(3909)))
    write_lamost_fits(d / "nomatch.fits", g, g, m,
                      {**base, "obsid": 900000004, "fitsname": "nomatch.fits"})
    # same obsid as the good file, other content
    write_lamost_fits(d / "zz_dupobsid.fits", g * 2, g, m,
                      {**base, "obsid": spec.meta["obsid"], "fitsname": "zz_dupobsid.fits"})
    shutil.copy(good, d / "zz_copy_of_good.fits.gz")  # same bytes
    return {"truncated.fits": "skipped", "notfits.fits": "skipped", "shape.fits": "skipped",
            "nowave.fits": "skipped", "nanflux.fits": "flagged", "zeroivar.fits": "flagged",
            "offgrid.fits": "flagged", "nomatch.fits": "flagged", "zz_dupobsid.fits": "duplicate",
            "zz_copy_of_good.fits.gz": "duplicate"}


def test_bad_inputs_each_get_a_report_line_and_good_files_all_land(
    mock: dict, tmp_path: Path
) -> None:
    d = tmp_path / "in"
    shutil.copytree(mock["dir"], d)
    good = Path(sorted(d.glob("*.fits.gz"))[0])
    expected = _bad_files(d, good)
    out = str(tmp_path / "bad.zarr")
    # through the command line, with a negative parallax in the table
    t = Table.read(mock["table"])
    t["parallax"][0] = -0.3
    table = str(tmp_path / "stars.fits")
    t.write(table)
    rc = main(["ingest", str(d), "--table", table, "--out", out, "--scheduler", "threads",
               "--chunk-size", "16"])
    assert rc == 0
    rep = report_frame(out).set_index("path")
    assert len(rep) == len(mock["files"]) + len(expected)
    for name, status in expected.items():
        line = rep.loc[str(d / name)]
        assert line["status"] == status, (name, line["reason"])
        assert line["reason"], name
    reasons = {name: rep.loc[str(d / name), "reason"] for name in expected}
    assert "truncated" in reasons["truncated.fits"]
    assert "not a FITS file" in reasons["notfits.fits"]
    assert "wrong shape" in reasons["shape.fits"]
    assert "missing wavelength" in reasons["nowave.fits"]
    assert "all_nan_flux" in reasons["nanflux.fits"]
    assert "zero_ivar" in reasons["zeroivar.fits"]
    assert "off_grid" in reasons["offgrid.fits"]
    assert "no_table_match" in reasons["nomatch.fits"]
    assert "already ingested from" in reasons["zz_dupobsid.fits"]
    assert "same content as" in reasons["zz_copy_of_good.fits.gz"]
    neg = rep[rep["obsid"] == int(t["obsid"][0])]
    assert "negative_parallax" in neg["reason"].iloc[0]
    # every good file has its row, exactly once; flagged rows carry their flags
    ds = store.open_cube(out)
    specids = list(ds["specid"].values)
    assert len(specids) == len(set(specids)) == len(mock["files"]) + 4
    sim = _by_specid(mock["sim"])
    got = ds.isel(spec=[specids.index(s) for s in sim["specid"].values]).load()
    _assert_same(sim, got, ("flux", "ivar", "mask", "specid", "gaia_id"))
    flags = dict(zip(ds["fitsname"].values, ds["ingest_flags"].values, strict=True))
    assert flags["nomatch.fits"] == "no_table_match"


def test_strict_stops_at_the_first_bad_file(mock: dict, tmp_path: Path) -> None:
    d = tmp_path / "in"
    shutil.copytree(mock["dir"], d)
    (d / "bad.fits").write_text("not fits")
    with pytest.raises(IngestError, match="bad.fits: skipped: not a FITS file"):
        ingest([str(d)], mock["table"], str(tmp_path / "s.zarr"),
               config=IngestConfig(chunk_size=200, strict=True), scheduler="threads")


def test_table_problems_flag_rows_or_stop_in_strict_mode(mock: dict, tmp_path: Path) -> None:
    t = Table.read(mock["table"])
    t.remove_columns(["parallax", "ks_m"])
    table = str(tmp_path / "noplx.csv")
    t.write(table)
    files = mock["files"][:3]
    out = str(tmp_path / "t.zarr")
    ingest(files, table, out, config=CFG, scheduler="threads")
    flags = set(store.open_cube(out)["ingest_flags"].values)
    assert flags == {"table_has_no_parallax,table_has_no_Ks"}
    with pytest.raises(IngestError, match="table_has_no_parallax"):
        ingest(files, table, str(tmp_path / "t2.zarr"), scheduler="threads",
               config=IngestConfig(strict=True))


class _Killed(Exception):
    pass


def test_rerun_after_kill_equals_uninterrupted_run(mock: dict, tmp_path: Path) -> None:
    clean = str(tmp_path / "clean.zarr")
    ingest([mock["dir"]], mock["table"], clean, config=CFG, scheduler="threads")

    def kill(window: int) -> None:
        if window == 1:  # rows of window 1 written, report not committed
            raise _Killed

    killed = str(tmp_path / "killed.zarr")
    with pytest.raises(_Killed):
        ingest([mock["dir"]], mock["table"], killed, config=CFG, scheduler="threads",
               _after_append=kill)
    with pytest.raises(store.InvalidCubeError, match="not completely"):
        store.open_cube(killed)
    summary = ingest([mock["dir"]], mock["table"], killed, config=CFG, scheduler="threads")
    assert summary["already"] == CFG.chunk_size  # window 0 was committed
    a, b = store.open_cube(clean).load(), store.open_cube(killed).load()
    _assert_same(a, b, (*COMPARE, "uniqflag", "ingest_flags"))
    pd.testing.assert_frame_equal(report_frame(clean), report_frame(killed))
    # a complete store is not silently re-ingested
    with pytest.raises(IngestError, match="pass --append"):
        ingest([mock["dir"]], mock["table"], clean, config=CFG, scheduler="threads")


def test_append_adds_a_new_batch(mock: dict, tmp_path: Path) -> None:
    files = mock["files"]
    half = len(files) // 2
    out = str(tmp_path / "app.zarr")
    ingest(files[:half], mock["table"], out, config=CFG, scheduler="threads")
    summary = ingest(files, mock["table"], out, append=True, config=CFG, scheduler="threads")
    assert summary["already"] == half and summary["ingested"] + summary["flagged"] == \
        len(files) - half
    whole = str(tmp_path / "whole.zarr")
    ingest(files, mock["table"], whole, config=CFG, scheduler="threads")
    _assert_same(store.open_cube(whole).load(), store.open_cube(out).load(),
                 (*COMPARE, "uniqflag"))
    assert len(store.open_cube(out).attrs["ingest_runs"]) == 2


def test_real_lamost_files_with_index_table(shared_data: Path, tmp_path: Path) -> None:
    index = pd.read_csv(shared_data / "lamost_dr8" / "index.csv")
    table = tmp_path / "index.csv"
    index.to_csv(table, index=False)
    out = str(tmp_path / "real.zarr")
    summary = ingest([shared_data / "lamost_dr8", shared_data / "lamost_dr1"], str(table), out,
                     config=CFG, scheduler="threads")
    assert summary["n_rows"] == 44 and summary["skipped"] == 0
    ds = store.open_cube(out).load()
    rep = report_frame(out).set_index("obsid")
    dr8 = ds.isel(spec=np.flatnonzero(np.isin(ds["specid"].values, index["combined_obsid"])))
    assert dr8.sizes["spec"] == 34
    # repeat visits (GroupID) share one star_id; uniqflag 1 on the best S/N visit
    groups = index.set_index("combined_obsid").loc[dr8["specid"].values, "GroupID"].to_numpy()
    for gid in np.unique(groups):
        ids = set(dr8["star_id"].values[groups == gid])
        assert len(ids) == 1
    dr1 = ds.isel(spec=np.flatnonzero(~np.isin(ds["specid"].values, index["combined_obsid"])))
    assert all("no_obsid_in_header" in f for f in dr1["ingest_flags"].values)
    assert all("no_table_match" in f for f in dr1["ingest_flags"].values)
    assert set(rep["layout"]) == {"image", "image-subcontinuum"}


def test_forked_worker_processes_give_the_same_store(mock: dict, tmp_path: Path) -> None:
    files = mock["files"][:40]
    a, b = str(tmp_path / "threads.zarr"), str(tmp_path / "procs.zarr")
    ingest(files, mock["table"], a, config=CFG, scheduler="threads")
    import gc

    ingest(files, mock["table"], b, config=CFG, scheduler="processes", num_workers=2)
    # the objects frozen before the fork are handed back to the collector afterwards
    assert gc.get_freeze_count() == 0
    _assert_same(store.open_cube(a).load(), store.open_cube(b).load(),
                 (*COMPARE, "uniqflag", "ingest_flags"))
    pd.testing.assert_frame_equal(report_frame(a), report_frame(b))


def test_rerun_after_kill_with_rows_carried_between_windows(mock: dict, tmp_path: Path) -> None:
    """Bad files shift the rows off the chunk boundaries: the rows that do not fill a
    chunk wait for the next window; a kill then a re-run still gives the same store."""
    d = tmp_path / "in"
    d.mkdir()
    n_bad = 0
    for k, f in enumerate(mock["files"][:40]):
        shutil.copy(f, d / Path(f).name)
        if k % 7 == 3:
            (d / f"{Path(f).name}.bad.fits").write_text("not fits")
            n_bad += 1
    clean = str(tmp_path / "clean.zarr")
    ingest([str(d)], mock["table"], clean, config=CFG, scheduler="threads")

    def kill(window: int) -> None:
        if window == 2:
            raise _Killed

    killed = str(tmp_path / "killed.zarr")
    with pytest.raises(_Killed):
        ingest([str(d)], mock["table"], killed, config=CFG, scheduler="threads",
               _after_append=kill)
    committed = report_frame(killed)
    assert 0 < len(committed) < 32 and set(committed["row"][committed["row"] >= 0]) == \
        set(range(16))  # one whole chunk of rows, and only the files before its end
    ingest([str(d)], mock["table"], killed, config=CFG, scheduler="threads")
    a, b = store.open_cube(clean).load(), store.open_cube(killed).load()
    _assert_same(a, b, (*COMPARE, "uniqflag", "ingest_flags"))
    pd.testing.assert_frame_equal(report_frame(clean), report_frame(killed))
    assert (report_frame(clean)["status"] == "skipped").sum() == n_bad >= 5


def test_parquet_star_table_read_with_pyarrow_as_astropy_reads_it(tmp_path: Path) -> None:
    """Plain Parquet tables skip astropy.table (start-up) and give astropy's frame."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from obpipe.io.tables import _parquet_frame, _to_pandas, read_table, read_table_frame

    t = Table()
    t["obsid"] = np.arange(6, dtype=np.int64)
    t["ra"] = np.linspace(10.0, 11.0, 6)
    t["phot_g_mean_mag"] = np.linspace(9.0, 12.0, 6).astype(np.float32)
    t["astrometric_params_solved"] = np.full(6, 31, np.int16)
    t["has_rv"] = np.array([True, False] * 3)
    t["gaia_release"] = [" DR3", "DR2 ", "", "DR3", "DR3", "DR2"]
    t["coeffs"] = np.ones((6, 3))  # array-valued: not a star property, dropped
    plain = str(tmp_path / "plain.parquet")
    t.write(plain)
    fast = _parquet_frame(plain)
    assert fast is not None and "coeffs" not in fast
    pd.testing.assert_frame_equal(fast, _to_pandas(read_table(plain)))
    assert list(fast["gaia_release"]) == ["DR3", "DR2", "", "DR3", "DR3", "DR2"]

    # a Gaia archive export with nulls: ints and floats become NaN, text ""
    archive = str(tmp_path / "archive.parquet")
    pq.write_table(pa.table({"source_id": pa.array([1, None, 3], pa.int64()),
                             "parallax": pa.array([0.5, None, -0.1]),
                             "gaia_release": pa.array(["DR3", None, "DR2"])}), archive)
    frame = read_table_frame(archive)
    np.testing.assert_array_equal(frame["source_id"], [1.0, np.nan, 3.0])
    np.testing.assert_array_equal(frame["parallax"], [0.5, np.nan, -0.1])
    assert list(frame["gaia_release"]) == ["DR3", "", "DR2"]

    # astropy's own serialisation of masked columns: read by astropy
    masked = Table(t, masked=True)
    masked["ra"].mask[2] = True
    mpath = str(tmp_path / "masked.parquet")
    masked.write(mpath)
    assert _parquet_frame(mpath) is None
    assert np.isnan(read_table_frame(mpath)["ra"][2])


def test_ingest_runs_without_dask_array_sparse_or_numba(mock: dict, tmp_path: Path) -> None:
    """`obpipe ingest` (the CLI, scheduler set up included) never needs dask.array (it
    pulls in sparse and numba: ~0.5 s of imports per run) nor distributed; `import
    obpipe` still registers ds.obpipe,
    imported on first use.
    The store is Blosc-LZ4 compressed and opens as a cube."""
    import subprocess
    import sys

    out = str(tmp_path / "s.zarr")
    code = (
        "import sys\n"
        "from obpipe.cli import main\n"
        f"rc = main(['ingest', {mock['dir']!r}, '--table', {mock['table']!r}, '--out', {out!r},"
        " '--workers', '2'])\n"
        "heavy = [m for m in ('dask.array', 'sparse', 'numba', 'distributed')"
        " if m in sys.modules]\n"
        "import xarray as xr, obpipe\n"
        "acc = xr.Dataset().obpipe\n"
        "print(rc, heavy, type(acc).__name__, 'dask.array' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("\n")[-2] == "0 [] ObpipeAccessor True"
    ds = store.open_cube(out)
    assert ds.sizes["spec"] == len(mock["files"])
    assert ds["flux"].encoding["compressors"][0].to_dict()["name"] == "blosc"
    _assert_same(_by_specid(out), _by_specid(mock["sim"]))


def test_no_ingested_row_fails_with_the_reasons_and_leaves_the_store_incomplete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mock: dict
) -> None:
    d = tmp_path / "junk"
    d.mkdir()
    for k in range(3):
        (d / f"n{k}.fits").write_text("not a spectrum\n" * 300)
    out = str(tmp_path / "empty.zarr")
    rc = main(["ingest", str(d), "--table", mock["table"], "--out", out,
               "--scheduler", "threads"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "no spectrum ingested from 3 files" in err and "3 x not a FITS file" in err
    with pytest.raises(store.InvalidCubeError, match="not completely"):
        store.open_cube(out)
    assert set(pd.read_csv(tmp_path / "empty.ingest_report.csv")["status"]) == {"skipped"}


def test_oversized_gzip_file_is_skipped_with_a_reason(mock: dict, tmp_path: Path) -> None:
    import gzip

    d = tmp_path / "in"
    d.mkdir()
    for f in mock["files"][:3]:
        shutil.copy(f, d / Path(f).name)
    with gzip.open(d / "bomb.fits.gz", "wb", compresslevel=9) as fh:
        for _ in range(3):
            fh.write(bytes(1 << 20))
    out = str(tmp_path / "b.zarr")
    rc = main(["ingest", str(d), "--table", mock["table"], "--out", out, "--scheduler",
               "threads", "--max-decompressed-mib", "2"])
    assert rc == 0
    rep = report_frame(out).set_index("path")
    line = rep.loc[str(d / "bomb.fits.gz")]
    assert line["status"] == "skipped" and "above the limit of 2 MiB" in line["reason"]
    assert (rep["status"] != "skipped").sum() == 3
    assert IngestConfig().max_decompressed_mib == 64
    with pytest.raises(ValueError, match=r"max_decompressed_mib = nan: must be finite"):
        IngestConfig(max_decompressed_mib=float("nan")).validate()


def test_non_numeric_table_value_names_file_column_and_row(mock: dict, tmp_path: Path) -> None:
    t = Table.read(mock["table"])
    t["parallax"] = t["parallax"].astype(str)
    t["parallax"][4] = "abc"
    table = str(tmp_path / "typo.csv")
    t.write(table)
    with pytest.raises(ValueError) as err:
        ingest(mock["files"][:2], table, str(tmp_path / "t.zarr"), config=CFG,
               scheduler="threads")
    assert str(err.value) == (f"{table}: column 'parallax', row 5: 'abc' is not a number "
                              "(1 such rows)")
    # empty and "nan" cells are missing values, not errors
    t["parallax"][4] = ""
    t["parallax"][5] = "NaN"
    t.write(table, overwrite=True)
    ingest(mock["files"][:2], table, str(tmp_path / "t2.zarr"), config=CFG, scheduler="threads")


def test_duplicate_ids_and_negative_errors_are_flagged_and_summarised(
    mock: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from astropy.table import vstack

    t = Table.read(mock["table"])
    first = int(t["obsid"][0])
    t["parallax_error"][1] = -0.05
    t = vstack([t, t[:1]])  # obsid of row 0 repeated
    table = str(tmp_path / "dups.ecsv")
    t.write(table)
    out = str(tmp_path / "d.zarr")
    rc = main(["ingest", *mock["files"], "--table", table, "--out", out, "--scheduler",
               "threads"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    issues = summary["table_issues"]
    assert any("1 rows repeat a obsid" in i and str(first) in i for i in issues), issues
    assert any("1 rows with a negative parallax_error (e.g. row 2)" in i for i in issues)
    rep = report_frame(out).set_index("obsid")
    assert "duplicate_table_obsid" in rep.loc[first, "reason"]
    assert "negative_parallax_error" in rep.loc[int(t["obsid"][1]), "reason"]
    assert store.open_cube(out).attrs["ingest_runs"][-1]["table_issues"] == issues


def test_gaia_archive_table_joins_without_a_column_map(shared_data: Path) -> None:
    """The real Gaia DR3 x 2MASS table (archive column names) maps to the cube's names."""
    from obpipe.io.tables import StarTable

    path = shared_data / "hotstars_gaia_2mass" / "lamost_hot_stars_gaia_dr3_2mass.csv"
    t = StarTable.from_file(path)
    for name in ("gaia_id", "parallax", "parallax_error", "phot_g_mean_mag",
                 "phot_bp_mean_mag", "phot_rp_mean_mag", "ruwe", "J", "H", "Ks",
                 "phot_g_mean_mag_error", "fitsname"):
        assert name in t.frame, name
    assert t.join_key == "fitsname" and not t.problems and not t.issues
    assert t.frame["gaia_id"].dtype == np.int64
    assert t.frame["gaia_id"].iloc[0] == 182757146280176896  # no float round trip
    meta = pd.DataFrame({"obsid": [1], "fitsname": ["spec-56266-GAC080N32V1_sp09-083.fits"],
                         "ra": [np.nan], "dec": [np.nan]})
    joined, flags = t.join(meta)
    assert joined["Ks"][0] == pytest.approx(9.36) and flags == [[]]
