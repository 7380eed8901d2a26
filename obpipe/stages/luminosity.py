"""Stages ``luminosity`` (Secs. 5.1-5.3) and ``binary`` (Sec. 6): thin wiring.

``luminosity``
    1. reads the good-parallax candidates (and the rows of an optional extra training
       table) from the products store: ``recon_flux`` (or the PCA coefficients for
       the ``input_kind="pca_coeff"`` variant), ``em_flag``, ``quality_flags``,
       ``MKs_geo(_err)``, ``Ks0(_err)``, ``parallax_corrected(_error)``, S/N;
    2. trains networks (a) and (b) with two binary-cleaning iterations and samples
       the noise model (:mod:`obpipe.luminosity.training`);
    3. writes ``PRODUCTS_DIR/models/mks_network_{a,b}.safetensors`` (tensors, JSON
       metadata in the header), ``noise_model_{a,b}.npz``,
       ``luminosity_training.json`` and figures ``fig5_mks_spec_vs_geo.png``,
       ``fig8_noise_model_{a,b}.png``; a rerun finds the files and skips training;
    4. maps :func:`luminosity_block` over the cube with
       :func:`obpipe.products.run_blockwise_stage`: the networks travel to the
       workers as file paths (loaded once per process, ``lru_cache``), the noise
       parameters as floats.

    Products: ``MKs`` (out of fold, issue 15: for a star that trained the network, every
    visit of it, the one member that never saw it; else the mean of the ensemble
    members; ``MKs_fold`` says which), ``MKs_err`` (sqrt(sigma_int^2 +
    sigma_s^2), eqs. 8-10, with sigma_s(S/N) measured on degraded held-out spectra,
    :func:`calibrate_sigma_s`), ``MKs_spread`` (the members' standard
    deviation), ``MKs_model`` (0 = network a, 1 = network b, -9 = none: em_flag 0 uses
    (a); 1 and -9 (undetermined) use (b), which ignores the emission-line regions),
    ``luminosity_set`` (bits: 1 trained (a), 2 trained (b), 4 test set, 8 removed from
    training as a binary, 16 extra training table).

``binary``
    eqs. (15)-(17) per spectrum (:mod:`obpipe.binary`): ``parallax_spec``,
    ``parallax_spec_err`` (mas), ``snr_dparallax``, ``binary_flag`` (1 / 0 / -9); figure
    ``fig10_parallax_excess.png``.

The ``binary`` stage is :mod:`obpipe.stages.binary`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from functools import lru_cache
from typing import Any

import numpy as np
import xarray as xr
import zarr

from obpipe.binary import (
    BINARY_SNR_THRESHOLD,
    expected_detection_probability,
)
from obpipe.io import store
from obpipe.luminosity import noise_model
from obpipe.luminosity.network import MKsNetwork, recon_out_of_range, wavelength_mask
from obpipe.luminosity.training import TrainingConfig, train_with_binary_cleaning
from obpipe.products import (
    Output,
    ensure_outputs,
    force_requested,
    mark_blocks_done,
    open_products,
    products_path,
    run_blockwise_stage,
    stage_complete,
    temp_name,
    write_products_block,
)
from obpipe.stats import robust_std
from obpipe.version import __version__

log = logging.getLogger(__name__)

NAME = STAGE = "luminosity"
DESCRIPTION = ("two M_Ks networks, binary-cleaned; emcee noise model (Secs. 5.1-5.3, "
               "eqs. 6-14)")
#: the typed options section (``PipelineConfig.luminosity``; the extra training table is
#: ``PipelineConfig.extra_training_table``)
Config = TrainingConfig
SECTION = "luminosity"
SETS_STAGE = "luminosity_sets"
MODEL_DIR = "models"
NETWORK_FILES = {"a": "mks_network_a.safetensors", "b": "mks_network_b.safetensors"}
NOISE_FILES = {"a": "noise_model_a.npz", "b": "noise_model_b.npz"}
REPORT_FILE = "luminosity_training.json"
MODEL_CODES = {"a": 0, "b": 1}
BROKEN_BIT = 1

SET_BITS = {"train_a": 1, "train_b": 2, "test": 4, "removed_binary": 8, "extra": 16}

OUTPUTS: dict[str, Output] = {
    "MKs": Output("float32", "mag", "spectroscopic K_s absolute magnitude (eq. 6 network)"),
    "MKs_err": Output("float32", "mag", "sqrt(sigma_int^2 + sigma_s(S/N)^2) (Sec. 5.3, "
                      "eqs. 8-10; sigma_s from degraded spectra where the noise model has "
                      "them, else eq. 10)"),
    "MKs_spread": Output("float32", "mag", "standard deviation of the ensemble members' "
                         "M_Ks (epistemic; large where the training set is thin)"),
    "MKs_model": Output("int8", "", "network used: 0 = (a) non-emission, full range; "
                        "1 = (b) clean windows (em_flag 1 or -9); -9 = no estimate"),
    "MKs_flag": Output("int8", "", "bits: 1 input reconstruction out of range (max |f - 1| "
                       "> 2 within the model pixels: a failed PCA projection, M_Ks "
                       "unreliable), 2 spectrum flagged broken (quality_flags bit 0), 4 "
                       "in-sample (a one-network model trained on this star)"),
    "MKs_fold": Output("int8", "", "which ensemble members gave MKs (issue 15): k >= 0 "
                       "the one member (0-based) that never saw this star, whose other "
                       "members trained on one of its visits (out-of-fold); -1 the mean of "
                       "all members (no member trained on this star); -2 in-sample "
                       "(one-network model that trained on it); -9 no estimate"),
}
SET_OUTPUTS: dict[str, Output] = {
    "luminosity_set": Output("int8", "", "bits: " + ", ".join(
        f"{v} {k}" for k, v in SET_BITS.items())),
}
_CANDIDATE_PRODUCTS = ("em_flag", "quality_flags", "MKs_geo", "MKs_geo_err", "Ks0", "Ks0_err",
                       "parallax_corrected", "parallax_corrected_error")


def _model_paths(products_dir: str) -> dict[str, str]:
    return {m: os.path.join(products_dir, MODEL_DIR, f) for m, f in NETWORK_FILES.items()}


def _noise_paths(products_dir: str) -> dict[str, str]:
    return {m: os.path.join(products_dir, MODEL_DIR, f) for m, f in NOISE_FILES.items()}


@lru_cache(maxsize=8)
def _load_network(path: str, mtime: float) -> MKsNetwork:
    return MKsNetwork.load(path)


def load_network(path: str) -> MKsNetwork:
    return _load_network(path, store.file_token(path))


def _config(ctx: Any) -> tuple[TrainingConfig, dict[str, Any]]:
    """The typed section ``ctx.config.luminosity`` and the extra training table (or None)."""
    return ctx.config.luminosity, {"extra_training": ctx.config.extra_training_table or None}


def read_extra_training(path: str, specid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An extra training table (CSV / Parquet / FITS; columns ``specid``, ``MKs``, optional
    ``MKs_err``) as per-row arrays aligned with ``specid`` (NaN where absent)."""
    from astropy.table import Table

    tab = Table.read(path)
    ids = np.asarray(tab["specid"], dtype=np.int64)
    pos = {int(s): i for i, s in enumerate(np.asarray(specid, dtype=np.int64))}
    mks = np.full(specid.size, np.nan)
    err = np.full(specid.size, np.nan)
    has_err = "MKs_err" in tab.colnames
    missing = 0
    for k, sid in enumerate(ids):
        i = pos.get(int(sid))
        if i is None:
            missing += 1
            continue
        mks[i] = float(tab["MKs"][k])
        err[i] = float(tab["MKs_err"][k]) if has_err else 0.1
    if missing:
        log.warning("extra training table %s: %d specids not in the survey", path, missing)
    return mks, err


