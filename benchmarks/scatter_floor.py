"""Is "M_Ks scatter <= 0.25 mag at S/N > 50" reachable on the mock? (issue 15)

Three measurements on a finished run of a simulated survey (read-only: nothing is
written into the products):

``train``
    Retrains networks (a) and (b) with the luminosity stage's own training function
    (:func:`obpipe.luminosity.training.train_with_binary_cleaning`: the same candidate
    rows, inputs, star split, folds, binary cleaning and configuration as the run, read
    from its ``models/luminosity_training.json``) on *oracle* targets built from the
    ``truth`` group instead of the geometric ones, and scores the out-of-fold
    (:meth:`MKsNetwork.predict_out_of_fold`, as the stage) M_Ks of single non-emission
    OB stars at S/N > 50 against ``MKs_true``, for never-trained and out-of-fold stars.
    A target is built from a parallax and a dereddened K_s (eq. 11; the parallax-space
    loss reads ``plx 10^(0.2 Ks0 - 2)``); each variant replaces one or both by the truth,
    with the quoted errors (the loss weights) unchanged:

    * ``geo``: the run's own (corrected parallax, the pipeline's Ks0): reproduces the run;
    * ``true``: ``parallax_mas_true`` and ``Ks0`` = MKs_true - 5 log10(100 / plx_true),
      so the target is exactly ``MKs_true`` (a binary's: its primary's, as the scorer's);
    * ``plx_noise``: the true Ks0 and the parallax with its random error only
      (``parallax - parallax_zp_true``);
    * ``plx_zp``: the true Ks0 and the true parallax plus the zero-point the pipeline
      leaves (``parallax_zp_true - parallax_offset``);
    * ``plx_obs``: the true Ks0 and the corrected parallax (noise and zero-point);
    * ``ks0``: the true parallax and the pipeline's Ks0 (its A_Ks and the K_s noise);
    * ``true_equal``: ``true`` with quoted parallax errors of 1 % (0.02 mag): every
      star weighs alike (the loss's 0.25 mag floor), the distant ones included.

    ``--seeds`` repeats each with other torch seeds (``network.seed``; the star split
    and folds are kept: ``TrainingConfig.seed``), to give the retraining noise.

``labels``
    The floor that no spectrum can beat on this mock: M_Ks,true regressed on the true
    parameters that set a spectrum (Teff, log g, [Fe/H], v sin i), cross-fitted by star
    (scikit-learn's ``HistGradientBoostingRegressor``, 5 folds), scored on the same
    sample. The mock's "cosmic" scatter of log mass at fixed (Teff, log g)
    (``cosmic_log_mass_scatter_dex``, 0.08 dex = 0.20 mag) is in there by design.

``population``
    The sample's E(B-V), M_Ks, distance, parallax S/N and S/N distribution, and the
    run's own catalog M_Ks scatter reweighted to another E(B-V) or distance
    distribution (``--reweight-ebv EDGES WEIGHTS``): what the S/N > 50 figure would be
    on a population with fewer distant reddened luminous stars.

Usage::

    python benchmarks/scatter_floor.py SURVEY.zarr PRODUCTS_DIR train \\
        [--variants geo true ...] [--seeds 0 1] [--json OUT.json]
    python benchmarks/scatter_floor.py SURVEY.zarr PRODUCTS_DIR rescore --save PRED.npz
    python benchmarks/scatter_floor.py SURVEY.zarr PRODUCTS_DIR labels
    python benchmarks/scatter_floor.py SURVEY.zarr PRODUCTS_DIR population
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from obpipe.stats import robust_std

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_truth import (  # noqa: E402  (the independent scorer's reader and command line)
    _read_group,
    survey_products_parser,
    write_json,
)
from score_truth import load as _load  # noqa: E402

EXTRA_TRUTH = ["parallax_mas_true", "feh_true", "vsini_true"]

log = logging.getLogger("scatter_floor")

VARIANTS = ("geo", "true", "plx_noise", "plx_zp", "plx_obs", "ks0", "true_equal")
SNR_BINS = ((50, 100), (100, 200), (200, np.inf))
#: the paper's eq. (14) posterior means on its test stars (Sec. 5.3, Fig. 8)
PAPER_SIGMA_INT_MAG = 0.25
PAPER_SIGMA_S100_MAG = 0.10


def load(survey: str, products: str) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    """:func:`score_truth.load` (catalog, truth of its rows, ``MKs_fold``) with the truth
    columns this script needs beyond the scorer's (:data:`EXTRA_TRUTH`)."""
    cat, t, fold = _load(survey, products)
    obs = _read_group(survey, None, ["specid"])
    extra = _read_group(survey, "truth", EXTRA_TRUTH)
    order = {int(s): i for i, s in enumerate(obs["specid"])}
    idx = np.array([order[int(s)] for s in cat["specid"].to_numpy()])
    t.update({k: v[idx] for k, v in extra.items()})
    return cat, t, fold


