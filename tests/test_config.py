"""The typed run configuration: TOML in and out, validation naming the key, and the
options reaching the stages through RunContext."""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np
import pytest
import xarray as xr

from obpipe.config import (
    ConfigError,
    DistanceConfig,
    PipelineConfig,
    SimulationConfig,
    config_from_dict,
    config_to_toml,
    field_docs,
    load_config,
)
from obpipe.pipeline import RunContext, run_pipeline
from obpipe.simulate.survey import simulate_survey


def _sections(cfg: object, prefix: str = "") -> list[tuple[str, object]]:
    out = [(prefix, cfg)]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out += _sections(value, f"{prefix}.{f.name}" if prefix else f.name)
    return out


def test_every_option_has_a_docstring_and_a_default() -> None:
    cfg = PipelineConfig()
    names = [name for name, _ in _sections(cfg)]
    for section in ("run", "spectral", "photometry", "luminosity", "luminosity.network",
                    "binary", "distance", "catalog"):
        assert section in names
    for name, section in _sections(cfg):
        docs = field_docs(type(section))
        undocumented = [k for k, v in docs.items() if len(v) < 10]
        assert not undocumented, f"[{name}] options without a docstring: {undocumented}"
        for f in dataclasses.fields(section):
            has_default = (f.default is not dataclasses.MISSING
                           or f.default_factory is not dataclasses.MISSING)
            assert has_default, f"[{name}] {f.name} has no default"


def test_toml_round_trip_of_defaults_and_of_changed_values() -> None:
    cfg = PipelineConfig()
    text = config_to_toml(cfg)
    assert config_from_dict(tomllib.loads(text)) == cfg
    assert "# emcee steps (more when 50 autocorrelation" in text  # docstrings as comments
    changed = config_from_dict({
        "extra_training_table": "bright.csv",
        "run": {"scheduler": "tcp://10.0.0.5:8786", "stages": ["index", "normalize"]},
        "photometry": {"bands": ["g", "r", "J", "H"], "coefficients": "fixed"},
        "luminosity": {"weight_floor_mag": "none", "network": {"max_epochs": 7,
                                                               "n_threads": 2}},
        "distance": {"prior": "edsd", "d_max_kpc": 25},
    })
    assert changed.run.stages == ("index", "normalize")
    assert changed.photometry.bands == ("g", "r", "J", "H")
    assert changed.luminosity.weight_floor_mag is None
    assert changed.luminosity.network.max_epochs == 7
    assert changed.luminosity.network.patience == PipelineConfig().luminosity.network.patience
    assert changed.distance == DistanceConfig(prior="edsd", d_max_kpc=25.0)
    assert isinstance(changed.distance.d_max_kpc, float)
    assert config_from_dict(tomllib.loads(config_to_toml(changed))) == changed


@pytest.mark.parametrize("data, key", [
    ({"luminosity": {"network": {"max_epochs": "ten"}}}, "luminosity.network.max_epochs"),
    ({"luminosity": {"network": {"max_epochs": 1.5}}}, "luminosity.network.max_epochs"),
    ({"luminosity": {"train_fraction": 1.5}}, "luminosity.train_fraction"),
    ({"luminosity": {"input_kind": "pixels"}}, "luminosity.input_kind"),
    ({"spectral": {"projection_prior": 1}}, "spectral.projection_prior"),
    ({"spectral": {"emission_target_purity": 1.0}}, "spectral.emission_target_purity"),
    ({"spectral": {"n_components": 40}}, "spectral.n_components"),
    ({"spectral": {"kernel": 50}}, "[spectral] unknown key 'kernel'"),
    ({"photometry": {"bands": ["g", "Ks"]}}, "[photometry] bands"),
    ({"photometry": {"bands": "g"}}, "photometry.bands"),
    ({"photometry": {"coefficients": "kurucz"}}, "[photometry] coefficients"),
    ({"run": {"scheduler": "gpu"}}, "[run] scheduler"),
    ({"run": {"stages": ["index", "calibrate"]}}, "[run] stages"),
    ({"run": "threads"}, "[run] must be a table"),
    ({"distance": {"prior": "uniform"}}, "[distance]"),
    ({"binary": {"snr_threshold": -1}}, "[binary] snr_threshold"),
    ({"catalog": {"formats": ["fits"]}}, "[catalog] formats must include 'parquet'"),
    ({"catalog": {"formats": ["parquet", "csv"]}}, "[catalog] formats: unknown"),
    ({"simulation": {"n_stars": 5}}, "unknown key 'simulation'"),
])
def test_invalid_options_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert key in str(err.value)


