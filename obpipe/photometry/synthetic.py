"""Intrinsic broad-band photometry and extinction coefficients of hot stars.

Used by the mock survey (``obpipe.simulate``) to turn (Teff, log g, L) into absolute
magnitudes, and by the pipeline to turn colour excesses into E(B-V). This module holds
the run-time lookups in the shipped table ``obpipe/data/intrinsic_photometry.ecsv`` and
in ``dustapprox``'s extinction models; how the table is made (the SED, its calibration
and residuals) is in :mod:`obpipe.photometry.synthetic_builder`, which rebuilds it.

Bands and magnitude systems
---------------------------
``BANDS = ("g", "r", "i", "G", "BP", "RP", "J", "H", "Ks")``

* SDSS g, r, i: AB system (Oke & Gunn 1983), pyphot curves ``SDSS_g/r/i`` (the SDSS
  2.5 m camera response at airmass 1.3, Doi et al. 2010 / Fukugita et al. 1996).
* Gaia G, BP, RP: Vega system, pyphot curves ``Gaia_MAW_G``, ``Gaia_MAW_BP_faint``,
  ``Gaia_MAW_RP`` (Maiz Apellaniz & Weiler 2018, A&A 619, A180: the revised DR2
  passbands; BP "faint" applies to G > 10.87, i.e. most survey stars). pyphot ships
  no Gaia (E)DR3 curve; the Kurucz calibration below is on the DR3 passbands, so the
  G, BP, RP magnitudes are effectively DR3-like.
* 2MASS J, H, Ks: Vega system, pyphot curves ``2MASS_J/H/Ks`` (Cohen, Wheaton &
  Megeath 2003, AJ 126, 1090).
* Vega: pyphot's default ``stis_003`` spectrum (Bohlin 2007), magnitude 0 in all
  Vega-system bands.

Bolometric corrections
----------------------
``BC_X = M_bol - M_X`` with ``M_bol = 4.74 - 2.5 log10(L / L_sun)`` (IAU 2015
Resolution B2; M_bol,sun = 4.74). As in Xiang et al. (LAMOST OB stars), M_Ks follows
from L and Teff through BC_Ks: ``M_Ks = 4.74 - 2.5 log L - BC_Ks(Teff, log g)``.

Extinction coefficients
-----------------------
``R_X = A_X / E(B-V)`` for the Fitzpatrick (1999, PASP 111, 63) R_V = 3.1 law on a
Kurucz spectrum, from the ``dustapprox`` precomputed polynomial models (Fouesneau et
al. 2022) ``A_X / A0 (Teff, A0)`` evaluated at A0 = 0.01 mag and converted with
A0 = 3.1 E(B-V) (A0 is the monochromatic extinction at 550 nm).
"""

from __future__ import annotations

import functools
import logging
import threading
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where used: astropy.table costs ~0.5 s of start-up
    from astropy.table import Table

logger = logging.getLogger(__name__)

BANDS: tuple[str, ...] = ("g", "r", "i", "G", "BP", "RP", "J", "H", "Ks")

#: Absolute bolometric magnitude of the Sun (IAU 2015 Resolution B2).
MBOL_SUN: float = 4.74
#: Nominal solar luminosity, erg/s (IAU 2015 Resolution B3).
L_SUN_ERG_S: float = 3.828e33
#: R_V of the Fitzpatrick (1999) curve used for the extinction coefficients.
R_V: float = 3.1
#: dustapprox passband names of each band.
DUSTAPPROX_PASSBANDS: MappingProxyType[str, str] = MappingProxyType(
    {
        "g": "SLOAN_SDSS.g",
        "r": "SLOAN_SDSS.r",
        "i": "SLOAN_SDSS.i",
        "G": "GAIA_GAIA3.G",
        "BP": "GAIA_GAIA3.Gbp",
        "RP": "GAIA_GAIA3.Grp",
        "J": "2MASS_2MASS.J",
        "H": "2MASS_2MASS.H",
        "Ks": "2MASS_2MASS.Ks",
    }
)

