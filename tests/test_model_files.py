"""Model files say where they came from, and a bad one gets a clear error (issue 17 item 2,
issue 16 item 4): networks as safetensors (read without torch), training-survey metadata
in every model file, crafted / legacy files refused with a message naming the file."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from obpipe import provenance
from obpipe.luminosity.network import MKsNetwork
from obpipe.luminosity.noise_model import NoiseModelResult


def _network(k: int = 2, n_in: int = 5, h: int = 4) -> MKsNetwork:
    rng = np.random.default_rng(1)
    w = {"l1.weight": rng.normal(size=(k, n_in, h)), "l1.bias": rng.normal(size=(k, h)),
         "l2.weight": rng.normal(size=(k, h, h)), "l2.bias": rng.normal(size=(k, h)),
         "out.weight": rng.normal(size=(k, h)), "out.bias": rng.normal(size=k)}
    return MKsNetwork(w, np.zeros(n_in), np.ones(n_in), 1.5, 2.0, None,
                      {"kind": "a", "input_kind": "pca_coeff"})


SURVEY = {"id": "abc", "table_checksum": "t", "n_spectra": 528, "simulated": True,
          "producer": "obpipe simulate", "created_utc": "2026-12-05T00:00:00+00:00",
          "path": "/x/survey.zarr"}


def test_network_roundtrip_records_training_survey_and_reads_without_torch(tmp_path):
    path = str(tmp_path / "net.safetensors")
    net = _network()
    with provenance.training_survey(SURVEY):
        net.save(path)
    back = MKsNetwork.load(path)
    for k, v in net.weights.items():
        np.testing.assert_array_equal(back.weights[k], v)
    assert back.y_mean == 1.5 and back.y_std == 2.0
    assert back.meta["training_survey"]["n_spectra"] == 528
    assert back.meta["training_survey"]["simulated"] is True
    assert "obpipe_version" in back.meta
    assert provenance.model_file_metadata(path)["training_survey"]["id"] == "abc"
    # a fresh interpreter loads it without importing torch
    code = ("import sys; from obpipe.luminosity.network import MKsNetwork; "
            f"MKsNetwork.load({path!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_noise_model_and_resave_keep_training_survey(tmp_path):
    res = NoiseModelResult(samples=np.zeros((10, 4)), ml=np.zeros(4), keep=np.ones(3, bool),
                           tau=np.ones(4), acceptance=0.3, n_steps=10, converged=True,
                           n_clip_iterations=0, meta={})
    path = str(tmp_path / "noise.npz")
    with provenance.training_survey(SURVEY):
        res.save(path)
    meta = provenance.model_file_metadata(path)
    assert meta["training_survey"]["table_checksum"] == "t"
    # saved again outside a run: the recorded training survey stays
    again = str(tmp_path / "noise2.npz")
    NoiseModelResult.load(path).save(again)
    assert provenance.model_file_metadata(again)["training_survey"]["id"] == "abc"


def _crafted(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("header", [
    # offsets past the end of the data
    {"l1.weight": {"dtype": "F32", "shape": [2, 5, 4], "data_offsets": [0, 4000]}},
    # shape that does not match its byte range
    {"l1.weight": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 16]}},
    # overlapping tensors
    {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
     "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}},
])
def test_crafted_safetensors_file_gets_a_clear_error(tmp_path, header):
    path = str(tmp_path / "bad.safetensors")
    _crafted(path, header, b"\0" * 24)
    with pytest.raises(provenance.ModelFileError, match="bad.safetensors"):
        MKsNetwork.load(path)


def test_consistent_file_with_inconsistent_network_shapes_is_refused(tmp_path):
    from safetensors.numpy import save_file

    net = _network()
    path = str(tmp_path / "net.safetensors")
    net.save(path)
    tensors, meta = provenance.read_safetensors(path)
    tensors["weights.l2.weight"] = np.zeros((2, 3, 3), np.float32)
    save_file(tensors, path, metadata=meta)
    with pytest.raises(provenance.ModelFileError, match="l2.weight shape"):
        MKsNetwork.load(path)


def test_legacy_torch_file_says_how_to_retrain(tmp_path):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "mks_network_a.pt")
    torch.save({"x": torch.zeros(3)}, path)
    with pytest.raises(provenance.ModelFileError, match="--stages luminosity --force"):
        MKsNetwork.load(path)
    with pytest.raises(provenance.ModelFileError, match="safetensors"):
        provenance.model_file_metadata(path)


def test_simulated_models_refused_for_real_survey_unless_allowed():
    real = {"simulated": False, "path": "/data/lamost.zarr"}
    meta = {"training_survey": SURVEY}
    with pytest.raises(provenance.ModelProvenanceError, match="--allow-simulated-models"):
        provenance.check_model_for_survey(meta, "m.npz", real, allow_simulated=False)
    assert provenance.check_model_for_survey(meta, "m.npz", real, allow_simulated=True)
    # on a simulated survey, or trained on a real one: fine, no flag
    assert not provenance.check_model_for_survey(meta, "m.npz", {"simulated": True}, False)
    real_trained = {"training_survey": {**SURVEY, "simulated": False}}
    assert not provenance.check_model_for_survey(real_trained, "m.npz", real, False)
    # no recorded origin: unknown, refused for a real survey
    with pytest.raises(provenance.ModelProvenanceError, match="records no training survey"):
        provenance.check_model_for_survey({}, "m.npz", real, allow_simulated=False)


def test_legacy_network_files_in_products_are_skipped_and_refused_as_models(tmp_path,
                                                                          caplog):
    import zipfile

    from obpipe.pipeline import check_models, install_models

    old = tmp_path / "old_products"
    (old / "models").mkdir(parents=True)
    with zipfile.ZipFile(old / "models" / "mks_network_a.pt", "w") as zf:  # torch's layout
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    # found in a products directory: not read, a warning that says how to retrain
    assert check_models(str(old), {"simulated": True}, allow_simulated=False) == []
    assert "--stages luminosity --force" in caplog.text
    # offered as --models (nothing else there): refused with the same advice
    with pytest.raises(provenance.ModelFileError, match="safetensors"):
        install_models(str(old), str(tmp_path / "new"), {"simulated": True}, False)