def test_load_config_file_errors(tmp_path) -> None:
    assert load_config(None) == PipelineConfig()
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[luminosity\nseed = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[binary]\nsnr_threshold = 'two'\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(wrong))
    assert str(wrong) in str(err.value) and "binary.snr_threshold" in str(err.value)


def test_run_context_carries_the_configuration() -> None:
    cfg = config_from_dict({"photometry": {"coefficients": "fixed"},
                            "luminosity": {"seed": 3},
                            "extra_training_table": "x.csv",
                            "distance": {"prior": "edsd"},
                            "catalog": {"formats": ["parquet", "ecsv"]}})
    ctx = RunContext("survey.zarr", "products", config=cfg)
    assert ctx.config.distance.prior == "edsd"
    # what each stage's provenance key hashes: its typed section, as a dict
    from obpipe.pipeline import stage_config_section

    assert stage_config_section(ctx, "catalog")["formats"] == ("parquet", "ecsv")
    assert stage_config_section(ctx, "photometry")["coefficients"] == "fixed"
    assert stage_config_section(ctx, "luminosity")["seed"] == 3
    assert stage_config_section(ctx, "luminosity")["extra_training"] == "x.csv"
    default_epochs = PipelineConfig().luminosity.network.max_epochs
    assert stage_config_section(ctx, "luminosity")["network"]["max_epochs"] == default_epochs
    assert not hasattr(ctx, "options")  # one route: the typed section
    # the luminosity stage gets exactly the configured TrainingConfig
    from obpipe.stages.luminosity import _config

    lum = config_from_dict({"luminosity": {"min_snr": 40.0, "network": {"dropout": 0.1}}})
    built, extra = _config(RunContext("s", "p", config=lum))
    assert built == lum.luminosity and extra == {"extra_training": None}


@pytest.fixture(scope="module")
def tiny_survey(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("cfg") / "tiny.zarr")
    simulate_survey(path, SimulationConfig(n_stars=80, seed=4, chunk_size=50),
                    scheduler="threads")
    return path


def test_configured_options_change_the_products(tiny_survey: str, tmp_path) -> None:
    """The spectral and photometry sections reach their stages (and are recorded)."""
    stages = ["index", "normalize", "photometry"]
    default = str(tmp_path / "default")
    run_pipeline(tiny_survey, default, stages, scheduler="threads")
    cfg = config_from_dict({"spectral": {"continuum_kernel_aa": 20.0},
                            "photometry": {"coefficients": "fixed"}})
    changed = str(tmp_path / "changed")
    report = run_pipeline(tiny_survey, changed, stages, scheduler="threads", config=cfg)
    assert all(r["seconds"] >= 0 for r in report.values())
    a = xr.open_zarr(f"{default}/products.zarr", consolidated=False)
    b = xr.open_zarr(f"{changed}/products.zarr", consolidated=False)
    assert not np.allclose(a.norm_flux.values, b.norm_flux.values, equal_nan=True)
    # fixed coefficients: one R_Ks for every star; per-star coefficients vary with Teff
    r_fixed = b.R_Ks.values[np.isfinite(b.R_Ks.values)]
    r_star = a.R_Ks.values[np.isfinite(a.R_Ks.values)]
    assert np.ptp(r_fixed) < 1e-6 < np.ptp(r_star)
    recorded = load_config_json(b.attrs["obpipe_config"])
    assert recorded["spectral"]["continuum_kernel_aa"] == 20.0
    assert recorded["photometry"]["coefficients"] == "fixed"


