"""`obpipe photometry TABLE`: the extinction model on real LAMOST hot stars, the command on
the Gaia archive's own table, other formats, and bad input (issue 20)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from obpipe.cli import main
from obpipe.io.tables import TableError
from obpipe.photometry import extinction
from obpipe.photometry.block import photometry_block
from obpipe.photometry.star_table import OUTPUT_COLUMNS, read_inputs, run_photometry_table

REAL_TABLE = (Path(__file__).resolve().parents[3] / "shared" / "data" / "hotstars_gaia_2mass"
              / "lamost_hot_stars_gaia_dr3_2mass.csv")
BANDS = ("BP", "RP", "J", "H")
COLOURS = ("ebv_bp_rp", "ebv_rp_j", "ebv_j_h")


@pytest.fixture(scope="module")
def real_table() -> Path:
    if not REAL_TABLE.is_file():
        pytest.skip("needs ../shared/data/hotstars_gaia_2mass (real Gaia x 2MASS table)")
    return REAL_TABLE


@pytest.fixture(scope="module")
def real_inputs(real_table):
    """One row per Gaia source with parallax S/N > 10 (the issue's selection)."""
    source_id, inputs = read_inputs(real_table)
    _, first = np.unique(source_id, return_index=True)
    keep = np.zeros(source_id.size, bool)
    keep[first] = True
    keep &= inputs["parallax"] / inputs["parallax_error"] > 10
    assert keep.sum() > 200
    return {k: v[keep] for k, v in inputs.items()}


def _consistency(inputs, **options) -> tuple[float, float]:
    """(median reduced chi2 of the colour excesses, spread of the per-colour medians)."""
    out = photometry_block(inputs, bands=BANDS, per_colour=True, **options)
    assert np.all(out["photometry_flags"] & extinction.FLAG_DEFAULT_TEFF)  # Teff unknown
    med = [float(np.nanmedian(out[c])) for c in COLOURS]
    return float(np.nanmedian(out["ebv_chi2"])), max(med) - min(med)


def test_default_model_makes_the_colours_of_real_stars_consistent(real_inputs) -> None:
    chi2, spread = _consistency(real_inputs)
    assert chi2 <= 3.0
    assert spread <= 0.05


@pytest.mark.parametrize("extinction_dependent", [False, True])
def test_f99_rv31_fails_the_same_test(real_inputs, extinction_dependent) -> None:
    chi2, spread = _consistency(real_inputs, law="F99", r_v=3.1,
                                extinction_dependent=extinction_dependent)
    assert chi2 > 3.0 and spread > 0.05


def test_cli_on_the_table_as_the_gaia_archive_writes_it(real_table, tmp_path, capsys) -> None:
    out = tmp_path / "phot.parquet"
    assert main(["photometry", str(real_table), "--out", str(out)]) == 0
    assert "written" in capsys.readouterr().out
    frame = pd.read_parquet(out)
    raw = pd.read_csv(real_table)
    assert len(frame) == len(raw)  # one row per input row, repeats kept
    np.testing.assert_array_equal(frame["source_id"].to_numpy(), raw["source_id"].to_numpy())
    for name in (*OUTPUT_COLUMNS, *COLOURS):
        assert name in frame, name
    assert "ebv_g_r" not in frame  # no optical bands in the table
    assert np.isfinite(frame["ebv"]).all() and np.isfinite(frame["MKs_geo"]).all()
    flags = frame["photometry_flags"].to_numpy()
    # 2MASS errors are not in the table: documented defaults, flagged on every row
    assert np.all(flags & extinction.FLAG_DEFAULT_MAG_ERROR)
    assert np.all(flags & extinction.FLAG_DEFAULT_TEFF)
    # A_Ks and its error come with the chosen model's R_Ks (G23, below F99's 0.38)
    np.testing.assert_allclose(frame["AKs"], frame["R_Ks"] * frame["ebv"], rtol=1e-5)
    assert 0.3 < frame["R_Ks"].median() < 0.37
    assert (frame["AKs_err"] > frame["R_Ks"] * frame["ebv_err"] * 0.99).all()


@pytest.mark.parametrize("suffix", [".parquet", ".fits", ".xml"])
def test_other_formats_give_the_same_rows(real_table, tmp_path, suffix) -> None:
    from astropy.table import Table

    raw = pd.read_csv(real_table).iloc[:12]
    csv = tmp_path / "t.csv"
    raw.to_csv(csv, index=False)
    other = tmp_path / f"t{suffix}"
    fmt = {".parquet": "parquet", ".fits": "fits", ".xml": "votable"}[suffix]
    Table.from_pandas(raw.drop(columns=["skiff_type"])).write(other, format=fmt)
    a = run_photometry_table(csv, tmp_path / "a.parquet")
    b = run_photometry_table(other, tmp_path / "b.parquet")
    np.testing.assert_array_equal(a["source_id"], b["source_id"])
    np.testing.assert_allclose(a["ebv"], b["ebv"], rtol=1e-6)
    np.testing.assert_allclose(a["MKs_geo"], b["MKs_geo"], rtol=1e-6)


def _small_table(path: Path) -> pd.DataFrame:
    frame = pd.DataFrame({
        "source_id": [11, 12, 13],
        "parallax": [0.5, 0.8, 0.3], "parallax_error": [0.02, 0.03, 0.02],
        "phot_g_mean_mag": [11.0, 12.0, 13.0], "phot_bp_mean_mag": [11.3, 12.4, 13.5],
        "phot_rp_mean_mag": [10.6, 11.4, 12.3],
        "phot_bp_mean_flux_over_error": [1000.0, 800.0, 500.0],
        "phot_rp_mean_flux_over_error": [1200.0, 900.0, 600.0],
        "j_m": [9.9, 10.5, 11.2], "h_m": [9.7, 10.2, 10.8], "ks_m": [9.6, 10.1, 10.6],
        "j_msigcom": [0.02, 0.02, np.nan], "h_msigcom": [0.02, 0.03, 0.03],
        "ks_msigcom": [0.02, 0.02, 0.02],
    })
    frame.to_csv(path, index=False)
    return frame


def test_missing_errors_are_flagged_per_row_and_given_errors_are_used(tmp_path) -> None:
    _small_table(tmp_path / "t.csv")
    out = run_photometry_table(tmp_path / "t.csv", tmp_path / "o.parquet")
    flags = out["photometry_flags"].to_numpy()
    assert not flags[0] & extinction.FLAG_DEFAULT_MAG_ERROR
    assert flags[2] & extinction.FLAG_DEFAULT_MAG_ERROR  # j_msigcom missing
    assert (out["ebv_nbands"] == 4).all()


def test_missing_required_column_names_it(tmp_path) -> None:
    frame = _small_table(tmp_path / "t.csv").drop(columns=["parallax_error"])
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TableError, match="'parallax_error' is missing"):
        run_photometry_table(tmp_path / "t.csv", tmp_path / "o.parquet")


def test_too_few_bands_is_refused(tmp_path) -> None:
    frame = _small_table(tmp_path / "t.csv")
    frame = frame.drop(columns=["phot_bp_mean_mag", "phot_rp_mean_mag", "j_m"])
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TableError, match="fewer than two E\\(B-V\\) bands"):
        run_photometry_table(tmp_path / "t.csv", tmp_path / "o.parquet")


def test_non_numeric_value_names_column_and_row(tmp_path, capsys) -> None:
    frame = _small_table(tmp_path / "t.csv").astype({"h_m": object})
    frame.loc[1, "h_m"] = "10.2x"
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TableError, match=r"column 'h_m', row 2\b.*'10.2x' is not a number"):
        run_photometry_table(tmp_path / "t.csv", tmp_path / "o.parquet")
    # the command says the same in one line and exits 2
    code = main(["photometry", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o.parquet")])
    assert code == 2
    err = capsys.readouterr().err
    assert "h_m" in err and "row 2" in err
