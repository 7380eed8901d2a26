"""The Gaia zero-point fitted with the networks, against the mock's truth (issue 15).

Three commands (docs/validation.md, "A Gaia zero-point fitted with the networks"):

``copy SURVEY OUT --zp exact|dr2``
    A diagnostic copy of a mock survey whose parallaxes carry another zero-point:
    ``exact``: the pipeline's own constant (Leung & Bovy's -52.3 uas), so that nothing is
    left after its correction; ``dr2``: the mock's DR2 zero-point with its G, colour and
    sky variations (:func:`obpipe.simulate.sky.parallax_zero_point_mas`), e.g. on a survey
    simulated without them. ``truth/parallax_zp_true`` is rewritten to match.

``coefficients SURVEY PRODUCTS [PRODUCTS ...]``
    Each run's fitted coefficients by cleaning round and network
    (``models/luminosity_training.json``), beside the truth: the least-squares line
    ``c0 + c1 (G - 13)`` (G clipped to 9-17) through ``parallax_zp_true - Z_pipeline`` of
    every spectrum, and its mean.

``confounds SURVEY PRODUCTS``
    With the run's networks held fixed: the weighted mean difference between the
    trained-on spectra's corrected parallaxes and their spectroscopic parallaxes (what a
    zero-point fit sees, with the fit's weights), split into the parallax noise left in the
    trained set, the A_Ks error of the law and the networks' own error, using the truth.

Usage::

    python benchmarks/zero_point_fit.py copy f19.zarr f19zp.zarr --zp exact
    obpipe run f19zp.zarr --out f19zp_def
    python benchmarks/zero_point_fit.py coefficients f19.zarr f19_fit
    python benchmarks/zero_point_fit.py confounds f19zp.zarr f19zp_def
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import zarr

from obpipe.luminosity.network_training import _K_MAG, fakemag_per_mas
from obpipe.photometry.parallax import (
    LEUNG_BOVY_2019_OFFSET_MAS,
    ZERO_POINT_FIT_G_PIVOT,
    ZERO_POINT_FIT_G_RANGE,
)

TRAINED_A = 1  # luminosity_set bit: trained network (a)


def copy_with_zero_point(survey: str, out: str, kind: str) -> dict[str, float]:
    """Copy ``survey`` to ``out`` with its parallaxes' zero-point replaced (see above)."""
    from obpipe.simulate.sky import parallax_zero_point_mas

    if Path(out).exists():
        raise SystemExit(f"{out} exists")
    shutil.copytree(survey, out)
    g = zarr.open_group(out, mode="r+")
    old = g["truth"]["parallax_zp_true"][...]
    if kind == "exact":
        new = np.full(old.shape, LEUNG_BOVY_2019_OFFSET_MAS)
    else:
        seed = int(g.attrs.get("seed", 0))
        new = parallax_zero_point_mas(
            g["phot_g_mean_mag"][...].astype(float),
            g["nu_eff_used_in_astrometry"][...].astype(float),
            g["pseudocolour"][...].astype(float), g["ecl_lat"][...].astype(float),
            g["astrometric_params_solved"][...], "dr2", g["ra"][...], g["dec"][...], seed,
            True)
    g["parallax"][...] = g["parallax"][...] - old + new
    g["truth"]["parallax_zp_true"][...] = new.astype(old.dtype)
    resid = new - LEUNG_BOVY_2019_OFFSET_MAS
    return {"mean_residual_uas": float(1e3 * np.mean(resid)),
            "rms_residual_uas": float(1e3 * np.sqrt(np.mean(resid**2)))}