def load_config_json(text: str) -> dict:
    import json

    return json.loads(text)


@pytest.mark.parametrize("section, text, key, allowed", [
    ("distance", "d_max_kpc = inf", "distance.d_max_kpc = inf", "(0, 1000] kpc"),
    ("distance", "grid_step_pc = 1e-9", "distance.grid_step_pc = 1e-09", "[0.001, 1000] pc"),
    ("luminosity.network", "weight_decay = -1", "luminosity.network.weight_decay = -1.0",
     "[0, 10]"),
    ("distance", "edsd_length_kpc = nan", "distance.edsd_length_kpc = nan", "(0, 100] kpc"),
    ("luminosity", "noise_clip_sigma = -inf", "luminosity.noise_clip_sigma = -inf", "(0, 100]"),
    ("spectral", "continuum_kernel_aa = nan", "spectral.continuum_kernel_aa = nan",
     "(0, 1000] Angstrom"),
    ("run", "connect_timeout_s = inf", "run.connect_timeout_s = inf", "(0, 86400] s"),
])
def test_non_finite_and_absurd_numbers_name_file_key_and_range(
    tmp_path, section: str, text: str, key: str, allowed: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[{section}]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(err.value) == f"{path}: {key}: must be finite and in {allowed}"


def test_distance_grid_size_is_bounded() -> None:
    with pytest.raises(ConfigError, match=r"distance.d_max_kpc / distance.grid_step_pc = "
                       r"1e\+08 grid points"):
        config_from_dict({"distance": {"grid_step_pc": 0.001, "d_max_kpc": 100}})
    config_from_dict({"distance": {"grid_step_pc": 0.001, "d_max_kpc": 30}})  # 3e7: allowed


def test_every_numeric_option_has_a_range_and_the_defaults_are_inside() -> None:
    from obpipe.config import check_ranges, options_without_range
    from obpipe.ingest import IngestConfig

    for cfg in (PipelineConfig(), IngestConfig()):
        assert options_without_range(cfg) == []
        check_ranges(cfg)
    # simulation options outside OPTION_RANGES are still checked to be finite
    with pytest.raises(ValueError, match="max_distance_kpc = inf: must be finite"):
        SimulationConfig(max_distance_kpc=float("inf")).validate()
    with pytest.raises(ValueError, match=r"mean_visits = nan: must be finite and in \[1, 100\]"):
        SimulationConfig(mean_visits=float("nan")).validate()


def test_every_run_option_is_documented_in_its_field_metadata() -> None:
    """Option docs live in the dataclass fields' metadata (``obpipe.options.option``), not in
    source comments: every option of every section of ``obpipe run``'s configuration has one."""
    import dataclasses

    undocumented = []

    def walk(cfg: object, prefix: str) -> None:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif not f.metadata.get("doc"):
                undocumented.append(prefix + f.name)

    walk(PipelineConfig(), "")
    assert not undocumented, undocumented


@pytest.mark.parametrize("config_class", ["simulate", "ingest"])
def test_every_simulate_and_ingest_option_is_documented(config_class: str) -> None:
    """``obpipe simulate`` and ``obpipe ingest`` options carry their docs in the field
    metadata too (``obpipe.options.option``), with a default, like the run's options."""
    from obpipe.ingest import IngestConfig
    from obpipe.options import field_docs
    from obpipe.simulate.options import SimulationConfig

    cls = {"simulate": SimulationConfig, "ingest": IngestConfig}[config_class]
    docs = field_docs(cls)
    undocumented = [name for name, doc in docs.items() if len(doc) < 10]
    assert not undocumented, f"{cls.__name__} options without a docstring: {undocumented}"
    for f in dataclasses.fields(cls):
        assert f.default is not dataclasses.MISSING, f"{cls.__name__}.{f.name} has no default"
