"""Stage ``binary`` (Sec. 6, eqs. 15-17): thin wiring.

Maps :func:`block` (eqs. 15-17 per spectrum, :func:`obpipe.binary.identify_binaries`:
the paper's flag) over the cube, then fills the per-star columns from every visit
(:func:`obpipe.binary.star_binary_features`, :func:`obpipe.binary.binary_probability`).
Products: ``parallax_spec``, ``parallax_spec_err`` (mas), ``snr_dparallax``,
``binary_flag`` (1 / 0 / -9), ``binary_flag_paper``, ``binary_prob``,
``rv_chi2_log10_p`` (figures 5 and 10: :mod:`obpipe.report.run_figures`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
import zarr

from obpipe.binary import (
    BINARY_PROB_THRESHOLD,
    FLAG_BINARY,
    FLAG_UNKNOWN,
    BinaryConfig,
    binary_probability,
    identify_binaries,
    star_binary_features,
)
from obpipe.engine.blockwise import (
    Output,
    force_requested,
    products_path,
    read_arrays,
    run_blockwise_stage,
    stage_complete,
)
from obpipe.engine.context import RunContext
from obpipe.io import store
from obpipe.photometry.parallax import CALIBRATED_PARALLAX_INPUTS, calibrated_parallax

log = logging.getLogger(__name__)

NAME = "binary"
DESCRIPTION = "spectro-photometric parallax excess and binary flag (Sec. 6, eqs. 15-17)"
#: the typed options section (``PipelineConfig.binary``)
Config = BinaryConfig
SECTION = "binary"

OUTPUTS: dict[str, Output] = {
    "parallax_spec": Output("float32", "mas", "spectro-photometric parallax (eq. 15)"),
    "parallax_spec_err": Output("float32", "mas", "uncertainty of parallax_spec (eq. 17)"),
    "snr_dparallax": Output("float32", "", "(parallax_spec - parallax) / error (eq. 16)"),
    "binary_flag": Output("int8", "", "1 binary (binary_prob > threshold: parallax excess "
                          "of the combined visits, RV chi2 across visits, RUWE), 0 single, "
                          "-9 unclassified (none of them available)"),
    "binary_flag_paper": Output("int8", "", "the paper's single-spectrum flag: 1 binary "
                                "(snr_dparallax > 2), 0 single, -9 unclassified (Sec. 6)"),
    "binary_prob": Output("float32", "", "probability that the star is an unresolved "
                          "binary (logistic model of obpipe.binary, calibrated on a mock)"),
    "rv_chi2_log10_p": Output("float32", "", "-log10 p of the chi2 of the star's RVs across "
                              "its visits against rv_err (0: fewer than two visits)"),
}


def block(inputs: dict[str, np.ndarray], threshold: float = 2.0) -> dict[str, np.ndarray]:
    """Eqs. (15)-(17) per spectrum (the paper's flag); the per-star columns
    (``binary_prob``, ``rv_chi2_log10_p``, the combined ``binary_flag``) are filled by
    :func:`run` once every block is done."""
    out = identify_binaries(inputs["MKs"], inputs["MKs_err"], inputs["Ks0"], inputs["Ks0_err"],
                            calibrated_parallax(inputs), inputs["parallax_corrected_error"],
                            threshold=threshold)
    out["binary_flag_paper"] = out["binary_flag"].copy()
    n = out["binary_flag"].size
    out["binary_prob"] = np.full(n, np.nan)
    out["rv_chi2_log10_p"] = np.full(n, np.nan)
    return {k: (v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in out.items()}


def star_feature_inputs(survey_path: str, products_dir: str) -> dict[str, np.ndarray]:
    """The 1-D columns of every spectrum that the per-star binary features need."""
    out = read_arrays(survey_path, ("star_id", "rv", "rv_err", "ruwe"))
    out["star_id"] = np.asarray(out["star_id"]).astype(object).astype(str)
    out.update(read_arrays(products_path(products_dir), (
        "MKs", "MKs_err", "MKs_model", "Ks0", "Ks0_err", *CALIBRATED_PARALLAX_INPUTS,
        "parallax_corrected_error")))
    return out


def combined_snr_dparallax(products_dir: str, inp: dict[str, np.ndarray]
                           ) -> dict[str, np.ndarray]:
    """Per spectrum, the features of its star (:func:`obpipe.binary.star_binary_features`):
    eq. (16) with M_Ks combined over the star's visits (:func:`obpipe.catalog.
    combine_visits`, which keeps sigma_int), the RV chi2 across visits and RUWE."""
    from obpipe.catalog import _sigma_int_per_visit, combine_visits

    sint = _sigma_int_per_visit(products_dir, np.asarray(inp["MKs_model"]))
    comb = combine_visits(inp["star_id"], inp["MKs"], inp["MKs_err"], sint)
    per = comb.reindex(inp["star_id"])
    eq16 = identify_binaries(per["MKs"].to_numpy(), per["MKs_err"].to_numpy(), inp["Ks0"],
                             inp["Ks0_err"], calibrated_parallax(inp),
                             inp["parallax_corrected_error"])["snr_dparallax"]
    return star_binary_features(inp["star_id"], eq16, inp["rv"], inp["rv_err"], inp["ruwe"])


def run(ctx: RunContext) -> dict[str, Any]:
    """Eqs. (15)-(17) over the cube, with ``ctx.config.binary.snr_threshold``."""
    threshold = ctx.config.binary.snr_threshold
    result = run_blockwise_stage(
        ctx.survey_path, ctx.products_dir, NAME,
        functools.partial(block, threshold=threshold), OUTPUTS,
        product_vars=("MKs", "MKs_err", "Ks0", "Ks0_err", *CALIBRATED_PARALLAX_INPUTS,
                      "parallax_corrected_error"),
        scheduler=ctx.scheduler, force=force_requested(ctx),
    )
    grp = zarr.open_group(products_path(ctx.products_dir), mode="r+",
                          zarr_format=store.ZARR_FORMAT)
    grp["binary_flag_paper"].attrs["snr_threshold"] = float(threshold)
    # beyond the paper: every visit, the RV scatter and RUWE, per star (1-D, all rows)
    inp = star_feature_inputs(ctx.survey_path, ctx.products_dir)
    feats = combined_snr_dparallax(ctx.products_dir, inp)
    prob = binary_probability(feats)
    flag = np.where(np.isfinite(prob), (prob > BINARY_PROB_THRESHOLD).astype(np.int8),
                    FLAG_UNKNOWN).astype(np.int8)
    grp["binary_prob"][:] = prob.astype(np.float32)
    grp["rv_chi2_log10_p"][:] = feats["rv_chi2_log10_p"].astype(np.float32)
    grp["binary_flag"][:] = flag
    grp["binary_flag"].attrs["prob_threshold"] = float(BINARY_PROB_THRESHOLD)
    result["fractions"] = {"binary": float(np.mean(flag == FLAG_BINARY)),
                           "single": float(np.mean(flag == 0)),
                           "unclassified": float(np.mean(flag == -9))}
    return result


def is_complete(ctx: RunContext) -> bool:
    return stage_complete(ctx.products_dir, NAME)
