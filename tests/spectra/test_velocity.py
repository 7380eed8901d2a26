"""The rest frame refined against the PCA reconstruction (issue 15 item 2, ``[spectral]
refine_rv``): a spectrum made from the basis and shifted by a known velocity with an
independent resampler (a cubic spline on the log-lambda pixel index, not the Fourier shift
under test) gives back that velocity within its error, its coefficients move back to the
unshifted ones, and the interstellar windows (observer's frame) do not enter the fit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from obpipe.spectra import pca, velocity
from obpipe.spectra.bases import fit_pca_model
from obpipe.spectra.grid import velocity_per_pixel_kms, wavelength_grid
from obpipe.spectra.options import SpectralConfig
from obpipe.stages import pca as pca_stage

WAVE = wavelength_grid()
ISM = pca.interstellar_mask()
VPIX = velocity_per_pixel_kms()
#: stellar lines (vacuum AA) inside the clean windows: H-epsilon, He I 4026 / 4144 / 4388 /
#: 4471, He II 4686, H8, He I 4713 (its red wing under the 4726.8 AA DIB's window)
LINES_AA = (3890.2, 3971.2, 4027.3, 4144.9, 4389.2, 4472.7, 4687.0, 4714.4)


def _stars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free normalised spectra whose lines vary in depth and width from star to star."""
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.1, 0.4, (n, len(LINES_AA)))
    width = rng.uniform(2.0, 3.5, n)  # Gaussian sigma, AA (~2-3.5 pixels here)
    flux = np.ones((n, WAVE.size))
    for k, lam in enumerate(LINES_AA):
        flux -= depth[:, k:k + 1] * np.exp(-0.5 * ((WAVE[None, :] - lam) / width[:, None]) ** 2)
    return flux, np.full(flux.shape, 1e4)


@pytest.fixture(scope="module")
def model() -> pca.PCAModel:
    flux, ivar = _stars(300, 0)
    rng = np.random.default_rng(1)
    flux = flux + rng.normal(0.0, 0.003, flux.shape)
    fitted, _ = fit_pca_model(flux.astype(np.float32), ivar.astype(np.float32),
                              np.full(flux.shape[0], 300.0), SpectralConfig(n_components=10),
                              {"min_snr": 50.0})
    return fitted


