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
    # a larger set for false-flag rates of a few per cent: at 100 spectra the binomial
    # noise of a 1.5 % rate is ~1.2 %
    rates_true = _spectra(400, 3)
    rates = rates_true + rng.normal(0, NOISE, rates_true.shape)
    return {"train": train, "test": test, "test_true": test_true, "full": full,
            "clean": clean, "rates": rates}


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
    assert loaded.meta["k"] == K
    assert "obpipe_version" in loaded.meta and "training_survey" in loaded.meta
    with np.load(path, allow_pickle=False) as raw:
        assert "clean_components" in raw


def test_injected_halpha_emission_is_flagged_and_sub_noise_is_not(data) -> None:
    basis = data["clean"]
    n = data["rates"].shape[0]
    ew = np.zeros(n)
    ew[:50] = -8.0  # clear emission
    ew[50:100] = -0.02  # far below the noise
    em = spectra.emission_spectrum(WAVE, np.where(ew < 0, "be_disc", "none").astype(object), ew,
                                   np.full(n, 200.0), np.zeros(n), 1800.0)
    flux = data["rates"] + em
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
    # false alarms among the 146 clean spectra: at most ~2 % (3 with the mock of a021836:
    # an A-type interloper, a 344 km/s rotator and a 35 kK star, none of them broken)
    assert broken[4:].sum() <= 0.021 * broken[4:].size


# ---- the fast projection against a straightforward float64 reference ------------------
def _reference_projection(basis: pca.PCABasis, flux: np.ndarray, ivar: np.ndarray,
                          prior: bool) -> tuple[np.ndarray, np.ndarray]:
    """The module's estimator written plainly, one spectrum at a time, in float64:
    W_eff = the smooth weight (J bumps fitted to the row, unusable pixels filled with the
    row's median weight), the exact weight where the two differ by more than a factor 3;
    c = (Phi W_eff Phi^T + Lambda^-1)^-1 Phi W z, one dense K x K solve per spectrum.
    Returns c and its standard errors."""
    idx = np.flatnonzero(basis.pixels).astype(float)
    centres = np.linspace(idx.min(), idx.max(), pca._N_WEIGHT_BUMPS)
    width = (idx.max() - idx.min()) / (pca._N_WEIGHT_BUMPS - 1)
    g = np.exp(-0.5 * ((idx[:, None] - centres[None, :]) / width) ** 2)
    g = g * basis.weight_template[:, None]
    pinv = np.linalg.pinv(g)
    phi = basis.components.astype(np.float64)
    k = phi.shape[0]
    coeff, err = np.full((flux.shape[0], k), np.nan), np.full((flux.shape[0], k), np.nan)
    for i in range(flux.shape[0]):
        f = flux[i, basis.pixels].astype(np.float64)
        iv = ivar[i, basis.pixels].astype(np.float64)
        good = (iv > 0) & np.isfinite(f)
        if not good.any():
            continue
        z = np.where(good, (f - basis.mean) / basis.std, 0.0)
        w = np.where(good, iv * basis.std**2, 0.0)
        filled = np.where(good, w, np.median(w[good]))
        raw = g @ (pinv @ filled)
        w_smooth = np.maximum(raw, 1e-12)
        deviant = (w > 3 * w_smooth) | (3 * w < w_smooth)
        # as the module does: the smooth part enters with the bumps' own (raw) value, the
        # correction with the floored one, so where the bump fit goes below 1e-12 the
        # pixel's weight is w + raw - 1e-12 rather than w
        w_eff = np.where(deviant, w + raw - w_smooth, raw)
        gram = (phi * w_eff) @ phi.T
        gram += np.diag(1.0 / basis.variance) if prior else 1e-6 * np.eye(k)
        coeff[i] = np.linalg.solve(gram, phi @ (w * z))
        err[i] = np.sqrt(np.diag(np.linalg.inv(gram)))
    return coeff, err


@pytest.mark.parametrize("prior", [True, False])
def test_projection_matches_float64_reference(data, prior) -> None:
    """float32 BLAS, bucketed low-rank corrections and batched Cholesky give the plain
    float64 estimator's coefficients to float32 precision: with realistic weights (noise
    varying along the row and between rows), isolated bad pixels, masked runs longer than
    the batched corrections take (> 64 pixels), an empty row, and a NaN flux."""
    rng = np.random.default_rng(11)
    flux = data["test"][:40].copy()
    shape = 1.0 + 0.5 * np.sin(WAVE / 700.0)  # ivar varying along the row
    ivar = (NOISE**-2 * shape[None, :] * rng.uniform(0.2, 3.0, (flux.shape[0], 1))
            * rng.uniform(0.7, 1.3, flux.shape))
    bad = rng.random(flux.shape) < 0.02
    bad[::4, 500:700] = True
    bad[3] = True
    ivar[bad] = 0.0
    flux[5, 100] = np.nan
    for basis in (data["full"], data["clean"]):
        ref, err = _reference_projection(basis, flux, ivar, prior)
        got = basis.project(flux, ivar, prior=prior)
        assert np.array_equal(np.isnan(got), np.isnan(ref))
        assert np.isnan(got[3]).all()
        ok = np.isfinite(ref)
        pull = np.abs(got - ref)[ok] / err[ok]
        assert pull.max() < 0.01, (basis.name, pull.max())  # 0.003 here, as before (float32)
        rel = np.abs(got - ref)[ok] / np.maximum(np.abs(ref[ok]), 1e-3)
        assert np.median(rel) < 3e-5, (basis.name, np.median(rel))
        rec, rec_ref = basis.reconstruct(got), basis.reconstruct(np.nan_to_num(ref))
        assert np.nanmax(np.abs(rec - rec_ref)[ok[:, 0]]) < 1e-4


