"""Stage ``emission``: H-alpha emission and broken-spectrum flags, reconstructions
(Sec. 3, Fig. 3, App. A).

Science: :mod:`obpipe.spectra.emission`. Products: ``em_flag``, ``em_flag_star``,
``halpha_significance``, ``quality_flags`` (per spectrum) and ``recon_flux`` (spec, wave):
the full-range reconstruction for non-emission spectra, the clean-window one for emission
spectra (the networks' input, Sec. 5.1).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from obpipe.engine.blockwise import (
    Output,
    ensure_outputs,
    force_requested,
    mark_blocks_done,
    products_path,
    read_arrays,
    row_tiled,
    run_blockwise_stage,
    spec_chunking,
    stage_complete,
    write_products_block,
)
from obpipe.engine.context import RunContext
from obpipe.io import store
from obpipe.spectra import emission
from obpipe.spectra.bases import MODEL_FILE, _load_model
from obpipe.spectra.grid import LAMOST_N_PIXELS as N_WAVE
from obpipe.spectra.options import SpectralConfig

log = logging.getLogger(__name__)

NAME = "emission"
DESCRIPTION = "H-alpha emission and broken-spectrum flags, reconstructions (Sec. 3)"
#: the typed options section (``PipelineConfig.spectral``)
Config = SpectralConfig
SECTION = "spectral"

OUTPUTS = {
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
def block(inputs: dict[str, np.ndarray], model_path: str) -> dict[str, np.ndarray]:
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


def run(ctx: RunContext) -> dict[str, Any]:
    cfg: SpectralConfig = ctx.config.spectral
    names = ("halpha_excess", "halpha_excess_err", "halpha_chi2", "quality_chi2",
             "window_chi2_max", "window_chi2_max_wide", "clean_fraction")
    stats = read_arrays(products_path(ctx.products_dir), names)
    survey = read_arrays(ctx.survey_path, ("snr_g", "star_id"))
    snr = survey["snr_g"]
    thr = emission.choose_thresholds(stats, snr, cfg.emission_target_purity,
                                     broken_mad_sigma=cfg.broken_mad_sigma,
                                     broken_min_chi2=cfg.broken_min_chi2)
    flags = emission.flag(stats, snr, thr)
    flags["em_flag_star"] = emission.star_flag_from_best_visit(
        survey["star_id"], snr, flags["em_flag"])
    n_spec, chunk = spec_chunking(products_path(ctx.products_dir))
    ensure_outputs(ctx.products_dir, "emission_flags", FLAG_OUTPUTS, n_spec, chunk)
    write_products_block(ctx.products_dir, 0, {k: flags[k] for k in FLAG_OUTPUTS})
    mark_blocks_done(ctx.products_dir, "emission_flags")
    store.update_attrs(products_path(ctx.products_dir), thr.as_attrs())
    model_path = os.path.join(ctx.products_dir, MODEL_FILE)
    result = run_blockwise_stage(
        ctx.survey_path, ctx.products_dir, "emission",
        functools.partial(block, model_path=model_path), OUTPUTS,
        product_vars=("pca_coeff", "pca_coeff_full", "em_flag"), scheduler=ctx.scheduler,
        force=force_requested(ctx),
    )
    return {"emission_fraction": float(np.mean(flags["em_flag"] == 1)),
            "broken": int(np.sum(flags["quality_flags"] & emission.QUALITY_BITS["broken"] > 0)),
            **thr.as_attrs(), **result}


def is_complete(ctx: RunContext) -> bool:
    return stage_complete(ctx.products_dir, NAME)