def clean_window_reconstruction(pca_coeff: np.ndarray, products_dir: str) -> np.ndarray:
    """Full-grid reconstruction of every row from its clean-window PCA coefficients
    (Sec. 5.1: what an emission star's spectrum is; network (b) reads it for every star,
    so training and inference see the same representation). NaN rows stay NaN."""
    from obpipe.spectra.bases import load_pca_model

    coeff = np.asarray(pca_coeff)
    out = load_pca_model(products_dir).clean.reconstruct(np.nan_to_num(coeff))
    out[~np.isfinite(coeff[:, 0])] = np.nan
    return out


def _network_inputs(prods: xr.Dataset, rows: np.ndarray, input_kind: str, products_dir: str
                    ) -> dict[str, np.ndarray]:
    if input_kind == "recon_flux":
        return {"a": prods["recon_flux"].isel(spec=rows).values,
                "b": clean_window_reconstruction(prods["pca_coeff"].isel(spec=rows).values,
                                                 products_dir)}
    if input_kind == "pca_coeff":
        return {"a": prods["pca_coeff_full"].isel(spec=rows).values,
                "b": prods["pca_coeff"].isel(spec=rows).values}
    raise ValueError(f"unknown input_kind {input_kind!r}")


def calibrate_sigma_s(ctx: Any, model: str, usable: np.ndarray, snr: np.ndarray,
                      star_id: np.ndarray, net: MKsNetwork, input_kind: str,
                      min_snr: float = 100.0, max_spectra: int = 2000, seed: int = 0
                      ) -> dict[str, list[float]]:
    """sigma_s(S/N) of eq. (9) for network ``model`` from degraded spectra (issue 15).

    Up to ``max_spectra`` ``usable`` spectra with S/N > ``min_snr`` (of the model's
    emission class; network (b) takes every class when its own has < 200) go through
    :func:`noise_model.degraded_snr_scatter` with the pca stage's projection (prior as
    configured) and the out-of-fold member of each star (:meth:`predict_out_of_fold`).
    """
    from obpipe.spectra.bases import load_pca_model

    pool = np.flatnonzero(usable & (snr > min_snr))
    if model == "b" and pool.size < 200:
        qf = open_products(ctx.products_dir)["quality_flags"].values
        pool = np.flatnonzero(((qf & BROKEN_BIT) == 0) & (snr > min_snr))
    if pool.size < 20:
        log.warning("luminosity: %d spectra at S/N > %g for network (%s); sigma_s from "
                    "eq. (10)", pool.size, min_snr, model)
        return {"snr": [], "n": [], "sigma_mag": [], "shift_mag": []}
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(pool, min(max_spectra, pool.size), replace=False))
    prods = open_products(ctx.products_dir)
    flux = prods["norm_flux"].isel(spec=rows).values
    ivar = prods["norm_ivar"].isel(spec=rows).values
    prior = bool(ctx.config.spectral.projection_prior)
    pca_model = load_pca_model(ctx.products_dir)
    basis = pca_model.full if model == "a" else pca_model.clean
    ids = star_id[rows]
    if input_kind == "recon_flux":  # the network on the coefficients of the reconstruction
        r0 = basis.reconstruct(np.zeros((1, basis.n_components)))[0]
        net = net.on_coefficients(basis.reconstruct(np.eye(basis.n_components)) - r0, r0)

    def predict(f: np.ndarray, iv: np.ndarray, sel: np.ndarray) -> np.ndarray:
        coeff = basis.project(f, iv, prior=prior)
        x = np.nan_to_num(coeff) if input_kind == "recon_flux" else coeff
        return net.predict_out_of_fold(x, ids[sel])[0]

    return noise_model.degraded_snr_scatter(flux, ivar, snr[rows], predict, seed=seed)


