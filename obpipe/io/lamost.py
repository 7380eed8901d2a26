"""Read (and write) LAMOST low-resolution spectra in every layout of the releases.

Files to arrays and header values only: the shift to the rest frame and the rebinning
onto the cube's grid are in :mod:`obpipe.io.lamost_grid`, the per-file ingest work
(read, grid, batch for the workers) in :mod:`obpipe.io.lamost_batch`.

Layouts, detected from the file's structure (never from a release number):

``image``
    Primary HDU image (5, N) float32, rows flux, inverse variance, wavelength
    (vacuum AA), andmask, ormask (DR2-DR8 style). Header keys OBSID, DESIG, RA,
    DEC, Z, Z_ERR, SNRG, MJD, COEFF0/COEFF1 (log10-linear dispersion).
``image-subcontinuum``
    The same image, but row 2 is a sub-continuum (about 1), not a wavelength
    (DR1). The wavelength is 10**(COEFF0 + COEFF1 i); no OBSID key (a stable
    synthetic id is made from the file's plan/spectrograph/fibre and flagged).
``bintable``
    A binary table HDU with array columns FLUX, IVAR, WAVELENGTH, ANDMASK, ORMASK
    (later releases); metadata in the primary and/or table header. The first
    row (the co-add) is read.

Where the header carries COEFF0/COEFF1 and the file's wavelength array agrees
with them to float32 precision, the exact float64 dispersion is used (the
array is stored as float32, ~1e-7 relative, which would otherwise blur pixel
edges by ~1e-3 pixel).

Gzipped files (``.fits.gz``, detected by content) are read too: inflated in
memory (with a size limit against gzip bombs). A fast reader
(:mod:`obpipe.io._fits_header`, numpy) reads the simple FITS structure of the
releases; anything unusual (scaled columns, variable-length arrays) goes through
``astropy.io.fits``, which gives the same spectrum (tested on every real file).

Mask bits: LAMOST and/or-masks use BADCCD=1, BADPROFILE=2, NOSKY=4,
BRIGHTSKY=8, BADCENTER=16, NODATA=32 (LAMOST data release documentation).
They map to the cube's :data:`obpipe.io.store.MASK_BITS` as BRIGHTSKY ->
sky_residual (informational), NODATA -> no_coverage, the others -> bad_pixel.
The project's own writer stores the cube's telluric bit as bit 64 (TELLURIC,
an obpipe extension that real files never set).

``Spectrum.read(path, format="LAMOST")`` works in specutils after
:func:`register_specutils_loader` (called automatically when this module is
imported after specutils).
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:  # zlib-ng: the zlib API, gzip members inflated ~2x faster (same bytes, same checks)
    from zlib_ng import zlib_ng as _inflate
except ImportError:  # pragma: no cover - optional speed-up
    _inflate = zlib  # type: ignore[assignment]

from obpipe.io import _fits_header
from obpipe.io.store import MASK_BITS
from obpipe.spectra.grid import SPEED_OF_LIGHT_KMS, wavelength_grid

BLOCK = _fits_header.BLOCK
#: LAMOST pixel mask bits (andmask / ormask)
LAMOST_MASK_BITS: dict[str, int] = {
    "BADCCD": 1, "BADPROFILE": 2, "NOSKY": 4, "BRIGHTSKY": 8, "BADCENTER": 16, "NODATA": 32,
    "TELLURIC": 64,  # obpipe extension, written by write_lamost_fits only
}
#: range of a plausible wavelength array, AA (wide: off-grid coverage is flagged later)
WAVE_RANGE_AA = (500.0, 100_000.0)
#: LAMOST marks a failed redshift with -9999
Z_FAILED = -9999.0
#: relative agreement needed to replace a float32 wavelength array by COEFF0/COEFF1
COEFF_RTOL = 2e-6
#: largest decompressed size of one input file (bytes) read by default: a LAMOST
#: low-resolution spectrum is ~0.2 MB, 64 MiB leaves room for any real layout while a
#: gzip bomb (1 MB inflating to 1 GiB) is skipped after 64 MiB of output
DEFAULT_MAX_DECOMPRESSED_BYTES = 64 * 2**20


class LamostFormatError(ValueError):
    """A file that cannot be read as a LAMOST spectrum; the message names the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass
