"""The eq. (6) network: learns a known function, masks of Sec. 5.1, safe round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from obpipe.luminosity.network import (
    EXCLUDED_WINDOWS_AA,
    MKsNetwork,
    TrainConfig,
    recon_out_of_range,
    train_network,
    wavelength_mask,
)
from obpipe.spectra.grid import wavelength_grid
from obpipe.spectra.pca import CLEAN_WINDOWS_AA


@pytest.fixture(scope="module")
def linear_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2500, 40)).astype(np.float32)
    coef = rng.normal(size=40) * 0.1
    y = x @ coef - 1.0
    return x, y + rng.normal(size=y.size) * 0.02, coef


@pytest.fixture(scope="module")
def fitted(linear_problem):
    x, y, _ = linear_problem
    cfg = TrainConfig(max_epochs=150, patience=15, seed=3)
    return train_network(x, y, kind="a", input_kind="pca_coeff", config=cfg)


def test_network_learns_linear_relation(linear_problem, fitted) -> None:
    _, _, coef = linear_problem
    net, hist = fitted
    rng = np.random.default_rng(1)
    xt = rng.normal(size=(500, 40)).astype(np.float32)
    yt = xt @ coef - 1.0
    rms = np.std(net.predict(xt) - yt)
    assert rms < 0.15 * np.std(yt), (rms, np.std(yt))
    assert 0 <= hist.best_epoch < len(hist.train_loss)
    assert net.meta["n_inputs"] == 40


def test_training_is_seeded(linear_problem) -> None:
    x, y, _ = linear_problem
    cfg = TrainConfig(max_epochs=3, patience=5, seed=7)
    a, _ = train_network(x[:400], y[:400], input_kind="pca_coeff", config=cfg)
    b, _ = train_network(x[:400], y[:400], input_kind="pca_coeff", config=cfg)
    np.testing.assert_array_equal(a.predict(x[:50]), b.predict(x[:50]))


def test_round_trip_weights_only(tmp_path, linear_problem, fitted) -> None:
    x, _, _ = linear_problem
    net, _ = fitted
    path = str(tmp_path / "net.pt")
    net.save(path)
    # the file is plain tensors + strings: the safe loader reads it
    data = torch.load(path, weights_only=True)
    assert "meta_json" in data and "weights.l1.weight" in data
    back = MKsNetwork.load(path)
    np.testing.assert_array_equal(back.predict(x[:200]), net.predict(x[:200]))
    assert back.meta["kind"] == "a"


def test_numpy_forward_matches_torch(linear_problem, fitted) -> None:
    """The numpy prediction used on workers is the torch module in eval mode."""
    from obpipe.luminosity.network import _torch_module

    x, _, _ = linear_problem
    net, _ = fitted
    mod = _torch_module(net.n_inputs, 100, 0.2)
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in net.weights.items()})
    mod.eval()
    with torch.no_grad():
        z = torch.from_numpy((x[:100] - net.x_mean) / net.x_std)
        ref = net.y_mean + net.y_std * mod(z).numpy()
    np.testing.assert_allclose(net.predict(x[:100]), ref, atol=1e-4)


def test_wavelength_masks() -> None:
    wave = wavelength_grid()
    a, b = wavelength_mask("a"), wavelength_mask("b")
    for lo, hi in EXCLUDED_WINDOWS_AA:
        assert not a[(wave >= lo) & (wave <= hi)].any()
    assert a[(wave > 4000) & (wave < 5000)].all()
    assert b.sum() < a.sum()
    inside = np.zeros_like(b)
    for lo, hi in CLEAN_WINDOWS_AA:
        inside |= (wave >= lo) & (wave <= hi)
    np.testing.assert_array_equal(b, inside)
    with pytest.raises(ValueError):
        wavelength_mask("c")


def test_nan_rows_and_out_of_range() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 10)).astype(np.float32)
    net, _ = train_network(x, x[:, 0], input_kind="pca_coeff",
                           config=TrainConfig(max_epochs=2, patience=5))
    x[3, 2] = np.nan
    p = net.predict(x)
    assert np.isnan(p[3]) and np.isfinite(np.delete(p, 3)).all()
    spec = np.ones((3, 20))
    spec[1, 5] = 4.0
    np.testing.assert_array_equal(recon_out_of_range(spec), [False, True, False])
