"""Throughput and peak memory of ``obpipe ingest`` against a plain astropy loop.

Makes ``--n-files`` (default 10,000) mock LAMOST FITS files (gzipped, image layout)
from a small simulated survey (spectra reused with new obsids), then times

* ``obpipe ingest`` (Dask, ``--workers`` processes, default 2), on N/4 and N files
  to show memory flat with the number of files;
* a plain single-process loop: ``astropy.io.fits.open`` each file, ``np.interp``
  flux and ivar onto the grid, one ``to_zarr`` at the end (no masks, no table join,
  no report, no resume: the least a script does);

or, with ``--baseline DIR``, the same ``obpipe ingest`` run with the obpipe of another
checkout (``PYTHONPATH=DIR``: e.g. the code before a change) instead of the plain loop,
alternating with this checkout's; ``--real`` replaces the mock files by the real LAMOST
spectra of ``../shared/data`` (DR1, DR6-DR7, DR8: every layout there, galaxies and
unknowns included) repeated to ``--n-files`` (distinct copies, :func:`make_real_files`;
the DR8 ``index.csv`` as the star table: the other files keep their rows with
``no_table_match``);

and prints files/s, the ratio, CPU seconds (the process tree, workers included)
and the peak memory, sampled every 0.05 s and summed over the process tree: RSS
(forked workers count the pages they share with the driver again: an overstatement)
and PSS (shared pages divided among the processes sharing them: the real total).

The timed runs (plain loop and ingest, alternating, ``--repeat`` times each, the
best of each kept) sample RSS only. PSS is measured in separate, untimed runs:
reading ``/proc/PID/smaps`` costs ~25 ms per sample of the tree and holds each
process's memory-map lock, which slowed a 2-core ingest by ~45 % (5.4 s -> 7.8 s)
and the single-process loop hardly at all.

    python benchmarks/ingest.py                    # 10,000 files, 2 workers
    python benchmarks/ingest.py --n-files 2000
    python benchmarks/ingest.py --real --n-files 3000 --baseline /tmp/old-checkout --no-memory
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

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


def _watch(proc: psutil.Process, stop: threading.Event, out: list[float], pss_too: bool
           ) -> None:
    """Peak RSS and (with ``pss_too``) peak PSS, each summed over the process tree."""
    peak_rss = peak_pss = 0.0
    while not stop.is_set():
        rss = pss = 0.0
        try:
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    rss += p.memory_info().rss
                    if pss_too:
                        pss += getattr(p.memory_full_info(), "pss", 0.0)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.NoSuchProcess:
            break
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.05)
    out.extend([peak_rss, peak_pss])


def timed(cmd: list[str], pss_too: bool = False, env: dict[str, str] | None = None,
          cwd: str | None = None) -> tuple[float, float, float, float]:
    """(wall s, CPU s of the process tree, peak RSS MB, peak PSS MB or NaN) of a command."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd)
    stop, peak = threading.Event(), []
    w = threading.Thread(target=_watch, args=(psutil.Process(proc.pid), stop, peak,
                                                      pss_too))
    w.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    w.join()
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed: {err.strip()[-2000:]}")
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for descendants: workers too
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, peak[0] / 2**20, peak[1] / 2**20 if pss_too else float("nan")


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


REAL_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                         "data")


def _with_id(raw: bytes, key: bytes, add: int) -> bytes:
    """FITS bytes with the integer value of header card ``key`` raised by ``add`` (the
    card rewritten in place, fixed format: the file's layout is unchanged); None when the
    primary header has no such card."""
    for pos in range(0, raw.find(b"END" + b" " * 77) + 1, 80):
        if raw[pos: pos + 10] == key.ljust(8) + b"= ":
            value = int(raw[pos + 10: pos + 30].split(b"/")[0])
            return raw[: pos + 10] + str(value + add).rjust(20).encode() + raw[pos + 30:]
    return None


