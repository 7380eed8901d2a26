"""The stellar population of the mock survey: classes, masses, ages, tracks, binaries.

What carries M_Ks, and what hides it
------------------------------------
A star's spectrum is set by (Teff, log g, [Fe/H], v sin i, emission, companion).
Its luminosity follows eq. 5 of the paper: log L = log M + 4 log Teff - log g
(solar units). Teff and log g are visible in the spectrum (He/He II/metal line
ratios and Balmer-wing widths, see ``spectra.py``); the mass is only implied
through the evolutionary tracks. The mock hides part of the luminosity from the
spectrum in three documented ways:

* **cosmic scatter**: the mass at fixed (Teff, log g) scatters by
  ``cosmic_log_mass_scatter_dex`` (default 0.08 dex, i.e. 0.2 mag in M_bol),
  standing for rotation, composition and evolutionary history that a low-res
  spectrum cannot see. It sets the floor of any spectroscopic M_Ks (sigma_int);
* **rotation** washes out line cores (v sin i up to ~400 km/s);
* **unresolved companions** make the system brighter than the primary while the
  spectrum stays mostly the primary's (the paper's binaries, Sec. 6).

Tracks
------
Zero-age main-sequence L and R are the analytic fits of Tout et al. (1996, MNRAS
281, 257) at Z = 0.02; main-sequence evolution brightens L by ~0.3-0.45 dex and
inflates R by ~0.4-0.5 dex at the terminal-age main sequence (close to the
Geneva/MIST tracks for 3-30 Msun); stars past the main sequence cross to lower
Teff at nearly constant L, growing R by up to a factor 10, but each only as far
as it stays an OB star (Teff >= ``evolved_min_teff_k``, log g >=
``evolved_min_logg``: blue giants and supergiants; the yellow and red ones a
spectral-type OB selection would not pick). M_Ks follows from L and Teff through the
mock's own bolometric correction and V - Ks (Mamajek's sequence, ``sed.py``).

B/A supergiants and bright giants (``supergiant_fraction`` of OB stars) are drawn
directly in (Teff, log g): log g uniform in 1.5-3, Teff log-uniform in 10-30 kK, and
the mass whose post-main-sequence luminosity (the track's L at the end of the crossing)
gives that L / M through eq. 5, so that they sit where such stars are observed
(luminosity classes Ia-II); pairs that would need a mass outside the IMF's range are
drawn again. Those with log g < 2.6 and Teff > 12 kK carry wind emission that fills in
H-alpha (``emission_type`` "wind").

Binary orbits: circular, periods from Sana et al. (2012, Science 337, 444), f(log P) ~
(log P)^-0.55 on 0.15 <= log P/d <= 3.5, isotropic inclinations; the relative orbital
velocity is K = (2 pi G (M1 + M2) / P)^(1/3) sin i = 212.8 km/s (M/Msun)^(1/3)
(P/d)^(-1/3) sin i, and each visit sees the phase of its own date.

Where the mock is unlike the real sky: no mass loss, no Wolf-Rayet or LBV
stars, no chemically peculiar (Ap/Bp, He-strong/weak) stars, no pre-main-sequence
Herbig Ae/Be stars, and no age spread within clusters.
"""

from __future__ import annotations

import numpy as np

from obpipe.simulate import sed
from obpipe.simulate.options import SimulationConfig

LOGG_SUN = 4.438
TEFF_SUN_K = 5772.0
STAR_CLASSES = ("OB", "interloper", "subdwarf", "white_dwarf")

# Tout et al. (1996) ZAMS coefficients at Z = 0.02 (the Z-independent terms, since
# log10(Z/0.02) = 0): L(M) = (a M^5.5 + b M^11) / (c + M^3 + d M^5 + e M^7 + f M^8 + g M^9.5)
_TOUT_L = (0.39704170, 8.52762600, 0.00025546, 5.43288900, 5.56357900, 0.78866060, 0.00586685)
# R(M) = (t M^2.5 + i M^6.5 + k M^11 + l M^19 + m M^19.5) /
#        (n + x M^2 + o M^8.5 + M^18.5 + p M^19.5)
_TOUT_R = (
    1.71535900, 6.59778800, 10.08855000, 1.01249500, 0.07490166,
    0.01077422, 3.08223400, 17.84778000, 0.00022582,
)