#: Teff range of the table, K.
TEFF_RANGE_K: tuple[float, float] = (7000.0, 50000.0)
#: log g grid of the table (cgs).
LOGG_GRID: tuple[float, ...] = tuple(np.round(np.arange(2.0, 8.01, 0.5), 2).tolist())

TABLE_FILENAME = "intrinsic_photometry.ecsv"
_A0_SMALL = 0.01


# --------------------------------------------------------------------------- loaders


@functools.lru_cache(maxsize=1)
def _load_table() -> Table:
    path = resources.files("obpipe") / "data" / TABLE_FILENAME
    from astropy.table import Table

    with resources.as_file(path) as p:
        tab = Table.read(p, format="ascii.ecsv")
    return tab


def intrinsic_colour_table() -> Table:
    """The shipped intrinsic-photometry table (a copy).

    Returns
    -------
    astropy.table.Table
        Columns ``teff`` (K), ``logg`` (cgs) and ``BC_<band>`` (mag) for every band in
        :data:`BANDS`; provenance in ``table.meta``. See the module docstring.
    """
    return _load_table().copy()


@functools.lru_cache(maxsize=1)
def _bc_grid() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(log10 Teff nodes, log g nodes, {band: BC[n_teff, n_logg]}) from the table."""
    tab = _load_table()
    teff = np.unique(np.asarray(tab["teff"], dtype=float))
    logg = np.unique(np.asarray(tab["logg"], dtype=float))
    order = np.lexsort((np.asarray(tab["logg"]), np.asarray(tab["teff"])))
    shape = (teff.size, logg.size)
    if len(tab) != teff.size * logg.size:
        raise ValueError("intrinsic photometry table is not a full Teff x log g grid")
    bc = {}
    for band in BANDS:
        arr = np.asarray(tab[f"BC_{band}"], dtype=float)[order].reshape(shape)
        arr.setflags(write=False)
        bc[band] = arr
    lt = np.log10(teff)
    lt.setflags(write=False)
    logg.setflags(write=False)
    return lt, logg, bc


def _bilinear_weights(x: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower-node index and fractional weight for linear interpolation (clamped)."""
    xc = np.clip(x, nodes[0], nodes[-1])
    j = np.clip(np.searchsorted(nodes, xc, side="right") - 1, 0, nodes.size - 2)
    w = (xc - nodes[j]) / (nodes[j + 1] - nodes[j])
    return j, w


def _check_range(teff_k: np.ndarray, logg: np.ndarray, lt: np.ndarray, lg: np.ndarray) -> None:
    finite = np.isfinite(teff_k) & np.isfinite(logg)
    lo_t, hi_t = 10.0 ** lt[0], 10.0 ** lt[-1]
    out = finite & (
        (teff_k < lo_t * (1 - 1e-9))
        | (teff_k > hi_t * (1 + 1e-9))
        | (logg < lg[0])
        | (logg > lg[-1])
    )
    if np.any(out):
        logger.debug(
            "%d star(s) outside the table (Teff %.0f-%.0f K, log g %.1f-%.1f): clamped",
            int(out.sum()),
            lo_t,
            hi_t,
            lg[0],
            lg[-1],
        )


def bolometric_correction(teff_k: np.ndarray, logg: np.ndarray, band: str) -> np.ndarray:
    """Bolometric correction BC_X = M_bol - M_X of a hot star.

    Bilinear interpolation (in log10 Teff and log g) of the shipped table; inputs outside
    the table (Teff 7,000-50,000 K, log g 2-8) are clamped to its edge.

    Parameters
    ----------
    teff_k : array_like
        Effective temperature, K.
    logg : array_like
        Surface gravity, log10(g / cm s^-2); broadcast against ``teff_k``.
    band : str
        One of :data:`BANDS`.

    Returns
    -------
    numpy.ndarray
        BC_X, mag (M_bol,sun = 4.74; SDSS bands AB, others Vega).

    References
    ----------
    Blackbody + empirical correction to Kurucz/dustapprox (Fouesneau et al. 2022) and
    Pecaut & Mamajek (2013); see the module docstring.
    """
    if band not in BANDS:
        raise KeyError(f"unknown band {band!r}; expected one of {BANDS}")
    return _interp_bcs(teff_k, logg, (band,))[band]