def _spline_shift(rows: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """out(x) = in(x - shift): a cubic spline through each row on the pixel index."""
    x = np.arange(rows.shape[1], dtype=float)
    return np.array([CubicSpline(x, r)(x - s) for r, s in zip(rows, shift_px, strict=True)])


def _shifted_from_basis(model: pca.PCAModel, n: int, dv_kms: np.ndarray, noise: float,
                        seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows made from the clean basis (its reconstruction of unshifted stars), shifted by
    ``dv_kms``, plus Gaussian noise: (flux, ivar, coefficients of the unshifted rows, the
    unshifted rows)."""
    flux, ivar = _stars(n, seed)
    basis = model.clean
    c0 = basis.project(flux.astype(np.float32), ivar.astype(np.float32))
    rest = basis.reconstruct(c0).astype(np.float64)
    shifted = _spline_shift(rest, dv_kms / VPIX)
    rng = np.random.default_rng(seed + 1)
    shifted += rng.normal(0.0, noise, shifted.shape)
    iv = np.full(shifted.shape, 1.0 / noise**2)
    iv[:, :4] = 0.0  # the spline's ends: read beyond the grid
    iv[:, -4:] = 0.0
    return shifted.astype(np.float32), iv.astype(np.float32), c0, rest


def test_velocity_recovered_within_its_error(model: pca.PCAModel) -> None:
    dv_true = np.array([-60.0, -35.0, -20.0, -8.0, 0.0, 8.0, 20.0, 35.0, 60.0, 90.0])
    flux, ivar, _, _ = _shifted_from_basis(model, dv_true.size, dv_true, 0.02, 3)
    pixels = model.clean.pixels & ~ISM
    _, _, dv, err = velocity.refine_rest_frame(model.clean, flux, ivar, pixels, exclude=ISM)
    assert np.all(np.isfinite(dv)) and np.all(err > 0)
    pull = (dv - dv_true) / err
    assert np.all(np.abs(pull) < 4.0), (dv, err)
    assert np.sqrt(np.mean(pull**2)) < 2.0, pull
    # a real measurement: the error is far below the shifts
    assert np.median(err) < 5.0, err
    # and the one-step estimate alone has the right sign and size
    recon = model.clean.reconstruct(model.clean.project(flux, ivar, exclude=ISM))
    dv1, err1, chi2 = velocity.residual_velocity(flux, ivar, recon, pixels,
                                                 model.clean.sigma_model)
    big = np.abs(dv_true) >= 20
    assert np.all(np.sign(dv1[big]) == np.sign(dv_true[big]))
    assert np.all(np.isfinite(chi2))


def test_refined_coefficients_closer_to_the_unshifted_ones(model: pca.PCAModel) -> None:
    dv_true = np.full(8, 60.0) * np.where(np.arange(8) % 2, 1.0, -1.0)
    noise = 0.002
    flux, ivar, c0, rest = _shifted_from_basis(model, dv_true.size, dv_true, noise, 5)
    basis = model.clean
    before = basis.project(flux, ivar, exclude=ISM)
    f, iv, dv, _ = velocity.refine_rest_frame(basis, flux, ivar, basis.pixels & ~ISM,
                                              exclude=ISM)
    after = basis.project(f, iv, exclude=ISM)
    # the floor: the unshifted rows with the same noise level
    noisy_rest = rest + np.random.default_rng(11).normal(0.0, noise, rest.shape)
    floor = basis.project(noisy_rest.astype(np.float32), ivar, exclude=ISM)
    scale = np.sqrt(basis.variance)
    dist = {k: np.mean(np.sqrt(np.sum(((c - c0) / scale) ** 2, axis=1)))
            for k, c in (("before", before), ("after", after), ("floor", floor))}
    assert dist["after"] < 0.6 * dist["before"], dist
    assert dist["after"] < 1.5 * dist["floor"], dist
    # the shifted-back flux matches the unshifted row where it is usable
    good = iv > 0
    assert np.sqrt(np.mean((f - rest)[good] ** 2)) < 2 * noise


def test_interstellar_windows_ignored(model: pca.PCAModel) -> None:
    dv_true = np.array([-30.0, 25.0, 50.0])
    flux, ivar, _, _ = _shifted_from_basis(model, dv_true.size, dv_true, 0.01, 7)
    # observer's frame, not shifted with the star: the window centres of Ca II K, the DIBs
    # 4428, 4501.8 and 4726.8 (on He I 4713's wing)
    centres = [0.5 * (lo + hi) for lo, hi in pca.INTERSTELLAR_WINDOWS_AA]
    ism_lines = np.zeros(WAVE.size)
    for near, sig, depth in ((4429.0, 7.0, 0.15), (3934.8, 1.5, 0.5), (4502.9, 1.5, 0.3),
                             (4728.1, 1.5, 0.4)):
        lam = min(centres, key=lambda c: abs(c - near))
        ism_lines -= depth * np.exp(-0.5 * ((WAVE - lam) / sig) ** 2)
    with_ism = (flux + ism_lines).astype(np.float32)
    basis = model.clean
    pixels = basis.pixels & ~ISM
    _, _, dv_clean, err = velocity.refine_rest_frame(basis, flux, ivar, pixels, exclude=ISM)
    _, _, dv_ism, _ = velocity.refine_rest_frame(basis, with_ism, ivar, pixels, exclude=ISM)
    assert np.all(np.abs(dv_ism - dv_clean) < 0.05 * err), (dv_clean, dv_ism, err)
    # the 4726.8 DIB moved 9 AA blueward, out of its window onto He I 4713's wing, does move
    # the measurement (the check above can fail)
    dib = min(centres, key=lambda c: abs(c - 4728.1))
    outside = (flux - 0.4 * np.exp(-0.5 * ((WAVE - dib + 9.0) / 1.5) ** 2)).astype(np.float32)
    _, _, dv_out, _ = velocity.refine_rest_frame(basis, outside, ivar, pixels, exclude=ISM)
    assert np.max(np.abs(dv_out - dv_clean)) > 0.5 * np.min(err), (dv_clean, dv_out, err)


def test_shift_keeps_masks_and_edges() -> None:
    n_pix = WAVE.size
    flux = np.ones((4, n_pix), dtype=np.float32)
    ivar = np.full((4, n_pix), 4.0, dtype=np.float32)
    ivar[:, 1000] = 0.0
    flux[:, 1000] = np.nan
    fill = np.ones((4, n_pix), dtype=np.float32)
    f, iv = velocity.shift_spectra(flux, ivar, np.array([0.4, 0.6, -1.0, 0.0]), fill)
    # the masked pixel filled: no NaN spreads, and a flat row stays flat (no ringing)
    np.testing.assert_allclose(f[:3], 1.0, atol=1e-5)
    # the mask moves with the nearest source pixel and stays one pixel wide
    assert np.flatnonzero(iv[0] == 0).tolist() == [1000]  # +0.4 px: nearest is itself
    assert np.flatnonzero(iv[1] == 0).tolist() == [0, 1001]  # +0.6 px: pixel 0 reads -1
    assert np.flatnonzero(iv[2] == 0).tolist() == [999, n_pix - 1]  # -1 px
    np.testing.assert_allclose(iv[:3][iv[:3] > 0], 4.0)
    # no shift: unchanged
    np.testing.assert_array_equal(iv[3], ivar[3])
    # a feature moves by the shift: a narrow line, centroid after a 0.3 px shift
    line = 1.0 - 0.5 * np.exp(-0.5 * ((np.arange(n_pix) - 2000.0) / 1.5) ** 2)
    moved, _ = velocity.shift_spectra(line[None, :].astype(np.float32), ivar[:1], np.array([0.3]),
                                      fill[:1])
    depth = 1.0 - moved[0]
    centroid = np.sum(np.arange(n_pix) * depth) / np.sum(depth)
    assert centroid == pytest.approx(2000.3, abs=0.03)  # Lanczos: ~0.02 px (1.4 km/s)


def test_spike_stays_local() -> None:
    """An artefact of a broken spectrum (a spike of 100 in a good pixel) moves with the
    shift and stays within the kernel's three pixels: the quality statistics still see
    it, and the rest of the row is untouched (a Fourier shift rings over the whole row)."""
    n_pix = WAVE.size
    flux = np.ones((1, n_pix), dtype=np.float32)
    flux[0, 2000] = 100.0
    ivar = np.full((1, n_pix), 4.0, dtype=np.float32)
    f, _ = velocity.shift_spectra(flux, ivar, np.array([0.4]), np.ones_like(flux))
    touched = np.flatnonzero(np.abs(f[0] - 1.0) > 1e-4)
    assert touched.min() >= 2000 - 3 and touched.max() <= 2000 + 3, touched
    assert f[0, 2000] > 50  # still a spike where the quality statistics look


def test_stage_block_records_the_refined_rv(model: pca.PCAModel, tmp_path) -> None:
    path = str(tmp_path / "pca_model.npz")
    model.save(path)
    dv_true = np.array([-40.0, 0.0, 30.0, 30.0])
    flux, ivar, _, _ = _shifted_from_basis(model, dv_true.size, dv_true, 0.01, 9)
    rv = np.array([10.0, -5.0, 100.0, 100.0], dtype=np.float32)
    snr = np.array([10.0, 20.0, np.nan, 80.0], dtype=np.float32)  # the last at >= 50
    inputs = {"norm_flux": flux, "norm_ivar": ivar, "rv": rv, "snr_g": snr}
    kw = {"model_path": path, "prior": True, "exclude_interstellar": True}
    on = pca_stage.block(inputs, **kw, refine_rv=True, refine_rv_max_snr=50.0)
    off = pca_stage.block(inputs, **kw)
    assert set(pca_stage.OUTPUTS) == set(on) == set(off)
    assert np.all(np.isnan(off["rv_refined_kms"])) and np.all(np.isnan(off["rv_refined_err_kms"]))
    pull = (on["rv_refined_kms"][:3] - (rv + dv_true)[:3]) / on["rv_refined_err_kms"][:3]
    assert np.all(np.abs(pull) < 4.0), (on["rv_refined_kms"], on["rv_refined_err_kms"])
    # the products are the refined spectrum's: the shifted rows' reduced chi2 falls
    assert np.all(on["quality_chi2"][[0, 2]] < off["quality_chi2"][[0, 2]])
    # at S/N >= refine_rv_max_snr: the catalogue frame, as with the option off
    assert np.isnan(on["rv_refined_kms"][3]) and np.isnan(on["rv_refined_err_kms"][3])
    for name in ("pca_coeff", "pca_coeff_full", "quality_chi2"):
        np.testing.assert_array_equal(on[name][3], off[name][3])
    everyone = pca_stage.block(inputs, **kw, refine_rv=True)  # default: no S/N limit
    assert np.isfinite(everyone["rv_refined_kms"]).all()