def zams_luminosity_lsun(mass_msun: np.ndarray) -> np.ndarray:
    """ZAMS luminosity (Lsun) of Tout et al. (1996), Z = 0.02."""
    m = np.asarray(mass_msun, dtype=float)
    a, b, c, d, e, f, g = _TOUT_L
    return (a * m**5.5 + b * m**11) / (c + m**3 + d * m**5 + e * m**7 + f * m**8 + g * m**9.5)


def zams_radius_rsun(mass_msun: np.ndarray) -> np.ndarray:
    """ZAMS radius (Rsun) of Tout et al. (1996), Z = 0.02."""
    m = np.asarray(mass_msun, dtype=float)
    t, i, k, l_, mu, n, x, o, p = _TOUT_R
    num = t * m**2.5 + i * m**6.5 + k * m**11 + l_ * m**19 + mu * m**19.5
    den = n + x * m**2 + o * m**8.5 + m**18.5 + p * m**19.5
    return num / den


def main_sequence_lifetime_myr(mass_msun: np.ndarray) -> np.ndarray:
    """Approximate main-sequence lifetime, 1e4 Myr (M/Msun)^-2.5 (floored at 3 Myr)."""
    return np.maximum(1.0e4 * np.asarray(mass_msun, dtype=float) ** -2.5, 3.0)