def _interp_bcs(teff_k, logg, bands) -> dict[str, np.ndarray]:
    lt, lg, bc = _bc_grid()
    teff_k, logg = np.broadcast_arrays(
        np.asarray(teff_k, dtype=float), np.asarray(logg, dtype=float)
    )
    _check_range(teff_k, logg, lt, lg)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.log10(teff_k)
    i, wi = _bilinear_weights(x, lt)
    j, wj = _bilinear_weights(logg, lg)
    out = {}
    for band in bands:
        t = bc[band]
        val = (
            (1 - wi) * (1 - wj) * t[i, j]
            + wi * (1 - wj) * t[i + 1, j]
            + (1 - wi) * wj * t[i, j + 1]
            + wi * wj * t[i + 1, j + 1]
        )
        out[band] = np.where(np.isfinite(teff_k) & np.isfinite(logg), val, np.nan)
    return out


def absolute_magnitudes(
    teff_k: np.ndarray, logg: np.ndarray, log_lum_lsun: np.ndarray
) -> dict[str, np.ndarray]:
    """Absolute magnitudes in every band of :data:`BANDS`.

    ``M_X = 4.74 - 2.5 log10(L / L_sun) - BC_X(Teff, log g)``.

    Parameters
    ----------
    teff_k : array_like
        Effective temperature, K.
    logg : array_like
        Surface gravity, log10(g / cm s^-2).
    log_lum_lsun : array_like
        log10(L / L_sun). The three inputs broadcast together.

    Returns
    -------
    dict[str, numpy.ndarray]
        ``{band: M_X}`` in mag (SDSS g, r, i AB; Gaia and 2MASS Vega).
    """
    log_l = np.asarray(log_lum_lsun, dtype=float)
    teff_k, logg, log_l = np.broadcast_arrays(
        np.asarray(teff_k, dtype=float), np.asarray(logg, dtype=float), log_l
    )
    mbol = MBOL_SUN - 2.5 * log_l
    bcs = _interp_bcs(teff_k, logg, BANDS)
    return {band: mbol - bcs[band] for band in BANDS}


# ------------------------------------------------------------------------- extinction