def _stats(r: np.ndarray) -> dict[str, Any]:
    r = r[np.isfinite(r)]
    if r.size < 5:
        return {"n": int(r.size)}
    return {"n": int(r.size), "bias": float(np.median(r)), "std": float(np.std(r)),
            "robust_std": float(robust_std(r))}


def sample_masks(cat: Any, t: dict[str, np.ndarray], min_snr: float = 50.0
                 ) -> dict[str, np.ndarray]:
    """The scorer's sample (single non-emission OB, truth; S/N > ``min_snr``) and the
    groups: the tail of luminous reddened stars (E(B-V)true > 1 and M_Ks,true < -3, truth,
    so that every variant is scored on the same stars) and spectra flagged broken."""
    snr = cat["snr_g"].to_numpy(float)
    base = ((t["star_class"] == "OB") & ~t["is_binary"].astype(bool)
            & ~t["has_emission"].astype(bool) & (snr > min_snr))
    tail = (t["ebv_true"] > 1) & (t["MKs_true"] < -3)
    broken = (cat["quality_flags"].to_numpy(int) & 16) > 0  # catalog bit: broken spectrum
    return {"sample": base, "tail": tail, "broken": broken, "snr": snr}


def score_mks(mks: np.ndarray, fold: np.ndarray, cat: Any, t: dict[str, np.ndarray]
              ) -> dict[str, Any]:
    """Std / robust std / median of M_Ks - M_Ks,true of the sample at S/N > 50, by
    never-trained (fold -1) and out-of-fold (fold >= 0), overall, for the luminous
    reddened tail and the rest, without the spectra flagged broken, and per S/N bin."""
    m = sample_masks(cat, t)
    resid = mks - t["MKs_true"]
    out: dict[str, Any] = {}
    for gname, g in (("all", np.ones(fold.size, bool)), ("never_trained", fold == -1),
                     ("out_of_fold", fold >= 0)):
        s = m["sample"] & g
        blk = {"snr_gt_50": _stats(resid[s]),
               "snr_gt_50_not_broken": _stats(resid[s & ~m["broken"]]),
               "tail_ebv_gt_1_mks_lt_-3": _stats(resid[s & m["tail"]]),
               "tail_not_broken": _stats(resid[s & m["tail"] & ~m["broken"]]),
               "rest": _stats(resid[s & ~m["tail"]]),
               "rest_not_broken": _stats(resid[s & ~m["tail"] & ~m["broken"]]),
               "tail_share": float(np.mean(m["tail"][s])) if s.any() else None}
        for lo, hi in SNR_BINS:
            b = s & (m["snr"] >= lo) & (m["snr"] < hi)
            blk[f"snr_{lo}_{hi}"] = _stats(resid[b])
            blk[f"snr_{lo}_{hi}_not_broken"] = _stats(resid[b & ~m["broken"]])
        # the paper's test population: parallax S/N > 10 (Sec. 5.2-5.3)
        good = s & (cat["parallax"].to_numpy(float) / cat["parallax_error"].to_numpy(float) > 10)
        blk["plx_snr_gt_10"] = _stats(resid[good])
        blk["plx_snr_gt_10_not_broken"] = _stats(resid[good & ~m["broken"]])
        blk["n_broken"] = int(np.sum(s & m["broken"]))
        out[gname] = blk
    return out


