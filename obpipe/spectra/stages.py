"""Stage wiring of the spectral chain: normalize -> pca -> emission (Secs. 2-3).

Thin layer: reads the survey / products stores, calls the numpy science in
``normalize``, ``pca`` and ``emission``, writes products block by block through
:func:`obpipe.products.run_blockwise_stage` (resumable).

Products (``PRODUCTS_DIR/products.zarr``):
    normalize: norm_flux, norm_ivar (spec, wave)
    pca:       pca_coeff (spec, component) [clean-window basis], pca_coeff_full,
               halpha_excess, halpha_excess_err, halpha_chi2, quality_chi2, clean_fraction;
               model file PRODUCTS_DIR/models/pca_model.npz
    emission:  em_flag (own visit), em_flag_star (from the star's highest-S/N visit),
               halpha_significance, quality_flags, recon_flux (spec, wave): the full-range
               reconstruction for non-emission spectra, the clean-window one for emission
               spectra (the networks' input, Sec. 5.1); figures Fig. 2 and Fig. 3.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import asdict
from functools import lru_cache
from typing import Any

import numpy as np
import zarr
from threadpoolctl import threadpool_limits

from obpipe.io import store
from obpipe.memory import release_free_heap, reuse_block_buffers
from obpipe.products import (
    Output,
    force_requested,
    open_products,
    products_path,
    row_tiled,
    run_blockwise_stage,
    stage_complete,
    temp_name,
)
from obpipe.spectra import emission, normalize, pca
from obpipe.spectra.options import SpectralConfig
from obpipe.version import __version__

log = logging.getLogger(__name__)

N_WAVE = 3909
MODEL_FILE = os.path.join("models", "pca_model.npz")


def _releases_heap(run: Any) -> Any:
    """A stage's run function that returns the block buffers kept by
    :func:`reuse_block_buffers` to the OS when it ends (later stages need other memory)."""
    @functools.wraps(run)
    def run_then_release(*args: Any, **kwargs: Any) -> Any:
        try:
            return run(*args, **kwargs)
        finally:
            release_free_heap()
    return run_then_release


# ------------------------------------------------------------------ normalize
NORMALIZE_OUTPUTS = {
    "norm_flux": Output("float32", "", "flux / pseudo-continuum (50 AA Gaussian, Sec. 2)",
                        extra_dims=(("wave", N_WAVE),)),
    "norm_ivar": Output("float32", "", "inverse variance of norm_flux (0 = unusable)",
                        extra_dims=(("wave", N_WAVE),)),
}


@row_tiled  # chunk-independent bits (the PCA fit amplifies last-bit differences)
def normalize_block(inputs: dict[str, np.ndarray], width_aa: float) -> dict[str, np.ndarray]:
    reuse_block_buffers()
    with threadpool_limits(1):
        nf, ni = normalize.normalize(inputs["flux"], inputs["ivar"], inputs["mask"], width_aa)
    return {"norm_flux": nf, "norm_ivar": ni}


@_releases_heap
def run_normalize(ctx: Any) -> dict[str, Any]:
    cfg: SpectralConfig = ctx.config.spectral
    return run_blockwise_stage(
        ctx.survey_path, ctx.products_dir, "normalize",
        functools.partial(normalize_block, width_aa=cfg.continuum_kernel_aa),
        NORMALIZE_OUTPUTS, survey_vars=("flux", "ivar", "mask"), scheduler=ctx.scheduler,
        force=force_requested(ctx),
    )


# ------------------------------------------------------------------ pca
PCA_OUTPUTS = {
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
}


@lru_cache(maxsize=2)
def _load_model(path: str, mtime: float) -> pca.PCAModel:
    return pca.PCAModel.load(path)


def load_pca_model(products_dir: str) -> pca.PCAModel:
    path = os.path.join(products_dir, MODEL_FILE)
    return _load_model(path, store.file_token(path))


def pca_statistics(model: pca.PCAModel, norm_flux: np.ndarray, norm_ivar: np.ndarray,
                   prior: bool = True, rows_per_chunk: int = 256) -> dict[str, np.ndarray]:
    """The pca stage's numbers for rows of normalised spectra (n, n_wave), numpy only.

    Weighted projection on both bases (Sec. 3), the clean-window reconstruction (eq. 2)
    and the residual statistics of ``emission.residual_statistics`` (Fig. 3, App. A),
    ``rows_per_chunk`` rows at a time: every row is independent, and chunks keep the
    temporaries in cache and the memory independent of the number of rows.
    """
    n = norm_flux.shape[0]
    out: dict[str, np.ndarray] = {}
    for lo in range(0, max(n, 1), rows_per_chunk):  # one empty chunk for n = 0
        rows = slice(lo, min(lo + rows_per_chunk, n))
        nf, ni = norm_flux[rows], norm_ivar[rows]
        coeff = model.clean.project(nf, ni, prior=prior)
        part = {"pca_coeff": coeff.astype(np.float32),
                "pca_coeff_full": model.full.project(nf, ni, prior=prior).astype(np.float32)}
        part.update(emission.residual_statistics(nf, ni, model.clean.reconstruct(coeff),
                                                 model.clean.sigma_model, model.clean.pixels))
        for k, v in part.items():
            if k not in out:
                out[k] = np.empty((n, *v.shape[1:]), dtype=v.dtype)
            out[k][rows] = v
    return out


@row_tiled
def pca_block(inputs: dict[str, np.ndarray], model_path: str, prior: bool
              ) -> dict[str, np.ndarray]:
    reuse_block_buffers()
    model = _load_model(model_path, store.file_token(model_path))
    with threadpool_limits(1):
        return pca_statistics(model, inputs["norm_flux"], inputs["norm_ivar"], prior)


def select_training(snr: np.ndarray, min_snr: float, max_train: int, seed: int,
                    specid: np.ndarray | None = None) -> np.ndarray:
    """Indices of training spectra: S/N >= min_snr, a seeded random subset of max_train,
    in ``specid`` order (chosen among the candidates sorted by ``specid``): the same
    spectra in the same order however the survey's rows are stored or chunked."""
    idx = np.flatnonzero(np.nan_to_num(snr, nan=-1.0) >= min_snr)
    if specid is not None:
        idx = idx[np.argsort(np.asarray(specid)[idx], kind="stable")]
    if idx.size > max_train:
        pick = np.sort(np.random.default_rng(seed).choice(idx.size, max_train, replace=False))
        idx = idx[pick]
    return idx


