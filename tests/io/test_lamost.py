"""LAMOST readers (all layouts, gz), the writer, rebinning onto the grid, bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from obpipe.io import lamost, lamost_batch
from obpipe.io.lamost import LamostFormatError, read_lamost, write_lamost_fits
from obpipe.io.lamost_grid import to_grid
from obpipe.io.store import MASK_BITS
from obpipe.spectra.grid import SPEED_OF_LIGHT_KMS, wavelength_grid
from obpipe.spectra.resample import bin_edges, rebin_spectrum

GRID = wavelength_grid()
META = {"obsid": 123456789, "fitsname": "spec-1-T_sp01-001.fits", "ra": 10.5, "dec": -1.25,
        "mjd": 58000, "snr_g": 55.5, "rv": 37.3, "rv_err": 4.0}


def _spectrum(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    flux = (100.0 * (GRID / 5000.0) ** -2 + rng.normal(0, 1, GRID.size)).astype(np.float32)
    ivar = np.ones(GRID.size, np.float32)
    mask = np.zeros(GRID.size, np.uint8)
    ivar[500], mask[500] = 0.0, MASK_BITS["bad_pixel"]
    mask[1000:1003] = MASK_BITS["sky_residual"]
    flux[:3], ivar[:3], mask[:3] = 0.0, 0.0, MASK_BITS["no_coverage"]
    return flux, ivar, mask


@pytest.mark.parametrize("layout", ["image", "image-subcontinuum", "bintable"])
@pytest.mark.parametrize("gz", [False, True])
def test_writer_reader_round_trip_every_layout(tmp_path: Path, layout: str, gz: bool) -> None:
    flux, ivar, mask = _spectrum()
    path = tmp_path / ("s.fits.gz" if gz else "s.fits")
    write_lamost_fits(path, flux, ivar, mask, META, layout=layout)
    spec = read_lamost(path)
    assert spec.layout == layout
    assert spec.meta["ra"] == META["ra"] and spec.meta["snr_g"] == pytest.approx(55.5)
    if layout == "image-subcontinuum":
        assert "no_obsid_in_header" in spec.notes and spec.meta["obsid"] >= 2**62
    else:
        assert spec.meta["obsid"] == META["obsid"]
    # observed frame in the file, rest frame (= the grid, exactly) after the shift
    assert spec.wave[0] == pytest.approx(GRID[0] * (1 + META["rv"] / SPEED_OF_LIGHT_KMS))
    g = to_grid(spec)
    assert g.rv == pytest.approx(META["rv"]) and g.rv_err == pytest.approx(META["rv_err"])
    np.testing.assert_array_equal(g.flux, flux)
    np.testing.assert_array_equal(g.ivar, ivar)
    np.testing.assert_array_equal(g.mask, mask)


def test_scaled_table_columns_are_read_scaled(tmp_path: Path) -> None:
    """A binary table with TSCALn / TZEROn (int16 flux): astropy's scaled values, not
    the stored integers."""
    import io

    flux, ivar, mask = _spectrum(1)
    path = tmp_path / "t.fits"
    write_lamost_fits(path, flux, ivar, mask, META, layout="bintable")
    stored = np.round((flux.astype(np.float64) - 100.0) / 0.01).astype(np.int16)
    with fits.open(path) as hdul:  # FLUX as int16 with TSCAL1 = 0.01, TZERO1 = 100
        cols = [fits.Column("FLUX", f"{flux.size}I", array=stored[None]),
                *[c for c in hdul[1].columns if c.name != "FLUX"]]
        hdu = fits.BinTableHDU.from_columns(cols, name="COADD")
        buf = io.BytesIO()
        fits.HDUList([hdul[0].copy(), hdu]).writeto(buf)
    raw = buf.getvalue()
    header = hdu.header.copy()
    header.insert("TFORM1", ("TSCAL1", 0.01), after=True)
    header.insert("TSCAL1", ("TZERO1", 100.0), after=True)
    old, new = hdu.header.tostring().encode(), header.tostring().encode()
    assert len(old) == len(new) and raw.count(old) == 1
    (tmp_path / "s2.fits").write_bytes(raw.replace(old, new))
    spec = read_lamost(tmp_path / "s2.fits")
    with fits.open(tmp_path / "s2.fits") as hdul:
        scaled = np.asarray(hdul[1].data["FLUX"][0], np.float64)
    np.testing.assert_allclose(scaled, stored * 0.01 + 100.0, rtol=1e-12)
    np.testing.assert_array_equal(spec.flux, scaled)
    np.testing.assert_allclose(spec.flux, flux, atol=0.0051)


def test_real_files_read_as_astropy_reads_them(shared_data: Path) -> None:
    """Every real file of ../shared/data (DR1, DR6-DR8): the arrays and header values."""
    files = sorted(shared_data.glob("lamost_dr*/*.fits*"))
    assert len(files) > 90
    layouts = set()
    for path in files:
        spec = read_lamost(path)
        layouts.add(spec.layout)
        with fits.open(path) as hdul:
            h, d = hdul[0].header, hdul[0].data
        np.testing.assert_array_equal(spec.flux, d[0], err_msg=path.name)
        np.testing.assert_array_equal(spec.ivar, d[1], err_msg=path.name)
        np.testing.assert_array_equal(spec.andmask, d[3].astype(np.int64), err_msg=path.name)
        assert spec.meta["ra"] == h["RA"] and spec.meta["dec"] == h["DEC"], path.name
        if "OBSID" in h:
            assert spec.meta["obsid"] == int(h["OBSID"]), path.name
        if h["Z"] > -9999:
            assert spec.meta["z"] == h["Z"], path.name
        assert spec.header["COEFF1"] == h["COEFF1"], path.name
    assert layouts == {"image", "image-subcontinuum"}


def test_header_cut_short_is_a_clear_error(tmp_path: Path) -> None:
    raw = _good_file(tmp_path).read_bytes()
    bad = tmp_path / "short.fits"
    bad.write_bytes(raw[:1000])  # inside the header, before its END card
    with pytest.raises(LamostFormatError, match="short.fits: truncated FITS file: header "
                       "ends before its END card"):
        read_lamost(bad)
    with pytest.raises(LamostFormatError, match="short.fits: unreadable FITS file"):
        lamost.parse_lamost(bad.read_bytes(), str(bad), fast=False)  # astropy's reading


# ---------------------------------------------------------------- resampling


def test_rebinning_conserves_flux_of_a_smooth_spectrum() -> None:
    step = 1e-4
    wave = 10 ** (3.5682 + step * (np.arange(3950) - 20.37))  # shifted by a fraction of a pixel

    def smooth(w: np.ndarray) -> np.ndarray:
        return 1e3 * (w / 5000.0) ** -2.5 * (1 + 0.2 * np.sin(w / 300.0))

    flux, ivar, mask = rebin_spectrum(wave, smooth(wave), np.ones(wave.size))
    assert not mask.any() and np.all(ivar > 0)
    # integral of f dlambda over the grid's range, against the input's integral there
    edges_out = bin_edges(GRID)
    edges_in = bin_edges(wave)
    total_out = np.sum(flux * np.diff(edges_out))
    inside = (edges_in[:-1] >= edges_out[0]) & (edges_in[1:] <= edges_out[-1])
    total_in = np.sum(smooth(wave)[inside] * np.diff(edges_in)[inside])
    assert total_out == pytest.approx(total_in, rel=1e-3)
    # and pixel by pixel against the smooth function
    assert np.max(np.abs(flux / smooth(GRID) - 1)) < 1e-3


def test_rebinning_propagates_ivar_chi2_of_constant_fit_is_one() -> None:
    rng = np.random.default_rng(2)
    wave = 10 ** (3.5682 + 1e-4 * (np.arange(3950) - 20.41))
    sigma = 0.5 + 0.3 * np.sin(np.arange(wave.size) / 200.0) ** 2
    chi2 = []
    for _ in range(30):
        flux, ivar, _ = rebin_spectrum(wave, 5.0 + rng.normal(0, sigma), 1 / sigma**2)
        ok = ivar > 0
        c = np.sum(flux[ok] * ivar[ok]) / np.sum(ivar[ok])
        chi2.append(np.sum((flux[ok] - c) ** 2 * ivar[ok]) / (ok.sum() - 1))
    assert np.mean(chi2) == pytest.approx(1.0, abs=0.03)


def test_masks_are_never_interpolated_into_good_pixels() -> None:
    wave = 10 ** (3.5682 + 1e-4 * (np.arange(3909) + 0.4))
    flux = np.full(wave.size, 7.0)
    ivar = np.ones(wave.size)
    mask = np.zeros(wave.size, np.uint8)
    flux[1000], ivar[1000] = 1e6, 0.0  # unflagged bad pixel (ivar 0)
    mask[2000] = MASK_BITS["bad_pixel"]
    mask[3000] = MASK_BITS["sky_residual"]  # informational: keeps its ivar
    f, iv, m = rebin_spectrum(wave, flux, ivar, mask)
    bad = np.flatnonzero(iv == 0)
    assert set(bad) == {0, 1000, 1001, 2000, 2001}  # two per bad pixel + the blue edge
    assert np.all(m[[1000, 1001, 2000, 2001]] & MASK_BITS["bad_pixel"])
    assert m[0] & MASK_BITS["no_coverage"]
    assert np.all(f[iv > 0] == pytest.approx(7.0))
    assert m[3000] & MASK_BITS["sky_residual"] and iv[3000] > 0


def test_pixels_outside_coverage_get_zero_ivar_and_bit() -> None:
    wave = GRID[1000:2000] * (1 + 1e-5)
    f, iv, m = rebin_spectrum(wave, np.ones(wave.size), np.ones(wave.size))
    assert np.all(iv[:1001] == 0) and np.all(m[:1001] & MASK_BITS["no_coverage"])
    assert np.all(iv[2000:] == 0) and np.all(iv[1001:1999] > 0)


# ---------------------------------------------------------------- bad files


def _good_file(tmp_path: Path, name: str = "good.fits", **kw: object) -> Path:
    flux, ivar, mask = _spectrum()
    path = tmp_path / name
    write_lamost_fits(path, flux, ivar, mask, {**META, **kw})
    return path


def test_truncated_fits_is_a_clear_error(tmp_path: Path) -> None:
    raw = _good_file(tmp_path).read_bytes()
    bad = tmp_path / "trunc.fits"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LamostFormatError, match="trunc.fits: truncated"):
        read_lamost(bad)
    with pytest.raises(LamostFormatError, match="trunc.fits: truncated FITS file: HDU 0: "
                       r"File may have been truncated: actual file length \(41760\)"):
        lamost.parse_lamost(bad.read_bytes(), str(bad), fast=False)  # astropy's reading
    badgz = tmp_path / "trunc.fits.gz"
    badgz.write_bytes(gzip.compress(raw)[:5000])
    with pytest.raises(LamostFormatError, match="gzip"):
        read_lamost(badgz)


def test_non_fits_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.fits"
    bad.write_text("this is not a spectrum\n" * 200)
    with pytest.raises(LamostFormatError, match="notes.fits: not a FITS file"):
        read_lamost(bad)


def test_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "shape.fits"
    fits.PrimaryHDU(np.ones((4, 3909), np.float32)).writeto(bad)
    with pytest.raises(LamostFormatError, match=r"wrong shape \(4, 3909\)"):
        read_lamost(bad)


def test_missing_wavelength_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "nowave.fits"
    data = np.ones((5, 3909), np.float32)  # row 2 is not a wavelength, no COEFF0/COEFF1
    fits.PrimaryHDU(data).writeto(bad)
    with pytest.raises(LamostFormatError, match="missing wavelength"):
        read_lamost(bad)
    bad2 = tmp_path / "nowave_table.fits"
    col = fits.Column("FLUX", "3909E", array=np.ones((1, 3909), np.float32))
    col2 = fits.Column("IVAR", "3909E", array=np.ones((1, 3909), np.float32))
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([col, col2])]).writeto(bad2)
    with pytest.raises(LamostFormatError, match="missing wavelength"):
        read_lamost(bad2)


@pytest.mark.parametrize(
    ("change", "flag"),
    [("nan_flux", "all_nan_flux"), ("zero_ivar", "zero_ivar"), ("off_grid", "off_grid")],
)
def test_unusable_data_gives_a_flagged_all_ivar0_row(tmp_path: Path, change: str,
                                                     flag: str) -> None:
    flux, ivar, mask = _spectrum()
    wave = None
    if change == "nan_flux":
        flux[:] = np.nan
    elif change == "zero_ivar":
        ivar[:] = 0
    else:
        wave = 10 ** (4.2 + 1e-4 * np.arange(GRID.size))  # 15,800 AA onwards
    path = tmp_path / "x.fits"
    write_lamost_fits(path, flux, ivar, mask, META, wave_rest_aa=wave)
    g = to_grid(read_lamost(path))
    assert flag in g.flags
    assert np.all(g.ivar == 0) and g.flux.shape == GRID.shape


def test_failed_redshift_is_flagged_not_shifted(tmp_path: Path) -> None:
    path = _good_file(tmp_path, rv=np.nan)
    g = to_grid(read_lamost(path))
    assert "no_redshift" in g.flags and np.isnan(g.rv)


# ---------------------------------------------------------------- real files


def test_real_dr8_files(shared_data: Path) -> None:
    files = sorted((shared_data / "lamost_dr8").glob("*.fits.gz"))
    index = pd.read_csv(shared_data / "lamost_dr8" / "index.csv")
    assert files
    for path in files:
        spec = read_lamost(path)
        assert spec.layout == "image"
        assert spec.meta["obsid"] in set(index["combined_obsid"])
        row = index[index["combined_obsid"] == spec.meta["obsid"]].iloc[0]
        assert spec.meta["ra"] == pytest.approx(row["combined_ra_obs"], abs=1e-5)
        assert spec.meta["snr_g"] == pytest.approx(row["combined_snrg"], abs=0.01)
        # the wavelength row agrees with the exact COEFF0/COEFF1 solution that replaced it
        with fits.open(path) as hdul:
            row2 = hdul[0].data[2].astype(np.float64)
            flux = hdul[0].data[0]
        np.testing.assert_allclose(spec.wave, row2, rtol=2e-6)
        np.testing.assert_array_equal(spec.flux, flux)
        g = to_grid(spec)
        # rebinning keeps the good pixels good (a few lost to edges and masks next door)
        assert (g.ivar > 0).mean() >= (spec.ivar > 0).mean() - 0.03
        assert abs(g.rv) < 600
        # one real file's wavelength row departs from its COEFF0/COEFF1: used, and flagged
        assert set(g.flags) <= {"wavelength_array_disagrees_with_COEFF0_COEFF1"}


def test_real_dr1_files_use_coefficients_not_subcontinuum(shared_data: Path) -> None:
    files = sorted((shared_data / "lamost_dr1").glob("*.fits"))
    assert files
    for path in files:
        spec = read_lamost(path)
        assert spec.layout == "image-subcontinuum"
        assert spec.wave[0] == pytest.approx(10**3.5682) and spec.wave[-1] > 9000
        assert "no_obsid_in_header" in spec.notes
        g = to_grid(spec)
        assert (g.ivar > 0).mean() > 0.5


def test_specutils_reads_lamost_files(shared_data: Path, tmp_path: Path) -> None:
    specutils = pytest.importorskip("specutils")
    lamost.register_specutils_loader()
    path = sorted((shared_data / "lamost_dr8").glob("*.fits.gz"))[0]
    sp = specutils.Spectrum.read(path)
    assert sp.flux.size == 3906 and sp.meta["layout"] == "image"
    table_file = _good_file(tmp_path, "t.fits")
    write_lamost_fits(table_file, *_spectrum(), META, layout="bintable", overwrite=True)
    sp2 = specutils.Spectrum.read(table_file, format="LAMOST")
    assert sp2.meta["layout"] == "bintable"


def test_loglinear_fast_path_agrees_with_the_general_rebinning() -> None:
    """The fractional-pixel-shift path gives rebin_spectrum's result (masks exactly)."""
    from obpipe.spectra.resample import rebin_loglinear, rest_frame_wavelength

    rng = np.random.default_rng(3)
    for trial in range(60):
        n = int(rng.integers(50, 4000))
        c0 = 3.5682 + (rng.uniform(-0.05, 0.05) if trial % 3 else int(rng.integers(-20, 20)) * 1e-4)
        if trial % 5 == 0:  # on the grid up to a floating-point sliver
            c0 = 3.5682 + int(rng.integers(-5, 5)) * 1e-4 + float(rng.choice([1e-13, -1e-13]))
        flux = rng.normal(10, 3, n)
        ivar = rng.uniform(0, 2, n)
        ivar[rng.random(n) < 0.05] = 0
        flux[rng.random(n) < 0.02] = np.nan
        mask = np.zeros(n, np.uint8)
        bad = rng.random(n) < 0.05
        mask[bad] = rng.choice([1, 2, 4, 8], bad.sum())
        z = rng.uniform(-0.002, 0.002) if trial % 2 else 0.0
        wave = rest_frame_wavelength(10 ** (c0 + 1e-4 * np.arange(n)), z)
        if trial % 7 == 0:  # partly or wholly off the grid
            c0 += float(rng.choice([-1, 1])) * rng.uniform(0.1, 0.5)
            wave = rest_frame_wavelength(10 ** (c0 + 1e-4 * np.arange(n)), z)
        use_mask = None if trial % 4 == 1 else mask  # no mask: only ivar / NaN make pixels bad
        fast = rebin_loglinear(c0 - np.log10(1 + z), 1e-4, flux, ivar, use_mask)
        assert fast is not None
        ref = rebin_spectrum(wave, flux, ivar, use_mask)
        np.testing.assert_array_equal(fast[2], ref[2])
        np.testing.assert_allclose(fast[0], ref[0], rtol=3e-7, atol=0)
        np.testing.assert_allclose(fast[1], ref[1], rtol=3e-7, atol=0)
    # another log step: no fast path
    assert rebin_loglinear(3.5682, 1.1e-4, np.ones(100), np.ones(100)) is None


