"""The survey cube: schema, block writes, completeness, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from obpipe.io import store
from obpipe.spectra.grid import velocity_per_pixel_kms, wavelength_grid


def test_lamost_grid() -> None:
    wave = wavelength_grid()
    assert wave.size == 3909
    assert wave[0] == pytest.approx(10**3.5682)
    assert wave[-1] == pytest.approx(10 ** (3.5682 + 1e-4 * 3908))
    assert 3699 < wave[0] < 3701 and 9090 < wave[-1] < 9110
    assert velocity_per_pixel_kms() == pytest.approx(69.03, abs=0.01)


def _cube(tmp_path, n=10, chunk=4) -> str:
    path = str(tmp_path / "c.zarr")
    store.create_cube(path, n, chunk, attrs={"seed": 1}, truth_columns=store.TRUTH_COLUMNS)
    return path


def test_block_writes_roundtrip_and_completion(tmp_path) -> None:
    path = _cube(tmp_path)
    with pytest.raises(store.InvalidCubeError, match="not completely written"):
        store.open_cube(path)
    rng = np.random.default_rng(0)
    for start in range(0, 10, 4):
        n = min(4, 10 - start)
        block = {
            "flux": rng.normal(size=(n, 3909)).astype("f4"),
            "ivar": np.ones((n, 3909), "f4"),
            "mask": np.zeros((n, 3909), "u1"),
            "specid": np.arange(start, start + n),
            "star_id": np.array([f"S{i}" for i in range(start, start + n)]),
        }
        store.write_block(path, start, block)
    store.write_block(path, 4, {"teff_true": np.full(4, 2e4, "f4")}, group="truth")
    store.mark_complete(path)
    ds = store.open_cube(path)
    assert ds["flux"].chunks == ((4, 4, 2), (3909,))
    assert list(ds["specid"].values) == list(range(10))
    assert ds["star_id"].values[7] == "S7"
    assert ds["flux"].attrs["units"] == store.FLUX_UNIT
    assert ds["parallax"].attrs["units"] == "mas"
    assert ds.attrs["seed"] == 1
    truth = store.open_truth(path)
    assert np.all(truth["teff_true"].values[4:8] == 2e4)


def test_invalid_store_errors_name_what_is_missing(tmp_path) -> None:
    path = str(tmp_path / "bad.zarr")
    xr.Dataset({"flux": (("spec", "pix"), np.zeros((3, 5), "f4"))}).to_zarr(
        path, consolidated=False, zarr_format=3
    )
    with pytest.raises(store.InvalidCubeError) as err:
        store.open_cube(path)
    msg = str(err.value)
    assert path in msg
    for missing in ("dimension 'wave'", "'ivar'", "'mask'", "'specid'", "'star_id'"):
        assert missing in msg
    with pytest.raises(store.InvalidCubeError, match="not a Zarr"):
        store.open_cube(str(tmp_path / "nothing.zarr"))


def test_wrong_wavelength_grid_is_rejected(tmp_path) -> None:
    path = _cube(tmp_path)
    store.mark_complete(path)
    ds = store.open_cube(path).load()
    ds = ds.assign_coords(wave=ds.wave * 1.001)
    other = str(tmp_path / "shifted.zarr")
    ds.to_zarr(other, consolidated=False, zarr_format=3)
    with pytest.raises(store.InvalidCubeError, match="common grid"):
        store.open_cube(other)


def test_fsspec_memory_url() -> None:
    url = "memory://obpipe-test/cube.zarr"
    store.create_cube(url, 6, 3, overwrite=True)
    store.write_block(url, 3, {"snr_g": np.full(3, 50.0, "f4")})
    store.mark_complete(url)
    ds = store.open_cube(url)
    assert np.all(ds["snr_g"].values[3:] == 50.0)
    assert not store.has_truth(url)


def test_create_refuses_to_overwrite(tmp_path) -> None:
    path = _cube(tmp_path)
    with pytest.raises(Exception, match="exist|contains"):
        store.create_cube(path, 10, 4)
