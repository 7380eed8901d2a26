"""Binary identification from the spectro-photometric parallax excess (Sec. 6, eqs. 15-17).

An unresolved binary is brighter than its dominant star, while its spectrum (hence
the spectroscopic M_Ks) mostly reflects the dominant star. So the spectro-photometric
parallax, which assumes the spectroscopic M_Ks,

    plx_s = 10^(-0.2 (m_Ks - M_Ks - 10 - A_Ks))          (mas)                 (15)

is larger than the Gaia parallax for a binary. The significance of the excess is

    S/N_dplx = (plx_s - plx) / sqrt(dplx_s^2 + dplx^2)                          (16)

    dplx_s / plx_s = 0.2 ln(10) sqrt(sigma_s^2 + sigma_int^2 + sigma_mKs^2 + sigma_AKs^2)
                                                                                (17)

and a star is flagged a binary when S/N_dplx > 2. Here sigma_s^2 + sigma_int^2 is
the spectroscopic M_Ks uncertainty (``MKs_err``, Sec. 5.3) and sigma_mKs^2 +
sigma_AKs^2 that of the dereddened magnitude (``Ks0_err``). Negative or small
parallaxes are used as measured (eq. 16 is linear in the parallax).

``binary_flag``: 1 binary, 0 single, -9 unclassified (no parallax, no Ks / A_Ks, or
no spectroscopic M_Ks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from obpipe.options import option

BINARY_SNR_THRESHOLD = 2.0
FLAG_BINARY, FLAG_SINGLE, FLAG_UNKNOWN = 1, 0, -9
_K = 0.2 * np.log(10.0)


@dataclass(frozen=True)
class BinaryConfig:
    """Options of the binary stage (Sec. 6, eqs. 15-17; ``obpipe.binary``)."""

    snr_threshold: float = option(
        2.0,
        doc="a spectrum is flagged binary when its parallax excess S/N_dplx (eq. 16) exceeds this")

    def __post_init__(self) -> None:
        if not self.snr_threshold > 0:
            raise ValueError(f"snr_threshold must be > 0, got {self.snr_threshold}")


def spectrophotometric_parallax_mas(ks0_mag: np.ndarray, mks_mag: np.ndarray) -> np.ndarray:
    """Eq. (15) in mas, with ``ks0_mag`` = m_Ks - A_Ks (the dereddened apparent magnitude)."""
    ks0 = np.asarray(ks0_mag, dtype=np.float64)
    mks = np.asarray(mks_mag, dtype=np.float64)
    return 10.0 ** (-0.2 * (ks0 - mks - 10.0))


def spectrophotometric_parallax_error_mas(plx_s_mas: np.ndarray, mks_err_mag: np.ndarray,
                                          ks0_err_mag: np.ndarray) -> np.ndarray:
    """Eq. (17): dplx_s = plx_s 0.2 ln10 sqrt(MKs_err^2 + Ks0_err^2), in mas.

    ``mks_err_mag`` = sqrt(sigma_s^2 + sigma_int^2); ``ks0_err_mag`` =
    sqrt(sigma_mKs^2 + sigma_AKs^2).
    """
    return np.asarray(plx_s_mas) * _K * np.hypot(np.asarray(mks_err_mag, dtype=np.float64),
                                                 np.asarray(ks0_err_mag, dtype=np.float64))


def parallax_excess_snr(plx_s_mas: np.ndarray, plx_s_err_mas: np.ndarray, plx_mas: np.ndarray,
                        plx_err_mas: np.ndarray) -> np.ndarray:
    """Eq. (16): (plx_s - plx) / sqrt(dplx_s^2 + dplx^2)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(plx_s_mas) - np.asarray(plx_mas)) / np.hypot(plx_s_err_mas,
                                                                       plx_err_mas)


def identify_binaries(
    mks_mag: np.ndarray,
    mks_err_mag: np.ndarray,
    ks0_mag: np.ndarray,
    ks0_err_mag: np.ndarray,
    plx_mas: np.ndarray,
    plx_err_mas: np.ndarray,
    threshold: float = BINARY_SNR_THRESHOLD,
) -> dict[str, np.ndarray]:
    """Eqs. (15)-(17) and the 2-sigma flag for arrays of spectra.

    Returns ``parallax_spec`` (mas), ``parallax_spec_err`` (mas), ``snr_dparallax``
    and ``binary_flag`` (int8: 1 / 0 / -9). Missing inputs give NaN and -9.
    """
    plx_s = spectrophotometric_parallax_mas(ks0_mag, mks_mag)
    plx_s_err = spectrophotometric_parallax_error_mas(plx_s, mks_err_mag, ks0_err_mag)
    plx = np.asarray(plx_mas, dtype=np.float64)
    plx_err = np.asarray(plx_err_mas, dtype=np.float64)
    snr = parallax_excess_snr(plx_s, plx_s_err, plx, plx_err)
    valid = np.isfinite(snr) & np.isfinite(plx_s_err) & (plx_err > 0)
    flag = np.full(plx.shape, FLAG_UNKNOWN, dtype=np.int8)
    flag[valid] = np.where(snr[valid] > threshold, FLAG_BINARY, FLAG_SINGLE)
    snr = np.where(valid, snr, np.nan)
    return {"parallax_spec": plx_s, "parallax_spec_err": plx_s_err, "snr_dparallax": snr,
            "binary_flag": flag}


