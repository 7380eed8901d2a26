"""Pool workers exit when the driver dies, and commit no block after that (issue 17 item 4):
a real ``obpipe run`` is SIGKILLed (or SIGTERMed, as a batch system or ``kill`` does) during
its pooled distance stage."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest
import zarr

from tests.small_run import OBPIPE, small_run


def _register(products: str) -> np.ndarray | None:
    try:
        grp = zarr.open_group(f"{products}/products.zarr", mode="r")
        return np.asarray(grp["distance_blocks_done"][:]) if "distance_blocks_done" in grp \
            else None
    except Exception:  # being created
        return None


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_sigkill_of_the_driver_ends_its_pool_workers(sig, tmp_path, tmp_path_factory):
    survey, base = small_run(tmp_path_factory)
    products = str(tmp_path / "products")
    shutil.copytree(base, products)
    slow = tmp_path / "slow.toml"
    slow.write_text("[distance]\ngrid_step_pc = 0.02\n")  # ~2 s a block
    driver = subprocess.Popen(
        [*OBPIPE, "run", survey, "--out", products, "-q",
         "--stages", "distance", "--force", "--scheduler", "processes", "--config",
         str(slow)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = psutil.Process(driver.pid)
    workers: list[psutil.Process] = []
    fresh = False  # --force: the complete register of the copy is replaced first
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        workers = [c for c in proc.children(recursive=True) if c.is_running()]
        reg = _register(products)
        fresh = fresh or (reg is not None and not reg.any())
        if fresh and len(workers) > 1 and reg.any() and not reg.all():
            break  # pool running, some blocks committed, some not
        time.sleep(0.05)
    assert driver.poll() is None and workers, "the distance stage ended before the kill"
    os.kill(driver.pid, sig)
    driver.wait()
    time.sleep(1.0)  # a commit already past its check may land in this second
    after_kill = _register(products)
    assert after_kill is not None and not after_kill.all()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], f"orphan workers still running: {[p.pid for p in alive]}"
    time.sleep(3.0)
    np.testing.assert_array_equal(_register(products), after_kill)


def test_an_orphan_worker_exits_even_when_its_stderr_is_a_broken_pipe() -> None:
    """The watchdog's last word goes to stderr; when that is a pipe whose reader died with
    the driver (a killed parent, ``obpipe run ... | head``), writing raises EPIPE, and the
    worker must exit all the same (before the fix the thread died and the worker, with its
    fork server, lived on)."""
    code = ("import time; time.sleep(0.5); "
            "from obpipe.engine.blockwise import _exit_orphan; "
            "_exit_orphan(('host', 12345, 0.0), 'test')")
    child = subprocess.Popen([OBPIPE[0], "-c", code], stderr=subprocess.PIPE)
    child.stderr.close()  # the reader is gone before the worker writes
    assert child.wait(timeout=60) == 70
