"""Readers for the MILES stellar library (real reference spectra of hot stars).

MILES: Sanchez-Blazquez et al. (2006, MNRAS 371, 703); Falcon-Barroso et al. (2011,
A&A 532, A95, FWHM = 2.50 AA); atmospheric parameters from Cenarro et al. (2007) and
Prugniel et al. (2011) as compiled in ``paramsMILES_v9.1.txt``.

The spectra are 1-D FITS images, linear in AIR wavelength (CRVAL1 = 3540.5 AA,
CDELT1 = 0.9 AA, 4,300 pixels), flux-calibrated (relative flux per AA).
:func:`load_miles_hot_stars` converts them to vacuum, degrades them to R = 1800 and
resamples them onto the LAMOST log-lambda grid, so they can be compared pixel by pixel
with LAMOST and mock spectra.
"""

from __future__ import annotations

import logging
import re
from os import PathLike
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import MaskedColumn, Table

from obpipe.spectra.grid import LAMOST_LOG10_WAVE_START, LAMOST_LOG10_WAVE_STEP, LAMOST_N_PIXELS
from obpipe.spectra.indices import air_to_vacuum, degrade_resolution, resample_to_loglam

logger = logging.getLogger(__name__)

#: Spectral resolution of the MILES spectra, FWHM in AA (Falcon-Barroso et al. 2011).
MILES_FWHM_AA = 2.50
#: Name of the parameter file in a MILES data directory.
MILES_PARAMS_FILE = "paramsMILES_v9.1.txt"
#: File-name pattern of a MILES spectrum (NNNN: MILES number, zero padded).
MILES_SPECTRUM_PATTERN = "MILES_res2.50_star_m{:04d}V.fits"

# Fixed-width layout of paramsMILES_v9.1.txt: (column, start, stop), 0-based characters.
# Determined from the header line and the occupancy of every character column.
# Characters 17-21 hold a "Cl" flag for cluster members.
_PARAM_COLUMNS: tuple[tuple[str, int, int], ...] = (
    ("name", 0, 17),
    ("cluster_flag", 17, 22),
    ("miles_id", 22, 28),
    ("cat_id", 28, 34),
    ("sptype", 34, 50),
    ("teff", 50, 57),
    ("logg", 57, 64),
    ("feh", 64, 72),
    ("refs", 72, 79),
    ("libraries", 79, None),
)
_INT_RE = re.compile(r"^\d+$")


def _parse_number(text: str, kind: type) -> tuple[float | int, bool]:
    """Parse ``text`` as ``kind``; return (value, is_masked)."""
    t = text.strip()
    if kind is int:
        if _INT_RE.match(t):
            return int(t), False
        return 0, True
    try:
        return float(t), False
    except ValueError:
        return np.nan, True


def read_miles_parameters(path: str | PathLike) -> Table:
    """Read the MILES parameter table (``paramsMILES_v9.1.txt``, fixed width).

    Returns
    -------
    astropy Table with one row per star and columns

    ``name`` (str), ``cluster`` (bool, "Cl" flag), ``miles_id`` (int, masked if the
    file's entry is not an integer, e.g. ``022.``), ``cat_id`` (int, CaT library number,
    masked if absent), ``sptype`` (str, may be empty), ``teff`` (K), ``logg``
    (dex, cgs), ``feh`` (dex), ``refs`` and ``libraries`` (str).

    Empty or unparseable numbers are masked. The first three lines (header, sub-header,
    dashed rule) are skipped.
    """
    lines = Path(path).read_text().splitlines()
    rows = [ln for ln in lines[3:] if ln.strip()]
    cols: dict[str, list] = {c[0]: [] for c in _PARAM_COLUMNS}
    masks: dict[str, list[bool]] = {c: [] for c in ("miles_id", "cat_id", "teff", "logg", "feh")}
    for ln in rows:
        for name, a, b in _PARAM_COLUMNS:
            field = ln[a:b] if b is not None else ln[a:]
            if name in ("miles_id", "cat_id"):
                v, m = _parse_number(field, int)
                cols[name].append(v)
                masks[name].append(m)
            elif name in ("teff", "logg", "feh"):
                v, m = _parse_number(field, float)
                cols[name].append(v)
                masks[name].append(m)
            else:
                cols[name].append(field.strip())
    t = Table()
    t["name"] = cols["name"]
    t["cluster"] = np.array([c == "Cl" for c in cols["cluster_flag"]], dtype=bool)
    for c, dtype in (("miles_id", int), ("cat_id", int)):
        t[c] = MaskedColumn(np.array(cols[c], dtype=dtype), mask=masks[c])
    t["sptype"] = cols["sptype"]
    for c, unit in (("teff", "K"), ("logg", "dex"), ("feh", "dex")):
        t[c] = MaskedColumn(np.array(cols[c], dtype=float), mask=masks[c], unit=unit)
    t["refs"] = cols["refs"]
    t["libraries"] = cols["libraries"]
    n_bad = int(np.sum(masks["miles_id"]))
    if n_bad:
        logger.info("%s: %d row(s) with an unparseable MILES number (masked)", path, n_bad)
    t.meta["source"] = (
        "MILES stellar library parameters v9.1 (Cenarro et al. 2007; Prugniel et al. 2011)"
    )
    return t


