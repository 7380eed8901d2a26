"""The paper's Figs. 2 and 3 from the spectral products (matplotlib ``Figure``, no pyplot)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from obpipe.engine.blockwise import open_products
from obpipe.io import store
from obpipe.spectra import pca
from obpipe.spectra.grid import wavelength_grid


def write_spectral_figures(survey_path: str, products_dir: str, thresholds: Any) -> list[str]:
    """Write Fig. 2 (spectra, reconstructions, clean windows) and Fig. 3 (H-alpha excess
    vs chi2 with the threshold) under ``PRODUCTS_DIR/figures``; returns the paths."""
    from matplotlib.figure import Figure

    outdir = os.path.join(products_dir, "figures")
    store.makedirs(outdir)
    prods = open_products(products_dir)
    survey = store.open_cube(survey_path)
    snr = survey["snr_g"].values
    em = prods["em_flag"].values
    q = prods["quality_flags"].values
    wave = wavelength_grid()
    paths = []

    fig = Figure(figsize=(11, 6.5))
    axes = fig.subplots(2, 1, sharex=True)
    for ax, want, label in ((axes[0], 0, "non-emission"), (axes[1], 1, "emission")):
        cand = np.flatnonzero((em == want) & (q == 0) & (snr > 60) & (snr < 400))
        if cand.size == 0:
            continue
        i = int(cand[0])
        row = prods[["norm_flux", "norm_ivar", "recon_flux"]].isel(spec=i).load()
        shown = np.where(row["norm_ivar"].values > 0, row["norm_flux"].values, np.nan)
        ax.plot(wave, shown, color="k", lw=0.6, label="observed")
        ax.plot(wave, row["recon_flux"].values, color="r", lw=0.8, label="PCA")
        for lo, hi in pca.CLEAN_WINDOWS_AA:
            ax.axvspan(lo, hi, ymin=0, ymax=0.04, color="tab:blue", alpha=0.8, lw=0)
        ax.set_ylim(0.2, 1.6 if want == 0 else 3.0)
        ax.set_ylabel("normalised flux")
        ax.set_title(f"{label}: specid {int(survey['specid'].values[i])}, S/N {snr[i]:.0f}")
        ax.legend(loc="upper right")
    axes[1].set_xlabel("wavelength (vacuum, AA)")
    fig.tight_layout()
    p2 = os.path.join(outdir, "fig2_pca_reconstruction.png")
    store.save_figure(fig, p2, dpi=110)
    paths.append(p2)

    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    x = prods["halpha_excess"].values
    y = prods["halpha_chi2"].values
    sig = prods["halpha_significance"].values
    ok = np.isfinite(x) & np.isfinite(y)
    ax.scatter(x[ok & (em == 0)], y[ok & (em == 0)], s=2, c="tab:blue", label="no emission")
    ax.scatter(x[ok & (em == 1)], y[ok & (em == 1)], s=2, c="tab:red", label="emission")
    broken = ok & ((q & 1) > 0)
    ax.scatter(x[broken], y[broken], s=8, marker="x", c="k", label="broken")
    ax.set_yscale("log")
    ax.set_xlabel(r"mean H$\alpha$ excess, 6557-6571 $\AA$ (continuum units)")
    ax.set_ylabel(r"reduced $\chi^2$, 6400-6550 and 6590-6690 $\AA$")
    ax.set_title(f"emission: significance > {thresholds.emission_significance:.2f} "
                 f"({np.mean(em == 1):.1%} of spectra)")
    near = ok & np.isfinite(sig) & (np.abs(sig - thresholds.emission_significance) < 0.5)
    if near.any():
        ax.axvline(float(np.median(x[near])), color="r", ls="--", lw=1)
    ax.legend(loc="upper left", markerscale=4)
    fig.tight_layout()
    p3 = os.path.join(outdir, "fig3_halpha_excess.png")
    store.save_figure(fig, p3, dpi=110)
    paths.append(p3)
    return paths
