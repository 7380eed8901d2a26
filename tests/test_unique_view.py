"""The unique-star view (``catalog_unique.*``, :func:`obpipe.catalog.unique_view_from_rows`):
a star whose combined M_Ks is its visit's own keeps that visit's distance (eqs. 18-24),
the others' posteriors are evaluated again; the result is bit for bit the view with every
distance recomputed from the combined M_Ks (issue 19)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from obpipe.catalog import QUALITY_BITS, combine_visits, unique_view_from_rows
from obpipe.distance import DistanceConfig, PopulationPrior, catalog_distances
from obpipe.photometry.parallax import calibrated_parallax

DISTANCE_COLUMNS = ("dis", "dis_low", "dis_high", "logdis", "logdis_err", "distance_flags",
                    "X", "Y", "Z")
SIGMA_INT_MAG = 0.25


def _visits(seed: int = 3, n_stars: int = 60) -> pd.DataFrame:
    """Catalog rows of ``n_stars`` stars with 1-3 visits each: per-visit M_Ks (some NaN),
    photometry, parallaxes, binary flags and the distance stage's columns (computed in
    two blocks, as the stage does)."""
    rng = np.random.default_rng(seed)
    nvis = rng.integers(1, 4, n_stars)
    star = np.repeat(np.arange(n_stars), nvis)
    n = len(star)
    rows = pd.DataFrame({
        "star_id": np.array([f"S{i:04d}" for i in star]),
        "ra": rng.uniform(0.0, 360.0, n_stars)[star],
        "dec": rng.uniform(-10.0, 70.0, n_stars)[star],
        "Ks0": rng.uniform(5.0, 13.0, n_stars)[star],
        "Ks0_err": np.full(n, 0.03),
        "MKs": rng.normal(-2.0, 1.2, n).astype(np.float32),
        "MKs_err": rng.uniform(0.28, 0.7, n).astype(np.float32),
        "binary_flag": rng.choice(np.array([0, 0, 0, 1, -9], dtype=np.int8), n),
        "parallax_corrected": rng.uniform(0.05, 1.5, n_stars)[star],
        "parallax_corrected_error": rng.uniform(0.02, 0.2, n_stars)[star],
        # a fitted residual zero-point (luminosity stage): the distances use the difference
        "parallax_zp_fit": rng.uniform(0.0, 0.02, n_stars).astype(np.float32)[star],
        "quality_flags": rng.choice(np.array([0, QUALITY_BITS["no_ebv"]], dtype=np.int32), n),
    })
    rows.loc[rng.random(n) < 0.15, ["MKs", "MKs_err"]] = np.nan  # visits without M_Ks
    rows["uniqflag"] = (~rows["star_id"].duplicated()).astype(np.int8)
    return rows


def _with_visit_distances(rows: pd.DataFrame, cfg: DistanceConfig,
                          hyper: PopulationPrior) -> pd.DataFrame:
    out = rows.copy()
    plx = calibrated_parallax(rows)
    parts = [catalog_distances(*(rows[k].to_numpy()[sl] for k in (
        "ra", "dec", "Ks0", "Ks0_err", "MKs", "MKs_err", "binary_flag")), plx[sl],
        rows["parallax_corrected_error"].to_numpy()[sl], cfg, hyper)
        for sl in (slice(0, len(rows) // 2), slice(len(rows) // 2, None))]
    for k in DISTANCE_COLUMNS:
        out[k] = np.concatenate([p[k] for p in parts])
    return out


def _view(rows: pd.DataFrame, cfg: DistanceConfig, hyper: PopulationPrior
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    comb = combine_visits(rows["star_id"].to_numpy(), rows["MKs"].to_numpy(),
                          rows["MKs_err"].to_numpy(), np.full(len(rows), SIGMA_INT_MAG))
    uniq = rows[rows["uniqflag"] == 1].reset_index(drop=True)
    combined = comb.reindex(uniq["star_id"].to_numpy()).reset_index(drop=True)
    inputs = {k: uniq[k].to_numpy() for k in ("Ks0", "Ks0_err", "parallax_corrected",
                                              "parallax_zp_fit", "parallax_corrected_error")}
    return uniq, unique_view_from_rows(uniq, combined, cfg, inputs, hyper)


@pytest.mark.parametrize("prior", ["population", "flat"])
def test_unique_view_equals_every_distance_recomputed(prior: str) -> None:
    cfg = DistanceConfig(prior=prior)
    hyper = PopulationPrior()
    rows = _with_visit_distances(_visits(), cfg, hyper)
    uniq, view = _view(rows, cfg, hyper)
    nvis = rows.groupby("star_id").size().reindex(uniq["star_id"]).to_numpy()
    assert (nvis == 1).sum() >= 10 and (nvis > 1).sum() >= 10  # both kinds of star
    # the view as made before the reuse: every star's distance from its combined M_Ks
    ref = catalog_distances(uniq["ra"].to_numpy(), uniq["dec"].to_numpy(),
                            uniq["Ks0"].to_numpy(), uniq["Ks0_err"].to_numpy(),
                            view["MKs"].to_numpy(), view["MKs_err"].to_numpy(),
                            uniq["binary_flag"].to_numpy(),
                            calibrated_parallax(uniq),
                            uniq["parallax_corrected_error"].to_numpy(), cfg, hyper)
    for k in DISTANCE_COLUMNS:
        np.testing.assert_array_equal(view[k].to_numpy(), ref[k], err_msg=k)
        assert view[k].dtype == ref[k].dtype, k
    assert np.isfinite(view["dis"]).sum() > len(view) // 2
    no_dis = ~np.isfinite(ref["dis"])
    assert ((view["quality_flags"].to_numpy() & QUALITY_BITS["no_distance"]) > 0
            ).tolist() == no_dis.tolist()
    # the other quality bits are the visit's
    other = ~QUALITY_BITS["no_distance"] & ~QUALITY_BITS["distance_parallax_only"] \
        & ~QUALITY_BITS["distance_truncated"]
    np.testing.assert_array_equal(view["quality_flags"].to_numpy() & other,
                                  uniq["quality_flags"].to_numpy() & other)


def test_unique_view_reuses_only_a_visit_whose_mks_is_the_combined_one() -> None:
    cfg = DistanceConfig()
    hyper = PopulationPrior()
    rows = _with_visit_distances(_visits(seed=5), cfg, hyper)
    marked = rows.copy()
    marked["dis"] = -1.0  # a value no posterior gives: kept only where reused
    uniq, view = _view(marked, cfg, hyper)
    own = (view["MKs"].to_numpy() == uniq["MKs"].to_numpy()) & (
        view["MKs_err"].to_numpy() == uniq["MKs_err"].to_numpy())
    both_nan = np.isnan(view["MKs"].to_numpy()) & np.isnan(uniq["MKs"].to_numpy())
    reused = own | both_nan
    kept = view["dis"].to_numpy() == -1.0
    assert kept.tolist() == reused.tolist()
    assert 0 < reused.sum() < len(view)
    # a single-visit star's combined M_Ks and uncertainty are its visit's, bit for bit
    nvis = rows.groupby("star_id").size().reindex(uniq["star_id"]).to_numpy()
    assert reused[nvis == 1].all()
