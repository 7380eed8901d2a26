"""PCA reconstruction of normalised spectra (Sec. 3, eqs. 1-2 of the paper).

Two bases, as in the paper:

* the **full-range** basis: K = 100 principal components of the standardised
  normalised flux over the whole grid, used to denoise non-emission spectra;
* the **clean-window** basis: K = 100 components of the pixels in the clean
  windows (``CLEAN_WINDOWS_AA``: no emission lines, tellurics or Na D), plus the
  matrix B solved from P B = X_full^T (least squares; P are the training
  spectra's clean-window coefficients), which maps coefficients to the whole
  spectrum. It reconstructs spectra with emission, and detects it.

Pixels are standardised by the training set's mean and standard deviation.

Beyond the paper, a spectrum is projected by weighted least squares with its own
inverse variance and mask instead of a dot product: the coefficients c solve
(Phi W Phi^T + Lambda^-1) c = Phi W z, where z is the standardised spectrum, W
= diag(norm_ivar std^2) (0 for bad pixels) and Lambda = diag(component
variances) is the training set's own prior on the coefficients (a Wiener
filter; ``prior=False`` gives plain weighted least squares). For speed W is
split into a smooth part, a sum of J Gaussian bumps along the spectrum whose
K x K matrices are precomputed, plus exact low-rank corrections at pixels whose
weight departs from the smooth part by more than a factor 3 (masked pixels, sky
lines, gaps); within a factor 3 the smooth weight is used, which loses a little
efficiency but no accuracy in expectation. Everything per row is float32 BLAS; the
K x K systems are solved by Cholesky factorisation (LAPACK ?posv), one call per
spectrum, to float32 precision of the float64 estimator (tests/spectra/test_pca.py).

Interstellar-blind projection (beyond the paper; issue 15 item 2, ``[spectral]
exclude_interstellar_lines``): the windows of the interstellar lines
(:data:`INTERSTELLAR_WINDOWS_AA`: Ca II K, Na D, K I, the strong DIBs), whose depth grows
with E(B-V), hence with distance, get zero weight (:func:`interstellar_blind_ivar`), so
the coefficients and the reconstruction hold only what the stellar pixels say.

The fitted bases are a small ``.npz`` model file (loaded with allow_pickle=False)
with their wavelength windows, training selection and package version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.linalg import lapack
from threadpoolctl import ThreadpoolController

from obpipe.spectra.grid import wavelength_grid
from obpipe.spectra.indices import air_to_vacuum
from obpipe.stats import MAD_TO_SIGMA

log = logging.getLogger(__name__)

N_COMPONENTS = 100
#: Clean windows (vacuum AA): free of emission lines (Balmer H-alpha to H-delta, He I
#: 5876/6678/7065, [N II], [S II], [O III], Fe II 5169/5317, Paschen / Ca II triplet / O I
#: 8446), telluric bands and interstellar Na D. They also stay > 270 AA from H-alpha: the
#: 50 AA pseudo-continuum spreads strong H-alpha emission over +-150 AA of the normalised
#: spectrum, which would leak emission into the coefficients.
CLEAN_WINDOWS_AA: tuple[tuple[float, float], ...] = (
    (3700.0, 4085.0), (4120.0, 4325.0), (4357.0, 4820.0), (4905.0, 4950.0),
    (5020.0, 5150.0), (5180.0, 5300.0), (5330.0, 5860.0), (5905.0, 6270.0),
    (6935.0, 7050.0), (7085.0, 7150.0), (7350.0, 7580.0), (7700.0, 7760.0),
    (7790.0, 8100.0),
)
_N_WEIGHT_BUMPS = 12
_DEVIANT_FACTOR = 3.0


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """The BLAS libraries of this process, found once (``threadpool_limits`` looks them up
    on every call, ~5 ms: too slow per batch of the projection)."""
    return ThreadpoolController()


def window_mask(windows: tuple[tuple[float, float], ...], wave: np.ndarray | None = None
                ) -> np.ndarray:
    """Boolean mask of the grid pixels inside any of ``windows`` (AA)."""
    wave = wavelength_grid() if wave is None else wave
    m = np.zeros(wave.size, dtype=bool)
    for lo, hi in windows:
        m |= (wave >= lo) & (wave <= hi)
    return m


#: Interstellar absorption lines in the LAMOST range (air AA, 0.1-1 AA precision): Ca II K
#: 3933.66, Na D2 / D1 5889.95 / 5895.92, K I 7664.90 / 7698.96 (NIST atomic spectra
#: database), and the strong narrow diffuse interstellar bands (DIBs) of the catalogues of
#: Jenniskens & Desert (1994, A&AS 106, 39) and Hobbs et al. (2008, ApJ 680, 1256): 4501.8,
#: 4726.8, 4762.6, 4780.0, 4881.8, 4963.9, 5362.1, 5487.7, 5705.1, 5780.5, 5797.1, 5849.8,
#: 6196.0, 6203.6, 6269.8, 6283.8, 6379.3, 6613.6, 6660.7, 6993.1, 7224.0, and the Gaia RVS
#: DIB 8620.4 (Munari et al. 2008, A&A 488, 969). Their strength grows with E(B-V), i.e.
#: with distance: a network that reads them learns distance, not luminosity (issue 15).
INTERSTELLAR_LINES_AIR_AA: tuple[float, ...] = (
    3933.66, 4501.8, 4726.8, 4762.6, 4780.0, 4881.8, 4963.9, 5362.1, 5487.7, 5705.1,
    5780.5, 5797.1, 5849.8, 5889.95, 5895.92, 6196.0, 6203.6, 6269.8, 6283.8, 6379.3,
    6613.6, 6660.7, 6993.1, 7224.0, 7664.90, 7698.96, 8620.4)
#: half-width (AA) of the window about each line of :data:`INTERSTELLAR_LINES_AIR_AA`:
#: the LAMOST FWHM (~2.5-5 AA at R ~ 1800), the narrow DIBs' own widths (< 3 AA), the
#: catalogues' rounding and interstellar velocities of +-100 km/s (+-2 AA)
INTERSTELLAR_HALF_WIDTH_AA = 6.0
#: the broad 4428 AA DIB (FWHM ~ 20 AA; Snow et al. 2002, ApJ 573, 662), vacuum AA
BROAD_DIB_4428_WINDOW_AA = (4409.0, 4450.0)
#: Windows (vacuum AA) of the interstellar lines: zero weight in the weighted projection
#: and the residual statistics of the pca stage, and out of the networks' pixels, with
#: ``[spectral] exclude_interstellar_lines`` (issue 15).
INTERSTELLAR_WINDOWS_AA: tuple[tuple[float, float], ...] = (BROAD_DIB_4428_WINDOW_AA,) + tuple(
    (float(lam) - INTERSTELLAR_HALF_WIDTH_AA, float(lam) + INTERSTELLAR_HALF_WIDTH_AA)
    for lam in air_to_vacuum(np.array(INTERSTELLAR_LINES_AIR_AA)))


def interstellar_mask(wave_aa: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the pixels in :data:`INTERSTELLAR_WINDOWS_AA` (vacuum AA grid)."""
    return window_mask(INTERSTELLAR_WINDOWS_AA,
                       wavelength_grid() if wave_aa is None else np.asarray(wave_aa))


