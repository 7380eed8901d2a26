"""Which stars make the tails of the M_Ks residuals at S/N > 50 (issue 15, the scatter).

Reads a finished run's catalog (``PRODUCTS/catalog.parquet``), the products' ``MKs_fold``
and the mock's ``truth`` group (with :func:`score_truth.load`, the independent scorer's
reader: no ``obpipe.validate`` code), and for single non-emission OB stars at S/N > 50
(the scorer's sample) prints the std and robust std of M_Ks - M_Ks,true with each group of
stars removed in turn, the group's own share, bias, std and pull std, and its share of the
|residual| > 3 robust-sigma tail. The groups are defined on the truth (supergiants,
evolved stars, log g < 3, extreme E(B-V), the pipeline's flags on these true singles...);
the ones marked "observable" are defined from catalog columns only and could be flagged
honestly on real data.

With ``--extra-scatter``: the check of the luminosity stage's extra error term
(``noise_model.fit_extra_scatter``, k E(B-V) at M_Ks < -3 and the constant term, fitted
on parallaxes): both are fitted on the S/N > 50 non-emission spectra not flagged broken of
one half of the star ids (by CRC32 of ``star_id``) with the catalog's out-of-fold M_Ks and
its ``MKs_err`` *without* them (the run's terms, network (a)'s, taken out again, the
broken spectra's term with them, and put back for scoring),
and scored on the other half against the truth, both ways round: pull std of single
non-emission OB stars per cell of catalog E(B-V) x M_Ks (S/N > 50) and per S/N bin,
before / after.

With ``--snr-offsets``: an M_Ks offset per S/N bin fitted without truth in parallax space
(eqs. 15-17: the catalog's out-of-fold M_Ks of every non-emission spectrum with a parallax,
the corrected parallax, 2-sigma / 3-sigma clipping with the truncated likelihood of
``noise_model.fit_extra_scatter``), beside the truth's median and mean M_Ks - M_Ks,true of
single non-emission OB stars in the same bin: could the low-S/N bias be calibrated on
parallaxes?

Usage::

    python benchmarks/mks_tails.py SURVEY.zarr PRODUCTS_DIR [--json OUT.json]
        [--extra-scatter | --snr-offsets]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from obpipe.stats import robust_std

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_truth import load  # noqa: E402  (the independent scorer's reader)


def _std(r: np.ndarray, err: np.ndarray) -> dict[str, Any]:
    ok = np.isfinite(r) & np.isfinite(err) & (err > 0)
    r, err = r[ok], err[ok]
    if r.size < 5:
        return {"n": int(r.size)}
    return {"n": int(r.size), "bias": float(np.median(r)), "std": float(np.std(r)),
            "robust_std": float(robust_std(r)), "pull_std": float(np.std(r / err))}


def tails(survey: str, products: str, min_snr: float = 50.0) -> dict[str, Any]:
    """Std of M_Ks - M_Ks,true at S/N > ``min_snr`` with each group removed (see module)."""
    cat, t, fold = load(survey, products)
    mks = cat["MKs"].to_numpy(float)
    mks[mks <= -9] = np.nan
    resid = mks - t["MKs_true"]
    mks_err = cat["MKs_err"].to_numpy(float)
    snr = cat["snr_g"].to_numpy(float)
    base = ((t["star_class"] == "OB") & ~t["is_binary"].astype(bool)
            & ~t["has_emission"].astype(bool) & (snr > min_snr) & np.isfinite(resid))
    ebv = cat["ebv"].to_numpy(float)
    plx_snr = cat["parallax"].to_numpy(float) / cat["parallax_error"].to_numpy(float)
    groups: dict[str, np.ndarray] = {
        "supergiant (truth)": t["is_supergiant"].astype(bool),
        "evolved (truth)": t["is_evolved"].astype(bool),
        "log g < 3 (truth)": t["logg_true"] < 3,
        "log g < 3.5 (truth)": t["logg_true"] < 3.5,
        "E(B-V)true > 2": t["ebv_true"] > 2,
        "E(B-V)true > 1": t["ebv_true"] > 1,
        "Teff > 30 kK (truth)": t["teff_true"] > 30000,
        "Teff < 12 kK (truth)": t["teff_true"] < 12000,
        "M_Ks,true < -4": t["MKs_true"] < -4,
        "binary_flag = 1 (observable)": cat["binary_flag"].to_numpy(int) == 1,
        "em_flag != 0 (observable)": cat["em_flag"].to_numpy(int) != 0,
        "quality_flags != 0 (observable)": cat["quality_flags"].to_numpy(int) != 0,
        "E(B-V) > 1 (observable)": ebv > 1,
        "MKs < -4 (observable)": mks < -4,
        "E(B-V) > 1 and MKs < -3 (observable)": (ebv > 1) & (mks < -3),
        "plx/err <= 10 (observable)": ~(plx_snr > 10),
    }
    if fold is not None:
        groups["never trained (MKs_fold = -1)"] = fold == -1
    r, e = resid[base], mks_err[base]
    rs = robust_std(r)
    tail = np.abs(r - np.median(r)) > 3 * rs
    out: dict[str, Any] = {"sample": _std(r, e), "n_tail_3sigma": int(tail.sum()), "groups": {}}
    for name, g in groups.items():
        g = np.asarray(g, bool)[base]
        out["groups"][name] = {
            "in_group": _std(r[g], e[g]), "removed": _std(r[~g], e[~g]),
            "share_of_tail": float(np.mean(g[tail])) if tail.any() else None,
            "share_of_sample": float(np.mean(g))}
    return out


SNR_BINS = ((5, 20), (20, 50), (50, 100), (100, 200), (200, np.inf))
CELLS_EBV = ((-np.inf, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, np.inf))


def extra_scatter_check(survey: str, products: str) -> dict[str, Any]:
    """Fit the extra M_Ks error term on one half of the star ids, score on the other (see
    the module docstring)."""
    import zlib

    from obpipe.engine.blockwise import open_products
    from obpipe.luminosity import noise_model as nm

    cat, t, _ = load(survey, products)
    p = open_products(products)
    if not np.array_equal(p["specid"].values, cat["specid"].to_numpy()):
        raise SystemExit("catalog and products rows differ in order")
    col = {k: p[k].values.astype(float) for k in ("Ks0", "Ks0_err", "parallax_corrected",
                                                    "parallax_corrected_error")}
    mks = cat["MKs"].to_numpy(float)
    mks[mks <= -9] = np.nan
    err = cat["MKs_err"].to_numpy(float)
    ebv = cat["ebv"].to_numpy(float)
    att = p["MKs_err"].attrs.get("noise_a_extra_scatter") or {}
    brk = (p["MKs_err"].attrs.get("noise_a_broken_scatter") or {}).get("sigma_mag", 0.0)
    broken = (cat["quality_flags"].to_numpy(int) & 16) > 0  # catalog bit broken_spectrum
    # the run added k E(B-V), the constant term and the broken spectra's term: out again
    add = nm.extra_error_mag(ebv, mks, broken, att.get("slope_mag_per_ebv", 0.0),
                             att.get("max_mks", nm.EXTRA_SCATTER_MAX_MKS),
                             att.get("sigma_const_mag", 0.0), brk)
    err = np.sqrt(np.clip(err**2 - add**2, 0, None))
    snr = cat["snr_g"].to_numpy(float)
    em = cat["em_flag"].to_numpy(int)
    half = np.array([zlib.crc32(str(s).encode()) % 2 for s in cat["star_id"].to_numpy()])
    fit_rows = (snr > 50) & (em == 0) & ~broken
    resid = mks - t["MKs_true"]
    sob = ((t["star_class"] == "OB") & ~t["is_binary"].astype(bool)
           & ~t["has_emission"].astype(bool) & np.isfinite(resid))
    out: dict[str, Any] = {"run_slope": att.get("slope_mag_per_ebv"), "halves": []}
    for h in (0, 1):
        sel = fit_rows & (half == h)
        fit = nm.fit_extra_scatter(mks[sel], err[sel], col["Ks0"][sel], col["Ks0_err"][sel],
                                   col["parallax_corrected"][sel],
                                   col["parallax_corrected_error"][sel], ebv[sel])
        err2 = np.hypot(err, nm.extra_error_mag(ebv, mks, broken, fit["slope_mag_per_ebv"],
                                                const_mag=fit["sigma_const_mag"],
                                                broken_mag=brk))
        score = sob & (half == 1 - h)
        rows: dict[str, Any] = {}
        for lum, lname in ((mks < -3, "MKs < -3"), (mks >= -3, "MKs >= -3")):
            for lo, hi in CELLS_EBV:
                c = score & lum & (ebv >= lo) & (ebv < hi) & (snr > 50)
                rows[f"{lname}, E(B-V) {lo:g}-{hi:g}"] = _cell(resid, err, err2, c)
        for lo, hi in SNR_BINS:
            rows[f"S/N {lo:g}-{hi:g}"] = _cell(resid, err, err2,
                                              score & (snr >= lo) & (snr < hi))
        out["halves"].append({"fit_half": h, "fit": fit, "pulls": rows})
    return out


def snr_offsets(survey: str, products: str) -> dict[str, Any]:
    """Parallax-space M_Ks offset per S/N bin beside the truth's bias (module docstring)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import ndtr

    from obpipe.binary import spectrophotometric_parallax_mas
    from obpipe.engine.blockwise import open_products

    cat, t, _ = load(survey, products)
    p = open_products(products)
    if not np.array_equal(p["specid"].values, cat["specid"].to_numpy()):
        raise SystemExit("catalog and products rows differ in order")
    ks0, ks0e, plx, pe = (p[k].values.astype(float) for k in (
        "Ks0", "Ks0_err", "parallax_corrected", "parallax_corrected_error"))
    mks = cat["MKs"].to_numpy(float)
    mks[mks <= -9] = np.nan
    err = cat["MKs_err"].to_numpy(float)
    snr = cat["snr_g"].to_numpy(float)
    ok = (np.isfinite(mks) & np.isfinite(err) & np.isfinite(ks0) & np.isfinite(plx)
          & (pe > 0) & (cat["em_flag"].to_numpy(int) == 0)
          & ((cat["quality_flags"].to_numpy(int) & 1) == 0))
    ps = spectrophotometric_parallax_mas(ks0, mks)
    var = pe**2 + (0.2 * np.log(10) * ps) ** 2 * (err**2 + ks0e**2)
    resid = mks - t["MKs_true"]
    sob = ((t["star_class"] == "OB") & ~t["is_binary"].astype(bool)
           & ~t["has_emission"].astype(bool) & np.isfinite(resid))
    out: dict[str, Any] = {}
    for lo, hi in SNR_BINS:
        sel = ok & (snr >= lo) & (snr < hi)
        keep = sel.copy()
        lo_b = np.full(sel.size, -np.inf)
        hi_b = np.full(sel.size, np.inf)

        def nll(d: float, keep: np.ndarray = keep, lo_b: np.ndarray = lo_b,
                hi_b: np.ndarray = hi_b) -> float:
            m = ps[keep] * 10 ** (-0.2 * d)
            sd = np.sqrt(var[keep])
            norm = np.clip(ndtr(hi_b[keep] / sd) - ndtr(lo_b[keep] / sd), 1e-300, None)
            return float(0.5 * np.sum((plx[keep] - m) ** 2 / var[keep]) + np.sum(np.log(norm)))

        d = 0.0
        for _ in range(20):
            d = minimize_scalar(nll, bounds=(-2, 2), method="bounded",
                                args=(keep, lo_b, hi_b)).x
            r = plx - ps * 10 ** (-0.2 * d)
            lo_b, hi_b = -2 * np.sqrt(var), 3 * np.sqrt(var)
            new = sel & (r >= lo_b) & (r <= hi_b)
            if np.array_equal(new, keep):
                break
            keep = new
        h = 0.01
        f = [nll(d + x, keep, lo_b, hi_b) for x in (-h, 0.0, h)]
        curv = (f[0] - 2 * f[1] + f[2]) / h**2
        q = sob & (snr >= lo) & (snr < hi)
        out[f"{lo:g}-{hi:g}"] = {
            "offset_mag": float(d), "offset_err": float(1 / np.sqrt(curv)) if curv > 0
            else float("nan"), "n_used": int(keep.sum()), "n": int(sel.sum()),
            "truth_median": float(np.median(resid[q])), "truth_mean": float(np.mean(resid[q])),
            "n_truth": int(q.sum())}
    return out


