"""The paper's Figs. 2 and 3 from the spectral products (matplotlib ``Figure``, no pyplot)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from obpipe.engine.blockwise import open_products
from obpipe.io import store
from obpipe.spectra import pca
from obpipe.spectra.grid import wavelength_grid

#: the files :func:`draw_spectral_figures` writes under ``PRODUCTS_DIR/figures``
FIGURES = ("fig2_pca_reconstruction.png", "fig3_halpha_excess.png")


def spectral_figure_data(survey_path: str, products_dir: str, thresholds: Any
                         ) -> dict[str, Any]:
    """What Figs. 2 and 3 show, read from the survey and the products (numpy arrays and
    numbers: picklable, drawn by :func:`draw_spectral_figures` in any process)."""
    prods = open_products(products_dir)
    survey = store.open_cube(survey_path)
    snr = survey["snr_g"].values
    em = prods["em_flag"].values
    q = prods["quality_flags"].values
    rows = {}
    for want in (0, 1):
        cand = np.flatnonzero((em == want) & (q == 0) & (snr > 60) & (snr < 400))
        if cand.size == 0:
            continue
        i = int(cand[0])
        row = prods[["norm_flux", "norm_ivar", "recon_flux"]].isel(spec=i).load()
        rows[want] = {"norm_flux": row["norm_flux"].values, "norm_ivar": row["norm_ivar"].values,
                      "recon_flux": row["recon_flux"].values,
                      "specid": int(survey["specid"].values[i]), "snr": float(snr[i])}
    return {"rows": rows, "em": em, "q": q, "halpha_excess": prods["halpha_excess"].values,
            "halpha_chi2": prods["halpha_chi2"].values,
            "halpha_significance": prods["halpha_significance"].values,
            "emission_significance": float(thresholds.emission_significance),
            "outdir": os.path.join(products_dir, "figures")}


def draw_spectral_figures(data: dict[str, Any]) -> list[str]:
    """Draw Fig. 2 (spectra, reconstructions, clean windows) and Fig. 3 (H-alpha excess
    vs chi2 with the threshold) from :func:`spectral_figure_data`; returns the paths."""
    from matplotlib.figure import Figure

    outdir = data["outdir"]
    store.makedirs(outdir)
    em, q = data["em"], data["q"]
    wave = wavelength_grid()
    paths = []

    fig = Figure(figsize=(11, 6.5))
    axes = fig.subplots(2, 1, sharex=True)
    for ax, want, label in ((axes[0], 0, "non-emission"), (axes[1], 1, "emission")):
        if want not in data["rows"]:
            continue
        row = data["rows"][want]
        shown = np.where(row["norm_ivar"] > 0, row["norm_flux"], np.nan)
        ax.plot(wave, shown, color="k", lw=0.6, label="observed")
        ax.plot(wave, row["recon_flux"], color="r", lw=0.8, label="PCA")
        for lo, hi in pca.CLEAN_WINDOWS_AA:
            ax.axvspan(lo, hi, ymin=0, ymax=0.04, color="tab:blue", alpha=0.8, lw=0)
        ax.set_ylim(0.2, 1.6 if want == 0 else 3.0)
        ax.set_ylabel("normalised flux")
        ax.set_title(f"{label}: specid {row['specid']}, S/N {row['snr']:.0f}")
        ax.legend(loc="upper right")
    axes[1].set_xlabel("wavelength (vacuum, AA)")
    fig.tight_layout()
    p2 = os.path.join(outdir, FIGURES[0])
    store.save_figure(fig, p2, dpi=110)
    paths.append(p2)

    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    x = data["halpha_excess"]
    y = data["halpha_chi2"]
    sig = data["halpha_significance"]
    threshold = data["emission_significance"]
    ok = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[ok & (em == 0)], y[ok & (em == 0)], s=2, c="tab:blue", label="no emission")
    ax.scatter(x[ok & (em == 1)], y[ok & (em == 1)], s=2, c="tab:red", label="emission")
    broken = ok & ((q & 1) > 0)
    ax.scatter(x[broken], y[broken], s=8, marker="x", c="k", label="broken")
    ax.set_yscale("log")
    ax.set_xlabel(r"mean H$\alpha$ excess, 6557-6571 $\AA$ (continuum units)")
    ax.set_ylabel(r"reduced $\chi^2$, 6400-6550 and 6590-6690 $\AA$")
    ax.set_title(f"emission: significance > {threshold:.2f} "
                 f"({np.mean(em == 1):.1%} of spectra)")
    near = ok & np.isfinite(sig) & (np.abs(sig - threshold) < 0.5)
    if near.any():
        ax.axvline(float(np.median(x[near])), color="r", ls="--", lw=1)
    ax.legend(loc="upper left", markerscale=4)
    fig.tight_layout()
    p3 = os.path.join(outdir, FIGURES[1])
    store.save_figure(fig, p3, dpi=110)
    paths.append(p3)
    return paths


def write_spectral_figures(survey_path: str, products_dir: str, thresholds: Any) -> list[str]:
    """Write Fig. 2 (spectra, reconstructions, clean windows) and Fig. 3 (H-alpha excess
    vs chi2 with the threshold) under ``PRODUCTS_DIR/figures``; returns the paths."""
    return draw_spectral_figures(spectral_figure_data(survey_path, products_dir, thresholds))
