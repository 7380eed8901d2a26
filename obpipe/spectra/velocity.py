"""Residual radial velocity against the PCA reconstruction, and the rest-frame shift
(beyond the paper; issue 15 item 2), numpy only.

The cube is stored in the rest frame of the catalogue RV (ingest shifts by the header
redshift; DESIGN.md, "The cube"). An error in that RV leaves the lines shifted, and a
shifted line projected on the PCA basis (Sec. 3) reconstructs shallower: the networks
read a sub-pixel shift as luminosity (docs/validation.md, "an ablation with fixed
networks": -0.04 / -0.18 / -0.39 / -0.53 mag at 10 / 21 / 41 / 69 km/s). LAMOST's RVs
of hot stars are poor (its templates hold no OB star), so the pca stage can measure the
residual velocity of each spectrum against its own reconstruction R and undo it:

* :func:`residual_velocity`: linearised weighted least squares of the residual
  f - R on dR/dv = (dR/dpixel) / (69.03 km/s per pixel) (the grid is uniform in
  log lambda, so a velocity is a constant fractional-pixel shift; :mod:`grid`),
  with weights 1 / (1/ivar + sigma_model^2) on the pixels given (the clean windows
  without the interstellar ones: interstellar lines sit in the observer's frame, not
  the star's); sigma(delta v) from the normal equation;
* :func:`shift_spectra`: rows moved by a fractional number of pixels (Lanczos
  interpolation; masked pixels filled with the reconstruction first and kept masked,
  pixels shifted in from beyond the edges masked).

A positive residual velocity means the lines sit redward of their rest wavelength in the
stored frame: the star's true RV is the catalogue RV plus it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from obpipe.spectra.grid import velocity_per_pixel_kms

if TYPE_CHECKING:
    from obpipe.spectra.pca import PCABasis

#: largest residual shift (pixels, 69.03 km/s each) that one linearised step may apply:
#: the linearisation holds within about a line's half width (~1.5 px at R ~ 1800)
MAX_STEP_PX = 1.0
#: largest total residual shift (pixels, 138 km/s): the refinement is clipped there (a
#: spectrum this far off has a failed catalogue RV or is not a single star)
MAX_SHIFT_PX = 2.0
#: linearised steps of :func:`refine_rest_frame` (each one projection of the spectrum)
N_ITERATIONS = 2
#: half width (pixels) of the Lanczos interpolation kernel of :func:`shift_spectra`
_LANCZOS_A = 3


def residual_velocity(norm_flux: np.ndarray, norm_ivar: np.ndarray, recon: np.ndarray,
                      pixels: np.ndarray, sigma_model: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Residual velocity (km/s) of each row against its reconstruction, its error (km/s)
    and the reduced chi2 of the fitted pixels after the shift.

    Linearised (Gauss-Newton, one step): f(x) = R(x - d) ~ R(x) - d R'(x) for a shift of
    d pixels, so d = -sum w r R' / sum w R'^2 with r = f - R and sigma(d)^2 = 1 / sum w
    R'^2, w = 1 / (1/ivar + sigma_model^2) on the usable ``pixels`` (grid mask) and 0
    elsewhere. ``norm_flux``, ``norm_ivar``, ``recon``: (n, n_wave); ``sigma_model``: the
    basis' per-pixel reconstruction error (norm. flux). Rows without a usable pixel or
    without a line (sum w R'^2 = 0) get NaN. The shift is in km/s (d times
    :func:`obpipe.spectra.grid.velocity_per_pixel_kms`), not clipped.
    """
    cols = np.flatnonzero(np.asarray(pixels, bool))
    r_model = np.asarray(recon, dtype=np.float32)
    n_pix = r_model.shape[1]
    # dR / dpixel by central differences (one-sided at the grid's ends), on the used columns
    hi, lo = np.minimum(cols + 1, n_pix - 1), np.maximum(cols - 1, 0)
    deriv = (r_model[:, hi] - r_model[:, lo]) / (hi - lo).astype(np.float32)
    r_model = r_model[:, cols]
    f = np.asarray(norm_flux, dtype=np.float32)[:, cols]
    iv = np.asarray(norm_ivar, dtype=np.float32)[:, cols]
    good = (iv > 0) & np.isfinite(f) & np.isfinite(r_model)
    with np.errstate(divide="ignore"):
        var = 1.0 / np.where(good, iv, np.float32(1.0))
    if sigma_model is not None:
        var += np.asarray(sigma_model, dtype=np.float32)[cols] ** 2
    w = np.where(good, 1.0 / var, np.float32(0.0))
    resid = np.where(good, f - r_model, np.float32(0.0))
    wd = w * deriv
    a = np.einsum("ij,ij->i", wd, deriv, dtype=np.float64)
    b = np.einsum("ij,ij->i", wd, resid, dtype=np.float64)
    n_used = np.count_nonzero(good, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        d_px = np.where(a > 0, -b / a, np.nan)
        err_px = np.where(a > 0, 1.0 / np.sqrt(a), np.nan)
        # chi2 of the residual after the linear shift: sum w r^2 + 2 d sum w r R' + d^2 a
        rr = np.einsum("ij,ij->i", w * resid, resid, dtype=np.float64)
        d0 = np.nan_to_num(d_px)
        chi2 = (rr + 2.0 * d0 * b + d0**2 * a) / (n_used - 1)
    vpix = velocity_per_pixel_kms()
    return d_px * vpix, err_px * vpix, np.where(n_used > 1, chi2, np.nan)


def refine_rest_frame(basis: PCABasis, norm_flux: np.ndarray, norm_ivar: np.ndarray,
                      pixels: np.ndarray, exclude: np.ndarray | None = None,
                      prior: bool = True, n_iter: int = N_ITERATIONS
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows brought to the rest frame of their own PCA reconstruction (issue 15 item 2).

    ``n_iter`` times: weighted projection on ``basis`` (Sec. 3; ``prior``, ``exclude`` as
    in :meth:`PCABasis.project`), reconstruction R (eq. 2), :func:`residual_velocity` on
    ``pixels`` (a grid mask: the clean windows without the interstellar ones), a step of
    at most :data:`MAX_STEP_PX`, the total clipped to :data:`MAX_SHIFT_PX`, and the
    original rows shifted by minus the total (:func:`shift_spectra`). Returns the shifted
    (norm_flux, norm_ivar), the residual velocity dv (km/s: the star's RV is the frame's
    RV + dv) and its error (km/s: the last step's sigma from the normal equation, times
    sqrt(reduced chi2) where that is above 1). dv and its error are NaN for rows that
    could not be measured (no usable pixel, no line); those rows are not shifted.
    """
    vpix = velocity_per_pixel_kms()
    f = np.asarray(norm_flux, dtype=np.float32)
    iv = np.asarray(norm_ivar, dtype=np.float32)
    total = np.zeros(f.shape[0])
    err = np.full(f.shape[0], np.nan)
    measured = np.ones(f.shape[0], dtype=bool)
    out_f, out_iv = f, iv
    for _ in range(max(int(n_iter), 1)):
        recon = basis.reconstruct(np.nan_to_num(
            basis.project(out_f, out_iv, prior=prior, exclude=exclude)))
        dv, err, chi2 = residual_velocity(out_f, out_iv, recon, pixels, basis.sigma_model)
        measured &= np.isfinite(dv)
        err = err * np.sqrt(np.maximum(np.nan_to_num(chi2, nan=1.0), 1.0))
        step = np.clip(np.where(measured, dv, 0.0) / vpix, -MAX_STEP_PX, MAX_STEP_PX)
        total = np.clip(total + step, -MAX_SHIFT_PX, MAX_SHIFT_PX)
        out_f, out_iv = shift_spectra(f, iv, -total, recon)
    dv_kms = np.where(measured, total * vpix, np.nan)
    return out_f, out_iv, dv_kms, np.where(measured, err, np.nan)


def shift_spectra(norm_flux: np.ndarray, norm_ivar: np.ndarray, shift_px: np.ndarray,
                  fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows moved by ``shift_px`` pixels toward longer wavelength: out(x) = in(x - shift).

    To bring a spectrum whose residual velocity is dv to the rest frame, pass shift =
    -dv / 69.03 km/s. The flux is interpolated with a Lanczos kernel (a = 3: six pixels,
    close to a band-limited shift, so line depths and the noise variance are nearly kept,
    while an artefact such as a spike stays within three pixels, where the quality
    statistics still see it; a Fourier shift spreads it over the whole row), after
    unusable pixels (ivar 0 or non-finite flux) are filled with ``fill`` (the
    reconstruction). The ivar (and so the
    mask) is the nearest source pixel's: a masked pixel stays one masked pixel (growing
    every mask by a pixel, as a two-pixel rule would, changes the projection of spectra
    with many masked pixels more than the fill does), and pixels shifted in from beyond
    the grid get ivar 0 (and the filled value). Rows with a zero or non-finite shift are
    returned unchanged. float32 out.
    """
    f = np.asarray(norm_flux, dtype=np.float32)
    iv = np.asarray(norm_ivar, dtype=np.float32)
    n, n_pix = f.shape
    shift = np.nan_to_num(np.asarray(shift_px, dtype=np.float64), nan=0.0)
    good = (iv > 0) & np.isfinite(f)
    filled = np.where(good, f, np.asarray(fill, dtype=np.float32))
    filled = np.where(np.isfinite(filled), filled, np.float32(1.0))
    # Lanczos kernel (a = 3): out(x) = sum_j L(t - j) in(x + k + j), j = -2..3, with the
    # source position x - shift = x + k + t, 0 <= t < 1; weights normalised to sum 1
    k = np.floor(-shift).astype(np.intp)
    t = -shift - k
    taps = np.arange(-_LANCZOS_A + 1, _LANCZOS_A + 1)
    u = t[:, None] - taps[None, :]
    weights = np.sinc(u) * np.sinc(u / _LANCZOS_A)
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    margin = int(np.max(np.abs(k), initial=0)) + _LANCZOS_A + 1
    padded = np.pad(filled, ((0, 0), (margin, margin)), mode="edge")
    out_f = np.empty_like(f)
    for kk in np.unique(k):
        rows = np.flatnonzero(k == kk)
        acc = np.zeros((rows.size, n_pix), dtype=np.float32)
        for j, tap in enumerate(taps):
            lo = margin + int(kk) + int(tap)
            acc += weights[rows, j][:, None] * padded[rows, lo:lo + n_pix]
        out_f[rows] = acc
    # the ivar and the mask move with the nearest source pixel (x - shift rounded): a masked
    # pixel stays one masked pixel, and zero ivar comes in beyond the grid's ends
    k = np.rint(-shift).astype(np.intp)
    margin = int(np.max(np.abs(k), initial=0)) + 1
    iv_src = np.pad(np.where(good, iv, np.float32(0.0)), ((0, 0), (margin, margin)))
    out_iv = np.empty_like(iv)
    for kk in np.unique(k):
        rows = np.flatnonzero(k == kk)
        out_iv[rows] = iv_src[rows, margin + int(kk):margin + int(kk) + n_pix]
    unchanged = ~np.isfinite(np.asarray(shift_px, dtype=np.float64)) | (shift == 0.0)
    if unchanged.any():
        out_f[unchanged] = f[unchanged]
        out_iv[unchanged] = iv[unchanged]
    return out_f, out_iv
