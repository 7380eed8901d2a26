"""The simulated survey as a whole: one row per spectrum, realism, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from obpipe.config import SimulationConfig
from obpipe.io import store
from obpipe.simulate.survey import simulate_survey
from obpipe.validate import validate_survey
from tests.conftest import SMALL


def test_every_spectrum_has_one_row_and_truth(small_survey) -> None:
    ds = store.open_cube(small_survey)
    truth = store.open_truth(small_survey)
    n = ds.sizes["spec"]
    assert 1800 < n < 2400
    assert np.unique(ds["specid"].values).size == n
    assert np.array_equal(ds["specid"].values, truth["specid"].values)
    assert np.all(np.isfinite(ds["flux"].values[:, 100:3800][ds["ivar"].values[:, 100:3800] > 0]))
    # each star: one shared star_id and exactly one uniqflag == 1
    star = truth["star_index"].values
    ids = ds["star_id"].values.astype(object)
    uniq = ds["uniqflag"].values
    for s in np.unique(star)[:300]:
        rows = star == s
        assert np.unique(ids[rows]).size == 1
        assert np.sum(uniq[rows] == 1) == 1
        assert sorted(uniq[rows]) == list(range(1, rows.sum() + 1))
    assert 1.6 < n / np.unique(star).size < 1.9


def test_fractions_within_tolerance_of_options(small_survey) -> None:
    m = validate_survey(small_survey)["population"]
    n = m["n_stars"]

    def tol(p, k):
        return 4 * np.sqrt(p * (1 - p) / k)

    f = m["fractions"]
    assert abs(f["class_interloper"] - SMALL.interloper_fraction) < tol(0.1, n)
    assert abs(f.get("class_subdwarf", 0) - SMALL.subdwarf_fraction) < tol(0.02, n)
    assert abs(m["emission_fraction_of_stars"] - SMALL.emission_fraction) < tol(0.13, n)
    assert abs(m["binary_fraction_of_ob_and_interlopers"] - SMALL.binary_fraction) < tol(0.3, n)
    assert abs(m["broken_fraction_of_spectra"] - SMALL.broken_fraction) < tol(
        0.01, m["n_spectra"])


def test_snr_spans_survey_range(small_survey) -> None:
    snr = store.open_cube(small_survey)["snr_g"].values
    assert np.nanmin(snr) < 6 and np.nanmax(snr) > 600 and np.nanmax(snr) <= 1100
    assert 20 < np.nanmedian(snr) < 120


def test_extinction_rises_with_distance(small_survey) -> None:
    truth = store.open_truth(small_survey)
    d = truth["distance_kpc_true"].values
    ebv = truth["ebv_true"].values
    assert spearmanr(d, ebv).statistic > 0.3
    assert np.median(ebv[d > 5]) > 2 * np.median(ebv[d < 1.5])
    assert ebv.max() > 2.0 and d.max() > 10


def test_positions_are_northern_and_near_the_plane(small_survey) -> None:
    """Every star lies north of LAMOST's declination limit at the Galactic latitude its
    distance and dust were drawn with: the height above the plane that the observed
    position implies stays within a few of the mock's scale heights (a southern star
    reflected in declination kept its distance but not its latitude: 17 % of the
    default survey's OB stars then sat > 0.5 kpc from the plane)."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    obs = store.open_cube(small_survey)
    truth = store.open_truth(small_survey)
    dec = obs["dec"].values
    assert dec.min() >= SMALL.min_declination_deg
    b = SkyCoord(ra=obs["ra"].values * u.deg, dec=dec * u.deg).galactic.b.rad
    z_kpc = truth["distance_kpc_true"].values * np.sin(b)
    assert np.mean(np.abs(z_kpc) > 10 * SMALL.disk_scale_height_kpc) < 0.005


def test_parallaxes_consistent_with_truth(small_survey) -> None:
    """Quoted DR2 errors underestimate the scatter (published external-error relation):
    pulls are wide with the quoted error and unit-width with ``parallax_error_true``."""
    metrics = validate_survey(small_survey)
    m = metrics["parallax"]
    assert m["pull_std"] > 1.05
    assert abs(m["pull_mean"]) < 0.1
    assert m["pull_std_all_ruwe"] > m["pull_std"], "high-RUWE binaries scatter more"
    assert abs(metrics["mock_systematics"]["pull_std_true"] - 1.0) < 0.1


def test_photometry_has_errors_and_gaps(small_survey) -> None:
    ds = store.open_cube(small_survey)
    for col in ("J", "H", "Ks", "g", "r", "i", "phot_g_mean_mag", "phot_bp_mean_mag"):
        vals = ds[col].values
        err = ds[col + ("_error" if col.startswith("phot") else "_err")].values
        assert np.all(np.isnan(vals) == np.isnan(err))
        assert np.nanmin(err) > 0
    assert np.isnan(ds["g"].values).mean() > 0.05
    assert np.isnan(ds["Ks"].values).mean() < 0.05


def test_provenance_and_units(small_survey) -> None:
    ds = store.open_cube(small_survey)
    assert ds.attrs["seed"] == SMALL.seed
    assert '"n_stars": 1200' in ds.attrs["simulation_config"]
    assert ds.attrs["obpipe_version"]
    assert ds["rv"].attrs["units"] == "km / s" and ds.wave.attrs["units"] == "Angstrom"


TINY = SimulationConfig(n_stars=160, seed=7, chunk_size=100)


def _arrays(path: str) -> dict[str, np.ndarray]:
    ds = store.open_cube(path).load()
    tr = store.open_truth(path).load()
    out = {k: ds[k].values for k in ds.variables if k != "wave"}
    out.update({"truth_" + k: tr[k].values for k in tr.variables})
    return out


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory) -> dict[str, np.ndarray]:
    path = str(tmp_path_factory.mktemp("tiny") / "ref.zarr")
    simulate_survey(path, TINY, scheduler="threads")
    return _arrays(path)


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if x.dtype.kind in "fc":
            assert x.tobytes() == y.tobytes(), k
        else:
            assert np.array_equal(x.astype(object), y.astype(object)), k


def test_identical_for_other_chunking(tmp_path, tiny_reference) -> None:
    path = str(tmp_path / "chunk37.zarr")
    simulate_survey(path, SimulationConfig(n_stars=160, seed=7, chunk_size=37),
                    scheduler="synchronous")
    _assert_identical(tiny_reference, _arrays(path))


def test_identical_with_processes(tmp_path, tiny_reference) -> None:
    path = str(tmp_path / "proc.zarr")
    simulate_survey(path, TINY, scheduler="processes")
    _assert_identical(tiny_reference, _arrays(path))


@pytest.mark.slow
def test_identical_on_distributed_cluster(tmp_path, tiny_reference) -> None:
    from distributed import Client, LocalCluster

    path = str(tmp_path / "dist.zarr")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster):
        simulate_survey(path, TINY)
    _assert_identical(tiny_reference, _arrays(path))


def test_other_seed_differs(tmp_path, tiny_reference) -> None:
    path = str(tmp_path / "seed8.zarr")
    simulate_survey(path, SimulationConfig(n_stars=160, seed=8, chunk_size=100),
                    scheduler="threads")
    other = _arrays(path)
    assert not np.array_equal(other["truth_teff_true"][:50], tiny_reference["truth_teff_true"][:50])
