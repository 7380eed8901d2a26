"""obpipe.memory: the malloc policies of the block workers, in fresh processes (the
settings are process-wide and set once)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or not platform.libc_ver()[0].startswith("glibc"),
    reason="glibc malloc settings")

#: two threads of a pool, each allocating, filling and freeing a block-sized float32 buffer (2,000
#: spectra x 3,909 pixels, 31 MB) and a few smaller temporaries per "block", as the
#: spectral stages do; prints the minor page faults per block after a warm-up and the
#: resident memory after 10 and after 40 blocks, and after ``release_free_heap``; then
#: the faults per block after it and after the policy is applied again
_SCRIPT = """
import json, resource, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import psutil
from obpipe import memory
getattr(memory, sys.argv[1])()

def block(seed):
    buf = np.empty((2000, 3909), np.float32)
    buf.fill(seed)
    tmp = [np.full((256, 3909), seed, np.float32) for _ in range(4)]
    return float(buf[-1, -1] + sum(t[0, 0] for t in tmp))

pool = ThreadPoolExecutor(2)  # persistent, as Dask's threads
def run(n):
    list(pool.map(block, range(2 * n)))

run(3)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
run(7)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 14
rss10 = psutil.Process().memory_info().rss
run(30)
rss40 = psutil.Process().memory_info().rss
memory.release_free_heap()
released = psutil.Process().memory_info().rss
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
run(5)  # after release_free_heap: the release policy
after = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10
getattr(memory, sys.argv[1])()
run(3)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
run(5)  # the policy under test again
again = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10
print(json.dumps({"faults_per_block": faults, "rss10": rss10, "rss40": rss40,
                  "released": released, "faults_after_release": after, "faults_again": again}))
"""
PAGES_PER_BLOCK = 2000 * 3909 * 4 // 4096


def _measure(policy: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, policy], capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_reuse_block_buffers_avoids_fresh_pages_and_stays_flat():
    reuse = _measure("reuse_block_buffers")
    release = _measure("release_large_buffers_to_the_os")
    # the reuse policy serves every block from the pages the previous block touched ...
    assert reuse["faults_per_block"] < 0.05 * PAGES_PER_BLOCK
    # ... where the mmap policy faults in (and the kernel zeroes) fresh ones (fewer faults
    # than pages where numpy gets transparent huge pages)
    assert release["faults_per_block"] > reuse["faults_per_block"] + 10
    # and its resident memory does not grow with the number of blocks
    assert reuse["rss40"] < reuse["rss10"] + 16e6
    # release_free_heap (at the end of a stage) hands the kept buffers back: at least the
    # two threads' block buffers
    assert reuse["released"] < reuse["rss40"] - 2 * PAGES_PER_BLOCK * 4096
    # ... and goes back to the release policy for the stages that follow, until a block
    # asks for reuse again
    assert reuse["faults_after_release"] > reuse["faults_per_block"] + 10
    assert reuse["faults_again"] < 0.05 * PAGES_PER_BLOCK

