"""Shared fixtures: small mock surveys simulated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from obpipe.config import SimulationConfig
from obpipe.simulate.survey import simulate_survey
from tests.small_run import session_dir

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: skip reason of every test that reads the reference data (README "Tests")
NEEDS_SHARED_DATA = (f"needs the real reference data in ../shared/data next to the "
                     f"repository (not found at {SHARED_DATA})")

#: ~2,000 spectra: the "small survey" of the realism tests
SMALL = SimulationConfig(n_stars=1200, seed=11, chunk_size=500)
#: the stages of :func:`small_spectral_products`
SPECTRAL = ["index", "normalize", "pca", "emission"]


@pytest.fixture(scope="session")
def small_survey(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The small survey, simulated once per session (the xdist workers share it): tests
    read it and write their products elsewhere."""
    root = session_dir(tmp_path_factory, "small_survey",
                       lambda d: simulate_survey(str(d / "small.zarr"), SMALL,
                                                 scheduler="threads"))
    return str(root / "small.zarr")


@pytest.fixture(scope="session")
def small_spectral_products(small_survey: str,
                            tmp_path_factory: pytest.TempPathFactory) -> str:
    """Products of the small survey through the spectral stages (index, normalize, pca,
    emission), once per session; tests copy them before running anything on them."""
    from obpipe.pipeline import run_pipeline

    root = session_dir(tmp_path_factory, "small_spectral",
                       lambda d: run_pipeline(small_survey, str(d / "products"), SPECTRAL,
                                              scheduler="threads"))
    return str(root / "products")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(NEEDS_SHARED_DATA)
    return SHARED_DATA


#: the longest test files, longest first (seconds of setup + calls per file in one
#: ``make test`` with ``--durations=0``, 574 tests, 2 shared cores at load 6-7, so about twice
#: a quiet machine's; docs/performance.md). ``make test`` hands whole files to the two xdist
#: workers (``--dist loadfile``) in collection order (``--no-loadscope-reorder``; xdist's
#: default order, files with the most tests first, left these few-test files for the end,
#: where one of them ran alone on one worker while the other sat idle): started first, the
#: short files even the two workers out at the end
LONG_FILES = (
    "tests/test_pipeline_distributed.py",  # 218 s: kill tests, then a full run on a cluster
    "tests/test_chunking.py",  # 193 s, with the shared small run, which it builds
    "tests/stages/test_luminosity.py",  # 112 s
    "tests/test_fsspec_run.py",  # 95 s
    "tests/test_deploy.py",  # 55 s
    "tests/simulate/test_survey.py",  # 49 s
    "tests/test_provenance.py",  # 46 s
    "tests/simulate/test_realism.py",  # 39 s
    "tests/test_cli.py",  # 36 s
    "tests/test_notebooks.py",  # 33 s
    "tests/engine/test_lock.py",  # 30 s
    "tests/spectra/test_pca.py",  # 28 s
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the files of :data:`LONG_FILES` first, in that order; the order of the tests
    within a file, and of the other files, is kept (a stable sort)."""
    missing = [name for name in LONG_FILES if not (config.rootpath / name).is_file()]
    if missing:  # a renamed file would silently lose its place
        raise pytest.UsageError(f"tests/conftest.py LONG_FILES names missing files: {missing}")
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
