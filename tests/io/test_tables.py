"""Star tables: formats, archive column names, joins, star grouping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from obpipe.io.tables import StarTable, TableError, assign_stars, normalize_table, read_table


def _gaia_2mass_table() -> Table:
    t = Table()
    t["obsid"] = np.array([101, 102, 103], np.int64)
    t["ra"] = [10.0, 20.0, 30.0]
    t["dec"] = [1.0, 2.0, -3.0]
    t["source_id"] = np.array([11, 12, 13], np.int64)
    t["parallax"] = [0.5, -0.2, 1.0]
    t["parallax_error"] = [0.05, 0.1, 0.02]
    t["ruwe"] = [1.0, 1.1, 0.9]
    t["phot_g_mean_mag"] = [12.0, 13.0, 14.0]
    t["phot_g_mean_flux_over_error"] = [1000.0, 500.0, 100.0]
    t["nu_eff_used_in_astrometry"] = [1.5, 1.6, 1.4]
    t["j_m"], t["j_msigcom"] = [10.0, 11.0, 12.0], [0.02, 0.03, 0.04]
    t["h_m"], t["h_msigcom"] = [9.8, 10.8, 11.8], [0.02, 0.03, 0.04]
    t["ks_m"], t["ks_msigcom"] = [9.7, 10.7, 11.7], [0.02, 0.03, 0.04]
    t["my_teff"] = [15000.0, 20000.0, 25000.0]
    return t


@pytest.mark.parametrize("suffix", [".csv", ".ecsv", ".fits", ".parquet", ".vot"])
def test_every_format_reads_and_maps_archive_names(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"stars{suffix}"
    _gaia_2mass_table().write(path, format=None if suffix != ".vot" else "votable")
    st = StarTable.from_file(path, column_map={"my_teff": "teff"})
    f = st.frame
    assert list(f["gaia_id"]) == [11, 12, 13]
    assert list(f["Ks"]) == [9.7, 10.7, 11.7] and list(f["J_err"]) == [0.02, 0.03, 0.04]
    assert list(f["teff"]) == [15000.0, 20000.0, 25000.0]
    # Gaia flux-over-error -> magnitude error
    assert f["phot_g_mean_mag_error"][0] == pytest.approx(1.0857 / 1000.0, rel=1e-3)
    assert set(f["gaia_release"]) == {"DR3"} and st.problems == [] and st.join_key == "obsid"


def test_unknown_format_and_bad_map_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="unknown table format"):
        read_table(tmp_path / "stars.xyz")
    with pytest.raises(TableError, match="not found"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(TableError, match="not a cube column"):
        normalize_table(_gaia_2mass_table(), column_map={"my_teff": "temperature"})
    t = _gaia_2mass_table()
    t.remove_columns(["obsid", "ra", "dec"])
    with pytest.raises(TableError, match="no column to join on"):
        normalize_table(t)


def _meta(obsids: list[int], ra: list[float], dec: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"obsid": obsids, "fitsname": [f"f{o}.fits" for o in obsids],
                         "ra": ra, "dec": dec, "obsid_synthetic": [False] * len(obsids)})


def test_join_by_obsid_flags_missing_and_negative_parallax() -> None:
    frame, problems = normalize_table(_gaia_2mass_table())
    st = StarTable(frame, problems)
    cols, flags = st.join(_meta([103, 999, 102], [30.0, 0.0, 20.0], [-3.0, 0.0, 2.0]))
    assert list(cols["gaia_id"]) == [13, -9, 12]
    assert np.isnan(cols["parallax"][1]) and cols["parallax"][2] == -0.2  # kept as measured
    assert flags == [[], ["no_table_match"], ["negative_parallax"]]


def test_join_by_sky_position_with_radius() -> None:
    t = _gaia_2mass_table()
    t.remove_column("obsid")
    frame, problems = normalize_table(t)
    st = StarTable(frame, problems, match_radius_arcsec=2.0)
    assert st.join_key == "position"
    one_arcsec = 1.0 / 3600.0
    cols, flags = st.join(_meta([1, 2, 3], [10.0 + one_arcsec, 20.0 + 5 * one_arcsec, 30.0],
                                [1.0, 2.0, -3.0 - one_arcsec]))
    assert list(cols["gaia_id"]) == [11, -9, 13]
    assert flags[1] == ["no_table_match"]
    wide = StarTable(frame, problems, match_radius_arcsec=10.0)
    assert wide.join(_meta([2], [20.0 + 5 * one_arcsec], [2.0]))[0]["gaia_id"][0] == 12


def test_table_without_parallax_or_ks_flags_every_row() -> None:
    t = _gaia_2mass_table()
    t.remove_columns(["parallax", "ks_m", "ks_msigcom"])
    frame, problems = normalize_table(t)
    assert problems == ["table_has_no_parallax", "table_has_no_Ks"]
    cols, flags = StarTable(frame, problems).join(_meta([101], [10.0], [1.0]))
    assert "parallax" not in cols
    assert flags == [["table_has_no_parallax", "table_has_no_Ks"]]


def test_duplicate_table_ids_take_first_row_and_warn() -> None:
    t = _gaia_2mass_table()
    t["obsid"][2] = 101
    st = StarTable(*normalize_table(t))
    assert st.duplicates and "repeat a obsid" in st.duplicates[0]
    assert st.join(_meta([101], [10.0], [1.0]))[0]["gaia_id"][0] == 11


def test_assign_stars_groups_real_repeat_visits(shared_data: Path) -> None:
    index = pd.read_csv(shared_data / "lamost_dr8" / "index.csv")
    star_id, flag = assign_stars(index["combined_ra_obs"], index["combined_dec_obs"],
                                 np.full(len(index), -9), index["combined_snrg"])
    for _, grp in index.groupby("GroupID"):
        ids = set(star_id[grp.index])
        assert len(ids) == 1 and next(iter(ids)).startswith("S")
        f = flag[grp.index]
        assert sorted(f) == list(range(1, len(grp) + 1))
        assert f[np.argmax(grp["combined_snrg"].to_numpy())] == 1
    assert len(set(star_id)) == index["GroupID"].nunique()


def test_assign_stars_uses_gaia_id_first() -> None:
    star_id, flag = assign_stars(np.array([10.0, 10.1, 50.0]), np.array([0.0, 0.0, 5.0]),
                                 np.array([7, 7, -9]), np.array([10.0, 20.0, 5.0]))
    assert star_id[0] == star_id[1] == "S004024+000000"
    assert list(flag) == [2, 1, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_connected_labels_equal_scipy_components(seed: int) -> None:
    """The numpy friends-of-friends grouping (no scipy.sparse import in an ingest) gives
    the same partition as scipy's connected_components, chains and singletons included."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from obpipe.io.tables import connected_labels

    rng = np.random.default_rng(seed)
    n = 3000
    ei = rng.integers(0, n, 1500)
    ej = np.clip(ei + rng.integers(-3, 4, ei.size), 0, n - 1)  # short chains
    perm = rng.permutation(n)  # scatter chain members over the index range
    ei, ej = perm[ei], perm[ej]
    ei = np.r_[ei, np.arange(0, 200, 2)]
    ej = np.r_[ej, np.arange(1, 201, 2)]
    label = connected_labels(n, ei, ej)
    _, ref = connected_components(coo_matrix((np.ones(ei.size), (ei, ej)), shape=(n, n)),
                                  directed=False)
    # same partition: a bijection between the two labellings
    pairs = np.unique(np.c_[label, ref], axis=0)
    assert len(pairs) == len(np.unique(label)) == len(np.unique(ref))
    # each label is the smallest index of its component
    assert np.all(label <= np.arange(n))
    assert np.array_equal(label[label], label)
    assert connected_labels(5, np.zeros(0), np.zeros(0)).tolist() == [0, 1, 2, 3, 4]
