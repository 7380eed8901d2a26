"""Star tables (Gaia x 2MASS x optical) read with astropy and joined to spectra.

* :func:`read_table` reads CSV, ECSV, FITS, Parquet and VOTable (format from the
  file name, or given).
* :func:`normalize_table` maps Gaia archive, 2MASS (and common optical) column
  names to the cube's names (:data:`obpipe.io.store.SPECTRUM_COLUMNS`), with a
  user column map for anything else, and lists table-level problems (no
  parallax, no Ks).
* :class:`StarTable` joins per-spectrum metadata to the table by obsid/specid, by
  file name, or by sky position (astropy ``match_to_catalog_sky``, configurable
  radius) when no id is shared; each spectrum gets flags (``no_table_match``,
  ``negative_parallax`` ...) instead of being dropped.
* :func:`assign_stars` groups repeat visits (same Gaia source, else friends-of-
  friends on the sky) into one ``star_id`` in the paper's ``Shhmmss+ddmmss`` form
  and orders visits by S/N into ``uniqflag``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from obpipe.io.store import SPECTRUM_COLUMNS

log = logging.getLogger(__name__)

#: archive column name (lower case) -> cube name. Gaia archive, 2MASS PSC, common optical.
STANDARD_COLUMNS: dict[str, str] = {
    # identifiers and position
    "obsid": "obsid", "specid": "obsid", "combined_obsid": "obsid",
    "fitsname": "fitsname", "filename": "fitsname", "combined_file": "fitsname",
    "fits_name": "fitsname",
    "ra": "ra", "dec": "dec", "raj2000": "ra", "dej2000": "dec", "ra_icrs": "ra",
    "de_icrs": "dec", "combined_ra_obs": "ra", "combined_dec_obs": "dec",
    # Gaia archive (DR2 / DR3 gaia_source)
    "source_id": "gaia_id", "gaia_id": "gaia_id", "gaia_source_id": "gaia_id",
    "parallax": "parallax", "parallax_error": "parallax_error",
    "pmra": "pmra", "pmra_error": "pmra_error", "pmdec": "pmdec", "pmdec_error": "pmdec_error",
    "ruwe": "ruwe", "astrometric_params_solved": "astrometric_params_solved",
    "nu_eff_used_in_astrometry": "nu_eff_used_in_astrometry", "pseudocolour": "pseudocolour",
    "ecl_lat": "ecl_lat",
    "phot_g_mean_mag": "phot_g_mean_mag", "phot_bp_mean_mag": "phot_bp_mean_mag",
    "phot_rp_mean_mag": "phot_rp_mean_mag",
    "phot_g_mean_mag_error": "phot_g_mean_mag_error",
    "phot_bp_mean_mag_error": "phot_bp_mean_mag_error",
    "phot_rp_mean_mag_error": "phot_rp_mean_mag_error",
    "gaia_release": "gaia_release",
    # 2MASS PSC
    "j_m": "J", "j_msigcom": "J_err", "j_cmsig": "J_err", "h_m": "H", "h_msigcom": "H_err",
    "h_cmsig": "H_err", "ks_m": "Ks", "ks_msigcom": "Ks_err", "k_m": "Ks",
    "k_msigcom": "Ks_err", "ks_cmsig": "Ks_err", "jmag": "J", "e_jmag": "J_err",
    "hmag": "H", "e_hmag": "H_err", "kmag": "Ks", "e_kmag": "Ks_err",
    # optical g r i (AB): plain names, APASS (VizieR), Pan-STARRS
    "gmag": "g", "e_gmag": "g_err", "rmag": "r", "e_rmag": "r_err", "imag": "i",
    "e_imag": "i_err",
    "gmeanpsfmag": "g", "gmeanpsfmagerr": "g_err", "rmeanpsfmag": "r",
    "rmeanpsfmagerr": "r_err", "imeanpsfmag": "i", "imeanpsfmagerr": "i_err",
    # survey stellar parameters (LAMOST catalogue names)
    "teff": "teff", "teff_err": "teff_err", "logg": "logg", "logg_err": "logg_err",
    "feh": "feh", "feh_err": "feh_err", "fe_h": "feh", "fe_h_err": "feh_err",
}
#: columns of the cube that come from the star table
TABLE_COLUMNS: tuple[str, ...] = tuple(
    c for c in SPECTRUM_COLUMNS
    if c not in ("specid", "fitsname", "star_id", "uniqflag", "ra", "dec", "mjd", "snr_g",
                 "rv", "rv_err")
)
#: Gaia flux-over-error -> magnitude error: sigma_m = 2.5 / ln(10) / (F / sigma_F)
_FLUX_OVER_ERROR = {"phot_g_mean_flux_over_error": "phot_g_mean_mag_error",
                    "phot_bp_mean_flux_over_error": "phot_bp_mean_mag_error",
                    "phot_rp_mean_flux_over_error": "phot_rp_mean_mag_error"}

FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits",
           ".fits.gz": "fits", ".parquet": "parquet", ".pq": "parquet", ".vot": "votable",
           ".votable": "votable", ".xml": "votable"}


class TableError(ValueError):
    """A star table that cannot be used; the message names the file and the problem."""


def table_format(path: str) -> str:
    """astropy ``format=`` for a table file name (CSV, ECSV, FITS, Parquet, VOTable)."""
    name = path.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return FORMATS[ext]
    raise TableError(
        f"{path}: unknown table format (expected one of {', '.join(sorted(FORMATS))}); "
        "pass format="
    )


def read_table(path: str | os.PathLike[str], format: str | None = None) -> Any:
    """Read a table file with astropy (``astropy.table.Table``)."""
    from astropy.table import Table

    path = os.fspath(path)
    fmt = format or table_format(path)
    try:
        return Table.read(path, format=fmt)
    except FileNotFoundError as exc:
        raise TableError(f"{path}: table file not found") from exc
    except Exception as exc:
        raise TableError(f"{path}: cannot read as {fmt} ({type(exc).__name__}: {exc})") from exc


def _parquet_frame(path: str) -> pd.DataFrame | None:
    """A plain Parquet table read with pyarrow, as :func:`_to_pandas` would give it.

    The same conversions (1-D columns only; floats and integers / booleans with
    nulls -> float64 with NaN; text stripped, nulls -> "") without importing
    ``astropy.table`` (a second of start-up for a command-line ingest). None for
    anything astropy's reader would interpret (serialised mixin columns, binary,
    temporal, nested or decimal types): read it with astropy.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except FileNotFoundError as exc:
        raise TableError(f"{path}: table file not found") from exc
    except Exception:  # not Parquet: let astropy say why
        return None
    meta = schema.metadata or {}
    if b"__serialized_columns__" in meta.get(b"table_meta_yaml", b""):
        return None
    simple = (pa.types.is_floating, pa.types.is_integer, pa.types.is_boolean,
              pa.types.is_string, pa.types.is_large_string)
    nested = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
    if not all(any(f(field.type) for f in simple + nested) for field in schema):
        return None
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise TableError(f"{path}: cannot read as parquet ({type(exc).__name__}: {exc})") \
            from exc
    cols: dict[str, np.ndarray] = {}
    for name, column in zip(table.column_names, table.columns, strict=True):
        kind = column.type
        if any(f(kind) for f in nested):
            continue  # array-valued columns are not star properties
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            cols[name] = np.array([("" if v is None else v.strip())
                                   for v in column.to_pylist()], dtype=object)
        elif pa.types.is_floating(kind) or column.null_count:
            cols[name] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        else:
            cols[name] = column.to_numpy()
    return pd.DataFrame(cols)


