"""The figures ``obpipe run`` draws as its stages finish (the stages themselves never
draw): Figs. 2-3 after ``emission``
(:func:`obpipe.report.spectral_figures.write_spectral_figures`), Fig. 8 after
``luminosity`` (the noise-model posteriors), Figs. 10 and 5 after ``binary``, under
``PRODUCTS_DIR/figures``. ``obpipe report`` re-draws them from the products. Each
figure's data is read as its stage ends; the drawing goes to the run's pool of worker
processes where it has one (:class:`FigureDrawer`), overlapping the next stages.

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


def fig5_data(survey_path: str, products_dir: str) -> dict[str, Any]:
    """What Fig. 5 shows (numpy arrays: picklable, drawn by :func:`draw_fig5`)."""
    survey = store.open_cube(survey_path)
    prods = open_products(products_dir)
    names = [v for v in ("MKs", "MKs_geo", "em_flag", "luminosity_set", "parallax_corrected",
                         "parallax_corrected_error", "MKs_model") if v in prods]
    p = prods[names].load()
    return {"cols": {k: p[k].values for k in names}, "snr": survey["snr_g"].values,
            "path": os.path.join(products_dir, "figures", "fig5_mks_spec_vs_geo.png")}


def draw_fig5(data: dict[str, Any]) -> str:
    """Fig. 5: spectroscopic vs geometric M_Ks for test stars (plx/err > 10, S/N > 20)."""
    from matplotlib.figure import Figure

    p, snr = data["cols"], data["snr"]
    with np.errstate(invalid="ignore", divide="ignore"):
        good = (p["parallax_corrected"] / p["parallax_corrected_error"] > 10)
    if "luminosity_set" in p:
        unseen = (p["luminosity_set"] & SET_BITS["test"]) > 0
    else:  # models trained on another survey (reused): no star here was trained on
        unseen = np.ones(good.shape, dtype=bool)
    test = unseen & good & (snr > 20)
    em = p["em_flag"]
    fig = Figure(figsize=(10, 4.8))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    lims = (-6, 3)
    for ax, sel, title in ((axes[0], test & (em == 0), "(a) non-emission, full range"),
                           (axes[1], test & (em != 0), "(b) clean windows, emission")):
        ax.scatter(p["MKs_geo"][sel], p["MKs"][sel], s=3, alpha=0.5,
                   color="C0" if ax is axes[0] else "C3")
        ax.plot(lims, lims, "k-", lw=0.8)
        ax.plot(lims, np.add(lims, 0.75), "k--", lw=0.8)
        ax.set_xlim(lims)
        ax.set_ylim(lims)
        ax.set_title(f"{title} (n = {int(sel.sum())})", fontsize=9)
        ax.set_xlabel(r"geometric $M_{K_s}$ (mag)")
    axes[0].set_ylabel(r"spectroscopic $M_{K_s}$ (mag)")
    fig.tight_layout()
    path = data["path"]
    store.makedirs(os.path.dirname(path))
    store.save_figure(fig, path, dpi=110)
    return path


def write_fig5(survey_path: str, products_dir: str) -> str:
    """Fig. 5: spectroscopic vs geometric M_Ks for test stars (plx/err > 10, S/N > 20)."""
    return draw_fig5(fig5_data(survey_path, products_dir))


def fig10_data(survey_path: str, products_dir: str) -> dict[str, Any]:
    """What Fig. 10 shows (numpy arrays: picklable, drawn by :func:`draw_fig10`)."""
    survey = store.open_cube(survey_path)
    names = ["snr_dparallax", "MKs_geo", "parallax_corrected", "parallax_corrected_error"]
    p = open_products(products_dir)[names].load()
    return {"cols": {k: p[k].values for k in names}, "snr": survey["snr_g"].values,
            "path": os.path.join(products_dir, "figures", "fig10_parallax_excess.png")}


def draw_fig10(data: dict[str, Any]) -> str:
    """Fig. 10: S/N_dplx for plx/err > 10 and S/N > 50; all and MKs_geo < 0."""
    from matplotlib.figure import Figure

    p = data["cols"]
    with np.errstate(invalid="ignore", divide="ignore"):
        sel = ((p["parallax_corrected"] / p["parallax_corrected_error"] > 10)
               & (data["snr"] > 50) & np.isfinite(p["snr_dparallax"]))
    x = p["snr_dparallax"]
    bins = np.linspace(-6, 12, 73)
    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    ax.hist(x[sel], bins=bins, histtype="step", color="k", label="all")
    ax.hist(x[sel & (p["MKs_geo"] < 0)], bins=bins, histtype="step", color="C3",
            label=r"$M_{K_s}^{\rm geo} < 0$")
    ax.axvline(2.0, color="k", ls="--", lw=0.8)
    ax.set_xlabel(r"$S/N_{\Delta\varpi}$")
    ax.set_ylabel("spectra")
    ax.legend()
    fig.tight_layout()
    path = data["path"]
    store.makedirs(os.path.dirname(path))
    store.save_figure(fig, path, dpi=110)
    return path


def write_fig10(survey_path: str, products_dir: str) -> str:
    """Fig. 10: S/N_dplx for plx/err > 10 and S/N > 50; all and MKs_geo < 0."""
    return draw_fig10(fig10_data(survey_path, products_dir))


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


class FigureDrawer:
    """Draws figures from data already read (picklable dicts of numpy arrays): in the
    calling thread (``executor`` None), or on ``executor`` (a process pool: the run's
    shared pool of worker processes, idle while the spectral and photometric stages run
    on threads), so that the drawing (matplotlib: ~3 s of CPU at 30k spectra, most of it
    holding the GIL) overlaps the next stages instead of delaying them. ``executor`` may
    be a function that returns one (or None), called at the first figure. Figures never
    fail a run: an error is logged. A context manager: leaving it waits for the figures
    (:meth:`wait`)."""

    def __init__(self, executor: Any = None) -> None:
        self._executor = executor
        self._pending: list[tuple[str, Any]] = []

    def __enter__(self) -> FigureDrawer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wait()

    @property
    def executor(self) -> Any:
        if callable(self._executor) and not hasattr(self._executor, "submit"):
            self._executor = self._executor()
        return self._executor

    def draw(self, what: str, fn: Any, data: dict[str, Any]) -> None:
        if self.executor is None:
            try:
                fn(data)
            except Exception as exc:  # figures never fail a run
                log.warning("%s figures not written: %s", what, exc)
            return
        self._pending.append((what, self.executor.submit(fn, data)))

    def wait(self) -> None:
        """Wait for the figures drawn elsewhere; log those that failed."""
        pending, self._pending = self._pending, []
        for what, fut in pending:
            try:
                fut.result()
            except Exception as exc:  # figures never fail a run
                log.warning("%s figures not written: %s", what, exc)


def after_stage(name: str, survey_path: str, products_dir: str,
                drawer: FigureDrawer | None = None) -> dict[str, Any]:
    """Draw the figures of stage ``name`` once it has run (their data read now, the
    drawing by ``drawer``: default in this thread); returns what to add to the stage's
    report (the figure paths). Figures never fail a run: an error is logged."""
    from obpipe.report import spectral_figures as spectral

    drawer = drawer or FigureDrawer()
    try:
        if name == "emission":
            import zarr

            from obpipe.spectra.emission import Thresholds

            attrs = dict(zarr.open_group(products_path(products_dir), mode="r",
                                         zarr_format=store.ZARR_FORMAT).attrs)
            data = spectral.spectral_figure_data(survey_path, products_dir,
                                                 Thresholds.from_attrs(attrs))
            drawer.draw(name, spectral.draw_spectral_figures, data)
            return {"figures": [os.path.join(data["outdir"], f) for f in spectral.FIGURES]}
        if name == "luminosity":
            _noise_model_figures(products_dir)
            return {}
        if name == "binary":
            fig10, fig5 = fig10_data(survey_path, products_dir), fig5_data(survey_path,
                                                                           products_dir)
            drawer.draw(name, draw_fig10, fig10)
            drawer.draw(name, draw_fig5, fig5)
            return {"figure": fig10["path"], "figure5": fig5["path"]}
    except Exception as exc:  # figures never fail a run
        log.warning("%s figures not written: %s", name, exc)
    return {}
