"""Throughput of the spectral chain (issue: spectral chain, Secs. 2-3).

Measures, on 2 cores, side by side in one run:

* the vectorised chain -- normalise + weighted PCA projection (both bases) +
  reconstruction + emission/broken statistics (``stages.pca_statistics``) -- mapped
  over blocks of a real Zarr cube with Dask on a pool of 2 worker processes (one BLAS
  thread each), started and warmed up (imports, model) before the clock starts, so
  that both survey sizes run on the same two workers;
* the CPU seconds the blocks take inside the workers (load-independent: the machine is
  shared), and the rate two idle cores would give at that CPU cost;
* a plain numpy loop doing the same per spectrum (one spectrum at a time, with the
  same library functions), on a subset, and the ratio;
* the PCA fit time (both bases) on up to 7,000 training spectra x 3,909 pixels;
* peak memory of the process tree (driver + workers) and of the largest worker for
  two survey sizes (flat in the number of spectra).

``--baseline DIR`` runs the same benchmark on another checkout of obpipe (e.g. a git
worktree of an older commit) first, on the same surveys, and prints both.

    python benchmarks/spectral.py [--n-stars 4200] [--loop-spectra 200] [--workdir W]
                                  [--baseline /tmp/chain-base]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil

#: rows normalised and projected at a time inside a block (as in the pca stage)
ROWS_PER_CHUNK = 256


class _PeakRSS:
    """Peak RSS of this process tree, and of its largest child, sampled every 50 ms."""

    def __init__(self) -> None:
        self.total = 0.0
        self.child = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            rss = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    r = child.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                rss += r
                self.child = max(self.child, r)
            self.total = max(self.total, rss)
            time.sleep(0.05)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _warm_worker(model_path: str) -> int:
    """Import the chain and load the model in a pool worker (before timing)."""
    import numpy as np

    from obpipe.memory import release_large_buffers_to_the_os
    from obpipe.spectra.stages import _load_model

    release_large_buffers_to_the_os()
    model = _load_model(model_path, os.path.getmtime(model_path))
    for basis in (model.clean, model.full):  # caches of the projection
        basis.project(np.ones((2, basis.pixels.size), np.float32),
                      np.ones((2, basis.pixels.size), np.float32))
    time.sleep(1.0)  # both workers busy at once: the pool starts both
    return os.getpid()


def _chain_block(survey: str, start: int, stop: int, model_path: str
                 ) -> tuple[int, float]:
    """Read one block of the cube and run the whole chain on it (one task per block).

    Returns the number of spectra and the CPU seconds of the chain (the read included).
    """
    from threadpoolctl import threadpool_limits

    from obpipe.io import store
    from obpipe.memory import release_large_buffers_to_the_os
    from obpipe.spectra import emission, normalize, stages

    cpu0 = time.process_time()
    release_large_buffers_to_the_os()
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


def run_chain(survey: str, model_path: str, pool: Any) -> dict[str, float]:
    import dask

    from obpipe.io import store
    from obpipe.products import block_bounds

    ds = store.open_cube(survey)
    chunk = ds["flux"].chunks[0][0]
    tasks = [dask.delayed(_chain_block)(survey, a, b, model_path)
             for a, b in block_bounds(ds.sizes["spec"], chunk)]
    with _PeakRSS() as peak:
        t0 = time.perf_counter()
        results = dask.compute(*tasks, scheduler="processes", pool=pool)
        dt = time.perf_counter() - t0
    n = sum(r[0] for r in results)
    cpu = sum(r[1] for r in results)
    return {"spectra": n, "seconds": dt, "rate": n / dt, "cpu_ms_per_spectrum": 1e3 * cpu / n,
            "rate_2_idle_cores": 2 * n / cpu, "peak_gb": peak.total / 1e9,
            "worker_peak_gb": peak.child / 1e9, "load_1min": os.getloadavg()[0]}


def run_loop(survey: str, model_path: str, n_spec: int) -> tuple[int, float]:
    from obpipe.io import store
    from obpipe.spectra import emission, normalize
    from obpipe.spectra.stages import _load_model

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


def benchmark(work: str, n_stars: int, loop_spectra: int, model_name: str) -> dict[str, Any]:
    """Fit, chain at two sizes, loop; with whatever obpipe is importable."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    import obpipe
    from obpipe.io import store
    from obpipe.spectra import normalize
    from obpipe.spectra.stages import SpectralConfig, fit_pca_model, select_training

    surveys = _simulate(work, n_stars)
    out: dict[str, Any] = {"obpipe": os.path.dirname(obpipe.__file__), "cores": os.cpu_count()}
    # PCA fit on <= 7,000 training spectra of the larger survey
    ds = store.open_cube(surveys[3])
    cfg = SpectralConfig(max_train=7000)
    train = select_training(ds["snr_g"].values, cfg.train_min_snr, cfg.max_train, cfg.seed)
    sub = ds[["flux", "ivar", "mask"]].isel(spec=train).load()
    nf, ni = normalize.normalize(sub["flux"].values, sub["ivar"].values, sub["mask"].values)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    model, _ = fit_pca_model(nf, ni, ds["snr_g"].values[train], cfg, {})
    out["fit"] = {"spectra": int(train.size), "seconds": time.perf_counter() - t0,
                  "load_1min": 0.5 * (load0 + os.getloadavg()[0])}
    model_path = os.path.join(work, model_name)
    model.save(model_path)
    del nf, ni, sub, model, ds

    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        pids = {f.result() for f in [pool.submit(_warm_worker, model_path) for _ in range(2)]}
        out["workers"] = len(pids)
        for scale, path in surveys.items():
            out[f"chain_x{scale}"] = run_chain(path, model_path, pool)
    n, dt = run_loop(surveys[1], model_path, loop_spectra)
    out["loop"] = {"spectra": n, "seconds": dt, "rate": n / dt}
    return out


