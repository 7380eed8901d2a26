"""Shared fixtures: small mock surveys simulated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from obpipe.config import SimulationConfig
from obpipe.simulate.survey import simulate_survey

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: skip reason of every test that reads the reference data (README "Tests")
NEEDS_SHARED_DATA = (f"needs the real reference data in ../shared/data next to the "
                     f"repository (not found at {SHARED_DATA})")

#: ~2,000 spectra: the "small survey" of the realism tests
SMALL = SimulationConfig(n_stars=1200, seed=11, chunk_size=500)


@pytest.fixture(scope="session")
def small_survey(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("survey") / "small.zarr")
    simulate_survey(path, SMALL, scheduler="threads")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(NEEDS_SHARED_DATA)
    return SHARED_DATA
