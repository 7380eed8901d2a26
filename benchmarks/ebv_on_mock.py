"""E(B-V) on the honest mock (issue 15 item 3b/3c, issue 20): the pipeline beside oracles.

Reads a simulated survey (``obpipe simulate``; its ``truth`` group is read here, never by
the pipeline) and prints E(B-V) - ebv_true for single, non-emission OB stars with all
seven E(B-V) bands and a survey Teff (the selection of
``photometry_metrics``' ``non_emission_all_bands_single``), overall and by true E(B-V):

* ``pipeline``: the stage's pure function with its defaults (survey Teff, G23 R_V = 3.1),
  and the E(B-V) of each adjacent colour alone (band choice);
* ``pipeline, R_V scatter 0.25``: the same with the mock's own sigma(R_V) in the error
  (only the pulls change);
* ``oracle fixed R_V``: the true Teff and log g, and the mock's own curve family and band
  integration (``obpipe.simulate.sed.band_extinction``, a blackbody through the pyphot
  passbands) at R_V = 3.1: the best a fixed-R_V estimator can do; what is left is the
  mock's R_V scatter and intrinsic colours;
* ``oracle true R_V``: the same at each star's true R_V (binned by 0.05): what is left is
  the mock's intrinsic colours (Mamajek + scatter) against the pipeline's table;
* ``R_V fitted (fit_r_v)``: the stage with ``[photometry] fit_r_v = true``
  (:func:`obpipe.photometry.extinction.ebv_rv_fit`: E(B-V) and R_V per star on a grid of
  G23 curves, prior N(3.1, 0.18)), and its R_V against ``R_V_true`` by true E(B-V);
* the budget (``--budget``): the pipeline's estimator at each star's true R_V, and on
  "exact colours" (magnitudes made of the pipeline's own intrinsic magnitudes plus the
  mock's true band extinction, no noise: what is left is the curve family and R_V), at
  R_V = 3.1 and at the true R_V; by true E(B-V) and by |R_V_true - 3.1|, for the selection
  of ``benchmarks/score_truth.py`` (single OB stars, any bands, emission included) too;
* ``R_V fitted (linearised)``: the pipeline's per-colour E(B-V) at R_V = 3.1 combined by
  generalised least squares with the R_V, Teff and log g sensitivities of each colour as
  common-mode terms (equivalent to fitting E(B-V) and R_V jointly with a N(3.1, 0.18)
  prior): what weighting colours by their R_V sensitivity gives; and the same on the
  ``oracle fixed R_V`` inputs and curve (what an R_V fit gives when the curve family is
  right).

    obpipe simulate --n-stars 4000 --seed 7 --out /tmp/mock4k.zarr
    python benchmarks/ebv_on_mock.py /tmp/mock4k.zarr [--budget]

The last line times the stage's block function on every row of the survey, fixed R_V and
fitted R_V side by side (best of three each, after one warm-up call that builds the
coefficient grids).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from obpipe.io import store
from obpipe.photometry import extinction
from obpipe.photometry.block import SURVEY_VARS, photometry_block
from obpipe.photometry.options import BAND_COLUMNS
from obpipe.simulate import sed
from obpipe.stats import robust_std


def mock_law(law: str) -> extinction.CoefficientModel:
    """The mock's own band extinction as a :data:`extinction.CoefficientModel`."""
    def model(teff, a0, r_v, bands):
        ebv = np.maximum(a0 / r_v, 1e-3)
        a = sed.band_extinction(teff, ebv, np.full(np.shape(teff), r_v), law, bands=bands)
        return {b: a[b] / ebv for b in bands}
    return model


def at_true_rv(cols: dict, r_v_true: np.ndarray, **kw) -> dict[str, np.ndarray]:
    """photometry_block with each star's true R_V (bins of 0.05), no R_V error term."""
    n = r_v_true.size
    out = {k: np.full(n, np.nan) for k in ("ebv", "ebv_err")}
    out["ebv_nbands"] = np.zeros(n, int)
    edges = np.arange(2.275, 4.7, 0.05)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        s = (r_v_true >= lo) & (r_v_true < hi)
        if s.any():
            o = photometry_block({k: v[s] for k, v in cols.items()},
                                 r_v=float(np.clip(0.5 * (lo + hi), 2.3, 4.6)),
                                 r_v_scatter=0.0, **kw)
            for k in out:
                out[k][s] = o[k]
    return out


