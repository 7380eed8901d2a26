"""Emission-line and broken-spectrum flags from PCA residuals (Sec. 3, Fig. 3; App. A).

For each spectrum, with ``recon`` the clean-window PCA reconstruction (it never
sees H-alpha) and ``sigma_model`` the basis' own reconstruction error:

* ``halpha_excess`` = mean(observed - reconstructed) over 6,557-6,571 AA (Fig. 3,
  x axis), in units of the pseudo-continuum; its uncertainty from the pixel
  variances 1/ivar + sigma_model^2 (neighbouring pixels are treated as
  independent);
* ``halpha_chi2`` = reduced chi^2 over 6,400-6,550 and 6,590-6,690 AA (Fig. 3, y axis);
* ``quality_chi2`` = reduced chi^2 over the full range except the emission-line
  windows (``EMISSION_WINDOWS_AA``);
* ``window_chi2_max`` = the largest reduced chi^2 in any 16-pixel window, outside
  the emission-line windows (the wide ones, ``EMISSION_WINDOWS_WIDE_AA``, for
  spectra flagged as emission: the 50 AA continuum spreads strong emission) and
  the telluric bands. Artefacts (Fig. 15: arm jumps, dead segments, bad
  wavelength calibration, spikes) are local, so a local statistic finds them
  where a full-range chi^2 dilutes them.

Thresholds come from the data, not from constants tuned to the mock:

* emission: the significance s = excess / sigma of spectra without emission is
  symmetric about zero, while emission adds only a positive tail. The threshold
  is the smallest s_t >= 3 at which the negative tail (a mirror estimate of the
  false positives) is at most ``1 - target_purity`` of the positive tail, and at
  least ``min_excess`` in flux (0 by default);
* broken: log10(window_chi2_max) above the median plus ``broken_mad_sigma``
  robust standard deviations (scaled MAD, ``obpipe.stats``) of spectra of similar S/N (ten
  quantile bins of snr_g), and above ``broken_min_chi2``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from obpipe.spectra.grid import wavelength_grid
from obpipe.stats import robust_std

HALPHA_CORE_AA = (6557.0, 6571.0)
HALPHA_WINGS_AA = ((6400.0, 6550.0), (6590.0, 6690.0))
#: Windows that emission lines may fill (excluded from the quality chi2): Balmer, He I,
#: [N II], [S II], [O III], Fe II, Paschen / O I / Ca II triplet.
EMISSION_WINDOWS_AA = (
    (4325.0, 4357.0), (4820.0, 4905.0), (4950.0, 5020.0), (5150.0, 5180.0), (5300.0, 5330.0),
    (6480.0, 6760.0), (7050.0, 7085.0), (8100.0, 9100.0),
)
EMISSION_WINDOWS_WIDE_AA = (
    (4080.0, 4125.0), (4280.0, 4400.0), (4760.0, 5025.0), (5150.0, 5180.0), (5300.0, 5330.0),
    (5860.0, 5895.0), (6360.0, 6770.0), (7050.0, 7085.0), (8100.0, 9100.0),
)
TELLURIC_WINDOWS_AA = ((6270.0, 6310.0), (6860.0, 6935.0), (7150.0, 7350.0), (7580.0, 7700.0),
                       (8100.0, 8350.0), (8900.0, 9100.0))
QUALITY_WINDOW_PX = 16

#: bits of ``quality_flags``
QUALITY_BITS: dict[str, int] = {
    "broken": 1,  # large chi2 against the reconstruction over the clean windows (App. A)
    "no_halpha_data": 2,  # no usable pixel in the H-alpha core window
    "few_pixels": 4,  # less than half of the clean-window pixels usable
    "projection_failed": 8,  # no coefficients (no usable pixel)
}


def _in(wave: np.ndarray, windows: tuple[tuple[float, float], ...]) -> np.ndarray:
    m = np.zeros(wave.size, dtype=bool)
    for lo, hi in windows:
        m |= (wave >= lo) & (wave <= hi)
    return m


@lru_cache(maxsize=8)
def _column_sets(n_pix: int, clean_pixels: bytes) -> dict[str, Any]:
    """Column masks of the statistics on the grid (cached; ``clean_pixels`` as bytes)."""
    wave = wavelength_grid()[:n_pix]
    telluric = _in(wave, TELLURIC_WINDOWS_AA)
    quality = ~_in(wave, EMISSION_WINDOWS_AA)
    sets = {
        "core": _in(wave, (HALPHA_CORE_AA,)),
        "wings": _in(wave, HALPHA_WINGS_AA),
        "quality": quality,
        "clean": np.frombuffer(clean_pixels, dtype=bool),
        "narrow": quality & ~telluric,
        "wide": ~_in(wave, EMISSION_WINDOWS_WIDE_AA) & ~telluric,
    }
    return sets


def residual_statistics(
    norm_flux: np.ndarray,
    norm_ivar: np.ndarray,
    recon: np.ndarray,
    sigma_model: np.ndarray,
    clean_pixels: np.ndarray,
    rows_per_chunk: int = 256,
) -> dict[str, np.ndarray]:
    """H-alpha excess (and its error), H-alpha chi2 and quality chi2 per row.

    ``clean_pixels`` (the clean-window mask) sets ``clean_fraction``, the share of
    those pixels that are usable. Rows are processed ``rows_per_chunk`` at a time, so
    the temporaries stay in cache and their memory does not grow with the block.
    """
    f = np.asarray(norm_flux, dtype=np.float32)
    iv = np.asarray(norm_ivar, dtype=np.float32)
    recon = np.asarray(recon, dtype=np.float32)
    n, n_pix = f.shape
    sets = _column_sets(n_pix, np.ascontiguousarray(clean_pixels, dtype=bool).tobytes())
    model_var = np.asarray(sigma_model, dtype=np.float32) ** 2
    names = ("halpha_excess", "halpha_excess_err", "halpha_chi2", "quality_chi2",
             "window_chi2_max", "window_chi2_max_wide", "clean_fraction")
    out = {k: np.empty(n, dtype=np.float32) for k in names}
    for lo in range(0, n, rows_per_chunk):
        rows = slice(lo, min(lo + rows_per_chunk, n))
        for k, v in _residual_statistics_rows(f[rows], iv[rows], recon[rows], model_var,
                                              sets).items():
            out[k][rows] = v
    return out


def _residual_statistics_rows(f: np.ndarray, iv: np.ndarray, recon: np.ndarray,
                              model_var: np.ndarray, sets: dict[str, Any]
                              ) -> dict[str, np.ndarray]:
    # few temporaries, reused in place: each new array of a chunk costs page faults
    good = iv > 0
    finite = np.isfinite(f)
    good &= finite
    good &= np.isfinite(recon, out=finite)
    var = np.where(good, iv, np.float32(1.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(np.float32(1.0), var, out=var)
    var += model_var[None, :]
    resid = np.subtract(f, recon, out=np.zeros_like(f), where=good)
    core, wings = sets["core"], sets["wings"]
    g_core = good[:, core]
    n_core = g_core.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        excess = resid[:, core].sum(axis=1, dtype=np.float64) / n_core
        excess_err = np.sqrt(np.where(g_core, var[:, core], 0.0).sum(axis=1)) / n_core
    chi = np.multiply(resid, resid, out=resid)  # chi^2 per pixel, 0 where not good
    chi /= var
    del var
    quality = sets["quality"]
    with np.errstate(invalid="ignore", divide="ignore"):
        halpha_chi2 = chi[:, wings].sum(axis=1) / good[:, wings].sum(axis=1)
        n_c = np.count_nonzero(good[:, sets["clean"]], axis=1)
        quality_chi2 = np.sum(chi, axis=1, dtype=np.float64, where=quality[None, :]) / (
            np.count_nonzero(good[:, quality], axis=1))
        buffers = (np.empty_like(chi), np.empty_like(chi), np.empty(chi.shape, np.uint8),
                   np.empty(chi.shape, np.uint8))
        win_narrow = _max_window_chi2(chi, good, sets["narrow"], buffers=buffers)
        win_wide = _max_window_chi2(chi, good, sets["wide"], buffers=buffers)
    return {
        "halpha_excess": excess.astype(np.float32),
        "halpha_excess_err": excess_err.astype(np.float32),
        "halpha_chi2": halpha_chi2.astype(np.float32),
        "quality_chi2": quality_chi2.astype(np.float32),
        "window_chi2_max": win_narrow.astype(np.float32),
        "window_chi2_max_wide": win_wide.astype(np.float32),
        "clean_fraction": (n_c / max(int(sets["clean"].sum()), 1)).astype(np.float32),
    }


def _sliding_sums(x: np.ndarray, width: int, spare: np.ndarray | None = None) -> np.ndarray:
    """Sums of ``width`` consecutive columns, (n, n_pix - width + 1): by doubling (log2
    width additions of shifted arrays, alternating between ``x`` and ``spare``, both
    overwritten) for a power of two, else a float64 cumulative sum."""
    if width & (width - 1) == 0:
        spare = np.empty_like(x) if spare is None else spare
        src, dst, length, step = x, spare, x.shape[1], 1
        while step < width:
            length -= step
            np.add(src[:, :length], src[:, step:step + length], out=dst[:, :length])
            src, dst, step = dst, src, 2 * step
        return src[:, :length]
    c = np.zeros((x.shape[0], x.shape[1] + 1))
    np.cumsum(x, axis=1, out=c[:, 1:])
    return (c[:, width:] - c[:, :-width]).astype(x.dtype)


def _max_window_chi2(chi: np.ndarray, good: np.ndarray, columns: np.ndarray,
                     width: int = QUALITY_WINDOW_PX,
                     buffers: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """Largest mean chi^2 over ``width`` consecutive pixels of the grid, counting only
    ``good`` pixels in ``columns`` (at least half of the window's pixels used).

    ``chi`` (n, n_pix) is 0 where not ``good`` (bool, n x n_pix); ``columns`` (n_pix,)
    bool. ``buffers``: two float32 and two uint8 arrays of chi's shape to work in."""
    if buffers is None or width > 255:  # uint8 counts hold up to 255 pixels
        count_type = np.uint8 if width <= 255 else np.int32
        buffers = (np.empty(chi.shape, np.float32), np.empty(chi.shape, np.float32),
                   np.zeros(chi.shape, count_type), np.empty(chi.shape, count_type))
    x, x_spare, k, k_spare = buffers
    cols = np.asarray(columns, dtype=bool)[None, :]
    np.multiply(chi, cols, out=x)
    sums = _sliding_sums(x, width, x_spare)
    if k.dtype == np.uint8:
        np.logical_and(good, cols, out=k.view(bool))
    else:
        np.multiply(good, cols, out=k)
    counts = _sliding_sums(k, width, k_spare)  # at most width <= 255 per window
    sums[counts < width // 2] = -np.inf
    with np.errstate(invalid="ignore", divide="ignore"):
        sums /= np.maximum(counts, 1)
        out = sums.max(axis=1)
    return np.where(np.isfinite(out), out, np.nan)


@dataclass(frozen=True)
class Thresholds:
    """Data-driven cuts (see module docstring), stored with the products."""

    emission_significance: float
    emission_min_excess: float
    estimated_purity: float
    #: S/N bin edges (snr_g) and the log10 window-chi2 cut in each bin
    broken_snr_edges: tuple[float, ...]
    broken_log_chi2: tuple[float, ...]

    def as_attrs(self) -> dict[str, float | str]:
        return {
            "threshold_emission_significance": float(self.emission_significance),
            "threshold_emission_min_excess": float(self.emission_min_excess),
            "threshold_estimated_purity": float(self.estimated_purity),
            "threshold_broken_snr_edges": json.dumps([round(x, 3) for x in
                                                      self.broken_snr_edges]),
            "threshold_broken_log_chi2": json.dumps([round(x, 4) for x in
                                                     self.broken_log_chi2]),
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> Thresholds:
        """The thresholds recorded by :meth:`as_attrs` (the products' root attributes)."""
        return cls(
            emission_significance=float(attrs["threshold_emission_significance"]),
            emission_min_excess=float(attrs.get("threshold_emission_min_excess", 0.0)),
            estimated_purity=float(attrs.get("threshold_estimated_purity", float("nan"))),
            broken_snr_edges=tuple(json.loads(attrs.get("threshold_broken_snr_edges", "[]"))),
            broken_log_chi2=tuple(json.loads(attrs.get("threshold_broken_log_chi2", "[]"))))


def emission_threshold(
    significance: np.ndarray, target_purity: float = 0.99, floor: float = 3.0
) -> tuple[float, float]:
    """Smallest s_t >= floor with N(s < -s_t) <= (1 - purity) N(s > s_t) (mirror estimate).

    Returns (s_t, estimated purity at s_t).
    """
    s = np.asarray(significance, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return floor, float("nan")
    for t in np.arange(floor, 50.0, 0.05):
        pos = np.count_nonzero(s > t)
        neg = np.count_nonzero(s < -t)
        if pos == 0:
            return float(t), float("nan")
        if neg <= (1.0 - target_purity) * pos:
            return float(t), float(1.0 - neg / pos)
    return 50.0, float("nan")


def broken_statistic(stats: dict[str, np.ndarray], em_flag: np.ndarray) -> np.ndarray:
    """The window chi2 that decides 'broken': wide emission exclusions for emission spectra."""
    return np.where(em_flag == 1, stats["window_chi2_max_wide"], stats["window_chi2_max"])


def broken_thresholds(
    window_chi2: np.ndarray, snr: np.ndarray, mad_sigma: float = 8.0, min_chi2: float = 3.0,
    n_bins: int = 10,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per S/N bin: median + mad_sigma x robust std of log10 chi2, at least log10(min_chi2)."""
    lc = np.log10(np.asarray(window_chi2, dtype=float))
    snr = np.nan_to_num(np.asarray(snr, dtype=float), nan=0.0)
    ok = np.isfinite(lc)
    if ok.sum() < n_bins * 10:
        n_bins = 1
    edges = np.quantile(snr[ok], np.linspace(0.0, 1.0, n_bins + 1)) if ok.any() else \
        np.array([0.0, np.inf])
    edges[0], edges[-1] = -np.inf, np.inf
    cuts = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = ok & (snr >= lo) & (snr < hi)
        if sel.sum() < 5:
            cuts.append(float(np.log10(min_chi2)))
            continue
        med = np.median(lc[sel])
        mad = robust_std(lc[sel])
        cuts.append(float(max(med + mad_sigma * mad, np.log10(min_chi2))))
    return tuple(float(e) for e in edges), tuple(cuts)


def _cut_at_snr(edges: tuple[float, ...], cuts: tuple[float, ...], snr: np.ndarray
                ) -> np.ndarray:
    """Each row's cut of :func:`broken_thresholds`: the one of its S/N bin (NaN S/N: the
    first bin)."""
    b = np.clip(np.searchsorted(np.asarray(edges), np.nan_to_num(snr, nan=0.0),
                                side="right") - 1, 0, len(cuts) - 1)
    return np.asarray(cuts)[b]


def _outliers_for_snr(chi2: np.ndarray, snr: np.ndarray, mad_sigma: float, min_chi2: float
                      ) -> np.ndarray:
    """Rows whose ``chi2`` lies above :func:`broken_thresholds`' cut for their S/N."""
    edges, cuts = broken_thresholds(chi2, snr, mad_sigma, min_chi2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log10(chi2) > _cut_at_snr(edges, cuts, snr)


def choose_thresholds(
    stats: dict[str, np.ndarray],
    snr: np.ndarray,
    target_purity: float = 0.99,
    min_excess: float = 0.0,
    broken_mad_sigma: float = 8.0,
    broken_min_chi2: float = 3.0,
) -> Thresholds:
    """Thresholds for ``flag`` from the statistics of the whole survey (or training set).

    The emission threshold is :func:`emission_threshold`'s mirror estimate on the spectra
    that neither statistic calls an outlier for their S/N (:func:`broken_thresholds`'
    rule): ``window_chi2_max_wide`` (artefacts) and, where given, ``quality_chi2`` (spectra
    the basis does not reconstruct outside the emission windows)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sig = stats["halpha_excess"] / stats["halpha_excess_err"]
    # artefacts scatter the significance both ways: leave out what the wide-window
    # statistic (valid with or without emission) already calls broken
    suspect = _outliers_for_snr(stats["window_chi2_max_wide"], snr, broken_mad_sigma,
                                broken_min_chi2)
    # and the spectra the basis does not model outside the emission windows (white dwarfs,
    # the odd interloper: quality_chi2 an outlier for its S/N, the same rule): their H-alpha
    # residual is no sample of the noise, and a handful of them on the negative side
    # would decide the mirror estimate of a small survey
    if "quality_chi2" in stats:
        suspect |= _outliers_for_snr(stats["quality_chi2"], snr, broken_mad_sigma,
                                     broken_min_chi2)
    t, purity = emission_threshold(sig[~suspect], target_purity)
    em = np.where((sig > t) & (stats["halpha_excess"] > min_excess), 1, 0)
    edges, cuts = broken_thresholds(broken_statistic(stats, em), snr, broken_mad_sigma,
                                    broken_min_chi2)
    return Thresholds(t, float(min_excess), purity, edges, cuts)


def flag(stats: dict[str, np.ndarray], snr: np.ndarray, thresholds: Thresholds
         ) -> dict[str, np.ndarray]:
    """``em_flag`` (1 emission, 0 none, -9 undetermined) and ``quality_flags`` bits."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sig = stats["halpha_excess"] / stats["halpha_excess_err"]
    em = (sig > thresholds.emission_significance) & (
        stats["halpha_excess"] > thresholds.emission_min_excess)
    em_flag = np.where(em, 1, 0).astype(np.int8)
    no_ha = ~np.isfinite(stats["halpha_excess"])
    em_flag[no_ha] = -9
    with np.errstate(invalid="ignore", divide="ignore"):
        log_chi2 = np.log10(broken_statistic(stats, em_flag))
    cut = _cut_at_snr(thresholds.broken_snr_edges, thresholds.broken_log_chi2, snr)
    q = np.zeros(sig.size, dtype=np.int16)
    q[log_chi2 > cut] |= QUALITY_BITS["broken"]
    q[no_ha] |= QUALITY_BITS["no_halpha_data"]
    q[stats["clean_fraction"] < 0.5] |= QUALITY_BITS["few_pixels"]
    q[~np.isfinite(stats["quality_chi2"])] |= QUALITY_BITS["projection_failed"]
    return {"em_flag": em_flag, "quality_flags": q,
            "halpha_significance": sig.astype(np.float32)}


def star_flag_from_best_visit(
    star_id: np.ndarray, snr: np.ndarray, visit_flag: np.ndarray
) -> np.ndarray:
    """Each visit gets its star's flag from the star's highest-S/N visit (footnote 2)."""
    star_id = np.asarray(star_id).astype(object).astype(str)
    snr = np.nan_to_num(np.asarray(snr, dtype=float), nan=-1.0)
    order = np.lexsort((-snr, star_id))
    sorted_ids = star_id[order]
    first = np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]
    best = order[first]  # index of the best visit of each star (in sorted-star order)
    group = np.cumsum(first) - 1
    out = np.empty_like(np.asarray(visit_flag))
    out[order] = np.asarray(visit_flag)[best][group]
    return out
