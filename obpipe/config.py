"""The pipeline's configuration: assembles :class:`PipelineConfig` from the options
classes of the stages and reads and writes it as TOML.

Every options class lives next to the science it configures (``spectra/grid.py``,
``spectra/options.py``, ``photometry/options.py``, ``luminosity/training.py``,
``luminosity/network.py``, ``binary.py``, ``distance.py``, ``catalog.py``,
``simulate/options.py``, ``runtime.py``); what they share (allowed ranges, option
documentation) is :mod:`obpipe.options`. This module imports downwards only; the names
are re-exported here for the command line and for users. Configuration objects are frozen
dataclasses, serialisable to plain dicts (stored as provenance in the root attributes of
every product).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from obpipe.binary import BinaryConfig
from obpipe.catalog import CatalogConfig
from obpipe.distance import DISTANCE_POINT_ESTIMATES, DISTANCE_PRIORS, DistanceConfig
from obpipe.engine.schedulers import (
    LOCAL_CLUSTER,
    LOCAL_SCHEDULERS,
    RunConfig,
    is_scheduler_address,
)
from obpipe.luminosity.network_training import TrainConfig
from obpipe.luminosity.training import TrainingConfig
from obpipe.options import (
    MAX_DISTANCE_GRID_POINTS,
    OPTION_RANGES,
    Range,
    check_ranges,
    field_docs,
    option,
    option_range,
    options_without_range,
    to_dict,
    to_json,
)
from obpipe.photometry.options import PhotometryConfig
from obpipe.simulate.options import SimulationConfig
from obpipe.spectra.grid import (
    LAMOST_LOG10_WAVE_START,
    LAMOST_LOG10_WAVE_STEP,
    LAMOST_N_PIXELS,
    GridConfig,
)
from obpipe.spectra.options import SpectralConfig
from obpipe.spectra.pca import N_COMPONENTS
from obpipe.stages import STAGE_NAMES

__all__ = [
    "DISTANCE_POINT_ESTIMATES", "DISTANCE_PRIORS", "LAMOST_LOG10_WAVE_START",
    "LAMOST_LOG10_WAVE_STEP", "LAMOST_N_PIXELS",
    "LOCAL_CLUSTER", "LOCAL_SCHEDULERS", "MAX_DISTANCE_GRID_POINTS", "OPTION_RANGES",
    "BinaryConfig", "CatalogConfig", "ConfigError", "DistanceConfig", "GridConfig",
    "PhotometryConfig", "PipelineConfig", "Range", "RunConfig", "SimulationConfig",
    "SpectralConfig", "TrainConfig", "TrainingConfig", "check_ranges", "config_from_dict",
    "config_to_toml", "field_docs", "is_scheduler_address", "load_config", "option_range",
    "options_without_range", "to_dict", "to_json",
]


@dataclass(frozen=True)
class PipelineConfig:
    """Everything ``obpipe run`` can be told, one section per stage (``--config FILE``).

    Sections: ``run`` (:class:`RunConfig`), ``spectral``
    (``obpipe.spectra.options.SpectralConfig``: normalize, pca, emission), ``photometry``
    (:class:`PhotometryConfig`), ``luminosity`` (``obpipe.luminosity.training.
    TrainingConfig`` with its ``network`` sub-table, ``obpipe.luminosity.
    network_training.TrainConfig``), ``binary`` (:class:`BinaryConfig`), ``distance``
    (:class:`DistanceConfig`), ``catalog`` (:class:`CatalogConfig`). A stage reads its
    typed section from ``RunContext.config``.
    """

    extra_training_table: str = option(
        "",
        doc="luminosity stage: an extra training table (CSV / Parquet / FITS with columns specid, "
            "MKs and optionally MKs_err), e.g. the paper's ~200 bright stars without good "
            "parallaxes (Sec. 5.2); empty: none")
    run: RunConfig = option(
        default_factory=RunConfig,
        doc="where and how the stages run (scheduler, stage selection, progress)")
    spectral: SpectralConfig = option(
        default_factory=SpectralConfig,
        doc="normalize, pca and emission stages (Secs. 2-3)")
    photometry: PhotometryConfig = option(
        default_factory=PhotometryConfig,
        doc="photometry stage: E(B-V), A_Ks, parallax zero-point (Sec. 4)")
    luminosity: TrainingConfig = option(
        default_factory=TrainingConfig,
        doc="luminosity stage: training sets, binary cleaning, noise model, network (Sec. 5)")
    binary: BinaryConfig = option(default_factory=BinaryConfig, doc="binary stage (Sec. 6)")
    distance: DistanceConfig = option(default_factory=DistanceConfig, doc="distance stage (Sec. 7)")
    catalog: CatalogConfig = option(default_factory=CatalogConfig, doc="catalog stage (Table 1)")

    def __post_init__(self) -> None:
        """Range checks of the stage sections whose classes do not check themselves."""
        check_ranges(self)  # every numeric option: finite and within its Range

        s, lum = self.spectral, self.luminosity
        net = lum.network
        checks = [
            ("spectral.continuum_kernel_aa", s.continuum_kernel_aa > 0, "must be > 0"),
            ("spectral.continuum_weighting", s.continuum_weighting in ("ivar", "uniform"),
             "must be \"ivar\" or \"uniform\""),
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


class ConfigError(ValueError):
    """An invalid configuration file; the message names the file and the key."""


def _is_config_class(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj)


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
    hints = typing.get_type_hints(cls)
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
        known = STAGE_NAMES
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
