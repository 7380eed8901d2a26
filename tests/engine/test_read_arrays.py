"""Whole-column reads with zarr alone (obpipe.engine.blockwise.read_arrays and friends):
the values, attributes, names and chunking that xarray reads from the same store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from obpipe.engine.blockwise import (
    array_attrs,
    products_path,
    read_arrays,
    spec_chunking,
    stored_arrays,
)
from obpipe.io import store
from tests.small_run import small_run


def _store(path: Path, n: int = 23, chunk: int = 5) -> None:
    rng = np.random.default_rng(3)
    mks = rng.normal(-1, 1, n).astype(np.float32)
    mks[::4] = np.nan
    ds = xr.Dataset({
        "specid": ("spec", np.arange(n, dtype=np.int64) + 100),
        "MKs": ("spec", mks, {"units": "mag", "noise_a_sigma_int": 0.21}),
        "binary_flag": ("spec", rng.integers(-9, 2, n).astype(np.int8)),
        "star_id": ("spec", np.array([f"S{i % 7:04d}" for i in range(n)])),
        "pca_coeff": (("spec", "component"), rng.normal(size=(n, 3)).astype(np.float32)),
    })
    ds.chunk({"spec": chunk}).to_zarr(path, zarr_format=store.ZARR_FORMAT,
                                      consolidated=store.CONSOLIDATED)


def test_arrays_attrs_names_and_chunking_equal_xarrays(tmp_path: Path) -> None:
    path = tmp_path / "p.zarr"
    _store(path)
    ref = xr.open_zarr(path, consolidated=store.CONSOLIDATED, zarr_format=store.ZARR_FORMAT)
    names = ("specid", "MKs", "binary_flag", "star_id", "pca_coeff")
    got = read_arrays(str(path), names)
    for k in names:
        want = ref[k].values
        if k == "star_id":  # strings: the same text, whatever the string dtype
            assert got[k].astype(str).tolist() == want.astype(str).tolist()
            continue
        assert got[k].dtype == want.dtype, k
        np.testing.assert_array_equal(got[k], want, err_msg=k)
    assert np.isnan(got["MKs"][0])
    assert array_attrs(str(path), "MKs")["noise_a_sigma_int"] == \
        ref["MKs"].attrs["noise_a_sigma_int"]
    assert set(ref.variables) <= stored_arrays(str(path))
    assert spec_chunking(str(path)) == (23, 5) == (ref.sizes["spec"], ref.chunks["spec"][0])
    with pytest.raises(KeyError, match=r"p\.zarr: no array\(s\) \['nope'\]"):
        read_arrays(str(path), ("MKs", "nope"))
    with pytest.raises(FileNotFoundError):
        read_arrays(str(tmp_path / "missing.zarr"), ("MKs",))


@pytest.mark.slow  # the shared small run (an end-to-end run)
def test_a_real_runs_products_read_alike(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every 1-D product of the shared small run: zarr alone and xarray agree bit for bit."""
    path = products_path(small_run(tmp_path_factory)[1])
    ref = xr.open_zarr(path, consolidated=store.CONSOLIDATED, zarr_format=store.ZARR_FORMAT)
    one_d = [k for k, v in ref.data_vars.items() if v.dims == ("spec",)
             and v.dtype.kind in "fiub"]
    assert len(one_d) > 50
    got = read_arrays(path, one_d)
    for k in one_d:
        assert got[k].dtype == ref[k].dtype, k
        np.testing.assert_array_equal(got[k], ref[k].values, err_msg=k)
