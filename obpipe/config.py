"""Typed configuration: the one place where obpipe's tunable numbers live.

Every option has a documented default. Configuration objects are frozen
dataclasses, serialisable to plain dicts (stored as provenance in the root
attributes of every product).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily at run time (see PipelineConfig)
    from obpipe.luminosity.training import TrainingConfig
    from obpipe.spectra.stages import SpectralConfig

# LAMOST low-resolution grid (DESIGN.md, "The cube"): log10(lambda/AA) = 3.5682 + 1e-4 i.
LAMOST_LOG10_WAVE_START = 3.5682
LAMOST_LOG10_WAVE_STEP = 1.0e-4
LAMOST_N_PIXELS = 3909


@dataclass(frozen=True)
class GridConfig:
    """The common wavelength grid (vacuum, rest frame)."""

    log10_start: float = LAMOST_LOG10_WAVE_START
    log10_step: float = LAMOST_LOG10_WAVE_STEP
    n_pixels: int = LAMOST_N_PIXELS


@dataclass(frozen=True)
class SimulationConfig:
    """Options of the mock LAMOST OB survey (``obpipe simulate``).

    Defaults reproduce the size of the paper's sample (16,002 stars, 27,784
    LAMOST DR5 spectra, i.e. 1.736 visits per star) and population fractions
    typical of a LAMOST hot-star selection (see ``obpipe.simulate`` docs).
    """

    n_stars: int = 16002
    seed: int = 42
    #: mean number of spectra (visits) per star; 27,784 / 16,002 in the paper.
    mean_visits: float = 27784 / 16002
    #: spectra per chunk of the cube (whole wavelength rows per chunk).
    chunk_size: int = 2000

    # --- population fractions (of stars) ---
    #: late-B / A-type interlopers (Teff 7.5-11 kK) that enter a hot-star selection.
    interloper_fraction: float = 0.10
    #: hot subdwarfs (sdB/sdO, log g 5-6).
    subdwarf_fraction: float = 0.02
    #: DA white dwarfs (log g ~8).
    white_dwarf_fraction: float = 0.01
    #: fraction of OB stars observed past the main sequence (giants, supergiants).
    evolved_fraction: float = 0.08
    #: an evolved OB star's crossing ends where it would become cooler than this (K) or
    #: reach a lower log g than ``evolved_min_logg``: the OB selection (DESIGN.md:
    #: Teff ~ 10-45 kK, log g ~ 3-4.5) sees blue, not yellow or red, supergiants.
    evolved_min_teff_k: float = 10_000.0
    evolved_min_logg: float = 3.0
    #: unresolved binaries among OB stars and interlopers (mass ratio q uniform).
    binary_fraction: float = 0.30
    min_mass_ratio: float = 0.1
    #: emission-line stars (Be discs + nebular lines) among OB stars.
    emission_fraction: float = 0.13
    #: share of the emission-line stars whose emission is nebular (H II region).
    nebular_share: float = 0.25
    #: broken spectra (flux artefacts, bad wavelength calibration), per visit.
    broken_fraction: float = 0.01

    # --- stellar population ---
    #: slope alpha of the present-day, magnitude-selected mass function dN/dM ~ M^-alpha.
    mass_function_slope: float = 2.0
    min_mass_msun: float = 2.5
    max_mass_msun: float = 40.0
    #: "cosmic" luminosity scatter: scatter of log mass at fixed (Teff, log g), dex.
    #: Not visible in the spectrum; it sets the floor of any spectroscopic M_Ks.
    cosmic_log_mass_scatter_dex: float = 0.08
    feh_mean: float = -0.05
    feh_scatter: float = 0.15

    # --- sky, dust and photometry ---
    #: E(B-V) per kpc in the Galactic mid-plane near the Sun (mag/kpc).
    dust_ebv_per_kpc: float = 0.45
    dust_scale_height_kpc: float = 0.12
    #: lognormal clumpiness of the dust column per sight line (dex).
    dust_clumpiness_dex: float = 0.25
    max_ebv: float = 3.5
    disk_scale_length_kpc: float = 3.0
    disk_scale_height_kpc: float = 0.06
    max_distance_kpc: float = 15.0
    #: distances are drawn with p(d) ~ d^distance_power (before the disk density and the
    #: magnitude limits act). 1 is a magnitude-limited thin disk; LAMOST's target selection
    #: samples bright stars far more densely than that (targets spread uniformly over
    #: colour-magnitude diagrams, plus a very-bright r <= 14 survey: Yuan et al. 2015,
    #: MNRAS 448, 855, arXiv:1412.6628). -0.5 matches the paper's sample: ~52 % of its
    #: 16,002 stars with Gaia DR2 plx/err > 10 and S/N > 50 (Sec. 5.2: 6,861 training
    #: stars are 4/5 of them, ~200 added) and "the majority within 3 kpc" (Sec. 7); with
    #: 1 the mock had 21 % and 29 %, with -0.5 it has 50 % and 56 %.
    distance_power: float = -0.5
    sun_galactocentric_x_kpc: float = -8.1
    #: LAMOST-like magnitude limits on Gaia G.
    bright_limit_g: float = 8.0
    faint_limit_g: float = 17.8
    min_declination_deg: float = -10.0
    #: fraction of stars without each optical (g, r, i) measurement (survey gaps).
    optical_missing_fraction: float = 0.08
    #: fraction of stars without 2MASS photometry.
    twomass_missing_fraction: float = 0.01

    # --- Gaia ---
    #: "dr2" (the paper's data) or "dr3". Errors, their external inflation and the
    #: injected zero-point follow the release (see ``obpipe.simulate.sky``).
    gaia_release: str = "dr2"

    # --- the real sky's systematics (issue 15, item 3): each on by default, each with its
    # latent value in the ``truth`` group; injected by the mock's own code, never by the
    # functions the pipeline uses to remove them ---
    #: quoted parallax errors underestimate the true scatter by the release's published
    #: external-error relation (DR2: Lindegren et al. 2018; DR3: Maiz Apellaniz 2022);
    #: truth ``parallax_error_true`` (mas). False: quoted errors are the true scatter.
    parallax_external_errors: bool = True
    #: the injected zero-point varies with G, colour and sky position (truth
    #: ``parallax_zp_true``, mas). False: a constant -0.0523 mas (DR2) or the Lindegren et
    #: al. (2021) recipe alone (DR3), i.e. exactly what the pipeline removes.
    parallax_zp_variations: bool = True
    #: extinction-curve family of the mock (a ``dust_extinction.parameter_averages`` class:
    #: G23, F99, F19, CCM89, O94); F19 = Fitzpatrick et al. (2019, ApJ 886, 108) by default,
    #: a family other than the pipeline's G23 (issue 20: a mock must not redden with the
    #: curve the pipeline de-reddens with).
    extinction_law: str = "F19"
    #: R_V per star ~ N(rv_mean, rv_scatter), clipped to 2.3-4.6 (truth ``R_V_true``).
    rv_mean: float = 3.1
    rv_scatter: float = 0.25
    #: star-to-star scatter (mag) of each intrinsic colour around Mamajek's sequence.
    intrinsic_colour_scatter_mag: float = 0.02
    #: true / quoted noise per exposure ~ lognormal(median, sigma_ln), clipped to 0.8-1.3
    #: (truth ``ivar_scale_true``); sigma_ln = 0 and median = 1: the ivar is right.
    ivar_scale_median: float = 1.05
    ivar_scale_sigma_ln: float = 0.1
    #: correlation coefficient of the noise of neighbouring pixels (resampling); 0: white.
    noise_neighbour_correlation: float = 0.25
    #: spectra per plate and rms of the per-plate RV zero-point (km/s; truth
    #: ``plate_rv_offset_true``); 0: no plate offsets.
    spectra_per_plate: int = 250
    plate_rv_offset_kms: float = 3.0
    #: B/A supergiants and bright giants (log g 1.5-3, Teff 10-30 kK), fraction of OB stars;
    #: the hotter, lower-gravity ones carry wind emission in H-alpha.
    supergiant_fraction: float = 0.04
    #: interstellar absorption lines (DIBs, Na D, Ca II K, growing with E(B-V)) in the
    #: spectra; False is a diagnostic mock for validate's ``ism_shortcut`` (do the
    #: networks read distance from them?), not a realistic one.
    ism_absorption: bool = True

    # --- spectra ---
    resolving_power: float = 1800.0
    #: S/N (per pixel, g band) at G = 14 for median conditions.
    snr_at_g14: float = 110.0
    snr_max: float = 1000.0
    snr_min: float = 4.0
    #: lognormal scatter of S/N from observing conditions, per visit (dex).
    snr_conditions_dex: float = 0.2
    #: turbulence of line-of-sight radial velocities of single stars (km/s).
    rv_dispersion_kms: float = 20.0
    rv_error_at_snr50_kms: float = 8.0

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


#: Local Dask schedulers by name; "local-cluster" starts a ``distributed.LocalCluster``.
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
LOCAL_CLUSTER = "local-cluster"


def is_scheduler_address(text: str) -> bool:
    """True for the address of a running Dask scheduler (``tcp://host:8786``, ``host:8786``)."""
    return "://" in text or bool(re.fullmatch(r"[\w.\-\[\]:]+:\d+", text))


@dataclass(frozen=True)
class RunConfig:
    """Options of ``obpipe run`` that are not science: where and how the stages run."""

    #: Dask scheduler: "threads", "processes" or "synchronous" (local), "local-cluster"
    #: (a distributed.LocalCluster on 127.0.0.1 for the duration of the run) or the
    #: address of a running scheduler, e.g. "tcp://10.0.0.5:8786"; the command line's
    #: --scheduler / --address take precedence
    scheduler: str = "threads"
    #: stages to run, a subset of the registered ones (empty: all), always in run order
    stages: tuple[str, ...] = ()
    #: rerun stages whose products are complete (default: skip them, i.e. resume)
    force: bool = False
    #: worker processes of "local-cluster" (0: Dask's choice from the number of cores)
    local_cluster_workers: int = 0
    #: threads per worker process of "local-cluster"
    threads_per_worker: int = 1
    #: seconds to wait for the scheduler at an address to answer before giving up
    connect_timeout_s: float = 30.0
    #: progress bars on a terminal (never when stderr is not a TTY; --quiet turns them off)
    progress: bool = True

    def __post_init__(self) -> None:
        known = (*LOCAL_SCHEDULERS, LOCAL_CLUSTER)
        if self.scheduler not in known and not is_scheduler_address(self.scheduler):
            raise ValueError(f"scheduler must be one of {', '.join(known)} or a scheduler "
                             f"address such as tcp://127.0.0.1:8786, got {self.scheduler!r}")
        if self.local_cluster_workers < 0:
            raise ValueError(f"local_cluster_workers must be >= 0, got "
                             f"{self.local_cluster_workers}")
        if self.threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {self.threads_per_worker}")
        if not self.connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {self.connect_timeout_s}")


#: distance priors: the paper's "flat", Bailer-Jones et al. (2018) "edsd", and the
#: Galactic "population" prior fitted to the catalog (obpipe.distance.PopulationPrior)
DISTANCE_PRIORS = ("flat", "edsd", "population")
DISTANCE_POINT_ESTIMATES = ("auto", "mode", "log_mean")


@dataclass(frozen=True)
class DistanceConfig:
    """Options of the distance posterior (Sec. 7, eqs. 18-24; ``obpipe.distance``)."""

    #: grid step of the distance posterior, pc (the paper's 0.1 pc)
    grid_step_pc: float = 0.1
    #: largest distance on the grid, kpc: the edge of the flat prior (the OB disk of
    #: the Milky Way ends ~ 15-20 kpc from the Sun towards the anticentre; 30 kpc
    #: leaves room for halo runaways and for parallax-only posteriors to show that
    #: they are improper)
    d_max_kpc: float = 30.0
    #: distance prior: "flat" (the paper, Sec. 7), "edsd", the exponentially
    #: decreasing space density P(d) ~ d^2 exp(-d / L) of Bailer-Jones et al. (2018), or
    #: "population" (the default: a Galactic OB disc times the survey's selection, fitted
    #: to the survey; obpipe.distance.PopulationPrior; why: docs/validation.md)
    prior: str = "population"
    #: length scale L of the "edsd" prior, kpc
    edsd_length_kpc: float = 1.35
    #: the window keeps every grid point whose log posterior is within this many nats
    #: of the maximum (starting value: a star whose window could hide more than half
    #: the mass of the grid point at a percentile is re-evaluated with 10 more nats,
    #: so results equal the full grid's to the grid step whatever this value)
    window_log_tolerance: float = 15.0
    #: grid points evaluated at once inside one star's window (memory bound per task)
    segment_points: int = 65536
    #: windows wider than this many nodes are evaluated on two levels: exactly at every
    #: (width / coarse_nodes)-th grid point, and at every 0.1 pc point only where the
    #: mode and the percentiles are decided (same answers as the full grid; see
    #: obpipe.distance)
    coarse_nodes: int = 512
    #: spectroscopic M_Ks is ignored (parallax alone) for binary_flag == 1 (Sec. 7)
    parallax_only_binaries: bool = True
    #: exponent w of the "population" prior in the posterior, P(d)^w (1: full Bayes, 0:
    #: flat): 0.2 balances the bias binned by true and by catalogued distance on two
    #: mocks (benchmarks/distance_priors.py; docs/validation.md)
    population_prior_weight: float = 0.2
    #: the catalogue's ``dis``: "mode" (the paper's, Table 1), "log_mean" (exp of the
    #: posterior mean of ln d, i.e. 10^logdis) or "auto": the mode under the flat and
    #: edsd priors, log_mean under the population prior (smaller largest bias over the
    #: distance bins binned by true and by catalogued distance on two mocks:
    #: benchmarks/distance_priors.py, docs/validation.md "Distances: what the data allow")
    point_estimate: str = "auto"

    def __post_init__(self) -> None:
        if self.point_estimate not in DISTANCE_POINT_ESTIMATES:
            raise ValueError(f"point_estimate must be one of {DISTANCE_POINT_ESTIMATES}, got "
                             f"{self.point_estimate!r}")
        if self.prior not in DISTANCE_PRIORS:
            raise ValueError(f"distance prior must be one of {DISTANCE_PRIORS}, got "
                             f"{self.prior!r}")
        if not 0 < self.grid_step_pc <= 1000:
            raise ValueError(f"grid_step_pc must be in (0, 1000], got {self.grid_step_pc}")
        if not self.d_max_kpc > self.grid_step_pc * 1e-3:
            raise ValueError(f"d_max_kpc must exceed the grid step, got {self.d_max_kpc}")
        if not 0 <= self.population_prior_weight <= 1:
            raise ValueError("population_prior_weight must be in [0, 1], got "
                             f"{self.population_prior_weight}")
        if self.edsd_length_kpc <= 0:
            raise ValueError(f"edsd_length_kpc must be > 0, got {self.edsd_length_kpc}")
        if self.window_log_tolerance < 10:
            raise ValueError("window_log_tolerance below 10 nats would bias the percentiles")
        if self.segment_points < 1024:
            raise ValueError("segment_points must be >= 1024")
        if self.coarse_nodes < 64:
            raise ValueError("coarse_nodes must be >= 64")


# ---------------------------------------------------------------- numeric ranges of options
# Every numeric option (int or float, of every section) has an allowed range, checked in
# one place (:func:`check_ranges`): non-finite values (NaN, inf) and absurd ones fail when
# the configuration is built, naming the key and the range, not deep inside a stage
# ("Unable to allocate 218. TiB" for grid_step_pc = 1e-9). A range comes from the field's
# metadata (``field(default=..., metadata={"range": Range(...)})``, next to the option) or
# from :data:`OPTION_RANGES`; an option with neither is only checked to be finite, and
# fails the test suite (tests/test_config.py, :func:`options_without_range`).


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric option: finite, ``low <= x <= high`` (``<`` where open).

    ``unit`` (astropy-style) is shown in the message only.
    """

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    unit: str = ""

    def contains(self, value: float) -> bool:
        import math

        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        text = (f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}")
        return f"{text} {self.unit}".rstrip()


_SEED = Range(0, 2**32 - 1)
_FRACTION_OPEN = Range(0.0, 1.0, low_open=True, high_open=True)
_SNR = Range(0.0, 1e4)
#: most points of the distance grid, d_max_kpc / grid_step_pc (3e5 by default): the
#: posterior is evaluated in windows, but a grid of 1e13 points is an error, not a setting
MAX_DISTANCE_GRID_POINTS = 30_000_000

#: "ClassName.field" -> allowed range, for options whose field carries no ``range`` metadata
OPTION_RANGES: dict[str, Range] = {
    "RunConfig.local_cluster_workers": Range(0, 4096),
    "RunConfig.threads_per_worker": Range(1, 1024),
    "RunConfig.connect_timeout_s": Range(0, 86400, low_open=True, unit="s"),
    "SpectralConfig.continuum_kernel_aa": Range(0, 1000, low_open=True, unit="Angstrom"),
    "SpectralConfig.n_components": Range(1, 3909),
    "SpectralConfig.train_min_snr": _SNR,
    "SpectralConfig.max_train": Range(2, 10**8),
    "SpectralConfig.seed": _SEED,
    "SpectralConfig.emission_target_purity": _FRACTION_OPEN,
    "SpectralConfig.broken_mad_sigma": Range(0, 1000, low_open=True),
    "SpectralConfig.broken_min_chi2": Range(0, 1e6),
    "TrainingConfig.min_parallax_snr": _SNR,
    "TrainingConfig.min_snr": _SNR,
    "TrainingConfig.train_fraction": _FRACTION_OPEN,
    "TrainingConfig.n_clean_iterations": Range(0, 100),
    "TrainingConfig.binary_snr_threshold": Range(0, 1000, low_open=True),
    "TrainingConfig.clean_snr_threshold": Range(0, 1000, low_open=True),
    "TrainingConfig.weight_floor_mag": Range(0, 10, unit="mag"),
    "TrainingConfig.max_mks_mag": Range(-20, 30, unit="mag"),
    "TrainingConfig.noise_min_snr": _SNR,
    "TrainingConfig.noise_clip_sigma": Range(0, 100, low_open=True),
    "TrainingConfig.noise_clip_lower_sigma": Range(0, 100, low_open=True),
    "TrainingConfig.noise_n_steps": Range(10, 10**7),
    "TrainingConfig.min_emission_test": Range(0, 10**9),
    "TrainingConfig.seed": _SEED,
    "TrainConfig.n_hidden": Range(1, 100_000),
    "TrainConfig.dropout": Range(0, 1, high_open=True),
    "TrainConfig.learning_rate": Range(0, 10, low_open=True),
    "TrainConfig.weight_decay": Range(0, 10),
    "TrainConfig.batch_size": Range(1, 10**7),
    "TrainConfig.max_epochs": Range(1, 10**6),
    "TrainConfig.patience": Range(1, 10**6),
    "TrainConfig.warm_patience": Range(1, 10**6),
    "TrainConfig.warm_max_epochs": Range(1, 10**6),
    "TrainConfig.validation_fraction": _FRACTION_OPEN,
    "TrainConfig.n_members": Range(1, 1000),
    "TrainConfig.n_components": Range(1, 3909),
    "TrainConfig.feature_scale_power": Range(0, 1),
    "TrainConfig.binary_mixture_fraction": Range(0, 1, high_open=True),
    "TrainConfig.seed": _SEED,
    "TrainConfig.n_threads": Range(1, 4096),
    "PhotometryConfig.r_v": Range(2.3, 5.1),
    "PhotometryConfig.r_v_scatter": Range(0, 1),
    "PhotometryConfig.intrinsic_mag_error_mag": Range(0, 0.5, unit="mag"),
    "BinaryConfig.snr_threshold": Range(0, 1000, low_open=True),
    "DistanceConfig.grid_step_pc": Range(0.001, 1000, unit="pc"),
    "DistanceConfig.d_max_kpc": Range(0, 1000, low_open=True, unit="kpc"),
    "DistanceConfig.edsd_length_kpc": Range(0, 100, low_open=True, unit="kpc"),
    "DistanceConfig.population_prior_weight": Range(0, 1),
    "DistanceConfig.window_log_tolerance": Range(10, 10_000),
    "DistanceConfig.segment_points": Range(1024, 10**8),
    "DistanceConfig.coarse_nodes": Range(64, 10**7),
    # obpipe simulate / obpipe ingest
    "SimulationConfig.n_stars": Range(1, 10**9),
    "SimulationConfig.seed": _SEED,
    "SimulationConfig.mean_visits": Range(1, 100),
    "SimulationConfig.chunk_size": Range(1, 10**6),
    "SimulationConfig.min_mass_ratio": Range(0, 1, low_open=True),
    "IngestConfig.chunk_size": Range(1, 10**6),
    "IngestConfig.files_per_task": Range(1, 10**6),
    "IngestConfig.match_radius_arcsec": Range(0, 3600, low_open=True, unit="arcsec"),
    "IngestConfig.group_radius_arcsec": Range(0, 3600, low_open=True, unit="arcsec"),
    "IngestConfig.max_decompressed_mib": Range(1, 1 << 20, unit="MiB"),
}


def option_range(cls: type, f: dataclasses.Field) -> Range | None:
    """The allowed range of option ``f`` of config class ``cls`` (None if it has none)."""
    found = f.metadata.get("range") if f.metadata else None
    if found is not None:
        return found
    for klass in cls.__mro__:
        found = OPTION_RANGES.get(f"{klass.__name__}.{f.name}")
        if found is not None:
            return found
    return None


def _is_number(value: Any) -> bool:
    import numbers

    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _numeric_options(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any, Range | None]]:
    """(key, value, allowed range or None) of every numeric option, nested sections too."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _numeric_options(value, key)
        elif _is_number(value):
            yield key, value, option_range(type(cfg), f)


def _sections_of(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    yield prefix, cfg
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _sections_of(value, f"{prefix}.{f.name}" if prefix else f.name)


def options_without_range(cfg: Any) -> list[str]:
    """Keys of the numeric options of ``cfg`` that have no allowed range (should be none)."""
    return [key for key, _, allowed in _numeric_options(cfg) if allowed is None]


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Check every numeric option of a config dataclass (and its nested sections).

    Raises ``ValueError`` naming the key (``distance.d_max_kpc``), the value and the
    allowed range for a non-finite or out-of-range value (an option without a range:
    for a non-finite value). Options set to None ("no value") are not checked.
    """
    import math

    for key, value, allowed in _numeric_options(cfg, prefix):
        if allowed is None:
            if not math.isfinite(float(value)):
                raise ValueError(f"{key} = {value!r}: must be finite")
        elif not allowed.contains(float(value)):
            raise ValueError(f"{key} = {value!r}: must be finite and in {allowed}")
    for key, section in _sections_of(cfg, prefix):
        if type(section).__name__ != "DistanceConfig":
            continue
        n = section.d_max_kpc * 1e3 / section.grid_step_pc
        if n > MAX_DISTANCE_GRID_POINTS:
            where = f"{key}." if key else ""
            raise ValueError(f"{where}d_max_kpc / {where}grid_step_pc = {n:.3g} grid points: "
                             f"at most {MAX_DISTANCE_GRID_POINTS:.0e} (raise grid_step_pc or "
                             "lower d_max_kpc)")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of a config dataclass (for provenance attributes)."""
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


# ---------------------------------------------------------------- the pipeline configuration
# One typed configuration for ``obpipe run`` / ``obpipe demo`` (``--config FILE``, TOML).
# The stage sections nest the stages' own dataclasses, which stay in their modules
# (imported lazily here, so that ``import obpipe.config`` stays light).


def _spectral_config() -> Any:
    from obpipe.spectra.stages import SpectralConfig

    return SpectralConfig()


def _training_config() -> Any:
    from obpipe.luminosity.training import TrainingConfig

    return TrainingConfig()


def _ebv_bands() -> tuple[str, ...]:
    from obpipe.photometry.extinction import EBV_BANDS

    return tuple(EBV_BANDS)


@dataclass(frozen=True)
class PhotometryConfig:
    """Options of the photometry stage (Sec. 4; ``obpipe.photometry.stage``)."""

    #: bands whose adjacent colour excesses give E(B-V) (Sec. 4), in the survey-grouped
    #: wavelength order of ``obpipe.photometry.extinction.EBV_BANDS``; K_s is never used
    bands: tuple[str, ...] = field(default_factory=_ebv_bands)
    #: extinction coefficients R_X: "star" (a Kurucz model of each star's Teff, dustapprox)
    #: or "fixed" (the paper's 12,000 K spectrum)
    coefficients: str = "star"
    #: include the Teff / log g uncertainty of the intrinsic colours in the E(B-V) error
    include_parameter_error: bool = True
    #: extinction-curve family: "G23" (Gordon et al. 2023; chosen on real LAMOST hot stars,
    #: docs/validation.md) or "F99" (Fitzpatrick 1999, the paper's)
    law: str = "G23"
    #: R_V of the curve (2.3-5.1); the paper: 3.1
    r_v: float = 3.1
    #: star-to-star sigma(R_V) propagated into ebv_err and AKs_err (Schlafly et al. 2016: 0.18)
    r_v_scatter: float = 0.18
    #: band coefficients at each star's own A0 = R_V E(B-V) (False: low-extinction limit,
    #: as in the paper)
    extinction_dependent: bool = True
    #: uncertainty of each band's intrinsic magnitude (mag, independent per band) added to
    #: ebv_err (obpipe.photometry.extinction.INTRINSIC_MAG_ERROR_MAG; 0: off)
    intrinsic_mag_error_mag: float = 0.02

    def __post_init__(self) -> None:
        if self.coefficients not in ("star", "fixed"):
            raise ValueError(f"coefficients must be 'star' or 'fixed', got {self.coefficients!r}")
        from obpipe.photometry.synthetic import EXTINCTION_LAWS, R_V_RANGE

        if self.law not in EXTINCTION_LAWS:
            raise ValueError(f"law must be one of {EXTINCTION_LAWS}, got {self.law!r}")
        if not R_V_RANGE[0] <= self.r_v <= R_V_RANGE[1]:
            raise ValueError(f"r_v must be within {R_V_RANGE}, got {self.r_v}")
        if not self.r_v_scatter >= 0:
            raise ValueError(f"r_v_scatter must be >= 0, got {self.r_v_scatter}")
        if not self.intrinsic_mag_error_mag >= 0:
            raise ValueError("intrinsic_mag_error_mag must be >= 0, got "
                             f"{self.intrinsic_mag_error_mag}")
        from obpipe.photometry.stage import BAND_COLUMNS

        unknown = [b for b in self.bands if b not in BAND_COLUMNS]
        if unknown:
            raise ValueError(f"bands: unknown {unknown}; known: {', '.join(BAND_COLUMNS)}")
        if "Ks" in self.bands:
            raise ValueError("bands: K_s is never used for E(B-V) (a disc brightens it)")
        if len(self.bands) < 2:
            raise ValueError(f"bands: at least two bands make a colour, got {list(self.bands)}")


@dataclass(frozen=True)
class BinaryConfig:
    """Options of the binary stage (Sec. 6, eqs. 15-17; ``obpipe.binary``)."""

    #: a spectrum is flagged binary when its parallax excess S/N_dplx (eq. 16) exceeds this
    snr_threshold: float = 2.0

    def __post_init__(self) -> None:
        if not self.snr_threshold > 0:
            raise ValueError(f"snr_threshold must be > 0, got {self.snr_threshold}")


def _catalog_formats() -> tuple[str, ...]:
    from obpipe.catalog import DEFAULT_FORMATS

    return tuple(DEFAULT_FORMATS)


@dataclass(frozen=True)
class CatalogConfig:
    """Options of the catalog stage (Table 1; ``obpipe.catalog``)."""

    #: file formats of catalog.* and catalog_unique.*: "parquet" (always: the stage is
    #: complete when it exists), "fits", "ecsv"
    formats: tuple[str, ...] = field(default_factory=_catalog_formats)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.formats) - {"parquet", "fits", "ecsv"})
        if unknown:
            raise ValueError(f"formats: unknown {unknown}; choose from parquet, fits, ecsv")
        if "parquet" not in self.formats:
            raise ValueError("formats must include 'parquet' (the catalog of record)")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``obpipe run`` can be told, one section per stage (``--config FILE``).

    Sections: ``run`` (:class:`RunConfig`), ``spectral``
    (``obpipe.spectra.stages.SpectralConfig``: normalize, pca, emission), ``photometry``
    (:class:`PhotometryConfig`), ``luminosity`` (``obpipe.luminosity.training.
    TrainingConfig`` with its ``network`` sub-table, ``obpipe.luminosity.
    network_training.TrainConfig``), ``binary`` (:class:`BinaryConfig`), ``distance``
    (:class:`DistanceConfig`), ``catalog`` (:class:`CatalogConfig`). A stage reads its
    section from ``RunContext.config`` (or ``RunContext.options``).
    """

    #: luminosity stage: an extra training table (CSV / Parquet / FITS with columns
    #: specid, MKs and optionally MKs_err), e.g. the paper's ~200 bright stars without
    #: good parallaxes (Sec. 5.2); empty: none
    extra_training_table: str = ""
    #: where and how the stages run (scheduler, stage selection, progress)
    run: RunConfig = field(default_factory=RunConfig)
    #: normalize, pca and emission stages (Secs. 2-3)
    spectral: SpectralConfig = field(default_factory=_spectral_config)
    #: photometry stage: E(B-V), A_Ks, parallax zero-point (Sec. 4)
    photometry: PhotometryConfig = field(default_factory=PhotometryConfig)
    #: luminosity stage: training sets, binary cleaning, noise model, network (Sec. 5)
    luminosity: TrainingConfig = field(default_factory=_training_config)
    #: binary stage (Sec. 6)
    binary: BinaryConfig = field(default_factory=BinaryConfig)
    #: distance stage (Sec. 7)
    distance: DistanceConfig = field(default_factory=DistanceConfig)
    #: catalog stage (Table 1)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)

    def __post_init__(self) -> None:
        """Range checks of the stage sections whose classes do not check themselves."""
        check_ranges(self)  # every numeric option: finite and within its Range
        from obpipe.spectra.pca import N_COMPONENTS

        s, lum = self.spectral, self.luminosity
        net = lum.network
        checks = [
            ("spectral.continuum_kernel_aa", s.continuum_kernel_aa > 0, "must be > 0"),
            ("spectral.n_components", s.n_components == N_COMPONENTS,
             f"must be {N_COMPONENTS} (the products' component axis has that fixed size)"),
            ("spectral.max_train", s.max_train >= 2 * s.n_components,
             "must be >= 2 n_components"),
            ("spectral.emission_target_purity", 0 < s.emission_target_purity < 1,
             "must be in (0, 1)"),
            ("spectral.broken_mad_sigma", s.broken_mad_sigma > 0, "must be > 0"),
            ("luminosity.train_fraction", 0 < lum.train_fraction < 1, "must be in (0, 1)"),
            ("luminosity.n_clean_iterations", lum.n_clean_iterations >= 0, "must be >= 0"),
            ("luminosity.noise_n_steps", lum.noise_n_steps >= 10, "must be >= 10"),
            ("luminosity.noise_clip_sigma", lum.noise_clip_sigma > 0, "must be > 0"),
            ("luminosity.input_kind", lum.input_kind in ("recon_flux", "pca_coeff"),
             "must be 'recon_flux' or 'pca_coeff'"),
            ("luminosity.network.n_hidden", net.n_hidden >= 1, "must be >= 1"),
            ("luminosity.network.dropout", 0 <= net.dropout < 1, "must be in [0, 1)"),
            ("luminosity.network.learning_rate", net.learning_rate > 0, "must be > 0"),
            ("luminosity.network.batch_size", net.batch_size >= 1, "must be >= 1"),
            ("luminosity.network.max_epochs", net.max_epochs >= 1, "must be >= 1"),
            ("luminosity.network.patience", net.patience >= 1, "must be >= 1"),
            ("luminosity.network.validation_fraction", 0 < net.validation_fraction < 1,
             "must be in (0, 1)"),
            ("luminosity.network.device", net.device in ("cpu", "auto"),
             "must be 'cpu' or 'auto'"),
        ]
        for key, ok, what in checks:
            if not ok:
                section, _, name = key.rpartition(".")
                value = getattr(net if section.endswith("network") else
                                (s if section == "spectral" else lum), name)
                raise ValueError(f"{key} {what}, got {value!r}")

    def stage_options(self) -> dict[str, dict[str, Any]]:
        """The per-stage option dicts of ``RunContext.options`` (what stages read)."""
        lum = dataclasses.asdict(self.luminosity)
        if self.extra_training_table:
            lum["extra_training"] = self.extra_training_table
        return {"photometry": dataclasses.asdict(self.photometry), "luminosity": lum,
                "binary": dataclasses.asdict(self.binary),
                "distance": dataclasses.asdict(self.distance),
                "catalog": {"formats": tuple(self.catalog.formats)}}


class ConfigError(ValueError):
    """An invalid configuration file; the message names the file and the key."""


#: Docstrings of options whose class (in a stage module) has no ``#:`` comment for them,
#: keyed ``ClassName.field``.
_FIELD_DOCS: dict[str, str] = {
    "SpectralConfig.continuum_kernel_aa": "width L (AA) of the Gaussian pseudo-continuum "
    "kernel w = exp(-(lambda - lambda0)^2 / L^2) (Sec. 2: 50 AA)",
    "SpectralConfig.n_components": "principal components K of each PCA basis (Sec. 3: 100)",
    "SpectralConfig.max_train": "at most this many training spectra for the bases (a "
    "seeded random subset of those above train_min_snr)",
    "SpectralConfig.seed": "random seed of the training subset and of the randomized PCA",
    "SpectralConfig.emission_target_purity": "H-alpha emission threshold: the smallest "
    "significance at which the mirrored negative tail (false positives) is below "
    "1 - purity of the positive tail (Sec. 3)",
    "SpectralConfig.broken_mad_sigma": "broken spectrum: largest 16-pixel reduced chi2 above "
    "the median + this many MADs of its S/N bin (App. A)",
    "SpectralConfig.broken_min_chi2": "broken spectrum: and above this reduced chi2 (App. A)",
    "TrainingConfig.min_parallax_snr": "good parallax: corrected parallax / error above "
    "this (Sec. 5.2: 10)",
    "TrainingConfig.min_snr": "training candidates: spectra with S/N above this (Sec. 5.2: 50)",
    "TrainingConfig.train_fraction": "share of the candidate stars (all their visits) in "
    "the training set; the rest are the test set (Sec. 5.2: 4/5)",
    "TrainingConfig.n_clean_iterations": "binary-cleaning rounds: retrain without training "
    "spectra whose S/N_dplx exceeds binary_snr_threshold (Sec. 5.2: 2)",
    "TrainingConfig.binary_snr_threshold": "S/N_dplx (eq. 16) above which a training "
    "spectrum is removed as a binary (Sec. 6: 2)",
    "TrainingConfig.noise_clip_sigma": "sigma clipping of the noise-model fit (eq. 14: 2)",
    "TrainingConfig.noise_clip_lower_sigma": "noise model: also clip stars this many sigma "
    "brighter than the model (not binaries: subdwarfs, white dwarfs, failed "
    "reconstructions); none: the paper's one-sided clipping",
    "TrainingConfig.noise_include_spread": "add each star's ensemble spread (epistemic) to "
    "the eq. 14 variance and to MKs_err (beyond the paper); false: the paper's error",
    "TrainingConfig.noise_n_steps": "emcee steps of the noise-model posterior (Sec. 5.3)",
    "TrainingConfig.min_emission_test": "fewest emission test spectra for network (b)'s own "
    "noise model; below it (b) is calibrated on all its test predictions",
    "TrainingConfig.seed": "random seed of the star-level train/test split and of emcee",
    "TrainingConfig.network": "the network and its optimiser (eq. 6, Sec. 5.1)",
    "TrainConfig.n_hidden": "sigmoid units per hidden layer (eq. 6: 100)",
    "TrainConfig.dropout": "dropout probability after each hidden layer (Sec. 5.1: 0.2)",
    "TrainConfig.learning_rate": "Adam learning rate",
    "TrainConfig.weight_decay": "Adam weight decay (L2)",
    "TrainConfig.batch_size": "mini-batch size (spectra)",
    "TrainConfig.max_epochs": "most training epochs (early stopping usually ends sooner)",
    "TrainConfig.patience": "early stopping: epochs without a better validation loss",
    "TrainConfig.validation_fraction": "share of the training rows held out for early "
    "stopping (seeded)",
    "TrainConfig.seed": "random seed of the weights, batches and validation split "
    "(iteration i of the binary cleaning uses seed + i)",
}


def _is_config_class(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj)


def field_docs(cls: type) -> dict[str, str]:
    """Docstring of every field of a config dataclass: its ``#:`` comment lines in the
    class source, else :data:`_FIELD_DOCS`; "" where neither has one."""
    import inspect

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # base classes first, subclasses override
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            lines = []
        block: list[str] = []
        for line in lines:
            text = line.strip()
            if text.startswith("#:"):
                block.append(text[2:].strip())
                continue
            m = re.match(r"(\w+)\s*:", text)
            if m and block:
                docs[m.group(1)] = " ".join(block)
            block = []
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = docs.get(f.name) or _FIELD_DOCS.get(f"{cls.__name__}.{f.name}", "")
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (from TOML) as type ``tp``, or ConfigError naming ``key``."""
    import types
    import typing

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args:
            if isinstance(value, str) and value.lower() == "none":
                return None
            args = tuple(a for a in args if a is not type(None))
            if len(args) == 1:
                return _coerce(value, args[0], key)
        for a in args:
            try:
                return _coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected one of {[_type_name(a) for a in args]}, "
                          f"got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, default: Any, data: dict[str, Any], prefix: str) -> Any:
    """A ``cls`` instance: ``default`` with the keys of the TOML table ``data`` applied."""
    import typing

    if not isinstance(data, dict):
        raise ConfigError(f"[{prefix}] must be a table, got {data!r}")
    local = {"SpectralConfig": type(_spectral_config()),
             "TrainingConfig": type(_training_config())} if cls is PipelineConfig else None
    hints = typing.get_type_hints(cls, localns=local)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"[{prefix}] " if prefix else ""
        raise ConfigError(f"{where}unknown key {unknown[0]!r}; known keys: {', '.join(names)}")
    changes: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        current = getattr(default, name)
        if _is_config_class(current) and not isinstance(current, type):
            changes[name] = _build(type(current), current, value, key)
        else:
            tp = hints.get(name, Any)
            if tp is Any and current is not None:
                tp = type(current)
            changes[name] = _coerce(value, tp, key)
    try:
        return dataclasses.replace(default, **changes)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"[{prefix}] {exc}" if prefix else str(exc)) from exc


