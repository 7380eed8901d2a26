"""The value-added catalog (the paper's Table 1) and its unique-star view.

One row per input spectrum, in the survey's order, never dropped: a spectrum whose
inputs are missing keeps its row with NaN (floats) / -9 (integers) and a bit in
``quality_flags`` (:data:`QUALITY_BITS`). Columns: every column of Table 1 (names as
there, units and descriptions on every column) plus ``quality_flags``,
``distance_flags`` and ``em_flag_star``.

Files (``PRODUCTS_DIR``):

* ``catalog.parquet`` — written block by block with pyarrow (memory flat in the
  number of spectra), with the column units/descriptions both as Parquet field
  metadata and in astropy's ``table_meta_yaml`` (``Table.read`` restores them);
* ``catalog.fits`` (binary table; units in TUNITn, descriptions in TCOMMn, which
  TOPCAT shows) and, on request, ``catalog.ecsv`` — for catalogs up to
  ``FITS_MAX_ROWS`` rows (int8 flags as 16-bit integers, :func:`fits_flag_columns`);
  streamed block by block (:class:`TableStreamWriter`), byte
  for byte the files astropy writes from the whole table;
* ``catalog_unique.*``: one row per star (``uniqflag == 1``) where the star's visits
  are combined: M_Ks is the inverse-variance mean over its visits (the paper's
  treatment of LB-1's 12 spectra, Sec. 8), with an uncertainty that keeps the
  intrinsic term, ``sqrt(sigma_int^2 + 1 / sum_i 1/sigma_s,i^2)`` (sigma_int, the
  model's intrinsic scatter, does not average down over visits of one star), and
  the distance is recomputed from it (Sec. 7; a star with one visit keeps that visit's,
  the same numbers). Also block by block: only the 1-D
  columns that combine the visits are held for all rows (:func:`write_catalog`).

Every file carries the run's provenance (:func:`catalog_provenance`: effective config,
survey identity, every stage's provenance record, the simulated-survey models applied to
a real survey): Parquet schema metadata ``obpipe_*`` and FITS table header cards
``HIERARCH OBPIPE ...``; :func:`read_catalog_provenance` reads them back. When models
trained on a simulated survey were applied to a real survey (``--allow-simulated-models``)
every row has the ``simulated_models`` bit of ``quality_flags``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import zarr

from obpipe.binary import FLAG_BINARY
from obpipe.distance import (
    DISTANCE_FLAG_BITS,
    PRIOR_ATTR,
    DistanceConfig,
    PopulationPrior,
    catalog_distances,
    population_prior_from_record,
)
from obpipe.engine.blockwise import (
    array_attrs,
    block_bounds,
    open_products,
    products_path,
    read_block,
    stored_arrays,
)
from obpipe.engine.schedulers import compute_ahead
from obpipe.io import store
from obpipe.io.catalog_writer import TableStreamWriter, fits_flag_columns  # noqa: F401
from obpipe.options import option
from obpipe.photometry.parallax import CALIBRATED_PARALLAX_INPUTS, calibrated_parallax

if TYPE_CHECKING:
    import xarray as xr

log = logging.getLogger(__name__)

FITS_MAX_ROWS = 5_000_000
DEFAULT_FORMATS = ("parquet", "fits")
CATALOG_NAME = "catalog"
UNIQUE_NAME = "catalog_unique"
#: rows per Parquet row group of the unique-star view: pyarrow's default for
#: ``pq.write_table``, so a file written in row groups of this size is byte for byte the
#: one ``pq.write_table`` writes from the whole table
ROW_GROUP_ROWS = 1024 * 1024


@dataclass(frozen=True)
class CatalogConfig:
    """Options of the catalog stage (Table 1; ``obpipe.catalog``)."""

    formats: tuple[str, ...] = option(
        DEFAULT_FORMATS,
        doc="file formats of catalog.* and catalog_unique.*: \"parquet\" (always: the stage is"
            " complete when it exists), \"fits\", \"ecsv\"")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.formats) - {"parquet", "fits", "ecsv"})
        if unknown:
            raise ValueError(f"formats: unknown {unknown}; choose from parquet, fits, ecsv")
        if "parquet" not in self.formats:
            raise ValueError("formats must include 'parquet' (the catalog of record)")


@dataclass(frozen=True)
class CatalogColumn:
    """A catalog column: where it comes from, its dtype, unit and description."""

    source: str  # "survey", "products" or "derived"
    var: str
    dtype: str
    unit: str
    description: str


def _s(var: str, dtype: str, unit: str, description: str) -> CatalogColumn:
    return CatalogColumn("survey", var, dtype, unit, description)


def _p(var: str, dtype: str) -> CatalogColumn:
    """A column copied from the products: its unit and description are the product
    schema's (the ``units`` / ``description`` attributes that the stage's ``OUTPUTS`` gave
    the variable, :func:`described_columns`), never restated here."""
    return CatalogColumn("products", var, dtype, "", "")


#: bits of the catalog's ``quality_flags``
QUALITY_BITS: Mapping[str, int] = {
    "no_parallax": 1,  # no usable Gaia parallax (missing or error <= 0)
    "no_ks": 2,  # no 2MASS Ks
    "no_ebv": 4,  # no E(B-V) (too few bands), so no A_Ks, Ks0, MKs_geo
    "no_mks": 8,  # no spectroscopic M_Ks (no usable spectrum / network input)
    "broken_spectrum": 16,  # spectrum flagged broken (App. A)
    "emission_undetermined": 32,  # em_flag = -9
    "binary": 64,  # binary_flag = 1: distance from the parallax alone (Sec. 7)
    "distance_parallax_only": 128,  # distance from the parallax alone (any reason)
    "distance_truncated": 256,  # flat prior: posterior reaches d_max (improper)
    "no_distance": 512,  # no distance at all
    # M_Ks etc. from model files trained on a simulated survey, applied to a real survey
    # with --allow-simulated-models (every row; the headers list the files)
    "simulated_models": 1024,
}

#: the paper's Table 1 (names as there) plus quality_flags, distance_flags, em_flag_star
CATALOG_COLUMNS: Mapping[str, CatalogColumn] = {
    "specid": _s("specid", "int64", "", "spectrum id (LAMOST obsid)"),
    "fitsname": _s("fitsname", "str", "", "name of the spectrum's FITS file"),
    "ra": _s("ra", "float64", "deg", "right ascension (J2000 / ICRS)"),
    "dec": _s("dec", "float64", "deg", "declination (J2000 / ICRS)"),
    "uniqflag": _s("uniqflag", "int16", "", "1 = highest-S/N visit of the star (unique "
                   "star), 2, 3, ... = further visits ordered by S/N"),
    "star_id": _s("star_id", "str", "", "unique star id from RA and Dec, Shhmmss+ddmmss"),
    "snr_g": _s("snr_g", "float32", "", "spectral S/N per pixel in the g band"),
    "rv": _s("rv", "float32", "km / s", "radial velocity"),
    "rv_err": _s("rv_err", "float32", "km / s", "uncertainty of rv"),
    "rv_refined_kms": _p("rv_refined_kms", "float32"),
    "rv_refined_err_kms": _p("rv_refined_err_kms", "float32"),
    "MKs": _p("MKs", "float32"),
    "MKs_err": _p("MKs_err", "float32"),
    "MKs_geo": _p("MKs_geo", "float32"),
    "MKs_geo_err": _p("MKs_geo_err", "float32"),
    "dis": _p("dis", "float64"),
    "dis_low": _p("dis_low", "float64"),
    "dis_high": _p("dis_high", "float64"),
    "logdis": _p("logdis", "float32"),
    "logdis_err": _p("logdis_err", "float32"),
    "ebv": _p("ebv", "float32"),
    "ebv_err": _p("ebv_err", "float32"),
    "r_v": _p("r_v", "float32"),  # beyond Table 1: the extinction curve's R_V (fitted or fixed)
    "r_v_err": _p("r_v_err", "float32"),
    "snr_dparallax": _p("snr_dparallax", "float32"),
    "binary_flag": _p("binary_flag", "int8"),
    "binary_flag_paper": _p("binary_flag_paper", "int8"),
    "binary_prob": _p("binary_prob", "float32"),
    "em_flag": _p("em_flag", "int8"),
    "gaia_id": _s("gaia_id", "int64", "", "Gaia source_id"),
    "parallax": _s("parallax", "float64", "mas", "Gaia parallax as published"),
    "parallax_error": _s("parallax_error", "float32", "mas", "uncertainty of parallax"),
    "parallax_offset": _p("parallax_offset", "float32"),
    "parallax_zp_fit": _p("parallax_zp_fit", "float32"),  # beyond Table 1
    "pmra": _s("pmra", "float32", "mas / yr", "proper motion in RA * cos(dec)"),
    "pmra_error": _s("pmra_error", "float32", "mas / yr", "uncertainty of pmra"),
    "pmdec": _s("pmdec", "float32", "mas / yr", "proper motion in Dec"),
    "pmdec_error": _s("pmdec_error", "float32", "mas / yr", "uncertainty of pmdec"),
    "ruwe": _s("ruwe", "float32", "", "Gaia renormalised unit weight error"),
    "J": _s("J", "float32", "mag", "2MASS J"),
    "J_err": _s("J_err", "float32", "mag", "uncertainty of J"),
    "H": _s("H", "float32", "mag", "2MASS H"),
    "H_err": _s("H_err", "float32", "mag", "uncertainty of H"),
    "Ks": _s("Ks", "float32", "mag", "2MASS Ks"),
    "Ks_err": _s("Ks_err", "float32", "mag", "uncertainty of Ks"),
    "X": _p("X", "float32"),
    "Y": _p("Y", "float32"),
    "Z": _p("Z", "float32"),
    "quality_flags": CatalogColumn("derived", "", "int32", "", "bits: " + ", ".join(
        f"{k}={v}" for k, v in QUALITY_BITS.items())),
    "distance_flags": _p("distance_flags", "int32"),
    "em_flag_star": _p("em_flag_star", "int8"),
}
_UNIQUE_EXTRA: Mapping[str, CatalogColumn] = {
    "MKs_nvisits": CatalogColumn("derived", "", "int16", "", "number of visits combined "
                                 "into MKs / MKs_err (uniqflag = 1 rows)"),
}
#: extra product variables read to derive quality_flags and the unique view
_AUX_PRODUCTS = ("quality_flags", "MKs_model", "Ks0")
_AUX_SURVEY: tuple[str, ...] = ()


def described_columns(columns: Mapping[str, CatalogColumn], products: xr.Dataset
                      ) -> dict[str, CatalogColumn]:
    """``columns`` with the unit and description of every products column taken from the
    product schema (the variable's ``units`` and ``description`` attributes in the
    products store, written from its stage's ``OUTPUTS``; a unit FITS cannot carry is
    left out)."""
    out = {}
    for name, c in columns.items():
        if c.source == "products" and c.var in products.variables:
            attrs = products[c.var].attrs
            c = replace(c, unit=_fits_unit(str(attrs.get("units", ""))),
                        description=str(attrs.get("description", "")))
        out[name] = c
    return out


def _fits_unit(unit: str) -> str:
    """``unit`` where FITS can carry it (astropy's FITS unit format), else "" (``dex(kpc)``
    of ``logdis``: the description says it)."""
    import astropy.units as u

    try:
        u.Unit(unit, format="fits")
    except ValueError:
        return ""
    return unit


def catalog_path(products_dir: str, fmt: str, name: str = CATALOG_NAME) -> str:
    return os.path.join(products_dir, f"{name}.{fmt}")


def catalog_complete(products_dir: str) -> bool:
    try:
        grp = zarr.open_group(products_path(products_dir), mode="r",
                              zarr_format=store.ZARR_FORMAT)
    except (FileNotFoundError, ValueError):
        return False
    return bool(grp.attrs.get("stage_catalog_complete", False))


def quality_flags(cols: Mapping[str, np.ndarray], spectral_quality: np.ndarray,
                  ks0_mag: np.ndarray) -> np.ndarray:
    """The catalog's ``quality_flags`` (bits :data:`QUALITY_BITS`) from its columns."""
    n = len(cols["specid"])
    q = np.zeros(n, dtype=np.int32)
    with np.errstate(invalid="ignore"):
        plx_ok = np.isfinite(cols["parallax"]) & (cols["parallax_error"] > 0)
    q[~plx_ok] |= QUALITY_BITS["no_parallax"]
    q[~np.isfinite(cols["Ks"])] |= QUALITY_BITS["no_ks"]
    q[~np.isfinite(cols["ebv"]) | ~np.isfinite(ks0_mag)] |= QUALITY_BITS["no_ebv"]
    q[~np.isfinite(cols["MKs"])] |= QUALITY_BITS["no_mks"]
    q[(np.asarray(spectral_quality) & 1) > 0] |= QUALITY_BITS["broken_spectrum"]
    q[np.asarray(cols["em_flag"]) == -9] |= QUALITY_BITS["emission_undetermined"]
    q[np.asarray(cols["binary_flag"]) == FLAG_BINARY] |= QUALITY_BITS["binary"]
    dflags = np.asarray(cols["distance_flags"])
    q[(dflags & DISTANCE_FLAG_BITS["parallax_only"]) > 0] |= QUALITY_BITS[
        "distance_parallax_only"]
    q[(dflags & DISTANCE_FLAG_BITS["truncated_by_prior_edge"]) > 0] |= QUALITY_BITS[
        "distance_truncated"]
    q[~np.isfinite(cols["dis"])] |= QUALITY_BITS["no_distance"]
    return q


