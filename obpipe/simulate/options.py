"""Options of the mock survey (``obpipe simulate``; :mod:`obpipe.simulate`)."""

from __future__ import annotations

from dataclasses import dataclass

from obpipe.options import check_ranges, option


@dataclass(frozen=True)
class SimulationConfig:
    """Options of the mock LAMOST OB survey (``obpipe simulate``).

    Defaults reproduce the size of the paper's sample (16,002 stars, 27,784
    LAMOST DR5 spectra, i.e. 1.736 visits per star) and population fractions
    typical of a LAMOST hot-star selection (see ``obpipe.simulate`` docs).
    """

    n_stars: int = option(
        16002,
        doc="stars in the mock survey (the paper's 16,002 OB stars); each has 1 or more visits.")
    seed: int = option(
        42,
        doc="seed of the random draws: the same seed and options give the same survey, bit for bit,"
            " on any scheduler or chunking.")
    mean_visits: float = option(
        27784 / 16002,
        doc="mean number of spectra (visits) per star; 27,784 / 16,002 in the paper.")
    chunk_size: int = option(
        2000,
        doc="spectra per chunk of the cube (whole wavelength rows per chunk).")

    # --- population fractions (of stars) ---
    interloper_fraction: float = option(
        0.10,
        doc="late-B / A-type interlopers (Teff 7.5-11 kK) that enter a hot-star selection.")
    subdwarf_fraction: float = option(0.02, doc="hot subdwarfs (sdB/sdO, log g 5-6).")
    white_dwarf_fraction: float = option(0.01, doc="DA white dwarfs (log g ~8).")
    evolved_fraction: float = option(
        0.08,
        doc="fraction of OB stars observed past the main sequence (giants, supergiants).")
    evolved_min_teff_k: float = option(
        10_000.0,
        doc="an evolved OB star's crossing ends where it would become cooler than this (K) or "
            "reach a lower log g than ``evolved_min_logg``: the OB selection (DESIGN.md: Teff ~ "
            "10-45 kK, log g ~ 3-4.5) sees blue, not yellow or red, supergiants.")
    evolved_min_logg: float = option(
        3.0,
        doc="lowest log g (cgs) an evolved OB star reaches on its crossing (see "
            "``evolved_min_teff_k``); the log g < 3 stars come from ``supergiant_fraction``.")
    binary_fraction: float = option(
        0.30,
        doc="unresolved binaries among OB stars and interlopers (mass ratio q uniform).")
    min_mass_ratio: float = option(
        0.1,
        doc="lowest secondary/primary mass ratio q of a binary; q is uniform in [min_mass_ratio, "
            "1].")
    emission_fraction: float = option(
        0.13,
        doc="emission-line stars (Be discs + nebular lines) among OB stars.")
    nebular_share: float = option(
        0.25,
        doc="share of the emission-line stars whose emission is nebular (H II region).")
    broken_fraction: float = option(
        0.01,
        doc="broken spectra (flux artefacts, bad wavelength calibration), per visit.")

    # --- stellar population ---
    mass_function_slope: float = option(
        2.0,
        doc="slope alpha of the present-day, magnitude-selected mass function dN/dM ~ M^-alpha.")
    min_mass_msun: float = option(
        2.5,
        doc="lower bound (Msun) of the OB stars' mass function (a late-B dwarf).")
    max_mass_msun: float = option(
        40.0,
        doc="upper bound (Msun) of the OB stars' mass function.")
    cosmic_log_mass_scatter_dex: float = option(
        0.08,
        doc="\"cosmic\" luminosity scatter: scatter of log mass at fixed (Teff, log g), dex. Not "
            "visible in the spectrum; it sets the floor of any spectroscopic M_Ks.")
    feh_mean: float = option(
        -0.05,
        doc="mean [Fe/H] (dex) of the stars: a young thin-disk population.")
    feh_scatter: float = option(
        0.15,
        doc="star-to-star scatter of [Fe/H] (dex, Gaussian).")

    # --- sky, dust and photometry ---
    dust_ebv_per_kpc: float = option(
        0.45,
        doc="E(B-V) per kpc in the Galactic mid-plane near the Sun (mag/kpc).")
    dust_scale_height_kpc: float = option(
        0.12,
        doc="scale height (kpc) of the exponential dust layer: E(B-V) to d = k h/|sin b| (1 - "
            "exp(-d |sin b|/h)), k = ``dust_ebv_per_kpc``.")
    dust_clumpiness_dex: float = option(
        0.25,
        doc="lognormal clumpiness of the dust column per sight line (dex).")
    max_ebv: float = option(
        3.5,
        doc="largest E(B-V) (mag) of any sight line: the column is capped there.")
    disk_scale_length_kpc: float = option(
        3.0,
        doc="radial scale length (kpc) of the OB stars' exponential disk.")
    disk_scale_height_kpc: float = option(
        0.06,
        doc="vertical scale height (kpc) of the OB stars' disk.")
    max_distance_kpc: float = option(
        15.0,
        doc="largest heliocentric distance (kpc) a star is drawn at.")
    distance_power: float = option(
        -0.5,
        doc="distances are drawn with p(d) ~ d^distance_power (before the disk density and the "
            "magnitude limits act). 1 is a magnitude-limited thin disk; LAMOST's target "
            "selection samples bright stars far more densely than that (targets spread uniformly"
            " over colour-magnitude diagrams, plus a very-bright r <= 14 survey: Yuan et al. "
            "2015, MNRAS 448, 855, arXiv:1412.6628). -0.5 matches the paper's sample: ~52 % of "
            "its 16,002 stars with Gaia DR2 plx/err > 10 and S/N > 50 (Sec. 5.2: 6,861 training "
            "stars are 4/5 of them, ~200 added) and \"the majority within 3 kpc\" (Sec. 7); with 1"
            " the mock had 21 % and 29 %, with -0.5 it has 50 % and 56 %.")
    sun_galactocentric_x_kpc: float = option(
        -8.1,
        doc="the Sun's Galactocentric X (kpc) used to place the disk.")
    bright_limit_g: float = option(8.0, doc="LAMOST-like magnitude limits on Gaia G.")
    faint_limit_g: float = option(
        17.8,
        doc="faint limit of the survey on Gaia G (mag); ``bright_limit_g`` is the bright one.")
    min_declination_deg: float = option(
        -10.0,
        doc="southernmost declination (deg) LAMOST observes; a star drawn further south is drawn "
            "again.")
    optical_missing_fraction: float = option(
        0.08,
        doc="fraction of stars without each optical (g, r, i) measurement (survey gaps).")
    twomass_missing_fraction: float = option(
        0.01,
        doc="fraction of stars without 2MASS photometry.")

    # --- Gaia ---
    gaia_release: str = option(
        "dr2",
        doc="\"dr2\" (the paper's data) or \"dr3\". Errors, their external inflation and the "
            "injected zero-point follow the release (see ``obpipe.simulate.sky``).")

    # --- the real sky's systematics (issue 15, item 3): each on by default, each with its
    # latent value in the ``truth`` group; injected by the mock's own code, never by the
    # functions the pipeline uses to remove them ---
    parallax_external_errors: bool = option(
        True,
        doc="quoted parallax errors underestimate the true scatter by the release's published "
            "external-error relation (DR2: Lindegren et al. 2018; DR3: Maiz Apellaniz 2022); truth"
            " ``parallax_error_true`` (mas). False: quoted errors are the true scatter.")
    parallax_zp_variations: bool = option(
        True,
        doc="the injected zero-point varies with G, colour and sky position (truth "
            "``parallax_zp_true``, mas). False: a constant -0.0523 mas (DR2) or the Lindegren et "
            "al. (2021) recipe alone (DR3), i.e. exactly what the pipeline removes.")
    extinction_law: str = option(
        "F19",
        doc="extinction-curve family of the mock (a ``dust_extinction.parameter_averages`` class: "
            "G23, F99, F19, CCM89, O94); F19 = Fitzpatrick et al. (2019, ApJ 886, 108) by default,"
            " a family other than the pipeline's G23 (issue 20: a mock must not redden with the "
            "curve the pipeline de-reddens with).")
    rv_mean: float = option(
        3.1,
        doc="R_V per star ~ N(rv_mean, rv_scatter), clipped to 2.3-4.6 (truth ``R_V_true``).")
    rv_scatter: float = option(
        0.25,
        doc="star-to-star scatter of R_V (see ``rv_mean``).")
    intrinsic_colour_scatter_mag: float = option(
        0.02,
        doc="star-to-star scatter (mag) of each intrinsic colour around Mamajek's sequence.")
    ivar_scale_median: float = option(
        1.05,
        doc="true / quoted noise per exposure ~ lognormal(median, sigma_ln), clipped to 0.8-1.3 "
            "(truth ``ivar_scale_true``); sigma_ln = 0 and median = 1: the ivar is right.")
    ivar_scale_sigma_ln: float = option(
        0.1,
        doc="lognormal width (natural log) of the true / quoted noise ratio (see "
            "``ivar_scale_median``).")
    noise_neighbour_correlation: float = option(
        0.25,
        doc="correlation coefficient of the noise of neighbouring pixels (resampling); 0: white.")
    spectra_per_plate: int = option(
        250,
        doc="spectra per plate and rms of the per-plate RV zero-point (km/s; truth "
            "``plate_rv_offset_true``); 0: no plate offsets.")
    plate_rv_offset_kms: float = option(
        3.0,
        doc="rms (km/s) of the per-plate radial-velocity zero-point (see ``spectra_per_plate``).")
    supergiant_fraction: float = option(
        0.04,
        doc="B/A supergiants and bright giants (log g 1.5-3, Teff 10-30 kK), fraction of OB stars;"
            " the hotter, lower-gravity ones carry wind emission in H-alpha.")
    ism_absorption: bool = option(
        True,
        doc="interstellar absorption lines (DIBs, Na D, Ca II K, growing with E(B-V)) in the "
            "spectra; False is a diagnostic mock for validate's ``ism_shortcut`` (do the networks "
            "read distance from them?), not a realistic one.")

    # --- spectra ---
    resolving_power: float = option(
        1800.0,
        doc="spectral resolving power R = lambda / FWHM of the mock spectra (LAMOST low "
            "resolution).")
    snr_at_g14: float = option(
        110.0,
        doc="S/N (per pixel, g band) at G = 14 for median conditions.")
    snr_max: float = option(
        1000.0,
        doc="largest S/N (per pixel, g band) of a visit: S/N is clipped here.")
    snr_min: float = option(
        4.0,
        doc="smallest S/N (per pixel, g band) of a visit: S/N is clipped here.")
    snr_conditions_dex: float = option(
        0.2,
        doc="lognormal scatter of S/N from observing conditions, per visit (dex).")
    rv_dispersion_kms: float = option(
        20.0,
        doc="turbulence of line-of-sight radial velocities of single stars (km/s).")
    rv_error_at_snr50_kms: float = option(
        8.0,
        doc="quoted radial-velocity error (km/s) at S/N 50; it scales as 50/S/N (clipped to 1.5-60 "
            "km/s) and grows with v sin i.")

    def validate(self) -> None:
        """Raise ``ValueError`` with a one-line reason for impossible options."""
        check_ranges(self)  # finite, and within the OPTION_RANGES of those listed there
        if self.n_stars <= 0:
            raise ValueError(f"n_stars must be positive, got {self.n_stars}")
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")
        if self.mean_visits < 1.0:
            raise ValueError(f"mean_visits must be >= 1, got {self.mean_visits}")
        fractions = {
            "interloper_fraction": self.interloper_fraction,
            "subdwarf_fraction": self.subdwarf_fraction,
            "white_dwarf_fraction": self.white_dwarf_fraction,
            "evolved_fraction": self.evolved_fraction,
            "binary_fraction": self.binary_fraction,
            "emission_fraction": self.emission_fraction,
            "nebular_share": self.nebular_share,
            "broken_fraction": self.broken_fraction,
            "optical_missing_fraction": self.optical_missing_fraction,
            "twomass_missing_fraction": self.twomass_missing_fraction,
        }
        for name, value in fractions.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if self.interloper_fraction + self.subdwarf_fraction + self.white_dwarf_fraction >= 1:
            raise ValueError("interloper + subdwarf + white dwarf fractions must sum below 1")
        if not 0 < self.min_mass_ratio <= 1:
            raise ValueError(f"min_mass_ratio must be in (0, 1], got {self.min_mass_ratio}")
        if self.extinction_law not in ("G23", "F99", "F19", "CCM89", "O94"):
            raise ValueError(f"extinction_law must be G23, F99, F19, CCM89 or O94, got "
                             f"{self.extinction_law!r}")
        if not 2.3 <= self.rv_mean <= 4.6 or self.rv_scatter < 0:
            raise ValueError(f"rv_mean must be within [2.3, 4.6] and rv_scatter >= 0, got "
                             f"{self.rv_mean}, {self.rv_scatter}")
        if not 0.8 <= self.ivar_scale_median <= 1.3 or self.ivar_scale_sigma_ln < 0:
            raise ValueError("ivar_scale_median must be within [0.8, 1.3] and "
                             "ivar_scale_sigma_ln >= 0")
        if not 0.0 <= self.noise_neighbour_correlation < 0.5:
            raise ValueError(f"noise_neighbour_correlation must be within [0, 0.5), got "
                             f"{self.noise_neighbour_correlation}")
        if self.spectra_per_plate <= 0 or self.plate_rv_offset_kms < 0:
            raise ValueError("spectra_per_plate must be positive, plate_rv_offset_kms >= 0")
        if not 0.0 <= self.supergiant_fraction <= 0.5:
            raise ValueError(f"supergiant_fraction must be within [0, 0.5], got "
                             f"{self.supergiant_fraction}")
        if self.gaia_release not in ("dr2", "dr3"):
            raise ValueError(f"gaia_release must be 'dr2' or 'dr3', got {self.gaia_release!r}")
        if self.min_mass_msun >= self.max_mass_msun:
            raise ValueError("min_mass_msun must be below max_mass_msun")

    @property
    def expected_n_spectra(self) -> int:
        return int(round(self.n_stars * self.mean_visits))
