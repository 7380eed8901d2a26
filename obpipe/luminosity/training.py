"""Training and test sets, binary cleaning and the noise-model calibration (Secs. 5.2-5.3, 6).

Pure numpy/torch: every function takes arrays (one row per spectrum) and returns
arrays or small result objects; :mod:`obpipe.stages.luminosity` reads them from the
products store.

Selection (Sec. 5.2):

* *good parallax*: corrected parallax / error > 10, finite geometric M_Ks (eq. 11),
  a usable reconstructed spectrum (not flagged broken, emission state determined);
* *training candidates*: good parallax and S/N > 50. Their **stars** (all visits of a
  star go to the same side, so repeat visits never leak into the test set) are split
  at random (seeded) into 4/5 training and 1/5 test. With the parallax-space loss
  (``network.loss = "fakemag"``, issue 6a) every S/N > 50 spectrum with a parallax and
  K_s is a candidate, whatever its parallax S/N (the loss is linear in the parallax, so
  a noisy or negative parallax adds information, not bias: it is what teaches the
  networks the luminous end, where good parallaxes are rare), and the star split runs
  over all of them, so that held-out stars are the trained-on stars' population;
* *test set* (the noise model's sample): the good-parallax spectra of the held-out 1/5
  plus every good-parallax spectrum of lower S/N whose star is not in the training set;
* model (a) trains on the non-emission training spectra; model (b) on all training
  spectra (emission and non-emission; the paper's (b) set, 7,161, is larger than the
  (a) set, 6,861, and Fig. 5 right applies (b) to both), through the clean windows;
* *outliers*: spectra whose parallax puts them fainter than ``max_mks_mag`` (3 mag) at
  2 sigma (subdwarfs, white dwarfs: the paper's "fainter than 2 mag") train neither
  network and stay out of the noise-model fit;
* an optional extra training table (the paper's ~200 bright stars without good
  parallaxes) adds rows with their own M_Ks and error; they are never cleaned.

Binary cleaning (Sec. 5.2 / 6): train both networks, predict, fit the noise model by
maximum likelihood on the test set (eq. 14 with 2-sigma clipping), compute S/N_dplx
(eqs. 15-17) and drop training spectra with S/N_dplx > 2, then retrain from the full
candidate set minus those; ``n_clean_iterations`` (2, as the paper) rounds. The
networks are cross-fitted ensembles (:mod:`obpipe.luminosity.network`): a training
spectrum's S/N_dplx uses the prediction of the member that did not train on it, so a
binary's too-bright target, partly learned in-sample, cannot hide it (with one network,
the paper's case, the in-sample prediction is used). A cleaning round starts from the
previous round's weights (``warm_start``): the members keep their held-out stars.

Calibration (Sec. 5.3): emcee posterior of (eps, delta, sigma_int, sigma_s100) for the
final networks on the test set, per model: (a) on non-emission test spectra (the
paper's Fig. 8), (b) on emission test spectra (beyond the paper: the paper quotes one
noise model; emission stars scatter more, so their own sigma_int keeps their errors
calibrated), falling back to all (b) test predictions when there are too few.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from obpipe.binary import identify_binaries
from obpipe.luminosity import noise_model
from obpipe.luminosity.network import MKsNetwork, wavelength_mask
from obpipe.luminosity.network_training import (
    TrainConfig,
    _folds,
    fakemag_from_mks,
    fakemag_from_parallax,
    fakemag_per_mas,
    train_network,
)
from obpipe.options import Range, option
from obpipe.photometry.parallax import (
    ZERO_POINT_FIT_TERMS,
    geometric_mks_with_offset,
    zero_point_fit_design,
)

log = logging.getLogger(__name__)

#: how the reddened copies of the training spectra train (:class:`TrainingConfig`)
REDDENED_COPIES = ("none", "added", "swapped")


@dataclass(frozen=True)
class TrainingConfig:
    """Options of the luminosity training (defaults: the paper's recipe, Sec. 5.2)."""

    min_parallax_snr: float = option(
        10.0,
        doc="good parallax: corrected parallax / error above this (Sec. 5.2: 10)")
    min_snr: float = option(
        50.0,
        doc="training candidates: spectra with S/N above this (Sec. 5.2: 50, the paper's "
            "value). 10 was measured with the interstellar-blind inputs (issue 15 item 2, "
            "docs/validation.md): smaller low-S/N bias on the control mock, but MKs_err too "
            "large at S/N 20-200 (pull std 0.76-0.81) and S/N 5-20 +0.25 mag on the default mock")
    train_fraction: float = option(
        0.8,
        doc="share of the candidate stars (all their visits) in the training set; the rest are the"
            " test set (Sec. 5.2: 4/5)")
    n_clean_iterations: int = option(
        2,
        doc="binary-cleaning rounds: retrain without training spectra whose S/N_dplx exceeds "
            "binary_snr_threshold (Sec. 5.2: 2)")
    binary_snr_threshold: float = option(
        2.0,
        doc="S/N_dplx (eq. 16) above which a training spectrum is removed as a binary (Sec. 6: 2)")
    clean_snr_threshold: float = option(
        2.0,
        doc="training spectra are removed as binaries when S/N_dplx > this (the paper: the flag "
            "threshold, 2); lower removes more binaries at the cost of some singles")
    clean_two_sided: bool = option(
        True,
        doc="also remove spectra with S/N_dplx < -clean_snr_threshold (outliers on the faint "
            "side): the one-sided cleaning removes the singles whose parallax noise came out "
            "low and keeps those whose noise came out high, so the trained parallaxes were "
            "biased high (+4 uas; with refine_rv the S/N > 50 bias goes from +0.028 to -0.012 "
            "on average over five mock realisations); False: the paper's one-sided cleaning "
            "(docs/validation.md, "
            "\"Two-sided cleaning with the refined rest frame\")")
    weight_floor_mag: float | None = option(
        0.25,
        doc="loss weight 1 / (MKs_geo_err^2 + weight_floor_mag^2) (the variance floor of the "
            "parallax-space loss likewise); None: unweighted (the paper does not say; the floor ~ "
            "sigma_int keeps bright stars from dominating)")
    max_mks_mag: float | None = option(
        3.0,
        doc="spectra fainter than this M_Ks by their parallax (at 2 sigma; subdwarfs, white "
            "dwarfs) train no network; test spectra with MKs_geo above it stay out of the noise "
            "model (Sec. 5.2: \"fainter than 2 mag ... used with caution\"); None: keep all")
    noise_min_snr: float = option(
        10.0,
        doc="test spectra below this S/N are kept out of the noise-model fits")
    noise_clip_sigma: float = option(2.0, doc="sigma clipping of the noise-model fit (eq. 14: 2)")
    noise_clip_lower_sigma: float | None = option(
        3.0,
        doc="noise model: also clip stars more than this many sigma *brighter* than the model (not"
            " binaries: subdwarfs / white dwarfs / failed reconstructions that otherwise inflate "
            "sigma_s100 at low S/N); None: the paper's one-sided clipping")
    noise_include_spread: bool = option(
        True,
        doc="the ensemble spread of each star is a known term of the eq. (14) variance and of its "
            "MKs_err (beyond the paper); False: the paper's sqrt(sigma_int^2 + sigma_s^2)")
    noise_n_steps: int = option(
        1000,
        doc="emcee steps (more when 50 autocorrelation times need them; ~12 steps each with the "
            "differential-evolution moves of :func:`noise_model.fit_noise_model`)")
    min_emission_test: int = option(
        100,
        doc="fewest emission test spectra for network (b)'s own noise model; below it (b) is "
            "calibrated on all its test predictions")
    warm_start: bool = option(
        True,
        doc="a binary-cleaning round starts from the previous round's networks")
    seed: int = option(0, doc="random seed of the star-level train/test split and of emcee")
    input_kind: str = option(
        "recon_flux",
        doc="\"recon_flux\" (the paper) or \"pca_coeff\" (variant: 100 PCA coefficients)")
    fit_parallax_zero_point: str = option(
        "none",
        doc="fit the survey's residual parallax zero-point dZ (mas) jointly with the networks "
            "(beyond the paper, as Leung & Bovy 2019 did for DR2; parallax-space loss only): "
            "\"constant\", \"linear_g\" (a constant plus a slope in G, 9-17 mag, about G = 13) or "
            "\"none\" (the published zero-point alone, the paper). The fitted dZ is removed from "
            "the parallaxes of the binary cleaning, the noise model, the binary flag and the "
            "distances (product ``parallax_zp_fit``; obpipe.photometry.parallax."
            "zero_point_fit_design)")
    reddened_copies: str = option(
        "swapped",
        doc="train the networks also on copies of the training spectra with extra dust "
            "(beyond the paper, issue 15 item 2; on since the twelfth session): dE ~ U(0, "
            "reddened_copies_max_ebv) of the G23 curve at R_V ~ N(3.1, 0.25), per-pixel S/N "
            "unchanged, the same M_Ks target and fold, through the run's normalisation and "
            "projection (:mod:`obpipe.luminosity.augment`), so that the networks cannot "
            "learn \"reddened, so luminous\" from the magnitude-limited training set, which "
            "read faint reddened stars too bright. \"swapped\": half the spectra, drawn "
            "once, replaced by their copies (the same rows and training time); \"added\": "
            "each spectrum and its copy (twice the rows, ~1.5x the training time, the same "
            "accuracy); \"none\": the paper. Five zero-point-exact mocks: the M_Ks change "
            "per magnitude of E(B-V) put on the spectra alone -0.03..-0.07 -> -0.01..-0.03, "
            "S/N 20-50 bias -0.088 -> -0.061 (docs/validation.md, \"The reddening "
            "shortcut\")")
    reddened_copies_max_ebv: float = option(
        1.5,
        doc="largest E(B-V) (mag) added to a reddened copy",
        range=Range(0.0, 5.0, low_open=True))
    deshrink_low_snr: bool = option(
        True,
        doc="below the training S/N (min_snr), undo the pull of noise toward the training "
            "set's mean M_Ks (beyond the paper, issue 15 item 2): on degraded held-out "
            "spectra the networks read M_Ks(noisy) ~ p + b (M_Ks(clean) - p), b 0.65-0.8 at "
            "S/N 5-12 on the mock, so that luminous low-S/N stars read up to ~1 mag faint "
            "and faint ones bright. The catalog then gives p + (M_Ks - p) / b, with p the "
            "mean out-of-fold M_Ks of the network's training spectra and b relative to its "
            "value at min_snr, and MKs_err from the de-shrunk degraded spectra "
            "(obpipe.luminosity.noise_model.deshrink; docs/validation.md, \"Low S/N: "
            "the pull toward the training mean\")")
    network: TrainConfig = option(
        default_factory=TrainConfig,
        doc="the network and its optimiser (eq. 6, Sec. 5.1)")

    def __post_init__(self) -> None:
        if self.reddened_copies not in REDDENED_COPIES:
            raise ValueError(f"reddened_copies must be one of {REDDENED_COPIES}, got "
                             f"{self.reddened_copies!r}")
        if self.fit_parallax_zero_point not in ZERO_POINT_FIT_TERMS:
            raise ValueError(f"fit_parallax_zero_point must be one of {ZERO_POINT_FIT_TERMS}, "
                             f"got {self.fit_parallax_zero_point!r}")
        if self.fit_parallax_zero_point != "none" and self.network.loss != "fakemag":
            raise ValueError("fit_parallax_zero_point needs the parallax-space loss "
                             "([luminosity.network] loss = \"fakemag\")")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sets:
    """Boolean row masks over the candidate arrays."""

    good: np.ndarray
    train_a: np.ndarray
    train_b: np.ndarray
    test: np.ndarray
    extra: np.ndarray

    def counts(self) -> dict[str, int]:
        return {k: int(np.sum(v)) for k, v in asdict(self).items()}


def faint_outliers(fakemag: np.ndarray, fakemag_err: np.ndarray, max_mks_mag: float | None
                   ) -> np.ndarray:
    """Rows whose parallax puts M_Ks fainter than ``max_mks_mag`` at 2 sigma:
    ``plx 10^(0.2 m0 - 2) - 2 sigma > 10^(0.2 max_mks_mag)``."""
    f = np.asarray(fakemag, float)
    if max_mks_mag is None:
        return np.zeros(f.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return (f - 2.0 * np.asarray(fakemag_err, float)) > 10.0 ** (0.2 * max_mks_mag)


def select_sets(
    star_id: np.ndarray,
    snr: np.ndarray,
    em_flag: np.ndarray,
    usable: np.ndarray,
    mks_geo: np.ndarray,
    plx_mas: np.ndarray,
    plx_err_mas: np.ndarray,
    cfg: TrainingConfig,
    extra: np.ndarray | None = None,
    has_parallax: np.ndarray | None = None,
) -> Sets:
    """Training (a, b) and test masks of Sec. 5.2 (see the module docstring).

    ``has_parallax`` (parallax-space loss): rows with a parallax and K_s that may train
    whatever their parallax S/N; None: only good-parallax rows train (the paper).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        plx_snr = np.asarray(plx_mas, float) / np.asarray(plx_err_mas, float)
    em = np.asarray(em_flag)
    good = (usable & np.isfinite(mks_geo) & (plx_snr > cfg.min_parallax_snr)
            & np.isin(em, (0, 1)))
    hi_snr = np.asarray(snr, float) > cfg.min_snr
    hi = good & hi_snr
    if has_parallax is not None:  # parallax-space loss: any parallax may train
        hi = hi | (np.asarray(has_parallax, bool) & usable & hi_snr & np.isin(em, (0, 1)))
    stars = np.asarray(star_id).astype(str)
    # the star-level split runs over every candidate, good parallax or not, so that the
    # never-trained stars are the same population as the trained-on ones (issue 15: with
    # only good-parallax stars held out, the luminous distant stars all trained, and their
    # out-of-fold values were compared with nearby test stars)
    cand_stars = np.unique(stars[hi])
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(cand_stars.size)
    n_train = int(round(cfg.train_fraction * cand_stars.size))
    test_stars = cand_stars[perm[n_train:]]
    in_test_star = np.isin(stars, test_stars)
    trainable = hi & ~in_test_star
    extra = np.zeros(stars.size, dtype=bool) if extra is None else np.asarray(extra, bool)
    extra = extra & usable & np.isin(em, (0, 1))
    train_a = (trainable & (em == 0)) | (extra & (em == 0))
    train_b = trainable | extra
    in_train_star = np.isin(stars, np.unique(stars[train_b]))
    test = good & ~in_train_star & ~extra
    return Sets(good=good, train_a=train_a, train_b=train_b, test=test, extra=extra)


@dataclass
class TrainingResult:
    networks: dict[str, MKsNetwork]
    noise: dict[str, noise_model.NoiseModelResult]
    sets: Sets
    #: final per-candidate predictions by each model (NaN where not predicted)
    predictions: dict[str, np.ndarray]
    #: final training masks after binary cleaning
    clean_train: dict[str, np.ndarray]
    report: dict[str, Any]
    #: final out-of-fold predictions of the training rows (NaN elsewhere)
    out_of_fold: dict[str, np.ndarray] = field(default_factory=dict)
    #: per model, the member that held out each candidate row's star (-1: the star
    #: trained no member of that model; with one network, -2 for its trained stars)
    folds: dict[str, np.ndarray] = field(default_factory=dict)


def _noise_sample(model: str, sets: Sets, em: np.ndarray, snr: np.ndarray,
                  mks_geo: np.ndarray, cfg: TrainingConfig) -> np.ndarray:
    base = sets.test & (snr > cfg.noise_min_snr)
    if cfg.max_mks_mag is not None:
        with np.errstate(invalid="ignore"):
            base &= mks_geo <= cfg.max_mks_mag
    if model == "a":
        return base & (em == 0)
    sel = base & (em == 1)
    return sel if sel.sum() >= cfg.min_emission_test else base


def train_with_binary_cleaning(
    x: np.ndarray | dict[str, np.ndarray],
    star_id: np.ndarray,
    snr: np.ndarray,
    em_flag: np.ndarray,
    usable: np.ndarray,
    mks_geo: np.ndarray,
    mks_geo_err: np.ndarray,
    ks0: np.ndarray,
    ks0_err: np.ndarray,
    plx_mas: np.ndarray,
    plx_err_mas: np.ndarray,
    cfg: TrainingConfig | None = None,
    extra_mks: np.ndarray | None = None,
    extra_mks_err: np.ndarray | None = None,
    run_mcmc: bool = True,
    interstellar_blind: bool = False,
    g_mag: np.ndarray | None = None,
    x_reddened: dict[str, np.ndarray] | None = None,
) -> TrainingResult:
    """Sec. 5.2 training of networks (a) and (b) with iterative binary cleaning.

    ``x``: network inputs of every candidate row ((n, n_grid) reconstructed spectra or
    (n, 100) PCA coefficients per ``cfg.input_kind``). ``extra_mks`` (NaN where absent)
    marks rows of the extra training table and gives their M_Ks target. Returns the final
    networks, the emcee noise models (``run_mcmc``; else maximum likelihood only), the
    sets and a report with the timing of each step. ``interstellar_blind``: the inputs
    were projected without the interstellar windows (the pca stage's
    ``exclude_interstellar_lines``, issue 15): the networks leave those pixels out and
    record it in their metadata. ``g_mag``: Gaia G of every row, needed by
    ``cfg.fit_parallax_zero_point``; each network's fitted residual zero-point is removed
    from the parallaxes of its binary cleaning and noise model (``report
    ["parallax_zero_point_fit"]``). ``x_reddened``: per model, the inputs of a reddened
    copy of each row (NaN rows have none): every round trains on its rows and their
    copies (``cfg.reddened_copies`` "added"; same target, star and fold) or on its rows
    with a fixed half replaced by their copies ("swapped"); everything else (cleaning,
    out-of-fold values, noise model) reads the rows themselves.
    """
    cfg = cfg or TrainingConfig()
    t_start = time.perf_counter()
    snr = np.asarray(snr, float)
    em = np.asarray(em_flag)
    stars = np.asarray(star_id).astype(str)
    n = snr.size
    mks_geo = np.asarray(mks_geo, float)
    mks_geo_err = np.asarray(mks_geo_err, float)
    extra = np.zeros(n, bool) if extra_mks is None else np.isfinite(extra_mks)
    target = mks_geo.copy()
    target_err = mks_geo_err.copy()
    fmag, fmag_err = fakemag_from_parallax(plx_mas, plx_err_mas, ks0, ks0_err)
    if extra.any():
        e_err = (np.full(n, 0.1) if extra_mks_err is None
                 else np.nan_to_num(np.asarray(extra_mks_err, float), nan=0.1))
        target[extra] = np.asarray(extra_mks, float)[extra]
        target_err[extra] = e_err[extra]
        ef, efe = fakemag_from_mks(target, target_err)
        fmag[extra], fmag_err[extra] = ef[extra], efe[extra]
    fake = cfg.network.loss == "fakemag"
    has_plx = (np.isfinite(fmag) & np.isfinite(fmag_err) & (fmag_err > 0)) if fake else None
    sets = select_sets(stars, snr, em, usable, mks_geo, plx_mas, plx_err_mas, cfg, extra,
                       has_parallax=has_plx)
    faint = faint_outliers(fmag, fmag_err, cfg.max_mks_mag) & ~extra
    zp_terms = cfg.fit_parallax_zero_point
    zp_design = per_mas = None
    if zp_terms != "none":
        if g_mag is None:
            raise ValueError("fit_parallax_zero_point needs the Gaia G magnitude of each row "
                             "(phot_g_mean_mag)")
        zp_design = zero_point_fit_design(g_mag, zp_terms)
        zp_design[extra] = 0.0  # an extra-table target has no parallax to shift
        per_mas = fakemag_per_mas(ks0)
    plx_fit = {m: np.asarray(plx_mas, float) for m in ("a", "b")}
    geo_fit = {m: mks_geo for m in ("a", "b")}
    report: dict[str, Any] = {"config": cfg.as_dict(), "sets": sets.counts(),
                              "n_faint_outliers_not_trained": int(np.sum(
                                  faint & sets.train_b)),
                              "iterations": [], "timing_s": {}}
    log.info("luminosity training sets: %s; %d faint (M_Ks > %s) outliers not trained",
             sets.counts(), report["n_faint_outliers_not_trained"], cfg.max_mks_mag)
    base_train = {"a": sets.train_a & ~faint, "b": sets.train_b & ~faint}
    # a small survey: at least ~10 training stars per ensemble member
    n_stars_a = np.unique(stars[base_train["a"]]).size
    n_members = max(1, min(cfg.network.n_members, n_stars_a // 10))
    net_cfg = replace(cfg.network, n_members=n_members)
    if n_members != cfg.network.n_members:
        log.warning("luminosity: %d training stars: %d ensemble members instead of %d",
                    n_stars_a, n_members, cfg.network.n_members)
    keep = {"a": np.ones(n, bool), "b": np.ones(n, bool)}
    # folds by star, fixed once for all cleaning rounds: every visit of a star is held out
    # by the same member in every round (a warm-started member never saw it)
    folds: dict[str, np.ndarray] = {}
    for m in ("a", "b"):
        f = np.full(n, -1, dtype=np.int64)
        if base_train[m].any():
            f[base_train[m]] = _folds(stars[base_train[m]], n_members,
                                      net_cfg.validation_fraction, net_cfg.seed)
        if n_members == 1:  # one network: its trained stars are in-sample
            f[base_train[m] & (f == -1)] = -2
        folds[m] = f
    # the rows whose reddened copy replaces them in every round ("swapped")
    swap = np.random.default_rng(cfg.seed + 1).random(n) < 0.5
    nets: dict[str, MKsNetwork] = {}
    preds: dict[str, np.ndarray] = {}
    spreads: dict[str, np.ndarray] = {}
    oof: dict[str, np.ndarray] = {}
    ml_theta: dict[str, np.ndarray] = {}
    for it in range(cfg.n_clean_iterations + 1):
        t_it = time.perf_counter()
        rec: dict[str, Any] = {"iteration": it}
        for m in ("a", "b"):
            rows = base_train[m] & keep[m]
            xm = x[m] if isinstance(x, dict) else x
            init = nets.get(m) if cfg.warm_start else None
            take = np.flatnonzero(rows)
            x_fit = xm[take]
            n_copies = 0
            if x_reddened is not None:
                xr = x_reddened[m]
                copied = take[np.all(np.isfinite(xr[take]), axis=1)]
                if cfg.reddened_copies == "swapped":  # the drawn half: the copy instead
                    copied = copied[swap[copied]]
                    x_fit[np.isin(take, copied)] = xr[copied]
                else:  # the rows, then the copies they have
                    x_fit = np.concatenate([x_fit, xr[copied]])
                    take = np.concatenate([take, copied])
                n_copies = copied.size
            nets[m], hist = train_network(
                x_fit, target[take], kind=m, config=net_cfg,
                pixel_mask=(wavelength_mask(m, exclude_interstellar=True)
                            if interstellar_blind and cfg.input_kind == "recon_flux"
                            else None),
                input_kind=cfg.input_kind, y_err_mag=target_err[take],
                sigma_floor_mag=cfg.weight_floor_mag, fakemag=fmag[take],
                fakemag_err=fmag_err[take], groups=stars[take], init=init,
                folds=np.where(folds[m][take] == -2, -1, folds[m][take]),
                zp_design=None if zp_design is None else zp_design[take],
                fakemag_per_mas=None if per_mas is None else per_mas[take],
                meta={"training_iteration": it, "n_training_rows": int(rows.sum()),
                      "n_reddened_copies": int(n_copies),
                      "parallax_zero_point_terms": zp_terms,
                      "warm_start": init is not None,
                      "exclude_interstellar_lines": bool(interstellar_blind),
                      "selection": {k: v for k, v in cfg.as_dict().items()
                                    if k != "network"}},
            )
            if zp_design is not None:  # this network's residual zero-point, every row
                dz = nets[m].parallax_zero_point_mas(g_mag)
                plx_fit[m] = np.asarray(plx_mas, float) - dz
                geo_fit[m] = geometric_mks_with_offset(mks_geo, plx_mas, dz)
                rec[f"parallax_zp_coefficients_mas_{m}"] = [
                    float(c) for c in nets[m].meta["parallax_zp_coefficients_mas"]]
            rec[f"n_train_{m}"] = int(rows.sum())
            if x_reddened is not None:
                rec[f"n_reddened_copies_{m}"] = int(n_copies)
            rec[f"epochs_{m}"] = len(hist.train_loss)
            rec[f"seconds_per_epoch_{m}"] = hist.seconds_per_epoch
            rec[f"train_seconds_{m}"] = hist.seconds
            domain = base_train[m] | (sets.test & ((em == 0) if m == "a" else np.isin(em, (0, 1))))
            p = np.full(n, np.nan)
            spread = np.full(n, np.nan)
            p[domain], spread[domain] = nets[m].predict(xm[domain], return_std=True)
            preds[m] = p
            spreads[m] = spread
            epi = spread if cfg.noise_include_spread else None
            # honest predictions for the training rows: their out-of-fold member's
            o = np.full(n, np.nan)
            o[rows] = hist.out_of_fold[: int(rows.sum())]  # the rows come first
            oof[m] = o
            honest = np.where(np.isfinite(o), o, p)
            sample = _noise_sample(m, sets, em, snr, geo_fit[m], cfg)
            _, theta, _ = noise_model.clip_binaries(
                p[sample], geo_fit[m][sample], mks_geo_err[sample], snr[sample],
                clip_sigma=cfg.noise_clip_sigma, clip_lower_sigma=cfg.noise_clip_lower_sigma,
                epistemic_mag=None if epi is None else epi[sample])
            ml_theta[m] = theta
            rec[f"noise_ml_{m}"] = dict(zip(noise_model.PARAM_NAMES, map(float, theta),
                                            strict=True))
            test_sel = sample & np.isfinite(p)
            rec[f"test_rms_vs_geo_{m}"] = float(np.std(p[test_sel] - geo_fit[m][test_sel]))
            if it < cfg.n_clean_iterations:
                err = noise_model.mks_uncertainty(snr, theta[2], theta[3], epi)
                z = identify_binaries(honest, err, ks0, ks0_err, plx_fit[m], plx_err_mas,
                                      threshold=cfg.clean_snr_threshold)["snr_dparallax"]
                with np.errstate(invalid="ignore"):
                    out = (np.abs(z) if cfg.clean_two_sided else z) > cfg.clean_snr_threshold
                is_bin = out & ~extra
                keep[m] = ~is_bin
                rec[f"n_binaries_removed_{m}"] = int(np.sum(is_bin & base_train[m]))
        rec["seconds"] = time.perf_counter() - t_it
        report["iterations"].append(rec)
        log.info("luminosity training iteration %d: %s", it,
                 {k: v for k, v in rec.items() if not isinstance(v, dict)})
    report["timing_s"]["training"] = time.perf_counter() - t_start

    noise: dict[str, noise_model.NoiseModelResult] = {}
    if run_mcmc:
        t0 = time.perf_counter()
        for m in ("a", "b"):
            sample = _noise_sample(m, sets, em, snr, geo_fit[m], cfg)
            noise[m] = noise_model.fit_noise_model(
                preds[m][sample], geo_fit[m][sample], mks_geo_err[sample], snr[sample],
                clip_sigma=cfg.noise_clip_sigma, n_steps=cfg.noise_n_steps, seed=cfg.seed,
                clip_lower_sigma=cfg.noise_clip_lower_sigma,
                epistemic_mag=spreads[m][sample] if cfg.noise_include_spread else None,
                meta={"model": m, "sample": "test, non-emission" if m == "a" else
                      ("test, emission" if np.all(em[sample] == 1) else "test, all (b)"),
                      "min_snr": cfg.noise_min_snr, "max_mks_mag": cfg.max_mks_mag},
            )
        report["timing_s"]["mcmc"] = time.perf_counter() - t0
    if zp_design is not None:
        report["parallax_zero_point_fit"] = {
            "terms": zp_terms, "unit": "mas",
            "coefficients_mas": {m: nets[m].meta["parallax_zp_coefficients_mas"] for m in nets},
            "coefficients_by_member_mas": {
                m: nets[m].meta["parallax_zp_coefficients_by_member_mas"] for m in nets}}
    report["noise_ml"] = {m: dict(zip(noise_model.PARAM_NAMES, map(float, t), strict=True))
                          for m, t in ml_theta.items()}
    clean_train = {m: base_train[m] & keep[m] for m in ("a", "b")}
    for m, net in nets.items():
        # which member never saw each star that trained any round of this model (Issue
        # 15: the catalog M_Ks of these stars, every visit, comes from that member only)
        trained = base_train[m]
        uniq, first = np.unique(stars[trained], return_index=True)
        net.meta["star_folds"] = {"star_id": uniq.tolist(),
                                  "fold": folds[m][trained][first].astype(int).tolist()}
    return TrainingResult(networks=nets, noise=noise, sets=sets, predictions=preds,
                          clean_train=clean_train, report=report, out_of_fold=oof,
                          folds=folds)