# ----------------------------------------------------------------------------- train
def _training_config(products: str) -> Any:
    """The run's TrainingConfig, from its ``models/luminosity_training.json``."""
    from obpipe.luminosity.network_training import TrainConfig
    from obpipe.luminosity.training import TrainingConfig

    rep = json.loads((Path(products) / "models" / "luminosity_training.json").read_text())
    c = dict(rep["config"])
    net = TrainConfig(**c.pop("network"))
    return TrainingConfig(**c, network=net)


def _inputs(survey: str, products: str, cfg: Any) -> dict[str, Any]:
    """The stage's candidate rows and network inputs (as
    :func:`obpipe.stages.luminosity.train_from_products`, step 1), plus the rows to score
    (S/N > 50), the truth of every row and the products' columns."""
    from obpipe.engine.blockwise import open_products
    from obpipe.io import store
    from obpipe.luminosity.network import recon_out_of_range, wavelength_mask
    from obpipe.stages import luminosity as st

    survey_ds = store.open_cube(survey)
    prods = open_products(products)
    snr = survey_ds["snr_g"].values.astype(float)
    star = survey_ds["star_id"].values.astype(object).astype(str)
    if not np.array_equal(survey_ds["specid"].values, prods["specid"].values):
        raise SystemExit("survey and products rows differ in order")
    cols = {k: prods[k].values for k in st._CANDIDATE_PRODUCTS}
    cols["parallax_offset"] = prods["parallax_offset"].values
    cols["parallax"] = survey_ds["parallax"].values.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        plx_snr = cols["parallax_corrected"] / cols["parallax_corrected_error"]
    cand = np.isfinite(cols["MKs_geo"]) & (plx_snr > cfg.min_parallax_snr)
    if cfg.network.loss == "fakemag":
        cand |= ((snr > cfg.min_snr) & np.isfinite(cols["Ks0"])
                 & np.isfinite(cols["parallax_corrected"])
                 & (cols["parallax_corrected_error"] > 0))
    score = snr > 50
    rows = np.flatnonzero(cand | score)
    log.info("reading inputs of %d rows (%d candidates)", rows.size, int(cand.sum()))
    x = st._network_inputs(prods, rows, cfg.input_kind, products)
    ism = st.products_interstellar_blind(prods)
    em = cols["em_flag"][rows]
    usable = (((cols["quality_flags"][rows] & st.BROKEN_BIT) == 0)
              & np.all(np.isfinite(x["a"]), axis=1) & np.all(np.isfinite(x["b"]), axis=1))
    if cfg.input_kind == "recon_flux":
        bad_a = recon_out_of_range(x["a"][:, wavelength_mask("a", exclude_interstellar=ism)])
        bad_b = recon_out_of_range(x["b"][:, wavelength_mask("b", exclude_interstellar=ism)])
        usable &= ~np.where(em == 0, bad_a | bad_b, bad_b)
    return {"rows": rows, "cand": cand[rows], "x": x, "usable": usable, "em": em,
            "snr": snr[rows], "star": star[rows], "ism": ism,
            "cols": {k: np.asarray(v)[rows] for k, v in cols.items()}}


