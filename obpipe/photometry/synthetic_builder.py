"""Offline builder of the shipped intrinsic-photometry table (not used at run time).

:func:`build_intrinsic_photometry_table` recomputes ``obpipe/data/intrinsic_photometry.ecsv``
from a blackbody, the pyphot passbands, the Kurucz grid shipped with ``dustapprox`` and
Mamajek's dwarf sequence; :func:`write_intrinsic_photometry_table` writes it. The pipeline
and the mock read the table through :mod:`obpipe.photometry.synthetic`, which defines the
bands (:data:`~obpipe.photometry.synthetic.BANDS`) and the bolometric corrections.

The SED (how the shipped table ``obpipe/data/intrinsic_photometry.ecsv`` is made)
-------------------------------------------------------------------------------
No model-atmosphere spectra are available offline, so the base SED is a blackbody
at Teff (emergent flux pi B_lambda). A blackbody is a poor hot-star SED (Balmer jump,
line blanketing, H/He bound-free and free-free opacity). Measured against the
references (O9V-F1V): its BC_Ks is off by 0.1-0.43 mag for B stars (-0.34 at B0V),
J - H by +0.01-0.08, H - Ks by -0.03-+0.02, g - r by +0.07-0.25 mag (Mamajek), and
BP - RP by up to +0.24 mag at 9-10 kK, G - RP by up to +0.19 mag (Kurucz). The
table therefore is ``BC_X = BC_X,BB(Teff) + Delta_X(Teff, log g)`` with an
*empirical* correction Delta_X calibrated to published references:

1. Gaia G, BP, RP: Delta from the Kurucz (ATLAS9 ODFNEW, Castelli & Kurucz 2003)
   synthetic Gaia DR3 photometry shipped with ``dustapprox`` (Fouesneau et al. 2022,
   A&A 662, A125; ``kurucz_gaiaedr3_small_a0_grid.csv``, A0 = 0, [Fe/H] = 0), turned
   into BCs with the pyphot Vega zero points. Where the Kurucz grid lacks a log g
   (log g > 5 everywhere; log g < 4.5 at 40-49 kK, < 5 at 50 kK) the correction of the
   nearest available log g at that Teff is used.
2. The other bands take the Kurucz correction of the nearest Gaia band
   (interpolated linearly in log pivot wavelength between BP and RP, clamped outside)
   -- which carries the Kurucz log g dependence -- plus a Teff-only offset that makes
   main-sequence stars match the Mamajek dwarf sequence (Pecaut & Mamajek 2013,
   ApJS 208, 9; table version 2024.05.15, ``EEM_dwarf_UBVIJHK_colors_Teff.txt``), at
   the dwarf log g = log(M/R^2) + 4.438 from the same table:

   * Ks: BC_Ks = BCv + (V - Ks) (O9V to F5V);
   * H, J: the H - Ks and J - H colours;
   * r, i: no dwarf offset (Kurucz-interpolated correction only);
   * g: the g - r colour (O5V to F5V).

   The dwarf offsets are smoothed with a cubic polynomial in log10 Teff and held at
   their end value outside the Teff range Mamajek covers (> 33.3 kK for J, H, Ks,
   > 41.4 kK for g).

   Residuals of the table (dwarfs O9V-F1V at their log g): M_Ks - M_Ks,Mamajek within
   +-0.065 mag (B1V worst), J - H and H - Ks within 0.021 mag, g - r within 0.043 mag
   (O5V-F1V); BP - RP and G - RP equal the Kurucz grid to < 0.001 mag on its nodes.
   Not calibrated, for information: M_G is 0.01-0.11 mag brighter than Mamajek's
   (DR2-based) M_G for B3V-F1V, r - i within 0.02 mag of Mamajek at A0V/A5V/F1V.
   Linear interpolation in the table is good to 0.004 mag.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from obpipe.photometry.synthetic import (
    BANDS,
    L_SUN_ERG_S,
    LOGG_GRID,
    MBOL_SUN,
    TABLE_FILENAME,
    TEFF_RANGE_K,
    _bilinear_weights,
    clear_table_cache,
)

if TYPE_CHECKING:  # imported where used: astropy.table costs ~0.5 s of start-up
    from astropy.table import Table

logger = logging.getLogger(__name__)

#: pyphot filter names (``pyphot.get_library()``) of each band.
PYPHOT_FILTERS: MappingProxyType[str, str] = MappingProxyType(
    {
        "g": "SDSS_g",
        "r": "SDSS_r",
        "i": "SDSS_i",
        "G": "Gaia_MAW_G",
        "BP": "Gaia_MAW_BP_faint",
        "RP": "Gaia_MAW_RP",
        "J": "2MASS_J",
        "H": "2MASS_H",
        "Ks": "2MASS_Ks",
    }
)
#: Magnitude system of each band.
MAG_SYSTEMS: MappingProxyType[str, str] = MappingProxyType(
    {
        "g": "AB",
        "r": "AB",
        "i": "AB",
        "G": "Vega",
        "BP": "Vega",
        "RP": "Vega",
        "J": "Vega",
        "H": "Vega",
        "Ks": "Vega",
    }
)
#: number of Teff nodes (log-uniform, rounded to 10 K).
N_TEFF: int = 241
MAMAJEK_FILENAME = "EEM_dwarf_UBVIJHK_colors_Teff.txt"
KURUCZ_GRID_RELPATH = ("data", "precomputed", "grids", "kurucz_gaiaedr3_small_a0_grid.csv")

# cgs constants
_H = 6.62607015e-27
_C = 2.99792458e10
_K_B = 1.380649e-16
_SIGMA_SB = 5.670374419e-5
_PC_CM = 3.0856775814913673e18
#: bolometric flux of an M_bol = 0 star, erg/s/cm^2.
_FBOL_ZERO = L_SUN_ERG_S / (4.0 * np.pi * (10.0 * _PC_CM) ** 2) * 10.0 ** (0.4 * MBOL_SUN)
_KURUCZ_PB = MappingProxyType({"G": "GAIA_GAIA3.G", "BP": "GAIA_GAIA3.Gbp", "RP": "GAIA_GAIA3.Grp"})


def teff_grid() -> np.ndarray:
    """Teff nodes of the shipped table, K (log-uniform 7,000-50,000 K, 10 K rounding)."""
    grid = np.round(np.geomspace(*TEFF_RANGE_K, N_TEFF) / 10.0) * 10.0
    return np.unique(grid)


def default_shared_data_dir() -> Path:
    """The repository's ``shared/data`` folder (holds the Mamajek table)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _planck_surface_flux(wave_aa: np.ndarray, teff_k: np.ndarray) -> np.ndarray:
    """Emergent blackbody flux pi B_lambda, erg/s/cm^2/AA, shape (n_teff, n_wave)."""
    lam_cm = wave_aa * 1e-8
    x = _H * _C / (lam_cm[None, :] * _K_B * np.asarray(teff_k, dtype=float)[:, None])
    return np.pi * 2.0 * _H * _C**2 / lam_cm[None, :] ** 5 / np.expm1(x) * 1e-8


