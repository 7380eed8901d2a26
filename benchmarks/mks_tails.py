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

Usage::

    python benchmarks/mks_tails.py SURVEY.zarr PRODUCTS_DIR [--json OUT.json]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("survey")
    ap.add_argument("products")
    ap.add_argument("--min-snr", type=float, default=50.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
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