@functools.lru_cache(maxsize=1)
def _extinction_grid() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(Teff nodes, {band: R_X}) from the dustapprox F99 Kurucz polynomial models."""
    import pandas as pd
    from dustapprox.models import PrecomputedModel

    lib = PrecomputedModel()
    teff = np.arange(3500.0, 50000.0 + 1.0, 100.0)
    feats = pd.DataFrame({"A0": np.full(teff.size, _A0_SMALL), "teff": teff})
    out = {}
    for band in BANDS:
        pb = DUSTAPPROX_PASSBANDS[band]
        found = lib.find(passband=pb, extinction="Fitzpatrick", atmosphere="kurucz")
        if not found:
            raise LookupError(f"dustapprox has no F99/Kurucz model for {pb}")
        model = found[0].load_model(passband=pb)
        r = R_V * np.asarray(model.predict(feats), dtype=float)
        r.setflags(write=False)
        out[band] = r
    teff.setflags(write=False)
    return teff, out


def extinction_coefficients(teff_k: np.ndarray | float = 12000.0) -> dict[str, np.ndarray]:
    """Extinction coefficients R_X = A_X / E(B-V) for every band of :data:`BANDS`.

    Fitzpatrick (1999) R_V = 3.1 law on a Kurucz spectrum of the given Teff, from the
    ``dustapprox`` precomputed polynomial models of A_X / A0 (Fouesneau et al. 2022,
    A&A 662, A125), evaluated at A0 = 0.01 mag (the low-extinction limit) and converted
    with A0 = 3.1 E(B-V). Tabulated every 100 K (3,500-50,000 K, the models' validity
    range; Teff outside is clamped) and interpolated linearly.

    Parameters
    ----------
    teff_k : array_like or float
        Effective temperature, K.

    Returns
    -------
    dict[str, numpy.ndarray]
        ``{band: R_X}`` (dimensionless), each with the shape of ``teff_k``. E.g. at
        12,000 K, A_Ks / A0 = 0.123, R_Ks = 0.38. These are dustapprox's numbers as
        published, 1.0857 times too large (:data:`DUSTAPPROX_TAU_PER_MAG`; the pipeline uses
        :func:`law_coefficients`); kept unchanged for the mock survey that was built on them.
    """
    t = np.asarray(teff_k, dtype=float)
    nodes, table = _extinction_grid()
    tc = np.clip(t, nodes[0], nodes[-1])
    return {band: np.interp(tc, nodes, table[band]) for band in BANDS}


#: Extinction-curve families with an R_V (= R0) dependence in ``dustapprox``'s
#: precomputed Kurucz polynomial models ("oct2025_a0r0" files): Fitzpatrick (1999,
#: PASP 111, 63) and Gordon et al. (2023, ApJ 950, 86).
EXTINCTION_LAWS: tuple[str, ...] = ("F99", "G23")
#: R0 (= R_V) range of those models.
R_V_RANGE: tuple[float, float] = (2.3, 5.1)
#: A0 nodes (mag) of the tabulated coefficients; beyond the last node A0 is clamped.
A0_NODES_MAG: tuple[float, ...] = (0.01, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.5, 8.0,
                                   10.0, 13.0, 16.0, 20.0)
_TEFF_NODES_LAW = np.exp(np.linspace(np.log(3500.0), np.log(50000.0), 120))
#: dustapprox (1.x, ``dustapprox.tools.grid``) reddens its Kurucz spectra with
#: ``flux * exp(-A0 k(lambda))`` instead of ``flux * 10**(-0.4 A0 k(lambda))``: its A0 is an
#: optical depth, 2.5 / ln 10 = 1.0857 times smaller than the extinction in magnitudes, so
#: its ``A_X / A0`` are 1.0857 times too large in every band (checked against
#: ``dust_extinction`` curves integrated over a blackbody through the pyphot passbands:
#: after the correction F99 J, K_s, RP, G agree to 0.3-1.4 %). :func:`law_coefficients`
#: corrects both the A0 axis and the ratio; :func:`extinction_coefficients` (the mock's
#: historical coefficients) does not.
DUSTAPPROX_TAU_PER_MAG: float = 2.5 / np.log(10.0)


_LAW_GRIDS: dict[tuple[str, float], dict[str, np.ndarray]] = {}
_LAW_GRIDS_LOCK = threading.Lock()


def _law_grid(law: str, r_v: float) -> dict[str, np.ndarray]:
    """:func:`_build_law_grid`, built once per process for each (law, R_V): the Dask
    threads of a block-parallel stage that ask at the same time wait for the first build
    (~1-1.5 s each) instead of each building its own."""
    key = (law, float(r_v))
    grid = _LAW_GRIDS.get(key)
    if grid is None:
        with _LAW_GRIDS_LOCK:
            grid = _LAW_GRIDS.get(key)
            if grid is None:
                grid = _LAW_GRIDS[key] = _build_law_grid(law, float(r_v))
    return grid


@functools.cache
def _dustapprox_library() -> Any:
    """dustapprox's library of precomputed models (its constructor reads the model files'
    headers), once per process."""
    from dustapprox.models import PrecomputedModel

    return PrecomputedModel()


@functools.cache
def _dustapprox_model(law: str, passband: str) -> Any:
    """dustapprox's A0-R0 polynomial model of ``law`` (Kurucz atmospheres) for ``passband``,
    loaded once per process: finding it reads the headers of every precomputed model file
    (~1.5 s), and the same model serves every R_V (R0 is one of its features)."""
    found = [m for m in _dustapprox_library().find(passband=passband, extinction=law,
                                                  atmosphere="kurucz")
             if "R0" in (m.model or {}).get("feature_names", [])]
    if not found:
        raise LookupError(f"dustapprox has no {law}/Kurucz A0-R0 model for {passband}")
    return found[0].load_model(passband=passband)


def _build_law_grid(law: str, r_v: float) -> dict[str, np.ndarray]:
    """{band: R_X on (Teff nodes, A0 nodes)} from dustapprox's A0-R0 polynomial models."""
    import warnings

    import pandas as pd

    if law not in EXTINCTION_LAWS:
        raise ValueError(f"extinction law must be one of {EXTINCTION_LAWS}, got {law!r}")
    if not R_V_RANGE[0] <= r_v <= R_V_RANGE[1]:
        raise ValueError(f"R_V = {r_v} outside the models' range {R_V_RANGE}")
    tt, aa = np.meshgrid(_TEFF_NODES_LAW, np.asarray(A0_NODES_MAG), indexing="ij")
    # dustapprox's "A0" is an optical depth: tau = A0_mag / 1.0857 (DUSTAPPROX_TAU_PER_MAG)
    feats = pd.DataFrame({"A0": aa.ravel() / DUSTAPPROX_TAU_PER_MAG,
                          "R0": np.full(aa.size, r_v), "teff": tt.ravel()})
    out = {}
    for band in BANDS:
        model = _dustapprox_model(law, DUSTAPPROX_PASSBANDS[band])
        with warnings.catch_warnings():  # sklearn feature-name warnings
            warnings.simplefilter("ignore")
            k = np.asarray(model.predict(feats), dtype=float).reshape(tt.shape)
        grid = r_v * k / DUSTAPPROX_TAU_PER_MAG
        grid.setflags(write=False)
        out[band] = grid
    return out


