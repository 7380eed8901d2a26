"""Typed configuration: the one place where obpipe's tunable numbers live.

Every option has a documented default. Configuration objects are frozen
dataclasses, serialisable to plain dicts (stored as provenance in the root
attributes of every product).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

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
    #: "dr3" (Lindegren et al. 2021 zero-point injected) or "dr2" (Leung & Bovy 2019 style).
    gaia_release: str = "dr3"

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
        if self.gaia_release not in ("dr2", "dr3"):
            raise ValueError(f"gaia_release must be 'dr2' or 'dr3', got {self.gaia_release!r}")
        if self.min_mass_msun >= self.max_mass_msun:
            raise ValueError("min_mass_msun must be below max_mass_msun")

    @property
    def expected_n_spectra(self) -> int:
        return int(round(self.n_stars * self.mean_visits))


@dataclass(frozen=True)
class RunConfig:
    """Options of ``obpipe run`` shared by all stages."""

    #: Dask scheduler address (``tcp://host:8786``); None runs a local threaded scheduler.
    scheduler_address: str | None = None
    stages: tuple[str, ...] = field(default_factory=tuple)
    overwrite: bool = False


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
    #: distance prior: "flat" (the paper, Sec. 7) or "edsd", the exponentially
    #: decreasing space density P(d) ~ d^2 exp(-d / L) of Bailer-Jones et al. (2018)
    prior: str = "flat"
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

    def __post_init__(self) -> None:
        if self.prior not in ("flat", "edsd"):
            raise ValueError(f"distance prior must be 'flat' or 'edsd', got {self.prior!r}")
        if not 0 < self.grid_step_pc <= 1000:
            raise ValueError(f"grid_step_pc must be in (0, 1000], got {self.grid_step_pc}")
        if not self.d_max_kpc > self.grid_step_pc * 1e-3:
            raise ValueError(f"d_max_kpc must exceed the grid step, got {self.d_max_kpc}")
        if self.edsd_length_kpc <= 0:
            raise ValueError(f"edsd_length_kpc must be > 0, got {self.edsd_length_kpc}")
        if self.window_log_tolerance < 10:
            raise ValueError("window_log_tolerance below 10 nats would bias the percentiles")
        if self.segment_points < 1024:
            raise ValueError("segment_points must be >= 1024")
        if self.coarse_nodes < 64:
            raise ValueError("coarse_nodes must be >= 64")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of a config dataclass (for provenance attributes)."""
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)
