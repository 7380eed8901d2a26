"""``obpipe info``: a human summary of a survey store."""

from __future__ import annotations

import os

import numpy as np

from obpipe.io import store


def _size_on_disk(path: str) -> int | None:
    if "://" in path or not os.path.isdir(path):
        return None
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def store_summary(path: str) -> str:
    """Sizes, chunks, variables, stages present and population fractions of a store."""
    ds = store.open_cube(path)
    n_spec, n_wave = ds.sizes["spec"], ds.sizes["wave"]
    chunks = ds["flux"].chunks
    lines = [f"store: {path}"]
    size = _size_on_disk(path)
    if size is not None:
        lines.append(f"size on disk: {size / 1e6:.1f} MB")
    lines.append(f"spectra: {n_spec}   pixels: {n_wave} "
                 f"({float(ds.wave[0]):.1f}-{float(ds.wave[-1]):.1f} AA)")
    lines.append(f"chunks: {len(chunks[0])} x {chunks[0][0]} spectra, whole rows")
    lines.append(f"producer: {ds.attrs.get('producer', '?')}  "
                 f"version: {ds.attrs.get('obpipe_version', '?')}  seed: {ds.attrs.get('seed')}")
    star = ds["star_id"].values.astype(object)
    n_star = np.unique(star).size
    lines.append(f"stars: {n_star} ({n_spec / max(n_star, 1):.2f} visits per star)")
    snr = ds["snr_g"].values.astype(float)
    lines.append("snr_g: median {:.0f}, 5-95% {:.0f}-{:.0f}".format(
        *np.nanpercentile(snr, [50, 5, 95])))
    per_spec = sorted(v for v in ds.data_vars if ds[v].dims == ("spec",))
    lines.append(f"per-spectrum columns ({len(per_spec)}): {', '.join(per_spec)}")
    products = [v for v in ds.data_vars if v not in store.SPECTRUM_COLUMNS
                and v not in store.SPECTRAL_VARIABLES]
    lines.append("stage products in store: " + (", ".join(products) if products else "none"))
    if store.has_truth(path):
        truth = store.open_truth(path)
        cls = truth["star_class"].values.astype(object).astype(str)
        frac = {c: np.mean(cls == c) for c in np.unique(cls)}
        lines.append("truth: " + ", ".join(f"{c} {f:.3f}" for c, f in frac.items())
                     + f"; binaries {np.mean(truth['is_binary'].values):.3f}"
                     + f"; emission {np.mean(truth['has_emission'].values):.3f}"
                     + f"; broken {np.mean(truth['is_broken'].values):.3f} (per spectrum)")
    return "\n".join(lines)
