"""Extinction models checked on real LAMOST hot stars (issue 20).

Real stars: ``../shared/data/hotstars_gaia_2mass/lamost_hot_stars_gaia_dr3_2mass.csv``
(LAMOST hot-star candidates of Monsalves et al. 2025, A&A 704, A155, with Gaia DR3 and
2MASS photometry under the Gaia archive's column names), one row per Gaia source, parallax
S/N > 10. Teff is unknown (a table without spectra), so every model uses the pipeline's
default intrinsic colours (20 kK, :mod:`obpipe.photometry.extinction`) unless the row says
otherwise; 2MASS errors are not in the table and take the pipeline's documented default
(0.03 mag); Gaia errors come from ``phot_*_flux_over_error``. Bands BP, RP, J, H (K_s is
never used for E(B-V)).

For each model the same estimator (:func:`obpipe.photometry.block.photometry_block`, the
pipeline's own error propagation) gives:

* the median and 90th percentile of the reduced chi^2 of the colour excesses about their
  weighted mean (``ebv_chi2``; two degrees of freedom with three colours);
* the median E(B-V) from each adjacent colour (BP-RP, RP-J, J-H) and their spread
  (max - min); the targets are chi^2 <= 3 and spread <= 0.05 mag;
* E(B-V) from H-K_s (not fitted; a Be disc brightens K_s), a check of R_H - R_Ks;
* R_Ks, and the geometric M_Ks (eq. 11) at the 5 / 50 / 95 % percentiles.

Models: the ``dustapprox`` Kurucz polynomial models (F99 and G23, any R_V, at each
star's own A0 or in the low-extinction limit); every ``dust_extinction`` curve family that
covers BP to K_s, integrated here over a blackbody SED through the pyphot passbands at
the star's A0 (``--curves``); the empirical A_lambda/A_V of Wang & Chen (2019, ApJ 877,
116; red-clump stars, R_V = 3.16); and the Teff fitted from the colours jointly with
E(B-V) (a grid, prior ln Teff ~ N(ln 18 kK, 0.5)) instead of the 20 kK default.

Run: ``python benchmarks/extinction_real_stars.py`` (about a minute on one core).
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from obpipe.photometry import extinction, synthetic_builder
from obpipe.photometry.block import photometry_block
from obpipe.photometry.star_table import read_inputs

DEFAULT_TABLE = (Path(__file__).resolve().parents[2] / "shared" / "data" / "hotstars_gaia_2mass"
                 / "lamost_hot_stars_gaia_dr3_2mass.csv")
BANDS = ("BP", "RP", "J", "H")
COLOURS = ("bp_rp", "rp_j", "j_h")
#: Wang & Chen (2019, ApJ 877, 116), Table 3: A_lambda / A_V (red-clump stars), R_V = 3.16.
WANG_CHEN_2019_A_OVER_AV = {"G": 0.789, "BP": 1.002, "RP": 0.589, "J": 0.243, "H": 0.131,
                            "Ks": 0.078}
WANG_CHEN_2019_R_V = 3.16
#: dust_extinction families whose wavelength range covers BP (~0.33 um) to K_s (~2.3 um).
CURVES = ("CCM89", "O94", "F99", "F04", "M14", "F19", "G23")


def load_real_stars(path: Path, min_plx_snr: float = 10.0) -> dict[str, np.ndarray]:
    """The pipeline's inputs for one row per Gaia source with parallax S/N > min_plx_snr."""
    source_id, inputs = read_inputs(path)
    _, first = np.unique(source_id, return_index=True)
    keep = np.zeros(source_id.size, bool)
    keep[first] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        keep &= inputs["parallax"] / inputs["parallax_error"] > min_plx_snr
    return {k: v[keep] for k, v in inputs.items()}