def fit_pca_model(norm_flux: np.ndarray, norm_ivar: np.ndarray, snr: np.ndarray,
                  cfg: SpectralConfig, selection: dict[str, Any]
                  ) -> tuple[pca.PCAModel, dict[str, Any]]:
    """Fit both bases; one iteration without the emission / broken spectra (Sec. 3)."""
    clean_pix = pca.window_mask(pca.CLEAN_WINDOWS_AA)
    all_pix = np.ones(N_WAVE, dtype=bool)
    # start without spectra whose H-alpha core rises above the continuum (net emission,
    # visible without any model), so that B does not learn emission from the start
    wave = pca.wavelength_grid()
    core = (wave >= emission.HALPHA_CORE_AA[0]) & (wave <= emission.HALPHA_CORE_AA[1])
    good = norm_ivar[:, core] > 0
    n_good = good.sum(axis=1)
    with np.errstate(all="ignore"):  # rows without a usable core pixel: NaN, kept
        core_flux = np.where(good, norm_flux[:, core], 0.0).sum(axis=1) / n_good
    keep = ~(core_flux > 1.0)
    report: dict[str, Any] = {"training_net_emission_removed": int(np.sum(~keep))}
    for iteration in (0, 1):
        clean = pca.fit_basis("clean", norm_flux[keep], norm_ivar[keep], clean_pix,
                              cfg.n_components, cfg.seed)
        if iteration == 1:
            break
        recon = clean.reconstruct(clean.project(norm_flux, norm_ivar))
        stats = emission.residual_statistics(norm_flux, norm_ivar, recon, clean.sigma_model,
                                             clean_pix)
        thr = emission.choose_thresholds(stats, snr, cfg.emission_target_purity,
                                         broken_mad_sigma=cfg.broken_mad_sigma,
                                         broken_min_chi2=cfg.broken_min_chi2)
        flags = emission.flag(stats, snr, thr)
        keep &= (flags["em_flag"] == 0) & (flags["quality_flags"] == 0)
        report["training_removed_emission"] = int(np.sum(flags["em_flag"] == 1))
        report["training_removed_quality"] = int(np.sum(flags["quality_flags"] != 0))
    full = pca.fit_basis("full", norm_flux[keep], norm_ivar[keep], all_pix, cfg.n_components,
                         cfg.seed)
    meta = {"obpipe_version": __version__, "config": asdict(cfg), "selection": selection,
            "n_train_final": int(keep.sum()), "clean_windows_aa": pca.CLEAN_WINDOWS_AA,
            **report}
    return pca.PCAModel(full=full, clean=clean, meta=meta), report


@_releases_heap
def run_pca(ctx: Any) -> dict[str, Any]:
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
        functools.partial(pca_block, model_path=model_path, prior=cfg.projection_prior),
        PCA_OUTPUTS, product_vars=("norm_flux", "norm_ivar"), scheduler=ctx.scheduler,
        force=force_requested(ctx),
    )
    return {**report, **result}


