"""Interstellar-blind network inputs (issue 15 item 2, ``[spectral]
exclude_interstellar_lines``): the pca stage projects without the interstellar windows
(tests/spectra/test_pca_interstellar.py) and both networks leave them out of their
pixels, so flux there cannot move a prediction; a network applied to products projected
otherwise is an error."""

from __future__ import annotations

import os

import numpy as np
import pytest

from obpipe.luminosity.network import MKsNetwork, wavelength_mask
from obpipe.luminosity.network_training import TrainConfig
from obpipe.luminosity.training import TrainingConfig, train_with_binary_cleaning
from obpipe.spectra import pca
from obpipe.spectra.grid import wavelength_grid
from obpipe.spectra.indices import air_to_vacuum
from obpipe.spectra.pca import (
    INTERSTELLAR_LINES_AIR_AA,
    INTERSTELLAR_WINDOWS_AA,
    interstellar_blind_ivar,
    interstellar_mask,
)
from obpipe.stages.luminosity import (
    clean_window_reconstruction,
    luminosity_block,
    products_interstellar_blind,
)

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


def _inputs(flux: np.ndarray, ivar: np.ndarray, products: str, blind: bool
            ) -> dict[str, np.ndarray]:
    """The luminosity stage's block inputs as the pca and emission stages make them."""
    model = pca.PCAModel.load(os.path.join(products, "models", "pca_model.npz"))
    excl = interstellar_mask() if blind else None
    iv = interstellar_blind_ivar(ivar) if blind else ivar
    coeff = model.clean.project(flux, iv, exclude=excl)
    full = model.full.project(flux, iv, exclude=excl)
    em = np.array([0, 0, 0, 1, 1, 1], np.int8)
    recon = model.full.reconstruct(full)
    recon[em == 1] = model.clean.reconstruct(coeff)[em == 1]
    return {"em_flag": em, "snr_g": np.full(6, 80.0), "quality_flags": np.zeros(6, np.int16),
            "ebv": np.full(6, 1.0), "recon_flux": recon, "pca_coeff": coeff}


#: the noise model's (sigma_int, sigma_s100) per network, for luminosity_block
_SIGMAS = (("a", 0.25, 0.1), ("b", 0.3, 0.1))


def _blind_networks(products: str) -> dict[str, str]:
    """Interstellar-blind random networks (a) and (b) saved in the products' models/."""
    paths = {}
    for kind, seed in (("a", 1), ("b", 2)):
        paths[kind] = os.path.join(products, "models", f"net_{kind}.safetensors")
        _random_network(kind, seed).save(paths[kind])
    return paths


def test_flux_in_interstellar_windows_cannot_move_the_prediction(products: str) -> None:
    flux, ivar, _ = _spectra(6, 1)
    paths = _blind_networks(products)
    sig = _SIGMAS

    def mks(f: np.ndarray) -> np.ndarray:
        out = luminosity_block(_inputs(f, ivar, products, True), tuple(sorted(paths.items())),
                               sig, "recon_flux", products_dir=products,
                               interstellar_blind=True)
        assert np.all(out["MKs_model"] == np.array([0, 0, 0, 1, 1, 1]))
        return out["MKs"]

    base = mks(flux)
    assert np.all(np.isfinite(base))
    for lam, depth in ((4429.0, 0.3), (3934.8, 0.5), (5781.0, 0.4)):
        deeper = flux - depth * _gauss(lam, 2.0 if lam != 4429.0 else 6.0)
        deeper[:, ~interstellar_mask()] = flux[:, ~interstellar_mask()]  # inside the window
        np.testing.assert_allclose(mks(deeper), base, atol=1e-5, err_msg=str(lam))
        # control: the paper's projection reads the line (the test can fail)
        seen, moved = _inputs(flux, ivar, products, False), _inputs(deeper, ivar, products,
                                                                     False)
        m = wavelength_mask("a", exclude_interstellar=True)
        assert np.max(np.abs(moved["recon_flux"] - seen["recon_flux"])[:3][:, m]) > 1e-3, lam
        rb = [clean_window_reconstruction(x["pca_coeff"], products) for x in (seen, moved)]
        m = wavelength_mask("b", exclude_interstellar=True)
        assert np.max(np.abs(rb[1] - rb[0])[:, m]) > 1e-3, lam
    # a stellar line in both models' pixels (He I 4472) does move it
    stellar = flux - 0.3 * _gauss(4472.7, 3.0)
    assert np.min(np.abs(mks(stellar) - base)) > 1e-3


def test_network_and_products_projected_otherwise_is_an_error(products: str) -> None:
    flux, ivar, _ = _spectra(6, 1)
    blind_paths = _blind_networks(products)
    sig = _SIGMAS
    # an interstellar-blind network on products projected with every pixel
    with pytest.raises(ValueError, match=r"network \(a\).*without the interstellar windows"
                       r".*these products were projected with every usable pixel"):
        luminosity_block(_inputs(flux, ivar, products, False),
                         tuple(sorted(blind_paths.items())), sig, "recon_flux",
                         products_dir=products, interstellar_blind=False)
    # and the paper's network on interstellar-blind products
    plain = {}
    for kind in ("a", "b"):
        net = _random_network(kind, 3)
        net.meta["exclude_interstellar_lines"] = False
        plain[kind] = os.path.join(products, "models", f"plain_{kind}.safetensors")
        net.save(plain[kind])
    with pytest.raises(ValueError, match="exclude_interstellar_lines = true"):
        luminosity_block(_inputs(flux, ivar, products, True), tuple(sorted(plain.items())),
                         sig, "recon_flux", products_dir=products, interstellar_blind=True)


def test_products_record_of_the_projection() -> None:
    import xarray as xr

    coeff = np.zeros((2, 3), np.float32)
    for attrs, expected in (({}, False), ({"interstellar_blind": 0}, False),
                            ({"interstellar_blind": 1}, True)):
        ds = xr.Dataset({"pca_coeff": (("spec", "component"), coeff, attrs)})
        assert products_interstellar_blind(ds) is expected


def test_training_option_drops_the_windows_from_both_networks() -> None:
    flux, ivar, lum = _spectra(200, 3)
    n = lum.size
    rng = np.random.default_rng(4)
    mks = -3.0 + 3.0 * lum
    plx = np.full(n, 1.0)
    ks0 = mks + 10.0
    cfg = TrainingConfig(n_clean_iterations=0,
                         network=TrainConfig(max_epochs=3, n_members=2, loss="mag",
                                             n_components=20))
    res = train_with_binary_cleaning(
        {"a": flux, "b": flux}, np.array([f"s{i}" for i in range(n)]), np.full(n, 100.0),
        np.zeros(n, np.int8), np.ones(n, bool), mks, np.full(n, 0.1), ks0, np.full(n, 0.02),
        plx, np.full(n, 0.05), cfg, run_mcmc=False, interstellar_blind=True)
    for kind, net in res.networks.items():
        assert np.array_equal(net.pixel_mask, wavelength_mask(kind, exclude_interstellar=True))
        assert net.meta["exclude_interstellar_lines"] is True
        assert np.all(np.isfinite(net.predict(flux[:5] + rng.normal(0, 1e-3, (5, WAVE.size)))))
