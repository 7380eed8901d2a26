"""The networks' reddening shortcut: how far M_Ks moves when only the dust changes.

Issue 15 item 2. An M_Ks read from the spectrum alone should not depend on the dust column
in front of the star. Yet in a magnitude-limited training set the most reddened stars are
the distant, luminous ones. A network can then learn "reddened, so luminous" from whatever
the reddening leaves in the normalised spectrum. That puts a distance prior into a
spectrophotometric distance, and it reads faint, low-S/N stars of the same reddening too
bright.

**Response** (no truth needed; any finished run, a real survey too). Up to ``--n``
spectra at S/N > 100 of network (a)'s class (``em_flag`` 0, not flagged broken) get
their raw flux multiplied by 10^(-0.4 dE k(lambda)), k from five published curve
families at R_V = 3.1 (``dust_extinction``: F19, G23, F99, CCM89, O94), and their ivar
divided by the square of that factor. The S/N of every pixel is kept, so that only the
dust changes. Each copy then goes through the run's own normalisation (its continuum
options), the pca stage's projection (prior and interstellar windows as in the run) and
the full-basis reconstruction, and into network (a) of the run: the luminosity stage's
``dust_response`` and ``inputs_from_raw``, which every run uses for G23 alone. Printed:
the median M_Ks change per family. A spectroscopic M_Ks would not move.

**Retrained variants** (``--retrain``; a mock, scored against its truth). Network (a) is
retrained with the stage's own :func:`train_network` (the run's network options,
parallax-space loss, folds by star) on the run's final training spectra of (a)
(``luminosity_set`` bit 1). Four variants:

* ``baseline``: those spectra as they are;
* ``reddened``: the same, plus one copy of each, reddened by dE ~ U(0, 1.5) with G23 at
  R_V ~ N(3.1, 0.25) (:func:`obpipe.luminosity.augment.reddened_copies`), with the same
  target and star (so the same fold);
* ``swapped``: the spectra, with a random half replaced by those copies (the pipeline's
  default, ``[luminosity] reddened_copies = "swapped"``);
* ``decorrelated``: the rows resampled with replacement, with weights
  p(E) p(M) / p(E, M). E is the photometry stage's ``ebv`` and M is ``MKs_geo``, each
  cut into 6 quantile bins, and the weights are clipped to 0.2-5. In the resampled set
  the photometric reddening then says nothing about M_Ks.

For each variant the script prints the response above, and the median M_Ks - truth of
never-trained single non-emission OB stars by S/N bin, with the S/N > 50 std.

    python benchmarks/reddening_shortcut.py SURVEY.zarr PRODUCTS_DIR [--n 400] [--ebv 1.0]
    python benchmarks/reddening_shortcut.py SURVEY.zarr PRODUCTS_DIR --retrain
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from obpipe.config import config_from_dict
from obpipe.engine.blockwise import open_products
from obpipe.engine.context import RunContext
from obpipe.io import store
from obpipe.luminosity.augment import reddened_copies
from obpipe.luminosity.network import MKsNetwork, wavelength_mask
from obpipe.luminosity.network_training import TrainConfig, fakemag_from_parallax, train_network
from obpipe.simulate.sed import _curve
from obpipe.spectra.grid import wavelength_grid
from obpipe.stages import luminosity as lum

sys.path.insert(0, str(Path(__file__).resolve().parent))
from noise_augmented import SNR_BINS, _read_rows  # noqa: E402

LAWS = ("F19", "G23", "F99", "CCM89", "O94")
BROKEN_BIT = 1


def run_context(survey: str, products: str) -> RunContext:
    """A context with the run's own ``[spectral]`` options (its ``run_summary.json``), so
    that :func:`obpipe.stages.luminosity.inputs_from_raw` normalises and projects as it
    did (the other sections are not read, and may hold options of older versions)."""
    summary = json.loads((Path(products) / "run_summary.json").read_text())
    return RunContext(survey, products, scheduler="threads",
                      config=config_from_dict({"spectral": summary["config"]["spectral"]}))


def reddening_response(ctx: RunContext, nets: dict[str, MKsNetwork], rows: np.ndarray,
                       blind: bool, ebv: float) -> dict[str, dict[str, float]]:
    """Median M_Ks change of each network when ``ebv`` of each curve family (R_V 3.1) is
    put on the raw spectra ``rows`` at unchanged per-pixel S/N
    (:func:`obpipe.stages.luminosity.dust_response`)."""
    wave = wavelength_grid()
    out: dict[str, dict[str, float]] = {name: {} for name in nets}
    for law in LAWS:
        curve = 3.1 * _curve(law, 3.1, wave)  # A(lambda) / E(B-V)
        for name, net in nets.items():
            r = lum.dust_response(ctx, net, rows, "recon_flux", blind, ebv=ebv,
                                  curve_per_ebv=curve)
            out[name][law] = r.get("median_mks_change_mag", float("nan"))
    return out


def decorrelating_resample(ebv: np.ndarray, mks: np.ndarray, rng: np.random.Generator,
                           n_bins: int = 6, clip: tuple[float, float] = (0.2, 5.0)
                           ) -> np.ndarray:
    """Row indices drawn with replacement with weights p(E) p(M) / p(E, M) on quantile
    bins (rows with a NaN weight 1), so that E and M are independent in the draw."""
    def quantile_bin(v: np.ndarray) -> np.ndarray:
        edges = np.nanquantile(v, np.linspace(0, 1, n_bins + 1))
        return np.clip(np.searchsorted(edges, v) - 1, 0, n_bins - 1)

    ok = np.isfinite(ebv) & np.isfinite(mks)
    be, bm = quantile_bin(np.where(ok, ebv, np.nanmedian(ebv))), quantile_bin(
        np.where(ok, mks, np.nanmedian(mks)))
    joint = np.zeros((n_bins, n_bins))
    np.add.at(joint, (be[ok], bm[ok]), 1.0)
    joint /= joint.sum()
    w = joint.sum(axis=1)[be] * joint.sum(axis=0)[bm] / np.maximum(joint[be, bm], 1e-12)
    w = np.where(ok, np.clip(w, *clip), 1.0)
    return np.sort(rng.choice(ebv.size, ebv.size, p=w / w.sum()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("survey")
    ap.add_argument("products")
    ap.add_argument("--n", type=int, default=400, help="spectra for the response")
    ap.add_argument("--ebv", type=float, default=1.0, help="reddening added for the response")
    ap.add_argument("--retrain", action="store_true", help="the three retrained variants "
                    "(needs the mock's truth)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    sv = store.open_cube(a.survey)
    pr = open_products(a.products)
    ctx = run_context(a.survey, a.products)
    blind = lum.products_interstellar_blind(pr)
    snr_all = sv["snr_g"].values.astype(float)
    em = pr["em_flag"].values.astype(int)
    qf = pr["quality_flags"].values.astype(int)
    lset = pr["luminosity_set"].values.astype(int)
    nets = {"run": MKsNetwork.load(str(Path(a.products) / "models" /
                                       "mks_network_a.safetensors"))}
    res: dict[str, Any] = {"ebv": a.ebv}

    if a.retrain:
        summary = json.loads((Path(a.products) / "run_summary.json").read_text())
        lum_cfg = summary["config"]["luminosity"]
        net_cfg = TrainConfig(**{k: v for k, v in lum_cfg["network"].items()
                                 if k in {f.name for f in dataclasses.fields(TrainConfig)}})
        star = sv["star_id"].values.astype(object).astype(str)
        train = np.flatnonzero((lset & 1) > 0)
        ks0, ks0e, plx, plxe = (pr[k].values.astype(float)[train] for k in (
            "Ks0", "Ks0_err", "parallax_corrected", "parallax_corrected_error"))
        fmag, fmag_err = fakemag_from_parallax(plx, plxe, ks0, ks0e)
        y = pr["MKs_geo"].values.astype(float)[train]
        x_clean = _read_rows(pr["recon_flux"], train)
        raw = [_read_rows(sv[k], train) for k in ("flux", "ivar", "mask")]
        f_red, iv_red, _ = reddened_copies(raw[0], raw[1], rng)
        x_red = lum.inputs_from_raw(ctx, {"flux": f_red, "ivar": iv_red, "mask": raw[2]},
                                    "recon_flux", blind)["a"]
        del raw, f_red, iv_red
        pick = decorrelating_resample(pr["ebv"].values.astype(float)[train], y, rng)
        res["decorrelated_unique_rows"] = int(np.unique(pick).size)
        every = np.arange(train.size)
        pix = wavelength_mask("a", exclude_interstellar=blind)
        half = rng.random(train.size) < 0.5
        x_swap = np.where(half[:, None] & np.all(np.isfinite(x_red), axis=1)[:, None],
                          x_red, x_clean)
        for name, x, take in (("baseline", x_clean, every),
                              ("reddened", np.concatenate([x_clean, x_red]),
                               np.concatenate([every, every])),
                              ("swapped", x_swap, every),
                              ("decorrelated", x_clean[pick], pick)):
            t1 = time.perf_counter()
            nets[name], hist = train_network(
                x, y[take], kind="a", config=net_cfg, input_kind="recon_flux",
                pixel_mask=pix, sigma_floor_mag=lum_cfg.get("weight_floor_mag"),
                fakemag=fmag[take], fakemag_err=fmag_err[take], groups=star[train][take],
                meta={"benchmark": "reddening_shortcut", "variant": name})
            res.setdefault("training", {})[name] = {
                "rows": int(x.shape[0]), "epochs": len(hist.train_loss),
                "seconds": time.perf_counter() - t1}

    pool = np.flatnonzero((em == 0) & ((qf & BROKEN_BIT) == 0) & (snr_all > 100))
    rows = np.sort(rng.choice(pool, min(a.n, pool.size), replace=False))
    res["response_n"] = int(rows.size)
    res["response"] = reddening_response(ctx, nets, rows, blind, a.ebv)
    print(f"median M_Ks change for +{a.ebv:g} E(B-V) (R_V 3.1) on {rows.size} spectra at "
          f"S/N > 100, only the dust changed:")
    print(f"{'law':>6s} " + " ".join(f"{k:>13s}" for k in nets))
    for law in LAWS:
        print(f"{law:>6s} " + " ".join(f"{res['response'][k][law]:+13.3f}" for k in nets))

    if a.retrain:
        tr = store.open_truth(a.survey)
        cls = tr["star_class"].values.astype(object).astype(str)
        single = ((cls == "OB") & ~tr["is_binary"].values.astype(bool)
                  & ~tr["has_emission"].values.astype(bool) & (em == 0) & ((qf & 1) == 0))
        star = sv["star_id"].values.astype(object).astype(str)
        ever = np.flatnonzero((lset & (1 | 2 | 8)) > 0)
        test = np.flatnonzero(single & ~np.isin(star, np.unique(star[ever])))
        truth = tr["MKs_true"].values.astype(float)[test]
        snr = snr_all[test]
        xt = _read_rows(pr["recon_flux"], test)
        preds = {name: net.predict(xt) for name, net in nets.items() if name != "run"}
        preds = {"run": pr["MKs"].values.astype(float)[test], **preds}
        print(f"never-trained single non-emission OB stars (n = {test.size}): median M_Ks - "
              f"truth by S/N")
        for lo, hi in SNR_BINS:
            s = (snr >= lo) & (snr < hi)
            cells = {k: float(np.nanmedian(v[s] - truth[s])) for k, v in preds.items()}
            res.setdefault("bias_by_snr", {})[f"{lo:g}-{hi:g}"] = cells
            print(f"{lo:>5g}-{hi:<5g} " + " ".join(f"{k} {v:+.3f}" for k, v in cells.items())
                  + f"  (n {s.sum()})")
        s = snr > 50
        res["std_snr_gt_50"] = {k: float(np.nanstd(v[s] - truth[s])) for k, v in preds.items()}
        print("S/N > 50 std " + " ".join(f"{k} {v:.3f}" for k, v in res["std_snr_gt_50"].items()))
        print("training:", {k: {kk: round(vv, 1) for kk, vv in v.items()}
                            for k, v in res["training"].items()})
    res["seconds"] = time.perf_counter() - t0
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
