"""The figures ``obpipe run`` draws as its stages finish (the stages themselves never
draw): Figs. 2-3 after ``emission``
(:func:`obpipe.report.spectral_figures.write_spectral_figures`), Fig. 8 after
``luminosity`` (the noise-model posteriors), Figs. 10 and 5 after ``binary``, under
``PRODUCTS_DIR/figures``. ``obpipe report`` re-draws them from the products.

Fig. 8 shows a model file, not this run's products: it is drawn when its noise model
is newer than the figure (fitted in this run), and travels with the model files that
``obpipe run --models`` reuses (:func:`copy_model_figures`) instead of being drawn
again (~1 s of CPU per figure).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from obpipe.engine.blockwise import open_products, products_path
from obpipe.io import store
from obpipe.stages.luminosity import MODEL_DIR, NOISE_FILES, SET_BITS

log = logging.getLogger(__name__)


def write_fig5(survey_path: str, products_dir: str) -> str:
    """Fig. 5: spectroscopic vs geometric M_Ks for test stars (plx/err > 10, S/N > 20)."""
    from matplotlib.figure import Figure

    survey = store.open_cube(survey_path)
    prods = open_products(products_dir)
    names = [v for v in ("MKs", "MKs_geo", "em_flag", "luminosity_set", "parallax_corrected",
                         "parallax_corrected_error", "MKs_model") if v in prods]
    p = prods[names].load()
    snr = survey["snr_g"].values
    with np.errstate(invalid="ignore", divide="ignore"):
        good = (p["parallax_corrected"].values / p["parallax_corrected_error"].values > 10)
    if "luminosity_set" in p:
        unseen = (p["luminosity_set"].values & SET_BITS["test"]) > 0
    else:  # models trained on another survey (reused): no star here was trained on
        unseen = np.ones(good.shape, dtype=bool)
    test = unseen & good & (snr > 20)
    em = p["em_flag"].values
    fig = Figure(figsize=(10, 4.8))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    lims = (-6, 3)
    for ax, sel, title in ((axes[0], test & (em == 0), "(a) non-emission, full range"),
                           (axes[1], test & (em != 0), "(b) clean windows, emission")):
        ax.scatter(p["MKs_geo"].values[sel], p["MKs"].values[sel], s=3, alpha=0.5,
                   color="C0" if ax is axes[0] else "C3")
        ax.plot(lims, lims, "k-", lw=0.8)
        ax.plot(lims, np.add(lims, 0.75), "k--", lw=0.8)
        ax.set_xlim(lims)
        ax.set_ylim(lims)
        ax.set_title(f"{title} (n = {int(sel.sum())})", fontsize=9)
        ax.set_xlabel(r"geometric $M_{K_s}$ (mag)")
    axes[0].set_ylabel(r"spectroscopic $M_{K_s}$ (mag)")
    fig.tight_layout()
    path = os.path.join(products_dir, "figures", "fig5_mks_spec_vs_geo.png")
    store.makedirs(os.path.dirname(path))
    store.save_figure(fig, path, dpi=110)
    return path


def write_fig10(survey_path: str, products_dir: str) -> str:
    """Fig. 10: S/N_dplx for plx/err > 10 and S/N > 50; all and MKs_geo < 0."""
    from matplotlib.figure import Figure

    survey = store.open_cube(survey_path)
    p = open_products(products_dir)[["snr_dparallax", "MKs_geo", "parallax_corrected",
                                     "parallax_corrected_error"]].load()
    with np.errstate(invalid="ignore", divide="ignore"):
        sel = ((p["parallax_corrected"].values / p["parallax_corrected_error"].values > 10)
               & (survey["snr_g"].values > 50) & np.isfinite(p["snr_dparallax"].values))
    x = p["snr_dparallax"].values
    bins = np.linspace(-6, 12, 73)
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    ax.hist(x[sel], bins=bins, histtype="step", color="k", label="all")
    ax.hist(x[sel & (p["MKs_geo"].values < 0)], bins=bins, histtype="step", color="C3",
            label=r"$M_{K_s}^{\rm geo} < 0$")
    ax.axvline(2.0, color="k", ls="--", lw=0.8)
    ax.set_xlabel(r"$S/N_{\Delta\varpi}$")
    ax.set_ylabel("spectra")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(products_dir, "figures", "fig10_parallax_excess.png")
    store.makedirs(os.path.dirname(path))
    store.save_figure(fig, path, dpi=110)
    return path


def _fig8_path(products_dir: str, model: str) -> str:
    return os.path.join(products_dir, "figures", f"fig8_noise_model_{model}.png")


def _newer(path: str, than: str) -> bool:
    """True for a local file ``path`` modified no earlier than the local file ``than``
    (False for URLs, whose modification times are not compared)."""
    if store.is_url(path) or store.is_url(than):
        return False
    try:
        return os.path.getmtime(path) >= os.path.getmtime(than)
    except OSError:
        return False


def copy_model_figures(source_dir: str, products_dir: str) -> list[str]:
    """Copy the figures of the model files that ``obpipe run --models`` reuses (Fig. 8 of
    each noise model) from the products directory ``source_dir`` into ``products_dir``,
    where ``source_dir`` has one drawn from its current noise model (no older than it);
    call after the model files are copied. Returns the figures copied."""
    copied = []
    for m, name in NOISE_FILES.items():
        src = _fig8_path(source_dir, m)
        if _newer(src, os.path.join(source_dir, MODEL_DIR, name)):
            dst = _fig8_path(products_dir, m)
            store.makedirs(os.path.dirname(dst))
            store.copy_file(src, dst)
            copied.append(dst)
    return copied


def _noise_model_figures(products_dir: str) -> list[str]:
    """Fig. 8 of each noise model of ``products_dir``, drawn unless the figure is no older
    than the model file (drawn or copied after it was written)."""
    from obpipe.luminosity import noise_model

    store.makedirs(os.path.join(products_dir, "figures"))
    out = []
    for m in ("a", "b"):
        src = os.path.join(products_dir, MODEL_DIR, NOISE_FILES[m])
        fig = _fig8_path(products_dir, m)
        if _newer(fig, src):
            out.append(fig)
        elif store.exists(src):
            r = noise_model.NoiseModelResult.load(src)
            out.append(noise_model.corner_plot(
                r, fig, title=f"network ({m}): {r.meta.get('sample', '')}"))
    return out


def after_stage(name: str, survey_path: str, products_dir: str) -> dict[str, Any]:
    """Draw the figures of stage ``name`` once it has run; returns what to add to the
    stage's report (the figure paths). Figures never fail a run: an error is logged."""
    try:
        if name == "emission":
            import zarr

            from obpipe.report.spectral_figures import write_spectral_figures
            from obpipe.spectra.emission import Thresholds

            attrs = dict(zarr.open_group(products_path(products_dir), mode="r",
                                         zarr_format=store.ZARR_FORMAT).attrs)
            return {"figures": write_spectral_figures(survey_path, products_dir,
                                                      Thresholds.from_attrs(attrs))}
        if name == "luminosity":
            _noise_model_figures(products_dir)
            return {}
        if name == "binary":
            return {"figure": write_fig10(survey_path, products_dir),
                    "figure5": write_fig5(survey_path, products_dir)}
    except Exception as exc:  # figures never fail a run
        log.warning("%s figures not written: %s", name, exc)
    return {}



