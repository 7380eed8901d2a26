"""The |pull| > 3 stars at high S/N, and what the pipeline measures about them (issue 15).

For single non-emission OB stars (the scorer's sample, read with
:func:`score_truth.load`: the published catalog, the products' ``MKs_fold`` and the mock's
``truth``) at S/N > ``--min-snr`` (100), per run given:

* std, robust std and pull std of M_Ks - M_Ks,true for never-trained and out-of-fold stars,
  with and without the spectra the catalog flags broken (``quality_flags`` bit 16);
* pull std per S/N bin (5-20, 20-50, 50-100, 100-200, > 200), both groups;
* the |pull| > 3 stars: how many (a Gaussian gives 0.27 %), how many flagged broken, the
  sign, their truth (log g, Teff, E(B-V), R_V, M_Ks, supergiants) beside the sample's;
* for the tail stars that are not flagged broken, the area under the ROC curve (0.5: no
  separation) of what the pipeline measures per spectrum: PCA reconstruction chi2
  (``quality_chi2``, ``window_chi2_max``), the ensemble spread ``MKs_spread``, the H-alpha
  chi2, the E(B-V) chi2, and the Mahalanobis distance of the full-range PCA coefficients
  (first 20) from the stars that trained network (a) (``luminosity_set`` bit 1) — the
  out-of-training-domain measure a novelty flag would use.

Usage::

    python benchmarks/error_tails.py SURVEY.zarr PRODUCTS_DIR [PRODUCTS_DIR ...]
        [--min-snr 100] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

from obpipe.stats import robust_std

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_truth import SNR_BINS, load  # noqa: E402  (the independent scorer's reader)

BROKEN_CATALOG_BIT = 16  # obpipe.catalog.QUALITY_BITS["broken_spectrum"]
N_PCA = 20


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (Mann-Whitney U / n1 n0)."""
    ok = np.isfinite(score)
    s, p = score[ok], positive[ok]
    if p.sum() == 0 or (~p).sum() == 0:
        return float("nan")
    u = mannwhitneyu(s[p], s[~p], alternative="two-sided").statistic
    return float(u / (p.sum() * (~p).sum()))


def _stats(r: np.ndarray, e: np.ndarray) -> dict[str, Any]:
    ok = np.isfinite(r) & np.isfinite(e) & (e > 0)
    r, e = r[ok], e[ok]
    if r.size < 5:
        return {"n": int(r.size)}
    return {"n": int(r.size), "std": float(np.std(r)), "robust_std": float(robust_std(r)),
            "pull_std": float(np.std(r / e)), "robust_pull_std": float(robust_std(r / e))}


def mahalanobis_to_training(coeff: np.ndarray, train: np.ndarray, n: int = N_PCA
                            ) -> np.ndarray:
    """Mahalanobis distance of each row's first ``n`` PCA coefficients from the rows
    ``train`` (mean and covariance of those rows)."""
    c = np.asarray(coeff, dtype=np.float64)[:, :n]
    t = c[train & np.all(np.isfinite(c), axis=1)]
    inv = np.linalg.pinv(np.cov(t.T))
    d = c - t.mean(axis=0)
    return np.sqrt(np.einsum("ij,jk,ik->i", d, inv, d))