def _surface_mbol(teff_k: np.ndarray) -> np.ndarray:
    """-2.5 log10 of the bolometric surface flux relative to an M_bol = 0 star."""
    return -2.5 * np.log10(_SIGMA_SB * np.asarray(teff_k, dtype=float) ** 4 / _FBOL_ZERO)


@lru_cache(maxsize=1)
def _pyphot_filters() -> dict[str, object]:
    from pyphot import get_library

    lib = get_library()
    return {band: lib[name] for band, name in PYPHOT_FILTERS.items()}


def _zero_flux_flam(band: str) -> float:
    """Zero-magnitude flux (<F_lambda>, erg/s/cm^2/AA) of ``band`` in its system."""
    filt = _pyphot_filters()[band]
    zp = filt.AB_zero_flux if MAG_SYSTEMS[band] == "AB" else filt.Vega_zero_flux
    return float(zp.to("erg/(s cm2 AA)").value)


def blackbody_bolometric_correction(teff_k: np.ndarray, band: str) -> np.ndarray:
    """BC_X of a blackbody through the pyphot filter curve of ``band``, mag.

    Parameters
    ----------
    teff_k : array_like
        Effective temperature(s), K.
    band : str
        One of :data:`BANDS`.
    """
    import astropy.units as u

    filt = _pyphot_filters()[band]
    wave = np.arange(1000.0, 40000.0, 1.0)
    teff = np.atleast_1d(np.asarray(teff_k, dtype=float))
    flux = _planck_surface_flux(wave, teff)
    fx = filt.get_flux(wave * u.AA, flux * u.Unit("erg/(s cm2 AA)"), axis=-1)
    fx = np.asarray(fx.to("erg/(s cm2 AA)").value, dtype=float)
    m_x = -2.5 * np.log10(fx / _zero_flux_flam(band))
    return (_surface_mbol(teff) - m_x).reshape(np.shape(teff_k))


