"""Stage ``catalog`` (Table 1): ``PRODUCTS_DIR/catalog.{parquet,fits[,ecsv]}`` and the
unique-star view ``catalog_unique.*``, written by :func:`obpipe.catalog.write_catalog`
from the survey and the products (its per-star distances through
:func:`obpipe.distance.catalog_distances`, in the shared process pool on "threads":
:mod:`obpipe.engine.pools`)."""

from __future__ import annotations

from typing import Any

from obpipe import catalog
from obpipe.catalog import CatalogConfig
from obpipe.engine.context import RunContext
from obpipe.engine.pools import prestart_process_pool, process_pool_for, scheduler_for
from obpipe.io import store

NAME = "catalog"
DESCRIPTION = "Table 1 catalog and unique-star view (Parquet, FITS)"
#: the columns of the catalog (name -> Output-like schema: dtype, unit, description)
OUTPUTS = catalog.CATALOG_COLUMNS
#: the typed options section (``PipelineConfig.catalog``)
Config = CatalogConfig
SECTION = "catalog"
#: what a pool worker imports before its first block (:func:`prepare`)
BLOCK_MODULES = ("obpipe.distance", "obpipe.catalog", "obpipe.stages.catalog")

__all__ = ["NAME", "DESCRIPTION", "OUTPUTS", "Config", "SECTION", "run", "is_complete",
           "prepare"]


def run(ctx: RunContext) -> dict[str, Any]:
    """Write the Table 1 catalog and its unique-star view from the survey and products,
    in the formats of ``ctx.config.catalog`` (its distances with ``ctx.config.distance``)."""
    scheduler = scheduler_for(ctx)
    with process_pool_for(scheduler):
        return catalog.write_catalog(
            ctx.survey_path, ctx.products_dir, formats=tuple(ctx.config.catalog.formats),
            distance_cfg=ctx.config.distance, scheduler=scheduler)


def is_complete(ctx: RunContext) -> bool:
    return catalog.catalog_complete(ctx.products_dir) and store.exists(
        catalog.catalog_path(ctx.products_dir, "parquet"))


def prepare(ctx: RunContext) -> None:
    """Start the worker processes of the shared pool early
    (:func:`obpipe.engine.pools.prestart_process_pool`; the distance stage's pool is the
    same one)."""
    prestart_process_pool(ctx, BLOCK_MODULES)
