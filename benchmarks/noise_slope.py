"""Diagnostic of the M_Ks noise model at low S/N (issue 15 item 2; docs/validation.md).

Eq. (10) generalised to sigma_s = sigma_s100 (S/N / 100)^-beta, fitted by maximum
likelihood (eq. 14 with the stage's clipping: 2 sigma faint side, 3 sigma bright side) on
the noise model's own sample (test-set non-emission spectra, S/N > 10, M_Ks_geo <= 3 mag);
then the pull std against the truth per S/N bin for never-trained and trained-on
(out-of-fold) single non-emission OB stars, beside eq. 10 with the stage's fitted
parameters and the stage's MKs_err (sigma_s from degraded spectra where the noise model
has it: ``noise_model.degraded_snr_scatter``); and the
make-up of the noise-model sample per S/N bin (classes, binaries, residual widths).

    python benchmarks/noise_slope.py SURVEY PRODUCTS   # products through 'luminosity'
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.optimize import minimize

from obpipe.engine.blockwise import open_products
from obpipe.io import store

BINS = ((5, 20), (20, 50), (50, 100), (100, 200), (200, 1e5))


def main(survey_path: str, products_dir: str) -> None:
    sv = store.open_cube(survey_path)
    tr = store.open_truth(survey_path).load()
    p = open_products(products_dir)[["MKs", "MKs_err", "MKs_spread", "MKs_fold",
                                     "luminosity_set", "MKs_geo", "MKs_geo_err",
                                     "em_flag"]].load()
    snr = sv["snr_g"].values.astype(float)
    mks, geo = p.MKs.values.astype(float), p.MKs_geo.values.astype(float)
    gerr = p.MKs_geo_err.values.astype(float)
    spr = np.nan_to_num(p.MKs_spread.values.astype(float))
    test = (p.luminosity_set.values & 4) > 0
    s = (test & (p.em_flag.values == 0) & (snr > 10) & np.isfinite(mks) & np.isfinite(geo)
         & (geo <= 3))

    def var(t: np.ndarray, k: np.ndarray) -> np.ndarray:
        _, _, si, s100, beta = t
        return si**2 + (s100 * (snr[k] / 100) ** -beta) ** 2 + gerr[k] ** 2 + spr[k] ** 2

    def nll(t: np.ndarray, k: np.ndarray) -> float:
        r = mks[k] - ((1 + t[0]) * geo[k] + t[1])
        v = var(t, k)
        return 0.5 * float(np.sum(r**2 / v + np.log(v)))

    keep, t = s.copy(), np.array([0.0, 0.0, 0.2, 0.15, 1.0])
    every = np.ones(snr.size, bool)
    for _ in range(20):
        t = minimize(nll, t, args=(keep,), method="L-BFGS-B",
                     bounds=[(-1, 1), (-5, 5), (1e-3, 3), (1e-3, 3), (0, 3)]).x
        z = (mks - ((1 + t[0]) * geo + t[1])) / np.sqrt(var(t, every))
        new = s & (z <= 2) & (z >= -3)
        if np.array_equal(new, keep):
            break
        keep = new
    print("fit", dict(zip(["eps", "delta", "sigma_int", "sigma_s100", "beta"],
                          np.round(t, 3).tolist(), strict=True)))
    err = np.sqrt(t[2] ** 2 + (t[3] * (snr / 100) ** -t[4]) ** 2 + spr**2)
    # eq. 10 as the stage's noise model fitted it (MKs_err attributes), beside MKs_err itself
    # (sigma_s from degraded spectra when the noise model has that table, issue 15)
    att = p.MKs_err.attrs
    spr_a = spr if att.get("noise_a_epistemic_spread") else 0.0
    err10 = np.sqrt(att["noise_a_sigma_int"] ** 2
                    + (att["noise_a_sigma_s100"] / (snr / 100)) ** 2 + spr_a**2)
    d = mks - tr.MKs_true.values.astype(float)
    cls = tr.star_class.values.astype(object).astype(str)
    binr = tr.is_binary.values.astype(bool)
    sob = ((cls == "OB") & ~binr & ~tr.has_emission.values.astype(bool)
           & ~tr.is_broken.values.astype(bool))
    fold = p.MKs_fold.values
    for name, grp in (("never_trained", sob & (fold == -1)), ("trained_on_oof", sob & (fold >= 0))):
        print(name)
        for lo, hi in BINS:
            q = grp & (snr >= lo) & (snr < hi) & np.isfinite(d)
            print(f"  S/N {lo}-{hi:g}: n={q.sum()} bias {np.mean(d[q]):+.3f} pull std beta-fit "
                  f"{np.std(d[q] / err[q]):.2f}, eq. 10 {np.std(d[q] / err10[q]):.2f}, "
                  f"MKs_err {np.std(d[q] / p.MKs_err.values[q]):.2f}")
    print("noise-model sample")
    r = mks - geo
    for lo, hi in ((10, 20), (20, 50), (50, 100), (100, 1e5)):
        q = s & (snr >= lo) & (snr < hi)
        classes = {c: int(np.sum(q & (cls == c))) for c in np.unique(cls[q])}
        print(f"  S/N {lo}-{hi:g}: n={q.sum()} {classes} binaries {int(np.sum(q & binr))}; "
              f"std(MKs - MKs_geo) all {np.std(r[q]):.3f}, single OB {np.std(r[q & sob]):.3f}; "
              f"std(MKs - MKs_true) single OB {np.std(d[q & sob]):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