def train_from_products(ctx: Any, cfg: TrainingConfig, extra_path: str | None = None
                        ) -> dict[str, Any]:
    """Steps 1-3 of the stage: train, calibrate, save the model files and figures."""
    t0 = time.perf_counter()
    survey = store.open_cube(ctx.survey_path)
    prods = open_products(ctx.products_dir)
    snr_all = survey["snr_g"].values.astype(float)
    star_all = survey["star_id"].values.astype(object).astype(str)
    specid_all = survey["specid"].values
    cols = {k: prods[k].values for k in _CANDIDATE_PRODUCTS}
    with np.errstate(invalid="ignore", divide="ignore"):
        plx_snr = cols["parallax_corrected"] / cols["parallax_corrected_error"]
    extra_mks = extra_err = None
    cand = np.isfinite(cols["MKs_geo"]) & (plx_snr > cfg.min_parallax_snr)
    if cfg.network.loss == "fakemag":  # any parallax trains through the parallax-space loss
        cand |= ((snr_all > cfg.min_snr) & np.isfinite(cols["Ks0"])
                 & np.isfinite(cols["parallax_corrected"])
                 & (cols["parallax_corrected_error"] > 0))
    if extra_path:
        extra_mks, extra_err = read_extra_training(extra_path, specid_all)
        cand |= np.isfinite(extra_mks)
    rows = np.flatnonzero(cand)
    log.info("luminosity: %d candidate spectra (good parallax or extra table) of %d",
             rows.size, snr_all.size)
    em = cols["em_flag"][rows]
    x = _network_inputs(prods, rows, cfg.input_kind, ctx.products_dir)
    usable = (((cols["quality_flags"][rows] & BROKEN_BIT) == 0)
              & np.all(np.isfinite(x["a"]), axis=1) & np.all(np.isfinite(x["b"]), axis=1))
    if cfg.input_kind == "recon_flux":
        # failed reconstructions within a model's own pixels never train a network (a
        # non-emission spectrum trains both)
        bad_a = recon_out_of_range(x["a"][:, wavelength_mask("a")])
        bad_b = recon_out_of_range(x["b"][:, wavelength_mask("b")])
        bad = np.where(em == 0, bad_a | bad_b, bad_b)
        usable &= ~bad
        log.info("luminosity: %d candidates with an out-of-range reconstruction excluded",
                 int(np.sum(bad)))
    t_read = time.perf_counter() - t0
    res = train_with_binary_cleaning(
        x, star_all[rows], snr_all[rows], em, usable,
        cols["MKs_geo"][rows], cols["MKs_geo_err"][rows], cols["Ks0"][rows],
        cols["Ks0_err"][rows], cols["parallax_corrected"][rows],
        cols["parallax_corrected_error"][rows], cfg,
        extra_mks=None if extra_mks is None else extra_mks[rows],
        extra_mks_err=None if extra_err is None else extra_err[rows],
    )
    res.report["timing_s"]["read_inputs"] = t_read
    mdir = os.path.join(ctx.products_dir, MODEL_DIR)
    store.makedirs(mdir)
    for m, path in _model_paths(ctx.products_dir).items():
        res.networks[m].meta.update({"products": store.absolute(ctx.products_dir),
                                     "survey_seed": survey.attrs.get("seed", -1)})
        tmp = temp_name(path)
        res.networks[m].save(tmp)
        store.replace(tmp, path)
    t_cal = time.perf_counter()
    for m, sel in (("a", cols["em_flag"] == 0), ("b", cols["em_flag"] != 0)):
        res.noise[m].meta["sigma_s_degraded"] = calibrate_sigma_s(
            ctx, m, sel & ((cols["quality_flags"] & BROKEN_BIT) == 0), snr_all, star_all,
            res.networks[m], cfg.input_kind, seed=cfg.seed)
    res.report["timing_s"]["sigma_s_degraded"] = time.perf_counter() - t_cal
    for m, path in _noise_paths(ctx.products_dir).items():
        tmp = temp_name(path)
        res.noise[m].save(tmp)
        store.replace(tmp, path)
    # set membership, written as one product column
    sets = np.zeros(snr_all.size, dtype=np.int8)
    s = res.sets
    for name, mask in (("train_a", res.clean_train["a"]), ("train_b", res.clean_train["b"]),
                       ("test", s.test), ("extra", s.extra),
                       ("removed_binary", ((res.folds["a"] != -1) & ~res.clean_train["a"])
                        | ((res.folds["b"] != -1) & ~res.clean_train["b"]))):
        sets[rows[mask]] |= SET_BITS[name]
    n_spec = snr_all.size
    chunk = int(prods["specid"].chunks[0][0])
    ensure_outputs(ctx.products_dir, SETS_STAGE, SET_OUTPUTS, n_spec, chunk)
    write_products_block(ctx.products_dir, 0, {"luminosity_set": sets})
    mark_blocks_done(ctx.products_dir, SETS_STAGE)
    report = {**res.report, "noise": {m: r.summary() for m, r in res.noise.items()},
              "obpipe_version": __version__, "n_candidates": int(rows.size),
              "extra_training": extra_path}
    with store.open_file(os.path.join(mdir, REPORT_FILE), "w") as fh:
        json.dump(report, fh, indent=1, default=float)
    try:
        figdir = os.path.join(ctx.products_dir, "figures")
        store.makedirs(figdir)
        for m, r in res.noise.items():
            noise_model.corner_plot(r, os.path.join(figdir, f"fig8_noise_model_{m}.png"),
                                    title=f"network ({m}): {r.meta.get('sample', '')}")
    except Exception as exc:  # figures never fail a run
        log.warning("luminosity figures not written: %s", exc)
    return report