class LamostSpectrum:
    """One LAMOST spectrum as stored in the file (observed frame, vacuum AA).

    ``meta`` holds obsid (int or None), fitsname, desig, ra, dec (deg), mjd,
    snr_g, z, z_err (NaN when absent or failed); ``notes`` lists oddities found.
    """

    path: str
    layout: str
    wave: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    andmask: np.ndarray
    ormask: np.ndarray
    meta: dict[str, Any]
    #: the header's values by keyword (``.get``, ``[]``, ``.items()``): the fast reader's
    #: :class:`obpipe.io._fits_header.RawHeader` or an astropy ``Header``; a bintable
    #: file's: the table's, the primary's cards over it
    header: Any = field(repr=False, default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: (COEFF0, COEFF1) when ``wave`` is exactly 10**(COEFF0 + COEFF1 i) (log-linear)
    loglam: tuple[float, float] | None = None


# --------------------------------------------------------------------------- bytes


def read_bytes(path: str) -> bytes:
    """Raw bytes of a file (as stored: possibly gzipped)."""
    with open(path, "rb") as fh:
        return fh.read()


def checksum(raw: bytes) -> str:
    """Content checksum of a file's raw bytes (BLAKE2b, 128 bits, hex)."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def too_large(path: str, what: str, max_bytes: int) -> LamostFormatError:
    """The error of a file above the size limit (``what``: e.g. "file size N bytes is")."""
    return LamostFormatError(path, f"{what} above the limit of {max_bytes / 2**20:g} MiB "
                             "(ingest option max_decompressed_mib / --max-decompressed-mib)")


def _decompress(raw: bytes, path: str, max_bytes: int | None = None) -> bytes:
    """The FITS bytes of a file's raw bytes: gunzipped (every member) if gzip.

    ``max_bytes``: largest decompressed size accepted. The stream is inflated with
    that limit (``max_length``), so a gzip bomb stops after ``max_bytes`` + 1 bytes
    of output instead of inflating fully; a larger file raises
    :class:`LamostFormatError`. None: no limit.
    """
    if raw[:2] != b"\x1f\x8b":
        if max_bytes is not None and len(raw) > max_bytes:
            raise too_large(path, f"file size {len(raw)} bytes is", max_bytes)
        return raw
    parts: list[bytes] = []
    total = 0
    data = raw
    try:
        while True:  # one gzip member per pass (usually one); zlib(-ng) checks CRC, length
            d = _inflate.decompressobj(31)
            if max_bytes is None:
                out = d.decompress(data)
            else:
                out = d.decompress(data, max_bytes - total + 1)
            total += len(out)
            if max_bytes is not None and total > max_bytes:
                raise too_large(path, "decompressed size is", max_bytes)
            if not d.eof:
                raise LamostFormatError(path, "truncated or corrupt gzip stream (no end of "
                                        "stream)")
            parts.append(out)
            data = d.unused_data
            if not data.strip(b"\0"):  # end, or the zero padding gzip also accepts
                break
            if data[:2] != b"\x1f\x8b":
                raise LamostFormatError(path, "truncated or corrupt gzip stream (trailing "
                                        "bytes after the last member)")
    except (OSError, EOFError, zlib.error, _inflate.error) as exc:
        raise LamostFormatError(path, f"truncated or corrupt gzip stream ({exc})") from exc
    return parts[0] if len(parts) == 1 else b"".join(parts)


# ------------------------------------------------------------------------- HDUs


def _hdus(buf: bytes, path: str, fast: bool = True) -> list[tuple[Any, Any]]:
    """(header, data) of every HDU: with the fast reader (:mod:`obpipe.io._fits_header`)
    and, for what it does not handle (or with ``fast=False``), ``astropy.io.fits``.
    A file shorter than its headers announce raises :class:`LamostFormatError`
    ("truncated FITS file ..."), as does anything astropy cannot read."""
    if not buf.startswith(b"SIMPLE  ="):
        raise LamostFormatError(path, "not a FITS file (does not start with a SIMPLE card)")
    if fast:
        try:
            return _fits_header.hdus(buf)
        except _fits_header.Truncated as exc:
            raise LamostFormatError(path, f"truncated FITS file: {exc}") from exc
        except (_fits_header.Fallback, KeyError, ValueError, TypeError):
            pass
    return _astropy_hdus(buf, path)


def _astropy_hdus(buf: bytes, path: str) -> list[tuple[Any, Any]]:
    """(header, data) of every HDU, read with ``astropy.io.fits`` from memory.

    ``header``: the :class:`astropy.io.fits.Header` (values parsed on access);
    ``data``: the image (scaled by BSCALE/BZERO as astropy does), the binary table
    (a ``FITS_rec``: its columns scaled on access), or None.
    """
    from astropy.io import fits

    out: list[tuple[Any, Any]] = []
    try:
        # astropy warns "File may have been truncated: actual file length (N) is smaller
        # than the expected size (M)" when it reads past the end of an HDU's data: that
        # is the error here (HDUList.fileinfo would tell too, but it serialises every
        # header again: 40 % of the reading time)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(io.BytesIO(buf), memmap=False, lazy_load_hdus=True) as hdul:
                for i, hdu in enumerate(hdul):
                    short = [w for w in caught if "truncated" in str(w.message)]
                    if short:
                        raise LamostFormatError(
                            path, f"truncated FITS file: HDU {i}: {short[0].message}")
                    out.append((hdu.header, hdu.data if hdu.size else None))
        for w in caught:  # recorded only to find truncation: hand the others on
            if "truncated" not in str(w.message):
                warnings.warn(f"{path}: {w.message}", w.category, stacklevel=2)
    except LamostFormatError:
        raise
    except Exception as exc:  # astropy raises many types for corrupt files
        raise LamostFormatError(path, f"unreadable FITS file ({type(exc).__name__}: {exc})") \
            from exc
    return out


# ------------------------------------------------------------------------ layouts


def _plausible_wavelength(w: np.ndarray) -> bool:
    return bool(
        w.size > 1 and np.all(np.isfinite(w)) and np.all(np.diff(w) > 0)
        and w[0] > WAVE_RANGE_AA[0] and w[-1] < WAVE_RANGE_AA[1]
    )


@functools.lru_cache(maxsize=16)
def _pow10_steps(c1: float, n: int) -> tuple[np.ndarray, bool]:
    """(10**(c1 i), i < n; whether consecutive values differ by far more than rounding).

    Read-only and cached: every file of a release shares its COEFF1 and length.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        steps = 10.0 ** (c1 * np.arange(n))
    steps.flags.writeable = False
    # a relative step of 1e-12 survives multiplication by any positive scale (2**-52 rounding)
    strict = bool(n > 1 and np.isfinite(steps[-1]) and c1 * np.log(10.0) > 1e-12)
    return steps, strict


def _coeff_wavelength(h: dict[str, Any], n: int) -> tuple[np.ndarray | None, bool]:
    """(10**(COEFF0 + COEFF1 i) in AA or None, whether it is a plausible wavelength array).

    Computed as 10**COEFF0 * 10**(COEFF1 i) with the second factor cached (one pow per
    file instead of n; within ~1e-15 of the direct form); plausibility follows from the
    two ends (the product of a positive scale and a strictly increasing factor).
    """
    c0, c1 = h.get("COEFF0"), h.get("COEFF1")
    if not isinstance(c0, int | float) or not isinstance(c1, int | float) or c1 <= 0 \
            or isinstance(c0, bool) or isinstance(c1, bool) or n < 1:
        return None, False
    steps, strict = _pow10_steps(float(c1), int(n))
    c0 = float(c0)
    scale = 10.0**c0 if -300.0 < c0 < 300.0 else (0.0 if c0 < 0 else math.inf)
    last = scale * float(steps[-1])  # Python floats: inf on overflow, no warning
    if math.isfinite(last) and scale > 0:
        wave = scale * steps
    else:  # absurd coefficients: the array as numpy makes it, never plausible
        with np.errstate(over="ignore", invalid="ignore"):
            wave = 10.0 ** (c0 + float(c1) * np.arange(n))
        return wave, False
    plausible = bool(
        strict and wave[0] > WAVE_RANGE_AA[0] and last < WAVE_RANGE_AA[1]
    )
    return wave, plausible


def _choose_wavelength(
    row: np.ndarray | None, h: dict[str, Any], n: int, path: str, notes: list[str]
) -> tuple[np.ndarray, bool, bool]:
    """(wavelength, row_was_wavelength, from_coeff) from a candidate array and COEFF0/COEFF1."""
    coeff, coeff_ok = _coeff_wavelength(h, n)
    if row is not None:
        row64 = np.asarray(row, np.float64)
        if coeff_ok:
            # the common case: the array is the COEFF dispersion in float32 (implies plausible)
            if np.all(np.abs(row64 - coeff) <= COEFF_RTOL * coeff):
                return coeff, True, True
            if _plausible_wavelength(row64):
                notes.append("wavelength_array_disagrees_with_COEFF0_COEFF1")
                return row64, True, False
        elif _plausible_wavelength(row64):
            if coeff is not None:
                notes.append("wavelength_array_disagrees_with_COEFF0_COEFF1")
            return row64, True, False
    if coeff_ok:
        return coeff, False, True
    raise LamostFormatError(
        path,
        "missing wavelength: no wavelength row/column and no COEFF0/COEFF1 in the header",
    )


def _field(rec: np.ndarray, *names: str) -> np.ndarray | None:
    lower = {n.lower(): n for n in rec.dtype.names or ()}
    for name in names:
        if name.lower() in lower:
            return np.asarray(rec[lower[name.lower()]])
    return None


def _from_image(
    h: dict[str, Any], data: np.ndarray, path: str
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], bool]:
    notes: list[str] = []
    if data.ndim != 2 or data.shape[0] != 5 or data.shape[1] < 2:
        raise LamostFormatError(
            path,
            f"wrong shape {data.shape} of the primary image: expected (5, N) rows flux, "
            "ivar, wavelength (or sub-continuum), andmask, ormask",
        )
    n = data.shape[1]
    wave, row_is_wave, from_coeff = _choose_wavelength(data[2], h, n, path, notes)
    layout = "image" if row_is_wave else "image-subcontinuum"
    return (layout, wave, data[0], data[1], data[3], data[4], notes, from_coeff)


