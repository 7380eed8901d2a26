"""Interactive analysis: :func:`open_run` and the ``ds.obpipe`` xarray accessor.

``import obpipe`` registers the accessor. Everything stays lazy (dask-backed): opening a
run reads metadata and the small ``specid`` / ``star_id`` index columns only; a
spectrum or a star reads the chunks that hold its rows.

>>> import obpipe
>>> ds = obpipe.open_run("demo/survey.zarr", "demo/products")   # survey + products
>>> ds.sel(specid=200000001)                                     # one spectrum, by id
>>> ds.obpipe.spectrum(200000001)            # flux, ivar, mask, normalised, reconstruction
>>> ds.obpipe.plot_spectrum(200000001)       # observed (normalised) and PCA reconstruction
>>> ds.obpipe.star("S235308+615531")         # all visits of a star (lazy)
>>> ds.obpipe.table(["snr_g", "MKs", "ebv"]) # per-spectrum columns as a pandas DataFrame

The accessor works on a survey cube alone (``store.open_cube``), on the products alone
(``products.open_products``) and on both merged by :func:`open_run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from obpipe.engine.blockwise import open_products
from obpipe.io import store
from obpipe.spectra.grid import wavelength_grid

#: per-spectrum identifiers present in both the survey and the products store
ID_COLUMNS = ("specid", "star_id", "uniqflag", "fitsname")
#: spectrum-shaped (spec, wave) variables that :meth:`ObpipeAccessor.spectrum` returns
SPECTRUM_VARIABLES = ("flux", "ivar", "mask", "norm_flux", "norm_ivar", "recon_flux")
#: per-spectrum scalars attached to a spectrum when present
SPECTRUM_SCALARS = ("star_id", "snr_g", "rv", "uniqflag", "em_flag", "quality_flags", "MKs",
                    "MKs_err", "ebv", "binary_flag", "dis")
TRUTH_PREFIX = "truth_"


def open_run(survey: str, products: str | None = None, truth: bool = False) -> xr.Dataset:
    """The survey cube and its products as one lazy Dataset, aligned on ``spec``.

    ``products`` is a products directory (``PRODUCTS_DIR/products.zarr`` inside); None
    opens the survey alone. ``truth=True`` adds the ``truth`` group of a simulated survey
    with its variables prefixed ``truth_`` (validation only). ``specid`` and ``star_id``
    become indexed coordinates: ``ds.sel(specid=...)``, ``ds.sel(star_id=...)``. The
    products' block registers (``*_blocks_done``) are left out. Root attributes: the
    products' (provenance, thresholds, stages complete) plus ``survey`` and ``products``.
    """
    ds = store.open_cube(survey)
    attrs = dict(ds.attrs)
    if products is not None:
        prods = open_products(products)
        if prods.sizes["spec"] != ds.sizes["spec"]:
            raise ValueError(f"{products}: {prods.sizes['spec']} spectra, the survey {survey} "
                             f"{ds.sizes['spec']}: not the products of this survey")
        if not np.array_equal(prods["specid"].values, ds["specid"].values):
            raise ValueError(f"{products}: specid differs from the survey {survey}'s")
        keep = [v for v in prods.data_vars
                if prods[v].dims and prods[v].dims[0] == "spec" and v not in ds.variables]
        prods = prods[keep]
        ds = xr.merge([ds, prods], join="exact", compat="override", combine_attrs="override")
        attrs = {**attrs, **dict(open_products(products).attrs)}
        attrs["products"] = store.absolute(products)
    if truth:
        t = store.open_truth(survey)
        t = t.drop_vars([v for v in t.coords if v != "wave"])
        ds = ds.assign({f"{TRUTH_PREFIX}{k}": v.variable for k, v in t.data_vars.items()
                        if v.dims and v.dims[0] == "spec"})
    attrs["survey"] = store.absolute(survey)
    ds.attrs = attrs
    return _indexed(ds)


def _indexed(ds: xr.Dataset) -> xr.Dataset:
    """``specid`` and ``star_id`` as coordinates with an index (read once, small)."""
    names = [n for n in ("specid", "star_id") if n in ds.variables]
    ds = ds.set_coords(names)
    for n in names:
        if n not in ds.xindexes:
            if ds[n].dtype.kind == "T":  # numpy StringDType: pandas wants object strings
                ds = ds.assign_coords({n: ("spec", ds[n].values.astype(object))})
            ds = ds.set_xindex(n)
    return ds


def _plt() -> Any:
    import matplotlib.pyplot as plt

    return plt


@xr.register_dataset_accessor("obpipe")
class ObpipeAccessor:
    """``ds.obpipe``: spectra, stars and tables of an obpipe survey / products Dataset."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    # ------------------------------------------------------------------ lookups
    def _column(self, name: str) -> np.ndarray:
        if name not in self._ds.variables:
            raise KeyError(f"no '{name}' in this Dataset")
        return np.asarray(self._ds[name].values)

    def rows_of_specid(self, specid: int | Sequence[int]) -> np.ndarray:
        """Row positions (along ``spec``) of one or several ``specid`` (KeyError if absent)."""
        ids = np.atleast_1d(np.asarray(specid, dtype=np.int64))
        col = self._column("specid")
        order = np.argsort(col, kind="stable")
        pos = np.searchsorted(col[order], ids)
        pos = np.clip(pos, 0, col.size - 1)
        found = col[order][pos] == ids
        if not np.all(found):
            raise KeyError(f"specid not found: {ids[~found].tolist()[:10]}")
        return order[pos]

    def rows_of_star(self, star_id: str) -> np.ndarray:
        """Row positions of all visits of ``star_id`` (ordered by ``uniqflag`` if present)."""
        col = self._column("star_id").astype(object).astype(str)
        rows = np.flatnonzero(col == str(star_id))
        if rows.size == 0:
            raise KeyError(f"star_id not found: {star_id!r}")
        if "uniqflag" in self._ds.variables:
            rows = rows[np.argsort(self._column("uniqflag")[rows], kind="stable")]
        return rows

    # ------------------------------------------------------------------ spectra
    def spectrum(self, specid: int, load: bool = True) -> xr.Dataset:
        """One spectrum as a small Dataset on ``wave`` (AA, vacuum, rest frame).

        Variables that exist among flux, ivar, mask (survey), norm_flux, norm_ivar
        (normalised, Sec. 2) and recon_flux (PCA reconstruction, Sec. 3), with per-spectrum
        scalars (S/N, flags, M_Ks, ...) as coordinates. ``load=False`` keeps it lazy.
        """
        row = int(self.rows_of_specid(specid)[0])
        names = [v for v in SPECTRUM_VARIABLES if v in self._ds.data_vars]
        if not names:
            raise KeyError("no spectrum variables (flux, norm_flux, recon_flux, ...) here")
        one = self._ds[names].isel(spec=row)
        scalars = {k: self._ds[k].isel(spec=row).variable for k in SPECTRUM_SCALARS
                   if k in self._ds.variables and self._ds[k].dims == ("spec",)}
        one = one.drop_vars([c for c in one.coords if c not in ("wave",)])
        if "wave" not in one.coords:
            one = one.assign_coords(wave=("wave", wavelength_grid()))
        one["wave"].attrs.setdefault("units", "Angstrom")
        one = one.assign_coords({"specid": int(specid), **scalars})
        one.attrs = {k: self._ds.attrs[k] for k in ("survey", "products") if k in self._ds.attrs}
        return one.load() if load else one

    def plot_spectrum(self, specid: int, ax: Any = None, normalised: bool | None = None,
                      reconstruction: bool = True, **kwargs: Any) -> Any:
        """Plot one spectrum: normalised flux with the PCA reconstruction where the products
        have them (else the observed flux). Pixels with ivar = 0 are not drawn. Returns the
        matplotlib Axes."""
        sp = self.spectrum(specid)
        if normalised is None:
            normalised = "norm_flux" in sp
        if ax is None:
            _, ax = _plt().subplots(figsize=(11, 3.5))
        wave = sp["wave"].values
        if normalised:
            if "norm_flux" not in sp:
                raise KeyError("no normalised flux: open the products too (open_run)")
            f, iv = sp["norm_flux"].values, sp["norm_ivar"].values
            ylabel = "normalised flux"
        else:
            f, iv = sp["flux"].values, sp["ivar"].values
            ylabel = "flux (" + str(self._ds["flux"].attrs.get("units", "")) + ")"
        shown = np.where(iv > 0, f, np.nan)
        ax.plot(wave, shown, color=kwargs.pop("color", "k"), lw=kwargs.pop("lw", 0.6),
                label="observed", **kwargs)
        if reconstruction and normalised and "recon_flux" in sp:
            ax.plot(wave, sp["recon_flux"].values, color="r", lw=0.8, label="PCA reconstruction")
        title = [f"specid {int(specid)}"]
        for key, fmt in (("star_id", "{}"), ("snr_g", "S/N {:.0f}"), ("em_flag", "em_flag {}"),
                         ("MKs", "M_Ks {:.2f}"), ("dis", "d {:.2f} kpc")):
            if key in sp.coords:
                val = sp.coords[key].values.item()
                if isinstance(val, float) and not np.isfinite(val):
                    continue
                title.append(fmt.format(val))
        ax.set_title(", ".join(title), fontsize=9)
        ax.set_xlabel(r"wavelength (vacuum, rest frame, $\AA$)")
        ax.set_ylabel(ylabel)
        if normalised:
            fin = shown[np.isfinite(shown)]
            if fin.size:
                lo, hi = np.percentile(fin, [0.5, 99.5])
                ax.set_ylim(min(lo, 0.2) - 0.05, max(hi, 1.2) + 0.05)
        ax.legend(loc="upper right", fontsize=8)
        return ax

    # ------------------------------------------------------------------ stars, tables
    def star(self, star_id: str) -> xr.Dataset:
        """All visits of one star (lazy), best visit (uniqflag = 1) first."""
        return self._ds.isel(spec=self.rows_of_star(star_id))

    def visits(self) -> pd.Series:
        """Number of visits per ``star_id`` (descending)."""
        return pd.Series(self._column("star_id").astype(object).astype(str)).value_counts()

    def per_spectrum_variables(self) -> list[str]:
        """Names of the 1-D (spec,) variables: the per-spectrum table."""
        return [v for v in self._ds.variables if self._ds[v].dims == ("spec",)]

    def table(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Per-spectrum columns (default: all 1-D ones) as a pandas DataFrame indexed by
        specid. Reads those columns only, never the (spec, wave) arrays."""
        names = list(columns) if columns is not None else self.per_spectrum_variables()
        bad = [n for n in names if n not in self._ds.variables
               or self._ds[n].dims != ("spec",)]
        if bad:
            raise KeyError(f"not per-spectrum variables of this Dataset: {bad}")
        names = [n for n in names if n != "specid"]
        sub = xr.Dataset({n: self._ds[n].variable for n in names}).load()
        data = {}
        for n in names:
            v = np.asarray(sub[n].values)
            data[n] = v.astype(object).astype(str) if v.dtype.kind in "OTU" else v
        index = pd.Index(self._column("specid"), name="specid") \
            if "specid" in self._ds.variables else None
        return pd.DataFrame(data, index=index)
