"""Gaia parallax zero-point and the geometric K_s absolute magnitude (eqs. 11-12).

Pure numpy, vectorised over stars. Parallaxes in mas throughout.

Zero-point convention
---------------------
The offset ``Z`` is what Gaia's parallax is *too large* by: ``varpi_Gaia = varpi_true + Z``
and ``varpi_corrected = varpi_Gaia - Z`` (the convention of ``gaiadr3-zeropoint`` and of
Lindegren et al. 2021; Gaia zero-points are negative, so the correction increases the
parallax). ``parallax_offset`` stored per spectrum is ``Z``.

* Gaia DR2: Leung & Bovy (2019, MNRAS 489, 2079), the relation the paper used. We apply
  their *global* zero-point offset ``Z = -52.3 +- 2.0 uas`` (abstract of the paper;
  also in the README of their code, github.com/henrysky/astroNN_gaia_dr2_paper: "We
  determine the zero-point offset to be -52.3 +/- 2.0 uas when modeling it as a global
  constant"). The paper's Table 1 describes its ``parallax_offset`` as "the offset - G
  magnitude relation of Leung & Bovy (2019)"; L&B's magnitude/colour/Teff-dependent
  model is a term inside their neural network, not a published closed form that we
  could verify offline, so the constant is used (:data:`LEUNG_BOVY_2019_OFFSET_MAS`).
* Gaia (E)DR3: Lindegren et al. (2021, A&A 649, A4) through ``gaiadr3-zeropoint``
  (``zpt.get_zpt``), valid for 5- and 6-parameter solutions (``astrometric_params_solved``
  31, 95) with 6 < G < 21, 1.1 < nu_eff < 1.9 (5p) and 1.24 < pseudocolour < 1.72 (6p).
  Every other row (2-parameter solution, colour/magnitude out of range, missing inputs,
  or any failure of the package) gets the global value
  :data:`LINDEGREN_2021_GLOBAL_OFFSET_MAS` = -17 uas (the median parallax of EDR3
  quasars, Lindegren et al. 2021, A&A 649, A2 and A4) and :data:`FLAG_ZP_FALLBACK`;
  nothing raises inside a Dask task.
* Unknown release string: treated as DR3, flagged :data:`FLAG_ZP_UNKNOWN_RELEASE`.

The zero-point's own uncertainty (a few uas) is not added to ``parallax_error``.

External parallax errors
------------------------
Gaia's quoted (internal) parallax errors underestimate the true scatter. The pipeline
uses ``sigma_ext = sqrt((k sigma_i)^2 + sigma_s^2)`` (:func:`external_parallax_error`):

* DR2: k = 1.08, sigma_s = 0.021 mas for G < 13 and 0.043 mas for G >= 13 (Lindegren et
  al. 2018, A&A 616, A2, Sect. 5.4, the relation recommended in the DR2 known issues);
* (E)DR3: sigma_s = 0.0103 mas, the angular covariance at small separations, and k =
  1.3, the middle of the k = 1.1-1.7 range found by magnitude (Maiz Apellaniz,
  Pantaleoni Gonzalez & Barba 2021, A&A 649, A13), one value for all G.

Geometric M_Ks (eqs. 11-12)
---------------------------
``m0 = Ks - A_Ks``, ``delta_m0 = sqrt(sigma_Ks^2 + sigma_AKs^2)`` (Sec. 5.3: "the
quadratic sum of the uncertainties in the photometric magnitude and the extinction"),
``M_Ks_geo = m0 + 5 log10(varpi) - 10`` and
``sigma = sqrt((5 / ln 10 * delta_varpi / varpi)^2 + delta_m0^2)``. NaN (flagged, never
an exception) for ``varpi <= 0``. Where ``varpi / delta_varpi`` is small this Gaussian in
magnitude is a poor description; later stages should work in parallax space with
``parallax_corrected`` and ``parallax_error`` (kept as products).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Leung & Bovy (2019) global Gaia DR2 parallax zero-point offset, mas (+- 0.0020).
LEUNG_BOVY_2019_OFFSET_MAS: float = -0.0523
LEUNG_BOVY_2019_OFFSET_ERR_MAS: float = 0.0020
#: Median EDR3 quasar parallax (Lindegren et al. 2021), the DR3 fallback, mas.
LINDEGREN_2021_GLOBAL_OFFSET_MAS: float = -0.017
#: Validity ranges of the Lindegren et al. (2021) recipe (gaiadr3-zeropoint docstring).
ZPT_G_RANGE: tuple[float, float] = (6.0, 21.0)
ZPT_NU_EFF_RANGE: tuple[float, float] = (1.1, 1.9)
ZPT_PSEUDOCOLOUR_RANGE: tuple[float, float] = (1.24, 1.72)
#: parallax S/N below which M_Ks_geo's Gaussian approximation is flagged as poor.
LOW_PARALLAX_SNR: float = 5.0

# ---- photometry flag bits 5-10 (bits 0-4: obpipe.photometry.extinction) ----
#: zero-point: global fallback value used (2p solution, out of range, missing input).
FLAG_ZP_FALLBACK: int = 1 << 5
#: gaia_release neither DR2 nor (E)DR3: treated as DR3.
FLAG_ZP_UNKNOWN_RELEASE: int = 1 << 6
#: corrected parallax <= 0: MKs_geo NaN.
FLAG_PLX_NONPOSITIVE: int = 1 << 7
#: parallax or its error missing: parallax_corrected / MKs_geo NaN.
FLAG_PLX_MISSING: int = 1 << 8
#: Ks (or its error) missing, or A_Ks unavailable: MKs_geo NaN.
FLAG_KS_MISSING: int = 1 << 9
#: 0 < varpi / delta_varpi < 5: M_Ks_geo's Gaussian error is a poor approximation.
FLAG_PLX_LOW_SNR: int = 1 << 10


@functools.lru_cache(maxsize=1)
def _zpt() -> Any:
    """The ``zero_point.zpt`` module with its coefficient tables loaded (once per process)."""
    from zero_point import zpt

    zpt.load_tables()
    return zpt


def _release_codes(release: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is_dr2, is_unknown) from an array of release strings (case-insensitive)."""
    obj = np.asarray(release).astype(object)  # str, object or numpy StringDType input
    uniq = set(obj.ravel().tolist())  # a handful of distinct values

    def norm(v: object) -> str:
        return (v.decode() if isinstance(v, bytes) else str(v)).strip().upper()

    dr2 = [u for u in uniq if norm(u) == "DR2"]
    dr3 = [u for u in uniq if norm(u) in ("DR3", "EDR3", "GDR3", "GEDR3")]
    is_dr2 = np.isin(obj, dr2) if dr2 else np.zeros(obj.shape, bool)
    is_dr3 = np.isin(obj, dr3) if dr3 else np.zeros(obj.shape, bool)
    return is_dr2, ~(is_dr2 | is_dr3)