def _from_bintable(
    h: dict[str, Any], rec: np.ndarray, path: str
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str], bool]:
    notes: list[str] = []
    if rec.size == 0:
        raise LamostFormatError(path, "binary table has no rows")
    row = rec[:1]
    flux, ivar = _field(row, "FLUX"), _field(row, "IVAR")
    if ivar is None:
        raise LamostFormatError(path, "binary table has FLUX but no IVAR column")
    flux, ivar = flux.reshape(-1), ivar.reshape(-1)
    n = flux.size
    if ivar.size != n or n < 2:
        raise LamostFormatError(
            path, f"wrong shape: FLUX has {n} and IVAR {ivar.size} values; expected equal, >= 2"
        )
    w = _field(row, "WAVELENGTH", "LOGLAM")
    if w is not None and _field(row, "WAVELENGTH") is None:
        w = 10.0 ** np.asarray(w, np.float64)
    w = None if w is None else w.reshape(-1)
    if w is not None and w.size != n:
        raise LamostFormatError(path, f"wrong shape: WAVELENGTH has {w.size} values, FLUX {n}")
    wave, row_is_wave, from_coeff = _choose_wavelength(w, h, n, path, notes)
    if not row_is_wave and w is not None:
        raise LamostFormatError(path, "WAVELENGTH column is not an increasing wavelength array")
    masks = []
    for name in ("ANDMASK", "ORMASK"):
        mk = _field(row, name)
        masks.append(np.zeros(n, np.int32) if mk is None else mk.reshape(-1))
    return ("bintable", wave, flux, ivar, masks[0], masks[1], notes, from_coeff)


