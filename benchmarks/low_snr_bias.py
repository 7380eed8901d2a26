"""Where the low-S/N M_Ks bias lives: the bias of one run split by what the truth knows.

For single non-emission OB stars of a finished run on a mock survey (trained-on stars
out of fold, as in :mod:`score_truth`), the median M_Ks - truth in each S/N bin, split by

- true M_Ks (the bias at fixed type, and each bin's mix of types);
- true E(B-V) (at fixed reddening);
- true [Fe/H];

and, for stars observed twice, once in an S/N bin below 80 and once above 80, the median
difference between the two visits' M_Ks (the same star: only the spectrum's noise, RV
error and artefacts differ).

    python benchmarks/low_snr_bias.py SURVEY.zarr PRODUCTS_DIR
    python benchmarks/low_snr_bias.py SURVEY.zarr PRODUCTS_DIR --noise-profiles

``--noise-profiles`` tests whether the *shape* of a low-S/N spectrum's noise moves M_Ks:
high-S/N spectra of little-reddened single OB stars (donors: S/N > 100, true E(B-V) <
0.6, network (a)'s class) get the noise of a real low-S/N spectrum of the survey, pixel by
pixel (its ``norm_ivar``: heavily reddened stars are far noisier in the blue than at g),
once from reddened recipients (S/N 20-50, true E(B-V) > 1.5) and once from little-reddened
ones (S/N 20-50, E(B-V) < 0.8); the mean and median M_Ks change of each donor, through the
pipeline's projection (prior, interstellar windows as the run) and the out-of-fold member
of network (a), as in the luminosity stage's sigma_s calibration.

docs/validation.md, "What moves the bias from one realisation to the next", uses it on
the zero-point-exact copies of ``benchmarks/realisations.py --exact-zero-point``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_truth import _read_group, load  # noqa: E402

from obpipe.luminosity.noise_model import sigma_s_from_table  # noqa: E402
from obpipe.stats import robust_std  # noqa: E402

SNR_BINS = ((5, 20), (20, 50), (50, 100), (100, np.inf))
MKS_BINS = ((-9, -4), (-4, -3), (-3, -2), (-2, -1), (-1, 0), (0, 3))
EBV_BINS = ((0, 0.3), (0.3, 0.6), (0.6, 1.0), (1.0, 1.5), (1.5, 2.5), (2.5, 9))
FEH_BINS = ((-9, -0.3), (-0.3, -0.1), (-0.1, 0.1), (0.1, 9))
MIN_STARS = 30
PAIR_HIGH_SNR = 80.0


def _cell(resid: np.ndarray, sel: np.ndarray) -> str:
    return f"{np.median(resid[sel]):+.3f} ({sel.sum():4d})" if sel.sum() >= MIN_STARS else \
        " " * 13


def _label(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}" if np.isfinite(hi) else f"> {lo:g}"


def split_table(resid: np.ndarray, snr: np.ndarray, rows: np.ndarray, value: np.ndarray,
                bins: tuple[tuple[float, float], ...], name: str) -> None:
    """Print the median residual (and count) by S/N bin and by bin of ``value``."""
    print(f"\nmedian M_Ks - truth (n) by true {name}: " + " | ".join(
        _label(lo, hi) for lo, hi in bins))
    for slo, shi in SNR_BINS:
        in_snr = rows & (snr >= slo) & (snr < shi)
        cells = [_cell(resid, in_snr & (value >= lo) & (value < hi)) for lo, hi in bins]
        print(f"  S/N {_label(slo, shi):8s} all {np.median(resid[in_snr]):+.3f} | "
              + " | ".join(cells))


def visit_pairs(mks: np.ndarray, snr: np.ndarray, star: np.ndarray, rows: np.ndarray,
                sigma_s: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Stars with a visit in a low S/N bin and one above :data:`PAIR_HIGH_SNR`: the median
    and mean (with its standard error) of M_Ks(low visit) - M_Ks(best high visit), and the
    robust std of that difference beside what the luminosity stage's degraded-spectra
    sigma_s table (``sigma_s``: S/N nodes, sigma_s in mag) predicts for it, the quadrature
    sum of sigma_s at the two visits' S/N (the noise of two visits is independent)."""
    idx = np.flatnonzero(rows)
    idx = idx[np.argsort(star[idx], kind="stable")]
    groups = np.split(idx, np.flatnonzero(np.diff(star[idx])) + 1)
    print(f"\nvisit pairs of one star, M_Ks(low-S/N visit) - M_Ks(visit at S/N > "
          f"{PAIR_HIGH_SNR:g}):")
    for lo, hi in ((5, 20), (20, 50), (50, PAIR_HIGH_SNR)):
        d = []
        for g in groups:
            low = g[(snr[g] >= lo) & (snr[g] < hi)]
            high = g[snr[g] > PAIR_HIGH_SNR]
            if low.size and high.size:
                best = high[np.argmax(snr[high])]
                d.append((mks[low[0]] - mks[best], snr[low[0]], snr[best]))
        d_arr = np.asarray([x[0] for x in d])
        if d_arr.size < 5:
            print(f"  S/N {lo:g}-{hi:g}: {d_arr.size} pairs")
            continue
        line = (f"  S/N {lo:g}-{hi:g}: {d_arr.size} pairs, median {np.median(d_arr):+.3f}, mean "
                f"{np.mean(d_arr):+.3f} +- {np.std(d_arr) / np.sqrt(d_arr.size):.3f}; std "
                f"{np.std(d_arr):.3f} (robust {robust_std(d_arr):.3f})")
        if sigma_s is not None:
            lo_snr = np.array([x[1] for x in d])
            hi_snr = np.array([x[2] for x in d])
            pred = np.hypot(sigma_s_from_table(lo_snr, *sigma_s),
                            sigma_s_from_table(hi_snr, *sigma_s))
            line += f", degraded-spectra sigma_s predicts {np.median(pred):.3f}"
        print(line)


