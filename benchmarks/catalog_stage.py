"""The catalog stage alone (``obpipe.catalog.write_catalog``: catalog + unique-star view,
Parquet + FITS), this tree beside another revision, alternating, on the same products.

    python benchmarks/catalog_stage.py SURVEY PRODUCTS_DIR --baseline-rev REV [--repeat 2]

Each run is a fresh Python process (``PYTHONPATH`` = the tree: the working tree, or
``REV`` exported with ``git archive``) that starts the shared pool of 2 worker processes
(as the pipeline's prestart does, untimed), then times ``write_catalog`` on the
"processes" scheduler (the pipeline's choice on "threads" for >= 8 chunks). Printed per
run: wall seconds, the driver's CPU seconds, the load. The catalog files of PRODUCTS_DIR
are rewritten (with the same contents: ``benchmarks/golden.py`` checks that).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import os, resource, sys, time
import dask

def _warm():
    import obpipe.catalog  # noqa: F401
    return os.getpid()

def main():
    from obpipe.catalog import write_catalog
    from obpipe.engine.pools import process_pool_for, shared_process_pool
    survey, products = sys.argv[1], sys.argv[2]
    with dask.config.set(num_workers=2):
        pool = shared_process_pool(2)
        for f in [pool.submit(_warm) for _ in range(4)]:
            f.result()
        c0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        with process_pool_for("processes"):
            write_catalog(survey, products, scheduler="processes")
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime
    print(f"{wall:.2f} {cpu:.2f} {os.getloadavg()[0]:.1f}")

if __name__ == "__main__":
    main()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("survey")
    ap.add_argument("products")
    ap.add_argument("--baseline-rev", required=True)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="obpipe-catalog-stage-") as work:
        base = os.path.join(work, "baseline")
        os.makedirs(base)
        tar = subprocess.run(["git", "-C", REPO, "archive", args.baseline_rev, "obpipe"],
                             check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", base], input=tar, check=True)
        child = os.path.join(work, "child.py")
        with open(child, "w") as fh:
            fh.write(_CHILD)
        best: dict[str, float] = {}
        for rep in range(args.repeat):
            for label, tree in ((args.baseline_rev, base), ("working tree", REPO)):
                out = subprocess.run([sys.executable, child, args.survey, args.products],
                                     env={**os.environ, "PYTHONPATH": tree},
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(f"{label}: {out.stderr[-2000:]}")
                wall, cpu, load = out.stdout.split()[-3:]
                best[label] = min(best.get(label, float("inf")), float(wall))
                print(f"run {rep + 1} {label}: wall {wall} s, driver CPU {cpu} s, "
                      f"load {load}", flush=True)
        print("best wall: " + ", ".join(f"{k} {v:.1f} s" for k, v in best.items()))


if __name__ == "__main__":
    main()
