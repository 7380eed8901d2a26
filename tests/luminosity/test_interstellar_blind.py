"""Interstellar-blind network inputs (issue 15 item 2, ``exclude_interstellar_lines``):
the interstellar windows carry zero weight in the projection of both networks' inputs
and are out of their pixels, so flux there cannot move a prediction."""

from __future__ import annotations

import os

import numpy as np
import pytest

from obpipe.luminosity.network import (
    INTERSTELLAR_LINES_AIR_AA,
    INTERSTELLAR_WINDOWS_AA,
    MKsNetwork,
    interstellar_blind_ivar,
    interstellar_mask,
    wavelength_mask,
)
from obpipe.luminosity.network_training import TrainConfig
from obpipe.luminosity.training import TrainingConfig, train_with_binary_cleaning
from obpipe.spectra import pca
from obpipe.spectra.grid import wavelength_grid
from obpipe.spectra.indices import air_to_vacuum
from obpipe.stages.luminosity import luminosity_block, project_inputs

WAVE = wavelength_grid()
#: stellar lines (vacuum AA) and interstellar features (the 4428 DIB, Ca II K, DIB 5780)
STELLAR = (4102.9, 4341.7, 4472.7, 4862.7, 5877.2, 6564.6)
ISM = (4429.0, 3934.8, 5781.0)


def _gauss(centre: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((WAVE - centre) / sigma) ** 2)