def make_real_files(workdir: str, n_files: int, real_data: str = REAL_DATA
                    ) -> tuple[str, str]:
    """``n_files`` copies of the real LAMOST files of ``real_data`` + the DR8 table.

    Copy ``k`` of a file has its OBSID raised by ``k`` x 10**10 (FIBERID by ``k`` x 1000
    for the DR1 files, which have no OBSID: their synthetic id comes from it), gzipped
    again where the original is: distinct files (an ingest skips a file whose content it
    has already read), the same spectra and layouts.
    """
    import glob
    import gzip

    src = sorted(glob.glob(os.path.join(real_data, "lamost_dr*", "*.fits*")))
    if not src:
        raise SystemExit(f"no real LAMOST files under {real_data}")
    fits_dir = os.path.join(workdir, f"real{n_files}")
    if not os.path.exists(fits_dir):
        os.makedirs(fits_dir + ".tmp", exist_ok=True)
        for k in range(n_files):
            f = src[k % len(src)]
            copy = k // len(src)
            with open(f, "rb") as fh:
                raw = fh.read()
            gz = raw[:2] == b"\x1f\x8b"
            plain = gzip.decompress(raw) if gz else raw
            if copy:
                plain = _with_id(plain, b"OBSID", copy * 10**10) or \
                    _with_id(plain, b"FIBERID", copy * 1000)
                if plain is None:
                    raise SystemExit(f"{f}: no OBSID or FIBERID card to make copies distinct")
            with open(os.path.join(fits_dir + ".tmp", f"r{copy:04d}-{os.path.basename(f)}"),
                      "wb") as out:
                out.write(gzip.compress(plain, mtime=0) if gz else plain)
        os.rename(fits_dir + ".tmp", fits_dir)
    return fits_dir, os.path.join(real_data, "lamost_dr8", "index.csv")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-files", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keep the mock files here between runs")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each (best kept)")
    ap.add_argument("--real", action="store_true",
                    help="the real LAMOST files of ../shared/data, repeated, not the mock")
    ap.add_argument("--real-data", default=REAL_DATA, help="the shared data folder")
    ap.add_argument("--baseline", default=None,
                    help="another checkout: its ingest replaces the plain loop")
    ap.add_argument("--no-memory", action="store_true", help="skip the PSS memory runs")
    args = ap.parse_args()
    if args.real and not args.baseline:
        ap.error("--real needs --baseline (the plain loop reads the mock's layout only)")
    workdir = args.workdir or tempfile.mkdtemp(prefix="obpipe-bench-ingest-")
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    if args.real:
        fits_dir, table = make_real_files(workdir, args.n_files, args.real_data)
    else:
        fits_dir, table = make_files(workdir, args.n_files)
    print(f"mock files ready in {time.perf_counter() - t0:.0f} s: {fits_dir}")
    files = sorted(os.listdir(fits_dir))
    quarter_dir = os.path.join(workdir, f"quarter{args.n_files}")
    if not os.path.exists(quarter_dir):
        os.makedirs(quarter_dir)
        for name in files[: len(files) // 4]:
            os.symlink(os.path.join(fits_dir, name), os.path.join(quarter_dir, name))

    def ingest_run(src: str, pss_too: bool = False, checkout: str | None = None
                   ) -> tuple[float, float, float, float]:
        out = os.path.join(workdir, "out.zarr")
        shutil.rmtree(out, ignore_errors=True)
        # the checkout's obpipe first on sys.path: ``-m`` puts the working directory
        # there, PYTHONPATH next, so both name the checkout
        root = os.path.abspath(checkout or os.path.join(os.path.dirname(__file__), ".."))
        env = {**os.environ, "PYTHONPATH": root}
        return timed([sys.executable, "-m", "obpipe.cli", "ingest", src, "--table", table,
                      "--out", out, "--scheduler", "processes", "--workers",
                      str(args.workers), "--report", os.path.join(workdir, "r.csv")], pss_too,
                     env, root)

    def plain_run() -> tuple[float, float, float, float]:
        if args.baseline:
            return ingest_run(fits_dir, checkout=args.baseline)
        out = os.path.join(workdir, "plain.zarr")
        shutil.rmtree(out, ignore_errors=True)
        return timed([sys.executable, "-c", PLAIN_LOOP, fits_dir, out])

    def show(rows: list[tuple[Any, ...]]) -> None:
        print(f"{'run':28s} {'files':>7s} {'seconds':>8s} {'files/s':>8s} {'CPU s':>7s} "
              f"{'CPU ms/file':>11s} {'peak RSS MB':>11s} {'peak PSS MB':>11s}")
        for label, n, sec, cpu, rss, pss in rows:
            print(f"{label:28s} {n:7d} {sec:8.1f} {n / sec:8.0f} {cpu:7.1f} "
                  f"{1e3 * cpu / n:11.2f} {rss:11.0f} {pss:11.0f}")

    load0 = os.getloadavg()[0]
    plain, ing = [], []
    for _ in range(args.repeat):  # alternating, so a change of load hits both
        plain.append(plain_run())
        ing.append(ingest_run(fits_dir))
    best_plain, best_ing = min(plain), min(ing)
    print(f"timing (best of {args.repeat}; RSS sampled, no PSS):")
    other = "baseline ingest" if args.baseline else "plain loop"
    show([("baseline ingest N" if args.baseline else "plain astropy loop N", len(files),
           *best_plain), ("ingest N", len(files), *best_ing)])
    print(f"all runs, seconds: {other} " + " ".join(f"{r[0]:.1f}" for r in plain)
          + "; ingest " + " ".join(f"{r[0]:.1f}" for r in ing))
    ratio = best_plain[0] / best_ing[0]
    median_ratio = np.median([r[0] for r in plain]) / np.median([r[0] for r in ing])
    print(f"ingest ({args.workers} workers) / {other} throughput ratio (wall): {ratio:.2f}x "
          f"(best of each); {median_ratio:.2f}x (median of each)")
    print(f"CPU seconds {other} / ingest: {best_plain[1] / best_ing[1]:.2f}")
    if args.no_memory:
        print(f"cores: {os.cpu_count()}; load average (1 min) before/after: {load0:.1f} / "
              f"{os.getloadavg()[0]:.1f} (other processes on the machine slow both runs)")
        return
    mem = [("ingest N/4 (PSS sampled)", len(files) // 4, *ingest_run(quarter_dir, True)),
           ("ingest N (PSS sampled)", len(files), *ingest_run(fits_dir, True))]
    load1 = os.getloadavg()[0]
    print("memory (separate runs; PSS sampling slows them):")
    show(mem)
    print(f"peak memory N / (N/4): RSS {mem[1][4] / mem[0][4]:.2f} ({mem[0][4]:.0f} -> "
          f"{mem[1][4]:.0f} MB), PSS {mem[1][5] / mem[0][5]:.2f} ({mem[0][5]:.0f} -> "
          f"{mem[1][5]:.0f} MB) for 4x the files")
    print(f"cores: {os.cpu_count()}; load average (1 min) before/after: {load0:.1f} / "
          f"{load1:.1f} (other processes on the machine slow both runs)")


if __name__ == "__main__":
    main()