def analyse(survey: str, products: str, min_snr: float = 100.0) -> dict[str, Any]:
    """Every figure of the module docstring for one run."""
    from obpipe.engine.blockwise import open_products

    cat, t, fold = load(survey, products)
    p = open_products(products)
    if not np.array_equal(p["specid"].values, cat["specid"].to_numpy()):
        raise SystemExit("catalog and products rows differ in order")
    mks = cat["MKs"].to_numpy(float)
    mks[mks <= -9] = np.nan
    err = cat["MKs_err"].to_numpy(float)
    snr = cat["snr_g"].to_numpy(float)
    resid = mks - t["MKs_true"]
    pull = resid / err
    broken = (cat["quality_flags"].to_numpy(int) & BROKEN_CATALOG_BIT) > 0
    sob = ((t["star_class"] == "OB") & ~t["is_binary"].astype(bool)
           & ~t["has_emission"].astype(bool) & np.isfinite(resid) & np.isfinite(err))
    groups = {"never_trained": fold == -1, "out_of_fold": fold >= 0}
    out: dict[str, Any] = {"products": products, "min_snr": min_snr, "groups": {},
                           "pull_std_by_snr": {}}
    hi = sob & (snr > min_snr)
    for g, gs in groups.items():
        out["groups"][g] = {"all": _stats(resid[hi & gs], err[hi & gs]),
                            "not_broken": _stats(resid[hi & gs & ~broken],
                                                 err[hi & gs & ~broken]),
                            "n_broken": int((hi & gs & broken).sum())}
        out["pull_std_by_snr"][g] = {
            f"{lo:g}-{up:g}": _stats(resid[s], err[s])
            for lo, up in SNR_BINS for s in [sob & gs & (snr >= lo) & (snr < up)]}
    s50 = sob & (snr > 50)
    out["snr_gt_50"] = {"all": _stats(resid[s50], err[s50]),
                        "not_broken": _stats(resid[s50 & ~broken], err[s50 & ~broken])}
    tail = hi & (np.abs(pull) > 3)
    truth_cols = ("logg_true", "teff_true", "ebv_true", "R_V_true", "MKs_true")
    out["tail"] = {
        "n": int(tail.sum()), "n_sample": int(hi.sum()), "gaussian_expectation":
        float(hi.sum() * 0.0027), "n_broken": int((tail & broken).sum()),
        "n_positive_read_faint": int((tail & (pull > 0)).sum()),
        "n_supergiant": int((tail & t["is_supergiant"].astype(bool)).sum()),
        "truth_median_tail": {c: float(np.median(t[c][tail])) for c in truth_cols
                              if tail.any()},
        "truth_median_sample": {c: float(np.median(t[c][hi])) for c in truth_cols},
    }
    nb = hi & ~broken
    pos = tail[nb]
    measures = {k: p[k].values.astype(float)[nb] for k in (
        "quality_chi2", "window_chi2_max", "MKs_spread", "halpha_chi2", "ebv_chi2")}
    trained = (p["luminosity_set"].values.astype(int) & 1) > 0
    measures["pca_mahalanobis"] = mahalanobis_to_training(p["pca_coeff_full"].values,
                                                          trained)[nb]
    out["auc_not_broken_tail"] = {"n_tail": int(pos.sum()),
                                  **{k: _auc(v, pos) for k, v in measures.items()}}
    return out


def _line(s: dict[str, Any]) -> str:
    if "std" not in s:
        return f"n {s['n']}"
    return (f"{s['std']:.3f} ({s['robust_std']:.3f}) pull {s['pull_std']:.2f} "
            f"({s['robust_pull_std']:.2f}) n {s['n']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("survey")
    ap.add_argument("products", nargs="+")
    ap.add_argument("--min-snr", type=float, default=100.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = [analyse(a.survey, pr, a.min_snr) for pr in a.products]
    for r in res:
        print(f"== {r['products']}  (single non-emission OB; std (robust) pull std (robust))")
        for g, v in r["groups"].items():
            print(f"  S/N > {a.min_snr:g} {g:14s} all: {_line(v['all'])}")
            print(f"  {'':>{len(f'S/N > {a.min_snr:g}')}} {'':14s} not broken: "
                  f"{_line(v['not_broken'])}  [{v['n_broken']} broken]")
        print(f"  S/N > 50 all: {_line(r['snr_gt_50']['all'])}")
        print(f"  S/N > 50 not broken: {_line(r['snr_gt_50']['not_broken'])}")
        for g, v in r["pull_std_by_snr"].items():
            print(f"  pull std by S/N, {g:14s}: " + " / ".join(
                f"{x.get('pull_std', np.nan):.2f}" for x in v.values()))
        tl = r["tail"]
        print(f"  |pull| > 3: {tl['n']} of {tl['n_sample']} (Gaussian "
              f"{tl['gaussian_expectation']:.0f}); {tl['n_broken']} flagged broken, "
              f"{tl['n_positive_read_faint']} read faint, {tl['n_supergiant']} supergiants")
        if tl["truth_median_tail"]:
            print("  truth medians, tail | sample: " + ", ".join(
                f"{c} {tl['truth_median_tail'][c]:.2f} | {tl['truth_median_sample'][c]:.2f}"
                for c in tl["truth_median_tail"]))
        au = r["auc_not_broken_tail"]
        print(f"  AUC for the {au['n_tail']} tail stars not flagged broken: " + ", ".join(
            f"{k} {v:.2f}" for k, v in au.items() if k != "n_tail"))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
