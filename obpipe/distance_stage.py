"""Stages ``distance`` (Sec. 7) and ``catalog`` (Table 1): thin wiring.

``distance`` maps :func:`distance_block` over the cube's row chunks with
:func:`obpipe.products.run_blockwise_stage` (any Dask scheduler; each block builds
the 0.1 pc grid once and evaluates its stars' windows, see :mod:`obpipe.distance`).
Inputs: ``parallax_corrected(_error)``, ``Ks0(_err)`` (photometry), ``MKs(_err)``
(luminosity), ``binary_flag`` (binary) and the survey's ``ra``/``dec``. Products:
``dis``, ``dis_low``, ``dis_high`` (kpc), ``logdis``, ``logdis_err`` (log10 kpc),
``distance_flags`` and Galactocentric ``X``, ``Y``, ``Z`` (kpc, Sun at X = -8.1).

``catalog`` writes ``PRODUCTS_DIR/catalog.{parquet,fits[,ecsv]}`` and
``catalog_unique.*`` (:mod:`obpipe.catalog`).

Both stages' per-star work (the two-level posterior evaluation of :mod:`obpipe.distance`)
is Python-bound and holds the GIL, so on the "threads" scheduler they run their blocks
on "processes" instead (:func:`gil_free_scheduler`) when there are enough blocks to
repay starting the worker processes (~2x on 2 cores); any other scheduler (a cluster,
"processes", "synchronous") is used as given. On "processes" both stages share one pool
of worker processes (:func:`shared_process_pool`: the workers start and import obpipe
once, ~1.7 CPU s each) and hand out one block at a time (Dask's default hands 6 to a
worker at once, which leaves the other idle at the end of a stage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import dask
import numpy as np

from obpipe import catalog as catalog_mod
from obpipe.binary import FLAG_BINARY
from obpipe.config import DistanceConfig
from obpipe.distance import (
    DISTANCE_FLAG_BITS,
    DistanceGrid,
    PopulationPrior,
    distance_modulus_terms,
    fit_population_prior,
    galactic_lb_deg,
    galactocentric_xyz_kpc,
    population_prior_terms,
    summarize_distance_posteriors,
)
from obpipe.io import store
from obpipe.memory import reuse_block_buffers
from obpipe.products import (
    Output,
    block_bounds,
    force_requested,
    open_products,
    run_blockwise_stage,
    stage_complete,
)

log = logging.getLogger(__name__)

STAGE = "distance"
CATALOG_STAGE = "catalog"
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
MIN_BLOCKS_FOR_PROCESSES = 8
PRODUCT_INPUTS = ("parallax_corrected", "parallax_corrected_error", "Ks0", "Ks0_err", "MKs",
                  "MKs_err", "binary_flag")


def distance_config(ctx: Any) -> DistanceConfig:
    """The run's DistanceConfig: ``ctx.config.distance`` if present, else ``ctx.options``."""
    cfg = getattr(getattr(ctx, "config", None), "distance", None)
    if isinstance(cfg, DistanceConfig):
        return cfg
    opts = getattr(ctx, "options", {}).get(STAGE, {}) or {}
    return opts if isinstance(opts, DistanceConfig) else DistanceConfig(**opts)


def gil_free_scheduler(scheduler: str | None, n_blocks: int, stores: tuple[str, ...] = ()
                       ) -> str | None:
    """``scheduler``, or "processes" in place of "threads" for Python-bound blockwise work
    of at least :data:`MIN_BLOCKS_FOR_PROCESSES` blocks when Dask has more than one
    worker (``num_workers`` or the CPU count), unless one of ``stores`` is a ``memory://``
    URL (worker processes would not see it)."""
    workers = dask.config.get("num_workers", None) or os.cpu_count() or 1
    if any(store.in_process_memory(p) for p in stores):
        return scheduler
    if scheduler == "threads" and n_blocks >= MIN_BLOCKS_FOR_PROCESSES and workers > 1:
        log.info("%d blocks of Python-bound work: 'processes' (%d workers) instead of "
                 "'threads'", n_blocks, workers)
        return "processes"
    return scheduler


@functools.lru_cache(maxsize=1)
def _process_pool(num_workers: int) -> ProcessPoolExecutor:
    import dask.multiprocessing as dmp

    # as dask.multiprocessing.get makes its own pool: a fixed hash seed, its start method
    # and worker initialiser
    if os.environ.get("PYTHONHASHSEED") in (None, "0"):
        os.environ["PYTHONHASHSEED"] = "6640"
    return ProcessPoolExecutor(num_workers, mp_context=dmp.get_context(),
                               initializer=_initialize_worker)


def _initialize_worker() -> None:
    """Dask's worker initialiser, and a quick exit: a spawned worker ends with a full
    interpreter teardown, whose last garbage collection walks every imported library's
    objects (~0.4 s, while the driver waits for it at its own exit); freezing them in
    an atexit hook skips that walk (the memory goes back to the OS with the process)."""
    import atexit
    import gc

    import dask.multiprocessing as dmp

    dmp.initialize_worker_process()
    atexit.register(gc.freeze)


