"""Options of the photometry stage (Sec. 4): the bands, the extinction curve and its
coefficients (:mod:`obpipe.photometry.extinction`)."""

from __future__ import annotations

from dataclasses import dataclass

from obpipe.options import option
from obpipe.photometry.extinction import EBV_BANDS
from obpipe.photometry.synthetic import EXTINCTION_LAWS, R_V_RANGE

#: survey column of each band's magnitude and error.
BAND_COLUMNS: dict[str, tuple[str, str]] = {
    "g": ("g", "g_err"),
    "r": ("r", "r_err"),
    "i": ("i", "i_err"),
    "G": ("phot_g_mean_mag", "phot_g_mean_mag_error"),
    "BP": ("phot_bp_mean_mag", "phot_bp_mean_mag_error"),
    "RP": ("phot_rp_mean_mag", "phot_rp_mean_mag_error"),
    "J": ("J", "J_err"),
    "H": ("H", "H_err"),
    "Ks": ("Ks", "Ks_err"),
}


def _ebv_bands() -> tuple[str, ...]:
    return tuple(EBV_BANDS)


@dataclass(frozen=True)
class PhotometryConfig:
    """Options of the photometry stage (Sec. 4; ``obpipe.stages.photometry``)."""

    bands: tuple[str, ...] = option(
        default_factory=_ebv_bands,
        doc="bands whose adjacent colour excesses give E(B-V) (Sec. 4), in the survey-grouped "
            "wavelength order of ``obpipe.photometry.extinction.EBV_BANDS``; K_s is never used")
    coefficients: str = option(
        "star",
        doc="extinction coefficients R_X: \"star\" (a Kurucz model of each star's Teff, "
            "dustapprox) or \"fixed\" (the paper's 12,000 K spectrum)")
    include_parameter_error: bool = option(
        True,
        doc="include the Teff / log g uncertainty of the intrinsic colours in the E(B-V) error")
    law: str = option(
        "G23",
        doc="extinction-curve family: \"G23\" (Gordon et al. 2023; chosen on real LAMOST hot "
            "stars, docs/validation.md) or \"F99\" (Fitzpatrick 1999, the paper's)")
    r_v: float = option(3.1, doc="R_V of the curve (2.3-5.1); the paper: 3.1")
    r_v_scatter: float = option(
        0.18,
        doc="star-to-star sigma(R_V) propagated into ebv_err and AKs_err (Schlafly et al. 2016: "
            "0.18)")
    extinction_dependent: bool = option(
        True,
        doc="band coefficients at each star's own A0 = R_V E(B-V) (False: low-extinction limit, as"
            " in the paper)")
    fit_r_v: bool = option(
        False,
        doc="fit R_V per star jointly with E(B-V) (beyond the paper; "
            "obpipe.photometry.extinction.ebv_rv_fit): prior N(r_v, r_v_scatter), errors "
            "marginalised over R_V; off by default (docs/validation.md, \"R_V fitted per "
            "star\")")
    intrinsic_mag_error_mag: float = option(
        0.02,
        doc="uncertainty of each band's intrinsic magnitude (mag, independent per band) added to "
            "ebv_err (obpipe.photometry.extinction.INTRINSIC_MAG_ERROR_MAG; 0: off)")

    def __post_init__(self) -> None:
        if self.coefficients not in ("star", "fixed"):
            raise ValueError(f"coefficients must be 'star' or 'fixed', got {self.coefficients!r}")
        if self.law not in EXTINCTION_LAWS:
            raise ValueError(f"law must be one of {EXTINCTION_LAWS}, got {self.law!r}")
        if not R_V_RANGE[0] <= self.r_v <= R_V_RANGE[1]:
            raise ValueError(f"r_v must be within {R_V_RANGE}, got {self.r_v}")
        if not self.r_v_scatter >= 0:
            raise ValueError(f"r_v_scatter must be >= 0, got {self.r_v_scatter}")
        if not self.intrinsic_mag_error_mag >= 0:
            raise ValueError("intrinsic_mag_error_mag must be >= 0, got "
                             f"{self.intrinsic_mag_error_mag}")
        if self.fit_r_v and not (self.coefficients == "star" and self.extinction_dependent
                                 and self.r_v_scatter > 0):
            raise ValueError("fit_r_v needs coefficients = \"star\", extinction_dependent = "
                             "true and r_v_scatter > 0 (the prior's sigma)")
        unknown = [b for b in self.bands if b not in BAND_COLUMNS]
        if unknown:
            raise ValueError(f"bands: unknown {unknown}; known: {', '.join(BAND_COLUMNS)}")
        if "Ks" in self.bands:
            raise ValueError("bands: K_s is never used for E(B-V) (a disc brightens it)")
        if len(self.bands) < 2:
            raise ValueError(f"bands: at least two bands make a colour, got {list(self.bands)}")
