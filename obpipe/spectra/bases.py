"""PCA bases fitted to a survey and the projection of spectra on them (Sec. 3), numpy only.

* :func:`select_training`: the training spectra (S/N above a threshold, a seeded subset,
  in ``specid`` order);
* :func:`fit_pca_model`: both bases (clean-window and full range), refitted once without
  the emission and broken spectra that the first clean-window basis finds (Sec. 3);
* :func:`pca_statistics`: weighted projection on both bases, the clean-window
  reconstruction (eq. 2) and the residual statistics of the emission flags (Fig. 3,
  App. A);
* :func:`load_pca_model`: a run's model file, cached by its modification token.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from functools import lru_cache
from typing import Any

import numpy as np

from obpipe.io import store
from obpipe.spectra import emission, pca
from obpipe.spectra.options import SpectralConfig
from obpipe.version import __version__

#: the PCA model file of a run, relative to its products directory
MODEL_FILE = os.path.join("models", "pca_model.npz")
#: attribute of the products' ``pca_coeff`` and ``pca_coeff_full``: 1 when the pca stage
#: projected without the interstellar windows (``[spectral] exclude_interstellar_lines``,
#: issue 15), 0 (or absent, in older products) when it read every usable pixel
INTERSTELLAR_ATTR = "interstellar_blind"


@lru_cache(maxsize=2)
def _load_model(path: str, mtime: float) -> pca.PCAModel:
    return pca.PCAModel.load(path)


def load_pca_model(products_dir: str) -> pca.PCAModel:
    """The PCA model of the run in ``products_dir`` (cached while the file is unchanged)."""
    path = os.path.join(products_dir, MODEL_FILE)
    return _load_model(path, store.file_token(path))


def stellar_pixels(norm_ivar: np.ndarray, clean_pixels: np.ndarray,
                   exclude_interstellar: bool
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The weights and clean-window pixels that the residual statistics read and the
    ``exclude`` mask of the projection (:meth:`obpipe.spectra.pca.PCABasis.project`):
    with ``exclude_interstellar`` (issue 15) zero weight in the interstellar windows
    (:func:`obpipe.spectra.pca.interstellar_blind_ivar`), the clean windows without
    them, and their mask; else unchanged and None."""
    if not exclude_interstellar:
        return norm_ivar, clean_pixels, None
    ism = pca.interstellar_mask()
    return (pca.interstellar_blind_ivar(norm_ivar), np.asarray(clean_pixels, bool) & ~ism,
            ism)