def oracle_targets(variant: str, cols: dict[str, np.ndarray], t: dict[str, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(parallax in mas, Ks0 in mag) of the variant (see the module docstring): the
    target is M_Ks = Ks0 + 5 log10(plx / 100) (eq. 11)."""
    plx_true = t["parallax_mas_true"]
    with np.errstate(invalid="ignore", divide="ignore"):
        ks0_true = t["MKs_true"] - 5.0 * np.log10(plx_true / 100.0)
    noise_only = cols["parallax"] - t["parallax_zp_true"]  # true parallax + random error
    zp_left = t["parallax_zp_true"] - cols["parallax_offset"]
    return {
        "geo": (cols["parallax_corrected"], cols["Ks0"]),
        "true": (plx_true, ks0_true),
        "plx_noise": (noise_only, ks0_true),
        "plx_zp": (plx_true + zp_left, ks0_true),
        "plx_obs": (cols["parallax_corrected"], ks0_true),
        "ks0": (plx_true, cols["Ks0"]),
        "true_equal": (plx_true, ks0_true),
    }[variant]


def train_variant(inp: dict[str, Any], t_rows: dict[str, np.ndarray], variant: str,
                  cfg: Any) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train (a) and (b) on the variant's targets; the out-of-fold M_Ks of every row
    (network (a) where em_flag = 0, else (b), as the stage) and the member that held
    each star out (-1: never trained)."""
    from obpipe.luminosity.training import train_with_binary_cleaning

    c = inp["cols"]
    plx, ks0 = oracle_targets(variant, c, t_rows)
    plx = np.where(np.isfinite(c["parallax_corrected"]), plx, np.nan)
    ks0 = np.where(np.isfinite(c["Ks0"]), ks0, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        mks_geo = ks0 + 5.0 * np.log10(plx / 100.0)
    plx_err = c["parallax_corrected_error"]
    if variant == "true_equal":
        plx_err = np.where(np.isfinite(plx_err), 0.01 * np.abs(plx), np.nan)
    k = inp["cand"]
    t0 = time.perf_counter()
    res = train_with_binary_cleaning(
        {m: v[k] for m, v in inp["x"].items()}, inp["star"][k], inp["snr"][k], inp["em"][k],
        inp["usable"][k], mks_geo[k], c["MKs_geo_err"][k], ks0[k], c["Ks0_err"][k], plx[k],
        plx_err[k], cfg, run_mcmc=False, interstellar_blind=inp["ism"])
    secs = time.perf_counter() - t0
    mks = np.full(inp["snr"].size, np.nan)
    fold = np.full(inp["snr"].size, -9)
    for m, sel in (("a", inp["em"] == 0), ("b", inp["em"] != 0)):
        if sel.any():
            mks[sel], _, fold[sel] = res.networks[m].predict_out_of_fold(
                inp["x"][m][sel], inp["star"][sel])
    info = {"train_seconds": secs, "sets": res.sets.counts(),
            "n_binaries_removed": {m: int(np.sum((res.folds[m] != -1) & ~res.clean_train[m]))
                                   for m in ("a", "b")}}
    return mks, fold, info


def run_train(survey: str, products: str, variants: list[str], seeds: list[int],
              save: str | None = None) -> dict[str, Any]:
    """Every variant x seed (see the module docstring); ``save``: an ``.npz`` with each
    one's M_Ks and fold per spectrum (``specid`` order of the survey), for rescoring."""
    cat, t, fold_run = load(survey, products)
    cfg0 = _training_config(products)
    inp = _inputs(survey, products, cfg0)
    rows = inp["rows"]
    if not np.array_equal(cat["specid"].to_numpy()[rows],
                          np.asarray(_specids(products))[rows]):
        raise SystemExit("catalog and products rows differ in order")
    t_rows = {k: v[rows] for k, v in t.items()}
    cat_rows = cat.iloc[rows].reset_index(drop=True)
    mks_run = cat_rows["MKs"].to_numpy(float)
    mks_run[mks_run <= -9] = np.nan
    out: dict[str, Any] = {"run_catalog": score_mks(mks_run, fold_run[rows], cat_rows, t_rows),
                           "variants": {}}
    saved: dict[str, np.ndarray] = {"specid": cat["specid"].to_numpy()[rows]}
    for v in variants:
        for s in seeds:
            cfg = replace(cfg0, network=replace(cfg0.network, seed=cfg0.network.seed + s))
            mks, fold, info = train_variant(inp, t_rows, v, cfg)
            key = f"{v}/seed+{s}"
            rec = {"info": info, "score": score_mks(mks, fold, cat_rows, t_rows)}
            if v == "geo":
                d = (mks - mks_run)[np.isfinite(mks_run)]
                rec["vs_run_catalog"] = {"median_abs_diff": float(np.nanmedian(np.abs(d))),
                                         "std_diff": float(np.nanstd(d))}
                rec["fold_equal_run"] = bool(np.array_equal(fold, fold_run[rows]))
            out["variants"][key] = rec
            saved[f"{v}_seed{s}_mks"], saved[f"{v}_seed{s}_fold"] = mks, fold
            if save:  # after every variant: a long run's partial results survive
                np.savez_compressed(save, **saved)
                Path(save).with_suffix(".json").write_text(json.dumps(out, indent=1))
            a = rec["score"]
            log.info("%s: never-trained S/N>50 std %.3f (robust %.3f), out-of-fold %.3f; %.0f s",
                     key, a["never_trained"]["snr_gt_50"].get("std", np.nan),
                     a["never_trained"]["snr_gt_50"].get("robust_std", np.nan),
                     a["out_of_fold"]["snr_gt_50"].get("std", np.nan), info["train_seconds"])
    return out


def _specids(products: str) -> np.ndarray:
    from obpipe.engine.blockwise import open_products

    return open_products(products)["specid"].values


def run_rescore(survey: str, products: str, saved: str) -> dict[str, Any]:
    """Score again the predictions a ``train --save`` run kept (no training)."""
    cat, t, fold_run = load(survey, products)
    z = np.load(saved, allow_pickle=False)
    pos = {int(s): i for i, s in enumerate(cat["specid"].to_numpy())}
    rows = np.array([pos[int(s)] for s in z["specid"]])
    cat_rows = cat.iloc[rows].reset_index(drop=True)
    t_rows = {k: v[rows] for k, v in t.items()}
    mks_run = cat_rows["MKs"].to_numpy(float)
    mks_run[mks_run <= -9] = np.nan
    out: dict[str, Any] = {"run_catalog": score_mks(mks_run, fold_run[rows], cat_rows, t_rows),
                           "variants": {}}
    for key in sorted(k[:-4] for k in z.files if k.endswith("_mks")):
        out["variants"][key] = {"score": score_mks(z[f"{key}_mks"], z[f"{key}_fold"],
                                                   cat_rows, t_rows)}
    return out


# ---------------------------------------------------------------------------- labels
def run_labels(survey: str, products: str, n_folds: int = 5, seed: int = 0
               ) -> dict[str, Any]:
    """Cross-fitted (by star) regression of M_Ks,true on (Teff, log g, [Fe/H], v sin i)
    true, over all single non-emission OB spectra, scored on the S/N > 50 sample."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    cat, t, fold = load(survey, products)
    m = sample_masks(cat, t, min_snr=-np.inf)
    pool = m["sample"]
    star = t["star_index"]
    feats = {"teff_logg": ("teff_true", "logg_true"),
             "teff_logg_feh_vsini": ("teff_true", "logg_true", "feh_true", "vsini_true")}
    rng = np.random.default_rng(seed)
    ustar = np.unique(star[pool])
    star_fold = dict(zip(ustar.tolist(), rng.integers(0, n_folds, ustar.size).tolist(),
                         strict=True))
    f = np.array([star_fold.get(int(s), -1) for s in star])
    out: dict[str, Any] = {}
    snr_sel = m["sample"] & (m["snr"] > 50)
    for name, cols in feats.items():
        X = np.column_stack([np.log10(t["teff_true"]) if c == "teff_true" else t[c]
                             for c in cols])
        pred = np.full(star.size, np.nan)
        for k in range(n_folds):
            tr = pool & (f != k)
            te = pool & (f == k)
            reg = HistGradientBoostingRegressor(max_iter=400, learning_rate=0.05,
                                                random_state=seed)
            reg.fit(X[tr], t["MKs_true"][tr])
            pred[te] = reg.predict(X[te])
        r = pred - t["MKs_true"]
        out[name] = {"snr_gt_50": _stats(r[snr_sel]),
                     "tail_ebv_gt_1_mks_lt_-3": _stats(r[snr_sel & m["tail"]]),
                     "rest": _stats(r[snr_sel & ~m["tail"]])}
    return out


# ------------------------------------------------------------------------ population
def run_population(survey: str, products: str, ebv_edges: list[float] | None = None,
                   ebv_weights: list[float] | None = None) -> dict[str, Any]:
    """The S/N > 50 sample's distributions, and the run's catalog scatter reweighted to
    bins of E(B-V) (true) with the given target shares (never-trained and out-of-fold
    stars together, and never-trained alone)."""
    cat, t, fold = load(survey, products)
    m = sample_masks(cat, t)
    s = m["sample"]
    mks = cat["MKs"].to_numpy(float)
    mks[mks <= -9] = np.nan
    resid = mks - t["MKs_true"]
    plx_snr = cat["parallax"].to_numpy(float) / cat["parallax_error"].to_numpy(float)
    q = (5, 16, 50, 84, 95)

    def pct(a: np.ndarray) -> list[float]:
        return [float(v) for v in np.nanpercentile(a, q)]

    out: dict[str, Any] = {
        "n": int(s.sum()),
        "percentiles": list(q),
        "ebv_true": pct(t["ebv_true"][s]), "MKs_true": pct(t["MKs_true"][s]),
        "distance_kpc_true": pct(t["distance_kpc_true"][s]),
        "plx_over_err": pct(plx_snr[s]), "snr": pct(m["snr"][s]),
        "share_plx_snr_gt_10": float(np.mean(plx_snr[s] > 10)),
        "share_ebv_gt_1": float(np.mean(t["ebv_true"][s] > 1)),
        "share_tail": float(np.mean(m["tail"][s])),
        "share_distance_gt_3kpc": float(np.mean(t["distance_kpc_true"][s] > 3)),
        # whole survey, all spectra: the paper's "S/N > 50 and parallax S/N > 10" share
        "survey_share_snr50_plx10": float(np.mean((m["snr"] > 50) & (plx_snr > 10))),
    }
    # the paper's 0.25 mag is eq. (14)'s sigma_int on its test stars with parallax S/N > 10
    # (Sec. 5.3, Fig. 8): the same sample here, and the run's own eq. (14) fit
    good = s & (plx_snr > 10) & np.isfinite(resid)
    out["plx_snr_gt_10"] = {"share": float(good.sum() / s.sum()),
                            "all": _stats(resid[good]),
                            "never_trained": _stats(resid[good & (fold == -1)]),
                            "out_of_fold": _stats(resid[good & (fold >= 0)]),
                            "never_trained_not_broken": _stats(
                                resid[good & (fold == -1) & ~m["broken"]])}
    out["noise_model_eq14"] = _noise_model_means(products)
    # what the paper's own noise model (Sec. 5.3: sigma_int = 0.25, sigma_s100 = 0.10 mag)
    # implies for a std at this sample's S/N: rms of sqrt(sigma_int^2 + sigma_s^2), eq. (10)
    out["paper_noise_model_rms_at_this_snr"] = float(np.sqrt(np.mean(
        PAPER_SIGMA_INT_MAG**2 + (PAPER_SIGMA_S100_MAG * 100.0 / m["snr"][s]) ** 2)))
    em = cat["em_flag"].to_numpy(int)
    a_cand = (m["snr"] > 50) & (plx_snr > 10) & (em == 0)
    out["counts_like_paper"] = {
        "spectra": int(len(cat)),
        "snr_gt_50_plx_snr_gt_10_em_flag_0_spectra": int(a_cand.sum()),
        "snr_gt_50_plx_snr_gt_10_em_flag_0_stars": int(np.unique(
            cat["star_id"].to_numpy()[a_cand]).size),
        "snr_gt_50_plx_snr_gt_10_spectra": int(((m["snr"] > 50) & (plx_snr > 10)).sum())}
    edges = np.asarray(ebv_edges if ebv_edges else [0, 0.5, 1, 2, 10], float)
    by_bin = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        b = s & (t["ebv_true"] >= lo) & (t["ebv_true"] < hi) & np.isfinite(resid)
        by_bin.append({"ebv": [float(lo), float(hi)], "share": float(b.sum() / s.sum()),
                       "all": _stats(resid[b]), "never_trained": _stats(resid[b & (fold == -1)])})
    out["by_ebv_true"] = by_bin
    out["real_table"] = real_table_population(edges)
    # the mock's sample in the real table's G range (5-95 %): like for like in brightness
    obs = _read_group(survey, None, ["specid", "phot_g_mean_mag"])
    pos = {int(v): i for i, v in enumerate(obs["specid"])}
    gmag = obs["phot_g_mean_mag"][[pos[int(v)] for v in cat["specid"].to_numpy()]]
    g_lo, g_hi = out["real_table"]["G"][0], out["real_table"]["G"][-1]
    gm = s & (gmag > g_lo) & (gmag < g_hi) & np.isfinite(resid)
    ebv_cat = cat["ebv"].to_numpy(float)
    out["mock_in_real_G_range"] = {
        "G": [g_lo, g_hi], "n": int(gm.sum()), "share_of_sample": float(gm.sum() / s.sum()),
        "ebv_catalog": pct(ebv_cat[gm]), "share_ebv_gt_1": float(np.mean(ebv_cat[gm] > 1)),
        "MKs_true": pct(t["MKs_true"][gm]), "distance_kpc_true": pct(t["distance_kpc_true"][gm]),
        "share_plx_snr_gt_10": float(np.mean(plx_snr[gm] > 10)),
        "all": _stats(resid[gm]), "never_trained": _stats(resid[gm & (fold == -1)])}
    if not ebv_weights:  # the real table's shares (bright stars: a biased sample)
        ebv_weights = [b["share"] for b in out["real_table"]["by_ebv"]]
    if ebv_weights:
        w = np.asarray(ebv_weights, float)
        w = w / w.sum()
        for gname, g in (("all", np.ones(fold.size, bool)), ("never_trained", fold == -1)):
            mean_sq = 0.0
            mean = 0.0
            for wb, (lo, hi) in zip(w, zip(edges[:-1], edges[1:], strict=True), strict=True):
                b = s & g & (t["ebv_true"] >= lo) & (t["ebv_true"] < hi) & np.isfinite(resid)
                if b.sum() == 0:
                    continue
                mean += wb * np.mean(resid[b])
                mean_sq += wb * np.mean(resid[b] ** 2)
            out.setdefault("reweighted", {})[gname] = {
                "weights": w.tolist(), "std": float(np.sqrt(mean_sq - mean**2))}
    return out


def _noise_model_means(products: str) -> dict[str, dict[str, float]]:
    """Posterior means of eq. (14) (eps, delta, sigma_int, sigma_s100) of the run."""
    from obpipe.luminosity.noise_model import NoiseModelResult

    out = {}
    for m in ("a", "b"):
        path = Path(products) / "models" / f"noise_model_{m}.npz"
        if path.exists():
            out[m] = {k: float(v) for k, v in NoiseModelResult.load(str(path)).mean.items()}
    return out


def real_table_population(ebv_edges: np.ndarray, min_snr: float = 50.0) -> dict[str, Any]:
    """The real LAMOST hot stars with Gaia DR3 x 2MASS
    (``../shared/data/hotstars_gaia_2mass``; Monsalves et al. 2025, A&A 704, A155):
    spectra with SNRG > ``min_snr``, one row per Gaia source (its best spectrum), through
    the pipeline's photometry (:func:`obpipe.photometry.block.photometry_block`, default
    options: E(B-V), corrected parallax, geometric M_Ks of eq. 11). Bright stars
    (G 10.2-11.9, 5-95 %): a biased sample of the survey."""
    import pandas as pd
    from extinction_real_stars import DEFAULT_TABLE  # the same real table

    from obpipe.photometry.block import photometry_block
    from obpipe.photometry.star_table import read_inputs

    tab = pd.read_csv(DEFAULT_TABLE)
    sid, inp = read_inputs(DEFAULT_TABLE)
    snr = tab["SNRG"].to_numpy(float)
    order = np.lexsort((-np.nan_to_num(snr, nan=-1), sid))  # best spectrum first per source
    first = order[np.unique(sid[order], return_index=True)[1]]
    keep = first[snr[first] > min_snr]
    ph = photometry_block({k: v[keep] for k, v in inp.items()})
    ebv = ph["ebv"]
    plx_snr = ph["parallax_corrected"] / ph["parallax_corrected_error"]
    mks = ph["MKs_geo"]
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.where(plx_snr > 5, 1.0 / ph["parallax_corrected"], np.nan)
    q = (5, 16, 50, 84, 95)
    ok = np.isfinite(ebv)
    by = []
    for lo, hi in zip(ebv_edges[:-1], ebv_edges[1:], strict=True):
        by.append({"ebv": [float(lo), float(hi)],
                   "share": float(np.mean((ebv[ok] >= lo) & (ebv[ok] < hi)))})
    return {
        "n_sources": int(keep.size), "n_with_ebv": int(ok.sum()), "percentiles": list(q),
        "G": [float(v) for v in np.nanpercentile(tab["phot_g_mean_mag"].to_numpy()[keep], q)],
        "ebv": [float(v) for v in np.nanpercentile(ebv, q)],
        "MKs_geo_plx_snr_gt_10": [float(v) for v in np.nanpercentile(mks[plx_snr > 10], q)],
        "distance_kpc_plx_snr_gt_5": [float(v) for v in np.nanpercentile(dist, q)],
        "plx_over_err": [float(v) for v in np.nanpercentile(plx_snr, q)],
        "share_plx_snr_gt_10": float(np.mean(plx_snr > 10)),
        "share_ebv_gt_1": float(np.mean(ebv[ok] > 1)),
        "share_ebv_gt_1_MKs_geo_lt_-3": float(np.mean(((ebv > 1) & (mks < -3))[ok])),
        "by_ebv": by}


def main(argv: list[str] | None = None) -> int:
    ap = survey_products_parser(__doc__)
    ap.add_argument("what", choices=("train", "rescore", "labels", "population"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="offsets added to the run's network.seed")
    ap.add_argument("--ebv-edges", nargs="+", type=float, default=None)
    ap.add_argument("--ebv-weights", nargs="+", type=float, default=None,
                    help="target share per E(B-V) bin (population)")
    ap.add_argument("--save", default=None, help="train: .npz of the predictions")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if a.what == "train":
        res = run_train(a.survey, a.products, a.variants, a.seeds, a.save)
    elif a.what == "rescore":
        if not a.save:
            ap.error("rescore needs --save (the .npz of a train run)")
        res = run_rescore(a.survey, a.products, a.save)
    elif a.what == "labels":
        res = run_labels(a.survey, a.products)
    else:
        res = run_population(a.survey, a.products, a.ebv_edges, a.ebv_weights)
    write_json(res, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
