"""Score a finished run against the mock's truth, independently of ``obpipe validate``.

A second opinion on the accuracy figures: this script reads only the published
catalog (``PRODUCTS/catalog.parquet``), the products' ``MKs_fold`` (or ``luminosity_set``) and the
survey's ``truth`` group, with plain zarr / pyarrow / numpy, and recomputes the targets
of the honest-numbers and beyond-the-paper issues:

* M_Ks of single non-emission OB stars by S/N bin (bias, std, robust std, pull std),
  separately for stars a network trained on (their catalog value must be out-of-fold)
  and stars no network trained on;
* E(B-V) against the truth;
* distance bias ``median(d_true / dis - 1)`` and 16-84 % coverage by bins of true and of
  catalogued distance, single stars;
* binary completeness (q >= 0.85, parallax S/N > 10) and false positives among singles;
* the mock's injected systematics, where its truth carries them.

Usage::

    python benchmarks/score_truth.py SURVEY.zarr PRODUCTS_DIR [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import zarr

from obpipe.stats import robust_std

SNR_BINS = ((5, 20), (20, 50), (50, 100), (100, 200), (200, np.inf))
DIST_BINS = ((0, 1), (1, 3), (3, 5), (5, 10), (10, np.inf))
TRAINED_BITS = 1 | 2  # luminosity_set bits: trained (a), trained (b)


def _read_group(path: str, group: str | None, names: list[str]) -> dict[str, np.ndarray]:
    root = zarr.open_group(path, mode="r")
    g = root[group] if group else root
    out = {}
    for n in names:
        if n in g:
            a = np.asarray(g[n][...])
            out[n] = np.array(a.tolist(), dtype=object).astype(str) if a.dtype.kind in "OSUT" else a
    return out


def _stats(resid: np.ndarray, err: np.ndarray | None = None) -> dict[str, Any]:
    ok = np.isfinite(resid)
    if err is not None:
        ok &= np.isfinite(err) & (err > 0)
    r = resid[ok]
    if r.size < 5:
        return {"n": int(r.size)}
    out = {"n": int(r.size), "bias_median": float(np.median(r)), "mean": float(np.mean(r)),
           "std": float(np.std(r)),
           "robust_std": float(robust_std(r))}
    if err is not None:
        out["pull_std"] = float(np.std(r / err[ok]))
    return out


def load(survey: str, products: str) -> tuple[Any, dict[str, np.ndarray], np.ndarray | None]:
    """The catalog (a pandas frame), the truth of its rows and the products' ``MKs_fold``
    of its rows (None where the products have none; then ``luminosity_set``'s trained bits
    give -1 / 0 for never-trained / trained-on, or None without it either)."""
    cat = pq.read_table(Path(products) / "catalog.parquet").to_pandas()
    obs = _read_group(survey, None, ["specid"])
    truth_names = ["star_class", "is_binary", "mass_ratio", "has_emission", "MKs_true",
                   "distance_kpc_true", "ebv_true", "logg_true", "star_index",
                   "parallax_zp_true", "parallax_error_true", "R_V_true", "ivar_scale_true",
                   "parallax_zero_point_mas", "is_supergiant", "is_evolved", "teff_true",
                   "rv_true"]
    truth = _read_group(survey, "truth", truth_names)
    order = {int(s): i for i, s in enumerate(obs["specid"])}
    idx = np.array([order[int(s)] for s in cat["specid"].to_numpy()])
    if idx.size != obs["specid"].size:
        raise SystemExit(f"catalog has {idx.size} rows, survey {obs['specid'].size} spectra")
    t = {k: v[idx] for k, v in truth.items()}
    lset = fold = None
    prod_path = Path(products) / "products.zarr"
    if prod_path.exists():
        pr = _read_group(str(prod_path), None, ["luminosity_set", "MKs_fold", "specid"])
        if "specid" in pr:
            porder = {int(s): i for i, s in enumerate(pr["specid"])}
            pidx = np.array([porder[int(s)] for s in cat["specid"].to_numpy()])
            if "MKs_fold" in pr:  # >= 0: the value of the one member that never saw the star
                fold = pr["MKs_fold"][pidx].astype(int)
            elif "luminosity_set" in pr:
                lset = pr["luminosity_set"][pidx].astype(int)
    if fold is None and lset is not None:
        fold = np.where((lset & TRAINED_BITS) > 0, 0, -1)
    return cat, t, fold


def score(survey: str, products: str) -> dict[str, Any]:
    cat, t, fold = load(survey, products)
    res: dict[str, Any] = {"n_spectra": int(len(cat))}

    cls = t["star_class"]
    single = ~t["is_binary"].astype(bool)
    ob_single = (cls == "OB") & single & ~t["has_emission"].astype(bool)
    snr = cat["snr_g"].to_numpy(float)
    mks = cat["MKs"].to_numpy(float)
    mks_err = cat["MKs_err"].to_numpy(float)
    mks[mks <= -9] = np.nan
    resid = mks - t["MKs_true"]
    groups = {"all": np.ones(len(cat), bool)}
    if fold is not None:
        groups["trained_on_oof"] = fold >= 0
        groups["never_trained"] = fold == -1
        res["n_in_sample_values"] = int(np.sum(fold == -2))
    res["mks"] = {}
    for gname, gsel in groups.items():
        block = {}
        for lo, hi in SNR_BINS:
            sel = ob_single & gsel & (snr >= lo) & (snr < hi)
            block[f"snr_{lo}_{hi}"] = _stats(resid[sel], mks_err[sel])
            # the residual's slope on the true M_Ks: 0 for a reading unbiased at every
            # M_Ks, negative when pulled toward the training mean (luminous stars faint)
            ok = sel & np.isfinite(resid)
            if ok.sum() >= 5:
                block[f"snr_{lo}_{hi}"]["slope_on_true"] = float(
                    np.polyfit(t["MKs_true"][ok], resid[ok], 1)[0])
        block["snr_gt_50"] = _stats(resid[ob_single & gsel & (snr > 50)],
                                    mks_err[ob_single & gsel & (snr > 50)])
        block["snr_gt_100"] = _stats(resid[ob_single & gsel & (snr > 100)])
        res["mks"][gname] = block

    ebv = cat["ebv"].to_numpy(float)
    ebv[ebv <= -9] = np.nan
    res["ebv"] = _stats((ebv - t["ebv_true"])[(cls == "OB") & single])

    dis, lo_, hi_ = (cat[c].to_numpy(float) for c in ("dis", "dis_low", "dis_high"))
    ok = single & np.isfinite(dis) & (dis > 0) & np.isin(cls, ["OB", "interloper"])
    dtrue = t["distance_kpc_true"]
    res["distance"] = {"coverage_all_single": float(np.mean(
        ((dtrue >= lo_) & (dtrue <= hi_))[ok]))}
    for label, binvar in (("by_true", dtrue), ("by_catalog", dis)):
        res["distance"][label] = {}
        for lo, hi in DIST_BINS:
            sel = ok & (binvar >= lo) & (binvar < hi)
            if sel.sum() < 5:
                continue
            res["distance"][label][f"{lo}_{hi}_kpc"] = {
                "n": int(sel.sum()),
                "median_true_over_dis_minus_1": float(np.median(dtrue[sel] / dis[sel] - 1)),
                "coverage_16_84": float(np.mean((dtrue[sel] >= lo_[sel])
                                                & (dtrue[sel] <= hi_[sel]))),
            }
    at_edge = np.isfinite(dis) & (dis >= np.nanmax(dis) - 1e-6)
    res["distance"]["n_at_max_distance"] = int(at_edge.sum())

    bflag = cat["binary_flag"].to_numpy(int)
    plx_snr = cat["parallax"].to_numpy(float) / cat["parallax_error"].to_numpy(float)
    eligible = np.isin(cls, ["OB", "interloper"]) & (plx_snr > 10) & (bflag >= 0)
    eq = eligible & t["is_binary"].astype(bool) & (t["mass_ratio"] >= 0.85)
    res["binary"] = {"completeness_q_ge_085": float(np.mean(bflag[eq] == 1)) if eq.any()
                     else None, "n_q_ge_085": int(eq.sum()),
                     "false_positive_singles": float(np.mean(bflag[eligible & single] == 1))}

    sysm: dict[str, Any] = {}
    if "parallax_zp_true" in t and "parallax_offset" in cat:
        off = cat["parallax_offset"].to_numpy(float)
        d = (t["parallax_zp_true"] - off)
        d = d[np.isfinite(d)]
        sysm["zp_residual_rms_uas"] = float(1e3 * np.sqrt(np.mean((d - 0) ** 2)))
    if "parallax_error_true" in t:
        sysm["median_err_true_over_quoted"] = float(np.nanmedian(
            t["parallax_error_true"] / cat["parallax_error"].to_numpy(float)))
    if "R_V_true" in t:
        sysm["R_V_true_std"] = float(np.nanstd(t["R_V_true"]))
    if "ivar_scale_true" in t:
        p5, p95 = np.nanpercentile(t["ivar_scale_true"], [5, 95])
        sysm["ivar_scale_true_p5_p95"] = [float(p5), float(p95)]
    star = t["star_index"]
    first = np.unique(star, return_index=True)[1]
    obs_ob = cls[first] == "OB"
    sysm["fraction_ob_logg_lt_3"] = float(np.mean(t["logg_true"][first][obs_ob] < 3))
    res["mock_systematics"] = sysm
    return res


def survey_products_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a scorer of a finished run: ``SURVEY PRODUCTS_DIR [--json OUT]``
    (the first line of ``doc``, the script's docstring, as its description); a script adds
    its own arguments after these."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("survey")
    ap.add_argument("products")
    ap.add_argument("--json", default=None)
    return ap


def write_json(res: Any, json_path: str | None, echo: bool = True) -> None:
    """``res`` as indented JSON: printed (unless ``echo`` is false) and written to
    ``json_path`` when it is given (``--json``)."""
    text = json.dumps(res, indent=1)
    if echo:
        print(text)
    if json_path:
        Path(json_path).write_text(text)


def main(argv: list[str] | None = None) -> int:
    a = survey_products_parser(__doc__).parse_args(argv)
    write_json(score(a.survey, a.products), a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
