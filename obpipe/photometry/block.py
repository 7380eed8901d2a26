"""The photometry of one chunk of rows: E(B-V), A_Ks, the Gaia parallax zero-point and the
geometric M_Ks (Sec. 4, eqs. 11, 12, 24), pure numpy.

:func:`photometry_block` composes :mod:`obpipe.photometry.extinction` and
:mod:`obpipe.photometry.parallax` on the survey's own column names (:data:`SURVEY_VARS`).
The photometry stage (:mod:`obpipe.stages.photometry`) maps it over the survey's row
chunks; ``obpipe photometry`` (:mod:`obpipe.photometry.star_table`) applies it to a star
table without spectra.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from obpipe.photometry import extinction, parallax
from obpipe.photometry.options import BAND_COLUMNS

_OTHER_COLUMNS: tuple[str, ...] = (
    "teff", "teff_err", "logg", "logg_err",
    "parallax", "parallax_error", "gaia_release", "astrometric_params_solved",
    "nu_eff_used_in_astrometry", "pseudocolour", "ecl_lat",
)
SURVEY_VARS: tuple[str, ...] = (
    *[c for pair in BAND_COLUMNS.values() for c in pair], *_OTHER_COLUMNS
)


def _col(inputs: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    val = inputs.get(name)
    if val is None:
        return np.full(n, np.nan)
    return np.asarray(val, dtype=float)


def photometry_block(
    inputs: Mapping[str, np.ndarray],
    bands: tuple[str, ...] = extinction.EBV_BANDS,
    coefficients: str = "star",
    include_parameter_error: bool = True,
    law: str | extinction.CoefficientModel = extinction.DEFAULT_LAW,
    r_v: float = extinction.DEFAULT_R_V,
    r_v_scatter: float = extinction.R_V_SCATTER,
    extinction_dependent: bool = True,
    intrinsic_mag_error_mag: float = extinction.INTRINSIC_MAG_ERROR_MAG,
    fit_r_v: bool = False,
    per_colour: bool = False,
) -> dict[str, np.ndarray]:
    """The stage's pure numpy function on one chunk of rows (all outputs of :data:`OUTPUTS`).

    ``inputs`` maps survey column names (:data:`SURVEY_VARS`) to arrays of one chunk;
    absent columns are treated as missing (NaN). One output row per input row. A band
    with a magnitude but no error gets :data:`obpipe.photometry.extinction.
    DEFAULT_MAG_ERRORS_MAG` (flag bit 11). ``law``, ``r_v``, ``r_v_scatter``,
    ``extinction_dependent`` and ``intrinsic_mag_error_mag`` choose the extinction model
    (:func:`obpipe.photometry.extinction.ebv_from_colour_excess`); ``fit_r_v`` fits R_V per
    star instead, with the prior N(``r_v``, ``r_v_scatter``)
    (:func:`obpipe.photometry.extinction.ebv_rv_fit`; ``coefficients`` and
    ``extinction_dependent`` must then be "star" and True). ``r_v`` / ``r_v_err`` are the
    fitted R_V and its error, or the fixed ``r_v`` and ``r_v_scatter`` (NaN where E(B-V)
    is). ``per_colour`` adds ``ebv_<blue>_<red>`` (the E(B-V) of each adjacent colour,
    float32) to the outputs.
    """
    n = len(next(iter(inputs.values())))
    ebv_and_ks = (*bands, "Ks")
    mags = np.column_stack([_col(inputs, BAND_COLUMNS[b][0], n) for b in ebv_and_ks])
    errs = np.column_stack([_col(inputs, BAND_COLUMNS[b][1], n) for b in ebv_and_ks])
    errs, err_flags = extinction.fill_default_errors(mags, errs, ebv_and_ks)
    params = (_col(inputs, "teff", n), _col(inputs, "logg", n), _col(inputs, "teff_err", n),
              _col(inputs, "logg_err", n))
    if fit_r_v:
        if coefficients != "star" or not extinction_dependent:
            raise ValueError("fit_r_v needs coefficients='star' and extinction_dependent=True")
        ext = extinction.ebv_rv_fit(
            mags[:, :-1], errs[:, :-1], *params, bands=bands, law=law, r_v_prior=r_v,
            r_v_prior_sigma=r_v_scatter, include_parameter_error=include_parameter_error,
            intrinsic_mag_error_mag=intrinsic_mag_error_mag)
        r_v_out, r_v_err_out = ext["r_v"], ext["r_v_err"]
    else:
        ext = extinction.ebv_from_colour_excess(
            mags[:, :-1], errs[:, :-1], *params, bands=bands,
            coefficients=coefficients, include_parameter_error=include_parameter_error,
            law=law, r_v=r_v, r_v_scatter=r_v_scatter,
            extinction_dependent=extinction_dependent,
            intrinsic_mag_error_mag=intrinsic_mag_error_mag,
        )
        has = np.isfinite(ext["ebv"])
        r_v_out = np.where(has, r_v, np.nan)
        r_v_err_out = np.where(has, r_v_scatter, np.nan)
    aks, aks_err = ext["aks"], ext["aks_err"]

    release = inputs.get("gaia_release")
    if release is None:
        release = np.full(n, "DR3")
    aps = inputs.get("astrometric_params_solved")
    aps = np.full(n, 31) if aps is None else np.asarray(aps)
    zp, zp_flags = parallax.parallax_zero_point(
        release, _col(inputs, "phot_g_mean_mag", n), _col(inputs, "nu_eff_used_in_astrometry", n),
        _col(inputs, "pseudocolour", n), _col(inputs, "ecl_lat", n), aps,
    )
    plx = parallax.correct_parallax(_col(inputs, "parallax", n), zp)
    # external errors (Lindegren et al. 2018 / Maiz Apellaniz et al. 2021: parallax.py)
    plx_err = parallax.external_parallax_error(_col(inputs, "parallax_error", n),
                                               _col(inputs, "phot_g_mean_mag", n), release)
    geo = parallax.geometric_absolute_magnitude(
        mags[:, -1], errs[:, -1], aks, aks_err, plx, plx_err
    )
    flags = ext["flags"] | zp_flags | geo["flags"] | err_flags
    out = {
        "ebv": ext["ebv"].astype(np.float32),
        "ebv_err": ext["ebv_err"].astype(np.float32),
        "ebv_nbands": ext["n_bands"].astype(np.int16),
        "ebv_chi2": ext["chi2_red"].astype(np.float32),
        "R_Ks": ext["r_ks"].astype(np.float32),
        "r_v": r_v_out.astype(np.float32),
        "r_v_err": r_v_err_out.astype(np.float32),
        "AKs": aks.astype(np.float32),
        "AKs_err": aks_err.astype(np.float32),
        "Ks0": geo["Ks0"].astype(np.float32),
        "Ks0_err": geo["Ks0_err"].astype(np.float32),
        "parallax_offset": zp.astype(np.float32),
        "parallax_corrected": plx.astype(np.float64),
        "parallax_corrected_error": plx_err.astype(np.float32),
        "MKs_geo": geo["MKs_geo"].astype(np.float32),
        "MKs_geo_err": geo["MKs_geo_err"].astype(np.float32),
        "photometry_flags": flags.astype(np.int32),
    }
    if per_colour:
        out.update({f"ebv_{name}": v.astype(np.float32)
                    for name, v in ext["per_colour"].items()})
    return out
