"""PCA bases and the weighted projection (Sec. 3): numpy science without Dask stages."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.config import SimulationConfig
from obpipe.simulate import spectra, stars
from obpipe.spectra import emission, pca
from obpipe.spectra.grid import wavelength_grid

WAVE = wavelength_grid()
NOISE = 0.01  # S/N 100 in continuum units
K = 30


def _spectra(n: int, seed: int) -> np.ndarray:
    cfg = SimulationConfig(n_stars=n, binary_fraction=0.0, emission_fraction=0.0,
                           subdwarf_fraction=0.0, white_dwarf_fraction=0.0, seed=seed)
    pop = stars.sample_population(cfg, np.random.default_rng(seed))
    return spectra.normalized_spectrum(WAVE, pop["teff"], pop["logg"], pop["feh"],
                                       pop["vsini"])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    train_true = _spectra(700, 1)
    test_true = _spectra(150, 2)
    train = train_true + rng.normal(0, NOISE, train_true.shape)
    test = test_true + rng.normal(0, NOISE, test_true.shape)
    ivar = np.full(train.shape, NOISE**-2)
    full = pca.fit_basis("full", train, ivar, np.ones(WAVE.size, bool), K)
    clean = pca.fit_basis("clean", train, ivar, pca.window_mask(pca.CLEAN_WINDOWS_AA), K)
    return {"train": train, "test": test, "test_true": test_true, "full": full,
            "clean": clean}


def test_components_are_orthonormal(data) -> None:
    phi = data["full"].components
    assert np.allclose(phi @ phi.T, np.eye(K), atol=1e-5)
    assert np.all(np.diff(data["full"].variance) <= 1e-9)


def test_reconstruction_within_noise(data) -> None:
    basis = data["full"]
    ivar = np.full(data["test"].shape, NOISE**-2)
    recon = basis.reconstruct(basis.project(data["test"], ivar))
    chi2 = np.mean((data["test"] - recon) ** 2 / (NOISE**2 + basis.sigma_model**2), axis=1)
    assert 0.7 < np.median(chi2) < 1.5
    err = np.sqrt(np.mean((recon - data["test_true"]) ** 2, axis=1))
    assert np.median(err) < NOISE, "the reconstruction denoises"


def test_clean_window_basis_reconstructs_the_whole_spectrum(data) -> None:
    basis = data["clean"]
    ivar = np.full(data["test"].shape, NOISE**-2)
    recon = basis.reconstruct(basis.project(data["test"], ivar))
    halpha = (WAVE > 6540) & (WAVE < 6590)  # never seen by the clean-window projection
    err = np.sqrt(np.mean((recon[:, halpha] - data["test_true"][:, halpha]) ** 2))
    depth = np.mean(1 - data["test_true"][:, halpha])
    assert err < 0.25 * depth


def test_weighted_projection_beats_dot_product_with_masked_pixels(data) -> None:
    basis = data["full"]
    rng = np.random.default_rng(5)
    flux = data["test"].copy()
    ivar = np.full(flux.shape, NOISE**-2)
    bad = rng.random(flux.shape) < 0.10
    # gaps as in real spectra: contiguous runs too
    for row in range(0, flux.shape[0], 3):
        start = rng.integers(0, WAVE.size - 200)
        bad[row, start:start + 200] = True
    flux_nan = np.where(bad, np.nan, flux)
    ivar[bad] = 0.0
    weighted = basis.reconstruct(basis.project(flux_nan, ivar))
    plain = basis.reconstruct(basis.project_plain(flux_nan))
    err_w = np.sqrt(np.mean((weighted - data["test_true"]) ** 2, axis=1))
    err_p = np.sqrt(np.mean((plain - data["test_true"]) ** 2, axis=1))
    assert np.median(err_w) < 0.8 * np.median(err_p), (np.median(err_w), np.median(err_p))
    gap_rows = np.arange(0, flux.shape[0], 3)
    assert np.median(err_w[gap_rows]) < 0.8 * np.median(err_p[gap_rows])
    # and with no masked pixels the weighted projection is no worse
    full_ivar = np.full(flux.shape, NOISE**-2)
    e_w = np.median(np.sqrt(np.mean((basis.reconstruct(basis.project(flux, full_ivar))
                                     - data["test_true"]) ** 2, axis=1)))
    e_p = np.median(np.sqrt(np.mean((basis.reconstruct(basis.project_plain(flux))
                                     - data["test_true"]) ** 2, axis=1)))
    assert e_w <= 1.05 * e_p


def test_model_file_roundtrip(data, tmp_path) -> None:
    model = pca.PCAModel(full=data["full"], clean=data["clean"], meta={"k": K})
    path = str(tmp_path / "pca.npz")
    model.save(path)
    loaded = pca.PCAModel.load(path)
    ivar = np.full(data["test"][:5].shape, NOISE**-2)
    assert np.allclose(loaded.clean.project(data["test"][:5], ivar),
                       model.clean.project(data["test"][:5], ivar))
    assert loaded.meta == {"k": K}
    with np.load(path, allow_pickle=False) as raw:
        assert "clean_components" in raw


def test_injected_halpha_emission_is_flagged_and_sub_noise_is_not(data) -> None:
    basis = data["clean"]
    n = data["test"].shape[0]
    ew = np.zeros(n)
    ew[:50] = -8.0  # clear emission
    ew[50:100] = -0.02  # far below the noise
    em = spectra.emission_spectrum(WAVE, np.where(ew < 0, "be_disc", "none").astype(object), ew,
                                   np.full(n, 200.0), np.zeros(n), 1800.0)
    flux = data["test"] + em
    ivar = np.full(flux.shape, NOISE**-2)
    recon = basis.reconstruct(basis.project(flux, ivar))
    stats = emission.residual_statistics(flux, ivar, recon, basis.sigma_model, basis.pixels)
    thr = emission.choose_thresholds(stats, np.full(n, 100.0))
    flags = emission.flag(stats, np.full(n, 100.0), thr)
    assert np.all(flags["em_flag"][:50] == 1)
    assert np.mean(flags["em_flag"][50:] == 1) < 0.03
    assert thr.emission_significance >= 3.0


def test_dead_segment_is_flagged_broken(data) -> None:
    basis = data["clean"]
    flux = data["test"].copy()
    flux[:4, 2000:2300] = 0.02
    ivar = np.full(flux.shape, NOISE**-2)
    recon = basis.reconstruct(basis.project(flux, ivar))
    stats = emission.residual_statistics(flux, ivar, recon, basis.sigma_model, basis.pixels)
    snr = np.full(flux.shape[0], 100.0)
    flags = emission.flag(stats, snr, emission.choose_thresholds(stats, snr))
    broken = (flags["quality_flags"] & emission.QUALITY_BITS["broken"]) > 0
    assert broken[:4].all()
    assert broken[4:].sum() <= 2
