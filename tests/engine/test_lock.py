"""One run at a time on a products directory (issue 17 item 3), with real processes:
a second ``obpipe run`` exits 2 naming the holder; a stale lock of a dead pid is taken
over with a warning; a failing ``--force`` leaves a model file it did not write."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from obpipe.config import SimulationConfig
from obpipe.engine.lock import LOCK_FILE, ProductsLocked, lock_path, products_lock
from obpipe.simulate.survey import simulate_survey
from tests.small_run import OBPIPE


@pytest.fixture(scope="module")
def tiny_survey(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("lock") / "tiny.zarr")
    simulate_survey(path, SimulationConfig(n_stars=30, seed=3, chunk_size=20),
                    scheduler="synchronous")
    return path


def test_second_run_exits_2_naming_the_holder(tmp_path, tiny_survey):
    products = str(tmp_path / "products")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from obpipe.engine.lock import products_lock\n"
         f"with products_lock({products!r}):\n"
         "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run([*OBPIPE, "run", tiny_survey, "--out", products, "-q",
                                 "--stages", "index"], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        assert f"pid {holder.pid}" in second.stderr
        assert socket.gethostname() in second.stderr
        # the holder's products are untouched: no store was created by the second run
        assert not os.path.exists(os.path.join(products, "products.zarr"))
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, tiny_survey, caplog):
    products = str(tmp_path / "products")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    os.makedirs(products)
    with open(os.path.join(products, LOCK_FILE), "w") as fh:
        json.dump({"pid": int(dead.stdout), "host": socket.gethostname(),
                   "started_utc": "2026-01-01T00:00:00+00:00", "token": "x"}, fh)
    run = subprocess.run([*OBPIPE, "-v", "run", tiny_survey, "--out", products, "-q",
                          "--stages", "index"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "taking over a stale lock" in run.stderr
    assert not os.path.exists(lock_path(products))  # released at the end


def test_lock_in_process_and_on_a_url():
    with products_lock("memory://h4a-lock/products") as rec:
        assert rec["pid"] == os.getpid() and "lease_expires_utc" in rec
        with pytest.raises(ProductsLocked, match=f"pid {os.getpid()}"):
            with products_lock("memory://h4a-lock/products"):
                pass
    with products_lock("memory://h4a-lock/products"):  # released: free again
        pass


def test_failing_force_keeps_a_model_file_it_did_not_write(tmp_path, tiny_survey):
    """The tiny survey has too few spectra to fit the PCA: a forced pca rerun fails, and
    the model file that was there before (copied in) is still there, unchanged."""
    products = str(tmp_path / "products")
    run = subprocess.run([*OBPIPE, "run", tiny_survey, "--out", products, "-q",
                          "--stages", "index,normalize"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    model = os.path.join(products, "models", "pca_model.npz")
    os.makedirs(os.path.dirname(model))
    np.savez(model, meta=np.array(json.dumps({"copied in": "by the user"})))
    with open(model, "rb") as fh:
        before = fh.read()
    t0 = time.time()
    run = subprocess.run([*OBPIPE, "run", tiny_survey, "--out", products, "-q", "--force",
                          "--stages", "pca"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "--models" in run.stderr  # the too-small error offers trained models
    with open(model, "rb") as fh:
        assert fh.read() == before
    assert os.path.getmtime(model) < t0
    assert [f for f in os.listdir(os.path.dirname(model)) if ".tmp" in f] == []


def test_temp_names_are_unique():
    from obpipe.engine.blockwise import temp_name

    names = {temp_name("/p/models/noise_model_a.npz") for _ in range(50)}
    assert len(names) == 50
    assert all(n.endswith(".npz") and n.startswith("/p/models/noise_model_a.tmp-")
               for n in names)