def expected_detection_probability(
    plx_s_mas: np.ndarray,
    plx_s_err_mas: np.ndarray,
    plx_mas: np.ndarray,
    plx_err_mas: np.ndarray,
    mks_mag: np.ndarray,
    mks_err_mag: np.ndarray,
    mks_centre_mag: np.ndarray,
    threshold: float = BINARY_SNR_THRESHOLD,
) -> np.ndarray:
    """P(S/N_dplx > threshold) had the spectroscopic M_Ks been N(``mks_centre_mag``, MKs_err).

    A bound for validation: ``plx_s_mas`` / ``plx_s_err_mas`` are eqs. (15) and (17) as
    evaluated with the M_Ks found (``mks_mag``); both scale as s = 10^(0.2 (M' - M_Ks))
    for another M_Ks = M', the Gaia parallax and the photometry unchanged. Eq. (16)
    exceeds t where a s - plx > t sqrt(b^2 s^2 + e^2) (a = plx_s, b = plx_s_err,
    e = plx_err); for a > t b the left minus the right rises with s, so the flag is set
    for s above the larger root s* of (a^2 - t^2 b^2) s^2 - 2 a plx s + plx^2 - t^2 e^2
    = 0, i.e. for M' > M* = M_Ks + 5 log10 s*, and the probability is
    Phi((centre - M*) / MKs_err) (centre: e.g. the primary's true M_Ks, an unbiased
    predictor). Stars with a <= t b (an M_Ks error above ~1.1 mag) are integrated
    numerically. NaN where an input is missing.
    """
    from scipy.special import ndtr

    a = np.asarray(plx_s_mas, dtype=np.float64)
    b = np.asarray(plx_s_err_mas, dtype=np.float64)
    plx = np.asarray(plx_mas, dtype=np.float64)
    e = np.asarray(plx_err_mas, dtype=np.float64)
    mks = np.asarray(mks_mag, dtype=np.float64)
    err = np.asarray(mks_err_mag, dtype=np.float64)
    centre = np.asarray(mks_centre_mag, dtype=np.float64)
    a, b, plx, e, mks, err, centre = np.broadcast_arrays(a, b, plx, e, mks, err, centre)
    t = float(threshold)
    prob = np.full(a.shape, np.nan)
    ok = np.isfinite(a + b + plx + e + mks + err + centre) & (a > 0) & (err > 0)
    steep = ok & (a > t * b)
    quad = a**2 - t**2 * b**2
    with np.errstate(invalid="ignore", divide="ignore"):
        disc = t**2 * (a**2 * e**2 + b**2 * plx**2 - t**2 * b**2 * e**2)
        s_star = (a * plx + np.sqrt(np.maximum(disc, 0.0))) / quad
        m_star = mks + 5.0 * np.log10(s_star)
        prob[steep] = ndtr((centre[steep] - m_star[steep]) / err[steep])
    # f(0) > 0 (a parallax far below zero): flagged for every M'
    prob[steep & (-plx > t * e)] = 1.0
    flat = ok & ~steep
    if flat.any():
        z = np.linspace(-8.0, 8.0, 4001)
        w = np.exp(-0.5 * z**2)
        w /= w.sum()
        sc = 10.0 ** (0.2 * (centre[flat, None] + err[flat, None] * z - mks[flat, None]))
        snr = parallax_excess_snr(a[flat, None] * sc, b[flat, None] * sc, plx[flat, None],
                                  e[flat, None])
        prob[flat] = np.sum(w * (snr > t), axis=-1)
    return prob


# ------------------------------------------------- beyond the paper: every visit, RV, RUWE
#: per-star binary probability: logistic model on the features of
#: :func:`star_binary_features`, fitted by ``benchmarks/binary.py`` on the training half
#: (even star-id hash) of the default DR5-size mock (seed 2026, 16,002 stars, 27,729
#: spectra, Gaia DR2 mode; the simulator with Sana et al. 2012 orbits, per-visit phases,
#: per-plate RV offsets and ivar mis-scaling) and scored there on the other half only;
#: ``binary_flag`` = 1 where the probability exceeds :data:`BINARY_PROB_THRESHOLD`,
#: chosen on the training half for <= 2 % false positives among single stars, both
#: among all of them and among those with plx/sigma > 10 (the binding one: the RV chi^2
#: of bright stars, whose quoted rv_err is below the mock's plate-to-plate RV scatter,
#: flags more singles there). Refitted 2026-12 (was seed 31, 5,000 stars, threshold
#: 0.4255 for all singles only: 3.9 % false positives at plx/sigma > 10 on the DR5 mock)
BINARY_LOGISTIC: dict[str, float] = {
    "intercept": -1.70335, "snr_dparallax_combined": 0.34068, "rv_chi2_log10_p": 0.38142,
    "log10_ruwe": 9.9221,
}
BINARY_PROB_THRESHOLD = 0.4853
#: features of the logistic model, in order
BINARY_FEATURES = ("snr_dparallax_combined", "rv_chi2_log10_p", "log10_ruwe")