def read_table_frame(path: str | os.PathLike[str], format: str | None = None) -> pd.DataFrame:
    """Read a table file into a DataFrame (plain Parquet with pyarrow, else astropy)."""
    path = os.fspath(path)
    fmt = format or table_format(path)
    if fmt == "parquet":
        frame = _parquet_frame(path)
        if frame is not None:
            return frame
    return _to_pandas(read_table(path, format))


def _to_pandas(table: Any) -> pd.DataFrame:
    cols = {}
    for name in table.colnames:
        col = table[name]
        if getattr(col, "ndim", 1) != 1:
            continue  # array-valued columns are not star properties
        data = np.ma.asarray(col)
        if data.dtype.kind in "fc":
            cols[name] = np.ma.filled(data.astype(np.float64), np.nan)
        elif data.dtype.kind in "iub":
            if np.ma.is_masked(data):
                cols[name] = np.ma.filled(data.astype(np.float64), np.nan)
            else:
                cols[name] = np.asarray(data)
        else:
            text = np.ma.filled(data.astype(str), "") if np.ma.is_masked(data) \
                else np.asarray(data).astype(str)
            cols[name] = np.char.strip(text).astype(object)
    return pd.DataFrame(cols)


def normalize_table(
    table: Any,
    column_map: Mapping[str, str] | None = None,
    gaia_release: str = "auto",
    source: str = "<table>",
) -> tuple[pd.DataFrame, list[str]]:
    """Rename a star table's columns to the cube's names; return (frame, problems).

    ``column_map`` maps the table's names to cube names and wins over the
    standard maps (case-insensitive). Keys ``obsid``, ``fitsname``, ``ra``,
    ``dec`` are kept for the join. ``gaia_release``: "DR2", "DR3", or "auto"
    (a ``gaia_release`` column, else DR3 if DR3-only columns are present).
    ``problems`` lists table-level gaps (``table_has_no_parallax``,
    ``table_has_no_Ks``), each of which becomes a flag of every joined spectrum.
    """
    df = table if isinstance(table, pd.DataFrame) else _to_pandas(table)
    user = {k.lower(): v for k, v in (column_map or {}).items()}
    valid = set(SPECTRUM_COLUMNS) | {"obsid", "fitsname"}
    for k, v in user.items():
        if v not in valid:
            raise TableError(f"{source}: column map target {v!r} (for {k!r}) is not a cube "
                             f"column; valid: {', '.join(sorted(valid))}")
    rename: dict[str, str] = {}
    taken: set[str] = set()
    # user map first, then exact cube names, then the standard archive names
    for pass_ in ("user", "exact", "standard"):
        for name in df.columns:
            if name in rename:
                continue
            low = name.lower()
            target = (user.get(low) if pass_ == "user"
                      else name if pass_ == "exact" and name in valid
                      else STANDARD_COLUMNS.get(low) if pass_ == "standard" else None)
            if target and target not in taken:
                rename[name] = target
                taken.add(target)
    out = pd.DataFrame({new: df[old].to_numpy() for old, new in rename.items()})
    for old, new in rename.items():  # text in a numeric column: name file, column, row
        col = SPECTRUM_COLUMNS.get(new)
        if (new == "obsid" or (col is not None and col.dtype != "str")) \
                and not pd.api.types.is_numeric_dtype(out[new]):
            out[new] = _numeric_column(out[new], source, old)
    for src, dst in _FLUX_OVER_ERROR.items():
        match = [c for c in df.columns if c.lower() == src]
        if dst not in out and match:
            with np.errstate(divide="ignore", invalid="ignore"):
                out[dst] = 2.5 / np.log(10.0) / df[match[0]].to_numpy(np.float64)
    if "fitsname" in out:
        out["fitsname"] = [os.path.basename(str(v)).removesuffix(".gz") for v in out["fitsname"]]
    problems = []
    if "parallax" not in out:
        problems.append("table_has_no_parallax")
    if "Ks" not in out:
        problems.append("table_has_no_Ks")
    if not ({"obsid", "fitsname"} & set(out) or {"ra", "dec"} <= set(out)):
        raise TableError(f"{source}: no column to join on: need obsid/specid, fitsname, or "
                         "ra and dec (or map one with a column map)")
    if "gaia_release" not in out:
        release = gaia_release.upper()
        if release == "AUTO":
            release = "DR3" if {"nu_eff_used_in_astrometry", "pseudocolour"} & set(out) \
                or "ruwe" in out else "DR2"
        out["gaia_release"] = np.full(len(out), release, dtype=object)
    for key in ("obsid",):
        if key in out:
            vals = pd.to_numeric(out[key], errors="coerce")
            out[key] = vals.fillna(-1).astype(np.int64)
    for p in problems:
        log.warning("%s: %s", source, p)
    return out, problems


