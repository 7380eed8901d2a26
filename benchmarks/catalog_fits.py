"""Time to write the catalog's FITS file block by block (``TableStreamWriter``), this
checkout against another one, side by side in one run.

Builds a catalog of ``--rows`` rows (default 28,000: a LAMOST-DR5-size OB-star
catalog) in the catalog's own schema (``obpipe.catalog.CATALOG_COLUMNS``: every
column, NaN / null floats, -9 flags, strings), split into blocks of ``--block`` rows
(the cube's chunk, default 2,000), and times writing ``catalog.fits`` from those blocks
(the Parquet -> astropy conversion of each block included; the table's construction
not). Each checkout runs in a process of its own (``PYTHONPATH``), alternating,
``--repeat`` times each; the best and all times are printed, with the SHA-256 of the
files each wrote (equal hashes: byte-identical files).

    python benchmarks/catalog_fits.py --baseline /tmp/old-checkout [--rows 28000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

WORKER = r"""
import hashlib, json, sys, time
import numpy as np, pyarrow as pa
from obpipe import catalog as cat
from obpipe.catalog import CATALOG_COLUMNS, TableStreamWriter, fits_provenance_cards

n, block, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
meta = {"obpipe_version": "bench", "obpipe_config": json.dumps({"k": "v" * 500}),
        "obpipe_uses_simulated_models": "false"}
rng = np.random.default_rng(0)
lengths = {k: 24 for k, c in CATALOG_COLUMNS.items() if c.dtype == "str"}
schema = cat._arrow_schema(CATALOG_COLUMNS, lengths, meta)
cols = {}
for name, c in CATALOG_COLUMNS.items():
    if c.dtype == "str":
        cols[name] = pa.array([f"S{i:09d}+{i % 977:06d}" for i in range(n)])
    elif c.dtype.startswith("float"):
        v = rng.normal(0, 10, n).astype(c.dtype)
        v[::7] = np.nan
        cols[name] = pa.array(v, mask=np.arange(n) % 11 == 3, from_pandas=False)
    else:
        v = rng.integers(-9, 100, n).astype(c.dtype)
        cols[name] = pa.array(v)
table = pa.table(cols, schema=schema)
blocks = [table.slice(a, block) for a in range(0, n, block)]
t0 = time.perf_counter()
c0 = time.process_time()
with TableStreamWriter(out, CATALOG_COLUMNS, n, ("fits",), fits_provenance_cards(meta)) as w:
    for b in blocks:
        w.write(b)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
digest = hashlib.sha256(open(out + ".fits", "rb").read()).hexdigest()
print(json.dumps({"wall": wall, "cpu": cpu, "sha256": digest,
                  "bytes": len(open(out + ".fits", "rb").read())}))
"""


def run(checkout: str, rows: int, block: int, out: str) -> dict:
    """One timed write in a fresh process importing obpipe from ``checkout``."""
    env = {**os.environ, "PYTHONPATH": checkout, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", WORKER, str(rows), str(block), out],
                         env=env, capture_output=True, text=True, check=False, cwd=checkout)
    if res.returncode:
        raise SystemExit(f"{checkout}: {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=28_000)
    ap.add_argument("--block", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", default=None, help="another checkout (the old code)")
    args = ap.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sides = [("this checkout", here)]
    if args.baseline:
        sides.insert(0, ("baseline", os.path.abspath(args.baseline)))
    load0 = os.getloadavg()[0]
    times: dict[str, list[dict]] = {label: [] for label, _ in sides}
    with tempfile.TemporaryDirectory(prefix="obpipe-bench-catfits-") as tmp:
        for _ in range(args.repeat):  # alternating, so a change of load hits both
            for label, checkout in sides:
                out = os.path.join(tmp, label.replace(" ", "_"))
                times[label].append(run(checkout, args.rows, args.block, out))
    print(f"catalog.fits, {args.rows} rows in blocks of {args.block} "
          f"(best of {args.repeat}, seconds):")
    print(f"{'code':14s} {'wall s':>7s} {'CPU s':>7s} {'MB':>6s}  all wall s     sha256")
    for label, _ in sides:
        r = times[label]
        best = min(r, key=lambda x: x["wall"])
        walls = " ".join(f"{x['wall']:.2f}" for x in r)
        print(f"{label:14s} {best['wall']:7.2f} {min(x['cpu'] for x in r):7.2f} "
              f"{best['bytes'] / 1e6:6.1f}  {walls:14s} {best['sha256'][:16]}")
    if args.baseline:
        b = min(x["wall"] for x in times["baseline"])
        n = min(x["wall"] for x in times["this checkout"])
        med_n = np.median([x["wall"] for x in times["this checkout"]])
        med_b = np.median([x["wall"] for x in times["baseline"]])
        same = times["baseline"][0]["sha256"] == times["this checkout"][0]["sha256"]
        print(f"this / baseline wall: {n / b:.2f}x best, {med_n / med_b:.2f}x median; "
              f"files byte-identical: {same}")
    print(f"cores: {os.cpu_count()}; load average (1 min) before/after: {load0:.1f} / "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
