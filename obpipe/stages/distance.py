"""Stage ``distance`` (Sec. 7, eqs. 18-24): thin wiring.

Maps :func:`block` (:func:`obpipe.distance.catalog_distances` on one chunk of rows) over
the cube with :func:`obpipe.engine.blockwise.run_blockwise_stage` (any Dask scheduler; each block
builds the 0.1 pc grid once and evaluates its stars' windows, see :mod:`obpipe.distance`);
Python-bound, so on "threads" its blocks run in the shared process pool
(:mod:`obpipe.engine.pools`). Under the population prior its hyperparameters are first
fitted to the survey's single stars. Inputs: ``parallax_corrected(_error)``,
``Ks0(_err)`` (photometry), ``MKs(_err)`` (luminosity), ``binary_flag`` (binary) and the
survey's ``ra``/``dec``. Products: ``dis``, ``dis_low``, ``dis_high`` (kpc), ``logdis``,
``logdis_err`` (log10 kpc), ``distance_flags`` and Galactocentric ``X``, ``Y``, ``Z``
(kpc, Sun at X = -8.1).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from typing import Any

import numpy as np
import zarr

from obpipe.distance import (
    DISTANCE_FLAG_BITS,
    PRIOR_ATTR,
    DistanceConfig,
    PopulationPrior,
    catalog_distances,
    distance_modulus_terms,
    fit_population_prior,
    galactic_lb_deg,
    population_prior_from_record,
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
from obpipe.engine.pools import prestart_process_pool, process_pool_for, scheduler_for
from obpipe.io import store
from obpipe.photometry.parallax import CALIBRATED_PARALLAX_INPUTS, calibrated_parallax

log = logging.getLogger(__name__)

NAME = "distance"
DESCRIPTION = "distance posterior on the 0.1 pc grid, X/Y/Z (Sec. 7, eqs. 18-24)"
#: the typed options section (``PipelineConfig.distance``)
Config = DistanceConfig
SECTION = "distance"
#: what a pool worker imports before its first block (:func:`prepare`)
BLOCK_MODULES = ("obpipe.distance", "obpipe.catalog", "obpipe.stages.distance",
                 "obpipe.stages.catalog",
                 # imported by the blocks' first call (galactic_lb_deg, X/Y/Z; ~0.3 s):
                 # once in the fork server instead of once per worker
                 "astropy.coordinates")
_FLAG_DOC = ", ".join(f"{k}={v}" for k, v in DISTANCE_FLAG_BITS.items())

OUTPUTS: dict[str, Output] = {
    "dis": Output("float64", "kpc", "distance at the mode of the posterior (eq. 18, 0.1 pc "
                  "grid); under the population prior 10^logdis (DistanceConfig."
                  "point_estimate)"),
    "dis_low": Output("float64", "kpc", "distance at the 16th percentile of the posterior"),
    "dis_high": Output("float64", "kpc", "distance at the 84th percentile of the posterior"),
    "logdis": Output("float32", "dex(kpc)", "posterior mean of log10(d / kpc)"),
    "logdis_err": Output("float32", "dex", "posterior standard deviation of log10(d / kpc)"),
    "distance_flags": Output("int32", "", "bits: " + _FLAG_DOC),
    "X": Output("float32", "kpc", "Galactic Cartesian X (Sun at X = -8.1 kpc; towards the "
                "Galactic centre)"),
    "Y": Output("float32", "kpc", "Galactic Cartesian Y (direction of Galactic rotation)"),
    "Z": Output("float32", "kpc", "Galactic Cartesian Z (towards the North Galactic Pole)"),
}
#: blocks from which the "threads" scheduler is replaced by "processes" (starting the
#: worker processes and importing obpipe in them costs about as much as 2-3 blocks)
PRODUCT_INPUTS = (*CALIBRATED_PARALLAX_INPUTS, "parallax_corrected_error", "Ks0", "Ks0_err",
                  "MKs", "MKs_err", "binary_flag")


def block(inputs: dict[str, np.ndarray], cfg: DistanceConfig,
                   hyper: PopulationPrior | None = None) -> dict[str, np.ndarray]:
    """Eqs. (18)-(24) for one block of spectra (:func:`obpipe.distance.catalog_distances`:
    binaries use the parallax alone)."""
    return catalog_distances(inputs["ra"], inputs["dec"], inputs["Ks0"], inputs["Ks0_err"],
                             inputs["MKs"], inputs["MKs_err"], inputs["binary_flag"],
                             calibrated_parallax(inputs), inputs["parallax_corrected_error"],
                             cfg, hyper)


def survey_prior_inputs(survey_path: str, products_dir: str, cfg: DistanceConfig
                        ) -> dict[str, Any]:
    """The keyword arguments of :func:`fit_population_prior` for this survey's products:
    the single stars' (``binary_flag == 0``) corrected parallaxes (NaN for the others),
    dm0 and sigma_tot of eqs. (22)-(23), Galactic l, b and M_Ks."""
    v = read_arrays(products_path(products_dir), PRODUCT_INPUTS)
    pos = read_arrays(survey_path, ("ra", "dec"))
    dm0, sig = distance_modulus_terms(v["Ks0"], v["Ks0_err"], v["MKs"], v["MKs_err"])
    single = np.asarray(v["binary_flag"]) == 0
    lon, lat = galactic_lb_deg(pos["ra"], pos["dec"])
    return {"parallax_mas": np.where(single, calibrated_parallax(v), np.nan),
            "parallax_error_mas": v["parallax_corrected_error"], "dm0_mag": dm0,
            "sigma_tot_mag": sig, "l_deg": lon, "b_deg": lat, "mks_mag": v["MKs"],
            "d_max_kpc": cfg.d_max_kpc}


def fit_survey_prior(survey_path: str, products_dir: str, cfg: DistanceConfig
                     ) -> tuple[PopulationPrior, dict[str, Any]]:
    """The population prior's hyperparameters fitted to this survey's single stars
    (``binary_flag == 0``, both a parallax and an M_Ks; :func:`fit_population_prior`)."""
    return fit_population_prior(**survey_prior_inputs(survey_path, products_dir, cfg))


def fitted_prior(products_dir: str) -> PopulationPrior | None:
    """The population prior recorded by the distance stage in the products, if any."""


    from obpipe.engine.blockwise import products_path

    grp = zarr.open_group(products_path(products_dir), mode="r",
                          zarr_format=store.ZARR_FORMAT)
    return population_prior_from_record(grp.attrs.get(PRIOR_ATTR))


def run(ctx: RunContext) -> dict[str, Any]:
    """The distance posterior of every spectrum, blockwise over the cube.

    Under the population prior its hyperparameters are first fitted to the survey's
    single stars (:func:`fit_survey_prior`) and recorded in the products' root attribute
    :data:`PRIOR_ATTR` and in the stage's result."""
    cfg: DistanceConfig = ctx.config.distance
    t0 = time.perf_counter()
    hyper = None
    prior_info: dict[str, Any] = {}
    if cfg.prior == "population":
        hyper, prior_info = fit_survey_prior(ctx.survey_path, ctx.products_dir, cfg)
        prior_info = {"hyperparameters": hyper.as_dict(), "fit": prior_info}
        store.update_attrs(products_path(ctx.products_dir),
                           {PRIOR_ATTR: json.dumps(prior_info)})
    scheduler = scheduler_for(ctx)
    with process_pool_for(scheduler):
        result = run_blockwise_stage(
            ctx.survey_path, ctx.products_dir, NAME,
            functools.partial(block, cfg=cfg, hyper=hyper),
            OUTPUTS, survey_vars=("ra", "dec"), product_vars=PRODUCT_INPUTS,
            scheduler=scheduler,
            force=force_requested(ctx))
    result["seconds"] = time.perf_counter() - t0
    result["config"] = dataclasses.asdict(cfg)
    if prior_info:
        result["population_prior"] = prior_info
    flags = read_arrays(products_path(ctx.products_dir), ("distance_flags",))["distance_flags"]
    result["fractions"] = {k: float(np.mean((flags & v) > 0))
                           for k, v in DISTANCE_FLAG_BITS.items()}
    return result


def is_complete(ctx: RunContext) -> bool:
    return stage_complete(ctx.products_dir, NAME)


def prepare(ctx: RunContext) -> None:
    """Start the worker processes of the distance and catalog stages early
    (:func:`obpipe.engine.pools.prestart_process_pool`)."""
    prestart_process_pool(ctx, BLOCK_MODULES)