def _cell(resid: np.ndarray, err: np.ndarray, err2: np.ndarray, c: np.ndarray
          ) -> dict[str, Any]:
    ok = c & np.isfinite(err) & (err > 0)
    if ok.sum() < 5:
        return {"n": int(ok.sum())}
    return {"n": int(ok.sum()), "pull_std_before": float(np.std(resid[ok] / err[ok])),
            "pull_std_after": float(np.std(resid[ok] / err2[ok]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("survey")
    ap.add_argument("products")
    ap.add_argument("--min-snr", type=float, default=50.0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--extra-scatter", action="store_true",
                    help="check the extra M_Ks error term on halves of the star ids")
    ap.add_argument("--snr-offsets", action="store_true",
                    help="parallax-space M_Ks offset per S/N bin beside the truth's bias")
    a = ap.parse_args(argv)
    if a.snr_offsets:
        res = snr_offsets(a.survey, a.products)
        print("S/N bin: parallax-space offset (no truth) | truth median / mean M_Ks - "
              "M_Ks,true, single non-emission OB")
        for b, v in res.items():
            print(f"  {b:>9s}: {v['offset_mag']:+.3f} +- {v['offset_err']:.3f} "
                  f"({v['n_used']} of {v['n']}) | {v['truth_median']:+.3f} / "
                  f"{v['truth_mean']:+.3f} ({v['n_truth']})")
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return 0
    if a.extra_scatter:
        res = extra_scatter_check(a.survey, a.products)
        print(f"slope the run fitted (all candidates): {res['run_slope']}")
        for hv in res["halves"]:
            f = hv["fit"]
            print(f"fit on half {hv['fit_half']}: k = {f['slope_mag_per_ebv']:.3f} +- "
                  f"{f['slope_err']:.3f} mag per mag of E(B-V), constant "
                  f"{f['sigma_const_mag']:.3f} +- {f['sigma_const_err']:.3f} mag ({f['n_used']} of "
                  f"{f['n_input']} kept, {f['n_group_used']} with M_Ks < {f['max_mks']:g}); "
                  f"scored on the other half (single non-emission OB): pull std before -> after")
            for name, c in hv["pulls"].items():
                txt = (f"{c['pull_std_before']:.2f} -> {c['pull_std_after']:.2f}"
                       if "pull_std_before" in c else "-")
                print(f"  {name:28s} n {c['n']:5d}  {txt}")
        if a.json:
            Path(a.json).write_text(json.dumps(res, indent=1))
        return 0
    res = tails(a.survey, a.products, a.min_snr)
    s = res["sample"]
    print(f"single non-emission OB, S/N > {a.min_snr:g}: n {s['n']}, bias {s['bias']:+.3f}, "
          f"std {s['std']:.3f}, robust {s['robust_std']:.3f}; "
          f"{res['n_tail_3sigma']} beyond 3 robust sigma")
    print(f"{'group':38s} {'share':>6s} {'tail':>6s} | {'group bias/std/pull':>19s} | "
          f"{'std without':>11s} {'robust':>7s}")
    for name, g in res["groups"].items():
        ig, rm = g["in_group"], g["removed"]
        gtxt = (f"{ig['bias']:+.2f} / {ig['std']:.2f} / {ig['pull_std']:.2f}" if "std" in ig
                else "-")
        print(f"{name:38s} {g['share_of_sample']:6.3f} {g['share_of_tail'] or 0:6.3f} | "
              f"{gtxt:>19s} | {rm.get('std', np.nan):11.3f} {rm.get('robust_std', np.nan):7.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