def track_log_l_r(
    mass_msun: np.ndarray,
    tau: np.ndarray,
    *,
    min_teff_k: float | None = None,
    min_logg: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """log10 L (Lsun) and log10 R (Rsun) at fractional age ``tau`` = t / t_MS.

    0 <= tau <= 1 is the main sequence; 1 < tau <= 1.25 the post-main-sequence
    crossing (R grows by up to 1 dex at +0.1 dex in L). With ``min_teff_k`` and/or
    ``min_logg`` the crossing of each star ends where it would become cooler than
    ``min_teff_k`` or reach a lower gravity than ``min_logg`` (its radius growth is
    capped there and ``tau`` spreads stars uniformly over what is left): the mock
    survey's OB selection, like a spectral-type selection of real OB stars, sees
    blue giants and supergiants but not the yellow and red ones they become.
    """
    m = np.asarray(mass_msun, dtype=float)
    tau = np.asarray(tau, dtype=float)
    log_m = np.log10(m)
    log_l0 = np.log10(zams_luminosity_lsun(m))
    log_r0 = np.log10(zams_radius_rsun(m))
    d_l = 0.25 + 0.12 * log_m
    d_r = 0.33 + 0.12 * log_m
    t_ms = np.clip(tau, 0.0, 1.0)
    log_l = log_l0 + d_l * t_ms
    log_r = log_r0 + d_r * t_ms**1.5
    x = np.clip((tau - 1.0) / 0.25, 0.0, 1.0)
    # the most the radius can grow past the terminal-age main sequence (dex)
    growth = np.ones_like(log_r)
    log_l_tams, log_r_tams = log_l0 + d_l, log_r0 + d_r
    if min_teff_k is not None:
        # Teff ∝ (L / R^2)^(1/4): the radius alone would take log Teff down to
        # log min_teff_k; the +0.1 dex in L keeps the star a little hotter than that
        log_teff_tams = np.log10(teff_from_l_r(log_l_tams, log_r_tams))
        growth = np.minimum(growth, 2.0 * (log_teff_tams - np.log10(min_teff_k)))
    if min_logg is not None:
        growth = np.minimum(growth, 0.5 * (logg_from_m_r(m, log_r_tams) - min_logg))
    growth = np.clip(growth, 0.0, 1.0)
    return log_l + 0.1 * x, log_r + growth * x


def teff_from_l_r(log_l: np.ndarray, log_r: np.ndarray) -> np.ndarray:
    """Effective temperature (K) from Stefan-Boltzmann, L = 4 pi R^2 sigma Teff^4 (eq. 3)."""
    return TEFF_SUN_K * 10.0 ** (0.25 * (np.asarray(log_l) - 2.0 * np.asarray(log_r)))


def logg_from_m_r(mass_msun: np.ndarray, log_r: np.ndarray) -> np.ndarray:
    """Surface gravity log10(g / cm s^-2) from g = G M / R^2 (eq. 4)."""
    return LOGG_SUN + np.log10(np.asarray(mass_msun, dtype=float)) - 2.0 * np.asarray(log_r)


def log_l_from_m_teff_logg(
    mass_msun: np.ndarray, teff_k: np.ndarray, logg: np.ndarray
) -> np.ndarray:
    """log10 L/Lsun = log M + 4 log(Teff/Teff_sun) - (log g - log g_sun)  (eq. 5)."""
    return (
        np.log10(np.asarray(mass_msun, dtype=float))
        + 4.0 * np.log10(np.asarray(teff_k, dtype=float) / TEFF_SUN_K)
        - (np.asarray(logg, dtype=float) - LOGG_SUN)
    )


def sample_power_law(
    rng: np.random.Generator, n: int, slope: float, lo: float, hi: float
) -> np.ndarray:
    """Draw ``n`` values from dN/dx ~ x^-slope on [lo, hi] (inverse CDF)."""
    u = rng.random(n)
    if np.isclose(slope, 1.0):
        return lo * (hi / lo) ** u
    a = 1.0 - slope
    return (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)


def mks_of(teff_k: np.ndarray, logg: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    """Ks absolute magnitude from L and Teff (the mock's SED, ``sed.absolute_magnitudes``;
    ``logg`` is accepted for symmetry: the dwarf colour sequence has no gravity term)."""
    return sed.absolute_magnitudes(teff_k, log_l)["Ks"]


#: Sana et al. (2012) O-star period distribution: f(log P) ~ (log P)^SANA_PI_EXPONENT
SANA_PI_EXPONENT = -0.55
SANA_LOG_P_RANGE_DAYS = (0.15, 3.5)
#: (2 pi G Msun / 1 day)^(1/3) in km/s: circular relative orbital velocity scale
KEPLER_VELOCITY_KMS = 212.8


def sample_log_period_days(rng: np.random.Generator, n: int) -> np.ndarray:
    """log10 P (days) from Sana et al. (2012): f(log P) ~ (log P)^-0.55 on 0.15-3.5."""
    lo, hi = SANA_LOG_P_RANGE_DAYS
    a = 1.0 + SANA_PI_EXPONENT
    u = rng.random(n)
    return (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)


def draw_supergiants(
    rng: np.random.Generator, n: int, cfg: SimulationConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mass Msun, Teff K, log g) of ``n`` B/A supergiants and bright giants: log g
    uniform in 1.5-3, Teff log-uniform in 10-30 kK, mass from eq. 5 with the luminosity
    at the end of the post-main-sequence crossing (see the module docstring)."""
    m_grid = np.geomspace(max(cfg.min_mass_msun, 3.0), cfg.max_mass_msun, 400)
    log_l_end, _ = track_log_l_r(m_grid, np.full(m_grid.size, 1.25))
    l_over_m = log_l_end - np.log10(m_grid)  # increasing with mass
    mass, teff, logg = np.empty(n), np.empty(n), np.empty(n)
    todo = np.arange(n)
    for _ in range(100):
        if todo.size == 0:
            break
        g = rng.uniform(1.5, 3.0, todo.size)
        t = 10.0 ** rng.uniform(4.0, np.log10(30000.0), todo.size)
        target = 4.0 * np.log10(t / TEFF_SUN_K) - (g - LOGG_SUN)
        ok = (target >= l_over_m[0]) & (target <= l_over_m[-1])
        idx = todo[ok]
        mass[idx] = np.interp(target[ok], l_over_m, m_grid)
        teff[idx], logg[idx] = t[ok], g[ok]
        todo = todo[~ok]
    if todo.size:  # extreme options only: the most massive star at the lowest L/M
        mass[todo], teff[todo], logg[todo] = cfg.max_mass_msun, 30000.0, 3.0
    return mass, teff, logg


def system_magnitude(m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
    """Magnitude of two unresolved components (flux sum); NaN companions are ignored."""
    f = 10.0 ** (-0.4 * np.asarray(m1, dtype=float))
    f2 = np.where(np.isfinite(m2), 10.0 ** (-0.4 * np.nan_to_num(m2, nan=99.0)), 0.0)
    return -2.5 * np.log10(f + f2)


def sample_population(cfg: SimulationConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw the intrinsic properties of ``cfg.n_stars`` stars (systems).

    Returns a dict of arrays (one entry per star) with class, mass, Teff, log g,
    [Fe/H], L, v sin i, M_Ks of primary, secondary and system, binarity, emission.
    Fractions: ``interloper_fraction``, ``subdwarf_fraction`` and
    ``white_dwarf_fraction`` of all stars; ``evolved_fraction`` of OB stars;
    ``binary_fraction`` of OB stars and interlopers; ``emission_fraction`` of all
    stars, assigned to OB stars only (Be discs, H II regions and supergiant winds).
    """
    n = cfg.n_stars
    p_cls = np.array(
        [
            1.0 - cfg.interloper_fraction - cfg.subdwarf_fraction - cfg.white_dwarf_fraction,
            cfg.interloper_fraction,
            cfg.subdwarf_fraction,
            cfg.white_dwarf_fraction,
        ]
    )
    cls_idx = rng.choice(4, size=n, p=p_cls)
    star_class = np.asarray(STAR_CLASSES, dtype=object)[cls_idx]
    is_ob = cls_idx == 0
    is_int = cls_idx == 1
    is_sd = cls_idx == 2
    is_wd = cls_idx == 3

    mass = np.empty(n)
    mass[is_ob] = sample_power_law(
        rng, int(is_ob.sum()), cfg.mass_function_slope, cfg.min_mass_msun, cfg.max_mass_msun
    )
    mass[is_int] = rng.uniform(1.6, 2.6, int(is_int.sum()))
    mass[is_sd] = rng.normal(0.47, 0.03, int(is_sd.sum()))
    mass[is_wd] = rng.normal(0.62, 0.08, int(is_wd.sum())).clip(0.45, 1.1)

    # fractional age: uniform on the main sequence; evolved OB stars past it
    tau = rng.uniform(0.0, 1.0, n)
    is_evolved = is_ob & (rng.random(n) < cfg.evolved_fraction)
    tau[is_evolved] = rng.uniform(1.0, 1.25, int(is_evolved.sum()))

    log_l_track, log_r = track_log_l_r(
        mass, tau, min_teff_k=cfg.evolved_min_teff_k, min_logg=cfg.evolved_min_logg
    )
    teff = teff_from_l_r(log_l_track, log_r)
    logg = logg_from_m_r(mass, log_r)
    # B/A supergiants and bright giants (log g 1.5-3), drawn in (Teff, log g)
    is_sg = is_ob & ~is_evolved & (rng.random(n) < cfg.supergiant_fraction)
    mass[is_sg], teff[is_sg], logg[is_sg] = draw_supergiants(rng, int(is_sg.sum()), cfg)
    tau[is_sg] = 1.25
    # compact hot stars: parameters drawn directly
    teff[is_sd] = rng.uniform(24_000.0, 40_000.0, int(is_sd.sum()))
    logg[is_sd] = rng.uniform(5.2, 6.0, int(is_sd.sum()))
    teff[is_wd] = rng.uniform(10_000.0, 40_000.0, int(is_wd.sum()))
    logg[is_wd] = rng.normal(8.0, 0.15, int(is_wd.sum()))

    # cosmic scatter: the mass at fixed (Teff, log g) scatters; L follows eq. 5.
    cosmic = rng.normal(0.0, cfg.cosmic_log_mass_scatter_dex, n)
    cosmic[is_sd | is_wd] = 0.0
    mass_true = mass * 10.0**cosmic
    log_l = log_l_from_m_teff_logg(mass_true, teff, logg)

    feh = rng.normal(cfg.feh_mean, cfg.feh_scatter, n)

    # rotation: equatorial velocity x sin(i), isotropic inclinations
    sin_i = np.sqrt(1.0 - rng.random(n) ** 2)
    v_eq = np.abs(rng.normal(170.0, 90.0, n))
    v_eq[is_int] = np.abs(rng.normal(120.0, 70.0, int(is_int.sum())))
    v_eq[is_sd | is_wd] = rng.uniform(0.0, 15.0, int((is_sd | is_wd).sum()))

    # emission (OB only); Be stars rotate fast
    # supergiant winds fill in H-alpha: emission-line stars too, counted in
    # emission_fraction (the Be discs and H II regions make up the rest)
    wind = is_sg & (logg < 2.6) & (teff > 12000.0)
    free = is_ob & ~is_sg
    p_em = float(np.clip((cfg.emission_fraction * n - wind.sum()) / max(free.sum(), 1), 0, 1))
    has_emission = free & (rng.random(n) < p_em)
    nebular = has_emission & (rng.random(n) < cfg.nebular_share)
    be_disc = has_emission & ~nebular
    v_eq[be_disc] = rng.uniform(250.0, 420.0, int(be_disc.sum()))
    vsini = np.clip(v_eq * sin_i, 0.0, 480.0)
    emission_type = np.full(n, "none", dtype=object)
    emission_type[be_disc] = "be_disc"
    emission_type[nebular] = "nebular"
    halpha_ew = np.zeros(n)
    halpha_ew[be_disc] = -(10.0 ** rng.uniform(np.log10(3.0), np.log10(50.0), int(be_disc.sum())))
    halpha_ew[nebular] = -(10.0 ** rng.uniform(np.log10(1.5), np.log10(40.0), int(nebular.sum())))
    # the wind's H-alpha emission component (EW, AA)
    emission_type[wind] = "wind"
    halpha_ew[wind] = -(10.0 ** rng.uniform(np.log10(0.5), np.log10(5.0), int(wind.sum())))
    has_emission |= wind
    # disc free-free emission brightens the near-infrared (why the paper avoids Ks for E(B-V))
    disc_ks_excess = np.zeros(n)
    disc_ks_excess[be_disc] = -rng.uniform(0.0, 0.5, int(be_disc.sum())) * np.clip(
        -halpha_ew[be_disc] / 30.0, 0.0, 1.5
    )

    # unresolved binaries: coeval companions, q uniform in [min_q, 1]
    is_binary = (is_ob | is_int) & (rng.random(n) < cfg.binary_fraction)
    q = np.zeros(n)
    q[is_binary] = rng.uniform(cfg.min_mass_ratio, 1.0, int(is_binary.sum()))
    m2 = np.where(is_binary, np.maximum(mass * q, 0.1), np.nan)
    tau2 = tau * (m2 / mass) ** 2.5  # same age, longer lifetime
    log_l2_track, log_r2 = track_log_l_r(
        np.nan_to_num(m2, nan=1.0), np.nan_to_num(tau2),
        min_teff_k=cfg.evolved_min_teff_k, min_logg=cfg.evolved_min_logg,
    )
    teff2 = teff_from_l_r(log_l2_track, log_r2)
    logg2 = logg_from_m_r(np.nan_to_num(m2, nan=1.0), log_r2)
    log_l2 = log_l_from_m_teff_logg(np.nan_to_num(m2, nan=1.0) * 10.0**cosmic, teff2, logg2)
    # equal-mass twins are identical stars
    twin = is_binary & (q >= 1.0)
    teff2[twin], logg2[twin], log_l2[twin] = teff[twin], logg[twin], log_l[twin]
    vsini2 = np.clip(np.abs(rng.normal(150.0, 90.0, n)) * sin_i, 0.0, 480.0)
    # circular orbits: Sana et al. (2012) periods, isotropic inclinations; K of the
    # relative orbit (km/s) and the orbital phase at MJD 0
    log_p = np.where(is_binary, sample_log_period_days(rng, n), np.nan)
    sin_inc = np.sqrt(1.0 - rng.random(n) ** 2)
    m_tot = mass + np.nan_to_num(m2)
    k_rel = np.where(is_binary, KEPLER_VELOCITY_KMS * (m_tot / 10.0 ** np.nan_to_num(log_p))
                     ** (1.0 / 3.0) * sin_inc, 0.0)
    phase0 = rng.random(n)
    # intrinsic colours scatter from star to star around Mamajek's sequence: every band
    # but Ks (which carries M_Ks) gets an offset of scatter / sqrt(2) mag
    colour_offsets = {b: (rng.normal(0.0, cfg.intrinsic_colour_scatter_mag / np.sqrt(2.0), n)
                          if b != "Ks" else np.zeros(n)) for b in sed.BANDS}

    mks1 = mks_of(teff, logg, log_l)
    mks2 = np.where(is_binary, mks_of(teff2, logg2, log_l2), np.nan)
    mks_sys = system_magnitude(mks1, mks2)

    return {
        "star_class": star_class,
        "is_evolved": is_evolved,
        "mass_msun": mass_true,
        "tau": tau,
        "teff": teff,
        "logg": logg,
        "feh": feh,
        "log_lum": log_l,
        "vsini": vsini,
        "MKs": mks1,
        "MKs_system": mks_sys,
        "is_binary": is_binary,
        "mass_ratio": q,
        "teff2": np.where(is_binary, teff2, np.nan),
        "logg2": np.where(is_binary, logg2, np.nan),
        "log_lum2": np.where(is_binary, log_l2, np.nan),
        "vsini2": vsini2,
        "MKs2": mks2,
        "k_rel_kms": k_rel,
        "orbital_period_days": 10.0**log_p,
        "orbital_phase0": phase0,
        "is_supergiant": is_sg,
        "colour_offsets": colour_offsets,
        "has_emission": has_emission,
        "emission_type": emission_type,
        "halpha_ew": halpha_ew,
        "disc_ks_excess": disc_ks_excess,
    }