def test_to_grid_takes_the_fast_path_for_coefficient_wavelengths(tmp_path: Path) -> None:
    flux, ivar, mask = _spectrum(2)
    path = tmp_path / "s.fits"
    write_lamost_fits(path, flux, ivar, mask, META)
    spec = read_lamost(path)
    assert spec.loglam is not None and spec.loglam[1] == pytest.approx(1e-4)
    g = to_grid(spec)
    spec.loglam = None  # the general path
    ref = to_grid(spec)
    np.testing.assert_array_equal(g.mask, ref.mask)
    np.testing.assert_allclose(g.flux, ref.flux, rtol=3e-7)
    np.testing.assert_allclose(g.ivar, ref.ivar, rtol=3e-7)
    assert g.flags == ref.flags


def test_coefficient_wavelength_is_the_direct_formula() -> None:
    """10**COEFF0 * cached 10**(COEFF1 i) is 10**(COEFF0 + COEFF1 i) to ~1e-15."""
    for c0, c1, n in ((3.5682, 1e-4, 3909), (3.57, 1.0001e-4, 3906), (3.9, 2e-4, 10)):
        wave, ok = lamost._coeff_wavelength({"COEFF0": c0, "COEFF1": c1}, n)
        direct = 10.0 ** (c0 + c1 * np.arange(n))
        np.testing.assert_allclose(wave, direct, rtol=5e-15, atol=0)
        assert ok == lamost._plausible_wavelength(direct)
    # implausible coefficients: below the range, beyond it, a step too small to increase
    for c0, c1, n in ((2.0, 1e-4, 100), (4.9, 1e-3, 3909), (3.6, 1e-20, 100)):
        _, ok = lamost._coeff_wavelength({"COEFF0": c0, "COEFF1": c1}, n)
        assert not ok
        assert not lamost._plausible_wavelength(10.0 ** (c0 + c1 * np.arange(n)))
    assert lamost._coeff_wavelength({"COEFF0": 3.6, "COEFF1": -1e-4}, 10) == (None, False)
    assert lamost._coeff_wavelength({"COEFF0": "x", "COEFF1": 1e-4}, 10) == (None, False)


