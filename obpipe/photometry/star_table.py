"""``obpipe photometry TABLE --out OUT.parquet``: the photometry stage on a star table.

The same science as the photometry stage (Sec. 4, eqs. 11, 12, 24;
:func:`obpipe.photometry.block.photometry_block`: E(B-V) from adjacent-band colour
excesses, A_Ks, the Gaia parallax zero-point and the geometric M_Ks) for a table of
stars without spectra, e.g. a Gaia archive query joined to 2MASS.

Input
-----
CSV, ECSV, Parquet, FITS or VOTable (:func:`obpipe.io.tables.read_table_frame`), with the
Gaia archive's own column names (``source_id``, ``parallax``, ``parallax_error``,
``phot_g_mean_mag``, ``phot_bp_mean_mag``, ``phot_rp_mean_mag``, the
``phot_*_mean_flux_over_error`` columns for their errors, ``astrometric_params_solved``,
``nu_eff_used_in_astrometry``, ``pseudocolour``, ``ecl_lat``) and 2MASS ``j_m``, ``h_m``,
``ks_m`` with ``j_msigcom`` / ``h_msigcom`` / ``ks_msigcom`` where present; ``teff``,
``logg`` (and errors) and optical g/r/i are used when given. Names are mapped by
:data:`obpipe.io.tables.STANDARD_COLUMNS` (case-insensitive), no column map needed.

* Required: ``source_id``, ``parallax``, ``parallax_error`` and at least two of the
  E(B-V) bands; otherwise :class:`obpipe.io.tables.TableError` names the missing column.
* A value that is not a number in a numeric column: ``TableError`` naming the file, the
  column, the row (1-based, header excluded) and the value (checked by
  :func:`obpipe.io.tables.normalize_table`).
* Missing values (empty / NaN) are kept as missing: the row gets NaN outputs and a flag,
  never dropped. A magnitude without an error gets
  :data:`obpipe.photometry.extinction.DEFAULT_MAG_ERRORS_MAG` (2MASS 0.03 mag, Gaia
  0.01 mag, g/r/i 0.03 mag) and flag bit 11.
* Teff missing (a table without spectra): the default intrinsic colours of
  :mod:`obpipe.photometry.extinction` (20 kK, inflated error), flag bit 1.

Output
------
A Parquet table with one row per input row (repeated sources stay repeated), columns
:data:`OUTPUT_COLUMNS` plus ``ebv_<blue>_<red>`` for every adjacent colour whose two
bands are in the input, and the extinction model in the file's metadata (key ``obpipe``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from obpipe.io.tables import TableError, normalize_table, read_table_frame
from obpipe.photometry import extinction
from obpipe.photometry.block import SURVEY_VARS, photometry_block
from obpipe.photometry.options import BAND_COLUMNS

log = logging.getLogger(__name__)

#: output columns (besides the per-colour ``ebv_<blue>_<red>``), in order
OUTPUT_COLUMNS: tuple[str, ...] = (
    "source_id", "ebv", "ebv_err", "ebv_nbands", "ebv_chi2", "R_Ks", "r_v", "r_v_err",
    "AKs", "AKs_err", "parallax_offset", "parallax_corrected", "MKs_geo", "MKs_geo_err",
    "photometry_flags",
)
#: input columns (Gaia archive names) without which the command refuses the table
REQUIRED_COLUMNS: tuple[str, ...] = ("source_id", "parallax", "parallax_error")
_JOIN_KEYS = ("obsid", "specid", "combined_obsid", "fitsname", "filename", "combined_file")


def _require(frame: pd.DataFrame, source: str) -> None:
    lower = {c.lower() for c in frame.columns}
    for name in REQUIRED_COLUMNS:
        if name not in lower:
            raise TableError(f"{source}: required column {name!r} is missing "
                             f"(columns: {', '.join(frame.columns)})")


def _source_ids(frame: pd.DataFrame) -> np.ndarray:
    vals = frame["gaia_id"].to_numpy()
    if vals.dtype.kind == "f":  # NaN in an integer column: keep -1 as the missing id
        return np.where(np.isfinite(vals), vals, -1).astype(np.int64)
    return vals.astype(np.int64)


def read_inputs(
    path: str | os.PathLike[str],
    format: str | None = None,
    gaia_release: str = "auto",
    bands: tuple[str, ...] = extinction.EBV_BANDS,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Read a star table: (``source_id``, inputs of :func:`photometry_block`).

    Raises :class:`obpipe.io.tables.TableError` for a missing required column, a
    non-numeric value, or fewer than two E(B-V) bands.
    """
    source = os.fspath(path)
    raw = read_table_frame(source, format)
    _require(raw, source)
    frame = raw
    if not any(c.lower() in _JOIN_KEYS for c in raw.columns) and not (
            {"ra", "dec"} <= {c.lower() for c in raw.columns}):
        # normalize_table wants a key to join spectra on; a photometry table needs none
        frame = raw.assign(obpipe_row=np.arange(len(raw)))
        norm, _ = normalize_table(frame, {"obpipe_row": "obsid"}, gaia_release, source=source)
    else:
        norm, _ = normalize_table(frame, None, gaia_release, source=source)
    present = [b for b in bands if BAND_COLUMNS[b][0] in norm]
    if len(present) < 2:
        names = ", ".join(BAND_COLUMNS[b][0] for b in bands)
        raise TableError(f"{source}: fewer than two E(B-V) bands among the columns "
                         f"(need two of: {names}, under Gaia/2MASS archive names)")
    inputs: dict[str, np.ndarray] = {}
    for name in SURVEY_VARS:
        if name in norm:
            vals = norm[name].to_numpy()
            inputs[name] = vals if name == "gaia_release" else vals.astype(np.float64)
    return _source_ids(norm), inputs