def _fill(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "str":
        return np.asarray(values).astype(object).astype(str)
    v = np.asarray(values)
    if dtype.startswith("float"):
        return v.astype(dtype)
    if v.dtype.kind == "f":  # an integer column read as float: missing -> -9
        v = np.where(np.isfinite(v), v, -9)
    return v.astype(dtype)


def _read_rows(ds: xr.Dataset, names: Sequence[str], start: int, stop: int
               ) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of ``names`` of an opened dataset (as ``read_block`` reads them)."""
    if not names:
        return {}
    sub = ds[list(names)].isel(spec=slice(start, stop)).load()
    return {k: sub[k].values for k in names}


def catalog_block(survey_path: str, products_dir: str, start: int, stop: int, *,
                  survey: xr.Dataset | None = None, products: xr.Dataset | None = None,
                  simulated_models: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows ``start:stop`` of the catalog as a DataFrame (one row per spectrum), and the
    network that gave each row's M_Ks (``MKs_model``, for the unique-star view).

    ``survey`` / ``products``: the stores already opened (lazily, with xarray) by a
    caller that reads many blocks; otherwise they are opened here. ``simulated_models``:
    the products used models trained on a simulated survey (a real survey run with
    ``--allow-simulated-models``): every row gets the ``simulated_models`` quality bit."""
    svars = tuple(c.var for c in CATALOG_COLUMNS.values() if c.source == "survey")
    pvars = tuple(c.var for c in CATALOG_COLUMNS.values() if c.source == "products")
    if survey is None or products is None:
        raw = read_block(survey_path, products_dir, start, stop, svars + _AUX_SURVEY,
                         pvars + _AUX_PRODUCTS)
    else:
        raw = {**_read_rows(survey, svars + _AUX_SURVEY, start, stop),
               **_read_rows(products, pvars + _AUX_PRODUCTS, start, stop)}
    cols = {name: _fill(raw[c.var], c.dtype) for name, c in CATALOG_COLUMNS.items()
            if c.source != "derived"}
    cols["quality_flags"] = quality_flags(cols, raw["quality_flags"], raw["Ks0"])
    if simulated_models:
        cols["quality_flags"] |= QUALITY_BITS["simulated_models"]
    frame = pd.DataFrame({name: cols[name] for name in CATALOG_COLUMNS})
    return frame, np.asarray(raw["MKs_model"])


#: columns of the catalog kept (1-D, every row) for the unique-star view
_KEEP = ("star_id", "uniqflag", "MKs", "MKs_err")
#: catalog blocks per Dask computation of :func:`write_catalog` (its parts of the same
#: batch are written once the batch is done, while the next batches compute)
BATCH_BLOCKS = 4


def _catalog_part(survey_path: str, products_dir: str, start: int, stop: int,
                  schema: pa.Schema, simulated_models: bool
                  ) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Rows ``start:stop`` of the catalog as a pyarrow table with ``schema`` (a Dask task
    of :func:`write_catalog`), and the 1-D columns the unique-star view keeps (``_KEEP``
    and ``model``, the network of each row's M_Ks)."""
    frame, model = catalog_block(survey_path, products_dir, start, stop,
                                 simulated_models=simulated_models)
    keep = {name: frame[name].to_numpy() for name in _KEEP}
    keep["model"] = model
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False), keep


def _windows(n: int, size: int) -> list[range]:
    """``range(n)`` cut into consecutive windows of ``size``."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _missing_products(products_dir: str) -> list[str]:
    try:
        have = stored_arrays(products_path(products_dir))
    except FileNotFoundError:
        open_products(products_dir)  # the products store's own message
        raise
    need = {c.var for c in CATALOG_COLUMNS.values() if c.source == "products"}
    return sorted((need | set(_AUX_PRODUCTS)) - have)


def _arrow_schema(columns: Mapping[str, CatalogColumn], str_lengths: Mapping[str, int],
                  extra: Mapping[str, str] | None = None) -> pa.Schema:
    """pyarrow schema with units/descriptions as field metadata and astropy's yaml header;
    ``extra``: more schema metadata (the run's provenance, :func:`catalog_provenance`)."""
    from astropy.table import Table
    from astropy.table.meta import get_yaml_from_table

    fields = []
    empty = Table()
    for name, c in columns.items():
        if c.dtype == "str":
            typ = pa.string()
            empty[name] = np.zeros(0, dtype=f"U{max(int(str_lengths.get(name, 1)), 1)}")
        else:
            typ = pa.from_numpy_dtype(np.dtype(c.dtype))
            empty[name] = np.zeros(0, dtype=c.dtype)
        empty[name].unit = c.unit or None
        empty[name].description = c.description
        fields.append(pa.field(name, typ, metadata={"unit": c.unit,
                                                    "description": c.description}))
    meta = {"table_meta_yaml": "\n".join(get_yaml_from_table(empty))}
    for name, length in str_lengths.items():
        meta[f"table::len::{name}"] = str(int(length))
    meta.update(extra or {})
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in meta.items()})