def config_from_dict(data: dict[str, Any]) -> PipelineConfig:
    """A validated :class:`PipelineConfig` from nested dicts (a parsed TOML file)."""
    cfg = _build(PipelineConfig, PipelineConfig(), data, "")
    if cfg.run.stages:
        from obpipe.pipeline import stage_names

        known = stage_names()
        unknown = [s for s in cfg.run.stages if s not in known]
        if unknown:
            raise ConfigError(f"[run] stages: unknown {unknown}; known: {', '.join(known)}")
    return cfg


def load_config(path: str | None = None) -> PipelineConfig:
    """Read and validate a TOML configuration file (None: all defaults).

    Every key is optional (a missing key keeps its default); unknown keys, wrong types
    and impossible values raise :class:`ConfigError` naming the file and the key. An
    option whose default is "none" (no value) takes the string ``"none"``.
    """
    if path is None:
        return PipelineConfig()
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: configuration file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def config_to_toml(cfg: Any, header: bool = True) -> str:
    """TOML text of a configuration, every key preceded by its docstring as a comment.

    ``load_config`` of the text gives back an equal configuration.
    """
    import textwrap

    out: list[str] = []
    if header:
        out += ["# obpipe configuration (obpipe run --config FILE). Every key is optional:",
                "# a missing key keeps the default shown by `obpipe config --show`;",
                '# "none" stands for no value (Python None).', ""]

    def emit(obj: Any, prefix: str) -> None:
        docs = field_docs(type(obj))
        tables = []
        if prefix:
            doc = (type(obj).__doc__ or "").strip().splitlines()[0]
            out.append(f"[{prefix}]")
            out.append(f"# {doc}")
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if _is_config_class(value):
                tables.append((f.name, value))
                continue
            for line in textwrap.wrap(docs[f.name], 86):
                out.append(f"# {line}")
            out.append(f"{f.name} = {_toml_value(value)}")
        out.append("")
        for name, value in tables:
            emit(value, f"{prefix}.{name}" if prefix else name)

    emit(cfg, "")
    return "\n".join(out).rstrip() + "\n"