def test_batch_rows_in_shared_memory_equal_the_sent_arrays(tmp_path: Path) -> None:
    paths = []
    for k, layout in enumerate(("image", "bintable", "image")):
        path = tmp_path / f"s{k}.fits"
        write_lamost_fits(path, *_spectrum(k), {**META, "obsid": META["obsid"] + k},
                          layout=layout)
        paths.append(str(path))
    bad = tmp_path / "bad.fits"
    bad.write_text("not FITS\n" * 400)
    paths.insert(1, str(bad))
    sent = lamost_batch.process_file_batch(lamost_batch.FileBatch(paths, {}))
    shared = lamost_batch.SharedRows(10, GRID.size)
    try:
        res = lamost_batch.process_file_batch(lamost_batch.FileBatch(paths, {}, (shared.key, 5)))
        assert "flux" not in res and res["shared"] == (shared.key, 5, 3)
        res = lamost_batch.attach_shared_rows(res)
        assert np.shares_memory(res["flux"], shared.flux)
        assert [r["status"] for r in res["records"]] == ["ok", "skipped", "ok", "ok"]
        assert [r.get("slot") for r in res["records"]] == [r.get("slot") for r in sent["records"]]
        for name in ("flux", "ivar", "mask"):
            np.testing.assert_array_equal(res[name], sent[name])
        # a batch that would overrun its slots sends its arrays instead
        over = lamost_batch.process_file_batch(lamost_batch.FileBatch(paths, {}, (shared.key, 8)))
        assert "shared" not in over and over["flux"].shape == (3, GRID.size)
    finally:
        shared.close()
    # a key this process does not hold (a worker elsewhere): the arrays are sent
    gone = lamost_batch.process_file_batch(lamost_batch.FileBatch(paths, {}, (shared.key, 0)))
    np.testing.assert_array_equal(gone["ivar"], sent["ivar"])


