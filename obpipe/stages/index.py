"""Stage ``index``: the products store, one row per input spectrum, keyed like the survey
(``specid``, ``star_id``, ``uniqflag``, ``fitsname``); its root attributes record the
package version, the survey and its seed."""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

import numpy as np
import xarray as xr

from obpipe.engine.context import RunContext
from obpipe.io import store
from obpipe.version import __version__

NAME = "index"
DESCRIPTION = "products store with one row per input spectrum"
#: the variables copied from the survey (its identity columns)
OUTPUTS = ("specid", "star_id", "uniqflag", "fitsname")
#: no options
Config = None
SECTION = None


def _products_attrs(ctx: RunContext) -> dict[str, Any]:
    try:
        return dict(xr.open_zarr(ctx.products_path, consolidated=store.CONSOLIDATED).attrs)
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return {}


def is_complete(ctx: RunContext) -> bool:
    return bool(_products_attrs(ctx).get("stage_index_complete", False))


def run(ctx: RunContext) -> dict[str, Any]:
    """Create the products store: one row per input spectrum, keyed like the survey."""
    survey = ctx.open_survey()
    ids = list(OUTPUTS)
    ds = survey[ids].reset_coords(drop=True)
    ds = ds.drop_vars([v for v in ("wave",) if v in ds.variables])
    chunk = int(survey.attrs.get("chunk_size", survey["flux"].chunks[0][0]))
    ds.attrs = {
        "title": "obpipe products",
        "obpipe_version": __version__,
        "survey": store.absolute(ctx.survey_path),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "survey_seed": survey.attrs.get("seed", -1),
    }
    encoding = {v: {"chunks": (chunk,)} for v in ds.data_vars}
    if not store.is_url(ctx.products_dir):  # a URL (s3://, file://): the store creates its keys
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