def _number(h: dict[str, Any], *keys: str) -> float:
    for key in keys:
        v = h.get(key)
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                continue
    return float("nan")


def synthetic_obsid(h: dict[str, Any], fitsname: str) -> int:
    """Stable 62-bit id for a file without OBSID (DR1): hash of plan/spectrograph/fibre.

    Offset by 2**62 so that it can never collide with a real LAMOST obsid.
    """
    key = "|".join(str(h.get(k, "")) for k in ("LMJD", "PLANID", "SPID", "FIBERID"))
    if key == "|||":
        key = fitsname
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return 2**62 + int.from_bytes(digest, "big") % 2**62


def header_metadata(h: dict[str, Any], path: str) -> dict[str, Any]:
    """Per-spectrum metadata from a LAMOST header (units: deg, km/s via z)."""
    fitsname = str(h.get("FILENAME") or os.path.basename(path)).strip()
    if fitsname.endswith(".gz"):
        fitsname = fitsname[:-3]
    obsid = h.get("OBSID")
    if isinstance(obsid, str) and obsid.strip().lstrip("-").isdigit():
        obsid = int(obsid)
    if not isinstance(obsid, int) or isinstance(obsid, bool):
        obsid = None
    z = _number(h, "Z")
    z_err = _number(h, "Z_ERR")
    if not np.isfinite(z) or z <= Z_FAILED + 1:
        z, z_err = float("nan"), float("nan")
    mjd = _number(h, "MJD")
    return {
        "obsid": obsid,
        "fitsname": fitsname,
        "desig": str(h.get("DESIG", "")).strip(),
        "ra": _number(h, "RA", "RA_OBS"),
        "dec": _number(h, "DEC", "DEC_OBS"),
        "mjd": int(mjd) if np.isfinite(mjd) else -9,
        "snr_g": _number(h, "SNRG", "SN_G"),
        "z": z,
        "z_err": z_err,
    }