def rv_chi2_log10_p(star_id: np.ndarray, rv_kms: np.ndarray, rv_err_kms: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Radial-velocity variability of each spectrum's star over its visits.

    chi^2 = sum_i (rv_i - <rv>)^2 / rv_err_i^2 about the inverse-variance mean, with
    n - 1 degrees of freedom (n visits with a finite RV and rv_err > 0); returns, per
    spectrum, -log10 of the chi^2 survival probability (0 for a star with fewer than two
    usable visits; capped at 300) and n.
    """
    import pandas as pd
    from scipy.stats import chi2

    rv = np.asarray(rv_kms, dtype=np.float64)
    err = np.asarray(rv_err_kms, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = np.isfinite(rv) & np.isfinite(err) & (err > 0)
        w = np.where(ok, 1.0 / np.where(ok, err, 1.0) ** 2, 0.0)
    key = pd.Series(np.asarray(star_id).astype(object).astype(str))
    codes, _ = pd.factorize(key)
    sw = np.bincount(codes, weights=w)
    swr = np.bincount(codes, weights=w * np.where(ok, rv, 0.0))
    n = np.bincount(codes, weights=ok.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = swr / sw
    resid = np.where(ok, (rv - mean[codes]) ** 2 * w, 0.0)
    c2 = np.bincount(codes, weights=resid)
    dof = np.maximum(n - 1, 1)
    with np.errstate(divide="ignore"):
        lp = -np.log10(np.clip(chi2.sf(c2, dof), 1e-300, 1.0))
    lp = np.where(n >= 2, np.minimum(lp, 300.0), 0.0)
    return lp[codes], n[codes].astype(np.int16)


def star_binary_features(star_id: np.ndarray, snr_dparallax_combined: np.ndarray,
                         rv_kms: np.ndarray, rv_err_kms: np.ndarray, ruwe: np.ndarray
                         ) -> dict[str, np.ndarray]:
    """Per spectrum, the features of its star for :func:`binary_probability`:
    ``snr_dparallax_combined`` (eq. 16 with M_Ks combined over the star's visits, as
    given, averaged over the visits), ``rv_chi2_log10_p`` (:func:`rv_chi2_log10_p`),
    ``log10_ruwe`` (0 where RUWE is missing) and ``n_rv_visits``."""
    import pandas as pd

    lp, n = rv_chi2_log10_p(star_id, rv_kms, rv_err_kms)
    # one value per star: the mean over its visits (their Ks0 differ slightly)
    snr = pd.Series(np.asarray(snr_dparallax_combined, dtype=np.float64))
    key = pd.Series(np.asarray(star_id).astype(object).astype(str))
    snr = snr.groupby(key).transform("mean").to_numpy()
    ru = np.asarray(ruwe, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lru = np.where(np.isfinite(ru) & (ru > 0), np.log10(ru), 0.0)
    return {"snr_dparallax_combined": snr,
            "rv_chi2_log10_p": lp, "log10_ruwe": lru, "n_rv_visits": n}


def binary_probability(features: dict[str, np.ndarray],
                       coefficients: dict[str, float] | None = None) -> np.ndarray:
    """Logistic probability 1 / (1 + exp(-(b0 + sum_k b_k x_k))) over
    :data:`BINARY_FEATURES`; a missing parallax excess (NaN) contributes 0 (the RV and
    RUWE terms still count). NaN only where every feature is uninformative: no parallax
    excess, fewer than two RV visits and no RUWE."""
    c = coefficients or BINARY_LOGISTIC
    z = np.full(np.shape(features["log10_ruwe"]), float(c["intercept"]))
    for name in BINARY_FEATURES:
        x = np.asarray(features[name], dtype=np.float64)
        z = z + float(c[name]) * np.where(np.isfinite(x), x, 0.0)
    p = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
    none = (~np.isfinite(np.asarray(features["snr_dparallax_combined"], dtype=float))
            & (np.asarray(features.get("n_rv_visits", np.zeros(z.shape))) < 2)
            & (np.asarray(features["log10_ruwe"]) == 0))
    return np.where(none, np.nan, p)
