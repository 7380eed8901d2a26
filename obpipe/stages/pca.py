"""Stage ``pca``: PCA bases (clean-window and full) and weighted projection (Sec. 3).

Science: :mod:`obpipe.spectra.bases` (training selection, the refit without emission and
broken spectra, projection statistics) on :mod:`obpipe.spectra.pca`. Products:
``pca_coeff``, ``pca_coeff_full`` (spec, component), the H-alpha and residual statistics;
model file ``PRODUCTS_DIR/models/pca_model.npz``. With ``[spectral]
exclude_interstellar_lines`` (default, issue 15) the interstellar windows carry zero weight
in the projection and the statistics; ``pca_coeff``'s attribute ``interstellar_blind``
records it (:data:`obpipe.spectra.bases.INTERSTELLAR_ATTR`). With ``[spectral] refine_rv``
(beyond the paper, issue 15 item 2) each spectrum below ``refine_rv_max_snr`` is first
brought to the rest frame of its own clean-window reconstruction
(:func:`obpipe.spectra.velocity.refine_rest_frame`) and projected again: its products are
the refined spectrum's, and ``rv_refined_kms`` / ``rv_refined_err_kms`` record the velocity.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import zarr
from threadpoolctl import threadpool_limits

from obpipe.engine.blockwise import (
    Output,
    force_requested,
    in_row_tiles,
    open_products,
    products_path,
    row_tiled,
    run_blockwise_stage,
    stage_complete,
    temp_name,
)
from obpipe.engine.context import RunContext
from obpipe.io import store
from obpipe.spectra import pca, velocity
from obpipe.spectra.bases import (
    INTERSTELLAR_ATTR,
    MODEL_FILE,
    _load_model,
    fit_pca_model,
    pca_statistics,
    select_training,
)
from obpipe.spectra.options import SpectralConfig

NAME = "pca"
DESCRIPTION = "PCA bases (clean-window and full) and weighted projection (Sec. 3)"
#: the typed options section (``PipelineConfig.spectral``)
Config = SpectralConfig
SECTION = "spectral"

OUTPUTS = {
    "pca_coeff": Output("float32", "", "coefficients on the clean-window basis (Sec. 3)",
                        extra_dims=(("component", pca.N_COMPONENTS),)),
    "pca_coeff_full": Output("float32", "", "coefficients on the full-range basis",
                             extra_dims=(("component", pca.N_COMPONENTS),)),
    "halpha_excess": Output("float32", "", "mean observed - reconstructed flux, 6557-6571 AA "
                            "(continuum units; Fig. 3)"),
    "halpha_excess_err": Output("float32", "", "uncertainty of halpha_excess"),
    "halpha_chi2": Output("float32", "", "reduced chi2, 6400-6550 and 6590-6690 AA (Fig. 3)"),
    "quality_chi2": Output("float32", "", "reduced chi2 outside emission-line windows"),
    "window_chi2_max": Output("float32", "", "largest 16-pixel reduced chi2 (App. A)"),
    "window_chi2_max_wide": Output("float32", "", "window_chi2_max with wide emission "
                                   "exclusions (used for emission spectra)"),
    "clean_fraction": Output("float32", "", "fraction of clean-window pixels usable"),
    "rv_refined_kms": Output(
        "float32", "km / s", "radial velocity refined against the spectrum's own PCA "
        "reconstruction: rv + the residual velocity of the clean windows without the "
        "interstellar lines ([spectral] refine_rv; NaN when off, at S/N >= "
        "refine_rv_max_snr or not measurable)"),
    "rv_refined_err_kms": Output(
        "float32", "km / s", "uncertainty of rv_refined_kms (normal equation, scaled by "
        "sqrt(reduced chi2) above 1; excludes the uncertainty of the basis' rest frame and "
        "correlated pixel noise: 1.2-2x smaller than the scatter against the truth on the "
        "mock at S/N 5-50, docs/validation.md)"),
}


#: rows per call of the rest-frame refinement (a tile's spectra below refine_rv_max_snr,
#: padded: :func:`obpipe.engine.blockwise.in_row_tiles`)
REFINE_TILE = 32


def _refine_rows(inputs: dict[str, np.ndarray], basis: Any, pixels: np.ndarray,
                 exclude: np.ndarray | None, prior: bool) -> dict[str, np.ndarray]:
    f, iv, dv, err = velocity.refine_rest_frame(basis, inputs["norm_flux"], inputs["norm_ivar"],
                                                pixels, exclude=exclude, prior=prior)
    return {"norm_flux": f, "norm_ivar": iv, "dv": dv, "dv_err": err}


@row_tiled
def block(inputs: dict[str, np.ndarray], model_path: str, prior: bool,
          exclude_interstellar: bool = False, refine_rv: bool = False,
          refine_rv_max_snr: float = np.inf) -> dict[str, np.ndarray]:
    model = _load_model(model_path, store.file_token(model_path))
    nf, ni = inputs["norm_flux"], inputs["norm_ivar"]
    rv = np.full(nf.shape[0], np.nan, dtype=np.float32)
    rv_err = rv.copy()
    with threadpool_limits(1):
        # refine_rv: the spectra below refine_rv_max_snr (snr_g; NaN S/N counts as below)
        refine = np.zeros(nf.shape[0], dtype=bool)
        if refine_rv:
            snr = np.asarray(inputs.get("snr_g", np.full(nf.shape[0], np.nan)), dtype=float)
            refine = ~(snr >= refine_rv_max_snr)
        if refine.any():
            ism = pca.interstellar_mask()
            nf = np.array(nf, dtype=np.float32)
            ni = np.array(ni, dtype=np.float32)
            # in tiles of REFINE_TILE rows: the number of spectra to refine depends on the
            # tile's content, and fixed shapes keep each row's bits chunk-independent
            res = in_row_tiles(_refine_rows, {"norm_flux": nf[refine], "norm_ivar": ni[refine]},
                               REFINE_TILE, model.clean, model.clean.pixels & ~ism,
                               ism if exclude_interstellar else None, prior)
            nf[refine], ni[refine] = res["norm_flux"], res["norm_ivar"]
            dv, dv_err = res["dv"], res["dv_err"]
            rv0 = np.asarray(inputs.get("rv", rv), dtype=np.float64)[refine]
            rv[refine] = rv0 + dv
            rv_err[refine] = dv_err
        out = pca_statistics(model, nf, ni, prior, exclude_interstellar=exclude_interstellar)
    out["rv_refined_kms"] = rv
    out["rv_refined_err_kms"] = rv_err
    return out


def run(ctx: RunContext) -> dict[str, Any]:
    cfg: SpectralConfig = ctx.config.spectral
    model_path = os.path.join(ctx.products_dir, MODEL_FILE)
    report: dict[str, Any] = {}
    # --force refits (unless the model was supplied with --models); the model file is
    # replaced only once a new one is written completely: a failed refit leaves it as it was
    refit = force_requested(ctx) and not getattr(ctx, "models_supplied", False)
    if refit or not store.exists(model_path):
        survey = store.open_cube(ctx.survey_path)
        prods = open_products(ctx.products_dir)
        specid = survey["specid"].values
        train = select_training(survey["snr_g"].values, cfg.train_min_snr, cfg.max_train,
                                cfg.seed, specid=specid)
        if train.size < 2 * cfg.n_components:
            raise ValueError(
                f"{ctx.survey_path}: only {train.size} spectra with S/N >= "
                f"{cfg.train_min_snr} (snr_g); need {2 * cfg.n_components} to fit K = "
                f"{cfg.n_components} PCA components. Use "
                "trained models instead: `obpipe run ... --models DIR` (DIR: the products "
                "directory of a run on a larger survey)")
        rows = np.sort(train)  # read in store order, then put in specid order
        pos = np.searchsorted(rows, train)
        nf = prods["norm_flux"].isel(spec=rows).values[pos]
        ni = prods["norm_ivar"].isel(spec=rows).values[pos]
        selection = {"min_snr": cfg.train_min_snr, "n_candidates": int(train.size),
                     "order": "specid", "specid_first": int(specid[train[0]])}
        model, report = fit_pca_model(nf, ni, survey["snr_g"].values[train], cfg, selection)
        store.makedirs(os.path.dirname(model_path))
        tmp = temp_name(model_path)
        model.save(tmp)
        store.replace(tmp, model_path)
        report["n_train"] = int(train.size)
    result = run_blockwise_stage(
        ctx.survey_path, ctx.products_dir, "pca",
        functools.partial(block, model_path=model_path, prior=cfg.projection_prior,
                          exclude_interstellar=cfg.exclude_interstellar_lines,
                          refine_rv=cfg.refine_rv, refine_rv_max_snr=cfg.refine_rv_max_snr),
        OUTPUTS, survey_vars=("rv", "snr_g") if cfg.refine_rv else (),
        product_vars=("norm_flux", "norm_ivar"), scheduler=ctx.scheduler,
        force=force_requested(ctx),
    )
    # on the arrays themselves (root attributes are rewritten when a later stage adds
    # variables): what the luminosity stage's networks must have been trained on
    grp = zarr.open_group(products_path(ctx.products_dir), mode="r+",
                          zarr_format=store.ZARR_FORMAT)
    for name in ("pca_coeff", "pca_coeff_full"):
        grp[name].attrs[INTERSTELLAR_ATTR] = int(cfg.exclude_interstellar_lines)
    return {**report, **result}


def is_complete(ctx: RunContext) -> bool:
    return stage_complete(ctx.products_dir, NAME)