def parse_lamost(buf: bytes, path: str = "<bytes>", fast: bool = True,
                 max_bytes: int | None = DEFAULT_MAX_DECOMPRESSED_BYTES) -> LamostSpectrum:
    """Parse the (decompressed or gzipped) bytes of a LAMOST file. See :func:`read_lamost`.

    ``fast=False`` reads the HDUs with ``astropy.io.fits`` only (the fast reader
    gives the same spectrum, tested; for checks and for files it does not handle).
    ``max_bytes``: largest decompressed size accepted (None: no limit); a larger file
    raises :class:`LamostFormatError` without being inflated beyond it.
    """
    buf = _decompress(buf, path, max_bytes)
    hdus = _hdus(buf, path, fast)
    primary_h, primary_data = hdus[0]
    table = next(
        ((h, d) for h, d in hdus[1:]
         if isinstance(d, np.ndarray) and d.dtype.names
         and "flux" in {n.lower() for n in d.dtype.names}),
        None,
    )
    if table is not None:
        from astropy.io.fits.verify import VerifyWarning

        merged = table[0].copy()  # the table's header, the primary's cards over it
        if isinstance(merged, _fits_header.RawHeader):  # raw card values, parsed on access
            for k in primary_h.keys():
                if k not in ("NAXIS", "BITPIX", "EXTEND"):
                    dict.__setitem__(merged, k, dict.__getitem__(primary_h, k))
        else:  # astropy Headers
            with warnings.catch_warnings():  # a long keyword becomes HIERARCH: no warning
                warnings.simplefilter("ignore", VerifyWarning)
                for k in primary_h.keys():
                    if k not in ("NAXIS", "BITPIX", "EXTEND", "SIMPLE", "COMMENT", "HISTORY",
                                 ""):
                        merged[k] = primary_h[k]
        layout, wave, flux, ivar, am, om, notes, from_coeff = _from_bintable(merged, table[1],
                                                                             path)
        header = merged
    elif isinstance(primary_data, np.ndarray):
        layout, wave, flux, ivar, am, om, notes, from_coeff = _from_image(primary_h,
                                                                          primary_data, path)
        header = primary_h
    else:
        raise LamostFormatError(
            path, "no spectrum: neither a primary image nor a binary table with a FLUX column"
        )
    meta = header_metadata(header, path)
    if meta["obsid"] is None:
        meta["obsid"] = synthetic_obsid(header, meta["fitsname"])
        notes.append("no_obsid_in_header")
    return LamostSpectrum(
        path=path, layout=layout, wave=np.asarray(wave, np.float64),
        flux=np.asarray(flux, np.float64), ivar=np.asarray(ivar, np.float64),
        andmask=np.asarray(am).astype(np.int64), ormask=np.asarray(om).astype(np.int64),
        meta=meta, header=header, notes=notes,
        loglam=(float(header["COEFF0"]), float(header["COEFF1"])) if from_coeff else None,
    )


