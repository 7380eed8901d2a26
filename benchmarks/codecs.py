"""Zarr codecs of the spectra-sized product arrays, side by side (issue 19).

Reads ``--blocks`` chunks (``--rows`` spectra each) of ``norm_flux``, ``norm_ivar`` and
``recon_flux`` from an existing products store, writes each into a fresh Zarr array with
every codec below and reads it back, and prints per block: CPU seconds to write
(compress + store) and to read (load + decompress), the best of ``--repeat``, and MB on
disk. Every codec is lossless: the values read back are checked bit for bit.

    python benchmarks/codecs.py PRODUCTS_DIR [--blocks 3] [--rows 2000] [--repeat 3]

Codecs: Zstd level 1 (the products' codec before issue 19), Blosc LZ4 + byte shuffle at
levels 5 (:func:`obpipe.io.store.spectra_compressors`, the codec now) and 1, and none.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from obpipe.engine.blockwise import products_path
from obpipe.io import store

VARIABLES = ("norm_flux", "norm_ivar", "recon_flux")


def codecs() -> dict[str, tuple | None]:
    return {"zstd level 1 (old)": (ZstdCodec(level=1),),
            "blosc lz4 shuffle 5 (new)": store.spectra_compressors(),
            "blosc lz4 shuffle 1": (BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"),),
            "none": None}


def _size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path)
               for f in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("products", help="a products directory (with norm_flux, recon_flux)")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    grp = zarr.open_group(products_path(args.products), mode="r")
    work = tempfile.mkdtemp(prefix="obpipe-codecs-")
    print(f"load average {os.getloadavg()[0]:.1f}; per block of {args.rows} spectra:")
    print(f"{'variable':<11} {'codec':<26} {'write CPU s':>11} {'read CPU s':>10} {'MB':>6}")
    try:
        for var in VARIABLES:
            x = np.asarray(grp[var][: args.blocks * args.rows])
            for name, comp in codecs().items():
                path = os.path.join(work, "a")
                arr = zarr.create_array(path, shape=x.shape, chunks=(args.rows, x.shape[1]),
                                        dtype=x.dtype, compressors=comp, zarr_format=3,
                                        overwrite=True)
                write, read = [], []
                for _ in range(args.repeat):
                    t0 = time.process_time()
                    arr[:] = x
                    write.append(time.process_time() - t0)
                    t0 = time.process_time()
                    back = arr[:]
                    read.append(time.process_time() - t0)
                    if not np.array_equal(back.view(np.uint8), x.view(np.uint8)):
                        raise SystemExit(f"{var} {name}: values differ after a round trip")
                print(f"{var:<11} {name:<26} {min(write) / args.blocks:>11.3f} "
                      f"{min(read) / args.blocks:>10.3f} {_size(path) / args.blocks / 1e6:>6.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
