"""The eq. (6) network: learns a known function, cross-fitted ensemble, parallax-space
loss, masks of Sec. 5.1, safe round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from obpipe.luminosity.network import (
    EXCLUDED_WINDOWS_AA,
    MKsNetwork,
    recon_out_of_range,
    wavelength_mask,
)
from obpipe.luminosity.network_training import (
    TrainConfig,
    _folds,
    _torch_module,
    fakemag_from_parallax,
    train_network,
)
from obpipe.spectra.grid import wavelength_grid
from obpipe.spectra.pca import CLEAN_WINDOWS_AA

FAST = {"max_epochs": 150, "patience": 5, "loss": "mag"}


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


def test_round_trip_safetensors(tmp_path, linear_problem, fitted) -> None:
    """A saved network is a safetensors file (tensors + JSON metadata in the header) that
    loads to the same predictions and metadata, in a process that never imports torch."""
    import subprocess
    import sys

    from safetensors import safe_open

    x, _, _ = linear_problem
    net, _ = fitted
    path = str(tmp_path / "net.safetensors")
    net.save(path)
    with safe_open(path, framework="numpy") as fh:
        assert "weights.l1.weight" in fh.keys() and "meta_json" in fh.metadata()
    back = MKsNetwork.load(path)
    np.testing.assert_array_equal(back.predict(x[:200]), net.predict(x[:200]))
    assert back.meta["kind"] == "a" and back.n_members == 3
    code = ("import sys; from obpipe.luminosity.network import MKsNetwork; "
            f"MKsNetwork.load({path!r}).predict(__import__('numpy').zeros((1, 40))); "
            "print('torch' in sys.modules, 'obpipe.luminosity.network_training' in "
            "sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    # inference needs neither torch nor the training module (issue 16 item 8)
    assert out.stdout.strip() == "False False"


def test_legacy_torch_file_refused_naming_it(tmp_path, fitted) -> None:
    """A pre-safetensors torch file is refused with an error naming the file (no pickle
    is read)."""
    from obpipe.provenance import ModelFileError

    net, _ = fitted
    path = tmp_path / "old.pt"
    torch.save({f"weights.{k}": torch.from_numpy(v) for k, v in net.weights.items()}, path)
    with pytest.raises(ModelFileError, match="old.pt"):
        MKsNetwork.load(str(path))


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


def test_parallax_zero_point_fitted_jointly_with_the_network() -> None:
    """Parallaxes too large by a constant 30 uas read the M_Ks of distant stars too faint;
    with ``zp_design`` the networks recover the offset (Leung & Bovy 2019) and the bias
    goes away. Stars of one spectrum at 0.5-8 kpc make the offset identifiable."""
    from obpipe.luminosity.network_training import fakemag_per_mas

    rng = np.random.default_rng(4)
    n = 4000
    x = rng.normal(size=(n, 5)).astype(np.float32)
    mks = -1.5 + 0.8 * x[:, 0]
    d_kpc = np.exp(rng.uniform(np.log(0.5), np.log(8.0), n))
    ks0 = mks + 5 * np.log10(d_kpc * 100)
    plx_err = np.full(n, 0.02)
    dz_true = 0.030
    plx = 1.0 / d_kpc + dz_true + rng.normal(size=n) * plx_err
    f, fe = fakemag_from_parallax(plx, plx_err, ks0, np.full(n, 0.02))
    cfg = TrainConfig(seed=0, n_members=2, **{**FAST, "loss": "fakemag"})
    kw = {"input_kind": "pca_coeff", "config": cfg, "fakemag": f, "fakemag_err": fe,
          "sigma_floor_mag": 0.05}
    plain, _ = train_network(x, np.full(n, np.nan), **kw)
    fitted, _ = train_network(x, np.full(n, np.nan), zp_design=np.ones((n, 1)),
                              fakemag_per_mas=fakemag_per_mas(ks0), **kw)
    coef = fitted.meta["parallax_zp_coefficients_mas"]
    assert len(coef) == 1 and abs(coef[0] - dz_true) < 0.006, coef
    assert np.asarray(fitted.meta["parallax_zp_coefficients_by_member_mas"]).shape == (2, 1)
    far = d_kpc > 3
    bias_plain = np.median(plain.predict(x[far]) - mks[far])
    bias_fit = np.median(fitted.predict(x[far]) - mks[far])
    assert bias_plain > 0.05, bias_plain  # the offset, averaged over every distance
    assert abs(bias_fit) < 0.03, bias_fit
    with pytest.raises(ValueError, match="fakemag"):
        train_network(x, mks, input_kind="pca_coeff", config=TrainConfig(seed=0, **FAST),
                      zp_design=np.ones((n, 1)), fakemag_per_mas=fakemag_per_mas(ks0))


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


def test_projection_spans_the_exact_principal_subspace() -> None:
    """The randomised range finder gives the leading right singular vectors of the
    centred data (the eigendecomposition it replaced), up to sign."""
    from obpipe.luminosity.network_training import _projection

    rng = np.random.default_rng(5)
    basis = rng.normal(size=(30, 400)) * np.geomspace(5.0, 0.5, 30)[:, None]
    x = (1.0 + rng.normal(size=(800, 30)) @ basis * 0.01
         + 1e-5 * rng.normal(size=(800, 400))).astype(np.float32)
    mean, v = _projection(x, 30)
    xc = x.astype(np.float64) - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), atol=1e-6)
    assert v.shape == (400, 30)
    # cosines of the principal angles between the two 30-d subspaces
    cos = np.linalg.svd(vt[:30] @ v.astype(np.float64), compute_uv=False)
    assert cos.min() > 0.999, cos.min()
    # each leading direction individually (well-separated singular values)
    assert np.all(np.abs(np.sum(vt[:10] * v[:, :10].T, axis=1)) > 0.99)


def test_dropout_masks_rate_and_scale() -> None:
    from obpipe.luminosity.network_training import _dropout_masks

    m = _dropout_masks(np.random.default_rng(0), (5, 512, 100), 0.2)
    assert m.shape == (2, 5, 512, 100) and m.dtype == np.float32
    assert set(np.unique(m)) == {0.0, np.float32(1.25)}
    assert abs(np.mean(m == 0) - 0.2) < 0.003
    assert not np.array_equal(m[0], m[1])
    # reused buffers (one training): the same masks as fresh arrays, batch after batch,
    # for each batch shape (the last batch of an epoch is shorter)
    fresh, reused = np.random.default_rng(1), np.random.default_rng(1)
    buffers: dict = {}
    for b in (512, 512, 37, 512):
        want = _dropout_masks(fresh, (5, b, 100), 0.2)
        got = _dropout_masks(reused, (5, b, 100), 0.2, buffers)
        np.testing.assert_array_equal(got, want)
    assert len(buffers) == 2


def test_out_of_fold_prediction_by_star(fitted, linear_problem) -> None:
    """A star listed in the model's star_folds gets its held-out member's M_Ks (every
    visit); an unlisted star the ensemble mean; a one-network trained star is in-sample."""
    x, _, _ = linear_problem
    net, _ = fitted
    net = MKsNetwork(net.weights, net.x_mean, net.x_std, net.y_mean, net.y_std, None,
                     {**net.meta, "star_folds": {"star_id": ["s2", "s0", "s1"],
                                                 "fold": [2, 0, 1]}})
    stars = np.array(["s0", "s1", "s2", "s0", "new", "s2"], dtype=object)
    members = net.predict_members(x[:6])
    mks, spread, member = net.predict_out_of_fold(x[:6], stars)
    np.testing.assert_array_equal(member, [0, 1, 2, 0, -1, 2])
    np.testing.assert_allclose(mks[[0, 1, 2, 3, 5]],
                               members[[0, 1, 2, 0, 2], [0, 1, 2, 3, 5]])
    np.testing.assert_allclose(mks[4], members[:, 4].mean())
    np.testing.assert_allclose(spread, members.std(axis=0, ddof=1))


def test_given_folds_are_held_out(linear_problem) -> None:
    """With explicit folds, member k never trains on fold k: its out-of-fold prediction
    of a row whose target was shifted by +5 mag stays near the unshifted truth."""
    x, y, _ = linear_problem
    rng = np.random.default_rng(2)
    folds = rng.integers(0, 3, x.shape[0])
    y2 = y.copy()
    y2[folds == 1] += 5.0  # only member 1 never sees these
    # member 1 validates on the shifted fold, so its own early stopping works against
    # it (the better it learns, the worse its held-out loss): a learning rate that lets it
    # learn within its first few epochs
    cfg = TrainConfig(seed=0, n_members=3, **{**FAST, "learning_rate": 1e-2})
    net, hist = train_network(x, y2, kind="a", input_kind="pca_coeff", config=cfg,
                              folds=folds)
    np.testing.assert_array_equal(hist.fold, folds)
    members = net.predict_members(x)
    shifted = folds == 1
    # member 1 did not learn the shift; member 0 trained on it (half its rows shifted:
    # it learns a mean offset of ~ +2.5 mag, independent of x)
    assert np.median(np.abs(members[1, shifted] - y[shifted])) < 0.5
    assert np.median(members[0, shifted] - y[shifted]) > 1.0
    # (the out-of-fold values come from the torch forward at the end of training: float32
    # rounding apart, the saved model's held-out member)
    np.testing.assert_allclose(hist.out_of_fold, members[folds, np.arange(x.shape[0])],
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("with_projection", [True, False])
def test_network_on_reconstruction_coefficients(with_projection) -> None:
    """on_coefficients(R, m) reads the coefficients c of x = c R + m: the same M_Ks (and
    out-of-fold members) as the network on the reconstructed pixels, to float32 rounding,
    for a network with a principal-subspace projection and for one on the raw pixels."""
    rng = np.random.default_rng(7)
    mask = wavelength_mask("a")
    n_pix, k, h, n_mem = int(mask.sum()), 12, 16, 3
    n_in = 8 if with_projection else n_pix
    proj = np.linalg.qr(rng.normal(size=(n_pix, n_in)))[0] if with_projection else None
    weights = {"l1.weight": rng.normal(size=(n_mem, n_in, h)) * 0.3,
               "l1.bias": rng.normal(size=(n_mem, h)), "l2.weight": rng.normal(
                   size=(n_mem, h, h)) * 0.3, "l2.bias": rng.normal(size=(n_mem, h)),
               "out.weight": rng.normal(size=(n_mem, h)), "out.bias": rng.normal(size=n_mem)}
    net = MKsNetwork(weights, rng.normal(size=n_in) * 0.01, rng.uniform(0.01, 0.05, n_in),
                     -1.0, 1.5, mask, {"kind": "a", "star_folds": {
                         "star_id": ["s0", "s1"], "fold": [0, 2]}}, projection=proj,
                     projection_mean=None if proj is None else 1.0 + 0.01 * rng.normal(
                         size=n_pix))
    recon = 0.02 * rng.normal(size=(k, mask.size))
    mean = 1.0 + 0.05 * rng.normal(size=mask.size)
    coeff = rng.normal(size=(50, k))
    x = (coeff @ recon + mean).astype(np.float32)
    on_c = net.on_coefficients(recon, mean)
    assert on_c.n_inputs == k and on_c.input_kind == "pca_coeff"
    np.testing.assert_allclose(on_c.predict_members(coeff), net.predict_members(x),
                               atol=2e-4)
    stars = np.array(["s0", "s1", "new"] * 16 + ["s0", "s1"])
    np.testing.assert_array_equal(on_c.predict_out_of_fold(coeff, stars)[2],
                                  net.predict_out_of_fold(x, stars)[2])


def test_member_batches_deal_each_members_rows_once() -> None:
    """One epoch of per-member mini-batches: every training row of each member exactly
    once, padding weighted 0, each step within one row of n_k / S rows per member."""
    from obpipe.luminosity.network_training import _member_batches

    rng = np.random.default_rng(2)
    rows = [torch.from_numpy(np.sort(rng.choice(200, n, replace=False))) for n in (37, 50, 45)]
    n_steps = 4
    order, weight = _member_batches(rows, n_steps, torch.Generator().manual_seed(0))
    assert order.shape == (n_steps, 3, -(-50 // n_steps))
    assert weight.shape == order.shape
    for k, r in enumerate(rows):
        real = weight[:, k] > 0
        np.testing.assert_array_equal(np.sort(order[:, k][real].numpy()), r.numpy())
        per_step = real.sum(dim=1).numpy()
        assert per_step.min() >= r.numel() // n_steps
        assert per_step.max() <= -(-r.numel() // n_steps)
    # shuffled: another generator deals another order
    other, _ = _member_batches(rows, n_steps, torch.Generator().manual_seed(1))
    assert not torch.equal(order, other)


def test_gathered_member_batches_give_the_masked_batch_gradient() -> None:
    """Each member's loss on its own gathered rows (padded, weight 0) has the gradient of
    the old full batch with the rows it holds out masked: no compute on held-out rows,
    the same step."""
    from obpipe.luminosity.network_training import _member_loss

    rng = np.random.default_rng(4)
    k_mem, n, n_in = 3, 40, 6
    x = torch.from_numpy(rng.normal(size=(n, n_in)).astype(np.float32))
    y = torch.from_numpy(rng.normal(size=n).astype(np.float32))
    w_row = torch.from_numpy(rng.uniform(0.5, 2.0, n).astype(np.float32))
    train = torch.from_numpy(rng.uniform(size=(k_mem, n)) > 0.3)

    def row_loss(out, b):  # noqa: ANN001, ANN202
        return (out - y[b]) ** 2

    def row_weight(b):  # noqa: ANN001, ANN202
        return w_row[b]

    def grads(model, xin, b, w):  # noqa: ANN001, ANN202
        model.zero_grad()
        _member_loss(model(xin, None), b, w, row_loss, row_weight).sum().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    torch.manual_seed(0)
    model = _torch_module(n_in, 7, 0.0, n_members=k_mem)
    full = torch.arange(n)
    # the old way: every member on the shared batch (one GEMM), held-out rows masked
    masked = grads(model, x, full.expand(k_mem, n), train.float())
    m_max = int(train.sum(dim=1).max())
    idx = torch.zeros((k_mem, m_max), dtype=torch.int64)
    w = torch.zeros((k_mem, m_max))
    for k in range(k_mem):
        r = torch.nonzero(train[k])[:, 0]
        idx[k, :r.numel()], w[k, :r.numel()] = r, 1.0
    gathered = grads(model, x[idx], idx, w)
    for name, g in masked.items():
        assert g.abs().max() > 0
        torch.testing.assert_close(gathered[name], g, rtol=1e-5, atol=1e-6)
    # a wrong padding weight (padding row 0 counted) changes the gradient
    assert not torch.allclose(grads(model, x[idx], idx, torch.ones_like(w))["l1.weight"],
                              masked["l1.weight"])


def test_weight_average_smooths_the_held_out_loss(linear_problem) -> None:
    """The averaged weights (the default) validate on a smooth curve, below the raw
    weights' noisy one at the same learning rate: what lets early stopping use a short
    patience."""
    x, y, _ = linear_problem
    curves = {}
    for epochs in (4.0, None):
        cfg = TrainConfig(seed=0, n_members=3, max_epochs=40, patience=40, loss="mag",
                          weight_average_epochs=epochs)
        _, hist = train_network(x, y, input_kind="pca_coeff", config=cfg)
        curves[epochs] = np.asarray(hist.val_loss)
    rises = {k: int(np.sum(np.diff(v[5:]) > 0)) for k, v in curves.items()}
    assert rises[4.0] < rises[None], rises
    assert curves[4.0].min() < curves[None].min()