def noise_sigmas(noise: dict[str, noise_model.NoiseModelResult]) -> tuple[tuple[Any, ...], ...]:
    """The ``sigmas`` argument of :func:`luminosity_block` from the fitted noise models."""
    def table(r: noise_model.NoiseModelResult) -> tuple[tuple[float, ...], ...] | None:
        t = r.sigma_s_table
        return None if t is None else (tuple(map(float, t[0])), tuple(map(float, t[1])))

    return tuple((m, r.sigma_int, r.sigma_s100, r.includes_epistemic, table(r))
                 for m, r in noise.items())


def luminosity_block(inputs: dict[str, np.ndarray], model_paths: tuple[tuple[str, str], ...],
                     sigmas: tuple[tuple[Any, ...], ...], input_kind: str,
                     batch_size: int = 2048, products_dir: str | None = None
                     ) -> dict[str, np.ndarray]:
    """M_Ks, its error and the model code for one chunk of spectra (pure numpy).

    ``sigmas``: per model ``(name, sigma_int, sigma_s100[, with_spread[, table]])``;
    with_spread adds the ensemble spread to MKs_err (a noise model fitted with it);
    table, ``((S/N, ...), (sigma_s mag, ...))`` from degraded spectra, replaces eq. (10).

    ``input_kind="recon_flux"``: network (a) reads ``recon_flux``; network (b) the
    clean-window reconstruction from ``pca_coeff`` and the PCA model of ``products_dir``
    (``recon_flux`` itself when ``products_dir`` is None)."""
    from threadpoolctl import threadpool_limits

    em = np.asarray(inputs["em_flag"])
    snr = np.asarray(inputs["snr_g"], dtype=float)
    n = em.size
    mks = np.full(n, np.nan)
    spread = np.full(n, np.nan)
    err = np.full(n, np.nan)
    code = np.full(n, -9, dtype=np.int8)
    fold = np.full(n, -9, dtype=np.int8)
    flag = np.where((np.asarray(inputs["quality_flags"]) & BROKEN_BIT) > 0, 2, 0).astype(np.int8)
    paths = dict(model_paths)
    sig = {m: (si, s100, bool(rest[0]) if rest else False,
               rest[1] if len(rest) > 1 else None) for m, si, s100, *rest in sigmas}
    for m, rows in (("a", em == 0), ("b", em != 0)):
        if not rows.any():
            continue
        net = load_network(paths[m])
        if input_kind == "recon_flux":
            x = inputs["recon_flux"][rows]
            if m == "b" and products_dir is not None:
                x = clean_window_reconstruction(inputs["pca_coeff"][rows], products_dir)
        else:
            x = inputs["pca_coeff_full" if m == "a" else "pca_coeff"][rows]
        with threadpool_limits(1):
            if "star_id" in inputs:  # out-of-fold for the stars the model trained on
                mks[rows], spread[rows], fold[rows] = net.predict_out_of_fold(
                    x, np.asarray(inputs["star_id"])[rows], batch_size=batch_size)
            else:
                mks[rows], spread[rows] = net.predict(x, batch_size=batch_size,
                                                      return_std=True)
                fold[rows] = -1
            flag[rows] |= net.input_out_of_range(x).astype(np.int8)
            flag[rows] |= np.where(fold[rows] == -2, 4, 0).astype(np.int8)
        si, s100, with_spread, table = sig[m]
        err[rows] = noise_model.mks_uncertainty(snr[rows], si, s100,
                                                spread[rows] if with_spread else None,
                                                sigma_s_table=table)
        code[rows] = MODEL_CODES[m]
    bad = ~np.isfinite(mks)
    err[bad] = np.nan
    code[bad] = -9
    spread[bad] = np.nan
    fold[bad] = -9
    return {"MKs": mks.astype(np.float32), "MKs_err": err.astype(np.float32),
            "MKs_spread": spread.astype(np.float32),
            "MKs_model": code, "MKs_flag": flag, "MKs_fold": fold}