def read_mamajek_dwarfs(path: Path | str | None = None) -> Table:
    """Parse Mamajek's dwarf sequence (Pecaut & Mamajek 2013; version 2024.05.15).

    Parameters
    ----------
    path : path-like, optional
        ``EEM_dwarf_UBVIJHK_colors_Teff.txt``; default ``<repo>/../shared/data``.

    Returns
    -------
    astropy.table.Table
        One row per spectral type of the first block (O3V-Y4V), columns named as in the
        file header (``SpT``, ``Teff``, ``BCv``, ``logL``, ``V-Ks``, ``J-H``, ``H-Ks``,
        ``M_Ks``, ``g-r``, ``R_Rsun``, ``Msun``, ...); missing values ("...") are NaN,
        uncertain ones ("1.23:") are kept.
    """
    path = Path(path) if path is not None else default_shared_data_dir() / MAMAJEK_FILENAME
    lines = path.read_text().splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("#SpT"))
    names = lines[start].lstrip("#").split()[:-1]  # drop the trailing "#SpT"
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("#") or not line.strip():
            break
        rows.append(line.split()[: len(names)])
    cols = {}
    for k, name in enumerate(names):
        vals = [r[k] for r in rows]
        if name == "SpT":
            cols[name] = vals
            continue
        cols[name] = np.array(
            [np.nan if set(v) <= {"."} else float(v.rstrip(":")) for v in vals],
            dtype=float,
        )
    from astropy.table import Table

    return Table(cols)


def _read_kurucz_gaia_bcs(path: Path | str | None = None) -> Table:
    """Kurucz BC_G, BC_BP, BC_RP ([Fe/H] = 0, A0 = 0) from the dustapprox grid."""
    import pandas as pd

    if path is None:
        import dustapprox

        path = Path(dustapprox.__file__).parent.joinpath(*KURUCZ_GRID_RELPATH)
    df = pd.read_csv(path)
    df = df[(df["A0"] == 0.0) & (df["feh"] == 0.0)]
    piv = df.pivot_table(index=["teff", "logg"], columns="passband", values="mag0")
    piv = piv.reset_index()
    teff = piv["teff"].to_numpy(dtype=float)
    from astropy.table import Table

    out = Table({"teff": teff, "logg": piv["logg"].to_numpy(dtype=float)})
    mbol = _surface_mbol(teff)
    for band, pb in _KURUCZ_PB.items():
        # mag0 = -2.5 log10 <F_lambda> of the emergent flux in erg/s/cm^2/AA.
        m_x = piv[pb].to_numpy(dtype=float) + 2.5 * np.log10(_zero_flux_flam(band))
        out[f"BC_{band}"] = mbol - m_x
    return out


