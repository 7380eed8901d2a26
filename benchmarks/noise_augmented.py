"""Noise-augmented training of network (a) against the low-S/N bias (issue 15 item 2).

On a finished run (survey + products through ``luminosity``), network (a) is retrained
twice with the luminosity stage's own function (:func:`obpipe.luminosity.network_training.
train_network`, the run's network options, the parallax-space loss, folds by star) on the
run's final (binary-cleaned) training spectra of (a) (``luminosity_set`` bit 1):

* **baseline**: those spectra as the pipeline reads them (``recon_flux``);
* **augmented**: the same plus ``--copies`` degraded copies of each, same targets and the
  same star (hence the same fold): the *raw* survey flux gets Gaussian noise of variance
  ``1 / ivar_new - 1 / ivar`` with ``ivar_new = ivar (S/N_new / S/N)^2`` at an S/N drawn
  from the survey's own ``snr_g`` below ``--max-snr`` (50), then goes through the
  pipeline's steps: :func:`obpipe.spectra.normalize.normalize` (the pseudo-continuum fit
  on the noisy spectrum), the weighted PCA projection of the run's model (prior as the run
  was configured) and the full-basis reconstruction (as the emission stage writes
  ``recon_flux``). The noise is white: the mock's pixel correlation is not imitated.
  With ``--realistic`` the copies also get noise correlated between neighbouring pixels
  (lag-1 ``--rho``, the mock's default 0.25: an optimistic case) and a rest-frame shift
  of the survey's own quoted RV error at the target S/N (beyond the clean spectrum's),
  :func:`rv_error_at`, :func:`shift_rows`.

With ``--mask-ism`` the second network is not augmented but blind to the interstellar
lines (:data:`obpipe.spectra.pca.INTERSTELLAR_WINDOWS_AA`: Ca II K, Na D, K I and
the strong DIBs; before 04fd904 the list here, the same lines to ~1 AA): their pixels get
zero weight in the PCA projection of its input spectra (training, scoring and sigma_s
alike), so the reconstruction holds only what the stellar pixels imply there, and are
left out of its pixel mask: does the low-S/N bias come from the networks reading the
interstellar absorption (which grows with distance) as a luminosity cue? With
``--ism-continuum`` as well, those pixels also carry no weight in the pseudo-continuum
(the spectra are normalised again from the raw survey flux).

Both are scored, beside the run's own networks (the catalog's ``MKs``), on single
non-emission OB stars that no network trained on (no visit in ``luminosity_set`` bits
1, 2 or 8),
against the truth, by S/N bin: median bias, std and pull std. The pull's error for a
retrained network is the run's sigma_int (``MKs_err`` attributes) and its own sigma_s(S/N)
measured on degraded held-out spectra (:func:`obpipe.luminosity.noise_model.
degraded_snr_scatter`, as the stage does) with its ensemble spread; the run's networks
use the catalog's ``MKs_err``.

With ``--shift-check`` (no training): never-trained single non-emission OB spectra at
S/N > 100 are degraded (raw flux, as above) to S/N 10 and 30 with white noise and with
noise correlated between neighbouring pixels (lag-1 correlation ``--rho``, a [c, 1, c]
kernel of unit variance, as LAMOST's resampling makes it), then also with the rest-frame
shift of the survey's quoted RV error at that S/N; normalised, projected and predicted
by the run's network (a); printed: the median shift from the clean reading, to compare
with the median bias of the survey's own spectra at that S/N, and, for never-trained
stars with two visits whose S/N differ by > 3x (the lower < 50), the median difference of
the catalog M_Ks of the low- and the high-S/N visit (the same star: noise as the survey
makes it).

Usage::

    python benchmarks/noise_augmented.py SURVEY.zarr PRODUCTS_DIR --shift-check [--rho 0.25]
    python benchmarks/noise_augmented.py SURVEY.zarr PRODUCTS_DIR [--copies 1]
        [--max-snr 50] [--max-epochs N] [--realistic [--rho 0.25]]
        [--mask-ism [--ism-continuum]]
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from obpipe.engine.blockwise import open_products
from obpipe.io import store
from obpipe.luminosity import noise_model
from obpipe.luminosity.network import MKsNetwork
from obpipe.luminosity.network_training import TrainConfig, fakemag_from_parallax, train_network
from obpipe.spectra.bases import load_pca_model
from obpipe.spectra.grid import velocity_per_pixel_kms
from obpipe.spectra.normalize import normalize
from obpipe.stats import robust_std

log = logging.getLogger("noise_augmented")
SNR_BINS = ((5, 20), (20, 50), (50, 100), (100, 200), (200, np.inf))
MKS_BINS = ((-np.inf, -3), (-3, -2), (-2, -1), (-1, 0), (0, np.inf))


def degrade_raw(flux: np.ndarray, ivar: np.ndarray, snr: np.ndarray, target: np.ndarray,
                rng: np.random.Generator, rho: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Raw flux and ivar (n, n_wave) degraded from S/N ``snr`` to ``target`` (per row):
    ivar x (target / S/N)^2 and Gaussian noise of the missing variance on pixels with
    ivar > 0 (masked / empty pixels stay as they are), lag-1 correlated by ``rho``."""
    ratio = (snr / target).astype(np.float32)[:, None]
    ok = ivar > 0
    sd = np.where(ok, 1.0 / np.sqrt(np.where(ok, ivar, 1.0)), 0.0).astype(np.float32)
    noisy = flux + correlated_normal(flux.shape, rho, rng) * sd * np.sqrt(
        np.maximum(ratio**2 - 1.0, 0.0))
    return noisy.astype(np.float32), (ivar / ratio**2).astype(np.float32)


