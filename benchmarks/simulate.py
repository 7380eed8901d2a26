"""Throughput and peak memory of ``obpipe simulate`` (issue: foundation).

Prints spectra/s and the peak resident memory (driver + worker processes, sampled
every 0.1 s) for the default DR5-size survey and for a survey ``--scale`` times
larger, side by side, so that "memory flat with survey size" is measured in one run.

    python benchmarks/simulate.py                 # default survey and 4x
    python benchmarks/simulate.py --scale 1       # default only
    python benchmarks/simulate.py --quick 2000    # in-process: tables + 1,000 spectra

``--quick N`` times, in this process, ``build_tables`` of an N-star mock and the
synthesis of its first 1,000 spectra (single thread): the cost of the mock's own
physics (SED, band extinction, zero-point sky pattern, noise) without Dask or Zarr.
Run it on two checkouts (``PYTHONPATH=<tree>``) for a side-by-side comparison.
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

import psutil


def _peak_rss_of_tree(proc: psutil.Process, stop: threading.Event, out: list[float]) -> None:
    peak = 0.0
    while not stop.is_set():
        try:
            procs = [proc, *proc.children(recursive=True)]
            rss = 0.0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            peak = max(peak, rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    out.append(peak)


def run_once(n_stars: int, workdir: str, scheduler: str) -> dict[str, float]:
    path = os.path.join(workdir, f"bench-{n_stars}.zarr")
    cmd = [sys.executable, "-m", "obpipe.cli", "simulate", "--n-stars", str(n_stars),
           "--seed", "1", "--out", path, "--overwrite", "--scheduler", scheduler]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop, peak = threading.Event(), []
    watcher = threading.Thread(target=_peak_rss_of_tree, args=(psutil.Process(proc.pid), stop,
                                                                peak))
    watcher.start()
    stdout, stderr = proc.communicate()
    stop.set()
    watcher.join()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"simulate failed: {stderr.strip()}")
    import json

    summary = json.loads(stdout.strip().splitlines()[-1])
    shutil.rmtree(path, ignore_errors=True)
    return {"n_stars": n_stars, "n_spectra": summary["n_spectra"], "seconds": seconds,
            "spectra_per_s": summary["n_spectra"] / seconds, "peak_rss_gb": peak[0] / 1e9}


def quick(n_stars: int) -> None:
    """Print build_tables seconds and synthesis spectra/s of an ``n_stars`` mock."""
    from obpipe.config import SimulationConfig
    from obpipe.simulate import survey

    cfg = SimulationConfig(n_stars=n_stars, seed=1)
    t0 = time.perf_counter()
    obs, _, synth = survey.build_tables(cfg)
    t1 = time.perf_counter()
    n = min(1000, obs["specid"].size)
    part = {k: v[:n] for k, v in synth.items()}
    survey.synthesize_spectra(part, cfg.seed, cfg.resolving_power, cfg.extinction_law,
                              cfg.noise_neighbour_correlation)
    t2 = time.perf_counter()
    print(f"build_tables: {t1 - t0:.2f} s for {obs['specid'].size} spectra; "
          f"synthesis: {n / (t2 - t1):.0f} spectra/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", type=int, default=0, metavar="N_STARS",
                        help="time build_tables and 1,000 spectra in-process, then exit")
    parser.add_argument("--n-stars", type=int, default=16002)
    parser.add_argument("--scale", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--scheduler", default="processes")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    if args.quick:
        quick(args.quick)
        return
    workdir = args.workdir or tempfile.mkdtemp(prefix="obpipe-bench-")
    print(f"cores: {os.cpu_count()}  scheduler: {args.scheduler}")
    print(f"{'stars':>8} {'spectra':>8} {'seconds':>8} {'spectra/s':>10} {'peak RSS GB':>12}")
    rows = []
    for scale in args.scale:
        r = run_once(args.n_stars * scale, workdir, args.scheduler)
        rows.append(r)
        print(f"{r['n_stars']:>8} {r['n_spectra']:>8} {r['seconds']:>8.1f} "
              f"{r['spectra_per_s']:>10.0f} {r['peak_rss_gb']:>12.2f}", flush=True)
    if len(rows) > 1:
        print(f"peak memory ratio {rows[-1]['n_stars'] // rows[0]['n_stars']}x survey: "
              f"{rows[-1]['peak_rss_gb'] / rows[0]['peak_rss_gb']:.2f}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
