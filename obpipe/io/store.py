"""The survey cube: a chunked Zarr store of spectra read and written with xarray.

Layout (DESIGN.md, "The cube")::

    survey.zarr/                 root group: the observed survey
        wave (wave)              vacuum wavelength, AA (coordinate)
        flux, ivar (spec, wave)  float32, flux in 1e-17 erg/s/cm2/AA and its inverse variance
        mask (spec, wave)        uint8 bit mask (MASK_BITS)
        <column> (spec)          one variable per per-spectrum column (SPECTRUM_COLUMNS)
        truth/                   ground truth of a simulated survey (TRUTH_COLUMNS);
                                 read by validation only, never by a stage

Chunks hold whole wavelength rows (``chunk_size`` spectra x 3,909 pixels), because
smoothing and PCA need whole rows. Stores are written block by block: ``create_cube``
writes the metadata and empty arrays, ``write_block`` fills one chunk-aligned region,
and ``mark_complete`` sets the root attribute ``obpipe_complete`` last, so a store
from a killed run is never taken for a finished one.

The functions accept local paths or fsspec URLs (``memory://``, ``s3://`` ...).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import xarray as xr
import zarr

from obpipe.spectra.grid import is_lamost_grid, wavelength_grid

log = logging.getLogger(__name__)

# A ``file://`` URL goes through zarr's FsspecStore, whose local filesystem does not
# create parent directories (writing ``file:///x/s.zarr/zarr.json`` fails with
# FileNotFoundError); object stores (s3://, gs://, memory://) have no directories.
# Default the local filesystem to create them, so a file:// URL behaves like s3://.
# A user's own fsspec configuration of ``auto_mkdir`` wins.
fsspec.config.conf.setdefault("file", {}).setdefault("auto_mkdir", True)

ZARR_FORMAT = 3
#: Consolidated metadata is not part of the Zarr v3 spec: always off, on write and read.
CONSOLIDATED = False
COMPLETE_ATTR = "obpipe_complete"
TRUTH_GROUP = "truth"
SPECTRAL_VARIABLES = ("flux", "ivar", "mask")

#: Bits of the per-pixel ``mask``.
MASK_BITS: dict[str, int] = {
    "bad_pixel": 1,  # flagged by the reduction (LAMOST andmask/ormask) or a detector artefact
    "no_coverage": 2,  # outside the wavelength coverage of the original spectrum
    "sky_residual": 4,  # strong night-sky line residual
    "telluric": 8,  # strong telluric absorption band
}


@dataclass(frozen=True)
class Column:
    """A per-spectrum column: dtype, astropy unit string, description, fill value."""

    dtype: str
    unit: str
    description: str

    @property
    def fill(self) -> Any:
        if self.dtype == "str":
            return ""
        if self.dtype.startswith("float"):
            return np.nan
        return -9


def _c(dtype: str, unit: str, description: str) -> Column:
    return Column(dtype, unit, description)


#: The observed per-spectrum table: Table 1 names of the paper where they exist.
SPECTRUM_COLUMNS: dict[str, Column] = {
    "specid": _c("int64", "", "unique spectrum id (LAMOST obsid)"),
    "fitsname": _c("str", "", "file name of the spectrum"),
    "star_id": _c("str", "", "star id Shhmmss±ddmmss (RA in hours, Table 1), shared by visits"),
    "uniqflag": _c("int16", "", "1 for the highest-S/N visit of a star, 2, 3 ... for the others"),
    "ra": _c("float64", "deg", "right ascension (ICRS)"),
    "dec": _c("float64", "deg", "declination (ICRS)"),
    "mjd": _c("int32", "d", "modified Julian date of the observation"),
    "snr_g": _c("float32", "", "spectral S/N per pixel in the g band"),
    "rv": _c("float32", "km / s", "radial velocity applied to shift to the rest frame"),
    "rv_err": _c("float32", "km / s", "uncertainty of rv"),
    "teff": _c("float32", "K", "survey pipeline effective temperature"),
    "teff_err": _c("float32", "K", "uncertainty of teff"),
    "logg": _c("float32", "dex", "survey pipeline surface gravity log10(g / cm s-2)"),
    "logg_err": _c("float32", "dex", "uncertainty of logg"),
    "feh": _c("float32", "dex", "survey pipeline [Fe/H]"),
    "feh_err": _c("float32", "dex", "uncertainty of feh"),
    "gaia_id": _c("int64", "", "Gaia source_id"),
    "gaia_release": _c("str", "", "Gaia data release of the astrometry (DR2 or DR3)"),
    "parallax": _c("float64", "mas", "Gaia parallax as published (no zero-point correction)"),
    "parallax_error": _c("float32", "mas", "Gaia parallax uncertainty"),
    "pmra": _c("float32", "mas / yr", "proper motion in RA*cos(dec)"),
    "pmra_error": _c("float32", "mas / yr", "uncertainty of pmra"),
    "pmdec": _c("float32", "mas / yr", "proper motion in Dec"),
    "pmdec_error": _c("float32", "mas / yr", "uncertainty of pmdec"),
    "ruwe": _c("float32", "", "Gaia renormalised unit weight error"),
    "astrometric_params_solved": _c("int16", "", "Gaia: 31 = 5-parameter, 95 = 6-parameter"),
    "nu_eff_used_in_astrometry": _c("float32", "1 / um", "Gaia effective wavenumber (5p)"),
    "pseudocolour": _c("float32", "1 / um", "Gaia astrometric pseudocolour (6p)"),
    "ecl_lat": _c("float32", "deg", "ecliptic latitude"),
    "phot_g_mean_mag": _c("float32", "mag", "Gaia G"),
    "phot_g_mean_mag_error": _c("float32", "mag", "uncertainty of G"),
    "phot_bp_mean_mag": _c("float32", "mag", "Gaia BP"),
    "phot_bp_mean_mag_error": _c("float32", "mag", "uncertainty of BP"),
    "phot_rp_mean_mag": _c("float32", "mag", "Gaia RP"),
    "phot_rp_mean_mag_error": _c("float32", "mag", "uncertainty of RP"),
    "g": _c("float32", "mag", "optical g (AB)"),
    "g_err": _c("float32", "mag", "uncertainty of g"),
    "r": _c("float32", "mag", "optical r (AB)"),
    "r_err": _c("float32", "mag", "uncertainty of r"),
    "i": _c("float32", "mag", "optical i (AB)"),
    "i_err": _c("float32", "mag", "uncertainty of i"),
    "J": _c("float32", "mag", "2MASS J"),
    "J_err": _c("float32", "mag", "uncertainty of J"),
    "H": _c("float32", "mag", "2MASS H"),
    "H_err": _c("float32", "mag", "uncertainty of H"),
    "Ks": _c("float32", "mag", "2MASS Ks"),
    "Ks_err": _c("float32", "mag", "uncertainty of Ks"),
}

#: Ground truth of the mock survey, one row per spectrum (group ``truth``).
TRUTH_COLUMNS: dict[str, Column] = {
    "specid": _c("int64", "", "spectrum id, as in the observed table"),
    "star_index": _c("int64", "", "index of the star (system) in the simulated population"),
    "visit": _c("int16", "", "visit number of this star, 0-based"),
    "star_class": _c("str", "", "OB, interloper, subdwarf or white_dwarf"),
    "is_evolved": _c("bool", "", "observed past the main sequence"),
    "mass_msun": _c("float32", "solMass", "mass of the primary"),
    "teff_true": _c("float32", "K", "effective temperature of the primary"),
    "logg_true": _c("float32", "dex", "surface gravity of the primary"),
    "feh_true": _c("float32", "dex", "metallicity"),
    "log_lum_true": _c("float32", "dex(solLum)", "log10 luminosity of the primary"),
    "vsini_true": _c("float32", "km / s", "projected rotation velocity of the primary"),
    "MKs_true": _c("float32", "mag", "Ks absolute magnitude of the primary alone"),
    "MKs_system_true": _c("float32", "mag", "Ks absolute magnitude of the unresolved system"),
    "Ks_disc_excess_true": _c("float32", "mag", "Be-disc near-infrared brightening of Ks "
                              "(<= 0): in the observed Ks, not in MKs_true / MKs_system_true"),
    "distance_kpc_true": _c("float64", "kpc", "heliocentric distance"),
    "parallax_mas_true": _c("float64", "mas", "true parallax 1/d"),
    "parallax_zero_point_mas": _c("float32", "mas", "zero-point offset injected in parallax"),
    "ebv_true": _c("float32", "mag", "E(B-V) along the sight line"),
    "AKs_true": _c("float32", "mag", "Ks-band extinction"),
    "is_binary": _c("bool", "", "unresolved binary"),
    "mass_ratio": _c("float32", "", "secondary/primary mass (0 for single stars)"),
    "teff_secondary_true": _c("float32", "K", "effective temperature of the secondary"),
    "MKs_secondary_true": _c("float32", "mag", "Ks absolute magnitude of the secondary"),
    "rv_true": _c("float32", "km / s", "radial velocity of the primary at this visit"),
    "has_emission": _c("bool", "", "emission lines present"),
    "emission_type": _c("str", "", "none, be_disc or nebular"),
    "halpha_ew_true": _c("float32", "Angstrom", "H-alpha equivalent width (negative = emission)"),
    "is_broken": _c("bool", "", "spectrum carries an artefact (Appendix A of the paper)"),
    "broken_kind": _c("str", "", "none, flux_jump, dead_segment, wavelength_shift, spikes"),
    "snr_true": _c("float32", "", "S/N of the visit set by magnitude and conditions"),
}

FLUX_UNIT = "1e-17 erg / (s cm2 Angstrom)"


class InvalidCubeError(ValueError):
    """A store that is not a valid (or complete) obpipe cube."""


def _numpy_dtype(column: Column) -> Any:
    return object if column.dtype == "str" else np.dtype(column.dtype)


def _template_variable(
    name: str, column: Column, n_spec: int, chunk_size: int, lazy: bool = True
) -> xr.Variable:
    attrs = {"units": column.unit, "description": column.description}
    if column.dtype == "str":
        # Variable-length strings: write the (small) empty column now; dask object
        # arrays would be loaded anyway by xarray to choose the on-disk dtype.
        data: Any = np.full(n_spec, "", dtype=object)
    elif not lazy:
        data = np.full(n_spec, column.fill, dtype=_numpy_dtype(column))
    else:
        import dask.array as da  # imported when needed: dask.array pulls in sparse / numba

        data = da.full(n_spec, column.fill, dtype=_numpy_dtype(column), chunks=chunk_size)
    # numpy data (lazy=False) on xarray's fastpath: its check of new data for dask arrays
    # would import dask.array
    return xr.Variable(("spec",), data, attrs=attrs, fastpath=not lazy)


def _column_encoding(names: Mapping[str, Column], chunk_size: int) -> dict[str, dict[str, Any]]:
    return {name: {"chunks": (chunk_size,)} for name in names}


def spectra_compressors() -> tuple[Any, ...]:
    """Zarr compressors of spectra-sized float32 arrays (spec, wave): an ingested cube's
    flux / ivar / mask and the products' normalised flux, its inverse variance and the
    reconstructions. Blosc LZ4 with byte shuffle: on the products' noisy float32 spectra
    (2,000 x 3,909 blocks of a 30k mock) 11-26 % smaller than Zstd level 1, 35-43 % less
    CPU to write and about half to read (``benchmarks/codecs.py``); a standard Zarr codec
    that every reader opens."""
    from zarr.codecs import BloscCodec

    return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),)


def create_cube(
    path: str,
    n_spec: int,
    chunk_size: int,
    attrs: Mapping[str, Any] | None = None,
    columns: Mapping[str, Column] = SPECTRUM_COLUMNS,
    truth_columns: Mapping[str, Column] | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    spectra_compressors: Any = None,
    lazy_fill: bool = True,
) -> None:
    """Create an empty cube of ``n_spec`` spectra on the common grid.

    Writes metadata, the wavelength coordinate and fill values for the small
    per-spectrum string columns; the big arrays are written later, chunk by chunk,
    with :func:`write_block`. ``attrs`` become root attributes (provenance). The
    store is marked incomplete until :func:`mark_complete` is called.
    ``spectra_compressors``: Zarr compressors of flux / ivar / mask (None: Zarr's
    default). ``lazy_fill=False``: the fill values are numpy arrays written now
    instead of lazy dask placeholders (no graph to build and tokenise, dask.array
    not imported); meant for a small cube grown later (:func:`resize_rows`).
    """
    if n_spec <= 0:
        raise ValueError(f"n_spec must be positive, got {n_spec}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    wave = wavelength_grid()
    n_pix = wave.size
    spectral = {
        "flux": ("float32", FLUX_UNIT, "flux density, rest frame", np.nan),
        "ivar": ("float32", f"({FLUX_UNIT})-2", "inverse variance of flux (0 = no data)", 0.0),
        "mask": ("uint8", "", "pixel bit mask, bits in attribute 'bits'", 0),
    }
    data_vars: dict[str, xr.Variable] = {}
    for name, (dtype, unit, desc, fill) in spectral.items():
        var_attrs: dict[str, Any] = {"units": unit, "description": desc}
        if name == "mask":
            var_attrs["bits"] = ", ".join(f"{k}={v}" for k, v in MASK_BITS.items())
        if lazy_fill:
            import dask.array as da

            arr = da.full((n_spec, n_pix), fill, dtype=dtype, chunks=(chunk_size, n_pix))
            data_vars[name] = xr.Variable(("spec", "wave"), arr, attrs=var_attrs)
        else:  # fastpath: xarray's check of new data for dask arrays imports dask.array
            data_vars[name] = xr.Variable(("spec", "wave"), np.full((n_spec, n_pix), fill, dtype),
                                          attrs=var_attrs, fastpath=True)
    for name, column in columns.items():
        data_vars[name] = _template_variable(name, column, n_spec, chunk_size, lazy_fill)
    root_attrs = dict(attrs or {})
    root_attrs[COMPLETE_ATTR] = False
    root_attrs.setdefault("chunk_size", int(chunk_size))
    ds = xr.Dataset(
        data_vars,
        # no pandas index for wave: building one imports sparse (and numba) via xarray
        coords=xr.Coordinates({"wave": xr.Variable(("wave",), wave, {
            "units": "Angstrom", "description": "vacuum wavelength"}, fastpath=True)},
            indexes={}),
        attrs=root_attrs,
    )
    encoding = _column_encoding(columns, chunk_size)
    encoding.update({name: {"chunks": (chunk_size, n_pix)} for name in spectral})
    if spectra_compressors is not None:
        for name in spectral:
            encoding[name]["compressors"] = spectra_compressors
    mode = "w" if overwrite else "w-"
    ds.to_zarr(
        path,
        mode=mode,
        compute=False,
        consolidated=CONSOLIDATED,
        zarr_format=ZARR_FORMAT,
        encoding=encoding,
        storage_options=dict(storage_options) if storage_options else None,
    )
    if truth_columns is not None:
        truth = xr.Dataset(
            {n: _template_variable(n, c, n_spec, chunk_size, lazy_fill)
             for n, c in truth_columns.items()},
            attrs={"description": "ground truth of the simulated survey; validation only"},
        )
        truth.to_zarr(
            path,
            group=TRUTH_GROUP,
            mode="w",
            compute=False,
            consolidated=CONSOLIDATED,
            zarr_format=ZARR_FORMAT,
            encoding=_column_encoding(truth_columns, chunk_size),
            storage_options=dict(storage_options) if storage_options else None,
        )
    log.info("created cube %s: %d spectra in chunks of %d", path, n_spec, chunk_size)


def _as_block_dataset(block: Mapping[str, Any] | xr.Dataset) -> xr.Dataset:
    if isinstance(block, xr.Dataset):
        return block.drop_vars([v for v in ("wave",) if v in block.variables])
    data_vars = {}
    for name, value in block.items():
        arr = np.asarray(value)
        dims = ("spec", "wave") if arr.ndim == 2 else ("spec",)
        if arr.dtype.kind == "U":
            arr = arr.astype(object)
        data_vars[name] = (dims, arr)
    return xr.Dataset(data_vars)


def write_block(
    path: str,
    start: int,
    block: Mapping[str, Any] | xr.Dataset,
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Write one block of rows ``start : start + n`` (chunk-aligned) into an existing cube.

    ``block`` maps variable names to arrays with ``n`` rows (2-D for spectral
    variables). Returns the number of rows written. Blocks must start on a
    chunk boundary so that parallel writers never touch the same chunk.
    """
    ds = _as_block_dataset(block)
    n = ds.sizes["spec"]
    ds.to_zarr(
        path,
        group=group,
        region={"spec": slice(start, start + n)},
        consolidated=CONSOLIDATED,
        zarr_format=ZARR_FORMAT,
        storage_options=dict(storage_options) if storage_options else None,
    )
    return n


