"""One small survey run through every registered stage, shared by the report, accessor,
notebook, chunking, provenance and distributed tests.

``SimulationConfig(n_stars=300, seed=5, chunk_size=150)`` (~530 spectra, 4 chunks), one
:func:`obpipe.pipeline.run_pipeline` call with the threaded scheduler: every stage with its
defaults but ``luminosity``, with short training (:data:`FAST_LUMINOSITY`: the networks are
poor on ~100 training spectra anyway; these tests exercise plumbing, figures and notebooks,
not precision). Its products equal, bitwise, those of ``obpipe run --config`` with
:data:`FAST_LUMINOSITY_TOML` (the distributed test compares a cluster run with them).
~25 s on 2 cores, once per test session: the xdist workers of ``make test`` share it
(:func:`session_dir`). Tests read it; a test that writes (reruns a stage, adds a file)
works on a copy (``shutil.copytree``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from obpipe.config import SimulationConfig, config_from_dict
from obpipe.pipeline import run_pipeline
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


def session_dir(tmp_path_factory: pytest.TempPathFactory, name: str,
                build: Callable[[Path], None]) -> Path:
    """The directory ``name`` of this test session, filled by ``build(path)`` once: the
    first process to ask builds it under a file lock, the others (the xdist workers of one
    ``pytest -n`` run, whose base temporary directories share a parent) wait for it and
    reuse it (pytest-xdist's recipe for session fixtures that run once). A failed build
    leaves no completion mark, so the next process that asks builds it again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            build(path)
            done.touch()
    return path


def _build_small_run(root: Path) -> None:
    survey = str(root / "survey.zarr")
    simulate_survey(survey, SMALL_RUN, scheduler="threads")
    run_pipeline(survey, str(root / "products"), None, scheduler="threads",
                 config=config_from_dict({"luminosity": FAST_LUMINOSITY}))


def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(survey path, products dir) of the shared small run; built on first use."""
    if "run" not in _RUNS:
        root = session_dir(tmp_path_factory, "small_run", _build_small_run)
        _RUNS["run"] = (str(root / "survey.zarr"), str(root / "products"))
    return _RUNS["run"]