def wang_chen_model(teff: np.ndarray, a0: np.ndarray, r_v: float,
                    bands: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Constant R_X = A_X/A_V x R_V (Wang & Chen 2019); ``r_v`` scales the whole curve."""
    return {b: np.full(np.shape(teff), WANG_CHEN_2019_A_OVER_AV[b] * WANG_CHEN_2019_R_V
                       * r_v / extinction.DEFAULT_R_V) for b in bands}


def curve_model(name: str) -> Callable[..., Mapping[str, np.ndarray]]:
    """R_X(Teff, A0) of a dust_extinction curve on a blackbody SED through pyphot passbands.

    ``A_X = -2.5 log10(<F 10^(-0.4 A0 k(lambda))> / <F>)`` with ``k = A(lambda)/A(V)``,
    ``R_X = A_X / (A0 / R_V)``; tabulated on (log Teff, A0) and interpolated bilinearly.
    """
    import astropy.units as u
    import dust_extinction.parameter_averages as pa

    wave = np.arange(3100.0, 30000.0, 5.0)
    teff_nodes = np.exp(np.linspace(np.log(7000.0), np.log(50000.0), 16))
    a0_nodes = np.array([0.01, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0])
    filters = synthetic_builder._pyphot_filters()  # the pipeline's passbands (pyphot)

    @functools.lru_cache(maxsize=8)
    def grid(r_v: float) -> dict[str, np.ndarray]:
        curve = getattr(pa, name)(Rv=r_v)
        k = np.asarray(curve(wave * u.AA), float)
        flux = synthetic_builder._planck_surface_flux(wave, teff_nodes)  # (T, wave)
        out = {}
        for band in ("BP", "RP", "J", "H", "Ks"):
            filt = filters[band]
            att = 10 ** (-0.4 * a0_nodes[:, None] * k[None, :])  # (A0, wave)
            f = flux[:, None, :] * att[None, :, :]
            fx = np.asarray(filt.get_flux(wave * u.AA, f * u.Unit("erg/(s cm2 AA)"), axis=-1)
                            .value, float)
            fx0 = np.asarray(filt.get_flux(wave * u.AA, flux * u.Unit("erg/(s cm2 AA)"),
                                           axis=-1).value, float)
            a_x = -2.5 * np.log10(fx / fx0[:, None])
            out[band] = a_x / (a0_nodes[None, :] / r_v)
        return out

    def model(teff: np.ndarray, a0: np.ndarray, r_v: float,
              bands: tuple[str, ...]) -> dict[str, np.ndarray]:
        g = grid(float(r_v))
        lt = np.clip(np.log(teff), np.log(teff_nodes[0]), np.log(teff_nodes[-1]))
        aa = np.clip(a0, a0_nodes[0], a0_nodes[-1])
        tn = np.log(teff_nodes)
        it = np.clip(np.searchsorted(tn, lt, side="right") - 1, 0, tn.size - 2)
        ia = np.clip(np.searchsorted(a0_nodes, aa, side="right") - 1, 0, a0_nodes.size - 2)
        ft = (lt - tn[it]) / (tn[it + 1] - tn[it])
        fa = (aa - a0_nodes[ia]) / (a0_nodes[ia + 1] - a0_nodes[ia])
        return {b: ((1 - ft) * (1 - fa) * g[b][it, ia] + ft * (1 - fa) * g[b][it + 1, ia]
                    + (1 - ft) * fa * g[b][it, ia + 1] + ft * fa * g[b][it + 1, ia + 1])
                for b in bands}

    return model


def _h_ks_ebv(inputs: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray],
              teff: np.ndarray, law: Any, r_v: float) -> np.ndarray:
    """E(B-V) from H - K_s at the model's coefficients (diagnostic, not fitted)."""
    a0 = np.clip(np.nan_to_num(r_v * out["ebv"], nan=0.01), 0.01, None)
    r = extinction.coefficient_matrix(teff, ("H", "Ks"), a0, law, r_v)
    c0 = extinction.intrinsic_colour(teff, np.full(teff.shape, extinction.DEFAULT_LOGG), "H", "Ks")
    return (inputs["H"] - inputs["Ks"] - c0) / (r[:, 0] - r[:, 1])


def evaluate(inputs: Mapping[str, np.ndarray], teff: float | None = None,
             **options: Any) -> dict[str, Any]:
    """Run the pipeline's estimator with ``options``; summary figures."""
    n = len(inputs["parallax"])
    inp = dict(inputs)
    if teff is not None:  # an assumed Teff for every star (as if measured, 5 %)
        inp["teff"] = np.full(n, float(teff))
    out = photometry_block(inp, bands=BANDS, per_colour=True, **options)
    t_used = inp["teff"] if "teff" in inp else np.full(n, extinction.DEFAULT_TEFF_K)
    law = options.get("law", extinction.DEFAULT_LAW)
    r_v = options.get("r_v", extinction.DEFAULT_R_V)
    return summarise(out, _h_ks_ebv(inputs, out, t_used, law, r_v))


def summarise(out: Mapping[str, np.ndarray], e_hks: np.ndarray) -> dict[str, Any]:
    med = [float(np.nanmedian(out[f"ebv_{c}"])) for c in COLOURS]
    return {
        "chi2": float(np.nanmedian(out["ebv_chi2"])),
        "chi2_p90": float(np.nanpercentile(out["ebv_chi2"], 90)),
        "ebv_colours": med,
        "spread": max(med) - min(med),
        "ebv_h_ks": float(np.nanmedian(e_hks)),
        "ebv_err": float(np.nanmedian(out["ebv_err"])),
        "r_ks": float(np.nanmedian(out["R_Ks"])),
        "aks_err": float(np.nanmedian(out["AKs_err"])),
        "mks": np.nanpercentile(out["MKs_geo"], [5, 50, 95]).tolist(),
        "n": int(np.isfinite(out["ebv"]).sum()),
    }


def evaluate_teff_fit(inputs: Mapping[str, np.ndarray], **options: Any) -> dict[str, Any]:
    """Teff fitted jointly with E(B-V): minimum of chi^2 + prior over a Teff grid.

    Prior ln Teff ~ N(ln 18,000 K, 0.5) (the OB range); one degree of freedom is used by
    Teff, so the reduced chi^2 has N_colours - 2 = 1 degree of freedom here.
    """
    n = len(inputs["parallax"])
    grid = np.exp(np.linspace(np.log(8000.0), np.log(40000.0), 29))
    runs = []
    for t in grid:
        inp = dict(inputs, teff=np.full(n, t))
        runs.append(photometry_block(inp, bands=BANDS, per_colour=True, **options))
    ncol = np.stack([np.isfinite(np.stack([r[f"ebv_{c}"] for c in COLOURS])).sum(0)
                     for r in runs])  # (T, n)
    chi2_tot = np.stack([r["ebv_chi2"] for r in runs]) * np.maximum(ncol - 1, 1)
    prior = ((np.log(grid) - np.log(18000.0)) / 0.5) ** 2
    best = np.nanargmin(np.nan_to_num(chi2_tot, nan=np.inf) + prior[:, None], axis=0)
    rows = np.arange(n)
    out = {k: np.stack([r[k] for r in runs])[best, rows]
           for k in runs[0] if k not in ("ebv_chi2",)}
    out["ebv_chi2"] = chi2_tot[best, rows] / np.maximum(ncol[best, rows] - 2, 1)
    law = options.get("law", extinction.DEFAULT_LAW)
    r_v = options.get("r_v", extinction.DEFAULT_R_V)
    res = summarise(out, _h_ks_ebv(inputs, out, grid[best], law, r_v))
    res["teff_pct"] = np.percentile(grid[best], [5, 50, 95]).tolist()
    return res


def bootstrap(inputs: Mapping[str, np.ndarray], n_resamples: int, **options: Any) -> str:
    """Sampling noise of the median chi^2 and of the colour spread: 16/50/84 % of the
    figures over resamples (with replacement) of the stars, and the fraction that meets
    both targets (chi^2 <= 3, spread <= 0.05); also for half-size samples."""
    out = photometry_block(inputs, bands=BANDS, per_colour=True, **options)
    e = np.stack([out[f"ebv_{c}"] for c in COLOURS], axis=-1)
    chi2 = out["ebv_chi2"]
    rng = np.random.default_rng(20)
    n = e.shape[0]
    text = []
    for size, name in ((n, "n"), (n // 2, "n/2")):
        idx = rng.integers(0, n, (n_resamples, size))
        med = np.nanmedian(e[idx], axis=1)  # (resamples, 3)
        spread = med.max(axis=1) - med.min(axis=1)
        c2 = np.nanmedian(chi2[idx], axis=1)
        ok = np.mean((spread <= 0.05) & (c2 <= 3.0))
        text.append(f"{name}={size}: spread 16/50/84 % " + " / ".join(
            f"{v:.3f}" for v in np.percentile(spread, [16, 50, 84]))
            + ", chi2 " + " / ".join(f"{v:.2f}" for v in np.percentile(c2, [16, 50, 84]))
            + f", both targets met in {ok:.0%}")
    return "; ".join(text)


def by_quartile(inputs: Mapping[str, np.ndarray], **options: Any) -> str:
    """Median chi^2 and colour spread in each quartile of E(B-V)."""
    out = photometry_block(inputs, bands=BANDS, per_colour=True, **options)
    q = np.digitize(out["ebv"], np.nanpercentile(out["ebv"], [25, 50, 75]))
    parts = []
    for k in range(4):
        sel = q == k
        med = [float(np.nanmedian(out[f"ebv_{c}"][sel])) for c in COLOURS]
        parts.append(f"E~{np.nanmedian(out['ebv'][sel]):.2f}: chi2 "
                     f"{np.nanmedian(out['ebv_chi2'][sel]):.2f} spread {max(med) - min(med):.3f}")
    return "; ".join(parts)


def rv_fit_summary(inputs: Mapping[str, np.ndarray], **options: Any) -> str:
    """The per-star R_V fit (``[photometry] fit_r_v``, :func:`extinction.ebv_rv_fit`, prior
    N(3.1, 0.18)): fitted R_V (mean, std, 5/50/95 %, median error), and the band chi^2 of the
    same fit at the most probable R_V against R_V = 3.1 (reduced, n_bands - 2 degrees of
    freedom), overall and in the most reddened quarter."""
    from obpipe.photometry.options import BAND_COLUMNS

    n = len(inputs["parallax"])
    mags = np.column_stack([np.asarray(inputs.get(BAND_COLUMNS[b][0], np.full(n, np.nan)),
                                       float) for b in BANDS])
    errs = np.column_stack([np.asarray(inputs.get(BAND_COLUMNS[b][1], np.full(n, np.nan)),
                                       float) for b in BANDS])
    errs, _ = extinction.fill_default_errors(mags, errs, BANDS)
    nan = np.full(n, np.nan)
    out = extinction.ebv_rv_fit(mags, errs, inputs.get("teff", nan), inputs.get("logg", nan),
                                inputs.get("teff_err", nan), inputs.get("logg_err", nan),
                                bands=BANDS, **options)
    rv, ok = out["r_v"], np.isfinite(out["r_v"])
    top = ok & (out["ebv"] >= np.nanpercentile(out["ebv"], 75))
    pct = np.percentile(rv[ok], [5, 50, 95])
    return (f"n={ok.sum()}: R_V mean {rv[ok].mean():.3f} std {rv[ok].std():.3f}, 5/50/95 % "
            + " / ".join(f"{v:.2f}" for v in pct)
            + f", median r_v_err {np.median(out['r_v_err'][ok]):.3f}; band chi2_red median "
            f"{np.nanmedian(out['chi2_red']):.2f} fitted vs "
            f"{np.nanmedian(out['chi2_red_prior']):.2f} at R_V = 3.1; top E(B-V) quarter "
            f"(E ~ {np.median(out['ebv'][top]):.2f}): R_V mean "
            f"{rv[top].mean():.3f} std {rv[top].std():.3f}, chi2_red "
            f"{np.nanmedian(out['chi2_red'][top]):.2f} vs "
            f"{np.nanmedian(out['chi2_red_prior'][top]):.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    ap.add_argument("--no-curves", action="store_true",
                    help="skip the dust_extinction blackbody-integrated families (slow part)")
    ap.add_argument("--no-teff-fit", action="store_true")
    ap.add_argument("--bootstrap", type=int, default=1000,
                    help="resamples of the stars for the sampling noise of the default's figures")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    t0 = time.perf_counter()
    inputs = load_real_stars(args.table)
    print(f"# {args.table}: {len(inputs['parallax'])} Gaia sources with parallax S/N > 10; "
          "Teff unknown; bands BP, RP, J, H")

    models: list[tuple[str, dict[str, Any], float | None]] = [
        ("F99 R_V=3.1, low-A0 limit (the paper's)",
         {"law": "F99", "extinction_dependent": False}, None),
        ("F99 R_V=3.1, A0-dependent", {"law": "F99"}, None),
        ("F99 R_V=3.6, A0-dependent", {"law": "F99", "r_v": 3.6}, None),
        ("G23 R_V=3.1, low-A0 limit", {"law": "G23", "extinction_dependent": False}, None),
        ("G23 R_V=3.1, A0-dependent (new default)", {"law": "G23"}, None),
        ("G23 R_V=2.8, A0-dependent", {"law": "G23", "r_v": 2.8}, None),
        ("G23 R_V=3.4, A0-dependent", {"law": "G23", "r_v": 3.4}, None),
        ("F99 R_V=3.1 low-A0, Teff=12 kK", {"law": "F99", "extinction_dependent": False},
         12000.0),
        ("F99 R_V=3.1 low-A0, Teff=30 kK", {"law": "F99", "extinction_dependent": False},
         30000.0),
        ("G23 R_V=3.1 A0-dep., Teff=12 kK", {"law": "G23"}, 12000.0),
        ("G23 R_V=3.1 A0-dep., Teff=30 kK", {"law": "G23"}, 30000.0),
        ("G23 R_V fitted per star, prior N(3.1, 0.18)", {"law": "G23", "fit_r_v": True}, None),
        ("Wang & Chen 2019 (constant, R_V=3.16)",
         {"law": wang_chen_model, "extinction_dependent": False, "r_v_scatter": 0.0}, None),
    ]
    if not args.no_curves:
        for name in CURVES:
            models.append((f"dust_extinction {name} R_V=3.1 (blackbody SED)",
                           {"law": curve_model(name)}, None))
    rows = [(label, evaluate(inputs, teff, **opts)) for label, opts, teff in models]
    if not args.no_teff_fit:
        for label, opts in (("F99 R_V=3.1 low-A0, Teff fitted",
                             {"law": "F99", "extinction_dependent": False}),
                            ("G23 R_V=3.1 A0-dep., Teff fitted", {"law": "G23"})):
            rows.append((label, evaluate_teff_fit(inputs, **opts)))

    head = (f"| {'model':50s} | chi2 med | chi2 p90 | E(BP-RP) | E(RP-J) | E(J-H) | spread "
            "| E(H-Ks)* | ebv_err | R_Ks  | AKs_err | MKs_geo 5/50/95 % |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for label, r in rows:
        e = r["ebv_colours"]
        m = r["mks"]
        print(f"| {label:50s} | {r['chi2']:8.2f} | {r['chi2_p90']:8.1f} | {e[0]:8.3f} | "
              f"{e[1]:7.3f} | {e[2]:6.3f} | {r['spread']:6.3f} | {r['ebv_h_ks']:8.3f} | "
              f"{r['ebv_err']:7.3f} | {r['r_ks']:5.3f} | {r['aks_err']:7.3f} | "
              f"{m[0]:5.2f} / {m[1]:5.2f} / {m[2]:5.2f} |")
    for label, r in rows:
        if "teff_pct" in r:
            print(f"# {label}: fitted Teff 5/50/95 % = "
                  + " / ".join(f"{t:,.0f}" for t in r["teff_pct"]) + " K")
    print("# * E(B-V) from H-Ks: not fitted (K_s is brightened by Be discs), a check of R_H-R_Ks")
    if args.bootstrap:
        for label, opts in (("default (G23 R_V=3.1, A0-dependent)", {}),
                            ("F99 R_V=3.1 low-A0", {"law": "F99", "extinction_dependent": False})):
            print(f"# {label}: " + bootstrap(inputs, args.bootstrap, **opts))
        print("# by E(B-V) quartile (default): " + by_quartile(inputs))
        print("# by E(B-V) quartile (R_V fitted): " + by_quartile(inputs, fit_r_v=True))
    print("# R_V fitted per star (G23, prior N(3.1, 0.18)): " + rv_fit_summary(inputs))
    n = len(inputs["parallax"])
    for t in (15000.0, 20000.0, 25000.0):  # as if Teff were measured (5 %)
        assumed = dict(inputs, teff=np.full(n, t), teff_err=np.full(n, 0.05 * t))
        print(f"# R_V fitted, Teff = {t / 1e3:.0f} kK assumed: " + rv_fit_summary(assumed))
    print(f"# {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