# ------------------------------------------------------------------ emission
EMISSION_OUTPUTS = {
    "recon_flux": Output("float32", "", "PCA reconstruction: full-range basis (non-emission) "
                         "or clean-window basis (emission); Sec. 5.1 network input",
                         extra_dims=(("wave", N_WAVE),)),
}
FLAG_OUTPUTS = {
    "em_flag": Output("int8", "", "emission in this visit: 1 yes, 0 no, -9 undetermined"),
    "em_flag_star": Output("int8", "", "em_flag of the star's highest-S/N visit (footnote 2)"),
    "halpha_significance": Output("float32", "", "halpha_excess / halpha_excess_err"),
    "quality_flags": Output("int16", "", "bits: " + ", ".join(
        f"{k}={v}" for k, v in emission.QUALITY_BITS.items())),
}


@row_tiled
def recon_block(inputs: dict[str, np.ndarray], model_path: str) -> dict[str, np.ndarray]:
    reuse_block_buffers()
    model = _load_model(model_path, store.file_token(model_path))
    em = inputs["em_flag"] == 1
    with threadpool_limits(1):
        out = model.full.reconstruct(np.nan_to_num(inputs["pca_coeff_full"]))
        if em.any():  # every row through the same product shape: chunk-independent bits
            clean = model.clean.reconstruct(np.nan_to_num(inputs["pca_coeff"]))
            out[em] = clean[em]
    bad = ~np.isfinite(inputs["pca_coeff"][:, 0])
    out[bad] = np.nan
    return {"recon_flux": out}


@_releases_heap
def run_emission(ctx: Any) -> dict[str, Any]:
    cfg: SpectralConfig = ctx.config.spectral
    survey = store.open_cube(ctx.survey_path)
    prods = open_products(ctx.products_dir)
    names = ("halpha_excess", "halpha_excess_err", "halpha_chi2", "quality_chi2",
             "window_chi2_max", "window_chi2_max_wide", "clean_fraction")
    stats = {k: prods[k].values for k in names}
    snr = survey["snr_g"].values
    thr = emission.choose_thresholds(stats, snr, cfg.emission_target_purity,
                                     broken_mad_sigma=cfg.broken_mad_sigma,
                                     broken_min_chi2=cfg.broken_min_chi2)
    flags = emission.flag(stats, snr, thr)
    flags["em_flag_star"] = emission.star_flag_from_best_visit(
        survey["star_id"].values, survey["snr_g"].values, flags["em_flag"])
    n_spec = int(prods.sizes["spec"])
    chunk = int(prods["specid"].chunks[0][0])
    from obpipe.products import ensure_outputs, write_products_block

    ensure_outputs(ctx.products_dir, "emission_flags", FLAG_OUTPUTS, n_spec, chunk)
    write_products_block(ctx.products_dir, 0, {k: flags[k] for k in FLAG_OUTPUTS})
    grp = zarr.open_group(products_path(ctx.products_dir), mode="r+",
                          zarr_format=store.ZARR_FORMAT)
    grp["emission_flags_blocks_done"][:] = True
    store.update_attrs(products_path(ctx.products_dir), thr.as_attrs())
    model_path = os.path.join(ctx.products_dir, MODEL_FILE)
    result = run_blockwise_stage(
        ctx.survey_path, ctx.products_dir, "emission",
        functools.partial(recon_block, model_path=model_path), EMISSION_OUTPUTS,
        product_vars=("pca_coeff", "pca_coeff_full", "em_flag"), scheduler=ctx.scheduler,
        force=force_requested(ctx),
    )
    try:
        from obpipe.spectra.figures import write_spectral_figures

        result["figures"] = write_spectral_figures(ctx.survey_path, ctx.products_dir, thr)
    except Exception as exc:  # figures never fail a run
        log.warning("spectral figures not written: %s", exc)
    return {"emission_fraction": float(np.mean(flags["em_flag"] == 1)),
            "broken": int(np.sum(flags["quality_flags"] & emission.QUALITY_BITS["broken"] > 0)),
            **thr.as_attrs(), **result}


def stages() -> list[tuple[str, str, Any, Any]]:
    """(name, description, run, is_complete) of the spectral stages, in order."""
    return [
        ("normalize", "pseudo-continuum normalisation, 50 AA Gaussian (Sec. 2)", run_normalize,
         lambda ctx: stage_complete(ctx.products_dir, "normalize")),
        ("pca", "PCA bases (clean-window and full) and weighted projection (Sec. 3)", run_pca,
         lambda ctx: stage_complete(ctx.products_dir, "pca")),
        ("emission", "H-alpha emission and broken-spectrum flags, reconstructions (Sec. 3)",
         run_emission, lambda ctx: stage_complete(ctx.products_dir, "emission")),
    ]
