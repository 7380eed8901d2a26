"""Stage ``normalize``: pseudo-continuum normalisation, 50 AA Gaussian (Sec. 2, Fig. 2).

Science: :func:`obpipe.spectra.normalize.normalize`. Products: ``norm_flux``,
``norm_ivar`` (spec, wave). With ``[spectral] continuum_excludes_interstellar`` the
interstellar lines' windows carry no weight in the pseudo-continuum.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from obpipe.config import PipelineConfig
from obpipe.engine.blockwise import (
    Output,
    force_requested,
    row_tiled,
    run_blockwise_stage,
    stage_complete,
)
from obpipe.engine.context import RunContext
from obpipe.spectra import normalize
from obpipe.spectra.grid import LAMOST_N_PIXELS as N_WAVE
from obpipe.spectra.options import SpectralConfig
from obpipe.spectra.pca import interstellar_mask

NAME = "normalize"
DESCRIPTION = "pseudo-continuum normalisation, 50 AA Gaussian (Sec. 2)"
#: the typed options section (``PipelineConfig.spectral``)
Config = SpectralConfig
SECTION = "spectral"


def provenance_config(config: PipelineConfig) -> dict[str, Any]:
    """What this stage's provenance key hashes: the options it reads."""
    out: dict[str, Any] = {"continuum_kernel_aa": config.spectral.continuum_kernel_aa}
    if config.spectral.continuum_weighting != "ivar":  # the default keeps its old key
        out["continuum_weighting"] = config.spectral.continuum_weighting
    # on by default since the eleventh session: products made before (no key) rerun
    out["continuum_excludes_interstellar"] = config.spectral.continuum_excludes_interstellar
    if config.spectral.continuum_shape_degree:  # off keeps the old key
        out["continuum_shape_degree"] = config.spectral.continuum_shape_degree
    return out


OUTPUTS = {
    "norm_flux": Output("float32", "", "flux / pseudo-continuum (50 AA Gaussian, Sec. 2)",
                        extra_dims=(("wave", N_WAVE),)),
    "norm_ivar": Output("float32", "", "inverse variance of norm_flux (0 = unusable)",
                        extra_dims=(("wave", N_WAVE),)),
}


@row_tiled  # chunk-independent bits (the PCA fit amplifies last-bit differences)
def block(inputs: dict[str, np.ndarray], width_aa: float, weighting: str = "ivar",
          exclude_interstellar: bool = False, shape_degree: int = 0
          ) -> dict[str, np.ndarray]:
    exclude = interstellar_mask() if exclude_interstellar else None
    with threadpool_limits(1):
        nf, ni = normalize.normalize(inputs["flux"], inputs["ivar"], inputs["mask"], width_aa,
                                     weighting=weighting, exclude=exclude,
                                     shape_degree=shape_degree)
    return {"norm_flux": nf, "norm_ivar": ni}


def block_options(cfg: SpectralConfig) -> dict[str, Any]:
    """:func:`block`'s keyword arguments for a run's ``[spectral]`` options."""
    return {"width_aa": cfg.continuum_kernel_aa, "weighting": cfg.continuum_weighting,
            "exclude_interstellar": cfg.continuum_excludes_interstellar,
            "shape_degree": cfg.continuum_shape_degree}


def run(ctx: RunContext) -> dict[str, Any]:
    cfg: SpectralConfig = ctx.config.spectral
    return run_blockwise_stage(
        ctx.survey_path, ctx.products_dir, NAME,
        functools.partial(block, **block_options(cfg)),
        OUTPUTS, survey_vars=("flux", "ivar", "mask"), scheduler=ctx.scheduler,
        force=force_requested(ctx),
    )


def is_complete(ctx: RunContext) -> bool:
    return stage_complete(ctx.products_dir, NAME)
