"""E(B-V) from the colour excesses of adjacent bands, and A_Ks (Xiang et al., Sec. 4, eq. 24).

Pure numpy, vectorised over stars: every function takes arrays of shape ``(n,)`` (or
``(n, n_bands)`` for magnitudes) and never loops over stars.

Method (Sec. 4 of the paper)
----------------------------
1. The N usable bands of a star (finite magnitude and a finite, positive error), taken in
   the order of :data:`EBV_BANDS`, give N-1 colours of *adjacent* usable bands
   ``X - Y`` (a missing band is skipped, so it reduces N by one). K_s is never used: a
   circumstellar disc brightens it.
2. The intrinsic colour ``(X - Y)_0 = BC_Y - BC_X`` comes from the shipped synthetic
   photometry (:mod:`obpipe.photometry.synthetic`) at the star's (Teff, log g).
3. Each colour excess gives ``E_i = [(X - Y) - (X - Y)_0] / (R_X - R_Y)`` with the
   coefficients ``R_X = A_X / E(B-V)`` of a Kurucz spectrum reddened by the curve family
   :data:`DEFAULT_LAW` = Gordon et al. (2023) at R_V = 3.1 (``dustapprox``, via
   :func:`obpipe.photometry.synthetic.law_coefficients`), evaluated at the star's own
   extinction A0 = R_V E(B-V) (:data:`EXTINCTION_ITERATIONS` passes from the
   low-extinction limit; broad-band coefficients fall as a star reddens). The paper's
   Fitzpatrick (1999) R_V = 3.1 in the low-extinction limit is ``law="F99",
   extinction_dependent=False``. G23 was chosen on real LAMOST hot stars, where F99
   R_V = 3.1 leaves the colour excesses inconsistent (median reduced chi^2 12 vs 1.3;
   ``benchmarks/extinction_real_stars.py``, docs/validation.md).
4. ``E(B-V)`` is the mean of the ``E_i`` weighted by ``(R_X - R_Y)^2 / sigma_c^2`` (i.e. by
   the inverse variance of ``E_i`` from the colour error), with the colour error the
   quadrature sum of the two bands' errors and a floor of 0.014 mag
   (:data:`COLOUR_ERROR_FLOOR_MAG`, "a minimal uncertainty of 0.014 mag in all the
   colors").
5. ``A_Ks = R_Ks E(B-V)`` (eq. 24), R_Ks at the same Teff and A0.

Band order (which bands are "adjacent")
---------------------------------------
Default :data:`EBV_BANDS` = ``g, r, i, BP, RP, J, H``: grouped by survey, each group in
wavelength order. The paper lists these bands (XSTPS-GAC/APASS g, r, i; Gaia BP/RP;
2MASS J, H) and says the 0.014 mag floor applies to all colours "including the Gaia
BP - RP", so BP - RP is one of its colours: a strict pivot-wavelength order
(g 4703, BP 5037, r 6176, i 7490, RP 7752 AA, ...) would not contain it, and it would pair
i with RP, whose coefficients differ by only R_i - R_RP ~ 0.02 (that colour carries no
reddening information and would break the chain). G is not used (as in the paper; it
overlaps BP and RP). Any other order/subset can be passed as ``bands``.

Error propagation (documented choices)
--------------------------------------
``ebv_err`` is the exact linear propagation of the estimator above, not the
``1/sqrt(sum w)`` of independent colours, because adjacent colours share a band:

* photometric: E(B-V) is linear in the band magnitudes; the variance is
  ``sum_band g_band^2 sigma_band^2`` with ``g_band`` the estimator's coefficient of that
  magnitude (shared bands partly cancel);
* floor: where a colour's error is below 0.014 mag, the difference
  ``0.014^2 - sigma_c^2`` is added as an independent per-colour term (a calibration /
  intrinsic-colour systematic of that colour);
* intrinsic colours (``include_parameter_error=True``, default): the whole estimate is
  re-evaluated at ``Teff * exp(+-sigma_lnTeff)`` and at ``log g +- sigma_logg`` (intrinsic
  colours and, with ``coefficients="star"``, the coefficients too) and the larger
  difference is added in quadrature. This error is common to all colours of a star, so
  averaging does not reduce it. On the mock survey it is needed for calibrated errors
  (see the stage module for the measured pulls).
* intrinsic magnitudes: each band's intrinsic magnitude is uncertain by
  :data:`INTRINSIC_MAG_ERROR_MAG` (star-to-star scatter about the table and the table's own
  error), independently per band; added like the photometric term, ``sum_band g_band^2
  sigma_int^2`` (``intrinsic_mag_error_mag``; 0 switches it off).

* extinction law: E(B-V) and A_Ks are re-evaluated at ``R_V +- sigma(R_V)`` with
  :data:`R_V_SCATTER` = 0.18 (Schlafly et al. 2016) and the larger change is added in
  quadrature to ``ebv_err`` and ``aks_err`` (``aks_err`` takes the R_V change of
  ``R_Ks E(B-V)`` as a whole, whose two factors partly compensate).

Missing stellar parameters (never a dropped row)
------------------------------------------------
* Teff missing: the intrinsic colours of a :data:`DEFAULT_TEFF_K` = 20,000 K star with
  ``sigma_lnTeff`` = :data:`DEFAULT_LN_TEFF_ERR` (0.45, i.e. 13-31 kK, the bulk of an OB
  sample), flagged :data:`FLAG_DEFAULT_TEFF`; the inflated intrinsic-colour error enters
  ``ebv_err`` through the propagation above.
* log g missing: :data:`DEFAULT_LOGG` = 4.0 +- :data:`DEFAULT_LOGG_ERR` = 0.5, flagged
  :data:`FLAG_DEFAULT_LOGG`.
* Teff error missing: :data:`DEFAULT_TEFF_FRAC_ERR` (5 %); log g error missing: 0.25 dex.
* Teff outside the table (7,000-50,000 K) or log g outside 2-8: clamped by the table,
  flagged :data:`FLAG_PARAMS_OUT_OF_RANGE`.

Extinction coefficients: ``coefficients="star"`` (default) or ``"fixed"``
---------------------------------------------------------------------------
The paper used a fixed Kurucz spectrum of Teff = 12,000 K, log g = 4.5
(:data:`PAPER_COEFFICIENT_TEFF_K`). R_BP - R_RP (F99, low extinction) is 1.62 at 12 kK
but 1.75 at 20 kK and 1.79 at 30 kK, so the fixed choice under-corrects hot, reddened
stars by up to ~9 % of E(B-V). ``"star"`` evaluates the coefficients at the star's Teff
(at 20 kK if it is missing); ``"fixed"`` reproduces the paper.

Per-star R_V (beyond the paper)
-------------------------------
:func:`ebv_rv_fit` (``[photometry] fit_r_v``, off by default) fits E(B-V) and R_V jointly per
star on a grid of R_V with the prior N(3.1, 0.18) and marginalises R_V in the errors. On a
mock reddened with G23 it meets E(B-V) bias / scatter -0.003 / 0.048 (fixed R_V: 0.000 /
0.082); on the F19 mock the family difference reads as R_V (+0.2) and biases E(B-V) by -0.03
(fixed: -0.017), so it stays off (docs/validation.md, "R_V fitted per star").

Flags (bits shared with the stage's ``photometry_flags``)
---------------------------------------------------------
See the ``FLAG_*`` constants; E(B-V) uses bits 0-4.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from obpipe.photometry import synthetic

log = logging.getLogger(__name__)

#: Bands used for E(B-V), in the order that defines "adjacent" (see module docstring).
EBV_BANDS: tuple[str, ...] = ("g", "r", "i", "BP", "RP", "J", "H")
#: Minimal uncertainty of every colour, mag (Sec. 4).
COLOUR_ERROR_FLOOR_MAG: float = 0.014
#: Teff of the fixed Kurucz spectrum the paper used for the coefficients, K (Sec. 4).
PAPER_COEFFICIENT_TEFF_K: float = 12000.0
#: Intrinsic colours assumed when Teff is missing, K.
DEFAULT_TEFF_K: float = 20000.0
#: sigma of ln Teff when Teff is missing (20 kK x exp(+-0.45) = 12.8-31.4 kK).
DEFAULT_LN_TEFF_ERR: float = 0.45
#: Fractional Teff error assumed when teff_err is missing.
DEFAULT_TEFF_FRAC_ERR: float = 0.05
DEFAULT_LOGG: float = 4.0
DEFAULT_LOGG_ERR: float = 0.5
#: log g error assumed when logg_err is missing but logg is present, dex.
DEFAULT_LOGG_ERR_WHEN_MISSING_ERR: float = 0.25
#: Minimal |R_X - R_Y| for a colour to be used (guards a division by ~0).
MIN_COEFFICIENT_DIFFERENCE: float = 1e-3

# ---- photometry flag bits (E(B-V): bits 0-4; parallax bits live in parallax.py) ----
#: fewer than two usable bands: ebv, AKs (and MKs_geo) are NaN.
FLAG_EBV_FEW_BANDS: int = 1 << 0
#: Teff missing: default hot-star intrinsic colours with an inflated error.
FLAG_DEFAULT_TEFF: int = 1 << 1
#: log g missing: 4.0 +- 0.5 assumed.
FLAG_DEFAULT_LOGG: int = 1 << 2
#: Teff or log g outside the intrinsic-colour table: clamped to its edge.
FLAG_PARAMS_OUT_OF_RANGE: int = 1 << 3
#: E(B-V) + 3 sigma < 0 (unphysical; kept as measured, not clipped).
FLAG_EBV_NEGATIVE: int = 1 << 4
#: a band had a magnitude but no usable error: :data:`DEFAULT_MAG_ERRORS_MAG` assumed.
#: (bits 5-10 are the parallax / M_Ks bits of :mod:`obpipe.photometry.parallax`.)
FLAG_DEFAULT_MAG_ERROR: int = 1 << 11

#: Curve family of the extinction coefficients (:data:`obpipe.photometry.synthetic.
#: EXTINCTION_LAWS`): Gordon et al. (2023, ApJ 950, 86), chosen on real LAMOST hot stars
#: (``benchmarks/extinction_real_stars.py``, docs/validation.md); "F99" (Fitzpatrick 1999,
#: R_V = 3.1, the paper's) stays selectable.
DEFAULT_LAW: str = "G23"
#: R_V of the curve.
DEFAULT_R_V: float = 3.1
#: Star-to-star scatter of R_V in the Milky Way: sigma(R_V) = 0.18 (Schlafly et al. 2016,
#: ApJ 821, 78); propagated into ``ebv_err`` and ``AKs_err``.
R_V_SCATTER: float = 0.18
#: Star-to-star (and table) uncertainty of each band's intrinsic magnitude relative to the
#: intrinsic-colour table, mag: the shipped table matches Mamajek's dwarf J - H and H - Ks to
#: 0.021 mag and g - r to 0.043 mag (:mod:`obpipe.photometry.synthetic`), and the sequence
#: itself is a mean (Pecaut & Mamajek 2013, ApJS 208, 9). Independent per band, so a colour
#: carries sqrt(2) x 0.02 = 0.028 mag; propagated into ``ebv_err`` through the band
#: coefficients of the estimator (shared bands of adjacent colours partly cancel).
INTRINSIC_MAG_ERROR_MAG: float = 0.02
#: Passes of the extinction-dependent coefficients (A0 = R_V E(B-V) of the previous pass).
EXTINCTION_ITERATIONS: int = 5
#: Magnitude error assumed where a band's magnitude is present but its error is not, mag:
#: Gaia DR3 G/BP/RP 0.01 (calibration-level; Riello et al. 2021, A&A 649, A3, quote
#: mmag-level random errors for G < 17 and ~0.01 mag systematics), 2MASS 0.03 (typical
#: ``*_msigcom`` of A-quality 9-13 mag stars; Skrutskie et al. 2006, AJ 131, 1163),
#: optical g/r/i 0.03. Flagged :data:`FLAG_DEFAULT_MAG_ERROR`.
DEFAULT_MAG_ERRORS_MAG: dict[str, float] = {
    "g": 0.03, "r": 0.03, "i": 0.03, "G": 0.01, "BP": 0.01, "RP": 0.01,
    "J": 0.03, "H": 0.03, "Ks": 0.03,
}


def intrinsic_magnitudes(
    teff_k: np.ndarray, logg: np.ndarray, bands: Sequence[str] = EBV_BANDS
) -> np.ndarray:
    """Intrinsic magnitudes relative to M_bol, ``M_X - M_bol = -BC_X``, per band.

    Any intrinsic colour is a difference of two columns:
    ``(X - Y)_0 = (M_X - M_bol) - (M_Y - M_bol) = BC_Y - BC_X``.

    Parameters
    ----------
    teff_k, logg : numpy.ndarray, shape (n,)
        Effective temperature (K) and log10 surface gravity (cgs); must be finite
        (substitute defaults before calling).
    bands : sequence of str
        Bands of :data:`obpipe.photometry.synthetic.BANDS`.

    Returns
    -------
    numpy.ndarray, shape (n, len(bands))
        ``-BC_X`` in mag.
    """
    bcs = synthetic._interp_bcs(np.asarray(teff_k, float), np.asarray(logg, float), tuple(bands))
    return np.stack([-bcs[b] for b in bands], axis=-1)


def intrinsic_colour(teff_k: np.ndarray, logg: np.ndarray, blue: str, red: str) -> np.ndarray:
    """Intrinsic colour ``(blue - red)_0 = BC_red - BC_blue`` (mag) at (Teff, log g)."""
    m0 = intrinsic_magnitudes(teff_k, logg, (blue, red))
    return m0[..., 0] - m0[..., 1]


#: A user-supplied extinction model: ``f(teff_k, a0_mag, r_v, bands) -> {band: R_X}``.
CoefficientModel = Callable[[np.ndarray, np.ndarray, float, tuple[str, ...]],
                            Mapping[str, np.ndarray]]


def _coefficients(teff_k: np.ndarray, a0_mag: np.ndarray | float, law: str | CoefficientModel,
                  r_v: float, bands: tuple[str, ...]) -> Mapping[str, np.ndarray]:
    t = np.asarray(teff_k, float)
    if callable(law):
        return law(t, np.broadcast_to(np.asarray(a0_mag, float), t.shape), r_v, bands)
    return synthetic.law_coefficients(t, a0_mag, law, r_v, bands)


def coefficient_matrix(
    teff_k: np.ndarray,
    bands: Sequence[str] = EBV_BANDS,
    a0_mag: np.ndarray | float = 0.01,
    law: str | CoefficientModel = DEFAULT_LAW,
    r_v: float = DEFAULT_R_V,
) -> np.ndarray:
    """Extinction coefficients R_X = A_X / E(B-V) of a Kurucz spectrum (dustapprox).

    Parameters
    ----------
    teff_k : numpy.ndarray, shape (n,)
        Teff (K) of the Kurucz spectrum for each star (clamped to 3.5-50 kK).
    a0_mag : numpy.ndarray or float
        Extinction at 550 nm (mag) at which the band coefficients are evaluated.
    law, r_v : str or callable, float
        Curve family and R_V (:func:`obpipe.photometry.synthetic.law_coefficients`), or a
        :data:`CoefficientModel` (e.g. a curve integrated by a benchmark).

    Returns
    -------
    numpy.ndarray, shape (n, len(bands))
    """
    coeff = _coefficients(teff_k, a0_mag, law, r_v, tuple(bands))
    return np.stack([np.asarray(coeff[b], float) for b in bands], axis=-1)


def ks_coefficient(
    teff_k: np.ndarray, a0_mag: np.ndarray | float = 0.01,
    law: str | CoefficientModel = DEFAULT_LAW, r_v: float = DEFAULT_R_V,
) -> np.ndarray:
    """R_Ks = A_Ks / E(B-V) (eq. 24) for a Kurucz spectrum of the given Teff and A0."""
    return np.asarray(_coefficients(teff_k, a0_mag, law, r_v, ("Ks",))["Ks"], float)


def fill_default_errors(
    mags: np.ndarray, errs: np.ndarray, bands: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Errors with :data:`DEFAULT_MAG_ERRORS_MAG` where a magnitude has no usable error.

    Returns the filled (n, B) errors and int32 flags (:data:`FLAG_DEFAULT_MAG_ERROR`
    where any band was filled). A band without a magnitude stays unusable.
    """
    mags = np.asarray(mags, float)
    errs = np.array(errs, dtype=float, copy=True)
    need = np.isfinite(mags) & ~(np.isfinite(errs) & (errs > 0))
    for i, b in enumerate(bands):
        errs[need[:, i], i] = DEFAULT_MAG_ERRORS_MAG.get(b, 0.03)
    flags = np.where(need.any(axis=1), FLAG_DEFAULT_MAG_ERROR, 0).astype(np.int32)
    return errs, flags


