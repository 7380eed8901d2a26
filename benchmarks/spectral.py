"""Throughput of the spectral chain (issue: spectral chain, Secs. 2-3).

Measures, on 2 cores, side by side in one run:

* the vectorised chain -- normalise + weighted PCA projection (both bases) +
  reconstruction + emission/broken statistics -- mapped over blocks of a real
  Zarr cube with Dask (``processes`` scheduler, one BLAS thread per worker),
* a plain numpy loop doing the same per spectrum (one spectrum at a time, with the
  same library functions), on a subset, and the ratio;
* the PCA fit time (both bases) on up to 7,000 training spectra x 3,909 pixels;
* peak memory of the chain for two survey sizes (flat in the number of spectra).

    python benchmarks/spectral.py [--n-stars 4200] [--loop-spectra 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import psutil


def _peak_rss(stop: threading.Event, out: list[float]) -> None:
    me = psutil.Process()
    peak = 0.0
    while not stop.is_set():
        rss = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        peak = max(peak, rss)
        time.sleep(0.05)
    out.append(peak)


def _chain_block(survey: str, start: int, stop: int, model_path: str) -> int:
    """Read one block of the cube and run the whole chain on it (one task per block)."""
    from threadpoolctl import threadpool_limits

    from obpipe.io import store
    from obpipe.memory import release_large_buffers_to_the_os
    from obpipe.spectra import emission, normalize
    from obpipe.spectra.stages import _load_model

    release_large_buffers_to_the_os()
    sub = store.open_cube(survey)[["flux", "ivar", "mask"]].isel(spec=slice(start, stop)).load()
    model = _load_model(model_path, os.path.getmtime(model_path))
    with threadpool_limits(1):
        nf, ni = normalize.normalize(sub["flux"].values, sub["ivar"].values, sub["mask"].values)
        c = model.clean.project(nf, ni)
        model.full.project(nf, ni)
        recon = model.clean.reconstruct(c)
        emission.residual_statistics(nf, ni, recon, model.clean.sigma_model, model.clean.pixels)
    return int(nf.shape[0])


def run_chain(survey: str, model_path: str, scheduler: str = "processes"
              ) -> tuple[int, float, float]:
    import dask

    from obpipe.io import store
    from obpipe.products import block_bounds

    ds = store.open_cube(survey)
    chunk = ds["flux"].chunks[0][0]
    tasks = [dask.delayed(_chain_block)(survey, a, b, model_path)
             for a, b in block_bounds(ds.sizes["spec"], chunk)]
    stop_evt, peak = threading.Event(), []
    watcher = threading.Thread(target=_peak_rss, args=(stop_evt, peak))
    watcher.start()
    t0 = time.perf_counter()
    n = sum(dask.compute(*tasks, scheduler=scheduler, num_workers=2))
    dt = time.perf_counter() - t0
    stop_evt.set()
    watcher.join()
    return n, dt, peak[0] / 1e9


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


def main() -> None:
    from obpipe.config import SimulationConfig
    from obpipe.io import store
    from obpipe.simulate.survey import simulate_survey
    from obpipe.spectra import normalize, pca
    from obpipe.spectra.stages import SpectralConfig, fit_pca_model, select_training

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-stars", type=int, default=4200)
    parser.add_argument("--loop-spectra", type=int, default=200)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="obpipe-spectral-")
    os.makedirs(work, exist_ok=True)
    print(f"cores: {os.cpu_count()}")
    surveys = {}
    for scale in (1, 3):
        path = os.path.join(work, f"survey{scale}.zarr")
        if not os.path.exists(path):
            simulate_survey(path, SimulationConfig(n_stars=args.n_stars * scale, seed=5),
                            scheduler="processes")
        surveys[scale] = path

    # PCA fit on <= 7,000 training spectra of the larger survey
    ds = store.open_cube(surveys[3])
    cfg = SpectralConfig(max_train=7000)
    train = select_training(ds["snr_g"].values, cfg.train_min_snr, cfg.max_train, cfg.seed)
    sub = ds[["flux", "ivar", "mask"]].isel(spec=train).load()
    nf, ni = normalize.normalize(sub["flux"].values, sub["ivar"].values, sub["mask"].values)
    t0 = time.perf_counter()
    model, _ = fit_pca_model(nf, ni, ds["snr_g"].values[train], cfg, {})
    fit_s = time.perf_counter() - t0
    model_path = os.path.join(work, "pca_model.npz")
    model.save(model_path)
    del nf, ni, sub
    print(f"PCA fit (clean + full bases, K = {pca.N_COMPONENTS}, one emission-cleaning "
          f"iteration) on {train.size} x 3909: {fit_s:.1f} s")

    print(f"{'run':<34} {'spectra':>8} {'seconds':>8} {'spectra/s':>10} {'peak GB':>8}")
    rates = {}
    for scale, path in surveys.items():
        n, dt, peak = run_chain(path, model_path)
        rates[scale] = n / dt
        print(f"{'dask chain, survey x' + str(scale):<34} {n:>8} {dt:>8.1f} {n / dt:>10.0f} "
              f"{peak:>8.2f}")
    n, dt = run_loop(surveys[1], model_path, args.loop_spectra)
    print(f"{'numpy loop, one spectrum at a time':<34} {n:>8} {dt:>8.1f} {n / dt:>10.0f}")
    print(f"chain / loop throughput ratio: {rates[1] / (n / dt):.1f}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
