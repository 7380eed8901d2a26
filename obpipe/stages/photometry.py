"""The ``photometry`` stage: E(B-V), A_Ks, parallax zero-point and geometric M_Ks.

Sec. 4 and eqs. (11), (12), (24) of Xiang et al. The science is in
:mod:`obpipe.photometry.extinction` and :mod:`obpipe.photometry.parallax`; this module
only maps :func:`obpipe.photometry.block.photometry_block` (pure numpy, one chunk of
rows) over the survey with
:func:`obpipe.engine.blockwise.run_blockwise_stage` (metrics against the truth of a simulated
survey: :func:`obpipe.validate.photometry_metrics`).

Runs after ``index``; it reads only survey columns (no earlier products).

``photometry_flags`` bits (int32; 0 = all fine)
-----------------------------------------------
====  =====  ================================================================
bit   value  meaning
====  =====  ================================================================
0     1      fewer than two usable bands: ebv, AKs, Ks0, MKs_geo are NaN
1     2      Teff missing: default 20 kK intrinsic colours, inflated error
2     4      log g missing: 4.0 +- 0.5 assumed
3     8      Teff / log g outside the intrinsic-colour table (clamped)
4     16     E(B-V) + 3 sigma < 0 (kept as measured)
5     32     parallax zero-point: global fallback (2p, out of range, missing)
6     64     unknown gaia_release (treated as DR3)
7     128    corrected parallax <= 0: MKs_geo NaN
8     256    parallax or its error missing
9     512    Ks / Ks_err missing or A_Ks unavailable: Ks0, MKs_geo NaN
10    1024   0 < parallax / error < 5 (MKs_geo error Gaussian is poor)
11    2048   a band had a magnitude but no error: documented default used
====  =====  ================================================================

Measured on the default mock survey
-----------------------------------
The mock reddens with its own band integration of F19 (Fitzpatrick et al. 2019) at a
per-star R_V ~ N(3.1, 0.25) and Mamajek intrinsic colours with 0.02 mag scatter (issue 15
item 3b/3c); the pipeline keeps G23 at R_V = 3.1. ``obpipe simulate --n-stars 4000 --seed 7
--out /tmp/mock4k.zarr``, then ``python benchmarks/ebv_on_mock.py /tmp/mock4k.zarr``, single
non-emission OB stars with all seven bands and a survey Teff (n = 2,058):

* E(B-V) - truth: bias -0.034, scatter 0.113 (robust 0.062), pull std 1.72 (1.08 at
  E(B-V) < 0.7, where scatter is 0.028). An oracle with the true Teff and the mock's own
  curve at R_V = 3.1 scatters 0.101: the R_V scatter of the reddest stars, beyond any
  fixed-R_V estimator; at each star's true R_V it scatters 0.028 with bias -0.026 (the
  mock's intrinsic colours against the table). docs/validation.md, "E(B-V) on the
  honest mock".
* M_Ks_geo - MKs_system_true, non-emission, RUWE < 1.4, parallax S/N > 10 (n = 2,088):
  pull median -0.06, std 1.07 (``python benchmarks/photometry.py --survey /tmp/mock4k.zarr
  --skip-throughput``); the mock's zero-point varies with G, colour and position: residual
  rms 17 uas after the correction.
* ``[photometry] fit_r_v = true`` (R_V fitted per star, off by default) on the DR5-size F19
  mock: E(B-V) scatter 0.095 -> 0.075 but median bias -0.017 -> -0.032; A_Ks - truth
  -0.038 / 0.049 -> -0.006 / 0.037 (median / std); on the G23 control 0.082 -> 0.048, bias
  -0.003 (``python benchmarks/ebv_on_mock.py SURVEY --budget``; docs/validation.md, "R_V
  fitted per star").
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from typing import Any

from obpipe.engine.blockwise import (
    Output,
    force_requested,
    read_arrays,
    run_blockwise_stage,
    stage_complete,
    stored_arrays,
)
from obpipe.engine.context import RunContext
from obpipe.photometry.block import SURVEY_VARS, photometry_block
from obpipe.photometry.options import PhotometryConfig

log = logging.getLogger(__name__)

NAME = STAGE = "photometry"
DESCRIPTION = "E(B-V), A_Ks, parallax zero-point, geometric M_Ks (Sec. 4, eqs. 11-12, 24)"
#: the typed options section (``PipelineConfig.photometry``)
Config = PhotometryConfig
SECTION = "photometry"

_FLAG_DOC = (
    "bits: 0 <2 usable bands; 1 Teff missing (default); 2 logg missing (default); "
    "3 Teff/logg outside table; 4 E(B-V)+3sigma<0; 5 zero-point fallback; 6 unknown "
    "Gaia release; 7 parallax<=0; 8 parallax missing; 9 Ks missing; 10 parallax S/N<5; "
    "11 a magnitude error missing (default used)"
)

OUTPUTS: dict[str, Output] = {
    "ebv": Output("float32", "mag", "E(B-V) from adjacent-band colour excesses (Sec. 4)"),
    "ebv_err": Output("float32", "mag",
                      "uncertainty of E(B-V) (propagated, incl. Teff/logg and R_V scatter)"),
    "ebv_nbands": Output("int16", "", "number of usable bands for E(B-V) (colours = N-1)"),
    "ebv_chi2": Output("float32", "", "reduced chi2 of the per-colour E(B-V) about the mean"),
    "R_Ks": Output("float32", "",
                   "A_Ks / E(B-V) used (G23 at r_v and the star's A0, Kurucz, dustapprox)"),
    "r_v": Output("float32", "", "R_V of the extinction curve: fitted per star, posterior mean "
                  "with the prior N(r_v, r_v_scatter) ([photometry] fit_r_v), else the fixed "
                  "r_v"),
    "r_v_err": Output("float32", "", "uncertainty of r_v (posterior std; fixed R_V: the "
                      "sigma(R_V) propagated into ebv_err)"),
    "AKs": Output("float32", "mag", "K_s extinction R_Ks E(B-V) (eq. 24)"),
    "AKs_err": Output("float32", "mag", "uncertainty of AKs (incl. R_V scatter)"),
    "Ks0": Output("float32", "mag", "dereddened apparent K_s, m0 = Ks - AKs"),
    "Ks0_err": Output("float32", "mag", "uncertainty of Ks0 (Ks and AKs in quadrature)"),
    "parallax_offset": Output(
        "float32", "mas",
        "Gaia parallax zero-point Z (subtracted): DR2 Leung & Bovy 2019, DR3 Lindegren+2021"),
    "parallax_corrected": Output("float64", "mas", "Gaia parallax minus parallax_offset"),
    "parallax_corrected_error": Output("float32", "mas", "external uncertainty of "
                                       "parallax_corrected (quoted error inflated, "
                                       "photometry.parallax.external_parallax_error)"),
    "MKs_geo": Output("float32", "mag", "geometric M_Ks = Ks0 + 5 log10(parallax) - 10 (eq. 11)"),
    "MKs_geo_err": Output("float32", "mag", "uncertainty of MKs_geo (eq. 12)"),
    "photometry_flags": Output("int32", "", "photometry stage bitmask; " + _FLAG_DOC),
}


#: the stage's block function (one chunk of rows, numpy only)
block = photometry_block


def _present_columns(survey_path: str) -> tuple[str, ...]:
    """The columns of :data:`SURVEY_VARS` that the survey has, in that order."""
    stored = stored_arrays(survey_path)
    return tuple(v for v in SURVEY_VARS if v in stored)


def _survey_columns(survey_path: str) -> tuple[str, ...]:
    present = _present_columns(survey_path)
    missing = sorted(set(SURVEY_VARS) - set(present))
    if missing:
        log.warning("photometry: survey lacks %s; treated as missing", ", ".join(missing))
    return present


def run(ctx: RunContext) -> dict[str, Any]:
    """Run the photometry stage for ``ctx`` (an :class:`obpipe.pipeline.RunContext`) with
    its typed section ``ctx.config.photometry`` (:class:`PhotometryConfig`)."""
    cfg: PhotometryConfig = ctx.config.photometry
    force = force_requested(ctx)
    block_fn = functools.partial(photometry_block, **dataclasses.asdict(cfg))
    report = run_blockwise_stage(
        ctx.survey_path, ctx.products_dir, STAGE, block_fn, OUTPUTS,
        survey_vars=_survey_columns(ctx.survey_path), scheduler=ctx.scheduler, force=force,
    )
    return report


def prepare(ctx: RunContext) -> threading.Thread | None:
    """Run the block function on the survey's first row in a background thread while the
    spectral stages run, when the blocks will run in this process ("threads" or
    "synchronous"): it loads what every block needs once per process (the shipped
    synthetic photometry, the extinction law's dustapprox models, the parallax
    zero-point's tables: ~1 s that the first blocks would otherwise wait for). Nothing is
    written; a failure only means the blocks load them themselves. Returns the thread
    (None when the blocks run elsewhere)."""
    if ctx.scheduler not in (None, "threads", "synchronous"):
        return None
    cfg: PhotometryConfig = ctx.config.photometry
    survey_path = ctx.survey_path

    def warm() -> None:
        try:
            photometry_block(read_arrays(survey_path, _present_columns(survey_path),
                                         rows=slice(0, 1)),
                             **dataclasses.asdict(cfg))
        except Exception as exc:  # noqa: BLE001 (an optimisation only)
            log.debug("photometry: caches not loaded ahead (%s)", exc)

    thread = threading.Thread(target=warm, name="obpipe-photometry-warm", daemon=True)
    thread.start()
    return thread


def is_complete(ctx: RunContext) -> bool:
    """True when every block of the photometry stage has been written."""
    return stage_complete(ctx.products_dir, STAGE)