def _print(res: dict[str, Any], label: str) -> None:
    fit = res["fit"]
    print(f"[{label}] obpipe from {res['obpipe']}, {res['cores']} cores, "
          f"{res['workers']} warm workers")
    print(f"PCA fit (clean + full bases, K = 100, one emission-cleaning iteration) on "
          f"{fit['spectra']} x 3909: {fit['seconds']:.1f} s (load {fit['load_1min']:.1f})")
    print(f"{'run':<34} {'spectra':>8} {'seconds':>8} {'spectra/s':>10} {'CPU ms/sp':>9} "
          f"{'2 idle cores/s':>14} {'peak GB':>8} {'worker GB':>9} {'load':>5}")
    for scale in (1, 3):
        r = res[f"chain_x{scale}"]
        print(f"{'dask chain, survey x' + str(scale):<34} {r['spectra']:>8} {r['seconds']:>8.1f} "
              f"{r['rate']:>10.0f} {r['cpu_ms_per_spectrum']:>9.3f} "
              f"{r['rate_2_idle_cores']:>14.0f} {r['peak_gb']:>8.2f} "
              f"{r['worker_peak_gb']:>9.2f} {r['load_1min']:>5.1f}")
    lp = res["loop"]
    print(f"{'numpy loop, one spectrum at a time':<34} {lp['spectra']:>8} {lp['seconds']:>8.1f} "
          f"{lp['rate']:>10.0f}")
    print(f"chain / loop throughput ratio: {res['chain_x1']['rate'] / lp['rate']:.1f}; "
          f"peak memory x3 / x1: {res['chain_x3']['peak_gb'] / res['chain_x1']['peak_gb']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-stars", type=int, default=4200)
    parser.add_argument("--loop-spectra", type=int, default=200)
    parser.add_argument("--workdir", default=None, help="surveys and models (kept if given)")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="also run on the obpipe checkout in DIR, first, same surveys")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="obpipe-spectral-")
    os.makedirs(work, exist_ok=True)
    if args._child:  # the --baseline run: results as JSON on stdout
        res = benchmark(work, args.n_stars, args.loop_spectra, "pca_model_baseline.npz")
        print("RESULT " + json.dumps(res))
        return
    results = {}
    if args.baseline:
        _simulate(work, args.n_stars)
        env = {**os.environ, "PYTHONPATH": os.path.abspath(args.baseline)}
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--_child", "--workdir", work,
             "--n-stars", str(args.n_stars), "--loop-spectra", str(args.loop_spectra)],
            env=env, cwd=args.baseline, capture_output=True, text=True, check=True)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        results["baseline"] = json.loads(line[len("RESULT "):])
        _print(results["baseline"], "baseline")
    results["this"] = benchmark(work, args.n_stars, args.loop_spectra, "pca_model.npz")
    _print(results["this"], "this checkout")
    if args.baseline:
        b, t = results["baseline"], results["this"]
        cpu_b, cpu_t = (r["chain_x1"]["cpu_ms_per_spectrum"] for r in (b, t))
        print(f"this / baseline: chain x1 {t['chain_x1']['rate'] / b['chain_x1']['rate']:.2f}x "
              f"the spectra/s, {cpu_b / cpu_t:.2f}x less CPU per spectrum; "
              f"fit {b['fit']['seconds'] / t['fit']['seconds']:.2f}x faster")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