def law_coefficients(
    teff_k: np.ndarray | float,
    a0_mag: np.ndarray | float = _A0_SMALL,
    law: str = "G23",
    r_v: float = 3.1,
    bands: tuple[str, ...] = BANDS,
) -> dict[str, np.ndarray]:
    """Extinction coefficients R_X = A_X / E(B-V) of a reddened Kurucz spectrum.

    ``dustapprox`` (Fouesneau et al. 2022, A&A 662, A125) polynomial models of
    ``k_X = A_X / A0 (Teff, A0, R0)`` for the curve family ``law`` (:data:`EXTINCTION_LAWS`)
    at ``R0 = r_v``, converted with ``A0 = R_V E(B-V)`` (A0: monochromatic extinction at
    550 nm) and corrected for the models' optical-depth convention
    (:data:`DUSTAPPROX_TAU_PER_MAG`). Unlike :func:`extinction_coefficients` (the
    low-extinction limit), the coefficients depend on the extinction itself: a broad
    band's effective wavelength moves redwards as the star reddens, so e.g. R_BP - R_RP
    (G23, R_V = 3.1, 20 kK) falls from 1.64 at A0 = 0.01 to 1.51 at A0 = 3 mag; R_Ks =
    0.328. Tabulated on 120 log-spaced Teff nodes (3.5-50 kK) x :data:`A0_NODES_MAG` and
    interpolated bilinearly (Teff in log); inputs outside are clamped.

    Parameters
    ----------
    teff_k : array_like
        Effective temperature, K.
    a0_mag : array_like
        Extinction A0 at 550 nm, mag (broadcast against ``teff_k``).
    law : {"G23", "F99"}
        Gordon et al. (2023) or Fitzpatrick (1999) curve family.
    r_v : float
        R_V of the curve (2.3-5.1).
    bands : tuple of str
        Bands of :data:`BANDS`.

    Returns
    -------
    dict[str, numpy.ndarray]
        ``{band: R_X}`` with the broadcast shape of ``teff_k`` and ``a0_mag``.
    """
    grid = _law_grid(law, float(r_v))
    t, a0 = np.broadcast_arrays(np.asarray(teff_k, dtype=float), np.asarray(a0_mag, dtype=float))
    lt = np.log(np.clip(t, _TEFF_NODES_LAW[0], _TEFF_NODES_LAW[-1]))
    la = np.clip(a0, A0_NODES_MAG[0], A0_NODES_MAG[-1])
    tnodes = np.log(_TEFF_NODES_LAW)
    anodes = np.asarray(A0_NODES_MAG)
    it = np.clip(np.searchsorted(tnodes, lt, side="right") - 1, 0, tnodes.size - 2)
    ia = np.clip(np.searchsorted(anodes, la, side="right") - 1, 0, anodes.size - 2)
    ft = (lt - tnodes[it]) / (tnodes[it + 1] - tnodes[it])
    fa = (la - anodes[ia]) / (anodes[ia + 1] - anodes[ia])
    out = {}
    for band in bands:
        g = grid[band]
        out[band] = ((1 - ft) * (1 - fa) * g[it, ia] + ft * (1 - fa) * g[it + 1, ia]
                     + (1 - ft) * fa * g[it, ia + 1] + ft * fa * g[it + 1, ia + 1])
    return out