def _open_group(path: str, storage_options: Mapping[str, Any] | None = None) -> zarr.Group:
    return zarr.open_group(
        path,
        mode="r+",
        zarr_format=ZARR_FORMAT,
        storage_options=dict(storage_options) if storage_options else None,
    )


def update_attrs(
    path: str, attrs: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None
) -> None:
    """Merge ``attrs`` into the root attributes of a store."""
    _open_group(path, storage_options).attrs.update(dict(attrs))


def mark_complete(path: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Mark a store as completely written (the last write of a producer)."""
    update_attrs(path, {COMPLETE_ATTR: True}, storage_options)


def _open_dataset(
    path: str, group: str | None, storage_options: Mapping[str, Any] | None
) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return xr.open_zarr(
            path,
            group=group,
            consolidated=CONSOLIDATED,
            zarr_format=ZARR_FORMAT,
            storage_options=dict(storage_options) if storage_options else None,
        )


def validate_cube(ds: xr.Dataset, require_complete: bool = True) -> list[str]:
    """List what makes ``ds`` not a valid cube (empty list = valid)."""
    problems: list[str] = []
    for dim in ("spec", "wave"):
        if dim not in ds.dims:
            problems.append(f"missing dimension '{dim}'")
    if "wave" not in ds.coords:
        problems.append("missing coordinate 'wave'")
    elif not is_lamost_grid(ds["wave"].values):
        problems.append(
            "coordinate 'wave' is not the common grid log10(lambda) = 3.5682 + 1e-4 i, i < 3909"
        )
    for name in SPECTRAL_VARIABLES:
        if name not in ds.variables:
            problems.append(f"missing variable '{name}' (spec, wave)")
        elif ds[name].dims != ("spec", "wave"):
            problems.append(f"variable '{name}' has dims {ds[name].dims}, expected (spec, wave)")
        elif ds[name].chunks is not None and len(ds[name].chunks[1]) != 1:
            problems.append(f"variable '{name}' is chunked along 'wave'; chunks must be whole rows")
    for name in ("specid", "star_id", "ra", "dec", "snr_g"):
        if name not in ds.variables:
            problems.append(f"missing per-spectrum variable '{name}'")
    if require_complete and not ds.attrs.get(COMPLETE_ATTR, False):
        problems.append(
            f"root attribute '{COMPLETE_ATTR}' is not true: the store was not completely "
            "written (interrupted run?)"
        )
    return problems


def open_cube(
    path: str,
    require_complete: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Open and validate a survey cube; lazily (dask arrays).

    Raises :class:`InvalidCubeError` naming the store and every missing piece.
    """
    try:
        ds = _open_dataset(path, None, storage_options)
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.NodeTypeValidationError) as exc:
        raise InvalidCubeError(f"{path}: not a Zarr v3 obpipe cube ({exc})") from exc
    problems = validate_cube(ds, require_complete=require_complete)
    if problems:
        raise InvalidCubeError(f"{path}: invalid cube: " + "; ".join(problems))
    return ds