_MISSING_TEXT = {"", "nan", "null", "none", "--", "n/a", "na"}


def _numeric_column(values: pd.Series, source: str, column: str) -> pd.Series:
    """A text column of a numeric quantity as numbers; empty / "nan" / "null" cells are
    missing (NaN). Raises :class:`TableError` naming the file, the column and the
    (1-based data) row of the first cell that is not a number."""
    text = values.astype(str).str.strip()
    missing = text.str.lower().isin(_MISSING_TEXT)
    numbers = pd.to_numeric(text.where(~missing, None), errors="coerce")
    bad = np.flatnonzero(numbers.isna().to_numpy() & ~missing.to_numpy())
    if bad.size:
        k = int(bad[0])
        raise TableError(f"{source}: column {column!r}, row {k + 1}: {values.iloc[k]!r} is not "
                         f"a number ({bad.size} such rows)")
    return numbers


class StarTable:
    """A normalised star table ready to be joined to spectra.

    ``match_radius_arcsec``: radius of the sky-position join. The position
    catalogue (and its KD-tree) is built once and reused for every batch.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        problems: list[str] | None = None,
        source: str = "<table>",
        match_radius_arcsec: float = 3.0,
    ) -> None:
        self.frame = frame.reset_index(drop=True)
        self.problems = list(problems or [])
        self.source = source
        self.match_radius_arcsec = float(match_radius_arcsec)
        self._coord: Any = None
        # id -> first table row, and column values: built once, reused for every batch
        self._lookups: dict[str, pd.Series] = {}
        self._values: dict[str, np.ndarray] = {}
        self.duplicates: list[str] = []
        self._duplicate_ids: dict[str, set[Any]] = {}
        for key in ("obsid", "fitsname"):
            if key in self.frame:
                dup = self.frame[key].duplicated(keep="first")
                if key == "obsid":
                    dup &= self.frame[key] >= 0
                if dup.any():
                    first = self.frame.loc[dup, key].iloc[0]
                    msg = (f"{source}: {int(dup.sum())} rows repeat a {key} (e.g. {first}); "
                           "the first row of each is used")
                    log.warning(msg)
                    self.duplicates.append(msg)
                    self._duplicate_ids[key] = set(self.frame.loc[dup, key].tolist())
        #: error columns (cube names) with negative values -> table rows (0-based)
        self.negative_errors: dict[str, np.ndarray] = {}
        for name in self.frame.columns:
            if name.endswith(("_err", "_error")) and self.frame[name].dtype.kind in "fiu":
                rows = np.flatnonzero(self.frame[name].to_numpy(np.float64) < 0)
                if rows.size:
                    self.negative_errors[name] = rows
                    log.warning("%s: %d rows with a negative %s (e.g. row %d); the rows "
                                "matched to them are flagged negative_%s", source, rows.size,
                                name, rows[0] + 1, name)

    @property
    def issues(self) -> list[str]:
        """Table-level findings for the ingest report and summary: repeated ids,
        negative errors (each names the file, the column and the count)."""
        out = list(self.duplicates)
        for name, rows in self.negative_errors.items():
            out.append(f"{self.source}: {rows.size} rows with a negative {name} (e.g. row "
                       f"{rows[0] + 1}); matched spectra are flagged negative_{name}")
        return out

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        column_map: Mapping[str, str] | None = None,
        gaia_release: str = "auto",
        match_radius_arcsec: float = 3.0,
        format: str | None = None,
    ) -> StarTable:
        """Read and normalise a table file (see :func:`read_table`, :func:`normalize_table`)."""
        path = os.fspath(path)
        frame, problems = normalize_table(read_table_frame(path, format), column_map,
                                          gaia_release, source=path)
        return cls(frame, problems, path, match_radius_arcsec)

    @property
    def join_key(self) -> str:
        """The id the join uses first: ``obsid``, ``fitsname``, or ``position``."""
        if "obsid" in self.frame:
            return "obsid"
        if "fitsname" in self.frame:
            return "fitsname"
        return "position"

    def _position_match(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        import astropy.units as u
        from astropy.coordinates import SkyCoord

        out = np.full(ra.size, -1, np.int64)
        if not {"ra", "dec"} <= set(self.frame):
            return out
        if self._coord is None:
            t_ra = self.frame["ra"].to_numpy(np.float64)
            t_dec = self.frame["dec"].to_numpy(np.float64)
            ok = np.isfinite(t_ra) & np.isfinite(t_dec)
            self._coord_rows = np.flatnonzero(ok)
            self._coord = SkyCoord(t_ra[ok] * u.deg, t_dec[ok] * u.deg) if ok.any() else False
        good = np.isfinite(ra) & np.isfinite(dec)
        if self._coord is False or not good.any():
            return out
        cat = self._coord
        idx, sep, _ = SkyCoord(ra[good] * u.deg, dec[good] * u.deg).match_to_catalog_sky(cat)
        hit = sep.arcsec <= self.match_radius_arcsec
        rows = np.where(hit, self._coord_rows[np.atleast_1d(idx)], -1)
        out[good] = rows
        return out

    def _lookup(self, key: str) -> pd.Series:
        """First table row of each value of column ``key`` (built once per table)."""
        if key not in self._lookups:
            index = pd.Index(self.frame[key].to_numpy())
            first = ~index.duplicated(keep="first")
            self._lookups[key] = pd.Series(np.flatnonzero(first), index=index[first])
        return self._lookups[key]

    def _column(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._values[name] = self.frame[name].to_numpy()
        return self._values[name]

    def match_rows(self, meta: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Table row of each spectrum (-1 = none) and how it matched (obsid/fitsname/position).

        ``meta`` has columns obsid, fitsname, ra, dec (and ``obsid_synthetic``:
        True where the file had no OBSID).
        """
        n = len(meta)
        rows = np.full(n, -1, np.int64)
        how = np.full(n, "", dtype=object)
        synthetic = meta.get("obsid_synthetic", pd.Series(np.zeros(n, bool))).to_numpy(bool)
        if "obsid" in self.frame:
            r = self._lookup("obsid").reindex(meta["obsid"].to_numpy()).to_numpy()
            hit = ~np.isnan(r) & ~synthetic
            rows[hit] = r[hit].astype(np.int64)
            how[hit] = "obsid"
        if "fitsname" in self.frame:
            r = self._lookup("fitsname").reindex(meta["fitsname"].to_numpy()).to_numpy()
            hit = (rows < 0) & ~np.isnan(r)
            rows[hit] = r[hit].astype(np.int64)
            how[hit] = "fitsname"
        # position only where no id is shared between the spectrum and the table
        by_position = (rows < 0) & (
            np.full(n, self.join_key == "position") | (synthetic & ("fitsname" not in self.frame))
        )
        if by_position.any():
            r = self._position_match(meta["ra"].to_numpy(np.float64)[by_position],
                                     meta["dec"].to_numpy(np.float64)[by_position])
            sub = np.flatnonzero(by_position)
            rows[sub] = r
            how[sub[r >= 0]] = "position"
        return rows, how

    def join(self, meta: pd.DataFrame) -> tuple[dict[str, np.ndarray], list[list[str]]]:
        """Cube columns from the table for each spectrum in ``meta``, and per-row flags.

        Unmatched spectra get fill values (NaN / -9 / "") and ``no_table_match``;
        negative parallaxes are kept as measured and flagged; table-level gaps
        (no parallax / Ks column) are flagged on every row.
        """
        rows, how = self.match_rows(meta)
        n = len(meta)
        out: dict[str, np.ndarray] = {}
        hit = rows >= 0
        for name in TABLE_COLUMNS + ("obsid", "ra", "dec"):
            col = SPECTRUM_COLUMNS.get(name)
            if name not in self.frame:
                continue
            values = self._column(name)
            if col is None or col.dtype == "str":
                arr = np.full(n, "" if col else None, dtype=object)
                arr[hit] = [str(v) for v in values[rows[hit]]]
            else:
                dtype = np.dtype(col.dtype)
                arr = np.full(n, col.fill, dtype=np.float64 if dtype.kind == "f" else dtype)
                taken = values[rows[hit]]
                if dtype.kind in "iu":
                    taken = np.where(np.isfinite(taken.astype(np.float64)), taken, col.fill)
                arr[hit] = taken.astype(arr.dtype)
            out[name] = arr
        flags: list[list[str]] = [list(self.problems) for _ in range(n)]
        plx = out.get("parallax")
        for k in range(n):
            if not hit[k]:
                flags[k].append("no_table_match")
            elif plx is not None and plx[k] < 0:
                flags[k].append("negative_parallax")
        for key, ids in self._duplicate_ids.items():  # matched on an id the table repeats
            if how.size and key in self.frame:
                values = self._column(key)
                for k in np.flatnonzero((how == key) & hit):
                    if values[rows[k]] in ids:
                        flags[k].append(f"duplicate_table_{key}")
        for name, bad in self.negative_errors.items():
            for k in np.flatnonzero(np.isin(rows, bad) & hit):
                flags[k].append(f"negative_{name}")
        out["_table_row"] = rows
        out["_match"] = how
        return out, flags


