"""The fast FITS reader of the LAMOST files (obpipe.io._fits_header) against astropy:
every header value and data array on every real file in ../shared/data and on the
writer's layouts, and the same spectrum and cube row through either reader."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from obpipe.io import _fits_header, lamost
from obpipe.io.lamost import write_lamost_fits
from obpipe.io.lamost_grid import to_grid
from obpipe.io.store import MASK_BITS
from obpipe.spectra.grid import wavelength_grid

GRID = wavelength_grid()
META = {"obsid": 123456789, "fitsname": "spec-1-T_sp01-001.fits", "ra": 10.5, "dec": -1.25,
        "mjd": 58000, "snr_g": 55.5, "rv": 37.3, "rv_err": 4.0}


def _real_files(shared_data: Path) -> list[Path]:
    files = sorted(shared_data.glob("lamost_dr*/*.fits*"))
    assert len(files) > 90
    return files


def _plain(raw: bytes) -> bytes:
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def _same_hdus(raw: bytes, name: str) -> None:
    """Every card value (first of each keyword) and every data array equal astropy's."""
    fast = _fits_header.hdus(raw)
    with fits.open(io.BytesIO(raw), memmap=False) as hdul:
        assert len(fast) == len(hdul), name
        for k, ((hf, df), hdu) in enumerate(zip(fast, hdul, strict=True)):
            keys = [c.keyword for c in hdu.header.cards
                    if c.keyword not in ("COMMENT", "HISTORY", "", "CONTINUE")]
            assert keys and set(keys) <= set(hf.keys()), (name, k)
            for key in dict.fromkeys(keys):
                want, got = hdu.header[key], hf[key]
                assert type(got) is type(want) and got == want, (name, k, key, got, want)
            if hdu.data is None:
                assert df is None, (name, k)
            elif df.dtype.names:
                for col in df.dtype.names:
                    np.testing.assert_array_equal(df[col], hdu.data[col], err_msg=name)
            else:
                assert df.dtype == hdu.data.dtype and df.shape == hdu.data.shape, name
                assert df.tobytes() == hdu.data.tobytes(), name


def test_every_real_file_reads_as_astropy_reads_it(shared_data: Path) -> None:
    for path in _real_files(shared_data):
        _same_hdus(_plain(path.read_bytes()), path.name)


@pytest.mark.parametrize("layout", ["image", "image-subcontinuum", "bintable"])
def test_writer_layouts_read_as_astropy_reads_them(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "s.fits"
    write_lamost_fits(path, *_spectrum(2), META, layout=layout)
    _same_hdus(path.read_bytes(), layout)


def test_scaled_or_truncated_files_are_not_read_by_the_fast_reader(tmp_path: Path) -> None:
    data = np.ones((5, 100), np.float32)
    hdu = fits.PrimaryHDU(data)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 2.0, 1.0
    hdu.writeto(tmp_path / "scaled.fits")
    with pytest.raises(_fits_header.Fallback):
        _fits_header.hdus((tmp_path / "scaled.fits").read_bytes())
    raw = (tmp_path / "scaled.fits").read_bytes()
    with pytest.raises(_fits_header.Truncated, match="needs 2000 data bytes"):
        _fits_header.hdus(raw[: 2880 + 100])


def _spectrum(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flux = (100.0 * (GRID / 5000.0) ** -2 + rng.normal(0, 1, GRID.size)).astype(np.float32)
    ivar = np.ones(GRID.size, np.float32)
    mask = np.zeros(GRID.size, np.uint8)
    ivar[500], mask[500] = 0.0, MASK_BITS["bad_pixel"]
    ivar[2000:2100] = 0.0
    mask[1000:1003] = MASK_BITS["sky_residual"]
    return flux, ivar, mask


def _same_gridded(raw: bytes, name: str) -> lamost.LamostSpectrum:
    """The fast reader and astropy.io.fits give the same spectrum and the same grid row."""
    fast, slow = lamost.parse_lamost(raw, name), lamost.parse_lamost(raw, name, fast=False)
    assert isinstance(fast.header, _fits_header.RawHeader)
    assert isinstance(slow.header, fits.Header)
    assert fast.layout == slow.layout and fast.meta == pytest.approx(slow.meta, nan_ok=True)
    assert fast.loglam == slow.loglam and fast.notes == slow.notes
    for attr in ("wave", "flux", "ivar", "andmask", "ormask"):
        np.testing.assert_array_equal(getattr(fast, attr), getattr(slow, attr), err_msg=attr)
    gf, gs = to_grid(fast), to_grid(slow)
    for attr in ("flux", "ivar", "mask"):  # bit for bit: the cube rows are identical
        assert getattr(gf, attr).tobytes() == getattr(gs, attr).tobytes(), attr
    assert gf.flags == gs.flags
    assert np.array_equal([gf.rv, gf.rv_err], [gs.rv, gs.rv_err], equal_nan=True)
    return fast


@pytest.mark.parametrize("layout", ["image", "image-subcontinuum", "bintable"])
@pytest.mark.parametrize("gz", [False, True])
def test_fast_reader_gives_the_astropy_cube_row(tmp_path: Path, layout: str, gz: bool) -> None:
    path = tmp_path / ("s.fits.gz" if gz else "s.fits")
    write_lamost_fits(path, *_spectrum(4), META, layout=layout)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == gz
    spec = _same_gridded(raw, path.name)
    assert spec.layout == layout and spec.loglam is not None


def test_fast_reader_gives_the_astropy_cube_row_for_real_files(shared_data: Path) -> None:
    layouts = {_same_gridded(p.read_bytes(), p.name).layout for p in _real_files(shared_data)}
    assert layouts == {"image", "image-subcontinuum"}