#: the catalog files' provenance: Parquet schema metadata keys, and as FITS table header
#: cards ``HIERARCH OBPIPE ...`` (the key upper-cased, ``_`` -> space)
PROVENANCE_PREFIX = "obpipe_"
_FLAG_KEY = "obpipe_uses_simulated_models"


def catalog_provenance(products_dir: str) -> dict[str, str]:
    """What the catalog files carry about their making (issue 17): the strings of
    :func:`obpipe.provenance.catalog_metadata` (obpipe version, effective configuration
    as JSON and its digest, the survey's identity as JSON and its id, every stage's
    provenance record as JSON, the simulated-survey model files applied to a real survey
    as a JSON list) plus ``obpipe_uses_simulated_models`` ("true" / "false": whether
    every row carries the ``simulated_models`` quality bit)."""
    import json

    from obpipe.provenance import catalog_metadata

    meta = catalog_metadata(products_dir)
    used = bool(json.loads(meta.get("obpipe_simulated_models", "[]")))
    return {**meta, _FLAG_KEY: "true" if used else "false"}


def fits_provenance_cards(meta: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    """:func:`catalog_provenance` as FITS header cards: ``HIERARCH OBPIPE USES SIMULATED
    MODELS`` (logical) first, then one ``HIERARCH OBPIPE ...`` string card per key (long
    JSON values continued over ``CONTINUE`` cards, astropy's long-string convention:
    ``header["OBPIPE CONFIG"]`` reads the whole string back), and a COMMENT warning when
    simulated-survey models were used."""
    def keyword(key: str) -> str:
        return "HIERARCH " + key.upper().replace("_", " ")

    used = meta.get(_FLAG_KEY) == "true"
    cards: list[tuple[str, Any, str]] = [
        (keyword(_FLAG_KEY), used, f"quality bit {QUALITY_BITS['simulated_models']}")]
    cards += [(keyword(k), str(v), "") for k, v in meta.items() if k != _FLAG_KEY]
    if used:
        cards.append(("COMMENT", "WARNING: M_Ks, emission flags and distances of this "
                      "real survey come from models trained on a simulated survey "
                      "(--allow-simulated-models; files in OBPIPE SIMULATED MODELS); "
                      f"every row has quality_flags bit {QUALITY_BITS['simulated_models']}",
                      ""))
    return cards


def read_catalog_provenance(path: str) -> dict[str, str]:
    """The provenance strings of a catalog file (``.parquet``: schema metadata;
    ``.fits``: the table header's ``OBPIPE ...`` cards), keyed as
    :func:`catalog_provenance`; JSON values (config, survey, provenance, simulated
    models) stay strings for ``json.loads``."""
    if path.endswith(".parquet"):
        fs, where = store.url_to_fs(path)
        meta = pq.read_schema(where, filesystem=fs).metadata or {}
        return {k.decode(): v.decode() for k, v in meta.items()
                if k.decode().startswith(PROVENANCE_PREFIX)}
    from astropy.io import fits

    with store.open_file(path, "rb") as fh, fits.open(fh) as hdul:
        header = hdul[1].header
        out = {}
        for key in header:
            name = key.lower().replace(" ", "_")
            if name.startswith(PROVENANCE_PREFIX):
                value = header[key]
                out[name] = ("true" if value else "false") if isinstance(value, bool) \
                    else str(value)
    return out


def _string_lengths(survey: xr.Dataset, chunk: int) -> dict[str, int]:
    """Longest ``fitsname`` / ``star_id`` (characters), read block by block."""
    n = int(survey.sizes["spec"])
    out = dict.fromkeys(("fitsname", "star_id"), 1)
    for start, stop in block_bounds(n, chunk):
        for name, vals in _read_rows(survey, tuple(out), start, stop).items():
            lengths = np.char.str_len(vals.astype(object).astype(str))
            out[name] = max(out[name], int(lengths.max(initial=1)))
    return out


def combine_visits(star_id: np.ndarray, mks_mag: np.ndarray, mks_err_mag: np.ndarray,
                   sigma_int_mag: np.ndarray) -> pd.DataFrame:
    """Inverse-variance mean of M_Ks over each star's visits (Sec. 8, LB-1).

    Each visit's variance is sigma_int^2 + sigma_s,i^2 (``MKs_err``); the weights are
    1 / MKs_err^2; the combined uncertainty is sqrt(sigma_int^2 + 1 / sum 1/sigma_s,i^2)
    with sigma_int the (weighted) mean intrinsic term of the visits. Visits without
    M_Ks are ignored. Returns a frame indexed by star_id with ``MKs``, ``MKs_err`` and
    ``MKs_nvisits``.
    """
    mks = np.asarray(mks_mag, dtype=np.float64)
    err = np.asarray(mks_err_mag, dtype=np.float64)
    sint = np.asarray(sigma_int_mag, dtype=np.float64)
    ok = np.isfinite(mks) & np.isfinite(err) & (err > 0)
    w = np.where(ok, 1.0 / np.where(ok, err, 1.0) ** 2, 0.0)
    sig_s2 = np.clip(err**2 - np.nan_to_num(sint) ** 2, 1e-8, None)
    frame = pd.DataFrame({"star_id": star_id, "w": w, "wm": w * np.where(ok, mks, 0.0),
                          "ws": np.where(ok, 1.0 / sig_s2, 0.0),
                          "wint": w * np.nan_to_num(sint) ** 2, "n": ok.astype(np.int16)})
    g = frame.groupby("star_id", sort=False).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = g["wm"] / g["w"]
        sint2 = g["wint"] / g["w"]
        err_c = np.sqrt(sint2 + 1.0 / g["ws"])
    has = g["n"] > 0
    return pd.DataFrame({"MKs": np.where(has, mean, np.nan),
                         "MKs_err": np.where(has, err_c, np.nan),
                         "MKs_nvisits": g["n"].astype(np.int16)}, index=g.index)


def _sigma_int_per_visit(products_dir: str, model: np.ndarray) -> np.ndarray:
    attrs = array_attrs(products_path(products_dir), "MKs_err")
    out = np.full(model.shape, np.nan)
    for code, name in ((0, "a"), (1, "b")):
        val = attrs.get(f"noise_{name}_sigma_int")
        if val is not None:
            # the constant term of noise_model.fit_extra_scatter is intrinsic as well (it
            # does not average down over visits of one star)
            const = (attrs.get(f"noise_{name}_extra_scatter") or {}).get("sigma_const_mag", 0)
            out[model == code] = float(np.hypot(float(val), float(const)))
    if np.isnan(out[model >= 0]).any():
        log.warning("catalog: no sigma_int in MKs_err attributes; visits combined by "
                    "plain inverse variance")
    return out


#: product variables of the unique-star view's distances (eqs. 18-24)
_DISTANCE_INPUTS = ("Ks0", "Ks0_err", *CALIBRATED_PARALLAX_INPUTS, "parallax_corrected_error")


def _unique_block(parquet_file: str, row_group: int, combined: Mapping[str, np.ndarray],
                  distance_inputs: Mapping[str, np.ndarray], distance_cfg: DistanceConfig,
                  schema: pa.Schema, hyper: PopulationPrior | None = None) -> pa.Table:
    """The unique-star rows (``uniqflag == 1``) of one row group of ``catalog.parquet``,
    with their combined M_Ks and distances, as a pyarrow table with ``schema``.
    ``combined`` / ``distance_inputs``: arrays aligned with those rows."""
    fs, where = store.url_to_fs(parquet_file)
    rows = pq.ParquetFile(where, filesystem=fs).read_row_group(row_group)
    mask = pc.equal(rows.column("uniqflag"), 1)
    uniq = rows.filter(mask).to_pandas()
    frame = unique_view_from_rows(uniq, pd.DataFrame(dict(combined)), distance_cfg,
                                  distance_inputs, hyper)
    return pa.Table.from_pandas(frame[list(schema.names)], schema=schema,
                                preserve_index=False)


def write_catalog(survey_path: str, products_dir: str,
                  formats: Sequence[str] = DEFAULT_FORMATS,
                  distance_cfg: DistanceConfig | None = None,
                  scheduler: str | None = None) -> dict[str, Any]:
    """Write ``catalog.*`` and ``catalog_unique.*`` (see the module docstring).

    Block by block, memory flat in the number of spectra: one pass over the cube's row
    chunks makes each chunk's rows as a Dask task on ``scheduler``
    (:func:`_catalog_part`), writes them to ``catalog.parquet`` and streams
    ``catalog.fits`` / ``.ecsv`` (:class:`TableStreamWriter`), and keeps only the 1-D
    columns the unique-star view needs (star_id, uniqflag, MKs, MKs_err, the network, the
    distance inputs); the visits are combined per star (:func:`combine_visits`); a second
    pass makes the unique-star rows of each row group (their distances recomputed, eqs.
    18-24, where the combined M_Ks is not the visit's: :func:`unique_view_from_rows`) as
    Dask tasks and streams them to ``catalog_unique.*``. The tasks run in
    batches of :data:`BATCH_BLOCKS` chunks a few batches ahead of the writing
    (:func:`obpipe.engine.schedulers.compute_ahead`; CPU-bound: a process-based
    scheduler runs them in parallel), so the workers compute while this process writes
    the files (the same files as written one chunk after the other).
    """
    distance_cfg = distance_cfg or DistanceConfig()
    t0 = time.perf_counter()
    unknown = set(formats) - {"parquet", "fits", "ecsv"}
    if unknown:
        raise ValueError(f"unknown catalog format(s) {sorted(unknown)}; "
                         "choose from parquet, fits, ecsv")
    missing = _missing_products(products_dir)
    if missing:
        raise ValueError(f"{products_path(products_dir)}: the catalog needs product "
                         f"variables {missing}; run the stages that make them first")
    import xarray as xr

    prods = open_products(products_dir)
    survey = xr.open_zarr(survey_path, consolidated=store.CONSOLIDATED,
                          zarr_format=store.ZARR_FORMAT)
    n_spec = int(prods.sizes["spec"])
    chunk = int(prods["specid"].chunks[0][0])
    bounds = block_bounds(n_spec, chunk)
    lengths = _string_lengths(survey, chunk)
    meta = catalog_provenance(products_dir)
    cards = fits_provenance_cards(meta)
    simulated_models = meta[_FLAG_KEY] == "true"
    if simulated_models:
        log.warning("catalog: models trained on a simulated survey (%s) applied to this "
                    "real survey: quality_flags bit %d set on every row",
                    meta["obpipe_simulated_models"], QUALITY_BITS["simulated_models"])
    columns = described_columns(CATALOG_COLUMNS, prods)
    schema = _arrow_schema(columns, lengths, meta)
    path = catalog_path(products_dir, "parquet")
    big = n_spec > FITS_MAX_ROWS
    if big:
        log.warning("catalog: %d rows > %d, FITS/ECSV not written (use the Parquet file)",
                    n_spec, FITS_MAX_ROWS)
    tmp = path + ".partial"
    rows = 0
    keep: dict[str, list[np.ndarray]] = {name: [] for name in (*_KEEP, "model")}
    stream = TableStreamWriter(path[: -len(".parquet")], columns, n_spec,
                               () if big else formats, cards)
    fs, tmp_where = store.url_to_fs(tmp)  # (None, tmp) for a local path
    kwargs = {"scheduler": scheduler} if scheduler else {}
    # the blocks' rows made by the workers, a few batches ahead of the files written here
    parts = ([dask.delayed(_catalog_part)(survey_path, products_dir, *bounds[b], schema,
                                          simulated_models, dask_key_name=f"catalog-{b}")
              for b in window] for window in _windows(len(bounds), BATCH_BLOCKS))
    with pq.ParquetWriter(tmp_where, schema, filesystem=fs) as writer, stream:
        for done in compute_ahead(parts, **kwargs):
            for table, cols in done:
                writer.write_table(table)
                stream.write(table)
                rows += table.num_rows
                for name, values in cols.items():
                    keep[name].append(values)
            del done
    store.replace(tmp, path)
    t1 = time.perf_counter()
    if rows != n_spec:
        raise RuntimeError(f"catalog has {rows} rows for {n_spec} spectra")
    written = [path, *stream.files]
    # unique-star view: combine visits over the whole survey (1-D columns only) ...
    cols = {k: np.concatenate(v) for k, v in keep.items()}
    del keep
    sint = _sigma_int_per_visit(products_dir, cols["model"])
    combined = combine_visits(cols["star_id"], cols["MKs"], cols["MKs_err"], sint)
    is_uniq = cols["uniqflag"] == 1
    uniq_ids = cols["star_id"][is_uniq]
    comb = combined.reindex(uniq_ids)
    comb_cols = {"MKs": comb["MKs"].to_numpy(), "MKs_err": comb["MKs_err"].to_numpy(),
                 "MKs_nvisits": comb["MKs_nvisits"].to_numpy()}
    del combined, comb, cols
    dist = {k: v[is_uniq] for k, v in _read_rows(prods, _DISTANCE_INPUTS, 0, n_spec).items()}
    hyper = None
    if distance_cfg.prior == "population":
        # the distance stage's fit to this survey
        hyper = population_prior_from_record(zarr.open_group(
            products_path(products_dir), mode="r", zarr_format=store.ZARR_FORMAT
        ).attrs.get(PRIOR_ATTR))
    # ... then the uniqflag = 1 rows of each block, in catalog order
    per_block = [int(is_uniq[a:b].sum()) for a, b in bounds]
    offsets = np.concatenate([[0], np.cumsum(per_block)])
    n_uniq = int(offsets[-1])
    ucols = {**columns, **_UNIQUE_EXTRA}
    upath = catalog_path(products_dir, "parquet", UNIQUE_NAME)
    uschema = _arrow_schema(ucols, lengths, meta)
    utmp = upath + ".partial"
    utmp_where = store.url_to_fs(utmp)[1]
    pending: list[pa.Table] = []
    n_pending = 0
    # the file's schema is the first part's (with pyarrow's pandas metadata, as
    # pq.write_table of the whole frame has it)
    uwriter: pq.ParquetWriter | None = None

    def unique_task(b: int) -> Any:
        sl = slice(int(offsets[b]), int(offsets[b + 1]))
        return dask.delayed(_unique_block)(
            path, b, {k: v[sl] for k, v in comb_cols.items()},
            {k: v[sl] for k, v in dist.items()}, distance_cfg, uschema, hyper,
            dask_key_name=f"catalog-unique-{b}")

    with TableStreamWriter(upath[: -len(".parquet")], ucols, n_uniq, formats,
                           cards) as ustream:
        try:
            for done in compute_ahead(([unique_task(b) for b in window] for window in
                                       _windows(len(bounds), BATCH_BLOCKS)), **kwargs):
                for part in done:
                    ustream.write(part)
                    if uwriter is None:
                        uwriter = pq.ParquetWriter(utmp_where, part.schema, filesystem=fs)
                    pending.append(part)
                    n_pending += part.num_rows
                    # row groups of exactly ROW_GROUP_ROWS rows, as pq.write_table
                    while n_pending >= ROW_GROUP_ROWS:
                        whole = pa.concat_tables(pending)
                        uwriter.write_table(whole.slice(0, ROW_GROUP_ROWS).combine_chunks())
                        pending = [whole.slice(ROW_GROUP_ROWS)]
                        n_pending -= ROW_GROUP_ROWS
                del done
            if uwriter is None:
                uwriter = pq.ParquetWriter(utmp_where, uschema, filesystem=fs)
            if n_pending:
                uwriter.write_table(pa.concat_tables(pending).combine_chunks())
            pending = []
        finally:
            if uwriter is not None:
                uwriter.close()
    store.replace(utmp, upath)
    written += [upath, *ustream.files]
    store.update_attrs(products_path(products_dir), {"stage_catalog_complete": True})
    log.info("catalog: %d rows (%.1f s), %d unique stars (%.1f s) -> %s", rows, t1 - t0,
             n_uniq, time.perf_counter() - t1, products_dir)
    return {"rows": rows, "unique_stars": n_uniq, "files": written}


def unique_view_from_rows(uniq_rows: pd.DataFrame, combined: pd.DataFrame,
                          distance_cfg: DistanceConfig,
                          distance_inputs: Mapping[str, np.ndarray],
                          hyper: PopulationPrior | None = None) -> pd.DataFrame:
    """The unique-star view of some ``uniqflag == 1`` catalog rows: M_Ks combined over
    the star's visits and the distance recomputed from it (Sec. 7-8, eqs. 18-24).

    ``combined``: ``MKs``, ``MKs_err``, ``MKs_nvisits`` of each row's star
    (:func:`combine_visits`, aligned with the rows); ``distance_inputs``: ``Ks0``,
    ``Ks0_err``, ``parallax_corrected(_error)`` of the rows; ``hyper``: the population
    prior fitted by the distance stage (``distance_cfg.prior == "population"``).

    A row whose combined M_Ks and M_Ks_err (float32, as stored) are its own visit's (a
    star with one visit, or one visit with an M_Ks) keeps the visit's distance columns:
    the distance stage computed them from the same inputs with the same recipe
    (:func:`catalog_distances`, ``distance_cfg`` and ``hyper`` being the run's), so they
    are what the recomputation would give, bit for bit; only the other rows' distance
    posteriors are evaluated again."""
    uniq = uniq_rows.copy()
    mks = combined["MKs"].to_numpy(dtype=np.float32)
    mks_err = combined["MKs_err"].to_numpy(dtype=np.float32)
    redo = ~(_same_values(mks, uniq["MKs"].to_numpy(dtype=np.float32))
             & _same_values(mks_err, uniq["MKs_err"].to_numpy(dtype=np.float32)))
    uniq["MKs"] = mks
    uniq["MKs_err"] = mks_err
    uniq["MKs_nvisits"] = combined["MKs_nvisits"].fillna(0).to_numpy(dtype=np.int16)
    if redo.any():
        inp = {k: np.asarray(distance_inputs[k])[redo] for k in _DISTANCE_INPUTS}
        res = catalog_distances(uniq["ra"].to_numpy()[redo], uniq["dec"].to_numpy()[redo],
                                inp["Ks0"], inp["Ks0_err"], mks[redo], mks_err[redo],
                                uniq["binary_flag"].to_numpy()[redo],
                                calibrated_parallax(inp), inp["parallax_corrected_error"],
                                distance_cfg, hyper)
        for k in _UNIQUE_DISTANCE_COLUMNS:
            values = uniq[k].to_numpy(copy=True)  # the visit's, in the catalog's dtype
            values[redo] = res[k]
            uniq[k] = values
    flags = uniq["distance_flags"].to_numpy()
    no_dis = ~np.isfinite(uniq["dis"].to_numpy())
    q = uniq["quality_flags"].to_numpy().copy()
    q &= ~(QUALITY_BITS["no_distance"] | QUALITY_BITS["distance_parallax_only"]
           | QUALITY_BITS["distance_truncated"])
    q[no_dis] |= QUALITY_BITS["no_distance"]
    q[(flags & DISTANCE_FLAG_BITS["parallax_only"]) > 0] |= QUALITY_BITS[
        "distance_parallax_only"]
    q[(flags & DISTANCE_FLAG_BITS["truncated_by_prior_edge"]) > 0] |= QUALITY_BITS[
        "distance_truncated"]
    uniq["quality_flags"] = q
    return uniq


#: the columns of :func:`obpipe.distance.catalog_distances` in a catalog row
_UNIQUE_DISTANCE_COLUMNS = ("dis", "dis_low", "dis_high", "logdis", "logdis_err",
                            "distance_flags", "X", "Y", "Z")


def _same_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise: equal, or both NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b))