def run(ctx: Any) -> dict[str, Any]:
    """Train (unless the model files exist), calibrate, then infer M_Ks over the cube."""
    cfg, extra = _config(ctx)
    force = force_requested(ctx)
    paths = _model_paths(ctx.products_dir)
    npaths = _noise_paths(ctx.products_dir)
    report: dict[str, Any] = {}
    have = all(store.exists(p) for p in (*paths.values(), *npaths.values()))
    if force or not have:
        report["training"] = train_from_products(ctx, cfg, extra["extra_training"])
    noise = {m: noise_model.NoiseModelResult.load(p) for m, p in npaths.items()}
    sigmas = noise_sigmas(noise)
    input_kind = load_network(paths["a"]).input_kind
    pvars: tuple[str, ...] = ("em_flag", "quality_flags")
    pvars += ("recon_flux", "pca_coeff") if input_kind == "recon_flux" else (
        "pca_coeff", "pca_coeff_full")
    t0 = time.perf_counter()
    result = run_blockwise_stage(
        ctx.survey_path, ctx.products_dir, STAGE,
        functools.partial(luminosity_block, model_paths=tuple(sorted(paths.items())),
                          sigmas=sigmas, input_kind=input_kind,
                          products_dir=store.absolute(ctx.products_dir)),
        OUTPUTS, survey_vars=("snr_g", "star_id"), product_vars=pvars, scheduler=ctx.scheduler,
        force=force,
    )
    result["inference_seconds"] = time.perf_counter() - t0
    # on the MKs_err array itself: root attributes are rewritten when a later stage adds
    # variables (products.ensure_outputs), variable attributes are not
    grp = zarr.open_group(products_path(ctx.products_dir), mode="r+",
                          zarr_format=store.ZARR_FORMAT)
    grp["MKs_err"].attrs.update({f"noise_{m}_{k}": float(v) for m, r in noise.items()
                                 for k, v in r.mean.items()})
    grp["MKs_err"].attrs.update({f"noise_{m}_epistemic_spread": r.includes_epistemic
                                 for m, r in noise.items()})
    grp["MKs_err"].attrs.update({f"noise_{m}_sigma_s_degraded": r.meta["sigma_s_degraded"]
                                 for m, r in noise.items() if r.sigma_s_table is not None})
    return {**result, "noise": {m: r.mean for m, r in noise.items()},
            "training_seconds": report.get("training", {}).get("timing_s", {})}


def is_complete(ctx: Any) -> bool:
    return stage_complete(ctx.products_dir, STAGE)


#: the stage's block function (one chunk of rows)
block = luminosity_block