def star_identifier(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Star ids in the paper's form ``Shhmmss+ddmmss`` from RA (hours) and Dec (Table 1)."""
    ra_s = np.round(np.asarray(ra_deg) / 15.0 * 3600.0).astype(np.int64) % 86400
    dec_s = np.round(np.abs(np.asarray(dec_deg)) * 3600.0).astype(np.int64)
    sign = np.where(np.asarray(dec_deg) < 0, "-", "+")
    return np.array(
        [
            f"S{r // 3600:02d}{(r // 60) % 60:02d}{r % 60:02d}{s}{d // 3600:02d}"
            f"{(d // 60) % 60:02d}{d % 60:02d}"
            for r, s, d in zip(ra_s, sign, dec_s, strict=True)
        ],
        dtype=object,
    )


def uniqflag_by_snr(star_index: np.ndarray, snr: np.ndarray) -> np.ndarray:
    """1 for the highest-S/N visit of each star, 2, 3, ... for the others (Table 1)."""
    order = np.lexsort((-np.asarray(snr), star_index))
    flag = np.empty(star_index.size, dtype=np.int16)
    sorted_star = star_index[order]
    first = np.r_[True, sorted_star[1:] != sorted_star[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(order.size), 0))
    flag[order] = (np.arange(order.size) - group_start + 1).astype(np.int16)
    return flag


def connected_labels(n: int, edges_i: np.ndarray, edges_j: np.ndarray) -> np.ndarray:
    """Connected components of an undirected graph on ``n`` nodes given by edge lists:
    each node's label is the smallest node index in its component (min-label
    propagation with pointer jumping, numpy only; rounds grow with the log of the
    longest chain, a handful for visits of one star)."""
    label = np.arange(n, dtype=np.int64)
    ei = np.asarray(edges_i, np.int64)
    ej = np.asarray(edges_j, np.int64)
    if not ei.size:
        return label
    while True:
        low = np.minimum(label[ei], label[ej])
        new = label.copy()
        np.minimum.at(new, ei, low)
        np.minimum.at(new, ej, low)
        new = new[new]  # pointer jumping: a node takes its representative's label
        while True:
            nxt = new[new]
            if np.array_equal(nxt, new):
                break
            new = nxt
        if np.array_equal(new, label):
            return label
        label = new


def assign_stars(
    ra: np.ndarray,
    dec: np.ndarray,
    gaia_id: np.ndarray,
    snr: np.ndarray,
    radius_arcsec: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Group spectra into stars; return (star_id, uniqflag) per spectrum.

    Visits with the same Gaia ``source_id`` (> 0) are one star; the others are
    joined friends-of-friends within ``radius_arcsec`` on the sky. The star's id is
    :func:`star_identifier` of its highest-S/N visit's
    position (``Shhmmss+ddmmss``); ``uniqflag`` is 1 for that visit, 2, 3 ... by
    decreasing S/N. Spectra without a position and a Gaia id get star_id "" and
    uniqflag 1.
    """
    ra = np.asarray(ra, np.float64)
    dec = np.asarray(dec, np.float64)
    gaia_id = np.asarray(gaia_id, np.int64)
    snr = np.asarray(snr, np.float64)
    n = ra.size
    pos_ok = np.isfinite(ra) & np.isfinite(dec)
    edges_i: list[np.ndarray] = []
    edges_j: list[np.ndarray] = []
    has_gaia = gaia_id > 0
    if has_gaia.any():
        idx = np.flatnonzero(has_gaia)
        _, first = np.unique(gaia_id[idx], return_inverse=True)
        anchor = np.full(first.max() + 1, -1, np.int64)
        anchor[first[::-1]] = idx[::-1]
        edges_i.append(idx)
        edges_j.append(anchor[first])
    free = np.flatnonzero(~has_gaia & pos_ok)
    if free.size > 1:
        import astropy.units as u
        from astropy.coordinates import SkyCoord, search_around_sky

        c = SkyCoord(ra[free] * u.deg, dec[free] * u.deg)
        a, b, _, _ = search_around_sky(c, c, radius_arcsec * u.arcsec)
        edges_i.append(free[a])
        edges_j.append(free[b])
    ii = np.concatenate(edges_i) if edges_i else np.zeros(0, np.int64)
    jj = np.concatenate(edges_j) if edges_j else np.zeros(0, np.int64)
    label = connected_labels(n, ii, jj)
    flag = uniqflag_by_snr(label, np.nan_to_num(snr, nan=-1.0))
    best = np.full(label.max() + 1 if n else 0, -1, np.int64)
    best[label[flag == 1]] = np.flatnonzero(flag == 1)
    star_id = np.full(n, "", dtype=object)
    rep = best[label]
    ok = pos_ok[rep]
    if ok.any():
        star_id[ok] = star_identifier(ra[rep[ok]], dec[rep[ok]])
    return star_id, flag
