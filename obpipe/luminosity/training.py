"""Training and test sets, binary cleaning and the noise-model calibration (Secs. 5.2-5.3, 6).

Pure numpy/torch: every function takes arrays (one row per spectrum) and returns
arrays or small result objects; :mod:`obpipe.luminosity.stage` reads them from the
products store.

Selection (Sec. 5.2):

* *good parallax*: corrected parallax / error > 10, finite geometric M_Ks (eq. 11),
  a usable reconstructed spectrum (not flagged broken, emission state determined);
* *training candidates*: good parallax and S/N > 50. Their **stars** (all visits of a
  star go to the same side, so repeat visits never leak into the test set) are split
  at random (seeded) into 4/5 training and 1/5 test;
* *test set*: the 1/5 plus every good-parallax spectrum of lower S/N whose star is not
  in the training set;
* model (a) trains on the non-emission training spectra; model (b) on all training
  spectra (emission and non-emission; the paper's (b) set, 7,161, is larger than the
  (a) set, 6,861, and Fig. 5 right applies (b) to both), through the clean windows;
* an optional extra training table (the paper's ~200 bright stars without good
  parallaxes) adds rows with their own M_Ks and error; they are never cleaned.

Binary cleaning (Sec. 5.2 / 6): train both networks, predict the candidates, fit the
noise model by maximum likelihood on the test set (eq. 14 with 2-sigma clipping),
compute S/N_dplx (eqs. 15-17) and drop training spectra with S/N_dplx > 2, then retrain
from the full candidate set minus those; ``n_clean_iterations`` (2, as the paper)
rounds. The training-set predictions used for cleaning are in-sample (dropout and early
stopping limit how much a network can absorb a binary's offset).

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
from obpipe.luminosity.network import MKsNetwork, TrainConfig, train_network

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """Options of the luminosity training (defaults: the paper's recipe)."""

    min_parallax_snr: float = 10.0
    min_snr: float = 50.0
    train_fraction: float = 0.8
    n_clean_iterations: int = 2
    binary_snr_threshold: float = 2.0
    #: loss weight 1 / (MKs_geo_err^2 + weight_floor_mag^2); None: unweighted (the paper
    #: does not say; the floor ~ sigma_int keeps bright stars from dominating)
    weight_floor_mag: float | None = 0.25
    #: test spectra below this S/N are kept out of the noise-model fits
    noise_min_snr: float = 10.0
    noise_clip_sigma: float = 2.0
    noise_n_steps: int = 2000
    min_emission_test: int = 100
    seed: int = 0
    #: "recon_flux" (the paper) or "pca_coeff" (variant: 100 PCA coefficients)
    input_kind: str = "recon_flux"
    network: TrainConfig = field(default_factory=TrainConfig)

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
) -> Sets:
    """Training (a, b) and test masks of Sec. 5.2 (see the module docstring)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        plx_snr = np.asarray(plx_mas, float) / np.asarray(plx_err_mas, float)
    em = np.asarray(em_flag)
    good = (usable & np.isfinite(mks_geo) & (plx_snr > cfg.min_parallax_snr)
            & np.isin(em, (0, 1)))
    hi = good & (np.asarray(snr, float) > cfg.min_snr)
    stars = np.asarray(star_id).astype(str)
    cand_stars = np.unique(stars[hi])
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(cand_stars.size)
    n_train = int(round(cfg.train_fraction * cand_stars.size))
    train_stars = cand_stars[perm[:n_train]]
    in_train_star = np.isin(stars, train_stars)
    extra = np.zeros(stars.size, dtype=bool) if extra is None else np.asarray(extra, bool)
    extra = extra & usable & np.isin(em, (0, 1))
    train_a = (hi & in_train_star & (em == 0)) | (extra & (em == 0))
    train_b = (hi & in_train_star) | extra
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


def _loss_weights(err: np.ndarray, floor: float | None) -> np.ndarray | None:
    if floor is None:
        return None
    return 1.0 / (np.nan_to_num(np.asarray(err, float), nan=1.0) ** 2 + floor**2)


def _noise_sample(model: str, sets: Sets, em: np.ndarray, snr: np.ndarray,
                  cfg: TrainingConfig) -> np.ndarray:
    base = sets.test & (snr > cfg.noise_min_snr)
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
) -> TrainingResult:
    """Sec. 5.2 training of networks (a) and (b) with iterative binary cleaning.

    ``x``: network inputs of every candidate row ((n, n_grid) reconstructed spectra or
    (n, 100) PCA coefficients per ``cfg.input_kind``). ``extra_mks`` (NaN where absent)
    marks rows of the extra training table and gives their M_Ks target. Returns the final
    networks, the emcee noise models (``run_mcmc``; else maximum likelihood only), the
    sets and a report with the timing of each step.
    """
    cfg = cfg or TrainingConfig()
    t_start = time.perf_counter()
    snr = np.asarray(snr, float)
    em = np.asarray(em_flag)
    n = snr.size
    extra = np.zeros(n, bool) if extra_mks is None else np.isfinite(extra_mks)
    target = np.asarray(mks_geo, float).copy()
    target_err = np.asarray(mks_geo_err, float).copy()
    if extra.any():
        target[extra] = np.asarray(extra_mks, float)[extra]
        target_err[extra] = (np.full(n, 0.1) if extra_mks_err is None
                             else np.asarray(extra_mks_err, float))[extra]
    sets = select_sets(star_id, snr, em, usable, mks_geo, plx_mas, plx_err_mas, cfg, extra)
    weights = _loss_weights(target_err, cfg.weight_floor_mag)
    report: dict[str, Any] = {"config": cfg.as_dict(), "sets": sets.counts(),
                              "iterations": [], "timing_s": {}}
    log.info("luminosity training sets: %s", sets.counts())
    keep = {"a": np.ones(n, bool), "b": np.ones(n, bool)}
    base_train = {"a": sets.train_a, "b": sets.train_b}
    nets: dict[str, MKsNetwork] = {}
    preds: dict[str, np.ndarray] = {}
    ml_theta: dict[str, np.ndarray] = {}
    for it in range(cfg.n_clean_iterations + 1):
        t_it = time.perf_counter()
        rec: dict[str, Any] = {"iteration": it}
        for m in ("a", "b"):
            rows = base_train[m] & keep[m]
            xm = x[m] if isinstance(x, dict) else x
            net_cfg = replace(cfg.network, seed=cfg.network.seed + it)
            nets[m], hist = train_network(
                xm[rows], target[rows], kind=m,
                weights=None if weights is None else weights[rows], config=net_cfg,
                input_kind=cfg.input_kind,
                meta={"training_iteration": it, "n_training_rows": int(rows.sum()),
                      "selection": {k: v for k, v in cfg.as_dict().items()
                                    if k != "network"}},
            )
            rec[f"n_train_{m}"] = int(rows.sum())
            rec[f"epochs_{m}"] = len(hist.train_loss)
            rec[f"seconds_per_epoch_{m}"] = hist.seconds_per_epoch
            rec[f"train_seconds_{m}"] = hist.seconds
            domain = base_train[m] | (sets.test & ((em == 0) if m == "a" else np.isin(em, (0, 1))))
            p = np.full(n, np.nan)
            p[domain] = nets[m].predict(xm[domain])
            preds[m] = p
            sample = _noise_sample(m, sets, em, snr, cfg)
            _, theta, _ = noise_model.clip_binaries(
                p[sample], np.asarray(mks_geo, float)[sample],
                np.asarray(mks_geo_err, float)[sample], snr[sample],
                clip_sigma=cfg.noise_clip_sigma)
            ml_theta[m] = theta
            rec[f"noise_ml_{m}"] = dict(zip(noise_model.PARAM_NAMES, map(float, theta),
                                            strict=True))
            test_sel = sample & np.isfinite(p)
            rec[f"test_rms_vs_geo_{m}"] = float(np.std(p[test_sel] - mks_geo[test_sel]))
            if it < cfg.n_clean_iterations:
                err = noise_model.mks_uncertainty(snr, theta[2], theta[3])
                b = identify_binaries(p, err, ks0, ks0_err, plx_mas, plx_err_mas,
                                      threshold=cfg.binary_snr_threshold)
                is_bin = (b["snr_dparallax"] > cfg.binary_snr_threshold) & ~extra
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
            sample = _noise_sample(m, sets, em, snr, cfg)
            noise[m] = noise_model.fit_noise_model(
                preds[m][sample], np.asarray(mks_geo, float)[sample],
                np.asarray(mks_geo_err, float)[sample], snr[sample],
                clip_sigma=cfg.noise_clip_sigma, n_steps=cfg.noise_n_steps, seed=cfg.seed,
                meta={"model": m, "sample": "test, non-emission" if m == "a" else
                      ("test, emission" if np.all(em[sample] == 1) else "test, all (b)"),
                      "min_snr": cfg.noise_min_snr},
            )
        report["timing_s"]["mcmc"] = time.perf_counter() - t0
    report["noise_ml"] = {m: dict(zip(noise_model.PARAM_NAMES, map(float, t), strict=True))
                          for m, t in ml_theta.items()}
    clean_train = {m: base_train[m] & keep[m] for m in ("a", "b")}
    return TrainingResult(networks=nets, noise=noise, sets=sets, predictions=preds,
                          clean_train=clean_train, report=report)