def has_truth(path: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """True if the store carries a ``truth`` group (a simulated survey)."""
    try:
        group = zarr.open_group(
            path,
            mode="r",
            zarr_format=ZARR_FORMAT,
            storage_options=dict(storage_options) if storage_options else None,
        )
    except (FileNotFoundError, ValueError):
        return False
    return TRUTH_GROUP in group


def open_truth(path: str, storage_options: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Open the ``truth`` group of a simulated survey (validation only)."""
    if not has_truth(path, storage_options):
        raise InvalidCubeError(f"{path}: no '{TRUTH_GROUP}' group (not a simulated survey)")
    return _open_dataset(path, TRUTH_GROUP, storage_options)


def _arrays_along(group: zarr.Group, dim: str) -> list[tuple[str, zarr.Array]]:
    out = []
    for name, arr in group.arrays():
        names = getattr(arr.metadata, "dimension_names", None) or ()
        if names and names[0] == dim:
            out.append((name, arr))
    return out


def resize_rows(
    path: str,
    n_rows: int,
    group: str | None = None,
    dim: str = "spec",
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Set the length of dimension ``dim`` (the first axis) of every array along it.

    Used to grow a store before appending and to cut a store back to its last
    committed row after an interrupted append.
    """
    root = _open_group(path, storage_options)
    g = root[group] if group else root
    for _, arr in _arrays_along(g, dim):
        if arr.shape[0] != n_rows:
            arr.resize((n_rows, *arr.shape[1:]))


def append_rows(
    path: str,
    start: int,
    block: Mapping[str, Any],
    group: str | None = None,
    dim: str = "spec",
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Write ``block`` (arrays of ``n`` rows) at rows ``start : start + n``, growing the store.

    Every array along ``dim`` must be in ``block`` (rows left unwritten would hold
    the Zarr fill value). Rows need not be chunk-aligned: partial chunks are
    read, updated and rewritten, so calls must not run concurrently on one store.
    Returns ``n``.
    """
    root = _open_group(path, storage_options)
    g = root[group] if group else root
    arrays = dict(_arrays_along(g, dim))
    missing = sorted(set(arrays) - set(block))
    if missing:
        raise ValueError(f"{path}: append_rows misses variables {missing}")
    sizes = {np.shape(v)[0] for v in block.values()}
    if len(sizes) != 1:
        raise ValueError(f"{path}: append_rows got blocks of different lengths {sizes}")
    n = sizes.pop()
    for name, arr in arrays.items():
        if arr.shape[0] != start + n:
            arr.resize((start + n, *arr.shape[1:]))
        value = np.asarray(block[name])
        if value.dtype.kind == "U":
            value = value.astype(object)
        if n:
            arr[start : start + n] = value
    return n


def create_row_group(
    path: str,
    group: str,
    columns: Mapping[str, Column],
    chunk_size: int,
    dim: str,
    attrs: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Create (or replace) a group of empty 1-D arrays along ``dim`` (e.g. a report table)."""
    root = _open_group(path, storage_options)
    g = root.require_group(group)
    g.attrs.update(dict(attrs or {}))
    for name, column in columns.items():
        dtype: Any = str if column.dtype == "str" else np.dtype(column.dtype)
        g.create_array(name, shape=(0,), dtype=dtype, chunks=(chunk_size,),
                       dimension_names=[dim], overwrite=True,
                       attributes={"units": column.unit, "description": column.description})


# ----------------------------------------------------------------- files beside the stores
# Model files, figures, catalogs and JSON summaries live beside ``products.zarr`` under
# the products directory, which may be a local path or an fsspec URL (``s3://``,
# ``file://``, ``memory://``). These helpers keep local paths on the plain ``os`` /
# ``open`` calls they always used, and send URLs through fsspec.


def is_url(path: str) -> bool:
    """True for an fsspec URL (``protocol://...``), False for a local path."""
    return "://" in str(path)


def in_process_memory(path: str) -> bool:
    """True for a ``memory://`` URL: a filesystem that only this process sees (the worker
    processes of Dask's "processes" scheduler or of a cluster would find it empty)."""
    return fsspec.core.split_protocol(str(path))[0] == "memory"


def absolute(path: str) -> str:
    """A local path made absolute (workers resolve relative paths in their own working
    directory); a URL unchanged."""
    return path if is_url(path) else os.path.abspath(path)


def url_to_fs(path: str) -> tuple[fsspec.AbstractFileSystem | None, str]:
    """``(filesystem, path inside it)`` of a URL; ``(None, path)`` for a local path (for
    APIs with a ``filesystem=`` argument, e.g. pyarrow's Parquet reader and writer)."""
    if not is_url(path):
        return None, path
    return fsspec.core.url_to_fs(path)


def open_file(path: str, mode: str = "rb", **kwargs: Any) -> Any:
    """An open file object for a local path (built-in ``open``) or a URL (fsspec; a
    ``file://`` URL creates its parent directories). ``kwargs`` (e.g. ``encoding``) go to
    the opener. Use it as a context manager; torch.save/load, np.savez/np.load,
    ``Figure.savefig`` and astropy writers take the file object."""
    if not is_url(path):
        return open(path, mode, **kwargs)  # noqa: SIM115 - the caller closes it
    return fsspec.open(path, mode, **kwargs).open()


def exists(path: str) -> bool:
    """``os.path.exists`` for a local path, the filesystem's ``exists`` for a URL."""
    if not is_url(path):
        return os.path.exists(path)
    fs, root = fsspec.core.url_to_fs(path)
    return bool(fs.exists(root))


def isdir(path: str) -> bool:
    """``os.path.isdir`` for a local path, the filesystem's ``isdir`` for a URL."""
    if not is_url(path):
        return os.path.isdir(path)
    fs, root = fsspec.core.url_to_fs(path)
    return bool(fs.isdir(root))


def makedirs(path: str) -> None:
    """Create a local directory (and parents); nothing for a URL (object stores have no
    directories, and a ``file://`` URL creates parents when a file is written)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """Delete one file (local path or URL)."""
    if not is_url(path):
        os.remove(path)
        return
    fs, root = fsspec.core.url_to_fs(path)
    fs.rm(root)


def replace(src: str, dst: str) -> None:
    """Move ``src`` over ``dst``: ``os.replace`` (atomic) for local paths, the
    filesystem's move for URLs (a copy and a delete on object stores). Used to publish a
    file written completely under a temporary name."""
    if not is_url(src):
        os.replace(src, dst)
        return
    fs, root = fsspec.core.url_to_fs(src)
    fs.mv(root, fsspec.core.url_to_fs(dst)[1])


def copy_file(src: str, dst: str) -> None:
    """Copy one file between local paths and/or URLs."""
    if not is_url(src) and not is_url(dst):
        shutil.copyfile(src, dst)
        return
    with open_file(src, "rb") as fin, open_file(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)


def file_token(path: str) -> Any:
    """What changes when a file is rewritten (cache keys of loaded models): the
    modification time of a local file, a hash of the filesystem's info for a URL."""
    if not is_url(path):
        return os.path.getmtime(path)
    fs, root = fsspec.core.url_to_fs(path)
    return fs.ukey(root)


def save_figure(fig: Any, path: str, **kwargs: Any) -> str:
    """``fig.savefig`` to a local path (as is) or a URL (through a binary file object,
    the format from the file name's extension); returns ``path``."""
    if not is_url(path):
        fig.savefig(path, **kwargs)
        return path
    kwargs.setdefault("format", os.path.splitext(path)[1].lstrip(".") or "png")
    with open_file(path, "wb") as fh:
        fig.savefig(fh, **kwargs)
    return path
