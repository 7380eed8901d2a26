"""The survey's identity (:func:`obpipe.provenance.survey_identity`): the checksum of the
per-spectrum table as stored is the same for the same survey (and a copy of it) and
changes when any value of the table changes (issue 19)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from obpipe.config import SimulationConfig
from obpipe.provenance import survey_identity, table_checksum
from obpipe.simulate.survey import simulate_survey


@pytest.fixture(scope="module")
def tiny_survey(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("ident") / "tiny.zarr")
    simulate_survey(path, SimulationConfig(n_stars=40, seed=4, chunk_size=25),
                    scheduler="synchronous")
    return path


def _copy(survey: str, where: Path) -> str:
    dst = str(where / "copy.zarr")
    shutil.copytree(survey, dst)
    return dst


def test_identity_is_stable_for_the_same_survey_and_its_copy(tiny_survey: str,
                                                             tmp_path: Path) -> None:
    first = survey_identity(tiny_survey)
    again = survey_identity(tiny_survey)
    assert first == again
    copy = survey_identity(_copy(tiny_survey, tmp_path))
    assert copy["id"] == first["id"] and copy["table_checksum"] == first["table_checksum"]
    assert copy["path"] != first["path"]
    assert first["simulated"] is True and first["producer"] == "obpipe simulate"
    n = zarr.open_group(tiny_survey, mode="r")["specid"].shape[0]
    assert first["n_spectra"] == n > 25  # more than one chunk
    assert len(first["table_checksum"]) == 32


@pytest.mark.parametrize("name", ["ra", "parallax", "uniqflag", "star_id", "fitsname",
                                  "snr_g"])
def test_identity_changes_when_any_table_value_changes(tiny_survey: str, tmp_path: Path,
                                                      name: str) -> None:
    path = _copy(tiny_survey, tmp_path)
    before = survey_identity(path)
    arr = zarr.open_group(path, mode="r+")[name]
    row = arr.shape[0] - 1  # in the last chunk
    old = arr[row]
    if arr.dtype.kind in "OUST" or str(arr.dtype).startswith("String"):
        arr[row] = str(old) + "x"
    elif arr.dtype.kind == "f":
        arr[row] = np.nextafter(old, np.inf)  # the smallest change a float can have
    else:
        arr[row] = old + 1
    changed = survey_identity(path)
    assert changed["table_checksum"] != before["table_checksum"]
    assert changed["id"] != before["id"]
    arr[row] = old  # the same values again: the same identity
    assert survey_identity(path) == before


def test_identity_ignores_the_spectra_and_sees_an_absent_chunk_written(
        tiny_survey: str, tmp_path: Path) -> None:
    path = _copy(tiny_survey, tmp_path)
    before = table_checksum(path)
    group = zarr.open_group(path, mode="r+")
    flux = group["flux"]
    flux[0, :5] = flux[0, :5] + 1.0  # not the per-spectrum table
    assert table_checksum(path) == before
    # a chunk never written (all fill value) is absent from the store; writing a value
    # other than the fill value into it changes the checksum
    col = group.create_array("extra_col", shape=(flux.shape[0],), chunks=(25,),
                             dtype="float32", fill_value=np.nan,
                             dimension_names=("spec",))
    with_col = table_checksum(path)
    assert with_col != before
    col[-1] = 1.5
    assert table_checksum(path) != with_col