def _spectra(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised spectra whose stellar lines vary with a luminosity-like parameter and
    whose interstellar lines vary independently (a reddening), with noise."""
    rng = np.random.default_rng(seed)
    lum = rng.uniform(0, 1, n)
    ebv = rng.uniform(0, 2, n)
    flux = np.ones((n, WAVE.size))
    for k, lam in enumerate(STELLAR):
        flux -= (0.1 + 0.3 * lum * (1 + 0.2 * k))[:, None] * _gauss(lam, 3.0 + 6 * (k % 2))
    for lam, sig in zip(ISM, (7.0, 1.2, 1.5), strict=True):
        flux -= (0.05 * ebv)[:, None] * _gauss(lam, sig)
    flux += rng.normal(0, 0.01, flux.shape)
    ivar = np.full(flux.shape, 1e4)
    return flux.astype(np.float32), ivar.astype(np.float32), lum


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A products directory holding only a PCA model fitted on the synthetic spectra."""
    root = tmp_path_factory.mktemp("ism_blind")
    flux, ivar, _ = _spectra(150, 0)
    full = pca.fit_basis("full", flux, ivar, np.ones(WAVE.size, bool), n_components=12)
    clean = pca.fit_basis("clean", flux, ivar, pca.window_mask(pca.CLEAN_WINDOWS_AA),
                          n_components=12)
    os.makedirs(root / "models")
    pca.PCAModel(full=full, clean=clean).save(str(root / "models" / "pca_model.npz"))
    return str(root)


def _random_network(kind: str, seed: int) -> MKsNetwork:
    rng = np.random.default_rng(seed)
    mask = wavelength_mask(kind, exclude_interstellar=True)
    n_in, h, k = int(mask.sum()), 8, 2
    w = {"l1.weight": rng.normal(0, 0.3, (k, n_in, h)), "l1.bias": np.zeros((k, h)),
         "l2.weight": rng.normal(0, 0.5, (k, h, h)), "l2.bias": np.zeros((k, h)),
         "out.weight": rng.normal(0, 1.0, (k, h)), "out.bias": np.zeros(k)}
    return MKsNetwork(w, np.ones(n_in), np.full(n_in, 0.05), -1.0, 1.0, mask,
                      {"kind": kind, "input_kind": "recon_flux",
                       "exclude_interstellar_lines": True})


def test_windows_cover_the_lines_and_leave_the_model_pixels() -> None:
    vac = air_to_vacuum(np.array(INTERSTELLAR_LINES_AIR_AA))
    ism = interstellar_mask()
    for lam in vac:  # every line's own pixel is in a window
        assert ism[np.argmin(np.abs(WAVE - lam))], lam
    assert ism[np.argmin(np.abs(WAVE - 4429.0))]  # the broad DIB
    assert all(lo < hi for lo, hi in INTERSTELLAR_WINDOWS_AA)
    for kind in ("a", "b"):
        plain, blind = wavelength_mask(kind), wavelength_mask(kind, exclude_interstellar=True)
        # the interstellar lines are inside both models' pixels without the option (Ca II
        # K, DIB 4428 and the 5780 / 5797 DIBs are in the clean windows of model b)...
        assert (plain & ism).sum() > 50, kind
        # ...and none with it, which removes nothing else
        assert not (blind & ism).any()
        assert np.array_equal(blind, plain & ~ism)
    iv = interstellar_blind_ivar(np.ones((2, WAVE.size), np.float32))
    assert np.all(iv[:, ism] == 0) and np.all(iv[:, ~ism] == 1)


def test_flux_in_interstellar_windows_cannot_move_the_prediction(products: str) -> None:
    flux, ivar, _ = _spectra(6, 1)
    paths = {}
    for kind, seed in (("a", 1), ("b", 2)):
        paths[kind] = os.path.join(products, "models", f"net_{kind}.safetensors")
        _random_network(kind, seed).save(paths[kind])
    inputs = {"em_flag": np.array([0, 0, 0, 1, 1, 1], np.int8), "snr_g": np.full(6, 80.0),
              "quality_flags": np.zeros(6, np.int16), "ebv": np.full(6, 1.0),
              "norm_flux": flux, "norm_ivar": ivar}

    def mks(f: np.ndarray) -> np.ndarray:
        out = luminosity_block({**inputs, "norm_flux": f}, tuple(sorted(paths.items())),
                               (("a", 0.25, 0.1), ("b", 0.3, 0.1)), "recon_flux",
                               products_dir=products)
        assert np.all(out["MKs_model"] == np.array([0, 0, 0, 1, 1, 1]))
        return out["MKs"]

    base = mks(flux)
    assert np.all(np.isfinite(base))
    with pytest.raises(ValueError, match="interstellar-blind.*norm_flux"):
        luminosity_block({k: v for k, v in inputs.items() if k != "norm_flux"},
                         tuple(sorted(paths.items())), (("a", 0.25, 0.1), ("b", 0.3, 0.1)),
                         "recon_flux", products_dir=products)
    for lam, depth in ((4429.0, 0.3), (3934.8, 0.5), (5781.0, 0.4)):
        deeper = flux - depth * _gauss(lam, 2.0 if lam != 4429.0 else 6.0)
        deeper[:, ~interstellar_mask()] = flux[:, ~interstellar_mask()]  # inside the window
        np.testing.assert_allclose(mks(deeper), base, atol=1e-5, err_msg=str(lam))
        # control: without the option the projection reads the line (the test can fail)
        for kind in ("a", "b"):
            seen = project_inputs(flux, ivar, kind, products)
            moved = project_inputs(deeper, ivar, kind, products)
            m = wavelength_mask(kind, exclude_interstellar=True)
            assert np.max(np.abs(moved - seen)[:, m]) > 1e-3, (lam, kind)
    # a stellar line in both models' pixels (He I 4472) does move it
    stellar = flux - 0.3 * _gauss(4472.7, 3.0)
    assert np.min(np.abs(mks(stellar) - base)) > 1e-3


def test_training_option_drops_the_windows_from_both_networks() -> None:
    flux, ivar, lum = _spectra(200, 3)
    n = lum.size
    rng = np.random.default_rng(4)
    mks = -3.0 + 3.0 * lum
    plx = np.full(n, 1.0)
    ks0 = mks + 10.0
    cfg = TrainingConfig(exclude_interstellar_lines=True, n_clean_iterations=0,
                         network=TrainConfig(max_epochs=3, n_members=2, loss="mag",
                                             n_components=20))
    res = train_with_binary_cleaning(
        {"a": flux, "b": flux}, np.array([f"s{i}" for i in range(n)]), np.full(n, 100.0),
        np.zeros(n, np.int8), np.ones(n, bool), mks, np.full(n, 0.1), ks0, np.full(n, 0.02),
        plx, np.full(n, 0.05), cfg, run_mcmc=False)
    for kind, net in res.networks.items():
        assert np.array_equal(net.pixel_mask, wavelength_mask(kind, exclude_interstellar=True))
        assert net.meta["exclude_interstellar_lines"] is True
        assert np.all(np.isfinite(net.predict(flux[:5] + rng.normal(0, 1e-3, (5, WAVE.size)))))