def read_miles_spectrum(path: str | PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one MILES spectrum (``MILES_res2.50_star_mNNNNV.fits``).

    Returns
    -------
    (wave_aa_air, flux): AIR wavelengths in AA from the header (CRVAL1, CDELT1,
    CRPIX1; linear) and the flux as native-endian float64 (relative flux per AA).
    Convert with :func:`obpipe.spectra.indices.air_to_vacuum` before comparing with
    LAMOST (vacuum) spectra.
    """
    with fits.open(path) as hdul:
        hdr = hdul[0].header
        data = np.asarray(hdul[0].data, dtype=np.float64)
    if data.ndim != 1:
        raise ValueError(f"{path}: expected a 1-D spectrum, got shape {data.shape}")
    crval = float(hdr["CRVAL1"])
    cdelt = float(hdr.get("CDELT1", hdr.get("CD1_1", np.nan)))
    crpix = float(hdr.get("CRPIX1", 1.0))
    if not np.isfinite(cdelt):
        raise ValueError(f"{path}: no CDELT1/CD1_1 in header")
    if int(hdr.get("DC-FLAG", 0)) != 0:
        raise ValueError(f"{path}: log-lambda (DC-FLAG=1) spectra are not supported")
    wave = crval + cdelt * (np.arange(data.size) + 1.0 - crpix)
    return wave, data


def load_miles_hot_stars(
    data_dir: str | PathLike,
    target_R: float = 1800.0,
) -> tuple[Table, np.ndarray, np.ndarray]:
    """Load every MILES star of ``data_dir`` that has a spectrum file, at LAMOST resolution.

    Parameters
    ----------
    data_dir : path
        Directory with ``paramsMILES_v9.1.txt`` and ``MILES_res2.50_star_mNNNNV.fits``.
    target_R : float
        Resolving power of the output (default 1800, LAMOST).

    Returns
    -------
    (table, wave_vac, flux_2d): the parameter rows of the stars with a file (sorted by
    MILES number; column ``file`` added), the LAMOST vacuum wavelength grid (3909,) in
    AA, and the fluxes (n_star, 3909), converted air -> vacuum, degraded from
    FWHM = 2.5 AA to ``target_R`` (unchanged where 2.5 AA is already coarser, i.e.
    below 4500 AA for R = 1800) and linearly interpolated onto the grid; NaN outside
    the MILES coverage (3541-7410 AA air).
    """
    data_dir = Path(data_dir)
    params = read_miles_parameters(data_dir / MILES_PARAMS_FILE)
    ok = ~np.ma.getmaskarray(params["miles_id"])
    by_id = {int(params["miles_id"][i]): i for i in np.flatnonzero(ok)}
    files = sorted(data_dir.glob("MILES_res2.50_star_m*V.fits"))
    rows: list[int] = []
    names: list[str] = []
    fluxes: list[np.ndarray] = []
    wave_out = None
    for fp in files:
        m = re.search(r"_m(\d{4})V\.fits$", fp.name)
        if m is None:
            continue
        mid = int(m.group(1))
        if mid not in by_id:
            logger.warning("%s: MILES number %d not in the parameter table; skipped", fp, mid)
            continue
        wave_air, flux = read_miles_spectrum(fp)
        wave_vac = air_to_vacuum(wave_air)
        smooth = degrade_resolution(wave_vac, flux, MILES_FWHM_AA, target_R)
        wave_out, resampled = resample_to_loglam(
            wave_vac, smooth, LAMOST_LOG10_WAVE_START, LAMOST_LOG10_WAVE_STEP, LAMOST_N_PIXELS
        )
        rows.append(by_id[mid])
        names.append(fp.name)
        fluxes.append(resampled)
    if not rows:
        raise FileNotFoundError(f"no MILES spectra with parameters found in {data_dir}")
    table = params[rows]
    table["file"] = names
    order = np.argsort(np.asarray(table["miles_id"]))
    table = table[order]
    flux_2d = np.vstack(fluxes)[order]
    logger.info("loaded %d MILES spectra from %s", len(table), data_dir)
    return table, wave_out, flux_2d
