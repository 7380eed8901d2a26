"""Peak memory of reading a gzip bomb: the ingest's size cap against a full inflate.

Writes a ~1 MB gzip file that inflates to ``--gib`` GiB of zeros (default 1) and reads it
with :func:`obpipe.io.lamost_batch.process_file` in a fresh child process, twice: with the
default cap (``max_decompressed_mib`` = 64 MiB: the stream is inflated only up to the
limit) and with no cap (``max_bytes=None``, what ``obpipe ingest`` did before issue 17:
the whole stream inflated, then rejected as "not a FITS file"). Prints each child's
peak RSS (``ru_maxrss``), wall time and report reason side by side.

    python benchmarks/gzip_bomb.py            # 1 GiB bomb
    python benchmarks/gzip_bomb.py --gib 0.25
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, time
from obpipe.io.lamost import DEFAULT_MAX_DECOMPRESSED_BYTES
from obpipe.io.lamost_batch import process_file
limit = None if sys.argv[2] == "none" else DEFAULT_MAX_DECOMPRESSED_BYTES
t0 = time.perf_counter()
rec = process_file(sys.argv[1], max_bytes=limit)
print(json.dumps({"seconds": time.perf_counter() - t0, "status": rec["status"],
                  "reason": rec["reason"],
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_bomb(path: str, gib: float) -> int:
    piece = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=9) as fh:
        for _ in range(int(gib * 1024)):
            fh.write(piece)
    return os.path.getsize(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="decompressed size, GiB")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gzip-bomb-") as tmp:
        path = os.path.join(tmp, "bomb.fits.gz")
        size = make_bomb(path, args.gib)
        print(f"bomb: {size / 1e6:.2f} MB on disk, {args.gib:g} GiB inflated")
        for label, limit in (("capped (64 MiB, default)", "default"),
                             ("no cap (before issue 17)", "none")):
            out = subprocess.run([sys.executable, "-c", CHILD, path, limit],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out)
            print(f"{label:28s} peak RSS {r['peak_rss_mib']:8.0f} MiB  "
                  f"{r['seconds']:6.2f} s  {r['status']}: {r['reason'][:70]}")


if __name__ == "__main__":
    main()