def rv_fitted(cols: dict, r_v: float = extinction.DEFAULT_R_V,
              r_v_scatter: float = extinction.R_V_SCATTER,
              law: str | extinction.CoefficientModel = extinction.DEFAULT_LAW,
              ) -> dict[str, np.ndarray]:
    """GLS of the per-colour E(B-V) with R_V / Teff / log g sensitivities as nuisances."""
    bands = extinction.EBV_BANDS
    mags = np.column_stack([np.asarray(cols[BAND_COLUMNS[b][0]], float) for b in bands])
    errs = np.column_stack([np.asarray(cols[BAND_COLUMNS[b][1]], float) for b in bands])
    teff, logg = np.asarray(cols["teff"], float), np.asarray(cols["logg"], float)
    te, ge = np.asarray(cols["teff_err"], float), np.asarray(cols["logg_err"], float)
    names = extinction.colour_names(bands)

    def per_colour(t=teff, g=logg, rv=r_v):
        r = extinction.ebv_from_colour_excess(mags, errs, t, g, te, ge, r_v=rv, law=law,
                                              r_v_scatter=0.0, include_parameter_error=False)
        return r, np.column_stack([r["per_colour"][c] for c in names])

    r0, e0 = per_colour()
    s_ln = np.where(np.isfinite(te) & (te > 0), te / teff, extinction.DEFAULT_TEFF_FRAC_ERR)
    sens = [(per_colour(rv=r_v + r_v_scatter)[1] - per_colour(rv=r_v - r_v_scatter)[1]) / 2,
            (per_colour(t=teff * np.exp(s_ln))[1] - per_colour(t=teff * np.exp(-s_ln))[1]) / 2,
            (per_colour(g=logg + ge)[1] - per_colour(g=logg - ge)[1]) / 2]
    coeff = extinction.coefficient_matrix(teff, bands, r_v * np.clip(r0["ebv"], 0.003, None),
                                          law, r_v)
    k = coeff[:, :-1] - coeff[:, 1:]
    n, nc = e0.shape
    cov = np.zeros((n, nc, nc))
    for i in range(nc):
        var_c = errs[:, i] ** 2 + errs[:, i + 1] ** 2 + 2 * extinction.INTRINSIC_MAG_ERROR_MAG**2
        cov[:, i, i] = np.maximum(var_c, extinction.COLOUR_ERROR_FLOOR_MAG**2) / k[:, i] ** 2
        if i + 1 < nc:
            shared = errs[:, i + 1] ** 2 + extinction.INTRINSIC_MAG_ERROR_MAG**2
            cov[:, i, i + 1] = cov[:, i + 1, i] = -shared / (k[:, i] * k[:, i + 1])
    for v in sens:
        cov += v[:, :, None] * v[:, None, :]
    ok = np.isfinite(e0).all(axis=1) & np.isfinite(cov).all(axis=(1, 2))
    w = np.linalg.inv(cov[ok]) @ np.ones(nc)
    ebv = np.full(n, np.nan)
    err = np.full(n, np.nan)
    ebv[ok] = np.einsum("ni,ni->n", w, e0[ok]) / w.sum(axis=1)
    err[ok] = 1.0 / np.sqrt(w.sum(axis=1))
    return {"ebv": ebv, "ebv_err": err, "ebv_nbands": np.where(ok, len(bands), 0)}


