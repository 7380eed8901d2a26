"""Synthetic LAMOST-like spectra of hot stars on the common log-lambda grid.

Model (all wavelengths vacuum, rest frame of the measured RV):

1. Line opacity tau(lambda) on the pixel grid:
   * hydrogen Balmer (n = 3..22) and Paschen (n = 10..22) lines from the Rydberg
     formula, with a saturated core and Stark-like wings, tau = A / (1 + |dl/w|^2.5).
     The equivalent width follows ``balmer_ew_aa(Teff, log g)`` (peaks near
     9,500 K; grows with gravity as g^0.25 -- **the luminosity signal**: at fixed
     Teff, wider wings mean higher g, smaller R and lower L); the highest visible
     series member follows the Inglis-Teller relation (more lines at low g);
   * He I (peaks at ~22 kK, pressure-broadened with g), He II (O stars), and
     metal lines (Mg II 4481, Si II/III/IV, C II, O II, N III, Ca II, Fe II, O I)
     whose strengths depend on Teff and scale with 10^[Fe/H].
2. exp(-tau) is convolved, by FFT on the uniform-velocity grid, with the
   rotational profile (Gray 2005, limb darkening 0.6; analytic Fourier
   transform), the instrumental Gaussian for R ~ 1800 and a sub-pixel shift
   (RV residual, or a companion's orbital velocity).
3. Binaries sum the primary and secondary spectra weighted by their continua.
4. Emission: Be discs (double-peaked H-alpha, weaker H-beta/H-gamma, Paschen,
   He I and Fe II), or nebular lines (narrow H, [N II], [S II], [O III]) at the
   interstellar velocity, or a supergiant's wind (H-alpha filled in by a broad,
   slightly red-shifted emission with a weak blue-shifted P Cygni absorption).
5. Interstellar Na D (Poznanski et al. 2012 EW - E(B-V) relation), Ca II K and
   diffuse interstellar bands scaled with E(B-V), at the ISM velocity (-RV in
   the stellar rest frame); residual telluric bands in the observed frame.
6. Continuum: a blackbody at Teff reddened by the mock's extinction curve at the
   star's R_V (``sed.extinction_curve_per_ebv``: F19 by default), scaled to the star's
   g magnitude, times a smooth flux-calibration error; noise from the S/N with the
   LAMOST throughput shape, mis-scaled per exposure against the quoted ivar and
   correlated between neighbouring pixels (``survey.synthesize_spectra``), sky-line
   residuals, bad pixels, partial coverage at the ends.
7. ~1 % broken spectra (Appendix A, Fig. 15 of the paper): arm flux jumps, dead
   segments, wavelength-calibration shifts of the blue arm, cosmic-ray spikes.

Where the mock is still unlike real LAMOST spectra: line profiles are
parametric rather than from model atmospheres (no NLTE line cores, no wind
emission in O supergiants, no Balmer jump below 3,700 AA); the continuum is a
blackbody; the instrument profile is a constant-R Gaussian; sky subtraction
residuals and tellurics are schematic; there are no second-order or
fibre-to-fibre cross-talk effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.special import expit, j1

from obpipe.spectra.grid import SPEED_OF_LIGHT_KMS, velocity_per_pixel_kms

RYDBERG_H_INV_AA = 1.0967758e-3  # Rydberg constant for hydrogen, 1/AA (vacuum)
LIMB_DARKENING = 0.6
#: Minimum Gaussian width (pixels) given to narrow lines before the FFT convolution; the
#: instrumental kernel is reduced so that a narrow line ends at the nominal resolution.
MIN_LINE_SIGMA_PX = 0.6
BALMER_CORE_TAU = 1.0
#: half-widths of the windows in which line opacity is evaluated (fixed: row-independent)
HYDROGEN_WINDOW_AA = 300.0
METAL_WINDOW_AA = 25.0
ARM_SPLIT_AA = 5900.0  # the LAMOST blue/red arm junction


def hydrogen_line_wavelength_aa(n_lower: int, n_upper: np.ndarray | int) -> np.ndarray:
    """Vacuum wavelength (AA) of the hydrogen transition n_upper -> n_lower (Rydberg)."""
    n_upper = np.asarray(n_upper, dtype=float)
    return 1.0 / (RYDBERG_H_INV_AA * (1.0 / n_lower**2 - 1.0 / n_upper**2))


def instrumental_sigma_px(resolving_power: float) -> float:
    """Gaussian sigma (pixels) of the instrumental profile at resolving power R."""
    fwhm_kms = SPEED_OF_LIGHT_KMS / resolving_power
    return fwhm_kms / (2.0 * np.sqrt(2.0 * np.log(2.0))) / velocity_per_pixel_kms()


def balmer_ew_aa(teff_k: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """Equivalent width (AA) of H-beta-like Balmer lines vs Teff and log g.

    log10 EW = a + c1 x + c2 x^2 - 25 min(x + 0.02, 0)^2 + b (log g - 4), with
    x = log10(Teff / 10^4). The coefficients are the fit of the H-gamma index EW
    of the MILES hot stars (``tests/data/miles_hot_star_ews.csv``, R = 1,800)
    against Teff and log g, corrected for the ratio of index to total EW of this
    line model; the cool-side term turns the EW over below ~9,500 K (A stars).
    Supergiants (log g ~ 2.5) have ~2x weaker Balmer lines than dwarfs.
    """
    x = np.log10(np.asarray(teff_k, dtype=float) / 1.0e4)
    log_ew = (
        BALMER_LOG_EW_COEFFS[0]
        + BALMER_LOG_EW_COEFFS[1] * x
        + BALMER_LOG_EW_COEFFS[2] * x**2
        - 25.0 * np.minimum(x + 0.02, 0.0) ** 2
        + BALMER_GRAVITY_SLOPE * (np.asarray(logg, dtype=float) - 4.0)
    )
    return np.clip(10.0**log_ew, 0.3, 60.0)


#: (a, c1, c2) and b: iterated until the model's H-gamma index EW (R = 1,800, v sin i =
#: 100 km/s) reproduces the MILES fit log EW = 1.1644 + 0.2198 (log g - 4) - 1.4030 x
#: - 0.0543 x^2 on 9.5-30 kK, log g 3-4.2 (to 0.03 dex).
BALMER_LOG_EW_COEFFS = (1.2004, -1.5061, 0.1074)
BALMER_GRAVITY_SLOPE = 0.2282


def he_i_4471_ew_aa(teff_k: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """EW (AA) of He I 4471: an asymmetric bell in log Teff peaking near 22 kK."""
    x = np.log10(np.asarray(teff_k, dtype=float) / 1.0e4)
    return HEI_PEAK_EW * np.exp(-0.5 * ((x - HEI_PEAK_X) / HEI_WIDTH_X) ** 2)


#: Gaussian in log Teff fitted to MILES He I 4471 index EWs (peak 1.253 AA at 22.2 kK,
#: sigma 0.146 dex), scaled by the model's total/index EW ratio.
HEI_PEAK_EW = 1.50
HEI_PEAK_X = 0.3465
HEI_WIDTH_X = 0.1462


@dataclass(frozen=True)
class MetalLine:
    wave_aa: float
    species: str
    scale: float


# Vacuum wavelengths (air values from NIST converted with Morton 2000).
HE_I_LINES = (
    (3820.7, 0.5), (4027.3, 0.95), (4144.9, 0.4), (4389.2, 0.6), (4472.7, 1.0),
    (4714.5, 0.35), (4923.3, 0.6), (5017.1, 0.45), (5877.3, 1.0), (6680.0, 0.65),
    (7067.1, 0.45), (7283.4, 0.2),
)
HE_II_LINES = ((4201.2, 0.45), (4542.9, 0.7), (4687.0, 1.1), (5413.0, 0.8))
METAL_LINES = (
    MetalLine(4482.4, "MgII", 1.0),
    MetalLine(4129.2, "SiII", 1.0), MetalLine(4132.0, "SiII", 0.8),
    MetalLine(6348.9, "SiII", 1.2), MetalLine(6373.1, "SiII", 0.8),
    MetalLine(4553.9, "SiIII", 1.0), MetalLine(4569.1, "SiIII", 0.8),
    MetalLine(4576.1, "SiIII", 0.5),
    MetalLine(4090.0, "SiIV", 1.0), MetalLine(4117.2, "SiIV", 0.9),
    MetalLine(4268.4, "CII", 1.0),
    MetalLine(4416.1, "OII", 1.0), MetalLine(4650.1, "OII", 1.2),
    MetalLine(4635.4, "NIII", 0.7), MetalLine(4641.9, "NIII", 1.0),
    MetalLine(3934.8, "CaII", 1.0), MetalLine(8500.4, "CaT", 0.6),
    MetalLine(8544.4, "CaT", 1.0), MetalLine(8664.5, "CaT", 0.9),
    MetalLine(4925.3, "FeII", 1.0), MetalLine(5019.8, "FeII", 1.0),
    MetalLine(5170.5, "FeII", 1.1),
    MetalLine(7776.0, "OI", 1.0),
)
# species: (peak EW AA, peak Teff K, width K)
_SPECIES = {
    "MgII": (0.45, 10000.0, 11000.0),
    "SiII": (0.18, 13000.0, 4000.0),
    "SiIII": (0.25, 24000.0, 5000.0),
    "SiIV": (0.30, 31000.0, 5000.0),
    "CII": (0.20, 18000.0, 5000.0),
    "OII": (0.15, 24000.0, 5000.0),
    "NIII": (0.20, 36000.0, 6000.0),
    "CaII": (0.50, 7500.0, 2200.0),
    "CaT": (0.60, 7000.0, 2000.0),
    "FeII": (0.30, 8000.0, 3000.0),
    "OI": (0.50, 9000.0, 4000.0),
}

# Interstellar features: (vacuum AA, EW per E(B-V) AA, Gaussian sigma AA)
DIBS = ((4429.0, 1.9, 7.0), (5781.0, 0.5, 1.0), (5798.5, 0.17, 0.5), (6285.5, 0.9, 1.8),
        (6615.5, 0.22, 0.6))
NA_D = (5891.6, 5897.6)
CA_K_ISM = 3934.8
TELLURIC_BANDS = (  # (lo, hi, depth) observed-frame vacuum AA
    (6277.0, 6302.0, 0.15), (6869.0, 6886.0, 0.5), (7160.0, 7340.0, 0.25),
    (7595.0, 7632.0, 0.8), (8130.0, 8350.0, 0.25), (8950.0, 9100.0, 0.4),
)
SKY_LINES = (5578.9, 5891.6, 5897.6, 6302.0, 6365.5, 6865.0, 7341.0, 7794.0, 7913.7, 8344.6,
             8399.2, 8430.2, 8827.1, 8885.8, 8921.8, 8943.4, 9001.6)
NEBULAR_LINES = (  # (vacuum AA, strength relative to H-alpha EW)
    (6564.61, 1.0), (6585.27, 0.35), (6549.86, 0.117), (6718.29, 0.12), (6732.67, 0.09),
    (4862.68, 0.35), (5008.24, 0.18), (4960.29, 0.06), (4341.68, 0.16),
)
_THROUGHPUT_KNOTS = (
    (3700.0, 0.30), (3900.0, 0.55), (4200.0, 0.85), (4600.0, 1.0), (5500.0, 1.0),
    (5750.0, 0.7), (5900.0, 0.45), (6050.0, 0.75), (6400.0, 0.95), (7500.0, 1.0),
    (8500.0, 0.85), (9100.0, 0.5),
)


def throughput(wave_aa: np.ndarray) -> np.ndarray:
    """Relative S/N shape along the LAMOST spectrum (1 in the g band)."""
    k = np.array(_THROUGHPUT_KNOTS)
    return np.interp(wave_aa, k[:, 0], k[:, 1])


@lru_cache(maxsize=4)
def _balmer_profile_area(core_tau: float) -> float:
    """Integral over u of 1 - exp(-A / (1 + |u|^2.5)) (EW per unit wing width)."""
    u = np.linspace(-400.0, 400.0, 400_001)
    return float(np.trapezoid(1.0 - np.exp(-core_tau / (1.0 + np.abs(u) ** 2.5)), u))


def _window(wave: np.ndarray, center: float, half_width: float) -> slice:
    lo = int(np.searchsorted(wave, center - half_width))
    hi = int(np.searchsorted(wave, center + half_width))
    return slice(lo, hi)


def hydrogen_tau(wave: np.ndarray, teff_k: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """Hydrogen line opacity, shape (n_star, n_pix)."""
    n = teff_k.size
    tau = np.zeros((n, wave.size))
    ew_ref = balmer_ew_aa(teff_k, logg)
    area = _balmer_profile_area(BALMER_CORE_TAU)
    # Inglis-Teller: log n_e = 23.26 - 7.5 log n_max; n_e grows with gravity
    log_ne = 14.6 + 0.6 * (logg - 4.0)
    n_max = 10.0 ** ((23.26 - log_ne) / 7.5)
    for _series, n_lo, uppers, rel in (
        ("balmer", 2, range(3, 23), _balmer_relative),
        ("paschen", 3, range(10, 23), _paschen_relative),
    ):
        for n_up in uppers:
            lam = float(hydrogen_line_wavelength_aa(n_lo, n_up))
            if lam < wave[0] - 300 or lam > wave[-1] + 300:
                continue
            dissolve = np.exp(-((n_up / n_max) ** 4)) if n_up > 6 else np.ones(n)
            ew = ew_ref * rel(n_up) * dissolve
            w = ew / area  # wing width parameter, AA
            # a fixed window, so that a row never depends on the other rows of its batch
            sl = _window(wave, lam, HYDROGEN_WINDOW_AA)
            if sl.stop <= sl.start:
                continue
            dl = wave[sl][None, :] - lam
            # keep the core resolved on the pixel grid (weaker core if widened)
            w_min = MIN_LINE_SIGMA_PX * lam * np.log(10.0) * 1e-4
            w_eff = np.maximum(w, w_min)
            amp = BALMER_CORE_TAU * w / w_eff
            tau[:, sl] += amp[:, None] / (1.0 + np.abs(dl / w_eff[:, None]) ** 2.5)
    return tau


def _balmer_relative(n_up: int) -> float:
    return {3: 0.85, 4: 0.87, 5: 1.0, 6: 1.0, 7: 0.95, 8: 0.9, 9: 0.85, 10: 0.8}.get(
        n_up, max(0.8 - 0.07 * (n_up - 10), 0.15)
    )


def _paschen_relative(n_up: int) -> float:
    return 0.28 * max(1.0 - 0.04 * (n_up - 10), 0.3)


def gaussian_tau(
    wave: np.ndarray, tau: np.ndarray, center: float, ew: np.ndarray, sigma_aa: np.ndarray
) -> None:
    """Add a Gaussian line of equivalent width ``ew`` (AA, weak-line) in place."""
    dpix = center * np.log(10.0) * 1e-4
    sig = np.maximum(sigma_aa, MIN_LINE_SIGMA_PX * dpix)
    sl = _window(wave, center, METAL_WINDOW_AA)
    if sl.stop <= sl.start:
        return
    dl = wave[sl][None, :] - center
    s = np.broadcast_to(np.asarray(sig, dtype=float), ew.shape)[:, None]
    tau[:, sl] += (ew[:, None] / (s * np.sqrt(2 * np.pi))) * np.exp(-0.5 * (dl / s) ** 2)


def helium_metal_tau(
    wave: np.ndarray, teff_k: np.ndarray, logg: np.ndarray, feh: np.ndarray
) -> np.ndarray:
    """He I, He II and metal-line opacity, shape (n_star, n_pix)."""
    n = teff_k.size
    tau = np.zeros((n, wave.size))
    he1 = he_i_4471_ew_aa(teff_k, logg)
    he1_sigma = 0.9 * 10.0 ** (0.3 * (np.clip(logg, 2.0, 6.0) - 4.0))
    for lam, scale in HE_I_LINES:
        gaussian_tau(wave, tau, lam, he1 * scale, he1_sigma)
    he2 = 1.0 * np.clip((teff_k - 28000.0) / 14000.0, 0.0, 1.0) ** 1.3
    for lam, scale in HE_II_LINES:
        gaussian_tau(wave, tau, lam, he2 * scale, np.full(n, 1.0))
    metal = 10.0 ** np.clip(feh, -2.0, 0.6)
    supergiant_boost = 1.0 + 0.5 * np.clip(4.0 - logg, 0.0, 2.0)
    for line in METAL_LINES:
        peak, t0, width = _SPECIES[line.species]
        ew = peak * line.scale * np.exp(-(((teff_k - t0) / width) ** 2)) * metal
        if line.species == "OI":
            ew = ew * supergiant_boost
        gaussian_tau(wave, tau, line.wave_aa, ew, np.full(n, 0.25))
    return tau


def rotation_kernel_ft(freq_per_px: np.ndarray, vsini_px: np.ndarray) -> np.ndarray:
    """Fourier transform of the rotational broadening profile (Gray 2005).

    G(x) = [2(1-e) sqrt(1-x^2) + (pi e / 2)(1-x^2)] / (pi v_L (1 - e/3)),
    x = dv / v_L; its transform, with k = 2 pi f v_L, is
    [2(1-e) pi J1(k)/k + 2 pi e (sin k - k cos k)/k^3] / (pi (1 - e/3)).
    """
    e = LIMB_DARKENING
    k = 2.0 * np.pi * freq_per_px[None, :] * vsini_px[:, None]
    small = k < 1e-3
    ks = np.where(small, 1.0, k)
    term1 = 2.0 * (1.0 - e) * np.pi * j1(ks) / ks
    term2 = 2.0 * np.pi * e * (np.sin(ks) - ks * np.cos(ks)) / ks**3
    ft = (term1 + term2) / (np.pi * (1.0 - e / 3.0))
    return np.where(small, 1.0, ft)


def broaden(
    spectrum: np.ndarray,
    vsini_kms: np.ndarray,
    sigma_px: float,
    shift_px: np.ndarray | None = None,
    pad: int = 128,
) -> np.ndarray:
    """Convolve rows with rotation (v sin i), a Gaussian (sigma_px) and a shift, by FFT."""
    n, npix = spectrum.shape
    padded = np.pad(spectrum, ((0, 0), (pad, pad)), mode="edge")
    nfft = scipy.fft.next_fast_len(padded.shape[1], real=True)
    spec_ft = scipy.fft.rfft(padded, n=nfft, axis=1)
    f = scipy.fft.rfftfreq(nfft)
    kernel = rotation_kernel_ft(f, np.asarray(vsini_kms, dtype=float) / velocity_per_pixel_kms())
    kernel = kernel * np.exp(-2.0 * np.pi**2 * sigma_px**2 * f**2)[None, :]
    if shift_px is not None:
        kernel = kernel * np.exp(-2j * np.pi * f[None, :] * np.asarray(shift_px)[:, None])
    out = scipy.fft.irfft(spec_ft * kernel, n=nfft, axis=1)
    return out[:, pad : pad + npix]


def normalized_spectrum(
    wave: np.ndarray,
    teff_k: np.ndarray,
    logg: np.ndarray,
    feh: np.ndarray,
    vsini_kms: np.ndarray,
    resolving_power: float = 1800.0,
    shift_px: np.ndarray | None = None,
) -> np.ndarray:
    """Continuum-normalised absorption spectrum at resolution R, shape (n_star, n_pix)."""
    tau = hydrogen_tau(wave, teff_k, logg)
    tau += helium_metal_tau(wave, teff_k, logg, feh)
    sigma_inst = instrumental_sigma_px(resolving_power)
    sigma_kernel = np.sqrt(max(sigma_inst**2 - MIN_LINE_SIGMA_PX**2, 0.0))
    return broaden(np.exp(-tau), vsini_kms, sigma_kernel, shift_px)


def planck_shape(wave_aa: np.ndarray, teff_k: np.ndarray) -> np.ndarray:
    """Blackbody B_lambda(T) normalised to 1 at 4,700 AA, shape (n_star, n_pix)."""
    c2 = 1.438777e8  # hc/k in AA K
    t = np.asarray(teff_k, dtype=float)[:, None]

    def b(lam: np.ndarray) -> np.ndarray:
        return lam**-5.0 / np.expm1(c2 / (lam * t))

    return b(wave_aa[None, :]) / b(np.array([[4700.0]]))


def _gauss(wave: np.ndarray, center: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    c = np.atleast_1d(np.asarray(center, dtype=float))[:, None]
    s = np.atleast_1d(np.asarray(sigma, dtype=float))[:, None]
    return np.exp(-0.5 * ((wave[None, :] - c) / s) ** 2) / (s * np.sqrt(2.0 * np.pi))


def emission_spectrum(
    wave: np.ndarray,
    emission_type: np.ndarray,
    halpha_ew: np.ndarray,
    vsini_kms: np.ndarray,
    ism_velocity_kms: np.ndarray,
    resolving_power: float,
) -> np.ndarray:
    """Emission in continuum units (to add to the normalised spectrum), (n, n_pix)."""
    n = emission_type.size
    out = np.zeros((n, wave.size))
    be = emission_type == "be_disc"
    neb = emission_type == "nebular"
    wind = emission_type == "wind"
    inst_kms = SPEED_OF_LIGHT_KMS / resolving_power / 2.3548
    if be.any():
        ew = -halpha_ew[be]
        v_peak = np.maximum(0.6 * vsini_kms[be], 50.0)
        sig_v = np.sqrt((0.15 * vsini_kms[be] + 20.0) ** 2 + inst_kms**2)
        be_lines = ((6564.61, 1.0), (4862.68, 0.18), (4341.68, 0.06), (4102.89, 0.03),
                    (5877.3, 0.02), (6680.0, 0.015), (5170.5, 0.01), (5318.0, 0.01))
        be_lines += tuple(
            (float(hydrogen_line_wavelength_aa(3, k)), 0.035) for k in range(10, 20)
        )
        prof = np.zeros((int(be.sum()), wave.size))
        for lam, rel in be_lines:
            sig = lam * sig_v / SPEED_OF_LIGHT_KMS
            for sgn in (-1.0, 1.0):
                prof += 0.5 * rel * ew[:, None] * _gauss(
                    wave, lam * (1.0 + sgn * v_peak / SPEED_OF_LIGHT_KMS), sig
                )
        out[be] = prof
    if neb.any():
        ew = -halpha_ew[neb]
        v = ism_velocity_kms[neb]
        sig_v = np.sqrt(20.0**2 + inst_kms**2)
        prof = np.zeros((int(neb.sum()), wave.size))
        for lam, rel in NEBULAR_LINES:
            c = lam * (1.0 + v / SPEED_OF_LIGHT_KMS)
            prof += rel * ew[:, None] * _gauss(wave, c, lam * sig_v / SPEED_OF_LIGHT_KMS)
        out[neb] = prof
    if wind.any():
        # a B supergiant's wind: H-alpha emission of EW |halpha_ew| (terminal velocities
        # ~200-1,000 km/s), peaking slightly red of rest, with a P Cygni absorption of a
        # third of it on the blue side; H-beta at a fifth
        ew = -halpha_ew[wind]
        prof = np.zeros((int(wind.sum()), wave.size))
        sig_v = np.hypot(120.0, inst_kms)
        for lam, rel in ((6564.61, 1.0), (4862.68, 0.2)):
            prof += rel * ew[:, None] * _gauss(
                wave, lam * (1.0 + 40.0 / SPEED_OF_LIGHT_KMS), lam * sig_v / SPEED_OF_LIGHT_KMS)
            prof -= 0.33 * rel * ew[:, None] * _gauss(
                wave, lam * (1.0 - 250.0 / SPEED_OF_LIGHT_KMS), lam * sig_v / SPEED_OF_LIGHT_KMS)
        out[wind] = prof
    return out


def na_d_ew_aa(ebv: np.ndarray) -> np.ndarray:
    """Na D1+D2 EW (AA) from E(B-V): Poznanski et al. (2012), log E(B-V) = 1.17 EW - 1.85."""
    e = np.clip(np.asarray(ebv, dtype=float), 1e-3, None)
    return np.clip((np.log10(e) + 1.85) / 1.17, 0.0, None)


def ism_transmission(
    wave: np.ndarray, ebv: np.ndarray, ism_velocity_kms: np.ndarray, resolving_power: float
) -> np.ndarray:
    """Interstellar absorption (DIBs, Na D, Ca II K) at the ISM velocity, (n, n_pix)."""
    n = ebv.size
    depth = np.zeros((n, wave.size))
    doppler = 1.0 + ism_velocity_kms / SPEED_OF_LIGHT_KMS
    for lam, ew_per_ebv, sig in DIBS:
        s = np.hypot(sig, lam / resolving_power / 2.3548)
        depth += (ew_per_ebv * ebv)[:, None] * _gauss(wave, lam * doppler, np.full(n, s))
    na = na_d_ew_aa(ebv)
    for lam, share in zip(NA_D, (0.55, 0.45), strict=True):
        s = lam / resolving_power / 2.3548
        depth += (share * na)[:, None] * _gauss(wave, lam * doppler, np.full(n, s))
    s = CA_K_ISM / resolving_power / 2.3548
    depth += (0.2 * np.clip(ebv, 0, None) ** 0.7)[:, None] * _gauss(
        wave, CA_K_ISM * doppler, np.full(n, s)
    )
    return np.exp(-depth)


def telluric_transmission(
    wave: np.ndarray, rv_kms: np.ndarray, residual: np.ndarray
) -> np.ndarray:
    """Residual telluric absorption after an imperfect correction, in the rest frame."""
    obs = wave[None, :] * (1.0 + rv_kms[:, None] / SPEED_OF_LIGHT_KMS)
    t = np.ones((rv_kms.size, wave.size))
    for lo, hi, d in TELLURIC_BANDS:
        edge = expit((obs - lo) / 2.0) * expit((hi - obs) / 2.0)
        structure = 0.7 + 0.3 * np.sin(2.0 * np.pi * obs / 3.1)
        t *= 1.0 - residual[:, None] * d * edge * structure
    return t
