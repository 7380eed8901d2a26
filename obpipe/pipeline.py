"""Orchestration: the registry of stages and ``obpipe run``.

A stage is a named callable ``run(ctx) -> dict`` plus ``is_complete(ctx) -> bool``.
Stages run in registration order; a stage whose products are complete is skipped
(resume). The survey store and the products directory are the only interfaces:
stages read the survey cube and earlier products, and write new variables into
``PRODUCTS_DIR/products.zarr`` (or small model files beside it). The final
catalog will live at ``PRODUCTS_DIR/catalog.parquet`` / ``catalog.fits``.

No science lives here: every stage's science is in its own module.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from obpipe import __version__
from obpipe.io import store
from obpipe.products import products_path, stage_complete

log = logging.getLogger(__name__)

@dataclass
class RunContext:
    """What a stage gets: where the survey and products live, and run options."""

    survey_path: str
    products_dir: str
    scheduler: str | None = None
    force: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def products_path(self) -> str:
        return products_path(self.products_dir)

    def stage_complete(self, stage: str) -> bool:
        return stage_complete(self.products_dir, stage)

    def open_survey(self) -> xr.Dataset:
        return store.open_cube(self.survey_path)


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[RunContext], dict[str, Any]]
    is_complete: Callable[[RunContext], bool]


def _products_attrs(ctx: RunContext) -> dict[str, Any]:
    try:
        return dict(xr.open_zarr(ctx.products_path, consolidated=store.CONSOLIDATED).attrs)
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return {}


def _index_complete(ctx: RunContext) -> bool:
    return bool(_products_attrs(ctx).get("stage_index_complete", False))


def _index_run(ctx: RunContext) -> dict[str, Any]:
    """Create the products store: one row per input spectrum, keyed like the survey."""
    survey = ctx.open_survey()
    ids = ["specid", "star_id", "uniqflag", "fitsname"]
    ds = survey[ids].reset_coords(drop=True)
    ds = ds.drop_vars([v for v in ("wave",) if v in ds.variables])
    chunk = int(survey.attrs.get("chunk_size", survey["flux"].chunks[0][0]))
    ds.attrs = {
        "title": "obpipe products",
        "obpipe_version": __version__,
        "survey": os.path.abspath(ctx.survey_path) if "://" not in ctx.survey_path
        else ctx.survey_path,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "survey_seed": survey.attrs.get("seed", -1),
    }
    encoding = {v: {"chunks": (chunk,)} for v in ds.data_vars}
    if "://" not in ctx.products_dir:  # a URL (s3://, file://): the store creates its keys
        os.makedirs(ctx.products_dir, exist_ok=True)
    ds = ds.chunk({"spec": chunk})
    for v in ds.data_vars:
        if ds[v].dtype == object or ds[v].dtype.kind in "UT":
            ds[v] = ds[v].compute()
    ds.to_zarr(ctx.products_path, mode="w", consolidated=store.CONSOLIDATED,
               zarr_format=store.ZARR_FORMAT, encoding=encoding, compute=True)
    store.update_attrs(ctx.products_path, {"stage_index_complete": True})
    n = int(ds.sizes["spec"])
    if n != int(np.unique(ds["specid"].values).size):
        raise ValueError(f"{ctx.survey_path}: specid is not unique across {n} spectra")
    return {"n_spectra": n}


def registered_stages() -> list[Stage]:
    """All stages in run order. Later stage modules register themselves here."""
    from obpipe.luminosity import stage as luminosity_stage
    from obpipe.photometry import stage as photometry_stage
    from obpipe.spectra.stages import stages as spectral_stages

    return [
        Stage("index", "products store with one row per input spectrum", _index_run,
              _index_complete),
        *[Stage(*s) for s in spectral_stages()],
        Stage("photometry", "E(B-V), A_Ks, parallax zero-point, geometric M_Ks (Sec. 4, "
              "eqs. 11-12, 24)", photometry_stage.run_stage, photometry_stage.is_complete),
        Stage("luminosity", "two M_Ks networks, binary-cleaned; emcee noise model (Secs. "
              "5.1-5.3, eqs. 6-14)", luminosity_stage.run_luminosity,
              luminosity_stage.is_complete),
        Stage("binary", "spectro-photometric parallax excess and binary flag (Sec. 6, "
              "eqs. 15-17)", luminosity_stage.run_binary, luminosity_stage.is_binary_complete),
    ]


def stage_names() -> list[str]:
    return [s.name for s in registered_stages()]


def select_stages(names: Sequence[str] | None) -> list[Stage]:
    """The registered stages named in ``names`` (all if None), in run order."""
    stages = registered_stages()
    if not names:
        return stages
    known = {s.name for s in stages}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(s.name for s in stages)}"
        )
    return [s for s in stages if s.name in set(names)]


def run_pipeline(
    survey_path: str,
    products_dir: str,
    stages: Sequence[str] | None = None,
    scheduler: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Run the selected stages in order; skip those already complete unless ``force``."""
    store.open_cube(survey_path)  # fail early, with the reason, on an invalid survey
    ctx = RunContext(survey_path, products_dir, scheduler, force)
    report: dict[str, Any] = {}
    for stage in select_stages(stages):
        if not force and stage.is_complete(ctx):
            log.info("stage %s: complete, skipped", stage.name)
            report[stage.name] = {"status": "skipped (complete)"}
            continue
        log.info("stage %s: running", stage.name)
        result = stage.run(ctx)
        report[stage.name] = {"status": "done", **result}
    return report
