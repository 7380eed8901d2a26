"""What every options dataclass shares: allowed ranges of numeric options, their
documentation, and plain-dict forms (a leaf module: the science modules that define
options classes import it; :mod:`obpipe.config` assembles them)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
    "SpectralConfig.refine_rv_max_snr": _SNR,
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



def option(default: Any = dataclasses.MISSING, *, doc: str,
           default_factory: Any = dataclasses.MISSING, range: Range | None = None) -> Any:
    """A documented option: ``dataclasses.field`` with the option's documentation (and
    optionally its allowed :class:`Range`) in the field's metadata, where
    :func:`field_docs` and :func:`option_range` read them."""
    metadata: dict[str, Any] = {"doc": doc}
    if range is not None:
        metadata["range"] = range
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_docs(cls: type) -> dict[str, str]:
    """Documentation of every field of a config dataclass, from the fields' metadata
    (:func:`option`); "" for a field without."""
    return {f.name: str(f.metadata.get("doc", "")) for f in dataclasses.fields(cls)}