def colour_names(bands: Sequence[str] = EBV_BANDS) -> list[str]:
    """Names ``"<blue>_<red>"`` (lower case) of the adjacent colours of ``bands``."""
    return [f"{a}_{b}".lower() for a, b in zip(bands[:-1], bands[1:], strict=True)]


def _next_usable(usable: np.ndarray) -> np.ndarray:
    """Index of the next usable band after each band (-1 if none), shape (n, B)."""
    n, nb = usable.shape
    nxt = np.full((n, nb), -1, dtype=np.int64)
    running = np.full(n, -1, dtype=np.int64)
    for b in range(nb - 1, -1, -1):  # loop over bands (B <= 9), vectorised over stars
        nxt[:, b] = running
        running = np.where(usable[:, b], b, running)
    return nxt


def _fill_parameters(
    teff_k: np.ndarray, teff_err_k: np.ndarray, logg: np.ndarray, logg_err: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Teff, sigma_lnTeff, log g, sigma_logg with defaults, and the flags they raise."""
    teff = np.asarray(teff_k, float)
    teff_err = np.asarray(teff_err_k, float)
    logg = np.asarray(logg, float)
    logg_err = np.asarray(logg_err, float)
    flags = np.zeros(teff.shape, dtype=np.int32)

    no_teff = ~(np.isfinite(teff) & (teff > 0))
    t_used = np.where(no_teff, DEFAULT_TEFF_K, teff)
    ok_err = np.isfinite(teff_err) & (teff_err > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        s_ln = np.where(ok_err, teff_err / t_used, DEFAULT_TEFF_FRAC_ERR)
    s_ln = np.where(no_teff, DEFAULT_LN_TEFF_ERR, s_ln)
    flags |= np.where(no_teff, FLAG_DEFAULT_TEFF, 0).astype(np.int32)

    no_logg = ~np.isfinite(logg)
    g_used = np.where(no_logg, DEFAULT_LOGG, logg)
    ok_gerr = np.isfinite(logg_err) & (logg_err > 0)
    g_err = np.where(ok_gerr, logg_err, DEFAULT_LOGG_ERR_WHEN_MISSING_ERR)
    g_err = np.where(no_logg, DEFAULT_LOGG_ERR, g_err)
    flags |= np.where(no_logg, FLAG_DEFAULT_LOGG, 0).astype(np.int32)

    lo_t, hi_t = synthetic.TEFF_RANGE_K
    lo_g, hi_g = synthetic.LOGG_GRID[0], synthetic.LOGG_GRID[-1]
    out = (t_used < lo_t) | (t_used > hi_t) | (g_used < lo_g) | (g_used > hi_g)
    flags |= np.where(out, FLAG_PARAMS_OUT_OF_RANGE, 0).astype(np.int32)
    return t_used, s_ln, g_used, g_err, flags


def _band_arrays(mags: np.ndarray, mag_errs: np.ndarray, bands: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The (n, len(bands)) magnitudes and errors (mag) of the E(B-V) estimators as float
    arrays, checked: their shapes agree with ``bands``, which must not contain ``"Ks"``
    (disc emission, Sec. 4)."""
    if "Ks" in bands:
        raise ValueError("K_s must not be used for E(B-V) (disc emission; Sec. 4)")
    mags = np.atleast_2d(np.asarray(mags, float))
    errs = np.atleast_2d(np.asarray(mag_errs, float))
    if errs.shape != mags.shape or mags.shape[1] != len(bands):
        raise ValueError(f"mags {mags.shape} / errors {errs.shape} do not match {len(bands)} "
                         "bands")
    return mags, errs


def _colour_estimates(
    mags: np.ndarray,
    pair_ok: np.ndarray,
    partner: np.ndarray,
    m0: np.ndarray,
    coeff: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-colour E_i and k_i = R_X - R_Y for colours (band b, partner[b]); NaN if unused."""
    rows = np.arange(mags.shape[0])[:, None]
    j = np.where(pair_ok, partner, 0)
    colour = mags - mags[rows, j]
    colour0 = m0 - m0[rows, j]
    k = coeff - coeff[rows, j]
    with np.errstate(invalid="ignore", divide="ignore"):
        e_i = np.where(pair_ok, (colour - colour0) / k, np.nan)
    return e_i, np.where(pair_ok, k, np.nan)


def ebv_from_colour_excess(
    mags: np.ndarray,
    mag_errs: np.ndarray,
    teff_k: np.ndarray,
    logg: np.ndarray,
    teff_err_k: np.ndarray | None = None,
    logg_err: np.ndarray | None = None,
    bands: Sequence[str] = EBV_BANDS,
    coefficients: str = "star",
    colour_floor_mag: float = COLOUR_ERROR_FLOOR_MAG,
    include_parameter_error: bool = True,
    law: str | CoefficientModel = DEFAULT_LAW,
    r_v: float = DEFAULT_R_V,
    r_v_scatter: float = R_V_SCATTER,
    extinction_dependent: bool = True,
    intrinsic_mag_error_mag: float = INTRINSIC_MAG_ERROR_MAG,
) -> dict[str, np.ndarray]:
    """E(B-V) from the colour excesses of adjacent bands (Sec. 4), vectorised over stars.

    Parameters
    ----------
    mags, mag_errs : numpy.ndarray, shape (n, len(bands))
        Apparent magnitudes and their errors (mag), columns in the order of ``bands``;
        NaN where a band is missing. A band is usable if its magnitude is finite and its
        error finite and positive.
    teff_k, logg : numpy.ndarray, shape (n,)
        Survey-pipeline Teff (K) and log g (cgs); NaN where missing (defaults, flagged).
    teff_err_k, logg_err : numpy.ndarray, shape (n,), optional
        Their errors (defaults if missing), used for the intrinsic-colour error.
    bands : sequence of str
        Band names (order defines adjacency); must not contain ``"Ks"``.
    coefficients : {"star", "fixed"}
        Coefficients at the star's Teff, or the paper's fixed 12,000 K spectrum (then in
        the low-extinction limit whatever ``extinction_dependent`` says: constant R_X).
    colour_floor_mag : float
        Minimal colour error (0.014 mag in the paper).
    include_parameter_error : bool
        Add the error of the intrinsic colours (and coefficients) from Teff and log g.
    law, r_v : str, float
        Extinction-curve family (``"G23"`` default, ``"F99"`` the paper's) and its R_V.
    r_v_scatter : float
        sigma(R_V) of the star's own curve about ``r_v``: E(B-V) and A_Ks are re-evaluated at
        ``r_v +- r_v_scatter`` and the larger change is added to ``ebv_err`` / ``aks_err``.
    extinction_dependent : bool
        Evaluate the coefficients at the star's own A0 = R_V E(B-V)
        (:data:`EXTINCTION_ITERATIONS` passes); False: the low-extinction limit.
    intrinsic_mag_error_mag : float
        Uncertainty of each band's intrinsic magnitude (mag, independent per band), added to
        ``ebv_err`` through the estimator's band coefficients; it does not change the weights.

    Returns
    -------
    dict of numpy.ndarray, shape (n,)
        ``ebv`` and ``ebv_err`` (mag; NaN with fewer than two usable bands), ``n_bands``
        (usable bands), ``chi2_red`` (reduced chi^2 of the individual E_i about the mean,
        diagonal errors; NaN with fewer than three bands), ``r_ks`` (R_Ks used for A_Ks,
        same Teff choice as the colours), ``aks`` / ``aks_err`` (A_Ks = R_Ks E(B-V), eq. 24,
        mag, error incl. the R_V scatter), ``ebv_rv_err`` (the R_V part of ``ebv_err``),
        ``flags`` (int32, ``FLAG_*`` bits 0-4), and ``per_colour`` (``{"bp_rp": E_i, ...}``
        for each adjacent pair of ``bands``, :func:`colour_names`; NaN where either band is
        unusable).
    """
    mags, errs = _band_arrays(mags, mag_errs, bands)
    if coefficients not in ("star", "fixed"):
        raise ValueError(f"coefficients must be 'star' or 'fixed', got {coefficients!r}")
    n, nb = mags.shape
    nan = np.full(n, np.nan)
    teff_err_k = nan if teff_err_k is None else teff_err_k
    logg_err = nan if logg_err is None else logg_err
    t, s_ln, g, s_g, flags = _fill_parameters(teff_k, teff_err_k, logg, logg_err)

    usable = np.isfinite(mags) & np.isfinite(errs) & (errs > 0)
    partner = _next_usable(usable)
    pair_ok = usable & (partner >= 0)
    rows = np.arange(n)[:, None]
    j = np.where(pair_ok, partner, 0)

    def coeffs_at(teff: np.ndarray, a0: np.ndarray, rv: float = r_v) -> np.ndarray:
        t_c = np.full(n, PAPER_COEFFICIENT_TEFF_K) if coefficients == "fixed" else teff
        return coefficient_matrix(t_c, bands, a0, law, rv)

    m0 = intrinsic_magnitudes(t, g, bands)
    sig_c = np.hypot(errs, errs[rows, j])
    sig_eff = np.maximum(sig_c, colour_floor_mag)
    a0_next = np.full(n, 0.01)
    # "fixed": the paper's one 12 kK spectrum in the low-extinction limit (constant R_X)
    dependent = extinction_dependent and coefficients == "star"
    for _ in range(EXTINCTION_ITERATIONS if dependent else 1):
        a0 = a0_next
        coeff = coeffs_at(t, a0)
        e_i, k = _colour_estimates(mags, pair_ok, partner, m0, coeff)
        use = pair_ok & (np.abs(np.nan_to_num(k)) >= MIN_COEFFICIENT_DIFFERENCE)
        good = use.sum(axis=1) >= 1
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(use, k**2 / sig_eff**2, 0.0)
            wsum = w.sum(axis=1)
            a = np.where(good[:, None], w / wsum[:, None], 0.0)
            ebv = np.where(good, np.sum(np.where(use, a * e_i, 0.0), axis=1), np.nan)
        a0_next = np.clip(np.nan_to_num(r_v * ebv, nan=0.01), 0.01, None)
    pair_ok = use  # a0: the extinction the final coefficients were evaluated at
    n_col = pair_ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        coef = np.where(pair_ok, a / k, 0.0)  # d ebv / d colour_i

    # coefficient of each band magnitude: +coef on the blue band, -coef on its partner
    gmat = coef.copy()
    for b in range(nb):  # loop over bands, vectorised over stars
        sel = pair_ok[:, b]
        if np.any(sel):
            idx = np.nonzero(sel)[0]
            np.subtract.at(gmat, (idx, partner[idx, b]), coef[idx, b])
    var = np.sum(np.where(usable, gmat**2 * (np.nan_to_num(errs) ** 2
                                             + intrinsic_mag_error_mag**2), 0.0), axis=1)
    var += np.sum(np.where(pair_ok, coef**2 * np.clip(colour_floor_mag**2 - sig_c**2, 0, None),
                           0.0), axis=1)

    def shifted_ebv(t_s: np.ndarray, g_s: np.ndarray, c_s: np.ndarray) -> np.ndarray:
        m0_s = intrinsic_magnitudes(t_s, g_s, bands)
        e_s, _ = _colour_estimates(mags, pair_ok, partner, m0_s, c_s)
        return np.sum(np.where(pair_ok, a * e_s, 0.0), axis=1)

    e_mid = np.sum(np.where(pair_ok, a * e_i, 0.0), axis=1)
    if include_parameter_error:
        # one-sided differences, the larger one: conservative where the colour-Teff
        # relation curves (late B / A stars) or the table edge clamps one side
        def c_at(t_s: np.ndarray) -> np.ndarray:
            return coeffs_at(t_s, a0) if coefficients == "star" else coeff

        t_up, t_dn = t * np.exp(s_ln), t * np.exp(-s_ln)
        d_t = np.maximum(np.abs(shifted_ebv(t_up, g, c_at(t_up)) - e_mid),
                         np.abs(shifted_ebv(t_dn, g, c_at(t_dn)) - e_mid))
        d_g = np.maximum(np.abs(shifted_ebv(t, g + s_g, coeff) - e_mid),
                         np.abs(shifted_ebv(t, g - s_g, coeff) - e_mid))
        var += d_t**2 + d_g**2

    t_ks = np.full(n, PAPER_COEFFICIENT_TEFF_K) if coefficients == "fixed" else t
    r_ks = ks_coefficient(t_ks, a0, law, r_v)
    aks = r_ks * ebv
    var_rv = np.zeros(n)
    var_aks_rv = np.zeros(n)
    if r_v_scatter > 0:
        lo, hi = synthetic.R_V_RANGE if isinstance(law, str) else (-np.inf, np.inf)
        for rv in (max(lo, r_v - r_v_scatter), min(hi, r_v + r_v_scatter)):
            a0_s = a0 * rv / r_v
            e_s = shifted_ebv(t, g, coeffs_at(t, a0_s, rv))
            var_rv = np.maximum(var_rv, (e_s - e_mid) ** 2)
            aks_s = ks_coefficient(t_ks, a0_s, law, rv) * e_s
            var_aks_rv = np.maximum(var_aks_rv, (aks_s - aks) ** 2)
    aks_err = np.where(good, np.sqrt(r_ks**2 * var + var_aks_rv), np.nan)
    var += var_rv

    ebv_err = np.where(good, np.sqrt(var), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = np.where(pair_ok, w * (e_i - ebv[:, None]) ** 2, 0.0)
        chi2 = np.where(n_col >= 2, resid.sum(axis=1) / np.maximum(n_col - 1, 1), np.nan)

    flags |= np.where(~good, FLAG_EBV_FEW_BANDS, 0).astype(np.int32)
    flags |= np.where(good & (ebv + 3.0 * ebv_err < 0), FLAG_EBV_NEGATIVE, 0).astype(np.int32)
    adjacent = pair_ok & (partner == np.arange(nb)[None, :] + 1)
    per_colour = {name: np.where(adjacent[:, b], e_i[:, b], np.nan)
                  for b, name in enumerate(colour_names(bands))}
    return {
        "ebv": ebv,
        "ebv_err": ebv_err,
        "n_bands": usable.sum(axis=1).astype(np.int16),
        "chi2_red": chi2,
        "r_ks": r_ks,
        "aks": aks,
        "aks_err": aks_err,
        "ebv_rv_err": np.where(good, np.sqrt(var_rv), np.nan),
        "flags": flags,
        "per_colour": per_colour,
    }


def aks_from_ebv(
    ebv: np.ndarray, ebv_err: np.ndarray, r_ks: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """K_s extinction, eq. (24): ``A_Ks = R_Ks E(B-V)``, ``sigma_AKs = R_Ks sigma_E(B-V)``.

    Parameters
    ----------
    ebv, ebv_err : numpy.ndarray
        E(B-V) and its error, mag.
    r_ks : numpy.ndarray or float
        R_Ks = A_Ks / E(B-V) (e.g. 0.38 for a 12,000 K Kurucz spectrum, F99 R_V = 3.1).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        A_Ks and its error, mag.
    """
    r = np.asarray(r_ks, float)
    return r * np.asarray(ebv, float), r * np.asarray(ebv_err, float)


def stack_bands(
    columns: Mapping[str, np.ndarray], errors: Mapping[str, np.ndarray], bands: Sequence[str],
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(n, B) magnitude and error arrays from per-band columns (NaN for absent bands)."""
    mags = np.full((n, len(bands)), np.nan)
    errs = np.full((n, len(bands)), np.nan)
    for i, b in enumerate(bands):
        if b in columns and columns[b] is not None:
            mags[:, i] = np.asarray(columns[b], float)
        if b in errors and errors[b] is not None:
            errs[:, i] = np.asarray(errors[b], float)
    return mags, errs


# ------------------------------------------------------------- per-star R_V (beyond the paper)

#: R_V grid of :func:`ebv_rv_fit`, within dustapprox's R0 range (2.3-5.1); above 4.5 the
#: prior N(3.1, 0.18) is < 1e-15 of its peak.
R_V_FIT_GRID: tuple[float, ...] = tuple(np.round(np.arange(2.3, 4.501, 0.1), 2).tolist())
#: Band error floor of :func:`ebv_rv_fit`, mag: the paper's 0.014 mag colour floor (Sec. 4)
#: shared by the two bands of a colour, 0.014 / sqrt(2).
BAND_ERROR_FLOOR_MAG: float = COLOUR_ERROR_FLOOR_MAG / np.sqrt(2.0)
#: Passes of the extinction-dependent coefficients per R_V node of :func:`ebv_rv_fit` (from the
#: E(B-V) of the prior mean's converged solution). Against 4 passes on the 27,777 rows of the
#: DR5-size F19 mock: E(B-V) within 0.003 mag (99th percentile; 0.029 at most), R_V within
#: 0.003 (0.027).
RV_FIT_A0_PASSES: int = 2
#: Variance given to an unusable band in :func:`ebv_rv_fit` (weight ~0), mag^2.
_UNUSED_BAND_VAR: float = 1e6


def _band_precision(errs: np.ndarray, usable: np.ndarray, d_t: np.ndarray, d_g: np.ndarray,
                    intrinsic_mag_error_mag: float, floor_mag: float) -> np.ndarray:
    """Inverse covariance (n, B, B) of the band magnitudes about the model: photometric error
    (floored) and intrinsic-magnitude error per band, plus the common modes of the intrinsic
    magnitudes' Teff and log g errors (rank one each, ``d_t``/``d_g``: change of each band's
    intrinsic magnitude for a 1 sigma change)."""
    var = np.where(usable, np.maximum(np.nan_to_num(errs), floor_mag) ** 2
                   + intrinsic_mag_error_mag**2, _UNUSED_BAND_VAR)
    d_t = np.where(usable, d_t, 0.0)
    d_g = np.where(usable, d_g, 0.0)
    cov = (var[:, :, None] * np.eye(var.shape[1])[None]
           + d_t[:, :, None] * d_t[:, None, :] + d_g[:, :, None] * d_g[:, None, :])
    return np.linalg.inv(cov)


def ebv_rv_fit(
    mags: np.ndarray,
    mag_errs: np.ndarray,
    teff_k: np.ndarray,
    logg: np.ndarray,
    teff_err_k: np.ndarray | None = None,
    logg_err: np.ndarray | None = None,
    bands: Sequence[str] = EBV_BANDS,
    law: str | CoefficientModel = DEFAULT_LAW,
    r_v_prior: float = DEFAULT_R_V,
    r_v_prior_sigma: float = R_V_SCATTER,
    r_v_grid: Sequence[float] = R_V_FIT_GRID,
    include_parameter_error: bool = True,
    intrinsic_mag_error_mag: float = INTRINSIC_MAG_ERROR_MAG,
    band_floor_mag: float = BAND_ERROR_FLOOR_MAG,
) -> dict[str, np.ndarray]:
    """E(B-V) and R_V fitted jointly per star from the band magnitudes (beyond the paper).

    The paper (Sec. 4) fixes the curve (here G23 at R_V = 3.1, :func:`ebv_from_colour_excess`).
    Here each usable band X of ``bands`` is modelled as
    ``m_X = M0_X(Teff, log g) + mu + R_X(R_V, A0) E(B-V)`` with ``mu`` a free offset (distance
    modulus and luminosity), ``M0_X`` the shipped intrinsic magnitudes and ``R_X`` the
    coefficients of ``law`` at R_V and the star's own A0 = R_V E(B-V) (dustapprox Kurucz,
    :func:`obpipe.photometry.synthetic.law_coefficients`). For each R_V of ``r_v_grid`` the
    model is linear in (mu, E(B-V)): generalised least squares with the band covariance of
    :func:`_band_precision` (photometric errors floored at ``band_floor_mag``, the paper's
    0.014 mag colour floor; ``intrinsic_mag_error_mag`` per band; the Teff / log g errors of
    the intrinsic magnitudes as correlated common modes if ``include_parameter_error``).
    The posterior on the grid is the likelihood marginalised over (mu, E(B-V)) with flat
    priors, ``exp(-chi2 / 2) / sqrt(det F)`` (F: their Fisher matrix), times the prior
    R_V ~ N(``r_v_prior``, ``r_v_prior_sigma``) (Schlafly et al. 2016, ApJ 821, 78:
    3.1 +- 0.18 in the diffuse ISM), so that barely reddened stars keep R_V ~ 3.1. A star
    with fewer than three usable bands has no R_V information: its posterior is the prior.

    E(B-V), A_Ks = R_Ks E(B-V) (eq. 24) and R_V are posterior means, their errors posterior
    standard deviations (within-R_V variance plus the spread between R_V nodes: the R_V
    uncertainty is marginalised, not added as the fixed-R_V estimator's +-sigma(R_V) term).
    K_s is never used.

    Parameters
    ----------
    mags, mag_errs, teff_k, logg, teff_err_k, logg_err, bands, law, intrinsic_mag_error_mag
        As :func:`ebv_from_colour_excess` (``law``: ``"G23"``, ``"F99"`` or a
        :data:`CoefficientModel`).
    r_v_prior, r_v_prior_sigma : float
        Gaussian prior on R_V.
    r_v_grid : sequence of float
        R_V nodes (within :data:`obpipe.photometry.synthetic.R_V_RANGE` for a named law).
    band_floor_mag : float
        Minimal photometric error of a band, mag.

    Returns
    -------
    dict of numpy.ndarray, shape (n,)
        The keys of :func:`ebv_from_colour_excess` (``chi2_red``: chi^2 of the bands at the
        most probable R_V node over n_bands - 2 degrees of freedom; ``ebv_rv_err``: the
        between-R_V part of ``ebv_err``; ``per_colour``: each adjacent colour's E(B-V) with
        the coefficients of the most probable node) plus ``r_v``, ``r_v_err`` (posterior
        mean and standard deviation of R_V) and ``chi2_red_prior`` (the same chi^2 at the
        node nearest ``r_v_prior``).
    """
    mags, errs = _band_arrays(mags, mag_errs, bands)
    n, nb = mags.shape
    grid = np.asarray(r_v_grid, float)
    if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) <= 0):
        raise ValueError("r_v_grid must hold at least two increasing R_V values")
    if not r_v_prior_sigma > 0:
        raise ValueError(f"r_v_prior_sigma must be > 0, got {r_v_prior_sigma}")
    nan = np.full(n, np.nan)
    t, s_ln, g, s_g, flags = _fill_parameters(teff_k, nan if teff_err_k is None else teff_err_k,
                                              logg, nan if logg_err is None else logg_err)
    bands = tuple(bands)
    with_ks = (*bands, "Ks")
    usable = np.isfinite(mags) & np.isfinite(errs) & (errs > 0)
    n_use = usable.sum(axis=1)
    good = n_use >= 2
    m0 = intrinsic_magnitudes(t, g, bands)
    y = np.where(usable, mags - m0, 0.0)
    if include_parameter_error:
        d_t = 0.5 * (intrinsic_magnitudes(t * np.exp(s_ln), g, bands)
                     - intrinsic_magnitudes(t * np.exp(-s_ln), g, bands))
        d_g = 0.5 * (intrinsic_magnitudes(t, g + s_g, bands)
                     - intrinsic_magnitudes(t, g - s_g, bands))
    else:
        d_t = d_g = np.zeros_like(y)
    prec = _band_precision(errs, usable, d_t, d_g, intrinsic_mag_error_mag, band_floor_mag)
    u = usable.astype(float)
    pu = np.matmul(prec, u[:, :, None])[:, :, 0]
    f_uu = np.sum(u * pu, axis=1)
    b_u = np.sum(y * pu, axis=1)
    y_py = np.sum(y * np.matmul(prec, y[:, :, None])[:, :, 0], axis=1)

    def solve(coeff: np.ndarray) -> tuple[np.ndarray, ...]:
        v = np.where(usable, coeff[:, :nb], 0.0)
        pv = np.matmul(prec, v[:, :, None])[:, :, 0]
        f_uv = np.sum(u * pv, axis=1)
        f_vv = np.sum(v * pv, axis=1)
        b_v = np.sum(y * pv, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            det = f_uu * f_vv - f_uv**2
            ebv = (f_uu * b_v - f_uv * b_u) / det
            var = f_uu / det
            chi2 = y_py - (f_vv * b_u**2 - 2.0 * f_uv * b_u * b_v + f_uu * b_v**2) / det
        return ebv, var, chi2, det

    lookup = synthetic.LawGridLookup(t, law, with_ks) if isinstance(law, str) else None

    def coeffs(rv: float, ebv: np.ndarray) -> np.ndarray:
        a0 = np.clip(np.nan_to_num(rv * ebv, nan=0.01), 0.01, None)
        if lookup is not None:
            return lookup(rv, a0)
        return coefficient_matrix(t, with_ks, a0, law, rv)

    ebv0 = np.zeros(n)
    for _ in range(EXTINCTION_ITERATIONS):  # the prior mean's solution: A0 start of each node
        ebv0 = solve(coeffs(r_v_prior, ebv0))[0]
    k = grid.size
    lp = np.empty((n, k))
    e_r = np.empty((n, k))
    v_r = np.empty((n, k))
    rks_r = np.empty((n, k))
    chi2_best = np.full(n, np.inf)
    lp_best = np.full(n, -np.inf)
    coeff_best = np.zeros((n, nb + 1))
    i_prior = int(np.argmin(np.abs(grid - r_v_prior)))
    chi2_prior = nan
    informative = n_use >= 3
    for i, rv in enumerate(grid):
        e = ebv0
        for _ in range(RV_FIT_A0_PASSES):
            c = coeffs(rv, e)
            e, var, chi2, det = solve(c)
        e_r[:, i], v_r[:, i], rks_r[:, i] = e, var, c[:, nb]
        with np.errstate(invalid="ignore", divide="ignore"):
            like = np.where(informative, -0.5 * (chi2 + np.log(det)), 0.0)
        lp[:, i] = like - 0.5 * ((rv - r_v_prior) / r_v_prior_sigma) ** 2
        better = lp[:, i] > lp_best
        lp_best = np.where(better, lp[:, i], lp_best)
        chi2_best = np.where(better, chi2, chi2_best)
        coeff_best[better] = c[better]
        if i == i_prior:
            chi2_prior = chi2
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.exp(lp - lp.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        ebv = np.sum(p * e_r, axis=1)
        var_within = np.sum(p * v_r, axis=1)
        var_rv = np.clip(np.sum(p * e_r**2, axis=1) - ebv**2, 0.0, None)
        a_r = rks_r * e_r
        aks = np.sum(p * a_r, axis=1)
        var_aks = (np.sum(p * rks_r**2 * v_r, axis=1)
                   + np.clip(np.sum(p * a_r**2, axis=1) - aks**2, 0.0, None))
        r_v = p @ grid
        r_v_err = np.sqrt(np.clip(p @ grid**2 - r_v**2, 0.0, None))
        dof = np.maximum(n_use - 2, 1)
        chi2_red = np.where(n_use >= 3, chi2_best / dof, np.nan)
        chi2_red_prior = np.where(n_use >= 3, chi2_prior / dof, np.nan)
    ebv_err = np.sqrt(var_within + var_rv)
    out_nan = ~good | ~np.isfinite(ebv)
    flags |= np.where(out_nan, FLAG_EBV_FEW_BANDS, 0).astype(np.int32)
    flags |= np.where(~out_nan & (ebv + 3.0 * ebv_err < 0), FLAG_EBV_NEGATIVE, 0).astype(np.int32)

    def masked(x: np.ndarray) -> np.ndarray:
        return np.where(out_nan, np.nan, x)

    # each adjacent colour's E(B-V) with the most probable node's coefficients
    k_col = coeff_best[:, :nb - 1] - coeff_best[:, 1:nb]
    with np.errstate(invalid="ignore", divide="ignore"):
        e_col = ((mags[:, :-1] - mags[:, 1:]) - (m0[:, :-1] - m0[:, 1:])) / k_col
    adjacent = usable[:, :-1] & usable[:, 1:] & ~out_nan[:, None]
    per_colour = {name: np.where(adjacent[:, b], e_col[:, b], np.nan)
                  for b, name in enumerate(colour_names(bands))}
    return {
        "ebv": masked(ebv),
        "ebv_err": masked(ebv_err),
        "n_bands": n_use.astype(np.int16),
        "chi2_red": masked(chi2_red),
        "chi2_red_prior": masked(chi2_red_prior),
        "r_ks": masked(np.where(ebv != 0, aks / ebv, np.sum(p * rks_r, axis=1))),
        "aks": masked(aks),
        "aks_err": masked(np.sqrt(var_aks)),
        "ebv_rv_err": masked(np.sqrt(var_rv)),
        "r_v": masked(r_v),
        "r_v_err": masked(r_v_err),
        "flags": flags,
        "per_colour": per_colour,
    }