def photometry_table(
    source_id: np.ndarray,
    inputs: Mapping[str, np.ndarray],
    **options: Any,
) -> pd.DataFrame:
    """The photometry of a star table (one row per input row), see the module docstring.

    ``options`` are those of :func:`obpipe.photometry.block.photometry_block` (``bands``,
    ``law``, ``r_v``, ``r_v_scatter``, ``extinction_dependent``, ``coefficients``...).
    """
    bands = tuple(options.get("bands", extinction.EBV_BANDS))
    out = photometry_block(inputs, per_colour=True, **options)
    cols: dict[str, np.ndarray] = {"source_id": np.asarray(source_id, np.int64)}
    for name in OUTPUT_COLUMNS[1:]:
        cols[name] = out[name]
        if name == "ebv_chi2":  # per-colour estimates next to the combined one
            for blue, red in zip(bands[:-1], bands[1:], strict=True):
                if BAND_COLUMNS[blue][0] in inputs and BAND_COLUMNS[red][0] in inputs:
                    key = f"ebv_{blue}_{red}".lower()
                    cols[key] = out[key]
    return pd.DataFrame(cols)


def run_photometry_table(
    table_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    format: str | None = None,
    gaia_release: str = "auto",
    **options: Any,
) -> pd.DataFrame:
    """Read ``table_path``, compute :func:`photometry_table`, write Parquet ``out_path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    bands = tuple(options.get("bands", extinction.EBV_BANDS))
    source_id, inputs = read_inputs(table_path, format, gaia_release, bands)
    frame = photometry_table(source_id, inputs, **options)
    model = {
        "input": os.fspath(table_path),
        "law": options.get("law", extinction.DEFAULT_LAW),
        "r_v": options.get("r_v", extinction.DEFAULT_R_V),
        "r_v_scatter": options.get("r_v_scatter", extinction.R_V_SCATTER),
        "extinction_dependent": options.get("extinction_dependent", True),
        "intrinsic_mag_error_mag": options.get("intrinsic_mag_error_mag",
                                               extinction.INTRINSIC_MAG_ERROR_MAG),
        "bands": list(bands),
        "default_mag_errors_mag": extinction.DEFAULT_MAG_ERRORS_MAG,
    }
    try:
        from obpipe.version import __version__ as version
    except ImportError:  # pragma: no cover
        version = "unknown"
    model["obpipe_version"] = version
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"obpipe"] = json.dumps(model).encode()
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(out_path))), exist_ok=True)
    pq.write_table(table.replace_schema_metadata(meta), os.fspath(out_path))
    n_ebv = int(np.isfinite(frame["ebv"]).sum())
    log.info("photometry: %d rows -> %s (%d with E(B-V), %d with MKs_geo)", len(frame),
             out_path, n_ebv, int(np.isfinite(frame["MKs_geo"]).sum()))
    return frame
