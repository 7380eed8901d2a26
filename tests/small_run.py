"""One small survey run through every registered stage, shared by the report, accessor and
notebook tests (built once per test session and process).

``SimulationConfig(n_stars=300, seed=5, chunk_size=150)`` (~530 spectra, 4 chunks): the
stages before ``luminosity`` run with their defaults through
:func:`obpipe.pipeline.run_pipeline`; ``luminosity`` with short training (the networks
are poor on ~100 training spectra anyway: these tests exercise plumbing, figures and
notebooks, not precision); then ``run_pipeline`` once more runs whatever is registered
after it (binary, distance, catalog ...). ~25 s on 2 cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from obpipe.config import SimulationConfig, config_from_dict
from obpipe.pipeline import RunContext, run_pipeline, stage_names
from obpipe.simulate.survey import simulate_survey

SMALL_RUN = SimulationConfig(n_stars=300, seed=5, chunk_size=150)
FAST_LUMINOSITY = {"noise_n_steps": 300, "n_clean_iterations": 0,
                   "network": {"max_epochs": 8, "patience": 3}}
#: the same short training as a config file, for runs through the command line
FAST_LUMINOSITY_TOML = f"""
[luminosity]
noise_n_steps = {FAST_LUMINOSITY["noise_n_steps"]}
n_clean_iterations = {FAST_LUMINOSITY["n_clean_iterations"]}

[luminosity.network]
max_epochs = {FAST_LUMINOSITY["network"]["max_epochs"]}
patience = {FAST_LUMINOSITY["network"]["patience"]}
"""
#: the command line in a subprocess, with this interpreter
OBPIPE = [sys.executable, "-m", "obpipe.cli"]

_RUNS: dict[str, tuple[str, str]] = {}


def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(survey path, products dir) of the shared small run; built on first use."""
    if "run" not in _RUNS:
        root = Path(tmp_path_factory.mktemp("small_run"))
        survey = str(root / "survey.zarr")
        products = str(root / "products")
        simulate_survey(survey, SMALL_RUN, scheduler="threads")
        names = stage_names()
        before = names[: names.index("luminosity")] if "luminosity" in names else names
        run_pipeline(survey, products, before, scheduler="threads")
        if "luminosity" in names:
            from obpipe.stages import luminosity as lum

            lum.run(RunContext(
                survey, products, scheduler="threads",
                config=config_from_dict({"luminosity": FAST_LUMINOSITY})))
        run_pipeline(survey, products, None, scheduler="threads")
        _RUNS["run"] = (survey, products)
    return _RUNS["run"]