def interstellar_blind_ivar(norm_ivar: np.ndarray, wave_aa: np.ndarray | None = None
                            ) -> np.ndarray:
    """``norm_ivar`` (n, n_wave) with zero weight in :data:`INTERSTELLAR_WINDOWS_AA`: a
    weighted projection (Sec. 3) of the spectrum then reads only its stellar pixels, and
    its reconstruction holds no interstellar line (issue 15). A float32 copy."""
    ivar = np.array(norm_ivar, dtype=np.float32, copy=True)
    ivar[..., interstellar_mask(wave_aa)] = 0.0
    return ivar


@dataclass
class PCABasis:
    """A fitted basis. Arrays over ``pixels`` (P of them) or the full grid (N)."""

    name: str
    pixels: np.ndarray  # (N,) bool: pixels used for the projection
    mean: np.ndarray  # (P,)
    std: np.ndarray  # (P,)
    components: np.ndarray  # (K, P) orthonormal rows
    variance: np.ndarray  # (K,) variance of the training coefficients
    to_full: np.ndarray  # (K, N): coefficients -> standardised full spectrum
    full_mean: np.ndarray  # (N,)
    full_std: np.ndarray  # (N,)
    sigma_model: np.ndarray  # (N,) reconstruction error of the training set, norm. flux
    weight_template: np.ndarray  # (P,) typical shape of the weights ivar std^2 along a row
    meta: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    # ---- projection ----------------------------------------------------------------
    def _bumps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if "bumps" not in self._cache:
            idx = np.flatnonzero(self.pixels).astype(float)
            centres = np.linspace(idx.min(), idx.max(), _N_WEIGHT_BUMPS)
            width = (idx.max() - idx.min()) / (_N_WEIGHT_BUMPS - 1)
            g = np.exp(-0.5 * ((idx[:, None] - centres[None, :]) / width) ** 2)  # (P, J)
            g = g * self.weight_template[:, None]
            pinv = np.linalg.pinv(g)  # (J, P)
            phi = self.components.astype(np.float64)
            h = np.stack([(phi * g[:, j]) @ phi.T for j in range(g.shape[1])])  # (J, K, K)
            self._cache["bumps"] = (g, pinv, h)
        return self._cache["bumps"]

    def _f32(self) -> dict[str, np.ndarray]:
        """float32 copies of the arrays the projection and reconstruction use (cached)."""
        if "f32" not in self._cache:
            g, pinv, h = self._bumps()
            prior = (1.0 / np.maximum(self.variance, 1e-12)).astype(np.float32)
            self._cache["f32"] = {
                "mean": self.mean.astype(np.float32),
                "inv_std": (1.0 / self.std).astype(np.float32),
                "std2": (self.std**2).astype(np.float32),
                "phi_t": np.ascontiguousarray(self.components.T, dtype=np.float32),
                "bumps_t": np.ascontiguousarray(g.T, dtype=np.float32),  # (J, P)
                "pinv_t": np.ascontiguousarray(pinv.T, dtype=np.float32),  # (P, J)
                "h": h.reshape(h.shape[0], -1).astype(np.float32),  # (J, K K)
                "prior": prior,  # (K,) 1 / component variance, Lambda^-1
                "recon": (self.to_full * self.full_std[None, :]).astype(np.float32),  # (K, N)
                "full_mean": self.full_mean.astype(np.float32),
            }
        return self._cache["f32"]

    def standardise(self, norm_flux: np.ndarray, norm_ivar: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """z and its weights w = ivar std^2 on the basis pixels (0 where unusable), float32."""
        c = self._f32()
        all_pixels = bool(self.pixels.all())
        f = np.asarray(norm_flux, dtype=np.float32)
        iv = np.asarray(norm_ivar, dtype=np.float32)
        if not all_pixels:
            f, iv = f[:, self.pixels], iv[:, self.pixels]
        bad = np.isfinite(f)
        bad &= iv > 0
        np.logical_not(bad, out=bad)
        z = np.subtract(f, c["mean"])
        z *= c["inv_std"]
        z[bad] = 0.0
        w = np.multiply(iv, c["std2"])
        w[bad] = 0.0
        return z, w

    def project(self, norm_flux: np.ndarray, norm_ivar: np.ndarray, prior: bool = True,
                batch: int = 500, exclude: np.ndarray | None = None) -> np.ndarray:
        """Coefficients (n, K) by inverse-variance weighted least squares (see module doc).

        ``exclude`` (grid mask, e.g. :func:`interstellar_mask`): pixels of zero weight in
        every row, out of the smooth part's matrices, so they cost no low-rank correction.
        Pass the measured ``norm_ivar`` there, not zeros: the weights still shape the smooth
        part of W. Zeroing them as well gives other (less exact) coefficients and makes
        many other pixels deviant (tests/spectra/test_pca_interstellar.py compares with
        the float64 zero-weight estimator)."""
        norm_flux = np.atleast_2d(norm_flux)
        norm_ivar = np.atleast_2d(norm_ivar)
        out = np.empty((norm_flux.shape[0], self.n_components))
        for lo in range(0, norm_flux.shape[0], batch):
            sl = slice(lo, lo + batch)
            out[sl] = self._project_batch(norm_flux[sl], norm_ivar[sl], prior, exclude)
        return out

    def _excluded_h(self, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The basis pixels in grid mask ``exclude`` and the smooth part's (J, K K) matrices
        without them (cached per mask)."""
        key = ("excluded", np.packbits(exclude).tobytes())
        if key not in self._cache:
            g, _, _ = self._bumps()
            out = np.asarray(exclude, bool)[self.pixels]
            phi = self.components.astype(np.float64)[:, ~out]
            gk = g[~out]
            h = np.stack([(phi * gk[:, j]) @ phi.T for j in range(g.shape[1])])
            self._cache[key] = (out, h.reshape(h.shape[0], -1).astype(np.float32))
        return self._cache[key]

    def _project_batch(self, norm_flux: np.ndarray, norm_ivar: np.ndarray, prior: bool,
                       exclude: np.ndarray | None = None) -> np.ndarray:
        z, w = self.standardise(norm_flux, norm_ivar)
        k = self.n_components
        c = self._f32()
        h = c["h"]
        used = w > 0
        # the smooth part of W: J bumps fitted to the row, its unusable pixels filled with the
        # row's median weight (the 1 / ivar of a masked pixel says nothing about the row)
        filled = np.where(used, w, _row_median(w, used)[:, None])
        a = filled @ c["pinv_t"]  # (n, J)
        del filled
        w_smooth = a @ c["bumps_t"]  # (n, P)
        np.maximum(w_smooth, np.float32(1e-12), out=w_smooth)
        out = None
        if exclude is not None:  # after the smooth fit, which their weights still shape
            out, h = self._excluded_h(exclude)
            w[:, out] = 0.0
            used[:, out] = False
        n_good = np.count_nonzero(used, axis=1)
        # deviant = (w > 3 w_smooth) | (3 w < w_smooth), with one float temporary
        scaled = np.multiply(w_smooth, np.float32(_DEVIANT_FACTOR))
        deviant = w > scaled
        np.multiply(w, np.float32(_DEVIANT_FACTOR), out=scaled)
        deviant |= scaled < w_smooth
        del scaled
        if out is not None:  # zero weight by design, already out of the smooth part
            deviant[:, out] = False
        counts = np.count_nonzero(deviant, axis=1)
        # the K x K matrices in the order of their number of deviant pixels, so that the
        # corrections of each group are added to a contiguous slice (no gather / scatter)
        order = np.argsort(counts, kind="stable")
        gram = (a[order] @ h).reshape(-1, k, k)  # Phi diag(w_smooth) Phi^T, (n, K, K)
        # many small matrices: one BLAS thread each (threads only contend here)
        with _blas_controller().limit(limits=1):
            _add_deviant_corrections(gram, np.asarray(self.components, dtype=np.float64),
                                     c["phi_t"], deviant, w, w_smooth, order, counts)
        del w_smooth, deviant
        diagonal = gram.reshape(gram.shape[0], k * k)[:, :: k + 1]  # a view
        diagonal += c["prior"] if prior else np.float32(1e-6)
        w *= z
        rhs = w @ c["phi_t"]  # Phi W z, (n, K)
        coeff = np.empty((w.shape[0], k))
        with _blas_controller().limit(limits=1):
            coeff[order] = _solve_spd(gram, rhs[order])
        coeff[n_good == 0] = np.nan
        return coeff

    def project_plain(self, norm_flux: np.ndarray) -> np.ndarray:
        """The paper's projection p = x . xi (missing pixels set to the training mean)."""
        f = np.asarray(norm_flux, dtype=np.float64)[:, self.pixels]
        z = np.where(np.isfinite(f), (f - self.mean) / self.std, 0.0)
        return z @ self.components.T.astype(np.float64)

    def reconstruct(self, coeff: np.ndarray) -> np.ndarray:
        """Full-grid normalised flux (n, N), float32: full_mean + full_std (c B) (eq. 2)."""
        c = self._f32()
        out = np.asarray(coeff, dtype=np.float32) @ c["recon"]
        out += c["full_mean"]
        return out

    # ---- persistence ----------------------------------------------------------------
    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}pixels": self.pixels, f"{prefix}mean": self.mean, f"{prefix}std": self.std,
            f"{prefix}components": self.components, f"{prefix}variance": self.variance,
            f"{prefix}to_full": self.to_full, f"{prefix}full_mean": self.full_mean,
            f"{prefix}full_std": self.full_std, f"{prefix}sigma_model": self.sigma_model,
            f"{prefix}weight_template": self.weight_template,
            f"{prefix}meta": np.array(json.dumps(self.meta)),
        }

    @classmethod
    def from_arrays(cls, name: str, data: Any, prefix: str) -> PCABasis:
        return cls(
            name=name,
            pixels=np.asarray(data[f"{prefix}pixels"], bool),
            mean=data[f"{prefix}mean"], std=data[f"{prefix}std"],
            components=data[f"{prefix}components"], variance=data[f"{prefix}variance"],
            to_full=data[f"{prefix}to_full"], full_mean=data[f"{prefix}full_mean"],
            full_std=data[f"{prefix}full_std"], sigma_model=data[f"{prefix}sigma_model"],
            weight_template=data[f"{prefix}weight_template"],
            meta=json.loads(str(data[f"{prefix}meta"])),
        )


