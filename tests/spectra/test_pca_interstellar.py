"""The pca stage's interstellar-blind projection (issue 15 item 2, ``[spectral]
exclude_interstellar_lines``): the interstellar windows carry zero weight in the weighted
projection and the residual statistics, so flux inside them cannot move ``pca_coeff`` /
``pca_coeff_full`` (the networks' inputs), while a stellar line still does."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.spectra import pca
from obpipe.spectra.bases import fit_pca_model
from obpipe.spectra.grid import wavelength_grid
from obpipe.spectra.options import SpectralConfig
from obpipe.stages import pca as pca_stage

WAVE = wavelength_grid()
ISM = pca.interstellar_mask()


def _gauss(centre: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((WAVE - centre) / sigma) ** 2)


def _spectra(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised spectra: stellar lines of varying depth, interstellar lines (the 4428
    DIB, Ca II K, DIB 5780) varying independently, noise, a few masked pixels."""
    rng = np.random.default_rng(seed)
    lum, ebv = rng.uniform(0, 1, n), rng.uniform(0, 2, n)
    flux = np.ones((n, WAVE.size))
    for k, lam in enumerate((4102.9, 4341.7, 4472.7, 4862.7, 5877.2, 6564.6)):
        flux -= (0.1 + 0.3 * lum * (1 + 0.2 * k))[:, None] * _gauss(lam, 3.0 + 6 * (k % 2))
    for lam, sig in ((4429.0, 7.0), (3934.8, 1.2), (5781.0, 1.5)):
        flux -= (0.05 * ebv)[:, None] * _gauss(lam, sig)
    flux += rng.normal(0, 0.01, flux.shape)
    ivar = np.full(flux.shape, 1e4)
    ivar[1::2, 940:945] = 0.0  # ~4600 AA: a clean window, no interstellar line
    return flux.astype(np.float32), ivar.astype(np.float32)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    flux, ivar = _spectra(200, 0)
    cfg = SpectralConfig(n_components=12)
    model, _ = fit_pca_model(flux, ivar, np.full(flux.shape[0], 100.0), cfg,
                             {"min_snr": 50.0})
    path = str(tmp_path_factory.mktemp("pca_ism") / "pca_model.npz")
    model.save(path)
    return path


def _exact(basis: pca.PCABasis, flux: np.ndarray, ivar: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """The estimator the projection approximates (module doc of obpipe.spectra.pca), in
    float64 with the exact weights: coefficients and their standard errors per row."""
    phi = basis.components.astype(np.float64)
    prior = np.diag(1.0 / basis.variance)
    z, w = basis.standardise(flux, ivar)
    coeff, sigma = [], []
    for zi, wi in zip(z.astype(np.float64), w.astype(np.float64), strict=True):
        a = (phi * wi) @ phi.T + prior
        coeff.append(np.linalg.solve(a, phi @ (wi * zi)))
        sigma.append(np.sqrt(np.diag(np.linalg.inv(a))))
    return np.array(coeff), np.array(sigma)


def test_projection_without_windows_is_the_zero_weight_estimator(model_path: str) -> None:
    model = pca.PCAModel.load(model_path)
    flux, ivar = _spectra(20, 1)
    blind = pca.interstellar_blind_ivar(ivar)
    for basis in (model.full, model.clean):
        exact, sigma = _exact(basis, flux, blind)
        fast = basis.project(flux, ivar, exclude=ISM)
        slow = basis.project(flux, blind)  # the windows as masked pixels
        err = {k: np.median(np.sqrt(np.mean(((v - exact) / sigma) ** 2, axis=1)))
               for k, v in (("fast", fast), ("slow", slow))}
        # within a small fraction of the coefficients' errors, as close as masking them
        assert err["fast"] < 0.1 and err["fast"] <= 1.5 * err["slow"] + 1e-3, err
        # and not the projection of every pixel (the windows hold lines)
        plain = np.median(np.sqrt(np.mean(((basis.project(flux, ivar) - exact) / sigma) ** 2,
                                          axis=1)))
        assert plain > 5 * err["fast"] + 0.05, (plain, err)


def test_flux_in_interstellar_windows_cannot_move_pca_coeff(model_path: str) -> None:
    flux, ivar = _spectra(8, 2)

    def stage(f: np.ndarray, blind: bool) -> dict[str, np.ndarray]:
        return pca_stage.block({"norm_flux": f, "norm_ivar": ivar}, model_path=model_path,
                               prior=True, exclude_interstellar=blind)

    base = stage(flux, True)
    for lam, depth, width in ((4429.0, 0.3, 6.0), (3934.8, 0.5, 2.0), (5781.0, 0.4, 2.0)):
        deeper = np.where(ISM, flux - depth * _gauss(lam, width), flux).astype(np.float32)
        moved = stage(deeper, True)
        for name in ("pca_coeff", "pca_coeff_full", "quality_chi2", "window_chi2_max",
                     "clean_fraction"):
            np.testing.assert_array_equal(moved[name], base[name], err_msg=f"{lam} {name}")
        # control: the paper's projection reads the line (this test can fail)
        seen, read = stage(flux, False), stage(deeper, False)
        for name in ("pca_coeff", "pca_coeff_full"):
            assert np.abs(read[name] - seen[name]).max() > 1e-3, (lam, name)
    # a stellar line outside the windows (He I 4472) does move both
    stellar = stage((flux - 0.3 * _gauss(4472.7, 3.0)).astype(np.float32), True)
    for name in ("pca_coeff", "pca_coeff_full"):
        assert np.abs(stellar[name] - base[name]).max() > 1e-3, name
    # clean_fraction: the usable share of the clean pixels outside the windows
    clean = pca.PCAModel.load(model_path).clean.pixels
    assert clean[940:945].all() and not ISM[940:945].any()
    assert np.all(base["clean_fraction"][::2] == 1.0)
    np.testing.assert_allclose(base["clean_fraction"][1::2], 1 - 5 / (clean & ~ISM).sum(),
                               rtol=1e-6)
    np.testing.assert_allclose(stage(flux, False)["clean_fraction"][1::2],
                               1 - 5 / clean.sum(), rtol=1e-6)


def test_option_default_on() -> None:
    assert SpectralConfig().exclude_interstellar_lines is True


def test_pca_stage_records_the_projection(small_spectral_products: str) -> None:
    """The spectral stages at their defaults write interstellar-blind coefficients and say
    so, where the luminosity stage looks (the networks must match it)."""
    from obpipe.engine.blockwise import open_products
    from obpipe.stages.luminosity import products_interstellar_blind

    prods = open_products(small_spectral_products)
    for name in ("pca_coeff", "pca_coeff_full"):
        assert prods[name].attrs[pca_stage.INTERSTELLAR_ATTR] == 1, name
    assert products_interstellar_blind(prods) is True
