"""``obpipe run --models`` on the real LAMOST files of ``../shared/data`` (issue 17 item 2):
too few spectra to train says what is needed and offers ``--models``; the demo-style models
of a mock are refused for the real survey unless ``--allow-simulated-models``, and then
reused as they are, listed in the run summary, and every catalog row carries the
``simulated_models`` quality bit (the catalog headers say so)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from astropy.io import fits

from obpipe.catalog import QUALITY_BITS, read_catalog_provenance
from obpipe.ingest import IngestConfig, ingest
from tests.small_run import OBPIPE, small_run


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*OBPIPE, "run", *args, "-q"], capture_output=True, text=True,
                          timeout=600)


def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


@pytest.mark.slow
def test_real_survey_needs_models_and_refuses_simulated_ones(shared_data, tmp_path,
                                                            tmp_path_factory):
    table = tmp_path / "index.csv"
    pd.read_csv(shared_data / "lamost_dr8" / "index.csv").to_csv(table, index=False)
    real = str(tmp_path / "real.zarr")
    ingest([shared_data / "lamost_dr8", shared_data / "lamost_dr1"], str(table), real,
           config=IngestConfig(), scheduler="threads")

    out = _run(real, "--out", str(tmp_path / "own"), "--stages", "index,normalize,pca")
    assert out.returncode == 2
    assert "S/N >= 50" in out.stderr and "--models" in out.stderr

    _survey, mock_products = small_run(tmp_path_factory)
    out = _run(real, "--out", str(tmp_path / "p"), "--models", mock_products,
               "--stages", "index,normalize,pca")
    assert out.returncode == 2
    assert "--allow-simulated-models" in out.stderr
    assert "simulated survey" in out.stderr or "records no training survey" in out.stderr
    assert not (tmp_path / "p" / "models").exists()  # refused models are not copied in

    out = _run(real, "--out", str(tmp_path / "p"), "--models", mock_products,
               "--allow-simulated-models", "--json")  # every stage, to the catalog
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert "pca_model.npz" in summary["simulated_models"]
    assert summary["survey_identity"]["simulated"] is False
    # every catalog row carries the simulated_models bit, and the headers say so
    bit = QUALITY_BITS["simulated_models"]
    for name in ("catalog", "catalog_unique"):
        q = pd.read_parquet(tmp_path / "p" / f"{name}.parquet")["quality_flags"].to_numpy()
        assert len(q) > 0 and ((q & bit) > 0).all(), name
        for fmt in ("parquet", "fits"):
            meta = read_catalog_provenance(str(tmp_path / "p" / f"{name}.{fmt}"))
            assert meta["obpipe_uses_simulated_models"] == "true", (name, fmt)
            assert json.loads(meta["obpipe_simulated_models"]) == summary["simulated_models"]
            assert json.loads(meta["obpipe_survey"])["simulated"] is False
        header = fits.getheader(tmp_path / "p" / f"{name}.fits", 1)
        assert header["OBPIPE USES SIMULATED MODELS"] is True
        assert any("simulated survey" in str(c) for c in header["COMMENT"])
    # reused as supplied, not retrained
    src = Path(mock_products) / "models" / "pca_model.npz"
    assert _digest(tmp_path / "p" / "models" / "pca_model.npz") == _digest(src)
    assert "reusing" in subprocess.run(
        [*OBPIPE, "-v", "run", real, "--out", str(tmp_path / "p"), "--models",
         mock_products, "--allow-simulated-models", "--stages", "pca", "-q"],
        capture_output=True, text=True, timeout=600).stderr
    # --force with --models reruns the stages but never retrains the supplied networks (this
    # survey is too small to train on: a retrain would stop with exit code 2)
    from obpipe.stages.luminosity import NETWORK_FILES, NOISE_FILES

    supplied = {f: _digest(Path(mock_products) / "models" / f)
                for f in (*NETWORK_FILES.values(), *NOISE_FILES.values())}
    out = _run(real, "--out", str(tmp_path / "p"), "--models", mock_products,
               "--allow-simulated-models", "--stages", "luminosity", "--force", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["stages"]["luminosity"]["rerun_because"] == "--force"
    for name, digest in supplied.items():
        assert _digest(tmp_path / "p" / "models" / name) == digest, name
