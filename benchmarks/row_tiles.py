"""Cost of chunk-size independence (issue 17 item 5): the spectral block functions on tiles
of exactly ``obpipe.engine.blockwise.ROW_TILE`` rows (``row_tiled``) against the same functions
on the whole block (``__wrapped__``), side by side, and the check that the tiled results
are bitwise identical for other block sizes while the untiled ones are not.

    python benchmarks/row_tiles.py --survey S.zarr --products P [--rows 2000] [--repeat 3]

``P``: products of ``S`` through the ``pca`` stage (its model and norm_flux are read).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from obpipe.engine.blockwise import ROW_TILE, open_products
from obpipe.io import store
from obpipe.spectra.bases import MODEL_FILE
from obpipe.stages.normalize import block as normalize_block
from obpipe.stages.pca import block as pca_block


def _best_pair(fn_a, fn_b, repeat: int) -> tuple[float, float]:
    """Best of ``repeat`` times of each, measured alternately (a loaded machine's load
    shifts both alike)."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return min(times[0]), min(times[1])


def _blocks(fn, inputs: dict[str, np.ndarray], size: int, **kw) -> dict[str, np.ndarray]:
    n = next(iter(inputs.values())).shape[0]
    parts = [fn({k: v[a:a + size] for k, v in inputs.items()}, **kw) for a in range(0, n, size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _differing(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.sum(~((a == b) | (np.isnan(a) & np.isnan(b)))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--survey", required=True)
    ap.add_argument("--products", required=True)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    survey = store.open_cube(args.survey)
    n = min(args.rows, survey.sizes["spec"])
    raw = {k: survey[k][:n].values for k in ("flux", "ivar", "mask")}
    prods = open_products(args.products)
    normed = {k: prods[k][:n].values for k in ("norm_flux", "norm_ivar")}
    model = os.path.join(args.products, MODEL_FILE)
    cases = {
        "normalize_block": (normalize_block, raw, {"width_aa": 50.0}),
        "pca_block": (pca_block, normed, {"model_path": model, "prior": True}),
    }
    print(f"{n} rows, tiles of {ROW_TILE}; best of {args.repeat} (s), alternating; values "
          "differing from one whole block when cut in blocks of 50 / 333")
    print(f"{'function':<16} {'untiled':>8} {'tiled':>8} {'ratio':>6}   "
          f"{'untiled diff':>14} {'tiled diff':>12}")
    for name, (fn, inputs, kw) in cases.items():
        plain = fn.__wrapped__
        fn(dict((k, v[:4]) for k, v in inputs.items()), **kw)  # warm caches, load the model
        t_plain, t_tiled = _best_pair(lambda: plain(inputs, **kw),  # noqa: B023
                                      lambda: fn(inputs, **kw), args.repeat)  # noqa: B023
        key = next(iter(fn(dict((k, v[:4]) for k, v in inputs.items()), **kw)))
        ref_p, ref_t = plain(inputs, **kw)[key], fn(inputs, **kw)[key]
        d_p = [_differing(ref_p, _blocks(plain, inputs, s, **kw)[key]) for s in (50, 333)]
        d_t = [_differing(ref_t, _blocks(fn, inputs, s, **kw)[key]) for s in (50, 333)]
        print(f"{name:<16} {t_plain:8.3f} {t_tiled:8.3f} {t_tiled / t_plain:6.2f}   "
              f"{'/'.join(map(str, d_p)):>14} {'/'.join(map(str, d_t)):>12}")


if __name__ == "__main__":
    main()
