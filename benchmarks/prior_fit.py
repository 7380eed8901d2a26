"""The population prior's fit in the distance stage (issue 19): the Nelder-Mead fit it
had (a copy below, :func:`fit_nelder_mead`) beside :func:`obpipe.distance.fit_population_prior`
(L-BFGS-B with the analytic gradient), side by side on the same inputs: a pipeline run's
products (single stars' corrected parallax, Ks0, M_Ks; ``obpipe.stages.distance.
survey_prior_inputs``, what the stage fits).

Prints, for each method: seconds (the best and the median of ``--repeats`` runs, one
core), likelihood evaluations, -ln L at the optimum (both evaluated by the current
objective as well), the fitted hyperparameters; then the relative change of the catalog
distances (``dis``, ``dis_low``, ``dis_high``, 10^``logdis``) over all spectra (or the
first ``--rows``) when the distance stage uses one fit or the other (max and median of
|new / old - 1|); on a mock survey, each fit's distances scored against the truth
(single stars; ``benchmarks/distance_priors.py``'s minimax figures); and the load.

    python benchmarks/prior_fit.py SURVEY PRODUCTS [--repeats 3] [--rows 0] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
from distance_priors import minimax

from obpipe.config import DistanceConfig
from obpipe.distance import (
    PRIOR_FIT_PARAMETERS,
    PopulationPrior,
    _prior_fit_tables,
    _prior_neg_log_like,
    fit_population_prior,
)
from obpipe.engine.blockwise import open_products
from obpipe.io import store
from obpipe.stages.distance import PRODUCT_INPUTS, block, survey_prior_inputs
from obpipe.validate import distance_bin_metrics


def fit_nelder_mead(parallax_mas: np.ndarray, parallax_error_mas: np.ndarray,
                    dm0_mag: np.ndarray, sigma_tot_mag: np.ndarray, l_deg: np.ndarray,
                    b_deg: np.ndarray, mks_mag: np.ndarray, d_max_kpc: float,
                    start: PopulationPrior | None = None, max_stars: int = 3000,
                    seed: int = 0) -> tuple[PopulationPrior, dict[str, Any]]:
    """obpipe.distance.fit_population_prior as of 04daffb (Nelder-Mead, scipy logsumexp),
    with an evaluation counter added."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    start = start or PopulationPrior()
    plx = np.asarray(parallax_mas, dtype=np.float64)
    plx_err = np.asarray(parallax_error_mas, dtype=np.float64)
    dm0 = np.asarray(dm0_mag, dtype=np.float64)
    sig = np.asarray(sigma_tot_mag, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        use = np.flatnonzero(np.isfinite(plx) & (plx_err > 0) & np.isfinite(dm0) & (sig > 0)
                             & np.isfinite(np.asarray(l_deg)) & np.isfinite(np.asarray(b_deg)))
    if use.size > max_stars:
        use = np.sort(np.random.default_rng(seed).choice(use, max_stars, replace=False))
    d = np.geomspace(0.01, d_max_kpc, 200)
    ln_d = np.log(d)
    a = (((plx[use, None] - 1.0 / d[None, :]) / plx_err[use, None]) ** 2
         + ((dm0[use, None] - 5.0 * np.log10(d)[None, :] - 10.0) / sig[use, None]) ** 2)
    ln_like = -0.5 * a + ln_d[None, :]
    lr = np.radians(np.asarray(l_deg, dtype=np.float64)[use])
    br = np.radians(np.asarray(b_deg, dtype=np.float64)[use])
    r0 = start.sun_r_kpc
    r = np.sqrt(np.maximum(r0**2 + d[None, :] ** 2 * np.cos(br)[:, None] ** 2
                           - 2.0 * d[None, :] * r0 * (np.cos(br) * np.cos(lr))[:, None], 0.0))
    dr = r - r0
    z = d[None, :] * np.abs(np.sin(br))[:, None]
    m = np.asarray(mks_mag, dtype=np.float64)[use]
    dm_ref = np.where(np.isfinite(m), m, start.mks_ref_mag) - start.mks_ref_mag
    n_eval = [0]

    def nll(x: np.ndarray) -> float:
        n_eval[0] += 1
        if not (-1.0 <= x[0] <= 4.0 and -3.0 <= x[1] <= 4.0 and -5.0 <= x[2] <= 1.5
                and -3.0 <= x[3] <= 4.0 and -1.5 <= x[4] <= 2.5 and -0.5 <= x[5] <= 2.0):
            return 1e300
        ln_l = x[3] - 0.2 * np.log(10.0) * x[5] * dm_ref
        lp = (x[0] * ln_d[None, :] - dr * np.exp(-x[1]) - z * np.exp(-x[2])
              - np.exp(np.exp(x[4]) * (ln_d[None, :] - ln_l[:, None])))
        lp_d = lp + ln_d[None, :]
        return -float(np.sum(logsumexp(ln_like + lp, axis=1) - logsumexp(lp_d, axis=1)))

    x0 = np.array([start.beta, np.log(start.disk_scale_length_kpc),
                   np.log(start.disk_scale_height_kpc), np.log(start.selection_length_kpc),
                   np.log(start.selection_power), start.luminosity_power])
    f0 = nll(x0)
    res = minimize(nll, x0, method="Nelder-Mead",
                   options={"maxiter": 600, "xatol": 1e-2, "fatol": 0.05})
    fitted = PopulationPrior(float(res.x[0]), float(np.exp(res.x[1])), float(np.exp(res.x[2])),
                             float(np.exp(res.x[3])), float(np.exp(res.x[4])), float(res.x[5]),
                             start.mks_ref_mag, r0, start.weight)
    return fitted, {"n_stars": int(use.size), "neg_log_like_start": f0,
                    "neg_log_like": float(res.fun), "iterations": int(res.nit),
                    "evaluations": n_eval[0], "converged": bool(res.success)}


def _x(h: PopulationPrior) -> np.ndarray:
    return np.array([h.beta, np.log(h.disk_scale_length_kpc), np.log(h.disk_scale_height_kpc),
                     np.log(h.selection_length_kpc), np.log(h.selection_power),
                     h.luminosity_power])


def stage_inputs(survey_path: str, products: str, rows: int) -> dict[str, np.ndarray]:
    """The distance stage's inputs of the first ``rows`` spectra (0: all), read once."""
    p = open_products(products)
    cube = store.open_cube(survey_path)
    n = p.sizes["spec"] if rows <= 0 else min(rows, p.sizes["spec"])
    v = {k: p[k].values[:n] for k in PRODUCT_INPUTS}
    v["ra"], v["dec"] = cube["ra"].values[:n], cube["dec"].values[:n]
    return v


def catalog_columns(v: dict[str, np.ndarray], cfg: DistanceConfig, hyper: PopulationPrior,
                    chunk: int = 2000) -> dict[str, np.ndarray]:
    """The distance stage's columns (``obpipe.stages.distance.block``, blocks of
    ``chunk`` rows) of the rows ``v`` (:func:`stage_inputs`) under the fitted prior."""
    n = v["ra"].size
    parts = [block({k: a[i:i + chunk] for k, a in v.items()}, cfg, hyper)
             for i in range(0, n, chunk)]
    return {k: np.concatenate([q[k] for q in parts])
            for k in ("dis", "dis_low", "dis_high", "logdis", "logdis_err", "distance_flags")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("survey")
    ap.add_argument("products")
    ap.add_argument("--repeats", type=int, default=3, help="timed fits per method")
    ap.add_argument("--rows", type=int, default=0, help="catalog rows compared (0: all)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"({os.cpu_count()} CPUs)")
    cfg = DistanceConfig()
    inputs = survey_prior_inputs(args.survey, args.products, cfg)
    rows = stage_inputs(args.survey, args.products, args.rows)
    out: dict[str, Any] = {}
    fits = {}
    for name, fn in (("nelder_mead", fit_nelder_mead), ("lbfgsb_gradient", fit_population_prior)):
        secs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            hyper, info = fn(**inputs)
            secs.append(time.perf_counter() - t0)
        fits[name] = hyper
        out[name] = {"seconds_best": min(secs), "seconds_median": float(np.median(secs)),
                     "hyperparameters": hyper.as_dict(), **info}
    # both optima under the current objective (same grid, same stars)
    use = np.flatnonzero(np.isfinite(inputs["parallax_mas"])
                         & (inputs["parallax_error_mas"] > 0) & np.isfinite(inputs["dm0_mag"])
                         & (inputs["sigma_tot_mag"] > 0))
    if use.size > 3000:
        use = np.sort(np.random.default_rng(0).choice(use, 3000, replace=False))
    keys = ("parallax_mas", "parallax_error_mas", "dm0_mag", "sigma_tot_mag", "l_deg",
            "b_deg", "mks_mag")
    tables = _prior_fit_tables(*(np.asarray(inputs[k], dtype=np.float64)[use] for k in keys),
                               cfg.d_max_kpc, PopulationPrior())
    for name, h in fits.items():
        out[name]["neg_log_like_current_objective"] = _prior_neg_log_like(_x(h), tables)[0]
    for name, r in out.items():
        hp = r["hyperparameters"]
        print(f"== {name}: {r['seconds_best']:.2f} s best / {r['seconds_median']:.2f} s "
              f"median of {args.repeats}; {r['evaluations']} evaluations, "
              f"{r['iterations']} iterations; -lnL {r['neg_log_like']:.3f} (start "
              f"{r['neg_log_like_start']:.3f}; current objective "
              f"{r['neg_log_like_current_objective']:.3f})")
        print("   beta {beta:.3f}, h_R {disk_scale_length_kpc:.2f} kpc, h_z "
              "{disk_scale_height_kpc:.3f} kpc, L_0 {selection_length_kpc:.3f} kpc, alpha "
              "{selection_power:.3f}, gamma {luminosity_power:.3f}".format(**hp))
        if "standard_errors" in r:
            print("   standard errors: " + ", ".join(
                f"{k} {r['standard_errors'][k]:.3f}" for k in PRIOR_FIT_PARAMETERS)
                + f"; at a bound: {r['at_bound']}")
    out["speedup_best"] = out["nelder_mead"]["seconds_best"] / out["lbfgsb_gradient"][
        "seconds_best"]
    print(f"speed-up (best of each): {out['speedup_best']:.1f}x")
    t0 = time.perf_counter()
    cols = {name: catalog_columns(rows, cfg, h) for name, h in fits.items()}
    change = {}
    a, b = cols["nelder_mead"], cols["lbfgsb_gradient"]
    for k in ("dis", "dis_low", "dis_high", "logdis"):
        x, y = (10.0 ** a[k], 10.0 ** b[k]) if k == "logdis" else (a[k], b[k])
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
        rel = np.abs(y[ok] / x[ok] - 1.0)
        name = "10^logdis" if k == "logdis" else k
        change[name] = {"n": int(ok.sum()), "max": float(rel.max()),
                        "median": float(np.median(rel)),
                        "p99": float(np.percentile(rel, 99))}
        print(f"   {name:9s}: |new/old - 1| max {rel.max():.2e}, 99th pct "
              f"{np.percentile(rel, 99):.2e}, median {np.median(rel):.2e} over {ok.sum()} "
              "spectra")
    out["catalog_relative_change"] = change
    if store.has_truth(args.survey):
        truth = store.open_truth(args.survey)
        # single stars (truth and binary_flag) against the mock's truth, as
        # benchmarks/distance_priors.py scores a prior
        n = rows["ra"].size
        d_true = truth["distance_kpc_true"].values[:n]
        single = ~truth["is_binary"].values[:n].astype(bool) & (rows["binary_flag"] == 0)
        for name, c in cols.items():
            m = distance_bin_metrics(d_true, c["dis"], c["dis_low"], c["dis_high"], single,
                                     c["distance_flags"], logdis_err=c["logdis_err"])
            out[name]["truth_minimax"] = mm = minimax(m)
            print(f"   truth, {name}: max |bias| {mm['max_abs_bias']:.3f}, max coverage "
                  f"distance {mm['max_coverage_distance']:.3f}; per bin max |bias| "
                  f"{mm['per_bin']}")
    out["catalog_seconds"] = time.perf_counter() - t0
    load = os.getloadavg()
    out["load_average_end"] = load
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