def line(name: str, out: dict, truth: dict, sel: np.ndarray, all_bands: bool = True,
         bins: tuple[tuple[float, float], ...] = ((0.0, 0.7), (0.7, 1.2), (1.2, 9.0)),
         by_rv: bool = False) -> None:
    """Bias (mean; median for the score_truth selection), scatter, robust scatter and pull
    std of E(B-V) - truth over ``sel`` (with all seven bands if ``all_bands``), by true
    E(B-V) and optionally by |R_V_true - 3.1|."""
    s = sel & np.isfinite(out["ebv"])
    if all_bands:
        s &= np.asarray(out["ebv_nbands"]) == len(extinction.EBV_BANDS)
    d = out["ebv"][s] - truth["ebv_true"][s]
    p = d / out["ebv_err"][s]
    print(f"{name:34s} n={s.sum():5d} bias={d.mean():+.4f} median={np.median(d):+.4f} "
          f"scatter={d.std():.4f} robust={robust_std(d):.4f} pull_std={p.std():.2f}")
    if "AKs" in out and "AKs_true" in truth:
        a = out["AKs"][s] - truth["AKs_true"][s]
        print(f"    A_Ks - truth: median={np.median(a):+.4f} scatter={a.std():.4f} "
              f"robust={robust_std(a):.4f}")
    e = truth["ebv_true"][s]
    for lo, hi in bins:
        q = (e >= lo) & (e < hi)
        print(f"    E(B-V)_true {lo:.1f}-{hi:.1f}: n={q.sum():5d} bias={d[q].mean():+.4f} "
              f"scatter={d[q].std():.4f} pull_std={p[q].std():.2f}")
    if by_rv:
        dr = np.abs(truth["R_V_true"][s] - extinction.DEFAULT_R_V)
        for lo, hi in ((0.0, 0.1), (0.1, 0.25), (0.25, 9.0)):
            q = (dr >= lo) & (dr < hi)
            print(f"    |R_V_true - 3.1| {lo:.2f}-{hi:.2f}: n={q.sum():5d} bias="
                  f"{d[q].mean():+.4f} scatter={d[q].std():.4f}")


def rv_versus_truth(out: dict, truth: dict, sel: np.ndarray) -> None:
    """Fitted R_V against R_V_true by true E(B-V): mean, std, correlation, std of the
    difference, median error and pull std."""
    s = sel & np.isfinite(out["r_v"])
    rv, rt, e = out["r_v"][s], truth["R_V_true"][s], truth["ebv_true"][s]
    err = out["r_v_err"][s]
    for lo, hi in ((0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 9.0)):
        q = (e >= lo) & (e < hi)
        print(f"    R_V at E(B-V)_true {lo:.1f}-{hi:.1f}: n={q.sum():5d} fitted mean "
              f"{rv[q].mean():.3f} std {rv[q].std():.3f} (truth {rt[q].mean():.3f} / "
              f"{rt[q].std():.3f}), corr {np.corrcoef(rv[q], rt[q])[0, 1]:.3f}, std(fit - true) "
              f"{np.std(rv[q] - rt[q]):.3f}, median r_v_err {np.median(err[q]):.3f}, pull std "
              f"{np.std((rv[q] - rt[q]) / err[q]):.2f}")


def exact_colours(cols: dict, truth: dict, law: str) -> dict:
    """Survey columns whose E(B-V) bands are the pipeline's intrinsic magnitudes (at the
    survey Teff / log g, defaults where missing) plus the mock's true band extinction (its
    ``law`` at the true Teff, E(B-V) and R_V), noise-free; bands missing in the survey stay
    missing."""
    bands = extinction.EBV_BANDS
    teff = np.asarray(cols["teff"], float)
    logg = np.asarray(cols["logg"], float)
    t = np.where(np.isfinite(teff) & (teff > 0), teff, extinction.DEFAULT_TEFF_K)
    g = np.where(np.isfinite(logg), logg, extinction.DEFAULT_LOGG)
    m0 = extinction.intrinsic_magnitudes(t, g, bands)
    a = sed.band_extinction(truth["teff_true"], truth["ebv_true"], truth["R_V_true"], law,
                            bands=bands)
    out = dict(cols)
    for i, b in enumerate(bands):
        col = BAND_COLUMNS[b][0]
        if col in cols:
            out[col] = np.where(np.isfinite(np.asarray(cols[col], float)), m0[:, i] + a[b],
                                np.nan)
    return out