def _kurucz_corrections(kur: Table, teff: np.ndarray, logg: np.ndarray) -> dict[str, np.ndarray]:
    """Delta = BC_Kurucz - BC_BB for G, BP, RP on (teff, logg) -> [n_teff, n_logg].

    Missing log g at a Kurucz Teff: value of the nearest available log g (clamping).
    Linear in log g between Kurucz nodes, linear in log10 Teff between Kurucz Teffs.
    """
    kt = np.unique(np.asarray(kur["teff"], dtype=float))
    bb = {b: blackbody_bolometric_correction(kt, b) for b in _KURUCZ_PB}
    out = {}
    for band in _KURUCZ_PB:
        on_nodes = np.empty((kt.size, logg.size))
        for k, t in enumerate(kt):
            sel = np.asarray(kur["teff"]) == t
            g = np.asarray(kur["logg"])[sel]
            order = np.argsort(g)
            d = np.asarray(kur[f"BC_{band}"])[sel][order] - bb[band][k]
            on_nodes[k] = np.interp(logg, g[order], d)  # np.interp clamps
        out[band] = np.stack(
            [np.interp(np.log10(teff), np.log10(kt), on_nodes[:, m]) for m in range(logg.size)],
            axis=1,
        )
    return out


def _smooth_offset(
    t_ref: np.ndarray, y_ref: np.ndarray, teff: np.ndarray, degree: int = 3
) -> np.ndarray:
    """Cubic-in-log10(Teff) least-squares fit of y_ref, held constant beyond the data."""
    ok = np.isfinite(y_ref) & np.isfinite(t_ref)
    x = np.log10(t_ref[ok])
    coef = np.polynomial.polynomial.polyfit(x, y_ref[ok], degree)
    xe = np.clip(np.log10(teff), x.min(), x.max())
    return np.polynomial.polynomial.polyval(xe, coef)


def _pivot_log_wavelength(band: str) -> float:
    filt = _pyphot_filters()[band]
    return float(np.log10(filt.lpivot.to("AA").value))


def _kurucz_like(band: str, kdelta: dict[str, np.ndarray]) -> np.ndarray:
    """Kurucz correction of the nearest Gaia band(s), linear in log pivot wavelength."""
    if band in kdelta:
        return kdelta[band]
    x_bp, x_rp = _pivot_log_wavelength("BP"), _pivot_log_wavelength("RP")
    w = np.clip((_pivot_log_wavelength(band) - x_bp) / (x_rp - x_bp), 0.0, 1.0)
    return (1.0 - w) * kdelta["BP"] + w * kdelta["RP"]


def _at_logg(arr2d: np.ndarray, logg_nodes: np.ndarray, logg_dw: np.ndarray) -> np.ndarray:
    """Evaluate arr2d[n_teff, n_logg] at one log g per Teff row (linear in log g)."""
    j, w = _bilinear_weights(logg_dw, logg_nodes)
    rows = np.arange(arr2d.shape[0])
    return (1 - w) * arr2d[rows, j] + w * arr2d[rows, j + 1]


#: Teff range of the Mamajek rows used for the dwarf offsets, K.
_MAMAJEK_FIT_RANGE_K = (6500.0, 50000.0)


