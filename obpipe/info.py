"""``obpipe info``: a human summary of a survey store."""

from __future__ import annotations

import os

import numpy as np

from obpipe.io import store


def _size_on_disk(path: str) -> int | None:
    if store.is_url(path) or not os.path.isdir(path):
        return None
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def _products_dir(path: str) -> str | None:
    """The products directory when ``path`` is one (or its ``products.zarr``), else None."""
    import zarr

    from obpipe.engine.blockwise import PRODUCTS_STORE

    base = path.rstrip("/")
    if base.endswith("/" + PRODUCTS_STORE) or base == PRODUCTS_STORE:
        base = os.path.dirname(base) or "."
    try:
        attrs = zarr.open_group(os.path.join(base, PRODUCTS_STORE), mode="r",
                                zarr_format=store.ZARR_FORMAT).attrs
    except (FileNotFoundError, ValueError, KeyError):
        return None
    return base if attrs.get("title") == "obpipe products" else None


def products_summary(products_dir: str) -> str:
    """Rows, stages complete (and not), variables and provenance of a products directory.

    A products store is not a survey cube: its completeness is per stage
    (``stage_<name>_complete``), not the cube's ``obpipe_complete``.
    """
    from obpipe.engine.blockwise import open_products, products_path
    from obpipe.pipeline import stage_names

    ds = open_products(products_dir)
    attrs = ds.attrs
    done = [s for s in stage_names() if attrs.get(f"stage_{s}_complete")]
    missing = [s for s in stage_names() if s not in done]
    lines = [f"products: {products_dir}"]
    size = _size_on_disk(products_path(products_dir))
    if size is not None:
        lines.append(f"size on disk: {size / 1e6:.1f} MB")
    lines.append(f"spectra: {ds.sizes.get('spec', 0)}   survey: {attrs.get('survey', '?')}   "
                 f"version: {attrs.get('obpipe_version', '?')}")
    lines.append("stages complete: " + (", ".join(done) if done else "none"))
    lines.append("stages not run or incomplete: " + (", ".join(missing) if missing else "none"))
    variables = sorted(v for v in ds.data_vars if not v.endswith("_blocks_done"))
    lines.append(f"variables ({len(variables)}): {', '.join(variables)}")
    from obpipe.provenance import stage_records

    ident = attrs.get("survey_identity") or {}
    if ident:
        lines.append(f"survey identity: {ident.get('id')} ({ident.get('n_spectra')} spectra, "
                     f"{'simulated' if ident.get('simulated') else 'real'})")
    for name, rec in stage_records(attrs).items():
        lines.append(f"  {name:<11} {rec.get('status', '?'):<9} key {rec.get('key')}  "
                     f"config {rec.get('config_hash')}  {rec.get('finished_utc', '')}")
    if attrs.get("simulated_models"):
        lines.append("models trained on a simulated survey, applied to this real one: "
                     + ", ".join(attrs["simulated_models"]))
    return "\n".join(lines)


def store_summary(path: str) -> str:
    """Sizes, chunks, variables, stages present and population fractions of a store
    (a survey cube; for a products directory or store, :func:`products_summary`)."""
    products = _products_dir(path)
    if products is not None:
        return products_summary(products)
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