def shared_process_pool(num_workers: int) -> ProcessPoolExecutor:
    """One pool of ``num_workers`` worker processes for the Python-bound stages of this
    process (started on first use, shut down at exit; replaced if a worker died)."""
    pool = _process_pool(num_workers)
    if getattr(pool, "_broken", False) or getattr(pool, "_shutdown_thread", False):
        _process_pool.cache_clear()
        pool = _process_pool(num_workers)
    return pool


def _import_block_modules() -> None:
    """Run in a pool worker: import what the distance and catalog blocks need."""
    import obpipe.catalog  # noqa: F401
    import obpipe.distance  # noqa: F401
    import obpipe.distance_stage  # noqa: F401


def prestart_process_pool(ctx: Any) -> None:
    """Start the distance / catalog worker processes now, without waiting for them.

    When those stages will use :func:`shared_process_pool` (see
    :func:`gil_free_scheduler`), its spawned workers start Python and import numpy,
    dask, xarray, zarr and obpipe (1-2 s of CPU each) while the spectral stages run,
    instead of at the start of the distance stage, when nothing else does. The pool is
    the same one the stages then use; no product is touched."""
    scheduler = gil_free_scheduler(ctx.scheduler, _n_blocks(ctx.products_dir),
                                   (ctx.survey_path, ctx.products_dir))
    if scheduler != "processes" or dask.config.get("pool", None) is not None:
        return
    workers = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    pool = shared_process_pool(workers)
    for _ in range(workers):  # one submission per worker process to start
        pool.submit(_import_block_modules)
    log.info("distance / catalog: %d worker processes starting", workers)


@contextlib.contextmanager
def process_pool_for(scheduler: str | None) -> Iterator[None]:
    """Dask's "processes" scheduler on :func:`shared_process_pool`, one block per dispatch,
    inside the block; any other scheduler unchanged."""
    if scheduler != "processes" or dask.config.get("pool", None) is not None:
        yield
        return
    workers = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    with dask.config.set(pool=shared_process_pool(workers), chunksize=1):
        yield


def _n_blocks(products_dir: str) -> int:
    prods = open_products(products_dir)
    return len(block_bounds(int(prods.sizes["spec"]), int(prods["specid"].chunks[0][0])))


#: root attribute of the products holding the fitted population prior (JSON)
PRIOR_ATTR = "distance_population_prior"