def _gzip_of_zeros(path: Path, n_bytes: int) -> Path:
    """A gzip bomb: ``n_bytes`` of zeros in a few kB (written in pieces, never whole)."""
    piece = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=9) as fh:
        for _ in range(n_bytes >> 20):
            fh.write(piece)
    return path


def test_gzip_bomb_is_skipped_after_inflating_no_more_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that inflates past ``max_bytes`` is skipped with a reason naming the limit,
    and the inflater is never asked for (nor returns) more than the limit + 1 byte."""
    bomb = _gzip_of_zeros(tmp_path / "bomb.fits.gz", 16 << 20)
    assert bomb.stat().st_size < 100_000
    produced: list[int] = []
    real = lamost._inflate.decompressobj

    class Spy:
        def __init__(self, wbits: int) -> None:
            self._d = real(wbits)

        def decompress(self, data: bytes, *limit: int) -> bytes:
            out = self._d.decompress(data, *limit)
            produced.append(len(out))
            return out

        def __getattr__(self, name: str) -> object:
            return getattr(self._d, name)

    monkeypatch.setattr(lamost._inflate, "decompressobj", Spy)
    rec = lamost_batch.process_file(str(bomb), max_bytes=1 << 20)
    assert rec["status"] == "skipped"
    assert "above the limit of 1 MiB" in rec["reason"] and "max_decompressed_mib" in \
        rec["reason"]
    assert produced and sum(produced) <= (1 << 20) + 1
    # a plain file above the limit is skipped before it is read; below it, read as usual
    good = _good_file(tmp_path)
    small = lamost_batch.process_file(str(good), max_bytes=good.stat().st_size - 1)
    assert small["status"] == "skipped" and "file size" in small["reason"]
    assert lamost_batch.process_file(str(good), max_bytes=1 << 20)["status"] == "ok"


def test_multi_member_gzip_and_padding_still_read(tmp_path: Path) -> None:
    """The streamed inflate keeps what gzip accepts: several members, zero padding."""
    raw = _good_file(tmp_path).read_bytes()
    half = len(raw) // 2
    two = tmp_path / "two.fits.gz"
    two.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]) + bytes(512))
    np.testing.assert_array_equal(read_lamost(two).flux, read_lamost(tmp_path / "good.fits").flux)
    junk = tmp_path / "junk.fits.gz"
    junk.write_bytes(gzip.compress(raw) + b"junk")
    with pytest.raises(LamostFormatError, match="junk.fits.gz: truncated or corrupt gzip"):
        read_lamost(junk)


def test_astropy_reader_hands_on_its_warnings_with_the_path(tmp_path: Path) -> None:
    """The astropy route records warnings only to find truncation; any other warning
    (here: bytes after the last HDU) reaches the caller, naming the file."""
    import warnings

    flux, ivar, mask = _spectrum(1)
    path = tmp_path / "padded.fits"
    write_lamost_fits(path, flux, ivar, mask, META)
    raw = path.read_bytes() + b"\0" * 100
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = lamost.parse_lamost(raw, str(path), fast=False)
    padding = [w for w in caught if "padding" in str(w.message)]
    assert padding and str(padding[0].message).startswith(str(path))
    np.testing.assert_array_equal(spec.flux, flux)
