"""Throughput of the spectral chain (issue: spectral chain, Secs. 2-3).

Measures, on 2 cores, side by side in one run:

* the vectorised chain -- normalise + weighted PCA projection (both bases) +
  reconstruction + emission/broken statistics (``stages.pca_statistics``) -- mapped
  over blocks of a real Zarr cube with Dask on a pool of 2 worker processes (one BLAS
  thread each), started and warmed up (imports, model) before the clock starts, so
  that both survey sizes run on the same two workers;
* the CPU seconds the blocks take inside the workers (less sensitive to the load of a
  shared machine than the wall time), and the rate two idle cores would give at that
  CPU cost;
* a plain numpy loop doing the same per spectrum (one spectrum at a time, with the
  same library functions), on a subset, and the ratio;
* the PCA fit time (both bases) on up to 7,000 training spectra x 3,909 pixels (in a
  process of its own, with the BLAS threads of 2 cores);
* peak memory for two survey sizes (flat in the number of spectra): of each worker (the
  kernel's VmHWM, reset before each run), of the driver, and the sum of these peaks
  (what the run can need at most; the sampled peak of the whole process tree, which
  also holds the other checkout's idle workers, is in the JSON). Each survey's files
  are read once before its runs, so every run starts from a warm page cache.

``--baseline DIR`` runs the same measurements with the obpipe of another checkout (e.g.
a git worktree of an older commit, imported by its own pool of workers) interleaved
with this one's -- fit, fit, then each survey size baseline then this -- on the same
surveys, and prints both and their ratios.

    python benchmarks/spectral.py [--n-stars 4200] [--loop-spectra 200] [--workdir W]
                                  [--baseline /tmp/chain-base] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from _memory import PeakRSS

#: rows normalised and projected at a time inside a block (as in the pca stage)
ROWS_PER_CHUNK = 256


def _reset_high_water_mark(pid: int) -> bool:
    """Reset the kernel's peak-RSS record (VmHWM) of process ``pid`` (Linux)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _high_water_mark(pid: int) -> float:
    """Peak RSS (bytes) of process ``pid`` since its last reset, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024.0
    return float("nan")


def _use_checkout(path: str | None) -> None:
    """Pool initializer: import obpipe from the checkout at ``path`` (None: as installed).
    Runs before the worker imports obpipe (this module imports it in functions only)."""
    if path:
        sys.path.insert(0, os.path.abspath(path))


def _pool(checkout: str | None, workers: int = 2) -> Any:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                               initializer=_use_checkout, initargs=(checkout,))


def _malloc_policy() -> None:
    """The spectral stages' malloc settings: ``reuse_block_buffers`` where the checkout
    has it, else (an older checkout) ``release_large_buffers_to_the_os``."""
    from obpipe.engine import memory

    (getattr(memory, "reuse_block_buffers", None) or memory.release_large_buffers_to_the_os)()


def _warm_worker(model_path: str) -> tuple[int, str]:
    """Import the chain and load the model in a pool worker (before timing)."""
    import numpy as np

    import obpipe
    from obpipe.spectra.bases import _load_model

    _malloc_policy()
    model = _load_model(model_path, os.path.getmtime(model_path))
    for basis in (model.clean, model.full):  # caches of the projection
        basis.project(np.ones((2, basis.pixels.size), np.float32),
                      np.ones((2, basis.pixels.size), np.float32))
    time.sleep(1.0)  # both workers busy at once: the pool starts both
    return os.getpid(), os.path.dirname(obpipe.__file__)


def _chain_block(survey: str, start: int, stop: int, model_path: str
                 ) -> tuple[int, float]:
    """Read one block of the cube and run the whole chain on it (one task per block).

    Returns the number of spectra and the CPU seconds of the chain (the read included).
    """
    from threadpoolctl import threadpool_limits

    from obpipe.io import store
    from obpipe.spectra import emission, normalize, stages

    cpu0 = time.process_time()
    _malloc_policy()
    sub = store.open_cube(survey)[["flux", "ivar", "mask"]].isel(spec=slice(start, stop)).load()
    flux, ivar, mask = sub["flux"].values, sub["ivar"].values, sub["mask"].values
    model = stages._load_model(model_path, os.path.getmtime(model_path))
    with threadpool_limits(1):
        if hasattr(stages, "pca_statistics"):
            for lo in range(0, flux.shape[0], ROWS_PER_CHUNK):
                rows = slice(lo, lo + ROWS_PER_CHUNK)
                nf, ni = normalize.normalize(flux[rows], ivar[rows], mask[rows])
                stages.pca_statistics(model, nf, ni, rows_per_chunk=ROWS_PER_CHUNK)
        else:  # an older checkout (--baseline): its chain, as its benchmark ran it
            nf, ni = normalize.normalize(flux, ivar, mask)
            c = model.clean.project(nf, ni)
            model.full.project(nf, ni)
            recon = model.clean.reconstruct(c)
            emission.residual_statistics(nf, ni, recon, model.clean.sigma_model,
                                         model.clean.pixels)
    return int(flux.shape[0]), time.process_time() - cpu0


def run_chain(survey: str, model_path: str, pool: Any, pids: set[int]) -> dict[str, float]:
    import dask

    from obpipe.engine.blockwise import block_bounds
    from obpipe.io import store

    ds = store.open_cube(survey)
    chunk = ds["flux"].chunks[0][0]
    tasks = [dask.delayed(_chain_block)(survey, a, b, model_path)
             for a, b in block_bounds(ds.sizes["spec"], chunk)]
    exact = all(_reset_high_water_mark(pid) for pid in pids)
    with PeakRSS(pids=pids) as peak:
        t0 = time.perf_counter()
        # chunksize=1: one block per dispatch (dask's default sends 6 to one worker at a
        # time, which leaves the other idle on a survey of <= 6 blocks)
        results = dask.compute(*tasks, scheduler="processes", pool=pool, chunksize=1)
        dt = time.perf_counter() - t0
    n = sum(r[0] for r in results)
    cpu = sum(r[1] for r in results)
    # the kernel's record of each worker's peak in this run where it can be reset, else
    # the sampled one (it can miss a peak shorter than the 50 ms between samples)
    workers = sorted(_high_water_mark(pid) if exact else peak.per_pid[pid] for pid in pids)
    return {"spectra": n, "seconds": dt, "rate": n / dt, "cpu_ms_per_spectrum": 1e3 * cpu / n,
            "rate_2_idle_cores": 2 * n / cpu, "worker_peak_gb": workers[-1] / 1e9,
            "driver_peak_gb": peak.root_peak / 1e9,
            "sum_of_peaks_gb": (peak.root_peak + sum(workers)) / 1e9,
            "tree_peak_gb": peak.peak / 1e9, "worker_peak_exact": exact,
            "load_1min": os.getloadavg()[0]}


def run_loop(survey: str, model_path: str, n_spec: int) -> tuple[int, float]:
    from obpipe.io import store
    from obpipe.spectra import emission, normalize
    from obpipe.spectra.bases import _load_model

    model = _load_model(model_path, os.path.getmtime(model_path))
    sub = store.open_cube(survey)[["flux", "ivar", "mask"]].isel(spec=slice(0, n_spec)).load()
    flux, ivar, mask = sub["flux"].values, sub["ivar"].values, sub["mask"].values
    t0 = time.perf_counter()
    for i in range(n_spec):
        nf, ni = normalize.normalize(flux[i:i + 1], ivar[i:i + 1], mask[i:i + 1])
        c = model.clean.project(nf, ni)
        model.full.project(nf, ni)
        recon = model.clean.reconstruct(c)
        emission.residual_statistics(nf, ni, recon, model.clean.sigma_model, model.clean.pixels)
    return n_spec, time.perf_counter() - t0


def _simulate(work: str, n_stars: int) -> dict[int, str]:
    from obpipe.config import SimulationConfig
    from obpipe.simulate.survey import simulate_survey

    surveys = {}
    for scale in (1, 3):
        path = os.path.join(work, f"survey{scale}.zarr")
        if not os.path.exists(path):
            simulate_survey(path, SimulationConfig(n_stars=n_stars * scale, seed=5),
                            scheduler="processes")
        surveys[scale] = path
    return surveys


def _fit(survey: str, model_path: str) -> dict[str, float]:
    """PCA fit on <= 7,000 training spectra of ``survey`` (run in its own process, so
    that the driver's memory is the chain's only)."""
    from obpipe.io import store
    from obpipe.spectra import normalize
    from obpipe.spectra.bases import fit_pca_model, select_training
    from obpipe.spectra.options import SpectralConfig

    ds = store.open_cube(survey)
    cfg = SpectralConfig(max_train=7000)
    train = select_training(ds["snr_g"].values, cfg.train_min_snr, cfg.max_train, cfg.seed)
    sub = ds[["flux", "ivar", "mask"]].isel(spec=train).load()
    nf, ni = normalize.normalize(sub["flux"].values, sub["ivar"].values, sub["mask"].values)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    model, _ = fit_pca_model(nf, ni, ds["snr_g"].values[train], cfg, {})
    out = {"spectra": int(train.size), "seconds": time.perf_counter() - t0,
           "load_1min": 0.5 * (load0 + os.getloadavg()[0])}
    model.save(model_path)
    return out


def _read_files(path: str) -> None:
    """Read every file of a store once (the page cache warm for every run alike)."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                while fh.read(1 << 24):
                    pass