def parallax_only_binary(binary_flag: np.ndarray, parallax_mas: np.ndarray,
                         parallax_error_mas: np.ndarray) -> np.ndarray:
    """Rows whose distance uses the parallax alone (Sec. 7): binaries (flag 1) that have
    a parallax; a binary without one (flagged from its RVs or RUWE) keeps its
    spectro-photometric distance rather than none."""
    plx = np.asarray(parallax_mas, dtype=np.float64)
    err = np.asarray(parallax_error_mas, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        has = np.isfinite(plx) & np.isfinite(err) & (err > 0)
    return (np.asarray(binary_flag) == FLAG_BINARY) & has


def block_prior_terms(ra_deg: np.ndarray, dec_deg: np.ndarray, mks_mag: np.ndarray,
                      cfg: DistanceConfig, hyper: PopulationPrior | None
                      ) -> np.ndarray | None:
    """Per-star population-prior terms of some rows (None for another prior)."""
    if cfg.prior != "population":
        return None
    if hyper is None:
        log.warning("population prior: no fitted hyperparameters, the defaults are used")
    hyper = dataclasses.replace(hyper or PopulationPrior(), weight=cfg.population_prior_weight)
    lon, lat = galactic_lb_deg(ra_deg, dec_deg)
    return population_prior_terms(lon, lat, mks_mag, hyper, cfg.d_max_kpc)


def distance_block(inputs: dict[str, np.ndarray], cfg: DistanceConfig,
                   hyper: PopulationPrior | None = None) -> dict[str, np.ndarray]:
    """Eqs. (18)-(24) for one block of spectra; binaries (flag 1) use the parallax alone
    (under the population prior ``hyper`` a proper posterior whatever their parallax)."""
    reuse_block_buffers()
    dm0, sig = distance_modulus_terms(inputs["Ks0"], inputs["Ks0_err"], inputs["MKs"],
                                      inputs["MKs_err"])
    binary = parallax_only_binary(inputs["binary_flag"], inputs["parallax_corrected"],
                                  inputs["parallax_corrected_error"])
    if cfg.parallax_only_binaries:
        dm0 = np.where(binary, np.nan, dm0)
    res = summarize_distance_posteriors(inputs["parallax_corrected"],
                                        inputs["parallax_corrected_error"], dm0, sig, cfg,
                                        grid=DistanceGrid.build(cfg),
                                        prior_terms=block_prior_terms(
                                            inputs["ra"], inputs["dec"], inputs["MKs"], cfg,
                                            hyper))
    flags = res["distance_flags"]
    if cfg.parallax_only_binaries:
        flags[binary] |= DISTANCE_FLAG_BITS["binary_parallax_only"]
    x, y, z = galactocentric_xyz_kpc(inputs["ra"], inputs["dec"], res["dis"])
    return {"dis": res["dis"], "dis_low": res["dis_low"], "dis_high": res["dis_high"],
            "logdis": res["logdis"].astype(np.float32),
            "logdis_err": res["logdis_err"].astype(np.float32), "distance_flags": flags,
            "X": x.astype(np.float32), "Y": y.astype(np.float32), "Z": z.astype(np.float32)}


def fit_survey_prior(survey_path: str, products_dir: str, cfg: DistanceConfig
                     ) -> tuple[PopulationPrior, dict[str, Any]]:
    """The population prior's hyperparameters fitted to this survey's single stars
    (``binary_flag == 0``, both a parallax and an M_Ks; :func:`fit_population_prior`)."""
    import xarray as xr

    prods = open_products(products_dir)
    survey = xr.open_zarr(survey_path, consolidated=store.CONSOLIDATED,
                          zarr_format=store.ZARR_FORMAT)
    v = {k: prods[k].values for k in PRODUCT_INPUTS}
    ra, dec = survey["ra"].values, survey["dec"].values
    dm0, sig = distance_modulus_terms(v["Ks0"], v["Ks0_err"], v["MKs"], v["MKs_err"])
    single = np.asarray(v["binary_flag"]) == 0
    lon, lat = galactic_lb_deg(ra, dec)
    plx = np.where(single, v["parallax_corrected"], np.nan)
    return fit_population_prior(plx, v["parallax_corrected_error"], dm0, sig, lon, lat,
                                v["MKs"], cfg.d_max_kpc)


def fitted_prior(products_dir: str) -> PopulationPrior | None:
    """The population prior recorded by the distance stage in the products, if any."""
    import json

    import zarr

    from obpipe.products import products_path

    grp = zarr.open_group(products_path(products_dir), mode="r",
                          zarr_format=store.ZARR_FORMAT)
    raw = grp.attrs.get(PRIOR_ATTR)
    if not raw:
        return None
    rec = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return PopulationPrior(**rec["hyperparameters"])


def run_distance(ctx: Any) -> dict[str, Any]:
    """The distance posterior of every spectrum, blockwise over the cube.

    Under the population prior its hyperparameters are first fitted to the survey's
    single stars (:func:`fit_survey_prior`) and recorded in the products' root attribute
    :data:`PRIOR_ATTR` and in the stage's result."""
    import json

    from obpipe.products import products_path

    cfg = distance_config(ctx)
    t0 = time.perf_counter()
    hyper = None
    prior_info: dict[str, Any] = {}
    if cfg.prior == "population":
        hyper, prior_info = fit_survey_prior(ctx.survey_path, ctx.products_dir, cfg)
        prior_info = {"hyperparameters": hyper.as_dict(), "fit": prior_info}
        store.update_attrs(products_path(ctx.products_dir),
                           {PRIOR_ATTR: json.dumps(prior_info)})
    scheduler = gil_free_scheduler(ctx.scheduler, _n_blocks(ctx.products_dir),
                                   (ctx.survey_path, ctx.products_dir))
    with process_pool_for(scheduler):
        result = run_blockwise_stage(
            ctx.survey_path, ctx.products_dir, STAGE,
            functools.partial(distance_block, cfg=cfg, hyper=hyper),
            OUTPUTS, survey_vars=("ra", "dec"), product_vars=PRODUCT_INPUTS,
            scheduler=scheduler,
            force=force_requested(ctx))
    result["seconds"] = time.perf_counter() - t0
    result["config"] = dataclasses.asdict(cfg)
    if prior_info:
        result["population_prior"] = prior_info
    flags = open_products(ctx.products_dir)["distance_flags"].values
    result["fractions"] = {k: float(np.mean((flags & v) > 0))
                           for k, v in DISTANCE_FLAG_BITS.items()}
    return result


def is_complete(ctx: Any) -> bool:
    return stage_complete(ctx.products_dir, STAGE)


def run_catalog(ctx: Any) -> dict[str, Any]:
    """Write the Table 1 catalog and its unique-star view from the survey and products."""
    opts = getattr(ctx, "options", {}).get(CATALOG_STAGE, {}) or {}
    formats = tuple(opts.get("formats", catalog_mod.DEFAULT_FORMATS))
    scheduler = gil_free_scheduler(ctx.scheduler, _n_blocks(ctx.products_dir),
                                   (ctx.survey_path, ctx.products_dir))
    with process_pool_for(scheduler):
        return catalog_mod.write_catalog(
            ctx.survey_path, ctx.products_dir, formats=formats, distance_cfg=distance_config(ctx),
            scheduler=scheduler)


def is_catalog_complete(ctx: Any) -> bool:
    return catalog_mod.catalog_complete(ctx.products_dir) and store.exists(
        catalog_mod.catalog_path(ctx.products_dir, "parquet"))