def noise_profile_shifts(survey: str, products: str, n: int = 1500, seed: int = 0) -> None:
    """See the module docstring (``--noise-profiles``)."""
    import zarr

    from obpipe.luminosity.network import MKsNetwork
    from obpipe.spectra.bases import INTERSTELLAR_ATTR, load_pca_model
    from obpipe.spectra.pca import interstellar_mask

    pr = zarr.open_group(str(Path(products) / "products.zarr"), mode="r")
    pspec = pr["specid"][...]
    t = _read_group(survey, "truth", ["specid", "ebv_true", "star_class", "is_binary",
                                      "has_emission", "MKs_true"])
    order = {int(s): i for i, s in enumerate(t["specid"])}
    ti = np.array([order[int(s)] for s in pspec])
    snr = _read_group(survey, None, ["snr_g"])["snr_g"][ti]
    ebv = t["ebv_true"][ti]
    single = ((t["star_class"][ti] == "OB") & ~t["is_binary"][ti].astype(bool)
              & ~t["has_emission"][ti].astype(bool) & (pr["MKs_model"][...] == 0))
    rng = np.random.default_rng(seed)

    def pick(sel: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(sel)
        return np.sort(rng.choice(rows, min(n, rows.size), replace=False))

    donors = pick(single & (snr > 100) & (ebv < 0.6))
    recipients = {"reddened (E(B-V) > 1.5)": pick(single & (snr >= 20) & (snr < 50)
                                                  & (ebv > 1.5)),
                  "little reddened (E(B-V) < 0.8)": pick(single & (snr >= 20) & (snr < 50)
                                                         & (ebv < 0.8))}
    basis = load_pca_model(products).full
    net = MKsNetwork.load(str(Path(products) / "models" / "mks_network_a.safetensors"))
    r0 = basis.reconstruct(np.zeros((1, basis.n_components)))[0]
    net = net.on_coefficients(basis.reconstruct(np.eye(basis.n_components)) - r0, r0)
    blind = bool(pr["pca_coeff"].attrs.get(INTERSTELLAR_ATTR, 0))
    excl = interstellar_mask() if blind else None
    star = pr["star_id"][...]

    def predict(f: np.ndarray, iv: np.ndarray, rows: np.ndarray) -> np.ndarray:
        coeff = basis.project(f, iv, prior=True, exclude=excl)
        return net.predict_out_of_fold(np.nan_to_num(coeff), star[rows])[0]

    f0 = np.stack([pr["norm_flux"][int(i)] for i in donors]).astype(np.float32)
    iv0 = np.stack([pr["norm_ivar"][int(i)] for i in donors]).astype(np.float32)
    clean = predict(f0, iv0, donors)
    print(f"\n{donors.size} donors (S/N > 100, E(B-V) < 0.6), M_Ks - truth "
          f"{np.median(clean - t['MKs_true'][ti][donors]):+.3f}; each given the noise of a "
          "random recipient at S/N 20-50:")
    for label, rec in recipients.items():
        if rec.size < 20:
            print(f"  {label}: {rec.size} recipients")
            continue
        take = rec[rng.integers(0, rec.size, donors.size)]
        iv1 = np.stack([pr["norm_ivar"][int(i)] for i in take]).astype(np.float32)
        with np.errstate(divide="ignore"):
            extra = np.where((iv1 > 0) & (iv0 > 0), 1.0 / np.where(iv1 > 0, iv1, 1) -
                             1.0 / np.where(iv0 > 0, iv0, 1), 0.0)
        iv_new = np.where((iv1 > 0) & (iv0 > 0), np.minimum(iv1, iv0), 0.0).astype(np.float32)
        f_new = f0 + rng.standard_normal(f0.shape).astype(np.float32) * np.sqrt(
            np.clip(extra, 0.0, None)).astype(np.float32)
        d = predict(f_new, iv_new, donors) - clean
        blue = np.nanmedian(np.where(iv1 > 0, iv1, np.nan)[:, :400] ** -0.5, axis=1)
        red = np.nanmedian(np.where(iv1 > 0, iv1, np.nan)[:, -1500:] ** -0.5, axis=1)
        print(f"  {label}: recipients' median noise blue / red end "
              f"{np.median(blue):.3f} / {np.median(red):.3f}; M_Ks change median "
              f"{np.median(d):+.3f}, mean {np.mean(d):+.3f} +- {np.std(d) / np.sqrt(d.size):.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("survey")
    ap.add_argument("products")
    ap.add_argument("--noise-profiles", action="store_true",
                    help="only the noise-profile test (module docstring)")
    a = ap.parse_args(argv)
    if a.noise_profiles:
        noise_profile_shifts(a.survey, a.products)
        return 0
    cat, t, _ = load(a.survey, a.products)
    extra = _read_group(a.survey, "truth", ["specid", "feh_true"])
    order = {int(s): i for i, s in enumerate(extra["specid"])}
    feh = extra["feh_true"][[order[int(s)] for s in cat["specid"].to_numpy()]]
    snr = cat["snr_g"].to_numpy(float)
    mks = cat["MKs"].to_numpy(float)
    mks[mks <= -9] = np.nan
    resid = mks - t["MKs_true"]
    rows = (np.isfinite(resid) & (t["star_class"] == "OB") & ~t["is_binary"].astype(bool)
            & ~t["has_emission"].astype(bool))
    print(f"{a.products}: {rows.sum()} single non-emission OB spectra")
    split_table(resid, snr, rows, t["MKs_true"], MKS_BINS, "M_Ks")
    for slo, shi in SNR_BINS:
        in_snr = rows & (snr >= slo) & (snr < shi)
        mix = [np.mean((t["MKs_true"][in_snr] >= lo) & (t["MKs_true"][in_snr] < hi))
               for lo, hi in MKS_BINS]
        print(f"  share of each M_Ks bin at S/N {_label(slo, shi):8s} "
              + " / ".join(f"{m:.2f}" for m in mix))
    split_table(resid, snr, rows, t["ebv_true"], EBV_BINS, "E(B-V)")
    split_table(resid, snr, rows, feh, FEH_BINS, "[Fe/H]")
    table = None
    report = Path(a.products) / "models" / "luminosity_training.json"
    if report.exists():  # network (a)'s degraded-spectra sigma_s, as the stage measured it
        deg = json.loads(report.read_text()).get("noise", {}).get("a", {}).get(
            "sigma_s_degraded", {})
        if deg.get("snr"):
            table = (np.asarray(deg["snr"], float), np.asarray(deg["sigma_mag"], float))
    visit_pairs(mks, snr, t["star_index"], rows, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