def _add_deviant_corrections(gram: np.ndarray, phi: np.ndarray, phi_t: np.ndarray,
                             deviant: np.ndarray, w: np.ndarray, w_smooth: np.ndarray,
                             order: np.ndarray | None = None, counts: np.ndarray | None = None,
                             max_batched: int = 64) -> None:
    """gram[j] += sum over deviant pixels p of (w - w_smooth)[i, p] phi_p phi_p^T (in place),
    i = order[j]: ``order`` sorts the rows by their number of deviant pixels (``counts``),
    ascending (the identity, with rows in any order, when not given).

    ``phi`` (K, P) are the components (float64) and ``phi_t`` (P, K) the same by pixel in
    gram's dtype. Rows with up to ``max_batched`` deviant pixels are done in one padded
    batched matrix product per group of similar counts; rows with more (e.g. dead
    segments) one by one, in float64.
    """
    counts = np.count_nonzero(deviant, axis=1) if counts is None else counts
    if order is None:
        order = np.argsort(counts, kind="stable")
        sorted_gram = gram[order]
        _add_deviant_corrections(sorted_gram, phi, phi_t, deviant, w, w_smooth, order, counts,
                                 max_batched)
        gram[order] = sorted_gram
        return
    sorted_counts = counts[order]
    # rows grouped by their number of deviant pixels, so that padding stays small
    for lo, hi in ((1, 4), (5, 8), (9, 16), (17, 32), (33, max_batched)):
        j0, j1 = np.searchsorted(sorted_counts, (lo, hi + 1))
        if j0 == j1:
            continue
        rows = order[j0:j1]
        r, c = np.nonzero(deviant[rows])
        starts = np.r_[0, np.cumsum(counts[rows])[:-1]]
        pos = np.arange(r.size) - np.repeat(starts, counts[rows])
        # padded to the group's bound, not its largest count: a row's sum then has the
        # same length (the same rounding) whatever other rows share its block (chunk-size
        # independent results, issue 17 item 5)
        d_max = hi
        cols = np.zeros((rows.size, d_max), dtype=np.intp)
        dvals = np.zeros((rows.size, d_max), dtype=gram.dtype)
        cols[r, pos] = c
        dvals[r, pos] = w[rows[r], c] - w_smooth[rows[r], c]
        sub = phi_t[cols]  # (m, d_max, K)
        gram[j0:j1] += np.matmul(np.swapaxes(sub * dvals[:, :, None], 1, 2), sub)
    for j in range(int(np.searchsorted(sorted_counts, max_batched + 1)), order.size):
        i = order[j]
        cols = np.flatnonzero(deviant[i])
        sub = phi[:, cols]
        gram[j] += ((sub * (w[i, cols] - w_smooth[i, cols]).astype(np.float64)) @ sub.T).astype(
            gram.dtype)


