"""Distance priors compared on a pipeline run over a mock survey (issue 18, item 1).

For the paper's flat prior, the EDSD prior of Bailer-Jones et al. (2018) and the
Galactic population prior (fitted to the run's own single stars, tempered by
``--weights``), the distances of every spectrum are recomputed from the run's products
(the spectroscopic M_Ks of the network, out of fold for training stars; Ks0; the
zero-point-corrected parallax with the photometry stage's current external errors) and
scored against the mock's truth on single stars (truth ``is_binary`` false and
``binary_flag`` 0): per bin of true and of catalogued distance, the median of
true/dis - 1 and the 16-84 % coverage (``obpipe.validate.distance_bin_metrics``); also
the stars at the grid edge and the modes outside their interval, over all spectra, and
the minimax figures by which a prior is chosen: the largest |bias| over the five bins and
both binnings, and the largest distance of a coverage from [0.62, 0.74]. With
``--ob-singles`` the stars scored are those of ``benchmarks/score_truth.py`` (truth
single OB stars and interlopers, whatever their binary_flag).

    python benchmarks/distance_priors.py SURVEY PRODUCTS [--weights 0.6 1.0] [--ob-singles]
        [--point-estimate auto|mode|log_mean] [--deshrink]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

import numpy as np

from obpipe.config import DISTANCE_POINT_ESTIMATES, DistanceConfig
from obpipe.distance import (
    distance_modulus_terms,
    fit_population_prior,
    galactic_lb_deg,
    population_prior_terms,
    summarize_distance_posteriors,
)
from obpipe.engine.blockwise import open_products
from obpipe.io import store
from obpipe.photometry.parallax import external_parallax_error
from obpipe.validate import distance_bin_metrics


def minimax(m: dict) -> dict:
    """The largest |median(true/dis - 1)| and the largest distance of a 16-84 % coverage
    from [0.62, 0.74] over the bins of both binnings (the criterion a prior is chosen by),
    and the largest |bias| of each bin over the two binnings."""
    rows = [r for key in ("by_true_distance", "by_catalog_distance")
            for r in m[f"distance_bins_{key}"].values() if r["n"]]
    per_bin = {lab: round(max(abs(m[f"distance_bins_{key}"][lab]["median_true_over_dis_minus_1"])
                              for key in ("by_true_distance", "by_catalog_distance")
                              if m[f"distance_bins_{key}"][lab]["n"]), 3)
               for lab in m["distance_bins_by_true_distance"]}
    return {"max_abs_bias": max(abs(r["median_true_over_dis_minus_1"]) for r in rows),
            "max_coverage_distance": max(max(0.62 - r["coverage_16_84"],
                                             r["coverage_16_84"] - 0.74, 0.0) for r in rows),
            "per_bin": per_bin}


def deshrunk_mks(p: Any, snr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """M_Ks and its error undone from the networks' regression towards the sample mean:
    a straight line M_est - M_geo = a + b M_geo fitted to the out-of-fold values of the
    training stars (``MKs_fold`` >= 0, binary_flag 0, ``MKs_geo_err`` < 0.3 mag) per S/N
    group (> 100, 50-100, < 50; a group of < 200 stars takes all at S/N >= 50), inverted:
    M = (M_est - a) / (1 + b), error / (1 + b). Uses no truth."""
    mks = np.where(p["MKs"].values <= -9, np.nan, p["MKs"].values)
    err = p["MKs_err"].values.astype(float)
    geo, geo_err = p["MKs_geo"].values, p["MKs_geo_err"].values
    with np.errstate(invalid="ignore"):
        ok = ((p["MKs_fold"].values >= 0) & np.isfinite(geo) & (geo_err < 0.3)
              & (p["binary_flag"].values == 0) & np.isfinite(mks))
    out, out_err = mks.copy(), err.copy()
    for lo, hi in ((100.0, np.inf), (50.0, 100.0), (0.0, 50.0)):
        fit = ok & (snr >= lo) & (snr < hi)
        if fit.sum() < 200:
            fit = ok & (snr >= 50.0)
        b, a = np.polyfit(geo[fit], mks[fit] - geo[fit], 1)
        rows = (snr >= lo) & (snr < hi)
        out[rows] = (mks[rows] - a) / (1.0 + b)
        out_err[rows] = err[rows] / (1.0 + b)
        print(f"de-shrink S/N {lo:g}-{hi:g}: a = {a:+.3f} mag, slope {b:+.3f} "
              f"({int(fit.sum())} training stars)")
    return out, out_err


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("survey")
    ap.add_argument("products")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.6, 1.0])
    ap.add_argument("--json", default=None, help="write the metrics here too")
    ap.add_argument("--ob-singles", action="store_true",
                    help="score truth-single OB stars and interlopers (score_truth.py)")
    ap.add_argument("--point-estimate", default="auto", choices=DISTANCE_POINT_ESTIMATES,
                    help="DistanceConfig.point_estimate (auto: mode for flat / edsd, "
                    "10^logdis for population)")
    ap.add_argument("--deshrink", action="store_true",
                    help="M_Ks de-shrunk first (deshrunk_mks: tried, not kept)")
    args = ap.parse_args()
    survey = store.open_cube(args.survey)
    truth = store.open_truth(args.survey)
    p = open_products(args.products)
    v = {k: p[k].values for k in ("parallax_corrected", "Ks0", "Ks0_err", "MKs", "MKs_err",
                                  "binary_flag")}
    if args.deshrink:
        v["MKs"], v["MKs_err"] = deshrunk_mks(p, survey["snr_g"].values)
    plx_err = external_parallax_error(survey["parallax_error"].values,
                                      survey["phot_g_mean_mag"].values,
                                      survey["gaia_release"].values)
    dm0, sig = distance_modulus_terms(v["Ks0"], v["Ks0_err"], v["MKs"], v["MKs_err"])
    binary = v["binary_flag"] == 1
    dm0_used = np.where(binary, np.nan, dm0)
    d_true = truth["distance_kpc_true"].values
    single = ~truth["is_binary"].values.astype(bool) & (v["binary_flag"] == 0)
    if args.ob_singles:
        cls = np.array(truth["star_class"].values.tolist(), dtype=object).astype("U16")
        single = ~truth["is_binary"].values.astype(bool) & np.isin(cls, ["OB", "interloper"])
    lon, lat = galactic_lb_deg(survey["ra"].values, survey["dec"].values)
    t0 = time.perf_counter()
    hyper, info = fit_population_prior(np.where(v["binary_flag"] == 0,
                                                v["parallax_corrected"], np.nan),
                                       plx_err, dm0, sig, lon, lat, v["MKs"], 30.0)
    fit_s = time.perf_counter() - t0
    results = {"population_prior_fit": {"hyperparameters": hyper.as_dict(), **info,
                                         "seconds": fit_s}}
    runs = [("flat", None), ("edsd", None)] + [("population", w) for w in args.weights]
    for prior, w in runs:
        cfg = DistanceConfig(prior=prior, point_estimate=args.point_estimate)
        pt = None
        if prior == "population":
            pt = population_prior_terms(lon, lat, v["MKs"], dataclasses.replace(hyper, weight=w),
                                        cfg.d_max_kpc)
        t0 = time.perf_counter()
        res = summarize_distance_posteriors(v["parallax_corrected"], plx_err, dm0_used, sig,
                                            cfg, prior_terms=pt)
        m = distance_bin_metrics(d_true, res["dis"], res["dis_low"], res["dis_high"], single,
                                 res["distance_flags"], logdis_err=res["logdis_err"])
        m["seconds"] = time.perf_counter() - t0
        name = prior if w is None else f"population_w{w:g}"
        results[name] = m
        print(f"== {name}  ({m['seconds']:.1f} s; at grid edge {m['at_grid_edge']}, "
              f"unflagged {m['at_grid_edge_unflagged']}; mode outside interval unflagged "
              f"{m['mode_outside_interval_unflagged']})")
        for key in ("by_true_distance", "by_catalog_distance"):
            row = " | ".join(
                f"{lab}: n={r['n']} bias={r['median_true_over_dis_minus_1']:+.3f} "
                f"cov={r['coverage_16_84']:.2f}" if r["n"] else f"{lab}: n=0"
                for lab, r in m[f"distance_bins_{key}"].items())
            print(f"   {key:20s} {row}")
        bound = {lab: round(r.get("min_max_bias_bound", float("nan")), 3)
                 for lab, r in m["distance_bins_by_true_distance"].items()}
        print(f"   closed-form bound on max(|bias by truth|, |bias by catalog|): {bound}")
        m["minimax"] = minimax(m)
        print("   minimax: max |bias| {max_abs_bias:.3f}, max coverage distance "
              "{max_coverage_distance:.3f}; per bin max |bias| {per_bin}".format(**m["minimax"]))
        # the posterior mean of log d (the catalogue's logdis) as the point estimate
        m_log = distance_bin_metrics(d_true, 10.0 ** res["logdis"], res["dis_low"],
                                     res["dis_high"], single)
        m["minimax_10^logdis"] = minimax(m_log)
        print("   10^logdis as the estimate: max |bias| {max_abs_bias:.3f}; per bin max |bias| "
              "{per_bin}".format(**m["minimax_10^logdis"]))
    print("population prior fit:", json.dumps(results["population_prior_fit"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
