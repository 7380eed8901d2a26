"""Reddened copies of the training spectra (issue 15 item 2): the copies themselves, the
training rounds that read them, and the stage's copies against its own products."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.luminosity.augment import R_V_NODES, extinction_per_ebv, reddened_copies
from obpipe.luminosity.network_training import TrainConfig
from obpipe.luminosity.training import TrainingConfig, train_with_binary_cleaning
from obpipe.spectra.grid import wavelength_grid

WAVE = wavelength_grid()


def test_copies_keep_the_snr_and_add_the_drawn_reddening() -> None:
    rng = np.random.default_rng(0)
    flux = (1e3 * (WAVE / 4000.0) ** -3.0)[None, :] * rng.uniform(0.5, 2.0, (400, 1))
    ivar = 1.0 / (0.02 * flux) ** 2
    f, iv, d_ebv = reddened_copies(flux, ivar, np.random.default_rng(1), max_ebv=1.5)
    np.testing.assert_allclose(f * np.sqrt(iv), flux * np.sqrt(ivar), rtol=1e-4)
    assert d_ebv.min() >= 0.0 and d_ebv.max() <= 1.5 and d_ebv.std() > 0.3
    # E(B-V) read back from the copies: B (4400 AA) minus V (5500 AA) extinction, which
    # for a curve normalised to E(B-V) is the added E(B-V) within the bands' width
    a = -2.5 * np.log10(f / flux)
    ebv_back = (a[:, np.searchsorted(WAVE, 4400.0)] - a[:, np.searchsorted(WAVE, 5500.0)])
    assert np.all(np.abs(ebv_back - d_ebv) < 0.15 * d_ebv + 1e-4)
    assert np.all(a[:, np.searchsorted(WAVE, 4000.0)] >= a[:, np.searchsorted(WAVE, 8000.0)])
    # the same seed, the same copies
    again = reddened_copies(flux, ivar, np.random.default_rng(1), max_ebv=1.5)
    np.testing.assert_array_equal(again[0], f)


def test_curve_is_g23_at_its_nodes_and_interpolated_between() -> None:
    import astropy.units as u
    from dust_extinction.parameter_averages import G23

    node = R_V_NODES[3]
    np.testing.assert_allclose(extinction_per_ebv(np.array([node]), WAVE.size)[0],
                               node * G23(Rv=node)(WAVE * u.AA), rtol=1e-6)
    mid = 0.5 * (R_V_NODES[3] + R_V_NODES[4])
    between = extinction_per_ebv(np.array([mid]), WAVE.size)[0]
    ends = extinction_per_ebv(R_V_NODES[3:5], WAVE.size)
    np.testing.assert_allclose(between, ends.mean(axis=0), rtol=1e-6)


def _slope(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, WAVE.size)[None, :].repeat(n, axis=0)


def test_copies_teach_the_networks_to_ignore_a_shortcut() -> None:
    """Training spectra whose continuum slope tracks M_Ks (as reddening tracks luminosity
    in a magnitude-limited survey) teach a network to read the slope; copies with random
    slopes and the same targets take most of that away, added or swapped for half the
    spectra, and the copies only train: the out-of-fold values and the report count the
    spectra themselves."""
    rng = np.random.default_rng(2)
    n = 600
    lum = rng.uniform(0, 1, n)
    mks = -3.0 + 3.0 * lum
    lines = np.exp(-0.5 * ((WAVE - 4341.7) / 8.0) ** 2)[None, :]
    # the line tells M_Ks loosely, the slope closely: a network left alone reads the slope
    flux = (1.0 - (0.2 + 0.3 * (lum + rng.normal(0, 0.3, n)))[:, None] * lines
            + 0.02 * (1.0 - lum + rng.normal(0, 0.1, n))[:, None] * _slope(n)
            + rng.normal(0, 0.005, (n, WAVE.size))).astype(np.float32)
    copies = (flux + 0.02 * rng.uniform(-1.0, 2.0, n)[:, None] * _slope(n)).astype(np.float32)
    copies[:50] = np.nan  # no copy for these rows
    args = (np.array([f"s{i}" for i in range(n)]), np.full(n, 100.0), np.zeros(n, np.int8),
            np.ones(n, bool), mks, np.full(n, 0.05), mks + 10.0, np.full(n, 0.02),
            np.full(n, 1.0), np.full(n, 0.05))
    res = {}
    for mode in ("none", "added", "swapped"):
        cfg = TrainingConfig(n_clean_iterations=0, train_fraction=0.8, reddened_copies=mode,
                             network=TrainConfig(max_epochs=300, patience=40, n_members=2,
                                                 loss="mag", n_components=10))
        res[mode] = train_with_binary_cleaning(
            {"a": flux, "b": flux}, *args, cfg, run_mcmc=False,
            x_reddened=None if mode == "none" else {"a": copies, "b": copies})
    plain, taught = res["none"], res["added"]
    probe = flux[:200]
    response = {}
    for name, r in (("plain", plain), ("copies", taught), ("swapped", res["swapped"])):
        net = r.networks["a"]
        response[name] = float(np.median(net.predict(probe + 0.02 * _slope(200))
                                         - net.predict(probe)))
    assert response["plain"] < -0.5  # the slope reads as luminosity: brighter
    assert abs(response["copies"]) < 0.4 * abs(response["plain"])
    assert abs(response["swapped"]) < 0.5 * abs(response["plain"])
    rec = taught.report["iterations"][0]
    n_train = rec["n_train_a"]
    assert rec["n_reddened_copies_a"] == n_train - np.sum(plain.sets.train_a[:50])
    assert taught.out_of_fold["a"].shape == (n,)
    assert np.sum(np.isfinite(taught.out_of_fold["a"])) == n_train
    # swapped: the same rows, about half of those with a copy trained as their copy
    swapped = res["swapped"].report["iterations"][0]
    assert swapped["n_train_a"] == n_train
    assert 0.4 < swapped["n_reddened_copies_a"] / rec["n_reddened_copies_a"] < 0.6
    assert np.sum(np.isfinite(res["swapped"].out_of_fold["a"])) == n_train
    with pytest.raises(ValueError, match="reddened_copies must be one of"):
        TrainingConfig(reddened_copies="yes")


@pytest.mark.slow
def test_stage_copies_without_dust_are_the_runs_own_inputs(small_survey: str,
                                                          small_spectral_products: str) -> None:
    """With (almost) no dust added, the stage's copies go through the run's normalisation
    and projection to the inputs stored in the products (S/N above the rest-frame
    refinement, as the training spectra)."""
    from obpipe.config import config_from_dict
    from obpipe.engine.blockwise import open_products
    from obpipe.io import store
    from obpipe.pipeline import RunContext
    from obpipe.stages import luminosity as lum

    prods = open_products(small_spectral_products)
    snr = store.open_cube(small_survey)["snr_g"].values
    rows = np.flatnonzero((snr > 60) & (prods["em_flag"].values == 0))[:40]
    ctx = RunContext(small_survey, small_spectral_products, scheduler="threads",
                     config=config_from_dict({}))
    cfg = TrainingConfig(reddened_copies="added", reddened_copies_max_ebv=1e-9)
    blind = lum.products_interstellar_blind(prods)
    got = lum.reddened_inputs(ctx, rows, cfg, blind)
    stored = lum._network_inputs(prods, rows, "recon_flux", small_spectral_products)
    for m in ("a", "b"):
        ok = np.isfinite(stored[m])
        assert ok.any(axis=1).all()
        np.testing.assert_allclose(got[m][ok], stored[m][ok], atol=2e-4)
    # and with dust, the copies differ
    red = lum.reddened_inputs(ctx, rows, TrainingConfig(reddened_copies="added"), blind)
    assert np.nanmax(np.abs(red["a"] - stored["a"])) > 1e-3