# ------------------------------------------------------------------------- figures
def write_fig5(survey_path: str, products_dir: str) -> str:
    """Fig. 5: spectroscopic vs geometric M_Ks for test stars (plx/err > 10, S/N > 20)."""
    from matplotlib.figure import Figure

    survey = store.open_cube(survey_path)
    prods = open_products(products_dir)
    names = [v for v in ("MKs", "MKs_geo", "em_flag", "luminosity_set", "parallax_corrected",
                         "parallax_corrected_error", "MKs_model") if v in prods]
    p = prods[names].load()
    snr = survey["snr_g"].values
    with np.errstate(invalid="ignore", divide="ignore"):
        good = (p["parallax_corrected"].values / p["parallax_corrected_error"].values > 10)
    if "luminosity_set" in p:
        unseen = (p["luminosity_set"].values & SET_BITS["test"]) > 0
    else:  # models trained on another survey (reused): no star here was trained on
        unseen = np.ones(good.shape, dtype=bool)
    test = unseen & good & (snr > 20)
    em = p["em_flag"].values
    fig = Figure(figsize=(10, 4.8))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    lims = (-6, 3)
    for ax, sel, title in ((axes[0], test & (em == 0), "(a) non-emission, full range"),
                           (axes[1], test & (em != 0), "(b) clean windows, emission")):
        ax.scatter(p["MKs_geo"].values[sel], p["MKs"].values[sel], s=3, alpha=0.5,
                   color="C0" if ax is axes[0] else "C3")
        ax.plot(lims, lims, "k-", lw=0.8)
        ax.plot(lims, np.add(lims, 0.75), "k--", lw=0.8)
        ax.set_xlim(lims)
        ax.set_ylim(lims)
        ax.set_title(f"{title} (n = {int(sel.sum())})", fontsize=9)
        ax.set_xlabel(r"geometric $M_{K_s}$ (mag)")
    axes[0].set_ylabel(r"spectroscopic $M_{K_s}$ (mag)")
    fig.tight_layout()
    path = os.path.join(products_dir, "figures", "fig5_mks_spec_vs_geo.png")
    store.makedirs(os.path.dirname(path))
    store.save_figure(fig, path, dpi=110)
    return path


def write_fig10(survey_path: str, products_dir: str) -> str:
    """Fig. 10: S/N_dplx for plx/err > 10 and S/N > 50; all and MKs_geo < 0."""
    from matplotlib.figure import Figure

    survey = store.open_cube(survey_path)
    p = open_products(products_dir)[["snr_dparallax", "MKs_geo", "parallax_corrected",
                                     "parallax_corrected_error"]].load()
    with np.errstate(invalid="ignore", divide="ignore"):
        sel = ((p["parallax_corrected"].values / p["parallax_corrected_error"].values > 10)
               & (survey["snr_g"].values > 50) & np.isfinite(p["snr_dparallax"].values))
    x = p["snr_dparallax"].values
    bins = np.linspace(-6, 12, 73)
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    ax.hist(x[sel], bins=bins, histtype="step", color="k", label="all")
    ax.hist(x[sel & (p["MKs_geo"].values < 0)], bins=bins, histtype="step", color="C3",
            label=r"$M_{K_s}^{\rm geo} < 0$")
    ax.axvline(2.0, color="k", ls="--", lw=0.8)
    ax.set_xlabel(r"$S/N_{\Delta\varpi}$")
    ax.set_ylabel("spectra")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(products_dir, "figures", "fig10_parallax_excess.png")
    store.makedirs(os.path.dirname(path))
    store.save_figure(fig, path, dpi=110)
    return path


# ------------------------------------------------------------------------- validation
def _stats(d: np.ndarray) -> dict[str, float]:
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"n": 0}
    med = float(np.median(d))
    return {"n": int(d.size), "bias": float(np.mean(d)), "median": med,
            "scatter": float(np.std(d)),
            "robust_scatter": float(robust_std(d))}