def build_intrinsic_photometry_table(
    mamajek_path: Path | str | None = None, kurucz_grid_path: Path | str | None = None
) -> Table:
    """Recompute the shipped intrinsic-photometry table (see the module docstring).

    Parameters
    ----------
    mamajek_path : path-like, optional
        Mamajek's ``EEM_dwarf_UBVIJHK_colors_Teff.txt``; default
        ``<repo>/../shared/data``.
    kurucz_grid_path : path-like, optional
        dustapprox's ``kurucz_gaiaedr3_small_a0_grid.csv``; default: the installed copy.

    Returns
    -------
    astropy.table.Table
        Columns ``teff`` (K), ``logg`` (cgs), ``BC_<band>`` (mag, rounded to 1e-5) on
        the full :func:`teff_grid` x :data:`LOGG_GRID` grid, provenance in ``meta``.
    """
    teff = teff_grid()
    logg = np.asarray(LOGG_GRID, dtype=float)
    bb = {b: blackbody_bolometric_correction(teff, b) for b in BANDS}
    kdelta = _kurucz_corrections(_read_kurucz_gaia_bcs(kurucz_grid_path), teff, logg)

    mam = read_mamajek_dwarfs(mamajek_path)
    t_m = np.asarray(mam["Teff"], dtype=float)
    keep = (t_m >= _MAMAJEK_FIT_RANGE_K[0]) & (t_m <= _MAMAJEK_FIT_RANGE_K[1])
    mam = mam[keep]
    t_m = t_m[keep]
    logg_m = np.log10(np.asarray(mam["Msun"]) / np.asarray(mam["R_Rsun"]) ** 2) + 4.438
    # dwarf log g on the table's Teff grid (Teff decreases down the Mamajek table)
    order = np.argsort(t_m)
    okg = np.isfinite(logg_m[order])
    logg_dw = np.interp(np.log10(teff), np.log10(t_m[order][okg]), logg_m[order][okg])

    bb_m = {b: blackbody_bolometric_correction(t_m, b) for b in ("g", "r", "J", "H", "Ks")}
    # reference BCs / colours of the dwarfs (colour a-b = BC_b - BC_a)
    bc_ks_ref = np.asarray(mam["BCv"]) + np.asarray(mam["V-Ks"])
    d_ks = bc_ks_ref - bb_m["Ks"]
    d_hk = (bb_m["Ks"] - bb_m["H"]) - np.asarray(mam["H-Ks"])  # Delta_H - Delta_Ks
    d_jh = (bb_m["H"] - bb_m["J"]) - np.asarray(mam["J-H"])  # Delta_J - Delta_H
    d_gr = (bb_m["r"] - bb_m["g"]) - np.asarray(mam["g-r"])  # Delta_g - Delta_r

    kl = {b: _kurucz_like(b, kdelta) for b in BANDS}
    kl_dw = {b: _at_logg(kl[b], logg, logg_dw) for b in BANDS}
    delta_dw = {
        "Ks": _smooth_offset(t_m, d_ks, teff),
    }
    delta_dw["H"] = delta_dw["Ks"] + _smooth_offset(t_m, d_hk, teff)
    delta_dw["J"] = delta_dw["H"] + _smooth_offset(t_m, d_jh, teff)
    delta_dw["g"] = kl_dw["r"] + _smooth_offset(t_m, d_gr, teff)
    # beyond Mamajek's V-Ks (O9V, 33.3 kK) keep the IR offset relative to RP constant
    t_ir_max = float(np.nanmax(t_m[np.isfinite(d_ks)]))
    hot = teff > t_ir_max
    for b in ("J", "H", "Ks"):
        off = delta_dw[b] - kl_dw[b]
        off_edge = np.interp(np.log10(t_ir_max), np.log10(teff), off)
        delta_dw[b] = np.where(hot, kl_dw[b] + off_edge, delta_dw[b])

    cols: dict[str, np.ndarray] = {
        "teff": np.repeat(teff, logg.size),
        "logg": np.tile(logg, teff.size),
    }
    for b in BANDS:
        offset = (delta_dw[b] - kl_dw[b]) if b in delta_dw else np.zeros_like(teff)
        delta = kl[b] + offset[:, None]
        bc = bb[b][:, None] + delta
        cols[f"BC_{b}"] = np.round(bc.ravel(), 5)

    from astropy.table import Table

    tab = Table(cols)
    tab["teff"].unit = "K"
    tab["teff"].description = "effective temperature"
    tab["logg"].description = "log10 surface gravity, cgs"
    for b in BANDS:
        col = tab[f"BC_{b}"]
        col.unit = "mag"
        col.description = f"bolometric correction M_bol - M_{b} ({MAG_SYSTEMS[b]}; M_bol,sun 4.74)"
    tab.meta.update(_table_meta())
    return tab


