"""The mock survey's own photometry: intrinsic colours and band extinction.

Nothing here is shared with the pipeline (``obpipe.photometry``): a mock that
reddens with the law and the intrinsic-colour table the pipeline uses to
de-redden measures nothing (issue 15, item 3b/3c).

Intrinsic colours (item 3c)
---------------------------
Mamajek's mean dwarf sequence (Pecaut & Mamajek 2013, ApJS 208, 9; table version
2024.05.15, shipped as ``obpipe/data/mamajek_eem_dwarfs.csv``): ``BCv``, ``B-V``,
``V-Ic``, ``G-V``, ``Bp-Rp``, ``G-Rp``, ``g-r``, ``r-i``, ``V-Ks``, ``J-H``, ``H-Ks``
interpolated linearly in log Teff between the table's rows (the dwarf sequence is used
at every log g: no gravity dependence, unlike the pipeline's Kurucz-based table).
Where a colour has no value at the star's Teff it is continued from its last
tabulated row (see :func:`_continued`): ``Bp-Rp``, ``G-Rp`` (tabulated to B9V) and
``r-i`` (to A0V) follow ``V-Ic`` (tabulated to O9V) scaled by the ratio of blackbody
colour changes; ``V-Ks``, ``J-H``, ``H-Ks``, ``V-Ic`` hotter than O9V follow blackbody
colour differences. ``g-V`` is not tabulated: an A0V star has Vega's colours
(``g_AB - V = g_AB(Vega)`` from pyphot's Vega spectrum and the SDSS g curve) and
``g-V`` follows ``B-V`` from there, scaled the same way. Star-to-star scatter is added
by the caller (``SimulationConfig.intrinsic_colour_scatter_mag``).
Absolute magnitudes::

    M_bol = 4.74 - 2.5 log10 L      (IAU 2015 B2)
    M_V = M_bol - BCv;  M_Ks = M_V - (V-Ks);  M_H = M_Ks + (H-Ks);  M_J = M_H + (J-H)
    M_G = M_V + (G-V);  M_RP = M_G - (G-Rp);  M_BP = M_RP + (Bp-Rp)
    M_g = M_V + (g-V);  M_r = M_g - (g-r);    M_i = M_r - (r-i)

Band extinction (item 3b)
-------------------------
``A_X = -2.5 log10( int B_lambda(Teff) S_X(lambda) lambda 10^(-0.4 A_V k(lambda; R_V))
d lambda / int B_lambda S_X lambda d lambda )`` for a blackbody at the star's Teff
through the pyphot passband ``S_X`` (photon counting), with ``k = A(lambda)/A(V)`` of
the chosen ``dust_extinction`` curve (default F19: Fitzpatrick et al. 2019, ApJ 886, 108;
the pipeline keeps G23, Gordon et al. 2023, so the two sides differ)
at the star's own R_V. The integral is exact in A_V (broad-band coefficients fall
as extinction grows, as on the real sky); it is tabulated once per process on a
(log Teff, R_V, A_V) grid and interpolated linearly (error < 0.003 mag).
E(B-V) is defined as ``A_V / R_V`` with A_V the monochromatic extinction at
5,500 AA (dust_extinction's normalisation).
"""

from __future__ import annotations

import functools
import logging
from importlib import resources

import numpy as np

log = logging.getLogger(__name__)

#: survey bands and the pyphot curves of their passbands (Johnson V for the anchor)
PASSBANDS: dict[str, str] = {
    "g": "SDSS_g", "r": "SDSS_r", "i": "SDSS_i",
    "G": "Gaia_MAW_G", "BP": "Gaia_MAW_BP_faint", "RP": "Gaia_MAW_RP",
    "J": "2MASS_J", "H": "2MASS_H", "Ks": "2MASS_Ks",
    "B": "GROUND_JOHNSON_B", "V": "GROUND_JOHNSON_V", "Ic": "GROUND_COUSINS_I",
}
BANDS = ("g", "r", "i", "G", "BP", "RP", "J", "H", "Ks")
#: table columns: (band X, band Y) of the colour X - Y
COLOURS: dict[str, tuple[str, str]] = {
    "G-V": ("G", "V"), "Bp-Rp": ("BP", "RP"), "G-Rp": ("G", "RP"), "g-r": ("g", "r"),
    "r-i": ("r", "i"), "V-Ks": ("V", "Ks"), "J-H": ("J", "H"), "H-Ks": ("H", "Ks"),
    "B-V": ("B", "V"), "V-Ic": ("V", "Ic"),
}
#: hot-end continuation: a colour the table lacks for hot stars follows a tabulated colour
#: of similar wavelength span (see :func:`_continued`)
PROXIES: dict[str, str] = {"Bp-Rp": "V-Ic", "G-Rp": "V-Ic", "r-i": "V-Ic"}
M_BOL_SUN = 4.74
#: Teff of Mamajek's A0V row (the star with Vega's colours)
A0V_TEFF_K = 9700.0
#: extinction curves the mock can use (``SimulationConfig.extinction_law``)
EXTINCTION_LAWS = ("G23", "F99", "F19", "CCM89", "O94")
#: R_V nodes of the tabulated curves (every law above is valid on it)
RV_NODES = np.round(np.arange(2.3, 4.61, 0.1), 2)
_WAVE_AA = np.arange(3000.0, 26000.0, 10.0)
_C2_AA_K = 1.438777e8  # h c / k in AA K