def read_lamost(path: Any) -> LamostSpectrum:
    """Read one LAMOST low-resolution spectrum (any layout, gzipped or not).

    ``path``: a file path or an open binary file object.

    Raises :class:`LamostFormatError` naming the file and the problem for a file
    that is not a readable LAMOST spectrum (not FITS, truncated, wrong shape,
    no wavelength).
    """
    if hasattr(path, "read"):  # an open (binary) file object
        name = str(getattr(path, "name", "<file object>"))
        return parse_lamost(path.read(), name)
    path = os.fspath(path)
    try:
        raw = read_bytes(path)
    except OSError as exc:
        raise LamostFormatError(path, f"cannot read file ({exc})") from exc
    return parse_lamost(raw, path)


# ------------------------------------------------------------------ mask bits


def _mask_lut() -> np.ndarray:
    lb = LAMOST_MASK_BITS
    bad = lb["BADCCD"] | lb["BADPROFILE"] | lb["NOSKY"] | lb["BADCENTER"]
    v = np.arange(128)
    lut = np.zeros(128, np.uint8)
    lut[(v & bad) != 0] |= MASK_BITS["bad_pixel"]
    lut[(v & lb["BRIGHTSKY"]) != 0] |= MASK_BITS["sky_residual"]
    lut[(v & lb["NODATA"]) != 0] |= MASK_BITS["no_coverage"]
    lut[(v & lb["TELLURIC"]) != 0] |= MASK_BITS["telluric"]
    return lut


#: cube bits of every combination of the (7) LAMOST bits that are mapped
_MASK_LUT = _mask_lut()


def lamost_mask_to_cube(mask: np.ndarray) -> np.ndarray:
    """Translate LAMOST and/or-mask bits to the cube's MASK_BITS (uint8)."""
    return _MASK_LUT[np.asarray(mask).astype(np.int64, copy=False) & 127]


