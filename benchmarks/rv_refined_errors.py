"""Refined and catalogue radial velocities against the mock's truth, by S/N (issue 15).

For a finished run on a mock survey: per S/N bin below 50 (the spectra the pca stage
refines, ``[spectral] refine_rv``), the median and robust std of ``rv_refined_kms -
rv_true`` and of ``rv - rv_true`` (km/s), their median quoted errors and robust pulls.
Reads only the catalog and the survey's ``truth`` group (``score_truth.load``).

Usage::

    python benchmarks/rv_refined_errors.py SURVEY.zarr PRODUCTS_DIR [--json OUT.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from obpipe.stats import robust_std

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_truth import (  # noqa: E402  (the independent scorer's reader and command line)
    load,
    survey_products_parser,
    write_json,
)

SNR_BINS = ((5, 10), (10, 20), (20, 30), (30, 50))


def rv_errors(survey: str, products: str) -> dict[str, dict[str, float]]:
    cat, truth, _ = load(survey, products)
    rv_true = truth["rv_true"].astype(float)
    snr = cat["snr_g"].to_numpy(float)
    out: dict[str, dict[str, float]] = {}
    for lo, hi in SNR_BINS:
        sel = (snr >= lo) & (snr < hi) & np.isfinite(cat["rv_refined_kms"].to_numpy(float))
        if sel.sum() < 5:
            continue
        row: dict[str, float] = {"n": int(sel.sum())}
        for name, val, err in (("refined", "rv_refined_kms", "rv_refined_err_kms"),
                               ("catalogue", "rv", "rv_err")):
            r = cat[val].to_numpy(float)[sel] - rv_true[sel]
            e = cat[err].to_numpy(float)[sel]
            row.update({f"{name}_median": float(np.median(r)),
                        f"{name}_robust_std": float(robust_std(r)),
                        f"{name}_median_err": float(np.median(e)),
                        f"{name}_robust_pull": float(robust_std(r / e))})
        out[f"snr_{lo}_{hi}"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    a = survey_products_parser(__doc__).parse_args(argv)
    res = rv_errors(a.survey, a.products)
    for k, v in res.items():
        print(f"{k}: n={v['n']} refined {v['refined_median']:+.1f} / "
              f"{v['refined_robust_std']:.1f} (err {v['refined_median_err']:.1f}, pull "
              f"{v['refined_robust_pull']:.2f}); catalogue {v['catalogue_robust_std']:.1f} "
              f"(err {v['catalogue_median_err']:.1f}, pull {v['catalogue_robust_pull']:.2f})")
    write_json(res, a.json, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