def rv_error_at(snr_all: np.ndarray, rv_err_all: np.ndarray, target: np.ndarray
                ) -> np.ndarray:
    """The survey's quoted RV error (km/s) at S/N ``target``: the median ``rv_err`` of its
    spectra in bins of log S/N, interpolated (an observable: no truth)."""
    edges = np.logspace(np.log10(5), np.log10(1000), 25)
    ok = np.isfinite(snr_all) & np.isfinite(rv_err_all) & (rv_err_all > 0)
    k = np.digitize(snr_all[ok], edges)
    centre, med = [], []
    for i in range(1, edges.size):
        q = k == i
        if q.sum() >= 20:
            centre.append(np.sqrt(edges[i - 1] * edges[i]))
            med.append(np.median(rv_err_all[ok][q]))
    return np.interp(np.log(target), np.log(centre), med)


def shift_rows(flux: np.ndarray, ivar: np.ndarray, shift_px: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Each row shifted by ``shift_px`` pixels of the log-lambda grid (a rest-frame error
    of shift_px x 69 km/s), linear interpolation; pixels whose neighbours include an
    unusable one (ivar 0) get ivar 0."""
    x = np.arange(flux.shape[1], dtype=np.float64)
    f2, iv2 = np.empty_like(flux), np.empty_like(ivar)
    for j in range(flux.shape[0]):
        xs = x - shift_px[j]
        f2[j] = np.interp(xs, x, flux[j])
        good = np.interp(xs, x, (ivar[j] > 0).astype(np.float64)) > 0.999
        iv2[j] = np.where(good, np.interp(xs, x, ivar[j]), 0.0)
    return f2, iv2


def correlated_normal(shape: tuple[int, int], rho: float, rng: np.random.Generator
                      ) -> np.ndarray:
    """Unit-variance Gaussian noise with lag-1 correlation ``rho`` along the last axis: white
    noise through the kernel [c, 1, c] / sqrt(1 + 2 c^2), rho = 2 c / (1 + 2 c^2)."""
    if rho <= 0:
        return rng.standard_normal(shape, dtype=np.float32)
    c = (1.0 - np.sqrt(1.0 - 2.0 * rho**2)) / (2.0 * rho)
    w = rng.standard_normal((shape[0], shape[1] + 2), dtype=np.float32)
    return ((c * w[:, :-2] + w[:, 1:-1] + c * w[:, 2:]) / np.sqrt(1 + 2 * c * c)).astype(
        np.float32)


def shift_check(a: argparse.Namespace) -> int:
    """The ``--shift-check`` mode (see the module docstring)."""
    from obpipe.stages.luminosity import load_network

    rng = np.random.default_rng(a.seed)
    sv, tr, pr = store.open_cube(a.survey), store.open_truth(a.survey), open_products(a.products)
    summary = json.loads((Path(a.products) / "run_summary.json").read_text())
    cfg_spec = summary["config"]["spectral"]
    width, prior = float(cfg_spec["continuum_kernel_aa"]), bool(cfg_spec["projection_prior"])
    pca_model = load_pca_model(a.products)
    net = load_network(str(Path(a.products) / "models" / "mks_network_a.safetensors"))
    snr = sv["snr_g"].values.astype(float)
    star = sv["star_id"].values.astype(object).astype(str)
    lset = pr["luminosity_set"].values.astype(int)
    em = pr["em_flag"].values.astype(int)
    cls = tr["star_class"].values.astype(object).astype(str)
    ok = ((cls == "OB") & ~tr["is_binary"].values.astype(bool)
          & ~tr["has_emission"].values.astype(bool) & (em == 0)
          & ((pr["quality_flags"].values.astype(int) & 1) == 0))
    ever = np.flatnonzero((lset & (1 | 2 | 8)) > 0)
    unseen = ok & ~np.isin(star, np.unique(star[ever]))
    mks_true = tr["MKs_true"].values.astype(float)
    cat = pr["MKs"].values.astype(float)
    rows = np.flatnonzero(unseen & (snr > 100))
    rows = np.sort(rng.choice(rows, min(600, rows.size), replace=False))
    flux = _read_rows(sv["flux"], rows).astype(np.float32)
    ivar = _read_rows(sv["ivar"], rows).astype(np.float32)
    mask = _read_rows(sv["mask"], rows)
    clean = net.predict(pipeline_recon(flux, ivar, mask, pca_model, width, prior))
    print(f"{rows.size} never-trained single OB spectra at S/N > 100: clean reading - truth "
          f"median {np.median(clean - mks_true[rows]):+.3f}")
    for target in (10.0, 30.0):
        lo, hi = (5, 20) if target < 20 else (20, 50)
        real = unseen & (snr >= lo) & (snr < hi)
        line = (f"S/N {target:g}: survey's own S/N {lo}-{hi} spectra read "
                f"{np.nanmedian(cat[real] - mks_true[real]):+.3f} (n {real.sum()}); "
                "degraded, median shift from clean:")
        for rho in (0.0, a.rho):
            ratio = (snr[rows] / target).astype(np.float32)[:, None]
            okp = ivar > 0
            sd = np.where(okp, 1.0 / np.sqrt(np.where(okp, ivar, 1.0)), 0.0)
            f = flux + correlated_normal(flux.shape, rho, rng) * sd * np.sqrt(ratio**2 - 1)
            m = net.predict(pipeline_recon(f.astype(np.float32), ivar / ratio**2, mask,
                                           pca_model, width, prior))
            line += f"  rho {rho:g}: {np.median(m - clean):+.3f}"
        # and a rest-frame error: the survey's quoted RV error at the target S/N (beyond the
        # clean spectrum's own)
        rv_t = rv_error_at(snr, sv["rv_err"].values.astype(float), np.array([target]))[0]
        rv_c = sv["rv_err"].values.astype(float)[rows]
        jit = np.sqrt(np.clip(rv_t**2 - rv_c**2, 0, None)) * rng.standard_normal(rows.size)
        fs, ivs = shift_rows(flux, ivar, jit / velocity_per_pixel_kms())
        okp = ivs > 0
        sd = np.where(okp, 1.0 / np.sqrt(np.where(okp, ivs, 1.0)), 0.0)
        f = fs + correlated_normal(flux.shape, a.rho, rng) * sd * np.sqrt(ratio**2 - 1)
        m = net.predict(pipeline_recon(f.astype(np.float32), ivs / ratio**2, mask, pca_model,
                                       width, prior))
        line += f"  rho {a.rho:g} + RV error {rv_t:.0f} km/s: {np.median(m - clean):+.3f}"
        print(line)
    # the same star at two S/N: the catalog's own readings
    both = np.flatnonzero(unseen & np.isfinite(cat))
    order = np.argsort(star[both], kind="stable")
    both = both[order]
    _, start, cnt = np.unique(star[both], return_index=True, return_counts=True)
    pairs = []
    for s0, c in zip(start, cnt, strict=True):
        if c < 2:
            continue
        r = both[s0:s0 + c]
        hi, lo = r[np.argmax(snr[r])], r[np.argmin(snr[r])]
        if snr[hi] > 3 * snr[lo] and snr[lo] < 50:
            pairs.append((snr[lo], snr[hi], cat[lo] - cat[hi]))
    pr_ = np.array(pairs).reshape(-1, 3)
    for lo, hi in ((5, 20), (20, 50)):
        q = (pr_[:, 0] >= lo) & (pr_[:, 0] < hi)
        if q.sum():
            print(f"same star, low visit at S/N {lo}-{hi} (n {q.sum()}, high visit median "
                  f"S/N {np.median(pr_[q, 1]):.0f}): M_Ks(low) - M_Ks(high) median "
                  f"{np.median(pr_[q, 2]):+.3f}")
    return 0


def pipeline_recon(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, pca_model: Any,
                   width_aa: float, prior: bool, batch: int = 1000) -> np.ndarray:
    """``recon_flux`` of network (a) for raw spectra: normalise, project, reconstruct."""
    out = np.empty(flux.shape, dtype=np.float32)
    for lo in range(0, flux.shape[0], batch):
        s = slice(lo, lo + batch)
        nf, ni = normalize(flux[s], ivar[s], mask[s], width_aa)
        coeff = pca_model.full.project(nf, ni, prior=prior)
        rec = pca_model.full.reconstruct(np.nan_to_num(coeff))
        rec[~np.isfinite(coeff[:, 0])] = np.nan
        out[s] = rec
    return out


def recon_from_norm(nf: np.ndarray, ni: np.ndarray, pca_model: Any, prior: bool,
                    zero_pix: np.ndarray | None = None, batch: int = 1000) -> np.ndarray:
    """Full-basis reconstruction of normalised spectra (as the emission stage writes
    ``recon_flux``), with the pixels of ``zero_pix`` given zero weight in the projection."""
    out = np.empty(nf.shape, dtype=np.float32)
    for lo in range(0, nf.shape[0], batch):
        s = slice(lo, lo + batch)
        iv = ni[s] if zero_pix is None else np.where(zero_pix[None, :], 0.0, ni[s])
        coeff = pca_model.full.project(nf[s], iv.astype(np.float32), prior=prior)
        rec = pca_model.full.reconstruct(np.nan_to_num(coeff))
        rec[~np.isfinite(coeff[:, 0])] = np.nan
        out[s] = rec
    return out


def ism_blind_norm(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray, zero_pix: np.ndarray,
                   width_aa: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`normalize` with the pixels of ``zero_pix`` out of the pseudo-continuum (and
    zero norm_ivar there)."""
    return normalize(flux, np.where(zero_pix[None, :], 0.0, ivar).astype(np.float32), mask,
                     width_aa)


def _read_rows(arr: Any, rows: np.ndarray) -> np.ndarray:
    return np.asarray(arr.isel(spec=rows).values)


def _stats(resid: np.ndarray, err: np.ndarray) -> dict[str, Any]:
    ok = np.isfinite(resid) & np.isfinite(err) & (err > 0)
    if ok.sum() < 5:
        return {"n": int(ok.sum())}
    r = resid[ok]
    return {"n": int(r.size), "bias": float(np.median(r)), "std": float(np.std(r)),
            "robust_std": float(robust_std(r)), "pull_std": float(np.std(r / err[ok]))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("survey")
    ap.add_argument("products")
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--max-snr", type=float, default=50.0)
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shift-check", action="store_true")
    ap.add_argument("--rho", type=float, default=0.25)
    ap.add_argument("--mask-ism", action="store_true",
                    help="second network: no augmentation, interstellar-line pixels masked")
    ap.add_argument("--ism-continuum", action="store_true",
                    help="with --mask-ism: the interstellar pixels out of the continuum too")
    ap.add_argument("--realistic", action="store_true",
                    help="copies with lag-1 noise correlation --rho and the rest-frame error "
                         "of the survey's quoted RV error at the target S/N")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if a.shift_check:
        return shift_check(a)
    rng = np.random.default_rng(a.seed)
    timing: dict[str, float] = {}
    t0 = time.perf_counter()

    sv = store.open_cube(a.survey)
    tr = store.open_truth(a.survey)
    pr = open_products(a.products)
    summary = json.loads((Path(a.products) / "run_summary.json").read_text())
    cfg_lum = summary["config"]["luminosity"]
    cfg_spec = summary["config"]["spectral"]
    net_cfg = TrainConfig(**{k: v for k, v in cfg_lum["network"].items()
                             if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    if a.max_epochs:
        net_cfg = dataclasses.replace(net_cfg, max_epochs=a.max_epochs)
    pca_model = load_pca_model(a.products)
    width, prior = float(cfg_spec["continuum_kernel_aa"]), bool(cfg_spec["projection_prior"])

    snr_all = sv["snr_g"].values.astype(float)
    star = sv["star_id"].values.astype(object).astype(str)
    lset = pr["luminosity_set"].values.astype(int)
    train = np.flatnonzero((lset & 1) > 0)
    log.info("%d training spectra of network (a)", train.size)
    ks0, ks0e, plx, plxe = (pr[k].values.astype(float)[train] for k in (
        "Ks0", "Ks0_err", "parallax_corrected", "parallax_corrected_error"))
    fmag, fmag_err = fakemag_from_parallax(plx, plxe, ks0, ks0e)
    y = pr["MKs_geo"].values.astype(float)[train]
    x_clean = _read_rows(pr["recon_flux"], train)

    # degraded copies from the raw survey flux, through the pipeline's own steps
    low = snr_all[(snr_all >= 5) & (snr_all < a.max_snr)]
    t1 = time.perf_counter()
    copies = []
    flux = _read_rows(sv["flux"], train).astype(np.float32)
    ivar = _read_rows(sv["ivar"], train).astype(np.float32)
    mask = _read_rows(sv["mask"], train)
    src = [np.arange(train.size)] * a.copies
    rv_err_all = sv["rv_err"].values.astype(float)
    for idx in ([] if a.mask_ism else src):
        target = np.minimum(rng.choice(low, idx.size), snr_all[train][idx] / 1.5)
        f, iv = flux[idx], ivar[idx]
        if a.realistic:
            rv_t = rv_error_at(snr_all, rv_err_all, target)
            jit = np.sqrt(np.clip(rv_t**2 - rv_err_all[train][idx] ** 2, 0, None))
            f, iv = shift_rows(f, iv, jit * rng.standard_normal(idx.size)
                               / velocity_per_pixel_kms())
        f, iv = degrade_raw(f, iv, snr_all[train][idx], target, rng,
                            rho=a.rho if a.realistic else 0.0)
        copies.append((pipeline_recon(f, iv, mask[idx], pca_model, width, prior), idx))
    del flux, ivar
    timing["degrade_and_project"] = time.perf_counter() - t1

    nets: dict[str, MKsNetwork] = {}
    every = np.concatenate([np.arange(train.size)] + [c[1] for c in copies])
    variants = [("baseline", x_clean, np.arange(train.size), None)]
    zero_pix: dict[str, np.ndarray | None] = {"baseline": None, "augmented": None}
    if a.mask_ism:
        from obpipe.luminosity.network import wavelength_mask
        from obpipe.spectra.pca import interstellar_mask

        ism = interstellar_mask()
        zero_pix["ism_masked"] = ism
        nf_tr, ni_tr = ((_read_rows(pr["norm_flux"], train), _read_rows(pr["norm_ivar"], train))
                        if not a.ism_continuum else ism_blind_norm(
                            _read_rows(sv["flux"], train), _read_rows(sv["ivar"], train),
                            _read_rows(sv["mask"], train), ism, width))
        x_ism = recon_from_norm(nf_tr, ni_tr, pca_model, prior, ism)
        del nf_tr, ni_tr
        variants.append(("ism_masked", x_ism, np.arange(train.size),
                         wavelength_mask("a") & ~ism))
    else:
        variants.append(("augmented", np.concatenate([x_clean] + [c[0] for c in copies]),
                         every, None))
    for name, xs, take, pix in variants:
        t1 = time.perf_counter()
        nets[name], hist = train_network(
            xs, y[take], kind="a", config=net_cfg, input_kind="recon_flux", pixel_mask=pix,
            sigma_floor_mag=cfg_lum.get("weight_floor_mag"), fakemag=fmag[take],
            fakemag_err=fmag_err[take], groups=star[train][take],
            meta={"benchmark": "noise_augmented", "variant": name})
        timing[f"train_{name}"] = time.perf_counter() - t1
        log.info("%s: %d rows, %d epochs, %.0f s", name, xs.shape[0], len(hist.train_loss),
                 timing[f"train_{name}"])

    # never-trained single non-emission OB stars
    em = pr["em_flag"].values.astype(int)
    qf = pr["quality_flags"].values.astype(int)
    cls = tr["star_class"].values.astype(object).astype(str)
    single_ob = ((cls == "OB") & ~tr["is_binary"].values.astype(bool)
                 & ~tr["has_emission"].values.astype(bool) & (em == 0) & ((qf & 1) == 0))
    ever = np.flatnonzero((lset & (1 | 2 | 8)) > 0)  # trained (a) or (b), or cleaned away
    unseen = single_ob & ~np.isin(star, np.unique(star[ever]))
    rows = np.flatnonzero(unseen)
    x_test = _read_rows(pr["recon_flux"], rows)
    mks_true = tr["MKs_true"].values.astype(float)[rows]
    snr = snr_all[rows]
    sigma_int = float(pr["MKs_err"].attrs["noise_a_sigma_int"])
    res: dict[str, Any] = {"n_train": int(train.size), "copies": a.copies,
                           "realistic": a.realistic, "rho": a.rho, "mask_ism": a.mask_ism,
                           "ism_continuum": a.ism_continuum,
                           "max_snr": a.max_snr, "n_unseen": int(rows.size), "scores": {}}
    cat_mks = pr["MKs"].values.astype(float)[rows]
    cat_err = pr["MKs_err"].values.astype(float)[rows]
    preds = {"run": (cat_mks, cat_err)}
    # sigma_s(S/N) of each retrained network on held-out high-S/N spectra (as the stage)
    pool = rows[snr > 100]
    nf = _read_rows(pr["norm_flux"], pool)
    ni = _read_rows(pr["norm_ivar"], pool)
    for name, net in nets.items():
        t1 = time.perf_counter()
        zp = zero_pix[name]
        if zp is None:
            xt = x_test
        elif a.ism_continuum:
            xt = recon_from_norm(*ism_blind_norm(
                _read_rows(sv["flux"], rows), _read_rows(sv["ivar"], rows),
                _read_rows(sv["mask"], rows), zp, width), pca_model, prior, zp)
        else:
            xt = recon_from_norm(_read_rows(pr["norm_flux"], rows),
                                 _read_rows(pr["norm_ivar"], rows), pca_model, prior, zp)
        m, spread = net.predict(xt, return_std=True)

        def predict(f: np.ndarray, iv: np.ndarray, sel: np.ndarray, net: MKsNetwork = net,
                    zp: np.ndarray | None = zp) -> np.ndarray:
            return net.predict(recon_from_norm(f, iv, pca_model, prior, zp))

        tab = noise_model.degraded_snr_scatter(nf, ni, snr_all[pool], predict, seed=a.seed)
        err = noise_model.mks_uncertainty(snr, sigma_int, 0.0, spread,
                                          sigma_s_table=(np.array(tab["snr"]),
                                                         np.array(tab["sigma_mag"])))
        preds[name] = (m, err)
        res[f"sigma_s_degraded_{name}"] = tab
        timing[f"predict_and_sigma_s_{name}"] = time.perf_counter() - t1
    for name, (m, err) in preds.items():
        block = {}
        for lo, hi in SNR_BINS:
            sel = (snr >= lo) & (snr < hi)
            block[f"{lo:g}-{hi:g}"] = _stats(m[sel] - mks_true[sel], err[sel])
        block[">50"] = _stats((m - mks_true)[snr > 50], err[snr > 50])
        res["scores"][name] = block
        # at fixed true M_Ks: a bias that is the same at every S/N here but differs in the
        # S/N bins above is the mix of the populations, not the noise
        res.setdefault("by_true_mks", {})[name] = {
            f"{lo:g}..{hi:g}": {rng_: _stats(*(v[(mks_true >= lo) & (mks_true < hi) & sel]
                                              for v in (m - mks_true, err)))
                                for rng_, sel in (("snr 5-50", snr < 50),
                                                  ("snr > 50", snr >= 50))}
            for lo, hi in MKS_BINS}
    timing["total"] = time.perf_counter() - t0
    res["timing_s"] = timing
    print(f"never-trained single non-emission OB stars (n = {rows.size}); "
          f"median bias / std / pull std by S/N")
    print(f"{'S/N':>8s} " + " ".join(f"{k:>24s}" for k in preds))
    for b in res["scores"]["run"]:
        cells = []
        for k in preds:
            s = res["scores"][k][b]
            cells.append(f"{s['bias']:+.3f} / {s['std']:.3f} / {s['pull_std']:.2f}"
                         if "std" in s else "-")
        print(f"{b:>8s} " + " ".join(f"{c:>24s}" for c in cells) +
              f"   (n {res['scores']['run'][b]['n']})")
    print("median bias at fixed true M_Ks, S/N 5-50 | S/N > 50 (n)")
    for b in res["by_true_mks"]["run"]:
        cells = []
        for k in preds:
            lo_, hi_ = (res["by_true_mks"][k][b][r] for r in ("snr 5-50", "snr > 50"))
            cells.append(f"{lo_.get('bias', np.nan):+.3f} | {hi_.get('bias', np.nan):+.3f}")
        n_lo, n_hi = (res["by_true_mks"]["run"][b][r]["n"] for r in ("snr 5-50", "snr > 50"))
        print(f"{b:>10s} " + " ".join(f"{c:>24s}" for c in cells) + f"   ({n_lo} | {n_hi})")
    print(f"median true M_Ks: S/N 5-50 {np.median(mks_true[snr < 50]):+.2f}, "
          f"S/N > 50 {np.median(mks_true[snr >= 50]):+.2f}")
    print("timing (s):", {k: round(v, 1) for k, v in timing.items()})
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
