"""Throughput and peak memory of ``obpipe ingest`` against a plain astropy loop.

Makes ``--n-files`` (default 10,000) mock LAMOST FITS files (gzipped, image layout)
from a small simulated survey (spectra reused with new obsids), then times

* ``obpipe ingest`` (Dask, ``--workers`` processes, default 2), on N/4 and N files
  to show memory flat with the number of files;
* a plain single-process loop: ``astropy.io.fits.open`` each file, ``np.interp``
  flux and ivar onto the grid, one ``to_zarr`` at the end (no masks, no table join,
  no report, no resume: the least a script does);

and prints files/s, the ratio, and the peak resident memory (process tree, sampled
every 0.05 s).

    python benchmarks/ingest.py                    # 10,000 files, 2 workers
    python benchmarks/ingest.py --n-files 2000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil

PLAIN_LOOP = r"""
import glob, sys
import numpy as np, xarray as xr
from astropy.io import fits
files = sorted(glob.glob(sys.argv[1] + "/*.fits.gz"))
grid = 10 ** (3.5682 + 1e-4 * np.arange(3909))
flux = np.zeros((len(files), grid.size), np.float32)
ivar = np.zeros((len(files), grid.size), np.float32)
obsid = np.zeros(len(files), np.int64)
for k, f in enumerate(files):
    with fits.open(f) as hdul:
        d, h = hdul[0].data, hdul[0].header
        rest = d[2].astype(np.float64) / (1 + h["Z"])
        flux[k] = np.interp(grid, rest, d[0], left=0, right=0)
        ivar[k] = np.interp(grid, rest, d[1], left=0, right=0)
        obsid[k] = h["OBSID"]
xr.Dataset({"flux": (("spec", "wave"), flux), "ivar": (("spec", "wave"), ivar),
            "specid": ("spec", obsid)}).to_zarr(sys.argv[2], mode="w", consolidated=False,
                                                 zarr_format=3)
"""


def _watch(proc: psutil.Process, stop: threading.Event, out: list[float]) -> None:
    peak = 0.0
    while not stop.is_set():
        rss = 0.0
        try:
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        peak = max(peak, rss)
        time.sleep(0.05)
    out.append(peak)


def timed(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, peak = threading.Event(), []
    w = threading.Thread(target=_watch, args=(psutil.Process(proc.pid), stop, peak))
    w.start()
    out, err = proc.communicate()
    stop.set()
    w.join()
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed: {err.strip()[-2000:]}")
    return time.perf_counter() - t0, peak[0] / 2**20


def make_files(workdir: str, n_files: int) -> tuple[str, str]:
    """Mock FITS files + star table (cached in ``workdir``)."""
    from astropy.table import Table

    from obpipe.config import SimulationConfig
    from obpipe.ingest import write_star_table
    from obpipe.io import store
    from obpipe.io.lamost import write_lamost_fits
    from obpipe.simulate.survey import simulate_survey

    fits_dir = os.path.join(workdir, f"fits{n_files}")
    table = os.path.join(workdir, f"stars{n_files}.parquet")
    if os.path.exists(table):
        return fits_dir, table
    sim = os.path.join(workdir, "sim.zarr")
    if not os.path.exists(sim):
        simulate_survey(sim, SimulationConfig(n_stars=300, seed=1, chunk_size=500),
                        scheduler="threads")
    ds = store.open_cube(sim).load()
    n_spec = ds.sizes["spec"]
    os.makedirs(fits_dir, exist_ok=True)
    cols = {name: [] for name in store.SPECTRUM_COLUMNS}
    for k in range(n_files):
        i = k % n_spec
        obsid = int(ds["specid"].values[i]) + 1_000_000 * (k // n_spec)
        meta = {c: ds[c].values[i] for c in ("ra", "dec", "mjd", "snr_g", "rv", "rv_err")}
        meta.update(obsid=obsid, fitsname=f"spec-{obsid}.fits")
        write_lamost_fits(os.path.join(fits_dir, f"spec-{obsid}.fits.gz"), ds["flux"].values[i],
                          ds["ivar"].values[i], ds["mask"].values[i], meta)
        for name in cols:
            cols[name].append(obsid if name == "specid" else ds[name].values[i])
    write_star_table({k: np.asarray(v) for k, v in cols.items()}, table)
    assert len(Table.read(table)) == n_files
    return fits_dir, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-files", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keep the mock files here between runs")
    args = ap.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="obpipe-bench-ingest-")
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    fits_dir, table = make_files(workdir, args.n_files)
    print(f"mock files ready in {time.perf_counter() - t0:.0f} s: {fits_dir}")
    files = sorted(os.listdir(fits_dir))
    quarter_dir = os.path.join(workdir, f"quarter{args.n_files}")
    if not os.path.exists(quarter_dir):
        os.makedirs(quarter_dir)
        for name in files[: len(files) // 4]:
            os.symlink(os.path.join(fits_dir, name), os.path.join(quarter_dir, name))

    rows = []
    for label, src, n in (("ingest N/4", quarter_dir, len(files) // 4),
                          ("ingest N", fits_dir, len(files))):
        out = os.path.join(workdir, "out.zarr")
        shutil.rmtree(out, ignore_errors=True)
        sec, mem = timed([sys.executable, "-m", "obpipe.cli", "ingest", src, "--table", table,
                          "--out", out, "--scheduler", "processes", "--workers",
                          str(args.workers), "--report", os.path.join(workdir, "r.csv")])
        rows.append((label, n, sec, mem))
    out = os.path.join(workdir, "plain.zarr")
    shutil.rmtree(out, ignore_errors=True)
    sec, mem = timed([sys.executable, "-c", PLAIN_LOOP, fits_dir, out])
    rows.append(("plain astropy loop N", len(files), sec, mem))
    print(f"{'run':24s} {'files':>7s} {'seconds':>8s} {'files/s':>8s} {'peak MB':>8s}")
    for label, n, sec, mem in rows:
        print(f"{label:24s} {n:7d} {sec:8.1f} {n / sec:8.0f} {mem:8.0f}")
    ratio = (rows[1][1] / rows[1][2]) / (rows[2][1] / rows[2][2])
    print(f"ingest ({args.workers} workers) / plain loop throughput ratio: {ratio:.2f}x")
    print(f"cores: {os.cpu_count()}")


if __name__ == "__main__":
    main()