def _table_meta() -> dict[str, object]:
    return {
        "name": "obpipe intrinsic photometry of hot stars",
        "built_by": "obpipe.photometry.synthetic_builder.build_intrinsic_photometry_table()",
        "definition": "BC_X = M_bol - M_X, M_bol = 4.74 - 2.5 log10(L/Lsun) (IAU 2015 B2)",
        "interpolation": "bilinear in (log10 teff, logg); good to 0.004 mag",
        "residuals": (
            "dwarfs O9V-F1V: M_Ks vs Mamajek within 0.065 mag, J-H and H-Ks within "
            "0.021, g-r within 0.043 (O5V-F1V); BP-RP, G-RP vs Kurucz < 0.001 on its "
            "nodes. Plain blackbody for comparison: BC_Ks off by up to 0.43, g-r by "
            "0.25, BP-RP by 0.24 mag."
        ),
        "sed": (
            "Blackbody at Teff (emergent flux pi B_lambda) plus an EMPIRICAL per-band "
            "correction Delta_X(Teff, logg) calibrated to published references: "
            "(1) Gaia G, BP, RP: Kurucz ATLAS9 (Castelli & Kurucz 2003) synthetic Gaia "
            "DR3 photometry of dustapprox (kurucz_gaiaedr3_small_a0_grid.csv, A0=0, "
            "[Fe/H]=0), nearest available logg where the grid lacks it (logg > 5 "
            "everywhere, < 4.5 at 40-49 kK, < 5 at 50 kK); (2) other bands: the Kurucz "
            "correction interpolated in log pivot wavelength between BP and RP (clamped) "
            "plus a Teff-only offset that makes dwarfs (logg = log M/R^2 + 4.438 from "
            "the same table) match the Mamajek dwarf sequence: BC_Ks = BCv + (V-Ks), "
            "H-Ks, J-H, g-r; offsets fitted by cubic polynomials in log10 Teff over "
            "6,500 K to the hottest tabulated type and held constant beyond it (for "
            "J, H, Ks relative to the RP correction above 33.3 kK). r, i: Kurucz-"
            "interpolated correction only."
        ),
        "filters": {b: f"pyphot {PYPHOT_FILTERS[b]}" for b in BANDS},
        "filter_notes": (
            "SDSS_g/r/i: SDSS 2.5 m camera, airmass 1.3; Gaia_MAW_*: Maiz Apellaniz & "
            "Weiler (2018) revised DR2 passbands (BP faint, G > 10.87); 2MASS_*: Cohen "
            "et al. (2003). pyphot has no DR3 curve; the Gaia calibration is on DR3."
        ),
        "magnitude_systems": dict(MAG_SYSTEMS),
        "vega": "pyphot default Vega spectrum (stis_003, Bohlin 2007), magnitude 0",
        "citations": [
            "Xiang et al. (LAMOST OB stars): M_Ks from L and Teff through BC_Ks",
            "Pecaut & Mamajek 2013, ApJS 208, 9 (dwarf sequence, version 2024.05.15)",
            "Castelli & Kurucz 2003, IAU Symp. 210, A20 (ATLAS9 ODFNEW)",
            "Fouesneau et al. 2022, A&A 662, A125 (dustapprox)",
            "Maiz Apellaniz & Weiler 2018, A&A 619, A180 (Gaia passbands)",
            "Cohen, Wheaton & Megeath 2003, AJ 126, 1090 (2MASS)",
            "Fukugita et al. 1996, AJ 111, 1748; Doi et al. 2010, AJ 139, 1628 (SDSS)",
            "Oke & Gunn 1983, ApJ 266, 713 (AB)",
            "Bohlin 2007, ASP Conf. Ser. 364, 315 (Vega)",
            "IAU 2015 Resolutions B2, B3 (M_bol,sun = 4.74, L_sun = 3.828e33 erg/s)",
            "Fouesneau et al. 2022 / Fitzpatrick 1999 PASP 111, 63 (extinction, in code)",
        ],
    }


def write_intrinsic_photometry_table(path: Path | str | None = None) -> Path:
    """Rebuild the table and write it (default: the package's ``data/`` folder)."""
    if path is None:
        path = Path(__file__).resolve().parents[1] / "data" / TABLE_FILENAME
    path = Path(path)
    tab = build_intrinsic_photometry_table()
    tab.write(path, format="ascii.ecsv", overwrite=True)
    clear_table_cache()
    logger.info("wrote %s (%d rows)", path, len(tab))
    return path