def _print(res: dict[str, Any], label: str) -> None:
    fit = res["fit"]
    print(f"[{label}] obpipe from {res['obpipe']}, {res['workers']} warm workers")
    print(f"PCA fit (clean + full bases, K = 100, one emission-cleaning iteration) on "
          f"{fit['spectra']} x 3909: {fit['seconds']:.1f} s (load {fit['load_1min']:.1f})")
    print(f"{'run':<24} {'spectra':>7} {'seconds':>7} {'spectra/s':>9} {'CPU ms/sp':>9} "
          f"{'2 idle cores/s':>14} {'worker GB':>9} {'driver GB':>9} {'sum GB':>7} "
          f"{'load':>5}")
    for scale in (1, 3):
        r = res[f"chain_x{scale}"]
        print(f"{'dask chain, survey x' + str(scale):<24} {r['spectra']:>7} {r['seconds']:>7.1f} "
              f"{r['rate']:>9.0f} {r['cpu_ms_per_spectrum']:>9.3f} "
              f"{r['rate_2_idle_cores']:>14.0f} {r['worker_peak_gb']:>9.2f} "
              f"{r['driver_peak_gb']:>9.2f} {r['sum_of_peaks_gb']:>7.2f} "
              f"{r['load_1min']:>5.1f}")
    lp = res["loop"]
    print(f"{'numpy loop, 1 at a time':<24} {lp['spectra']:>7} {lp['seconds']:>7.1f} "
          f"{lp['rate']:>9.0f}")
    x1, x3 = res["chain_x1"], res["chain_x3"]
    print(f"chain / loop throughput ratio: {x1['rate'] / lp['rate']:.1f}; memory x3 / x1: "
          f"worker {x3['worker_peak_gb'] / x1['worker_peak_gb']:.2f}, "
          f"sum of peaks {x3['sum_of_peaks_gb'] / x1['sum_of_peaks_gb']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-stars", type=int, default=4200)
    parser.add_argument("--loop-spectra", type=int, default=200)
    parser.add_argument("--workdir", default=None, help="surveys and models (kept if given)")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="also measure the obpipe checkout in DIR, interleaved")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="obpipe-spectral-")
    os.makedirs(work, exist_ok=True)
    print(f"cores: {os.cpu_count()}")
    surveys = _simulate(work, args.n_stars)
    checkouts = {"baseline": args.baseline, "this": None} if args.baseline else {"this": None}
    models = {label: os.path.join(work, f"pca_model_{label}.npz") for label in checkouts}
    results: dict[str, dict[str, Any]] = {label: {} for label in checkouts}
    for label, checkout in checkouts.items():  # each fit in a fresh process
        with _pool(checkout, workers=1) as pool:
            results[label]["fit"] = pool.submit(_fit, surveys[3], models[label]).result()
    pools = {label: _pool(checkout) for label, checkout in checkouts.items()}
    try:
        pids = {}
        for label, pool in pools.items():
            warm = [f.result() for f in [pool.submit(_warm_worker, models[label])
                                         for _ in range(2)]]
            pids[label] = {pid for pid, _ in warm}
            results[label].update(obpipe=warm[0][1], workers=len(pids[label]))
        for scale, path in surveys.items():
            _read_files(path)
            for label, pool in pools.items():
                results[label][f"chain_x{scale}"] = run_chain(path, models[label], pool,
                                                              pids[label])
        for label, pool in pools.items():
            n, dt = pool.submit(run_loop, surveys[1], models[label], args.loop_spectra).result()
            results[label]["loop"] = {"spectra": n, "seconds": dt, "rate": n / dt}
    finally:
        for pool in pools.values():
            pool.shutdown()
    for label in checkouts:
        _print(results[label], label)
    if args.baseline:
        b, t = results["baseline"], results["this"]
        for scale in (1, 3):
            bx, tx = b[f"chain_x{scale}"], t[f"chain_x{scale}"]
            print(f"this / baseline, survey x{scale}: {tx['rate'] / bx['rate']:.2f}x the "
                  f"spectra/s, {bx['cpu_ms_per_spectrum'] / tx['cpu_ms_per_spectrum']:.2f}x "
                  f"less CPU per spectrum, {tx['worker_peak_gb'] / bx['worker_peak_gb']:.2f}x "
                  f"the worker memory")
        print(f"fit: {b['fit']['seconds'] / t['fit']['seconds']:.2f}x faster")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