def _project_both(model: pca.PCAModel, norm_flux: np.ndarray, norm_ivar: np.ndarray,
                  prior: bool, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted projections on the clean and the full basis (Sec. 3)."""
    # the projection gets the measured weights with the windows as ``exclude``: they
    # still shape the smooth part of W (zeroed, they would be filled with the row's
    # median and make ~250 other pixels per row deviant, each a low-rank correction)
    return (model.clean.project(norm_flux, norm_ivar, prior=prior, exclude=exclude),
            model.full.project(norm_flux, norm_ivar, prior=prior, exclude=exclude))


def pca_coefficients(model: pca.PCAModel, norm_flux: np.ndarray, norm_ivar: np.ndarray,
                     prior: bool = True, rows_per_chunk: int = 256,
                     exclude_interstellar: bool = False) -> dict[str, np.ndarray]:
    """``pca_coeff`` and ``pca_coeff_full`` of :func:`pca_statistics` alone (float32, the
    same numbers), without the residual statistics."""
    n = norm_flux.shape[0]
    out = {k: np.empty((n, model.clean.n_components if k == "pca_coeff" else
                        model.full.n_components), dtype=np.float32)
           for k in ("pca_coeff", "pca_coeff_full")}
    excl = pca.interstellar_mask() if exclude_interstellar else None
    for lo in range(0, n, rows_per_chunk):
        rows = slice(lo, min(lo + rows_per_chunk, n))
        coeff, coeff_full = _project_both(model, norm_flux[rows], norm_ivar[rows], prior, excl)
        out["pca_coeff"][rows], out["pca_coeff_full"][rows] = coeff, coeff_full
    return out


def pca_statistics(model: pca.PCAModel, norm_flux: np.ndarray, norm_ivar: np.ndarray,
                   prior: bool = True, rows_per_chunk: int = 256,
                   exclude_interstellar: bool = False) -> dict[str, np.ndarray]:
    """The pca stage's numbers for rows of normalised spectra (n, n_wave), numpy only.

    Weighted projection on both bases (Sec. 3), the clean-window reconstruction (eq. 2)
    and the residual statistics of ``emission.residual_statistics`` (Fig. 3, App. A),
    ``rows_per_chunk`` rows at a time: every row is independent, and chunks keep the
    temporaries in cache and the memory independent of the number of rows.
    ``exclude_interstellar``: the interstellar windows carry no weight in either
    (:func:`stellar_pixels`; ``clean_fraction`` counts the clean pixels outside them).
    """
    n = norm_flux.shape[0]
    out: dict[str, np.ndarray] = {}
    for lo in range(0, max(n, 1), rows_per_chunk):  # one empty chunk for n = 0
        rows = slice(lo, min(lo + rows_per_chunk, n))
        nf = norm_flux[rows]
        ni, clean_pix, excl = stellar_pixels(norm_ivar[rows], model.clean.pixels,
                                             exclude_interstellar)
        coeff, coeff_full = _project_both(model, nf, norm_ivar[rows], prior, excl)
        part = {"pca_coeff": coeff.astype(np.float32),
                "pca_coeff_full": coeff_full.astype(np.float32)}
        part.update(emission.residual_statistics(nf, ni, model.clean.reconstruct(coeff),
                                                 model.clean.sigma_model, clean_pix))
        for k, v in part.items():
            if k not in out:
                out[k] = np.empty((n, *v.shape[1:]), dtype=v.dtype)
            out[k][rows] = v
    return out


def select_training(snr: np.ndarray, min_snr: float, max_train: int, seed: int,
                    specid: np.ndarray | None = None) -> np.ndarray:
    """Indices of training spectra: S/N >= min_snr, a seeded random subset of max_train,
    in ``specid`` order (chosen among the candidates sorted by ``specid``): the same
    spectra in the same order however the survey's rows are stored or chunked."""
    idx = np.flatnonzero(np.nan_to_num(snr, nan=-1.0) >= min_snr)
    if specid is not None:
        idx = idx[np.argsort(np.asarray(specid)[idx], kind="stable")]
    if idx.size > max_train:
        pick = np.sort(np.random.default_rng(seed).choice(idx.size, max_train, replace=False))
        idx = idx[pick]
    return idx


def fit_pca_model(norm_flux: np.ndarray, norm_ivar: np.ndarray, snr: np.ndarray,
                  cfg: SpectralConfig, selection: dict[str, Any]
                  ) -> tuple[pca.PCAModel, dict[str, Any]]:
    """Fit both bases; one iteration without the emission / broken spectra (Sec. 3)."""
    clean_pix = pca.window_mask(pca.CLEAN_WINDOWS_AA)
    all_pix = np.ones(pca.wavelength_grid().size, dtype=bool)
    # start without spectra whose H-alpha core rises above the continuum (net emission,
    # visible without any model), so that B does not learn emission from the start
    wave = pca.wavelength_grid()
    core = (wave >= emission.HALPHA_CORE_AA[0]) & (wave <= emission.HALPHA_CORE_AA[1])
    good = norm_ivar[:, core] > 0
    n_good = good.sum(axis=1)
    with np.errstate(all="ignore"):  # rows without a usable core pixel: NaN, kept
        core_flux = np.where(good, norm_flux[:, core], 0.0).sum(axis=1) / n_good
    keep = ~(core_flux > 1.0)
    report: dict[str, Any] = {"training_net_emission_removed": int(np.sum(~keep))}
    for iteration in (0, 1):
        clean = pca.fit_basis("clean", norm_flux[keep], norm_ivar[keep], clean_pix,
                              cfg.n_components, cfg.seed)
        if iteration == 1:
            break
        ivar, pix, excl = stellar_pixels(norm_ivar, clean_pix, cfg.exclude_interstellar_lines)
        recon = clean.reconstruct(clean.project(norm_flux, norm_ivar, exclude=excl))
        stats = emission.residual_statistics(norm_flux, ivar, recon, clean.sigma_model, pix)
        thr = emission.choose_thresholds(stats, snr, cfg.emission_target_purity,
                                         broken_mad_sigma=cfg.broken_mad_sigma,
                                         broken_min_chi2=cfg.broken_min_chi2)
        flags = emission.flag(stats, snr, thr)
        keep &= (flags["em_flag"] == 0) & (flags["quality_flags"] == 0)
        report["training_removed_emission"] = int(np.sum(flags["em_flag"] == 1))
        report["training_removed_quality"] = int(np.sum(flags["quality_flags"] != 0))
    full = pca.fit_basis("full", norm_flux[keep], norm_ivar[keep], all_pix, cfg.n_components,
                         cfg.seed)
    meta = {"obpipe_version": __version__, "config": asdict(cfg), "selection": selection,
            "n_train_final": int(keep.sum()), "clean_windows_aa": pca.CLEAN_WINDOWS_AA,
            **report}
    return pca.PCAModel(full=full, clean=clean, meta=meta), report