def cube_mask_to_lamost(mask: np.ndarray) -> np.ndarray:
    """Inverse of :func:`lamost_mask_to_cube` (for the project's own writer), int32."""
    mask = np.asarray(mask).astype(np.int64)
    out = np.zeros(mask.shape, np.int32)
    lb = LAMOST_MASK_BITS
    out[(mask & MASK_BITS["bad_pixel"]) != 0] |= lb["BADCCD"]
    out[(mask & MASK_BITS["sky_residual"]) != 0] |= lb["BRIGHTSKY"]
    out[(mask & MASK_BITS["no_coverage"]) != 0] |= lb["NODATA"]
    out[(mask & MASK_BITS["telluric"]) != 0] |= lb["TELLURIC"]
    return out


# ------------------------------------------------------------------------- writer


def write_lamost_fits(
    path: str | os.PathLike[str],
    flux: np.ndarray,
    ivar: np.ndarray,
    mask: np.ndarray,
    meta: dict[str, Any],
    layout: str = "image",
    wave_rest_aa: np.ndarray | None = None,
    overwrite: bool = False,
) -> None:
    """Write one spectrum as a LAMOST-layout FITS file (gzipped if ``path`` ends in .gz).

    ``flux``, ``ivar``, ``mask`` (cube bits) are on the rest-frame grid
    ``wave_rest_aa`` (default: the common grid); the file gets the observed
    frame, lambda_obs = lambda_rest (1 + z) with z = rv / c, and COEFF0 =
    3.5682 + log10(1 + z) so that a reader recovers the grid exactly. ``meta``:
    obsid, fitsname, ra, dec, mjd, snr_g, rv, rv_err (km/s). ``layout`` is
    "image" (DR2-DR8), "image-subcontinuum" (DR1: row 2 = 1, no OBSID) or
    "bintable" (later releases).
    """
    from astropy.io import fits

    rest = wavelength_grid() if wave_rest_aa is None else np.asarray(wave_rest_aa, np.float64)
    rv = float(meta.get("rv", 0.0))
    z = rv / SPEED_OF_LIGHT_KMS if np.isfinite(rv) else Z_FAILED
    zf = 0.0 if z == Z_FAILED else z
    log_step = float(np.log10(rest[1] / rest[0]))
    coeff0 = float(np.log10(rest[0]) + np.log10(1.0 + zf))
    wave_obs = rest * (1.0 + zf)
    lmask = cube_mask_to_lamost(mask)
    h = fits.Header()
    fitsname = str(meta.get("fitsname") or os.path.basename(os.fspath(path)))
    h["FILENAME"] = fitsname.removesuffix(".gz")
    if layout != "image-subcontinuum":
        h["OBSID"] = (int(meta["obsid"]), "Unique number ID of this spectrum")
    h["AUTHOR"] = "obpipe writer (mock LAMOST)"
    h["RA"] = (float(meta.get("ra", np.nan)), "[deg] Right ascension of object")
    h["DEC"] = (float(meta.get("dec", np.nan)), "[deg] Declination of object")
    h["DESIG"] = str(meta.get("desig", ""))
    h["MJD"] = int(meta.get("mjd", -9))
    for key, val in (("LMJD", meta.get("mjd", -9)), ("PLANID", meta.get("planid", "MOCK")),
                     ("SPID", meta.get("spid", 0)), ("FIBERID", meta.get("fiberid", 0))):
        h[key] = val
    h["VACUUM"] = True
    h["COEFF0"] = (coeff0, "Central wavelength (log10) of first pixel")
    h["COEFF1"] = (log_step, "Log10 dispersion per pixel")
    h["Z"] = (z, "Redshift of object")
    rv_err = float(meta.get("rv_err", np.nan))
    h["Z_ERR"] = (rv_err / SPEED_OF_LIGHT_KMS if np.isfinite(rv_err) else Z_FAILED)
    snr_key = "SN_G" if layout == "image-subcontinuum" else "SNRG"
    snr = float(meta.get("snr_g", np.nan))
    h[snr_key] = snr if np.isfinite(snr) else -9999.0
    flux32 = np.asarray(flux, np.float32)
    ivar32 = np.asarray(ivar, np.float32)
    if layout in ("image", "image-subcontinuum"):
        row2 = wave_obs if layout == "image" else np.ones_like(wave_obs)
        h["EXTEN0"] = ("Flux, Inverse, Wavelength, Andmask, Ormask" if layout == "image"
                       else "Flux Inverse Subcontinuum Andmask Ormask")
        data = np.vstack([flux32, ivar32, row2.astype(np.float32), lmask.astype(np.float32),
                          lmask.astype(np.float32)])
        hdul = fits.HDUList([fits.PrimaryHDU(data, header=h)])
    elif layout == "bintable":
        n = flux32.size
        cols = [
            fits.Column("FLUX", f"{n}E", array=flux32[None]),
            fits.Column("IVAR", f"{n}E", array=ivar32[None]),
            fits.Column("WAVELENGTH", f"{n}D", array=wave_obs[None]),
            fits.Column("ANDMASK", f"{n}J", array=lmask[None]),
            fits.Column("ORMASK", f"{n}J", array=lmask[None]),
        ]
        hdul = fits.HDUList([fits.PrimaryHDU(header=h),
                             fits.BinTableHDU.from_columns(cols, name="COADD")])
    else:
        raise ValueError(f"unknown layout {layout!r}: image, image-subcontinuum or bintable")
    hdul.writeto(os.fspath(path), overwrite=overwrite)