class LawGridLookup:
    """:func:`law_coefficients` at many R_V for the same stars: the Teff interpolation
    weights are computed once and shared by every R_V (the per-star R_V fit of
    :func:`obpipe.photometry.extinction.ebv_rv_fit` asks for ~20 R_V per block).

    ``LawGridLookup(teff_k, law, bands)(r_v, a0_mag)`` equals
    ``law_coefficients(teff_k, a0_mag, law, r_v, bands)`` stacked as an (n, len(bands))
    array (the same bilinear interpolation, Teff in log, A0 clamped to
    :data:`A0_NODES_MAG`).
    """

    def __init__(self, teff_k: np.ndarray, law: str, bands: tuple[str, ...]) -> None:
        t = np.asarray(teff_k, dtype=float)
        lt = np.log(np.clip(t, _TEFF_NODES_LAW[0], _TEFF_NODES_LAW[-1]))
        tnodes = np.log(_TEFF_NODES_LAW)
        it = np.clip(np.searchsorted(tnodes, lt, side="right") - 1, 0, tnodes.size - 2)
        self._it = it
        self._ft = ((lt - tnodes[it]) / (tnodes[it + 1] - tnodes[it]))[None, :]
        self._law, self._bands = law, tuple(bands)

    def __call__(self, r_v: float, a0_mag: np.ndarray) -> np.ndarray:
        grid = _law_grid(self._law, float(r_v))
        g = np.stack([grid[b] for b in self._bands])  # (bands, teff nodes, A0 nodes)
        anodes = np.asarray(A0_NODES_MAG)
        la = np.clip(np.broadcast_to(np.asarray(a0_mag, dtype=float), self._it.shape),
                     anodes[0], anodes[-1])
        ia = np.clip(np.searchsorted(anodes, la, side="right") - 1, 0, anodes.size - 2)
        fa = ((la - anodes[ia]) / (anodes[ia + 1] - anodes[ia]))[None, :]
        it, ft = self._it, self._ft
        out = ((1 - ft) * (1 - fa) * g[:, it, ia] + ft * (1 - fa) * g[:, it + 1, ia]
               + (1 - ft) * fa * g[:, it, ia + 1] + ft * fa * g[:, it + 1, ia + 1])
        return out.T


def clear_table_cache() -> None:
    """Forget the loaded table, so that the next lookup reads the file again (after
    :func:`obpipe.photometry.synthetic_builder.write_intrinsic_photometry_table`)."""
    _load_table.cache_clear()
    _bc_grid.cache_clear()