def _row_median(x: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Median of each row of ``x`` (n, P) over its ``good`` entries; 0 where a row has none.

    The same numbers as ``np.nan_to_num(np.nanmedian(np.where(good, x, nan), axis=1))``
    (the mean of the two middle values in x's dtype for an even count) without
    nanmedian's Python loop over rows: one sort of the rows, missing entries last.
    """
    m = np.count_nonzero(good, axis=1)
    s = np.where(good, x, np.array(np.inf, dtype=x.dtype))
    s.sort(axis=1)
    rows = np.arange(x.shape[0])
    lo = s[rows, np.maximum(m - 1, 0) // 2]
    hi = s[rows, np.minimum(m // 2, x.shape[1] - 1)]
    out = (lo + hi) / np.array(2, dtype=x.dtype)
    out[m == 0] = 0.0
    return out


def _solve_spd(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve gram[i] x[i] = rhs[i] for a stack of symmetric positive definite matrices
    (n, K, K): Cholesky (LAPACK ?posv, one call per matrix, no copy of the stack); LU
    where a matrix is not numerically positive definite."""
    posv = lapack.get_lapack_funcs("posv", (gram,))
    out = np.empty_like(rhs)
    for i in range(gram.shape[0]):
        # gram[i].T is the same symmetric matrix in Fortran order; posv reads its lower half
        _, x, info = posv(gram[i].T, rhs[i], lower=1)
        out[i] = x if info == 0 else np.linalg.solve(gram[i], rhs[i])
    return out


def _weight_template(ivar: np.ndarray, std: np.ndarray, max_rows: int = 1200) -> np.ndarray:
    """Median shape of ivar std^2 along a row (each row scaled by its median)."""
    ivar = ivar[:: max(1, ivar.shape[0] // max_rows)]
    w = np.where(ivar > 0, ivar, np.nan) * std[None, :] ** 2
    with np.errstate(all="ignore"):
        rel = w / np.nanmedian(w, axis=1, keepdims=True)
        t = np.nanmedian(rel, axis=0)
    return np.where(np.isfinite(t) & (t > 0), t, 1.0)


def _column_median(x: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Median of each column over its ``good`` rows, without a Python loop per column:
    missing entries become alternately +inf and -inf, which leaves the median of the rest
    in place (to half a rank when a column misses an odd number of rows)."""
    parity = np.cumsum(~good, axis=0) % 2 == 0
    return np.median(np.where(good, x, np.where(parity, np.inf, -np.inf)), axis=0)


def _fill_and_standardise(flux: np.ndarray, ivar: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training matrix with unusable pixels replaced by the pixel's mean over good rows.

    Values further than 20 robust standard deviations (+1.0) from the pixel's median are
    treated as unusable too: an artefact the quality flags missed (a dead segment divided
    by a near-zero continuum) must not set the pixel's scale.
    """
    good = np.isfinite(flux) & (ivar > 0)
    with np.errstate(invalid="ignore"):
        med = _column_median(flux, good)
        mad = _column_median(np.abs(flux - med[None, :]), good)
    med = np.where(np.isfinite(med), med, 1.0)
    mad = np.where(np.isfinite(mad), mad, 0.0)
    good &= np.abs(np.where(good, flux, med[None, :]) - med[None, :]) <= (
        20.0 * MAD_TO_SIGMA * mad + 1.0)[None, :]
    n_good = good.sum(axis=0)
    fill = np.where(good, flux, 0.0).sum(axis=0) / np.maximum(n_good, 1)
    fill = np.where(n_good > 0, fill, 1.0)
    x = np.where(good, flux, fill[None, :])
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 1e-6, std, 1e-6)
    return (x - mean) / std, mean, std


def fit_components(z: np.ndarray, n_components: int, random_state: int = 0,
                   chunk_rows: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Leading principal components (K, P) and their variances with dask-ml's
    randomized PCA (works on data that need not fit in memory)."""
    import dask.array as da
    from dask_ml.decomposition import PCA

    k = min(n_components, z.shape[0] - 1, z.shape[1])
    dz = da.from_array(np.asarray(z, dtype=np.float32), chunks=(chunk_rows, z.shape[1]))
    pca = PCA(n_components=k, svd_solver="randomized", random_state=random_state,
              iterated_power=4, whiten=False)
    # dask-ml 2025.1 + scikit-learn >= 1.8 (dask/dask-ml#1023): set the normaliser explicitly
    pca.power_iteration_normalizer = "auto"
    pca.fit(dz)
    return np.asarray(pca.components_, dtype=np.float64), np.asarray(
        pca.explained_variance_, dtype=np.float64)


def _model_error(basis: PCABasis, flux: np.ndarray, ivar: np.ndarray,
                 max_rows: int = 800, seed: int = 0) -> np.ndarray:
    """Per-pixel reconstruction error (norm. flux) of the training set, noise removed.

    Robust to a minority of outliers (emission lines, artefacts): per pixel, the
    sigma_model for which the median of r^2 / (1/ivar + sigma_model^2) equals the
    median of a chi^2 with one degree of freedom (0.4549), found by bisection.
    """
    if flux.shape[0] > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(flux.shape[0], max_rows, replace=False))
        flux, ivar = flux[rows], ivar[rows]
    recon = basis.reconstruct(basis.project(flux, ivar))
    good = np.isfinite(flux) & (ivar > 0)
    resid2 = np.where(good, (flux - recon) ** 2, np.nan)
    noise2 = np.where(good, 1.0 / np.where(good, ivar, 1.0), np.nan)
    target = 0.454936  # median of chi^2 with 1 degree of freedom
    lo = np.full(flux.shape[1], -6.0)  # log10 sigma_model
    hi = np.full(flux.shape[1], 0.5)
    if not good.any():
        return np.zeros(flux.shape[1])
    def col_median(x: np.ndarray) -> np.ndarray:
        return _column_median(x, good)

    with np.errstate(all="ignore"):
        at_zero = col_median(resid2 / noise2)
        for _ in range(20):  # 6.5 dex / 2^20: far below any meaningful precision
            mid = 0.5 * (lo + hi)
            med = col_median(resid2 / (noise2 + 10.0 ** (2 * mid)))
            too_small = med > target
            lo = np.where(too_small, mid, lo)
            hi = np.where(too_small, hi, mid)
    sigma = 10.0 ** (0.5 * (lo + hi))
    # no model error where the noise alone already explains the residuals
    return np.where(np.nan_to_num(at_zero, nan=0.0) <= target, 0.0, sigma)


def fit_basis(
    name: str,
    norm_flux: np.ndarray,
    norm_ivar: np.ndarray,
    pixels: np.ndarray,
    n_components: int = N_COMPONENTS,
    random_state: int = 0,
    meta: dict[str, Any] | None = None,
) -> PCABasis:
    """Fit a basis on training spectra (M, N): components on ``pixels``, B to the full grid."""
    norm_flux = np.asarray(norm_flux, dtype=np.float64)
    norm_ivar = np.asarray(norm_ivar, dtype=np.float64)
    z_full, full_mean, full_std = _fill_and_standardise(norm_flux, norm_ivar)
    z = z_full[:, pixels]
    comps, var = fit_components(z, n_components, random_state)
    if pixels.all():
        to_full = comps
    else:
        scores = z @ comps.T  # P (M, K)
        to_full, *_ = np.linalg.lstsq(scores, z_full, rcond=None)  # B (K, N): P B = X^T
    basis = PCABasis(
        name=name, pixels=np.asarray(pixels, bool), mean=full_mean[pixels],
        std=full_std[pixels], components=comps, variance=var, to_full=to_full,
        full_mean=full_mean, full_std=full_std, sigma_model=np.zeros(pixels.size),
        weight_template=_weight_template(norm_ivar[:, pixels], full_std[pixels]),
        meta=dict(meta or {}),
    )
    basis.sigma_model = _model_error(basis, norm_flux, norm_ivar)
    basis.meta.update({"n_train": int(norm_flux.shape[0]), "n_components": int(comps.shape[0]),
                       "explained_variance_ratio_sum": float(var.sum() / max(
                           np.sum(np.var(z, axis=0)), 1e-12))})
    return basis


@dataclass
class PCAModel:
    """The two bases of Sec. 3 in one model file."""

    full: PCABasis
    clean: PCABasis
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str) -> None:
        """Write an ``.npz`` to a local path or an fsspec URL; the JSON metadata records
        the obpipe version and the training survey (:func:`obpipe.provenance.stamped`)."""
        from obpipe import provenance
        from obpipe.io import store

        self.meta = provenance.stamped(self.meta)
        arrays = {**self.full.arrays("full_"), **self.clean.arrays("clean_"),
                  "meta": np.array(json.dumps(self.meta)), "wave": wavelength_grid()}
        with store.open_file(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    @classmethod
    def load(cls, path: str) -> PCAModel:
        """Read a model written by :meth:`save` (local path or fsspec URL)."""
        from obpipe.io import store

        with store.open_file(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            if not np.allclose(data["wave"], wavelength_grid()):
                raise ValueError(f"{path}: PCA model was fitted on another wavelength grid")
            return cls(full=PCABasis.from_arrays("full", data, "full_"),
                       clean=PCABasis.from_arrays("clean", data, "clean_"),
                       meta=json.loads(str(data["meta"])))