def zero_point_dr3(
    phot_g_mean_mag: np.ndarray,
    nu_eff_used_in_astrometry: np.ndarray,
    pseudocolour: np.ndarray,
    ecl_lat_deg: np.ndarray,
    astrometric_params_solved: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Lindegren et al. (2021) parallax zero-point for Gaia (E)DR3 sources, mas.

    Parameters
    ----------
    phot_g_mean_mag : numpy.ndarray
        Gaia G, mag.
    nu_eff_used_in_astrometry, pseudocolour : numpy.ndarray
        1/um; the first is used for 5-parameter (31), the second for 6-parameter (95)
        solutions; the other may be NaN.
    ecl_lat_deg : numpy.ndarray
        Ecliptic latitude, deg.
    astrometric_params_solved : numpy.ndarray
        3 (2p), 31 (5p) or 95 (6p).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Zero-point Z (mas; subtract it from the parallax) and a boolean mask of the rows
        that got :data:`LINDEGREN_2021_GLOBAL_OFFSET_MAS` instead of the recipe.
    """
    g = np.asarray(phot_g_mean_mag, dtype=float)
    nu = np.asarray(nu_eff_used_in_astrometry, dtype=float)
    pc = np.asarray(pseudocolour, dtype=float)
    beta = np.asarray(ecl_lat_deg, dtype=float)
    aps = np.asarray(astrometric_params_solved)
    aps = np.where(np.isfinite(aps.astype(float)), aps.astype(float), -1).astype(np.int64)
    five, six = aps == 31, aps == 95
    with np.errstate(invalid="ignore"):
        ok = (five | six) & np.isfinite(g) & (g > ZPT_G_RANGE[0]) & (g < ZPT_G_RANGE[1])
        ok &= np.isfinite(beta)
        ok &= ~five | (np.isfinite(nu) & (nu > ZPT_NU_EFF_RANGE[0]) & (nu < ZPT_NU_EFF_RANGE[1]))
        ok &= ~six | (np.isfinite(pc) & (pc > ZPT_PSEUDOCOLOUR_RANGE[0])
                      & (pc < ZPT_PSEUDOCOLOUR_RANGE[1]))
    zp = np.full(g.shape, LINDEGREN_2021_GLOBAL_OFFSET_MAS)
    if np.any(ok):
        try:
            with np.errstate(all="ignore"):
                val = _zpt().get_zpt(
                    g[ok], np.where(five[ok], nu[ok], np.nan), np.where(six[ok], pc[ok], np.nan),
                    beta[ok], aps[ok].astype(float), _warnings=False,
                )
            val = np.asarray(val, dtype=float).reshape(-1)
            good = np.isfinite(val)
            sub = np.where(good, val, LINDEGREN_2021_GLOBAL_OFFSET_MAS)
            zp[ok] = sub
            ok[np.nonzero(ok)[0][~good]] = False
        except Exception:  # never let the package's checks kill a Dask task
            log.exception("gaiadr3-zeropoint failed on %d rows: global value used", int(ok.sum()))
            ok[:] = False
    return zp, ~ok


def zero_point_dr2(n: int) -> np.ndarray:
    """Leung & Bovy (2019) global Gaia DR2 zero-point, ``-0.0523`` mas, for ``n`` rows."""
    return np.full(n, LEUNG_BOVY_2019_OFFSET_MAS)


def parallax_zero_point(
    gaia_release: np.ndarray,
    phot_g_mean_mag: np.ndarray,
    nu_eff_used_in_astrometry: np.ndarray,
    pseudocolour: np.ndarray,
    ecl_lat_deg: np.ndarray,
    astrometric_params_solved: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row parallax zero-point (mas) for a mixed DR2/DR3 table, and flags.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``Z`` in mas (``varpi_corrected = varpi - Z``) and int32 flags
        (:data:`FLAG_ZP_FALLBACK`, :data:`FLAG_ZP_UNKNOWN_RELEASE`).
    """
    g = np.asarray(phot_g_mean_mag, dtype=float)
    is_dr2, unknown = _release_codes(np.broadcast_to(np.asarray(gaia_release), g.shape))
    zp3, fb = zero_point_dr3(g, nu_eff_used_in_astrometry, pseudocolour, ecl_lat_deg,
                             astrometric_params_solved)
    zp = np.where(is_dr2, zero_point_dr2(g.size).reshape(g.shape), zp3)
    flags = np.where(~is_dr2 & fb, FLAG_ZP_FALLBACK, 0) | np.where(unknown,
                                                                     FLAG_ZP_UNKNOWN_RELEASE, 0)
    return zp, flags.astype(np.int32)


#: external-error relation (k, sigma_s for G < 13, sigma_s for G >= 13 in mas) by release
EXTERNAL_ERROR_DR2: tuple[float, float, float] = (1.08, 0.021, 0.043)  # Lindegren+2018
EXTERNAL_ERROR_DR3: tuple[float, float, float] = (1.3, 0.0103, 0.0103)  # Maiz Apellaniz+2021


def external_parallax_error(parallax_error_mas: np.ndarray, phot_g_mean_mag: np.ndarray,
                            gaia_release: np.ndarray) -> np.ndarray:
    """External parallax error sqrt((k sigma_i)^2 + sigma_s^2), mas (see the module
    docstring: DR2 Lindegren et al. 2018, DR3 Maiz Apellaniz et al. 2021; an unknown
    release is treated as DR3). A missing G takes the faint (G >= 13) floor; NaN or
    non-positive quoted errors stay as they are (flagged elsewhere)."""
    s = np.asarray(parallax_error_mas, dtype=float)
    g = np.asarray(phot_g_mean_mag, dtype=float)
    is_dr2, _ = _release_codes(np.broadcast_to(np.asarray(gaia_release), s.shape))
    bright = np.isfinite(g) & (g < 13.0)
    k = np.where(is_dr2, EXTERNAL_ERROR_DR2[0], EXTERNAL_ERROR_DR3[0])
    floor = np.where(is_dr2, np.where(bright, EXTERNAL_ERROR_DR2[1], EXTERNAL_ERROR_DR2[2]),
                     np.where(bright, EXTERNAL_ERROR_DR3[1], EXTERNAL_ERROR_DR3[2]))
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(s) & (s > 0)
    return np.where(ok, np.sqrt((k * s) ** 2 + floor**2), s)


#: terms of the survey's own zero-point residual fitted with the networks (beyond the
#: paper; :func:`zero_point_fit_design`): none, a constant, or a constant plus a slope in G
ZERO_POINT_FIT_TERMS: tuple[str, ...] = ("none", "constant", "linear_g")
#: G magnitude range and pivot of the ``linear_g`` term (outside: the end value)
ZERO_POINT_FIT_G_RANGE: tuple[float, float] = (9.0, 17.0)
ZERO_POINT_FIT_G_PIVOT: float = 13.0


def zero_point_fit_design(phot_g_mean_mag: np.ndarray, terms: str) -> np.ndarray:
    """Design matrix (n, P) of a residual zero-point ``dZ = D @ c`` (mas) fitted jointly
    with the luminosity networks, so that ``varpi_corrected - dZ`` is the parallax the
    spectra agree with (Leung & Bovy 2019 fitted the DR2 offset this way).

    ``terms``: ``"constant"`` (P = 1: ``dZ = c0``) or ``"linear_g"`` (P = 2: ``dZ = c0
    + c1 (G - 13)`` with G clipped to 9-17 mag). A missing G contributes the constant
    only (its slope column is 0).
    """
    if terms not in ZERO_POINT_FIT_TERMS or terms == "none":
        raise ValueError(f"zero-point fit terms must be one of {ZERO_POINT_FIT_TERMS[1:]}, "
                         f"got {terms!r}")
    g = np.asarray(phot_g_mean_mag, dtype=float)
    cols = [np.ones(g.shape)]
    if terms == "linear_g":
        lo, hi = ZERO_POINT_FIT_G_RANGE
        cols.append(np.where(np.isfinite(g), np.clip(g, lo, hi) - ZERO_POINT_FIT_G_PIVOT, 0.0))
    return np.stack(cols, axis=-1)


def zero_point_fit_mas(phot_g_mean_mag: np.ndarray, coefficients_mas: Any,
                       terms: str) -> np.ndarray:
    """Residual zero-point ``dZ`` (mas, same sign as ``parallax_offset``: the corrected
    parallax is too large by it) of :func:`zero_point_fit_design` with fitted
    ``coefficients_mas``; zeros for ``terms == "none"``."""
    g = np.asarray(phot_g_mean_mag, dtype=float)
    if terms == "none":
        return np.zeros(g.shape)
    return zero_point_fit_design(g, terms) @ np.asarray(coefficients_mas, dtype=float)


def geometric_mks_with_offset(mks_geo_mag: np.ndarray, parallax_mas: np.ndarray,
                              offset_mas: np.ndarray) -> np.ndarray:
    """Eq. (11)'s M_Ks of the parallax ``parallax_mas - offset_mas`` from the one of
    ``parallax_mas`` (``mks_geo_mag``): + 5 log10((varpi - dZ) / varpi); NaN where either
    parallax is not positive."""
    plx = np.asarray(parallax_mas, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(mks_geo_mag, float) + 5.0 * np.log10(
            (plx - np.asarray(offset_mas, float)) / plx)


#: the product variables of :func:`calibrated_parallax`
CALIBRATED_PARALLAX_INPUTS: tuple[str, ...] = ("parallax_corrected", "parallax_zp_fit")


def calibrated_parallax(products: Any) -> np.ndarray:
    """The parallax (mas) the stages after ``luminosity`` use: ``parallax_corrected`` (the
    published zero-point removed) less ``parallax_zp_fit`` (the residual zero-point fitted
    with the networks, 0 when not fitted), from a mapping of product arrays."""
    return (np.asarray(products["parallax_corrected"], float)
            - np.asarray(products["parallax_zp_fit"], float))


def correct_parallax(parallax_mas: np.ndarray, zero_point_mas: np.ndarray) -> np.ndarray:
    """Zero-point-corrected parallax ``varpi - Z``, mas."""
    return np.asarray(parallax_mas, float) - np.asarray(zero_point_mas, float)


def geometric_absolute_magnitude(
    ks: np.ndarray,
    ks_err: np.ndarray,
    aks: np.ndarray,
    aks_err: np.ndarray,
    parallax_mas: np.ndarray,
    parallax_error_mas: np.ndarray,
) -> dict[str, np.ndarray]:
    """Geometric K_s absolute magnitude and its error, eqs. (11)-(12).

    Parameters
    ----------
    ks, ks_err : numpy.ndarray
        Apparent 2MASS K_s and its error, mag.
    aks, aks_err : numpy.ndarray
        K_s extinction (eq. 24) and its error, mag.
    parallax_mas, parallax_error_mas : numpy.ndarray
        Zero-point-corrected parallax and its error, mas.

    Returns
    -------
    dict of numpy.ndarray
        ``Ks0`` (m0 = Ks - A_Ks) and ``Ks0_err`` (delta m0), ``MKs_geo``
        (m0 + 5 log10 varpi - 10) and ``MKs_geo_err`` (eq. 12), in mag, NaN where not
        computable; ``flags`` (int32: :data:`FLAG_PLX_NONPOSITIVE`,
        :data:`FLAG_PLX_MISSING`, :data:`FLAG_KS_MISSING`, :data:`FLAG_PLX_LOW_SNR`).
    """
    ks = np.asarray(ks, float)
    ks_err = np.asarray(ks_err, float)
    aks = np.asarray(aks, float)
    aks_err = np.asarray(aks_err, float)
    plx = np.asarray(parallax_mas, float)
    plx_err = np.asarray(parallax_error_mas, float)

    m0 = ks - aks
    m0_err = np.hypot(ks_err, aks_err)
    ks_ok = np.isfinite(m0) & np.isfinite(m0_err)
    plx_known = np.isfinite(plx) & np.isfinite(plx_err) & (plx_err > 0)
    positive = plx_known & (plx > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mabs = np.where(positive & ks_ok, m0 + 5.0 * np.log10(plx) - 10.0, np.nan)
        rel = plx_err / plx
        err = np.where(positive & ks_ok, np.hypot(5.0 / np.log(10.0) * rel, m0_err), np.nan)
        low = positive & (plx / plx_err < LOW_PARALLAX_SNR)
    flags = (
        np.where(~plx_known, FLAG_PLX_MISSING, 0)
        | np.where(plx_known & ~positive, FLAG_PLX_NONPOSITIVE, 0)
        | np.where(~ks_ok, FLAG_KS_MISSING, 0)
        | np.where(low, FLAG_PLX_LOW_SNR, 0)
    ).astype(np.int32)
    return {
        "Ks0": np.where(ks_ok, m0, np.nan),
        "Ks0_err": np.where(ks_ok, m0_err, np.nan),
        "MKs_geo": mabs,
        "MKs_geo_err": err,
        "flags": flags,
    }