# ---------------------------------------------------------------------- specutils


def _identify_lamost(origin: str, path: Any, fileobj: Any = None, *args: Any,
                     **kwargs: Any) -> bool:
    """astropy registry identifier: a FITS file whose first header blocks mention LAMOST."""
    try:
        if fileobj is not None:
            pos = fileobj.tell()
            head = fileobj.read(BLOCK * 8)
            fileobj.seek(pos)
        elif isinstance(path, str | os.PathLike):
            raw = read_bytes(os.fspath(path))
            head = _decompress(raw[: 1 << 20] if raw[:2] != b"\x1f\x8b" else raw,
                               os.fspath(path), DEFAULT_MAX_DECOMPRESSED_BYTES)[: BLOCK * 8]
        else:
            return False
        return head.startswith(b"SIMPLE  =") and b"LAMOST" in head
    except (OSError, ValueError):
        return False


def _specutils_reader(path: str, **kwargs: Any) -> Any:
    import astropy.units as u
    from astropy.nddata import InverseVariance
    from specutils import Spectrum

    spec = read_lamost(path)
    unit = u.Unit("1e-17 erg / (s cm2 Angstrom)")
    ivar = np.where(np.isfinite(spec.ivar), spec.ivar, 0.0)
    return Spectrum(
        flux=spec.flux * unit,
        spectral_axis=spec.wave * u.AA,
        uncertainty=InverseVariance(ivar / unit**2),
        mask=(lamost_mask_to_cube(spec.andmask) != 0) | (ivar <= 0),
        meta={"header": dict(spec.header.items()), "obpipe": spec.meta, "layout": spec.layout},
    )


_REGISTERED = False


def register_specutils_loader() -> bool:
    """Register ``Spectrum.read(path, format="LAMOST")`` with specutils (idempotent).

    Returns False when specutils is not installed.
    """
    global _REGISTERED
    if _REGISTERED:
        return True
    try:
        from specutils import Spectrum
        from specutils.io.registers import data_loader
    except ImportError:  # pragma: no cover - specutils is a dependency
        return False
    data_loader("LAMOST", identifier=_identify_lamost, dtype=Spectrum,
                extensions=["fits", "fits.gz", "fit"], priority=5, force=True)(_specutils_reader)
    _REGISTERED = True
    return True


if "specutils" in sys.modules:  # specutils users: available right after import
    register_specutils_loader()
