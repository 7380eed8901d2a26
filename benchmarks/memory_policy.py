"""Malloc policies of the block workers (``obpipe.engine.memory``), each in a fresh process.

Moved from tests/test_memory.py (issue 17): page-fault and RSS counts depend on the
machine's load (another process's memory pressure, transparent huge pages), so they are
measured and printed here, side by side, not asserted in the test suite.

Two threads of a pool each allocate, fill and free a block-sized float32 buffer
(2,000 spectra x 3,909 pixels, 31 MB) and a few smaller temporaries per "block", as the
spectral stages do. For each policy (``reuse_block_buffers``: the spectral stages' and
ingest's; ``release_large_buffers_to_the_os``: the default elsewhere) it prints the minor
page faults per block after a warm-up, the resident memory after 10 and 40 blocks and
after ``release_free_heap``, and the faults per block after the release and after the
policy is applied again. Expected (glibc): reuse faults << the block's pages and flat
RSS; release faults ~ the block's pages.

    python benchmarks/memory_policy.py
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

_SCRIPT = """
import json, resource, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import psutil
from obpipe.engine import memory
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


def measure(policy: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _SCRIPT, policy], capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if platform.system() != "Linux" or not platform.libc_ver()[0].startswith("glibc"):
        sys.exit("glibc malloc settings: Linux with glibc only")
    rows = {p: measure(p) for p in ("reuse_block_buffers", "release_large_buffers_to_the_os")}
    print(f"pages per block buffer: {PAGES_PER_BLOCK}")
    print(f"{'':28s}" + "".join(f"{p:>34s}" for p in rows))
    for key, unit, scale in (("faults_per_block", "", 1), ("rss10", " MB", 1e-6),
                             ("rss40", " MB", 1e-6), ("released", " MB", 1e-6),
                             ("faults_after_release", "", 1), ("faults_again", "", 1)):
        print(f"{key + unit:28s}" + "".join(f"{r[key] * scale:34.1f}" for r in rows.values()))


if __name__ == "__main__":
    main()
