"""Can a run measure the extinction law's K-band scale from its own data? (issue 15)

For a finished run on a mock survey, fits ``M_Ks,geo - M_Ks = c0 + k A_Ks`` by
:func:`obpipe.photometry.law_calibration.fit_aks_scale` on the out-of-fold catalog M_Ks of
good-parallax rows (what a run could do without the truth), with and without the
parallax_error / parallax nuisance term, and prints it beside the truth's answers on the
same rows:

* ``k_law``: the slope of ``A_Ks,true - A_Ks`` on ``A_Ks`` (the law difference alone:
  what a calibration should find);
* ``k_geo``: the slope of ``M_Ks,geo - M_Ks,true`` on ``A_Ks`` (everything in the
  targets that grows with A_Ks: the law plus distance-correlated parallax effects);
* ``R2(A_Ks | PCA)``: :func:`predictable_fraction` of A_Ks from the first ``--n-pca``
  PCA coefficients (the networks' information): the residual slope is the law's only
  where this is small.

Then the budget of the M_Ks bias of single non-emission OB stars at S/N > 50 by true
M_Ks: the median catalog M_Ks - M_Ks,true beside the median bias that the training
targets of the trained-on stars in that bin inherit from the law
(``A_Ks,true - A_Ks``) and from the parallax zero-point the pipeline leaves
(``5 log10(1 + (zp_true - parallax_offset) / parallax_true)``).

Usage::

    python benchmarks/extinction_law.py SURVEY.zarr PRODUCTS_DIR [--min-plx-snr 20] [--json F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from obpipe.engine.blockwise import open_products
from obpipe.photometry.law_calibration import fit_aks_scale, predictable_fraction

_PRODUCTS = ("MKs", "MKs_geo", "MKs_geo_err", "AKs", "R_Ks", "em_flag", "parallax_corrected",
             "parallax_corrected_error", "parallax_offset", "luminosity_set", "specid")


def measure(survey: str, products: str, min_plx_snr: float = 20.0, min_snr: float = 20.0,
            n_pca: int = 30, floor_mag: float = 0.3) -> dict[str, Any]:
    p = open_products(products)
    v = {k: np.asarray(p[k].values) for k in _PRODUCTS}
    root = zarr.open_group(survey, mode="r")
    if not np.array_equal(np.asarray(root["specid"][...]).astype(np.int64),
                          v["specid"].astype(np.int64)):
        raise SystemExit("products and survey rows are not in the same order")
    snr = np.asarray(root["snr_g"][...], float)
    truth = root["truth"]
    t = {k: np.asarray(truth[k][...], float) for k in ("AKs_true", "MKs_system_true")}
    plx_snr = v["parallax_corrected"] / v["parallax_corrected_error"]
    rows = (np.isfinite(v["MKs"]) & np.isfinite(v["MKs_geo"]) & np.isfinite(v["AKs"])
            & (plx_snr > min_plx_snr) & (snr > min_snr) & np.isin(v["em_flag"], (0, 1)))
    a = v["AKs"][rows]
    w = 1.0 / (v["MKs_geo_err"][rows] ** 2 + floor_mag**2)
    frac = 1.0 / plx_snr[rows]
    r_ks = v["R_Ks"][rows]
    resid = (v["MKs_geo"] - v["MKs"])[rows]
    out: dict[str, Any] = {"n_rows": int(rows.sum()), "min_plx_snr": min_plx_snr,
                           "min_snr": min_snr, "median_R_Ks": float(np.median(r_ks))}
    out["data_oof_residual"] = fit_aks_scale(resid, a, w, r_ks=r_ks).as_dict()
    out["data_oof_residual_plx_term"] = fit_aks_scale(resid, a, w, covariates=frac,
                                                      r_ks=r_ks).as_dict()
    out["truth_k_law"] = fit_aks_scale(t["AKs_true"][rows] - a, a, w, r_ks=r_ks).as_dict()
    out["truth_k_geo"] = fit_aks_scale((v["MKs_geo"] - t["MKs_system_true"])[rows], a, w,
                                       r_ks=r_ks).as_dict()
    pca = np.asarray(p["pca_coeff"].isel(component=slice(0, n_pca)).values)[rows]
    out["R2_AKs_from_pca"] = predictable_fraction(a, pca)
    out["budget_by_true_mks"] = _budget(root, v, t, snr)
    return out


def _budget(root: Any, v: dict[str, np.ndarray], t: dict[str, np.ndarray],
            snr: np.ndarray) -> dict[str, dict[str, float]]:
    truth = root["truth"]
    tt = {k: np.asarray(truth[k][...]) for k in ("MKs_true", "star_class", "is_binary",
                                                 "has_emission", "parallax_mas_true",
                                                 "parallax_zp_true")}
    off = v["parallax_offset"]
    cls = np.array(tt["star_class"].tolist(), dtype=object).astype(str)
    base = ((cls == "OB") & ~tt["is_binary"].astype(bool)
            & ~tt["has_emission"].astype(bool) & (snr > 50) & np.isfinite(v["MKs"]))
    trained = (v["luminosity_set"] & 3) > 0
    resid = v["MKs"] - tt["MKs_true"]
    law = t["AKs_true"] - v["AKs"]
    with np.errstate(invalid="ignore"):
        zp = 5 * np.log10(1 + (tt["parallax_zp_true"] - off) / tt["parallax_mas_true"])
    out = {}
    for lo, hi in ((-9, -4), (-4, -3), (-3, -2), (-2, -1), (-1, 0), (0, 9)):
        s = base & (tt["MKs_true"] >= lo) & (tt["MKs_true"] < hi)
        st = s & trained
        if st.sum() < 5:
            continue
        out[f"{lo}_{hi}"] = {"n": int(s.sum()), "network_bias": float(np.median(resid[s])),
                             "target_law": float(np.nanmedian(law[st])),
                             "target_zp": float(np.nanmedian(zp[st]))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("survey")
    ap.add_argument("products")
    ap.add_argument("--min-plx-snr", type=float, default=20.0)
    ap.add_argument("--min-snr", type=float, default=20.0)
    ap.add_argument("--n-pca", type=int, default=30)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = measure(a.survey, a.products, a.min_plx_snr, a.min_snr, a.n_pca)
    print(f"{res['n_rows']} rows (parallax S/N > {a.min_plx_snr:g}, S/N > {a.min_snr:g}), "
          f"median R_Ks {res['median_R_Ks']:.3f}, R2(A_Ks | {a.n_pca} PCA coefficients) "
          f"{res['R2_AKs_from_pca']:.2f}")
    for key in ("truth_k_law", "truth_k_geo", "data_oof_residual",
                "data_oof_residual_plx_term"):
        f = res[key]
        print(f"  {key:28s} k = {f['k']:+.3f} +- {f['k_err']:.3f}  "
              f"(Delta R_Ks {f['delta_r_ks']:+.3f})")
    print("S/N > 50 single non-emission OB by true M_Ks: median M_Ks - M_Ks,true | target "
          "bias of the trained-on stars from the law, from the zero-point")
    for b, r in res["budget_by_true_mks"].items():
        print(f"  M_Ks,true {b:>6s}: {r['network_bias']:+.3f} (n {r['n']:4d}) | "
              f"law {r['target_law']:+.3f} | zp {r['target_zp']:+.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