def _planck(wave_aa: np.ndarray, teff_k: np.ndarray) -> np.ndarray:
    """B_lambda(T) up to a constant, shape (n_teff, n_wave)."""
    t = np.atleast_1d(np.asarray(teff_k, dtype=float))[:, None]
    return wave_aa[None, :] ** -5.0 / np.expm1(_C2_AA_K / (wave_aa[None, :] * t))


@functools.lru_cache(maxsize=1)
def _passband_weights() -> dict[str, np.ndarray]:
    """S_X(lambda) lambda on :data:`_WAVE_AA` (photon counting), unnormalised."""
    from pyphot import get_library

    lib = get_library()
    out = {}
    for band, name in PASSBANDS.items():
        f = lib[name]
        w = np.asarray(f.wavelength.to("AA").value, dtype=float)
        t = np.asarray(f.transmit, dtype=float)
        out[band] = np.interp(_WAVE_AA, w, t, left=0.0, right=0.0) * _WAVE_AA
    return out


def blackbody_colour(teff_k: np.ndarray, band_x: str, band_y: str) -> np.ndarray:
    """Colour X - Y (mag, up to a constant) of a blackbody at ``teff_k``."""
    w = _passband_weights()
    b = _planck(_WAVE_AA, teff_k)
    fx, fy = b @ w[band_x], b @ w[band_y]
    return (-2.5 * np.log10(fx / fy)).reshape(np.shape(teff_k))


@functools.lru_cache(maxsize=1)
def _vega_g_ab() -> float:
    """AB magnitude of Vega in SDSS g (pyphot's Vega spectrum and zero points)."""
    from pyphot import get_library

    f = get_library()[PASSBANDS["g"]]
    return float(f.Vega_zero_mag - f.AB_zero_mag)


@functools.lru_cache(maxsize=1)
def eem_table() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mamajek's dwarf sequence: column -> (log10 Teff nodes, values), finite rows only,
    ascending in Teff."""
    import csv

    text = resources.files("obpipe").joinpath("data/mamajek_eem_dwarfs.csv").read_text()
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    teff = np.array([float(r["Teff"]) for r in rows])
    out = {}
    for col in ("BCv", *COLOURS):
        vals = np.array([float(r[col]) if r[col] else np.nan for r in rows])
        ok = np.isfinite(vals)
        order = np.argsort(teff[ok])
        out[col] = (np.log10(teff[ok][order]), vals[ok][order])
    return out


def _bb_ratio(col: str, proxy: str, t_end: float, t_far: float = 40000.0) -> float:
    """Change of blackbody colour ``col`` per change of blackbody colour ``proxy``
    between ``t_end`` and ``t_far`` (K)."""
    t = np.array([t_end, t_far])
    dc = np.diff(blackbody_colour(t, *COLOURS[col]))[0]
    dp = np.diff(blackbody_colour(t, *COLOURS[proxy]))[0]
    return float(dc / dp)


def _continued(col: str, teff_k: np.ndarray) -> np.ndarray:
    """Table column at ``teff_k``, continued beyond the column's last tabulated row.

    BCv covers O3V-M5V and is held at its ends. A colour with a proxy in
    :data:`PROXIES` continues on the hot side as ``c(T_end) + kappa [p(T) - p(T_end)]``
    with ``p`` the proxy colour (itself tabulated to hotter stars) and ``kappa`` the
    ratio of the two colours' blackbody changes over T_end-40 kK; any other colour
    continues with the blackbody colour difference ``c_BB(T) - c_BB(T_end)``.
    """
    x, v = eem_table()[col]
    lt = np.log10(teff_k)
    out = np.interp(lt, x, v)
    if col not in COLOURS:
        return out
    bx, by = COLOURS[col]
    for end, beyond in ((0, lt < x[0]), (-1, lt > x[-1])):
        if not beyond.any():
            continue
        t_end = 10.0 ** x[end]
        tb = teff_k[beyond]
        if end == -1 and col in PROXIES:
            proxy = PROXIES[col]
            dp = _continued(proxy, tb) - _continued(proxy, np.array([t_end]))[0]
            out[beyond] = v[end] + _bb_ratio(col, proxy, t_end) * dp
        else:
            out[beyond] = v[end] + blackbody_colour(tb, bx, by) - float(
                blackbody_colour(np.array([t_end]), bx, by)[0])
    return out


def absolute_magnitudes(teff_k: np.ndarray, log_lum: np.ndarray) -> dict[str, np.ndarray]:
    """Absolute magnitudes (Vega; AB for g, r, i) in :data:`BANDS` of stars of
    luminosity ``log_lum`` (log10 L/Lsun) on Mamajek's dwarf colour sequence."""
    t = np.clip(np.nan_to_num(np.asarray(teff_k, dtype=float), nan=20000.0), 3000.0, 60000.0)
    shape = np.shape(t)
    t = np.atleast_1d(t).ravel()
    logl = np.atleast_1d(np.asarray(log_lum, dtype=float)).ravel()
    c = {col: _continued(col, t) for col in ("BCv", *COLOURS)}
    m_v = M_BOL_SUN - 2.5 * logl - c["BCv"]
    # g - V: an A0V star has Vega's colours; g - V follows B - V from there
    b_v_a0 = float(_continued("B-V", np.array([A0V_TEFF_K]))[0])
    kappa = float(np.diff(blackbody_colour(np.array([A0V_TEFF_K, 40000.0]), "g", "V"))[0]
                  / np.diff(blackbody_colour(np.array([A0V_TEFF_K, 40000.0]), "B", "V"))[0])
    g_v = _vega_g_ab() + kappa * (c["B-V"] - b_v_a0)
    out = {"Ks": m_v - c["V-Ks"]}
    out["H"] = out["Ks"] + c["H-Ks"]
    out["J"] = out["H"] + c["J-H"]
    out["G"] = m_v + c["G-V"]
    out["RP"] = out["G"] - c["G-Rp"]
    out["BP"] = out["RP"] + c["Bp-Rp"]
    out["g"] = m_v + g_v
    out["r"] = out["g"] - c["g-r"]
    out["i"] = out["r"] - c["r-i"]
    return {b: out[b].reshape(shape) for b in BANDS}