def luminosity_metrics(survey: xr.Dataset, products: xr.Dataset, truth: xr.Dataset
                       ) -> dict[str, Any]:
    """M_Ks and binary-flag accuracy against the truth of a simulated survey.

    * ``mks_vs_truth``: MKs - MKs_true (the primary: a binary's spectrum is its dominant
      star's) for single non-emission OB stars by S/N bin (bias, scatter, robust scatter,
      pull std with MKs_err); the same for single emission stars;
    * ``mks_vs_geo_test``: MKs - MKs_geo for test-set stars (plx/err > 10, S/N > 20);
    * ``noise_model``: sigma_int, sigma_s100 (posterior mean of each network) against the
      scatter measured from truth: sigma_int_truth from single non-emission OB stars with
      S/N > 100 after subtracting the model's sigma_s in quadrature;
    * ``binary``: completeness of ``binary_flag == 1`` among true binaries by mass ratio
      (q >= 0.85, 0.5-0.85, < 0.5) for plx/err > 10 and for all, purity, false-positive
      rate among true singles, the fraction of equal-mass (q > 0.95) binaries flagged;
      with plx/err > 10 also ``expected_unbiased_quoted_err``: the completeness an unbiased
      M_Ks (the primary's truth) with the quoted MKs_err would reach on the same stars
      (:func:`obpipe.binary.expected_detection_probability`), the bound of eqs. 15-17.
    """
    def v(ds: xr.Dataset, name: str) -> np.ndarray:
        return np.asarray(ds[name].values)

    out: dict[str, Any] = {}
    if "MKs" not in products:
        return out
    mks = v(products, "MKs").astype(float)
    err = v(products, "MKs_err").astype(float)
    true = v(truth, "MKs_true").astype(float)
    snr = v(survey, "snr_g").astype(float)
    binary = v(truth, "is_binary").astype(bool)
    em = v(truth, "has_emission").astype(bool)
    cls = v(truth, "star_class").astype(object).astype(str)
    broken = v(truth, "is_broken").astype(bool)
    single_ob = (cls == "OB") & ~binary & ~broken
    d = mks - true
    # never score an in-sample prediction (issue 15): MKs_fold -2 (a one-network model
    # that trained on the star) is left out of every figure
    fold = v(products, "MKs_fold").astype(int) if "MKs_fold" in products else None
    if fold is not None:
        d = np.where(fold == -2, np.nan, d)
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = d / err
    flagm = v(products, "MKs_flag") if "MKs_flag" in products else np.zeros(mks.size, int)
    bins = ((5, 20), (20, 50), (50, 100), (100, 200), (200, 100000))

    def by_snr(sel: np.ndarray) -> dict[str, Any]:
        res = {}
        for lo, hi in bins:
            s = sel & (snr >= lo) & (snr < hi)
            if s.any():
                res[f"{lo}-{hi}"] = {**_stats(d[s]), "pull_std": float(np.nanstd(pull[s])),
                                     "median_err": float(np.nanmedian(err[s]))}
        return res

    out["mks_vs_truth"] = {
        "single_nonemission_ob_snr_gt_50": {
            **_stats(d[single_ob & ~em & (snr > 50)]),
            "pull_std": float(np.nanstd(pull[single_ob & ~em & (snr > 50)]))},
        "single_nonemission_ob_snr_gt_50_unflagged": _stats(
            d[single_ob & ~em & (snr > 50) & (flagm == 0)]),
        "single_nonemission_ob_by_snr": by_snr(single_ob & ~em),
        "single_emission_ob_snr_gt_50": {
            **_stats(d[single_ob & em & (snr > 50)]),
            "pull_std": float(np.nanstd(pull[single_ob & em & (snr > 50)]))},
        "single_emission_ob_by_snr": by_snr(single_ob & em),
        "population_scatter_single_nonemission_ob": float(np.nanstd(true[single_ob & ~em])),
        "all_classes_snr_gt_50": _stats(d[~binary & (snr > 50)]),
        "fraction_nan": float(np.mean(~np.isfinite(mks))),
    }
    if fold is not None:
        # trained-on stars (out-of-fold: the one member that never saw the star) and stars
        # no member trained on, apart: an honest out-of-fold value scatters like the rest
        sn = single_ob & ~em
        oof, never = sn & (fold >= 0), sn & (fold == -1)
        split: dict[str, Any] = {
            "trained_on_out_of_fold_by_snr": by_snr(oof),
            "never_trained_by_snr": by_snr(never),
            "n_in_sample_excluded": int(np.sum(fold == -2))}
        for name, sel in (("trained_on_out_of_fold", oof), ("never_trained", never)):
            s100 = sel & (snr > 100)
            split[f"{name}_snr_gt_100"] = {**_stats(d[s100]),
                                           "pull_std": float(np.nanstd(pull[s100]))}
        a_, b_ = (split[f"{k}_snr_gt_100"].get("scatter") for k in ("trained_on_out_of_fold",
                                                                    "never_trained"))
        split["scatter_difference_snr_gt_100"] = (None if a_ is None or b_ is None
                                                  else float(a_ - b_))
        out["mks_vs_truth"]["single_nonemission_ob_split"] = split
    else:
        out["mks_vs_truth"]["provenance"] = ("no MKs_fold: training stars may carry in-sample "
                                             "ensemble means")
    if "Ks_disc_excess_true" in truth:
        # a Be disc brightens the observed Ks (free-free emission): the M_Ks a distance
        # needs, and the one the geometric training targets carry, is photosphere + disc
        d_disc = d - v(truth, "Ks_disc_excess_true").astype(float)
        sel = single_ob & em & (snr > 50)
        out["mks_vs_truth"]["single_emission_ob_snr_gt_50_vs_photosphere_and_disc"] = {
            **_stats(d_disc[sel]), "pull_std": float(np.nanstd(d_disc[sel] / err[sel]))}
    if "luminosity_set" in products and "MKs_geo" in products:
        lset = v(products, "luminosity_set")
        test = (lset & SET_BITS["test"]) > 0
        geo = v(products, "MKs_geo").astype(float)
        em_flag = v(products, "em_flag")
        dg = mks - geo
        out["mks_vs_geo_test"] = {
            "nonemission_snr_gt_20": _stats(dg[test & (snr > 20) & (em_flag == 0)]),
            "emission_snr_gt_20": _stats(dg[test & (snr > 20) & (em_flag == 1)]),
            "nonemission_single_truth_snr_gt_20": _stats(
                dg[test & (snr > 20) & (em_flag == 0) & ~binary]),
        }
        out["training_set_sizes"] = {k: int(np.sum((lset & b) > 0)) for k, b in SET_BITS.items()}
        removed = (lset & SET_BITS["removed_binary"]) > 0
        out["training_binaries_removed"] = {
            "n_removed": int(removed.sum()),
            "fraction_true_binaries": float(np.mean(binary[removed])) if removed.any() else None,
            "true_binaries_left_in_training": int(np.sum(
                binary & ((lset & (SET_BITS["train_a"] | SET_BITS["train_b"])) > 0))),
        }
    attrs = products["MKs_err"].attrs
    noise = {m: {k: attrs.get(f"noise_{m}_{k}") for k in noise_model.PARAM_NAMES}
             for m in ("a", "b")}
    hi = single_ob & ~em & (snr > 100) & np.isfinite(d)
    if hi.any() and noise["a"]["sigma_s100"] is not None:
        sig_s = float(noise["a"]["sigma_s100"]) / (snr[hi] / 100.0)
        known = sig_s**2
        if attrs.get("noise_a_epistemic_spread") and "MKs_spread" in products:
            # the ensemble spread is a modelled per-star term, not intrinsic scatter
            known = known + np.nan_to_num(v(products, "MKs_spread").astype(float)[hi]) ** 2
        tot = float(np.std(d[hi]))
        noise["sigma_int_truth"] = float(np.sqrt(max(tot**2 - np.mean(known), 0.0)))
        # the same from the core of the distribution (1.4826 MAD): the noise model clips
        # its tails (binaries, stars outside the training set), the std keeps them
        core = float(robust_std(d[hi]))
        noise["sigma_int_truth_core"] = float(np.sqrt(max(core**2 - np.mean(known), 0.0)))
        noise["scatter_truth_single_nonemission_snr_gt_100"] = tot
    out["noise_model"] = noise
    if "binary_flag" in products:
        flag = v(products, "binary_flag")
        q = v(truth, "mass_ratio").astype(float)
        plx = v(products, "parallax_corrected").astype(float)
        plx_e = v(products, "parallax_corrected_error").astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            good = plx / plx_e > 10
        classified = flag != -9
        ob = cls == "OB"

        def comp(sel: np.ndarray) -> dict[str, Any]:
            s = sel & classified
            return {"n": int(s.sum()),
                    "completeness": float(np.mean(flag[s] == 1)) if s.any() else None}

        # the bound: the flag rate an unbiased M_Ks (centred on the primary's truth) with
        # the quoted MKs_err would give these very stars, parallaxes and photometry
        if "parallax_spec" in products and "parallax_spec_err" in products:
            expected = expected_detection_probability(
                v(products, "parallax_spec"), v(products, "parallax_spec_err"), plx, plx_e,
                mks, err, true, threshold=float(products["binary_flag"].attrs.get(
                    "snr_threshold", BINARY_SNR_THRESHOLD)))
        else:
            expected = np.full(mks.size, np.nan)

        def comp_bound(sel: np.ndarray) -> dict[str, Any]:
            s = sel & classified & np.isfinite(expected)
            return {**comp(sel), "expected_unbiased_quoted_err":
                    float(np.mean(expected[s])) if s.any() else None}

        bq = {}
        for name, (lo, hi_q) in {"q_ge_0.85": (0.85, 1.01), "q_0.5_0.85": (0.5, 0.85),
                                 "q_lt_0.5": (0.0, 0.5)}.items():
            sel = binary & ob & (q >= lo) & (q < hi_q)
            bq[name] = {"plx_snr_gt_10": comp_bound(sel & good), "all": comp(sel),
                        "plx_snr_gt_10_snr_gt_50": comp(sel & good & (snr > 50))}
        flagged = (flag == 1)
        single_cls = ~binary & classified
        out["binary"] = {
            "completeness_by_q": bq,
            "equal_mass_q_gt_0.95_flagged": comp(binary & ob & (q > 0.95)),
            "equal_mass_q_gt_0.95_flagged_plx_snr_gt_10": comp(binary & ob & (q > 0.95) & good),
            "false_positive_rate_singles": float(np.mean(flagged[single_cls]))
            if single_cls.any() else None,
            "false_positive_rate_singles_plx_snr_gt_10": float(
                np.mean(flagged[single_cls & good])) if np.any(single_cls & good) else None,
            "false_positive_rate_single_ob_nonemission": float(
                np.mean(flagged[single_cls & ob & ~em])) if np.any(single_cls & ob & ~em)
            else None,
            "purity": float(np.mean(binary[flagged])) if flagged.any() else None,
            "fractions": {"binary": float(np.mean(flag == 1)),
                          "single": float(np.mean(flag == 0)),
                          "unclassified": float(np.mean(flag == -9))},
        }
    return out