def test_reconstruction_matches_float64_formula(data) -> None:
    basis = data["clean"]
    coeff = np.random.default_rng(2).normal(0.0, np.sqrt(basis.variance), (20, K))
    coeff[0] = np.nan
    expected = basis.full_mean + basis.full_std * (coeff @ basis.to_full)
    got = basis.reconstruct(coeff)
    assert got.dtype == np.float32
    assert np.isnan(got[0]).all()
    assert np.allclose(got[1:], expected[1:], rtol=0, atol=2e-6)


def test_row_median_is_nanmedian() -> None:
    rng = np.random.default_rng(4)
    for p in (1, 7, 64, 601, 3909):
        x = rng.random((30, p)).astype(np.float32)
        x[::3] = np.round(x[::3] * 4)  # ties
        good = rng.random((30, p)) > rng.random((30, 1))
        good[0], good[1] = False, True
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            ref = np.nan_to_num(np.nanmedian(np.where(good, x, np.nan), axis=1))
        assert np.array_equal(pca._row_median(x, good), ref.astype(np.float32)), p


def test_solve_spd_falls_back_to_lu() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 6, 6)).astype(np.float32)
    gram = a @ np.swapaxes(a, 1, 2) + np.eye(6, dtype=np.float32)
    gram[1] = np.diag(np.arange(-3.0, 3.0) + 0.5)  # symmetric, not positive definite
    rhs = rng.normal(size=(3, 6)).astype(np.float32)
    x = pca._solve_spd(gram, rhs)
    assert np.allclose(np.einsum("nij,nj->ni", gram.astype(float), x), rhs, atol=1e-4)


def test_pca_statistics_independent_of_row_chunks(data) -> None:
    """The pca stage's numbers do not depend on how a block is cut into row chunks."""
    from obpipe.spectra.bases import pca_statistics

    model = pca.PCAModel(full=data["full"], clean=data["clean"])
    flux = data["test"][:30].astype(np.float32)
    ivar = np.full(flux.shape, NOISE**-2, dtype=np.float32)
    ivar[::5, 1500:1600] = 0.0
    one = pca_statistics(model, flux, ivar, rows_per_chunk=1000)
    split = pca_statistics(model, flux, ivar, rows_per_chunk=7)
    assert one.keys() == split.keys() and one["pca_coeff"].shape == (30, K)
    # float32 BLAS rounds differently for other matrix shapes: coefficients agree to
    # 0.1 % of their component's spread, the statistics to float32 precision
    for k, basis in (("pca_coeff", model.clean), ("pca_coeff_full", model.full)):
        assert np.all(np.abs(one[k] - split[k]) < 1e-3 * np.sqrt(basis.variance)), k
    for k in set(one) - {"pca_coeff", "pca_coeff_full"}:
        assert np.allclose(one[k], split[k], rtol=1e-4, atol=1e-6, equal_nan=True), k
    assert np.all(np.abs(one["pca_coeff"] - model.clean.project(flux, ivar))
                  < 1e-3 * np.sqrt(model.clean.variance))


def test_emission_threshold_ignores_spectra_the_basis_cannot_model() -> None:
    """A handful of spectra with a deep H-alpha residual *and* a poor fit everywhere else
    (white dwarfs in a small survey) must not decide the mirror estimate; without their
    poor fit (quality_chi2 ordinary) they would."""
    rng = np.random.default_rng(5)
    n = 400
    sig = rng.normal(0.0, 1.0, n)
    sig[:40] = rng.uniform(15.0, 200.0, 40)  # emission stars
    sig[40:44] = -30.0  # four unmodelled spectra
    quality = rng.lognormal(0.0, 0.1, n)
    stats = {"halpha_excess": sig * 0.01, "halpha_excess_err": np.full(n, 0.01),
             "window_chi2_max_wide": rng.lognormal(0.3, 0.1, n), "quality_chi2": quality}
    stats["window_chi2_max"] = stats["window_chi2_max_wide"]
    stats["clean_fraction"] = np.ones(n)
    snr = np.full(n, 300.0)
    fooled = emission.choose_thresholds(stats, snr)
    assert fooled.emission_significance > 30.0  # quality_chi2 ordinary: they count
    stats["quality_chi2"] = quality.copy()
    stats["quality_chi2"][40:44] = 60.0  # as the white dwarfs of the small mock
    robust = emission.choose_thresholds(stats, snr)
    assert robust.emission_significance < 5.0
    flags = emission.flag(stats, snr, robust)
    assert np.all(flags["em_flag"][:40] == 1)