def _curve(law: str, r_v: float, wave_aa: np.ndarray) -> np.ndarray:
    """A(lambda)/A(V) of ``law`` at ``r_v`` (dust_extinction), at ``wave_aa``."""
    import astropy.units as u
    from dust_extinction import parameter_averages

    if law not in EXTINCTION_LAWS:
        raise ValueError(f"extinction_law must be one of {EXTINCTION_LAWS}, got {law!r}")
    model = getattr(parameter_averages, law)(Rv=float(r_v))
    return np.asarray(model(wave_aa * u.AA), dtype=float)


@functools.lru_cache(maxsize=4)
def _band_extinction_table(law: str) -> tuple[tuple[np.ndarray, ...], dict[str, np.ndarray]]:
    logt = np.linspace(np.log10(2500.0), np.log10(60000.0), 30)
    av = np.concatenate([[0.0], np.geomspace(0.02, 14.0, 28)])
    k = np.stack([_curve(law, rv, _WAVE_AA) for rv in RV_NODES])  # (n_rv, n_wave)
    trans = 10.0 ** (-0.4 * av[None, :, None] * k[:, None, :])  # (n_rv, n_av, n_wave)
    b = _planck(_WAVE_AA, 10.0**logt)  # (n_t, n_wave)
    table = {}
    for band, w in _passband_weights().items():
        if band == "V":
            continue
        bw = b * w[None, :]
        flux = np.einsum("raw,tw->tra", trans, bw)
        table[band] = -2.5 * np.log10(flux / bw.sum(axis=1)[:, None, None])
    return (logt, RV_NODES, av), table


def band_extinction(
    teff_k: np.ndarray, ebv: np.ndarray, r_v: np.ndarray, law: str = "F19",
    bands: tuple[str, ...] = BANDS,
) -> dict[str, np.ndarray]:
    """A_X (mag) in every band of :data:`BANDS` for E(B-V) = ``ebv`` at ``r_v``
    (A_V = R_V E(B-V)), for a blackbody SED at ``teff_k`` (see the module docstring)."""
    from scipy.interpolate import RegularGridInterpolator

    grid, table = _band_extinction_table(law)
    t = np.clip(np.nan_to_num(np.asarray(teff_k, dtype=float), nan=20000.0), 2500.0, 60000.0)
    rv = np.clip(np.asarray(r_v, dtype=float), RV_NODES[0], RV_NODES[-1])
    a_v = np.clip(np.asarray(ebv, dtype=float) * rv, 0.0, grid[2][-1])
    pts = np.column_stack([np.log10(t).ravel(), np.broadcast_to(rv, t.shape).ravel(),
                           np.broadcast_to(a_v, t.shape).ravel()])
    return {band: RegularGridInterpolator(grid, table[band])(pts).reshape(t.shape)
            for band in bands}


@functools.lru_cache(maxsize=4)
def _spectral_curves(law: str) -> np.ndarray:
    from obpipe.spectra.grid import wavelength_grid

    wave = wavelength_grid()
    return np.stack([_curve(law, rv, wave) * rv for rv in RV_NODES])


def extinction_curve_per_ebv(r_v: np.ndarray, law: str = "F19") -> np.ndarray:
    """A_lambda / E(B-V) on the common wavelength grid at each star's R_V, (n, n_pix)."""
    curves = _spectral_curves(law)
    rv = np.clip(np.asarray(r_v, dtype=float), RV_NODES[0], RV_NODES[-1])
    pos = (rv - RV_NODES[0]) / (RV_NODES[1] - RV_NODES[0])
    lo = np.clip(np.floor(pos).astype(int), 0, RV_NODES.size - 2)
    f = (pos - lo)[:, None]
    return curves[lo] * (1.0 - f) + curves[lo + 1] * f
