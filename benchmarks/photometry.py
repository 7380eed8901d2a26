"""Throughput of the photometry stage's science (issue 5), and its accuracy on a mock survey.

Throughput: E(B-V) + parallax zero-point + geometric M_Ks (``photometry_block``, the
pure numpy function the stage maps over chunks) on ``--rows`` synthetic stars at once,
side by side with a per-row Python loop of the same function on a subset; prints
stars/s and the ratio, and the default extinction model (G23 at each star's A0, R_V
scatter; issue 20) side by side with the paper's (F99 R_V = 3.1, low-extinction limit).

Accuracy (``--survey PATH``): runs the ``index`` stage and the photometry stage on a
simulated survey into a temporary products directory and prints
``photometry_metrics`` (E(B-V) bias / scatter / pull, M_Ks_geo pull, zero-point
residual) as JSON.

    python benchmarks/photometry.py                       # 100k rows vs a 500-row loop
    python benchmarks/photometry.py --rows 20000 --loop-rows 200
    obpipe simulate --out /tmp/dr5.zarr --n-stars 16002 --seed 42 --overwrite
    python benchmarks/photometry.py --survey /tmp/dr5.zarr --skip-throughput
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np

from obpipe.photometry.block import photometry_block
from obpipe.photometry.options import BAND_COLUMNS
from obpipe.photometry.synthetic import absolute_magnitudes, extinction_coefficients


def synthetic_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Survey-like columns for ``n`` reddened OB stars (with gaps and a few failures)."""
    rng = np.random.default_rng(seed)
    teff = 10.0 ** rng.uniform(np.log10(10000.0), np.log10(40000.0), n)
    logg = rng.uniform(3.3, 4.4, n)
    log_l = rng.uniform(2.0, 5.0, n)
    dist_kpc = rng.uniform(0.3, 8.0, n)
    ebv = rng.uniform(0.0, 2.5, n)
    absm = absolute_magnitudes(teff, logg, log_l)
    coeff = extinction_coefficients(teff)
    dm = 5.0 * np.log10(dist_kpc * 1000.0) - 5.0
    cols: dict[str, np.ndarray] = {}
    for band, (mag, err) in BAND_COLUMNS.items():
        e = np.full(n, 0.02)
        m = absm[band] + dm + coeff[band] * ebv + rng.normal(0.0, 1.0, n) * e
        gap = rng.random(n) < (0.08 if band in ("g", "r", "i") else 0.01)
        cols[mag] = np.where(gap, np.nan, m)
        cols[err] = np.where(gap, np.nan, e)
    failed = rng.random(n) < 0.02
    cols["teff"] = np.where(failed, np.nan, teff * (1 + rng.normal(0, 0.04, n)))
    cols["teff_err"] = np.where(failed, np.nan, 0.04 * teff)
    cols["logg"] = np.where(failed, np.nan, logg + rng.normal(0, 0.15, n))
    cols["logg_err"] = np.where(failed, np.nan, 0.15)
    plx_err = rng.uniform(0.015, 0.2, n)
    cols["parallax"] = 1.0 / dist_kpc - 0.02 + rng.normal(0, 1, n) * plx_err
    cols["parallax_error"] = plx_err
    cols["gaia_release"] = np.where(rng.random(n) < 0.1, "DR2", "DR3").astype(object)
    aps = np.where(rng.random(n) < 0.12, 95, 31)
    nu = np.clip(1.76 - 1.61 / np.pi * np.arctan(0.531 * (-0.3 + 1.3 * ebv)), 1.24, 1.72)
    cols["astrometric_params_solved"] = aps
    cols["nu_eff_used_in_astrometry"] = np.where(aps == 31, nu, np.nan)
    cols["pseudocolour"] = np.where(aps == 95, nu + rng.normal(0, 0.03, n), np.nan)
    cols["ecl_lat"] = rng.uniform(-60.0, 60.0, n)
    return cols


def throughput(rows: int, loop_rows: int, repeat: int = 3) -> dict[str, float]:
    cols = synthetic_inputs(rows)
    photometry_block({k: v[:10] for k, v in cols.items()})  # warm caches (tables, dustapprox)
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        photometry_block(cols)
        best = min(best, time.perf_counter() - t0)
    vec_rate = rows / best
    sub = {k: v[:loop_rows] for k, v in cols.items()}
    t0 = time.perf_counter()
    for i in range(loop_rows):
        photometry_block({k: v[i:i + 1] for k, v in sub.items()})
    loop_rate = loop_rows / (time.perf_counter() - t0)
    paper = {"law": "F99", "extinction_dependent": False, "r_v_scatter": 0.0}
    photometry_block({k: v[:10] for k, v in cols.items()}, **paper)
    best_paper = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        photometry_block(cols, **paper)
        best_paper = min(best_paper, time.perf_counter() - t0)
    return {"rows": rows, "vectorised_stars_per_s": vec_rate, "loop_rows": loop_rows,
            "loop_stars_per_s": loop_rate, "ratio": vec_rate / loop_rate,
            "paper_model_stars_per_s": rows / best_paper}


def accuracy(survey: str) -> dict:
    from obpipe.engine.blockwise import open_products
    from obpipe.io import store
    from obpipe.pipeline import RunContext, run_pipeline
    from obpipe.stages.photometry import run
    from obpipe.validate import photometry_metrics

    with tempfile.TemporaryDirectory() as tmp:
        run_pipeline(survey, tmp, ["index"])
        t0 = time.perf_counter()
        report = run(RunContext(survey, tmp, scheduler="threads"))
        seconds = time.perf_counter() - t0
        metrics = photometry_metrics(store.open_cube(survey), open_products(tmp).load(),
                                     store.open_truth(survey).load())
    return {"stage": report, "stage_seconds": seconds, "metrics": metrics}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--loop-rows", type=int, default=500)
    ap.add_argument("--survey", help="simulated survey store: also print accuracy vs truth")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args(argv)
    if not args.skip_throughput:
        r = throughput(args.rows, args.loop_rows)
        print(f"vectorised : {r['rows']:>8d} rows  {r['vectorised_stars_per_s']:>12,.0f} stars/s")
        print(f"per-row loop: {r['loop_rows']:>7d} rows  {r['loop_stars_per_s']:>12,.0f} stars/s")
        print(f"ratio (vectorised / loop): {r['ratio']:,.0f}x")
        print(f"paper's model (F99 R_V=3.1, low-A0, no R_V scatter): "
              f"{r['paper_model_stars_per_s']:,.0f} stars/s vs default "
              f"{r['vectorised_stars_per_s']:,.0f}")
    if args.survey:
        print(json.dumps(accuracy(args.survey), indent=1))


if __name__ == "__main__":
    main()
