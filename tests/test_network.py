"""The eq. (6) network: learns a known function, cross-fitted ensemble, parallax-space
loss, masks of Sec. 5.1, safe round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from obpipe.luminosity.network import (
    EXCLUDED_WINDOWS_AA,
    MKsNetwork,
    TrainConfig,
    _folds,
    _torch_module,
    fakemag_from_parallax,
    recon_out_of_range,
    train_network,
    wavelength_mask,
)
from obpipe.spectra.grid import wavelength_grid
from obpipe.spectra.pca import CLEAN_WINDOWS_AA

FAST = {"max_epochs": 150, "patience": 15, "loss": "mag"}


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
    cfg = TrainConfig(seed=3, n_members=3, **FAST)
    return train_network(x, y, kind="a", input_kind="pca_coeff", config=cfg)


def test_network_learns_linear_relation(linear_problem, fitted) -> None:
    _, _, coef = linear_problem
    net, hist = fitted
    rng = np.random.default_rng(1)
    xt = rng.normal(size=(500, 40)).astype(np.float32)
    yt = xt @ coef - 1.0
    rms = np.std(net.predict(xt) - yt)
    assert rms < 0.15 * np.std(yt), (rms, np.std(yt))
    assert net.n_members == 3 and len(hist.best_epochs) == 3
    assert all(0 <= e < len(hist.train_loss) for e in hist.best_epochs)
    assert net.meta["n_inputs"] == 40
    # the member spread is an epistemic uncertainty: larger far outside the training data
    _, s_in = net.predict(xt, return_std=True)
    _, s_out = net.predict(6.0 * xt, return_std=True)
    assert np.median(s_out) > 2 * np.median(s_in)


def test_out_of_fold_predictions_are_held_out(linear_problem) -> None:
    """Each row's out-of-fold prediction comes from a member that never saw it: a row
    with a wrong target is learned in-sample but not out of fold (binary cleaning)."""
    x, y, _ = linear_problem
    y = y.copy()
    bad = np.arange(0, 2500, 25)
    y[bad] -= 1.5  # 100 rows 1.5 mag too bright (like binaries, but worse)
    groups = np.arange(2500) // 2  # two "visits" per star
    cfg = TrainConfig(seed=1, n_members=4, dropout=0.0, max_epochs=300, patience=30,
                      loss="mag")
    net, hist = train_network(x, y, input_kind="pca_coeff", config=cfg, groups=groups)
    oof = hist.out_of_fold
    assert np.isfinite(oof).all()
    inside = net.predict(x)
    clean = y + 1.5 * np.isin(np.arange(2500), bad)
    # out of fold the bad rows are predicted near their true value
    assert np.median(np.abs(oof[bad] - clean[bad])) < 0.3
    # the ensemble mean (3 of 4 members saw each bad row) is pulled towards the bad target
    assert np.median(inside[bad] - clean[bad]) < np.median(oof[bad] - clean[bad])


def test_folds_stable_and_grouped() -> None:
    stars = np.array([f"s{i}" for i in range(400)]).repeat(2)
    f = _folds(stars, 5, 0.1, seed=0)
    assert np.all(f[::2] == f[1::2])  # the visits of a star share a fold
    counts = np.bincount(f, minlength=5)
    assert counts.min() > 0.6 * counts.max()
    # removing rows (binary cleaning) does not move the other stars between folds
    sub = np.arange(0, 800, 3)
    np.testing.assert_array_equal(_folds(stars[sub], 5, 0.1, seed=0), f[sub])
    one = _folds(stars, 1, 0.2, seed=0)
    assert set(np.unique(one)) == {-1, 0} and 0.1 < np.mean(one == 0) < 0.3


def test_training_is_seeded(linear_problem) -> None:
    x, y, _ = linear_problem
    cfg = TrainConfig(max_epochs=3, patience=5, seed=7, loss="mag")
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
    assert back.meta["kind"] == "a" and back.n_members == 3


def test_format_1_file_loads(tmp_path, linear_problem) -> None:
    """A one-network file of the first format (nn.Linear layout) still loads."""
    x, _, _ = linear_problem
    torch.manual_seed(0)
    lin = [torch.nn.Linear(40, 100), torch.nn.Linear(100, 100), torch.nn.Linear(100, 1)]
    payload = {f"weights.{n}.{p}": getattr(m, p).detach().clone()
               for n, m in zip(("l1", "l2", "out"), lin, strict=True) for p in ("weight", "bias")}
    payload.update(x_mean=torch.zeros(40), x_std=torch.ones(40),
                   y_mean=torch.tensor(0.5, dtype=torch.float64),
                   y_std=torch.tensor(2.0, dtype=torch.float64),
                   meta_json='{"kind": "a", "input_kind": "pca_coeff"}', format_version=1)
    path = str(tmp_path / "v1.pt")
    torch.save(payload, path)
    net = MKsNetwork.load(path)
    with torch.no_grad():
        xt = torch.from_numpy(x[:20])
        ref = lin[2](torch.sigmoid(lin[1](torch.sigmoid(lin[0](xt)))))[:, 0].numpy()
    np.testing.assert_allclose(net.predict(x[:20]), 0.5 + 2.0 * ref, atol=1e-4)


def test_model_files_read_without_torch_equal_torch_load(tmp_path, linear_problem,
                                                         fitted) -> None:
    """obpipe.luminosity.torchfile reads a saved model to the same arrays as torch.load,
    without importing torch; a non-contiguous tensor keeps its values; a file with any
    other global is refused; a legacy-format file falls back to torch."""
    import pickle
    import subprocess
    import sys
    import zipfile

    from obpipe.luminosity.torchfile import TorchFileError, load_torch_file

    net, _ = fitted
    path = str(tmp_path / "net.pt")
    net.save(path)
    ref = torch.load(path, weights_only=True)
    with open(path, "rb") as fh:
        mine = load_torch_file(fh)
    assert ref.keys() == mine.keys()
    for k, v in ref.items():
        if isinstance(v, torch.Tensor):
            assert mine[k].dtype == v.numpy().dtype and np.array_equal(mine[k], v.numpy()), k
        else:
            assert mine[k] == v, k
    # views: a transposed slice, a scalar, several tensors sharing one storage
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    odd = {"t": base.T[1:4], "s": base[2, 3], "row": base[1], "i": torch.tensor([1, -2])}
    torch.save(odd, tmp_path / "odd.pt")
    with open(tmp_path / "odd.pt", "rb") as fh:
        back = load_torch_file(fh)
    for k, v in odd.items():
        np.testing.assert_array_equal(back[k], v.numpy())
    # no torch in a process that only loads and predicts
    code = ("import sys; from obpipe.luminosity.network import MKsNetwork; "
            f"MKsNetwork.load({path!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"

    # a file that names another global (here os.system) is refused, not run
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
    with open(evil, "rb") as fh, pytest.raises(pickle.UnpicklingError, match="os"):
        load_torch_file(fh)
    # the legacy (pre-zip) torch format: not ours to parse, torch reads it
    legacy = tmp_path / "legacy.pt"
    torch.save(ref, legacy, _use_new_zipfile_serialization=False)
    with open(legacy, "rb") as fh, pytest.raises(TorchFileError):
        load_torch_file(fh)
    x, _, _ = linear_problem
    np.testing.assert_array_equal(MKsNetwork.load(str(legacy)).predict(x[:50]),
                                  net.predict(x[:50]))


def test_numpy_forward_matches_torch(linear_problem, fitted) -> None:
    """The numpy prediction used on workers is the torch ensemble in eval mode."""
    x, _, _ = linear_problem
    net, _ = fitted
    mod = _torch_module(net.x_mean.size, 100, 0.2, n_members=net.n_members)
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in net.weights.items()})
    mod.eval()
    with torch.no_grad():
        z = torch.from_numpy(net.features(x[:100]))
        ref = net.y_mean + net.y_std * mod(z).numpy()
    np.testing.assert_allclose(net.predict_members(x[:100]), ref, atol=1e-4)
    np.testing.assert_allclose(net.predict(x[:100]), ref.mean(axis=0), atol=1e-4)


def test_projection_of_reconstructed_spectra() -> None:
    """Pixels that lie in a low-dimensional subspace (a PCA reconstruction) are fed
    through their coordinates in it: the model file keeps the projection, predictions
    take full-grid rows, and the fit is as good as on the coefficients themselves."""
    rng = np.random.default_rng(4)
    n_grid = wavelength_grid().size
    basis = rng.normal(size=(8, n_grid)).astype(np.float32) * 0.01
    coef = rng.normal(size=(900, 8)).astype(np.float32)
    x = 1.0 + coef @ basis
    y = coef[:, 0] - 0.5 * coef[:, 1] ** 2
    cfg = TrainConfig(seed=0, n_members=2, n_components=20, **FAST)
    net, _ = train_network(x, y, kind="a", config=cfg)
    assert net.projection is not None and net.projection.shape[0] == wavelength_mask("a").sum()
    assert net.x_mean.size == 20
    xt = 1.0 + (c := rng.normal(size=(300, 8)).astype(np.float32)) @ basis
    rms = np.std(net.predict(xt) - (c[:, 0] - 0.5 * c[:, 1] ** 2))
    assert rms < 0.25 * np.std(y), rms


def test_parallax_space_loss_unbiased_with_noisy_parallaxes() -> None:
    """Leung & Bovy's loss trains on noisy (even negative) parallaxes without bias, where
    the magnitude of the same parallaxes (``mag`` loss) is biased bright."""
    rng = np.random.default_rng(2)
    n = 3000
    x = rng.normal(size=(n, 5)).astype(np.float32)
    mks = -1.0 + 0.8 * x[:, 0]
    d_kpc = rng.uniform(1.0, 4.0, n)
    ks0 = mks + 5 * np.log10(d_kpc * 100)
    plx_true = 1.0 / d_kpc
    plx_err = plx_true / rng.uniform(1.5, 6.0, n)  # plx / err 1.5-6: poor parallaxes
    plx = plx_true + rng.normal(size=n) * plx_err
    f, fe = fakemag_from_parallax(plx, plx_err, ks0, np.full(n, 0.02))
    cfg = TrainConfig(seed=0, n_members=2, **{**FAST, "loss": "fakemag"})
    net, _ = train_network(x, np.full(n, np.nan), input_kind="pca_coeff", config=cfg,
                           fakemag=f, fakemag_err=fe, sigma_floor_mag=0.05)
    bias = np.median(net.predict(x) - mks)
    assert abs(bias) < 0.1, bias
    pos = plx > 0
    mag = ks0 + 5 * np.log10(np.where(pos, plx, 1.0)) - 10
    naive, _ = train_network(x[pos], mag[pos], input_kind="pca_coeff",
                             config=TrainConfig(seed=0, n_members=2, **FAST))
    assert abs(np.median(naive.predict(x) - mks)) > abs(bias) + 0.05


def test_binary_mixture_loss_resists_bright_targets() -> None:
    """With the binary mixture, 30 % of targets made brighter by U(0, 0.75) mag pull
    the prediction less than with the squared error."""
    rng = np.random.default_rng(5)
    n = 3000
    x = rng.normal(size=(n, 5)).astype(np.float32)
    m_true = 0.5 * x[:, 0]
    err = np.full(n, 0.1)
    target = m_true + rng.normal(size=n) * 0.1
    binary = rng.random(n) < 0.3
    target[binary] -= rng.uniform(0.0, 0.75, binary.sum())
    kw = {"input_kind": "pca_coeff", "y_err_mag": err, "sigma_floor_mag": 0.0}
    plain, _ = train_network(x, target, config=TrainConfig(seed=0, n_members=2, **FAST), **kw)
    mix, _ = train_network(x, target, config=TrainConfig(
        seed=0, n_members=2, binary_mixture_fraction=0.3, **FAST), **kw)
    b_plain = np.median(plain.predict(x) - m_true)
    b_mix = np.median(mix.predict(x) - m_true)
    assert b_plain < -0.08 and abs(b_mix) < 0.5 * abs(b_plain), (b_plain, b_mix)


def test_warm_start_keeps_transform(linear_problem, fitted) -> None:
    x, y, _ = linear_problem
    net, _ = fitted
    cfg = TrainConfig(seed=3, n_members=3, max_epochs=5, patience=5, loss="mag")
    again, hist = train_network(x, y, input_kind="pca_coeff", init=net, config=cfg)
    _, cold = train_network(x, y, input_kind="pca_coeff", config=cfg)
    np.testing.assert_array_equal(again.x_std, net.x_std)
    # starts where the previous fit ended: far ahead of a fresh start, no worse than before
    assert hist.val_loss[0] < 0.2 * cold.val_loss[0], (hist.val_loss[0], cold.val_loss[0])
    assert np.std(again.predict(x) - y) < 1.2 * np.std(net.predict(x) - y)
    with pytest.raises(ValueError):
        train_network(x, y, input_kind="pca_coeff", init=net,
                      config=TrainConfig(n_members=2, max_epochs=1, loss="mag"))


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
    net, hist = train_network(x, x[:, 0], input_kind="pca_coeff",
                              config=TrainConfig(max_epochs=2, patience=5, loss="mag"))
    x[3, 2] = np.nan
    p = net.predict(x)
    assert np.isnan(p[3]) and np.isfinite(np.delete(p, 3)).all()
    spec = np.ones((3, 20))
    spec[1, 5] = 4.0
    np.testing.assert_array_equal(recon_out_of_range(spec), [False, True, False])
    with pytest.raises(ValueError):
        TrainConfig(loss="chi2")