def true_coefficients(survey: str) -> dict[str, float]:
    """The truth's residual zero-point: its mean and its line in G (uas, uas / mag)."""
    g = zarr.open_group(survey, mode="r")
    resid = g["truth"]["parallax_zp_true"][...].astype(float) - LEUNG_BOVY_2019_OFFSET_MAS
    gmag = g["phot_g_mean_mag"][...].astype(float)
    ok = np.isfinite(resid) & np.isfinite(gmag)
    lo, hi = ZERO_POINT_FIT_G_RANGE
    design = np.stack([np.ones(ok.sum()), np.clip(gmag[ok], lo, hi) - ZERO_POINT_FIT_G_PIVOT],
                      axis=1)
    c0, c1 = np.linalg.lstsq(design, resid[ok], rcond=None)[0]
    return {"mean_uas": float(1e3 * resid[ok].mean()), "c0_uas": float(1e3 * c0),
            "c1_uas_per_mag": float(1e3 * c1)}


def fitted_coefficients(products: str) -> dict[str, object]:
    """The run's fitted coefficients by round (uas), from its training report."""
    rep = json.loads((Path(products) / "models" / "luminosity_training.json").read_text())
    rounds = [{k.rsplit("_", 1)[-1]: [round(1e3 * c, 2) for c in v] for k, v in it.items()
               if k.startswith("parallax_zp_coefficients_mas_")} for it in rep["iterations"]]
    return {"terms": rep.get("parallax_zero_point_fit", {}).get("terms", "none"),
            "by_round_uas": rounds}


def confounds(survey: str, products: str) -> dict[str, float]:
    """What a zero-point fit sees with the networks fixed, and its parts (uas)."""
    g = zarr.open_group(survey, mode="r")
    p = zarr.open_group(str(Path(products) / "products.zarr"), mode="r")
    if not np.array_equal(g["specid"][...], p["specid"][...]):
        raise SystemExit("survey and products differ in their specid order")
    t = g["truth"]
    mks = p["MKs"][...].astype(float)
    ks0 = p["Ks0"][...].astype(float)
    plx = p["parallax_corrected"][...].astype(float)
    plx_err = p["parallax_corrected_error"][...].astype(float)
    plx_true = t["parallax_mas_true"][...].astype(float)
    m_sys = t["MKs_system_true"][...].astype(float)
    binary = t["is_binary"][...].astype(bool)
    trained = (p["luminosity_set"][...] & TRAINED_A) > 0

    def spectro_parallax(m: np.ndarray) -> np.ndarray:
        return 10.0 ** (0.2 * m) / fakemag_per_mas(ks0)  # mas

    sp = spectro_parallax(mks)
    # the fit's weight per spectrum: per_mas^2 / (fakemag_err^2 + (fakemag K floor)^2)
    weight = 1.0 / (plx_err**2 + (sp * _K_MAG * 0.25) ** 2)
    ok = trained & np.isfinite(mks) & np.isfinite(plx) & np.isfinite(weight)

    def mean_uas(r: np.ndarray, sel: np.ndarray) -> float:
        return float(1e3 * np.sum((weight * r)[sel]) / np.sum(weight[sel]))

    sp_true = spectro_parallax(m_sys)
    out = {"n_trained": int(ok.sum()),
           "fit_sees": mean_uas(plx - sp, ok),
           "parallax_noise": mean_uas(plx - plx_true, ok),
           "aks_error": mean_uas(plx_true - sp_true, ok),
           "network_error": mean_uas(sp_true - sp, ok)}
    for name, sel in (("singles", ok & ~binary), ("binaries", ok & binary)):
        out[f"parallax_noise_{name}"] = mean_uas(plx - plx_true, sel)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("copy")
    c.add_argument("survey")
    c.add_argument("out")
    c.add_argument("--zp", choices=("exact", "dr2"), required=True)
    f = sub.add_parser("coefficients")
    f.add_argument("survey")
    f.add_argument("products", nargs="+")
    d = sub.add_parser("confounds")
    d.add_argument("survey")
    d.add_argument("products")
    a = ap.parse_args(argv)
    if a.cmd == "copy":
        res: object = copy_with_zero_point(a.survey, a.out, a.zp)
    elif a.cmd == "coefficients":
        res = {"truth": true_coefficients(a.survey),
               **{p: fitted_coefficients(p) for p in a.products}}
    else:
        res = confounds(a.survey, a.products)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