def timing(cols: dict) -> str:
    """Wall time of the block function on every row: fixed R_V vs fitted (best of 3)."""
    res = {}
    for name, kw in (("fixed R_V", {}), ("R_V fitted", {"fit_r_v": True})):
        photometry_block({k: v[:10] for k, v in cols.items()}, **kw)  # grids built
        best = np.inf
        for _ in range(3):
            t0 = time.perf_counter()
            photometry_block(cols, **kw)
            best = min(best, time.perf_counter() - t0)
        res[name] = best
    n = len(next(iter(cols.values())))
    return f"block on {n} rows: " + ", ".join(f"{k} {v:.2f} s" for k, v in res.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("survey")
    ap.add_argument("--budget", action="store_true",
                    help="also the error budget (true R_V, exact colours) and the "
                         "score_truth selection")
    ap.add_argument("--prior-sigma", type=float, nargs="*", default=[],
                    help="also the R_V fit with these prior sigmas (instead of 0.18)")
    args = ap.parse_args()
    ds = store.open_cube(args.survey)
    tr = store.open_truth(args.survey).load()
    cols = {v: np.asarray(ds[v].values) for v in SURVEY_VARS if v in ds.variables}
    truth = {k: np.asarray(tr[k].values) for k in
             ("ebv_true", "R_V_true", "teff_true", "logg_true", "has_emission", "is_binary",
              "star_class", "AKs_true")}
    law = json.loads(ds.attrs["simulation_config"]).get("extinction_law", "G23")
    sel = ((truth["star_class"] == "OB") & ~truth["has_emission"].astype(bool)
           & ~truth["is_binary"].astype(bool) & np.isfinite(np.asarray(cols["teff"], float)))
    print(f"mock: {args.survey}, its curve family {law}, R_V_true std "
          f"{np.std(truth['R_V_true']):.3f}")
    base = photometry_block(cols, per_colour=True)
    line("pipeline", base, truth, sel)
    s = sel & (base["ebv_nbands"] == len(extinction.EBV_BANDS))
    for name in extinction.colour_names(extinction.EBV_BANDS):
        d = base[f"ebv_{name}"][s] - truth["ebv_true"][s]
        print(f"    from {name} alone: bias={d.mean():+.4f} scatter={d.std():.4f} robust="
              f"{robust_std(d):.4f}")
    line("pipeline, R_V scatter 0.25", photometry_block(cols, r_v_scatter=0.25), truth, sel)
    oracle = dict(cols, teff=truth["teff_true"], logg=truth["logg_true"],
                  teff_err=0.01 * truth["teff_true"], logg_err=np.full(truth["teff_true"].size,
                                                                        0.05))
    line("oracle fixed R_V", photometry_block(oracle, law=mock_law(law)), truth, sel)
    line("oracle true R_V", at_true_rv(oracle, truth["R_V_true"], law=mock_law(law)), truth,
         sel)
    line("R_V fitted (linearised)", rv_fitted(cols), truth, sel)
    line("oracle fixed-R_V + R_V fitted", rv_fitted(oracle, law=mock_law(law)), truth, sel)
    fit = photometry_block(cols, fit_r_v=True)
    line("R_V fitted (fit_r_v)", fit, truth, sel)
    rv_versus_truth(fit, truth, sel)
    for sigma in args.prior_sigma:
        other = photometry_block(cols, fit_r_v=True, r_v_scatter=sigma)
        line(f"R_V fitted, prior sigma {sigma:.2f}", other, truth, sel)
        line("  same, score_truth selection", other, truth,
             (truth["star_class"] == "OB") & ~truth["is_binary"].astype(bool), all_bands=False)
    if args.budget:
        wide = ((0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 9.0))
        obs = (truth["star_class"] == "OB") & ~truth["is_binary"].astype(bool)
        ex = exact_colours(cols, truth, law)
        print("budget, score_truth selection (single OB, any bands, emission included):")
        for name, out in (("pipeline", base),
                          ("pipeline at true R_V", at_true_rv(cols, truth["R_V_true"])),
                          ("exact colours, R_V = 3.1", photometry_block(ex)),
                          ("exact colours, true R_V", at_true_rv(ex, truth["R_V_true"])),
                          ("R_V fitted (fit_r_v)", fit),
                          ("R_V fitted, exact colours", photometry_block(ex, fit_r_v=True))):
            line(name, out, truth, obs, all_bands=False, bins=wide, by_rv=True)
        rv_versus_truth(fit, truth, obs)
    print("# " + timing(cols))


if __name__ == "__main__":
    main()
