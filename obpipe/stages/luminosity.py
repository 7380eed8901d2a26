"""Stages ``luminosity`` (Secs. 5.1-5.3) and ``binary`` (Sec. 6): thin wiring.

``luminosity``
    1. reads the good-parallax candidates (and the rows of an optional extra training
       table) from the products store: ``recon_flux`` (or the PCA coefficients for
       the ``input_kind="pca_coeff"`` variant; interstellar-blind when the pca stage
       projected without the interstellar windows, ``[spectral]
       exclude_interstellar_lines``, issue 15: :func:`products_interstellar_blind`),
       ``em_flag``, ``quality_flags``,
       ``MKs_geo(_err)``, ``Ks0(_err)``, ``parallax_corrected(_error)``, S/N;
    2. trains networks (a) and (b) with two binary-cleaning iterations and samples
       the noise model (:mod:`obpipe.luminosity.training`);
    3. writes ``PRODUCTS_DIR/models/mks_network_{a,b}.safetensors`` (tensors, JSON
       metadata in the header), ``noise_model_{a,b}.npz``,
       ``luminosity_training.json`` (figures: :mod:`obpipe.report.run_figures`); a rerun
       finds the files and skips training;
    4. maps :func:`luminosity_block` over the cube with
       :func:`obpipe.engine.blockwise.run_blockwise_stage`: the networks travel to the
       workers as file paths (loaded once per process, ``lru_cache``), the noise
       parameters as floats.

    Products: ``MKs`` (out of fold, issue 15: for a star that trained the network, every
    visit of it, the one member that never saw it; else the mean of the ensemble
    members; ``MKs_fold`` says which), ``MKs_err`` (sqrt(sigma_int^2 +
    sigma_s^2), eqs. 8-10, with sigma_s(S/N) measured on degraded held-out spectra,
    :func:`calibrate_sigma_s`, and in quadrature k E(B-V) at M_Ks < -3 and a constant
    term, both fitted on the candidates' parallaxes, :func:`calibrate_extra_scatter`, and
    for a spectrum flagged broken its class's scatter about the geometric M_Ks,
    :func:`calibrate_broken_scatter`), ``MKs_spread`` (the
    members' standard deviation), ``MKs_model`` (0 = network a, 1 = network b, -9 =
    none: em_flag 0 uses (a); 1 and -9 (undetermined) use (b), which ignores the
    emission-line regions),
    ``luminosity_set`` (bits: 1 trained (a), 2 trained (b), 4 test set, 8 removed from
    training as a binary, 16 extra training table).

``binary``
    eqs. (15)-(17) per spectrum (:mod:`obpipe.binary`): ``parallax_spec``,
    ``parallax_spec_err`` (mas), ``snr_dparallax``, ``binary_flag`` (1 / 0 / -9); figure
    ``fig10_parallax_excess.png``.

The ``binary`` stage is :mod:`obpipe.stages.binary`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from functools import lru_cache
from typing import Any

import numpy as np
import xarray as xr
import zarr

from obpipe.config import PipelineConfig
from obpipe.engine.blockwise import (
    Output,
    ensure_outputs,
    force_requested,
    mark_blocks_done,
    open_products,
    products_path,
    run_blockwise_stage,
    stage_complete,
    temp_name,
    write_products_block,
)
from obpipe.engine.context import RunContext
from obpipe.io import store
from obpipe.luminosity import noise_model
from obpipe.luminosity.network import (
    MKsNetwork,
    interstellar_mask,
    recon_out_of_range,
    wavelength_mask,
)
from obpipe.luminosity.training import TrainingConfig, train_with_binary_cleaning
from obpipe.photometry.parallax import geometric_mks_with_offset
from obpipe.spectra.bases import INTERSTELLAR_ATTR
from obpipe.version import __version__

log = logging.getLogger(__name__)

NAME = STAGE = "luminosity"
DESCRIPTION = ("two M_Ks networks, binary-cleaned; emcee noise model (Secs. 5.1-5.3, "
               "eqs. 6-14)")
#: the typed options section (``PipelineConfig.luminosity``; the extra training table is
#: ``PipelineConfig.extra_training_table``)
Config = TrainingConfig
SECTION = "luminosity"


def provenance_config(config: PipelineConfig) -> dict[str, Any]:
    """What this stage's provenance key hashes: its section and the extra training table."""
    out = dataclasses.asdict(config.luminosity)
    if config.extra_training_table:
        out["extra_training"] = config.extra_training_table
    return out

SETS_STAGE = "luminosity_sets"
MODEL_DIR = "models"
NETWORK_FILES = {"a": "mks_network_a.safetensors", "b": "mks_network_b.safetensors"}
NOISE_FILES = {"a": "noise_model_a.npz", "b": "noise_model_b.npz"}
REPORT_FILE = "luminosity_training.json"
MODEL_CODES = {"a": 0, "b": 1}
BROKEN_BIT = 1

SET_BITS = {"train_a": 1, "train_b": 2, "test": 4, "removed_binary": 8, "extra": 16}

OUTPUTS: dict[str, Output] = {
    "MKs": Output("float32", "mag", "spectroscopic K_s absolute magnitude (eq. 6 network); "
                  "below the training S/N de-shrunk for the pull of noise toward the "
                  "training mean ([luminosity] deshrink_low_snr)"),
    "MKs_err": Output("float32", "mag", "sqrt(sigma_int^2 + sigma_s(S/N)^2) (Sec. 5.3, "
                      "eqs. 8-10; sigma_s from degraded spectra where the noise model has "
                      "them, else eq. 10), with k E(B-V) at M_Ks < -3 and a constant term "
                      "in quadrature (both fitted on parallaxes where the noise model has "
                      "them), and for a spectrum flagged broken (MKs_flag 2) the broken "
                      "spectra's scatter about their geometric M_Ks"),
    "MKs_spread": Output("float32", "mag", "standard deviation of the ensemble members' "
                         "M_Ks (epistemic; large where the training set is thin)"),
    "MKs_model": Output("int8", "", "network used: 0 = (a) non-emission, full range; "
                        "1 = (b) clean windows (em_flag 1 or -9); -9 = no estimate"),
    "MKs_flag": Output("int8", "", "bits: 1 input reconstruction out of range (max |f - 1| "
                       "> 2 within the model pixels: a failed PCA projection, M_Ks "
                       "unreliable), 2 spectrum flagged broken (quality_flags bit 0), 4 "
                       "in-sample (a one-network model trained on this star)"),
    "parallax_zp_fit": Output("float32", "mas", "residual parallax zero-point fitted with the "
                              "networks ([luminosity] fit_parallax_zero_point; 0 when off): "
                              "the binary flag and the distances use parallax_corrected minus "
                              "it"),
    "MKs_fold": Output("int8", "", "which ensemble members gave MKs (issue 15): k >= 0 "
                       "the one member (0-based) that never saw this star, whose other "
                       "members trained on one of its visits (out-of-fold); -1 the mean of "
                       "all members (no member trained on this star); -2 in-sample "
                       "(one-network model that trained on it); -9 no estimate"),
}
SET_OUTPUTS: dict[str, Output] = {
    "luminosity_set": Output("int8", "", "bits: " + ", ".join(
        f"{v} {k}" for k, v in SET_BITS.items())),
}
_CANDIDATE_PRODUCTS = ("em_flag", "quality_flags", "MKs_geo", "MKs_geo_err", "Ks0", "Ks0_err",
                       "parallax_corrected", "parallax_corrected_error")


def _model_paths(products_dir: str) -> dict[str, str]:
    return {m: os.path.join(products_dir, MODEL_DIR, f) for m, f in NETWORK_FILES.items()}


def _noise_paths(products_dir: str) -> dict[str, str]:
    return {m: os.path.join(products_dir, MODEL_DIR, f) for m, f in NOISE_FILES.items()}


@lru_cache(maxsize=8)
def _load_network(path: str, mtime: float) -> MKsNetwork:
    return MKsNetwork.load(path)


def load_network(path: str) -> MKsNetwork:
    return _load_network(path, store.file_token(path))


def _config(ctx: RunContext) -> tuple[TrainingConfig, dict[str, Any]]:
    """The typed section ``ctx.config.luminosity`` and the extra training table (or None)."""
    return ctx.config.luminosity, {"extra_training": ctx.config.extra_training_table or None}


def read_extra_training(path: str, specid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An extra training table (CSV / Parquet / FITS; columns ``specid``, ``MKs``, optional
    ``MKs_err``) as per-row arrays aligned with ``specid`` (NaN where absent)."""
    from astropy.table import Table

    tab = Table.read(path)
    ids = np.asarray(tab["specid"], dtype=np.int64)
    pos = {int(s): i for i, s in enumerate(np.asarray(specid, dtype=np.int64))}
    mks = np.full(specid.size, np.nan)
    err = np.full(specid.size, np.nan)
    has_err = "MKs_err" in tab.colnames
    missing = 0
    for k, sid in enumerate(ids):
        i = pos.get(int(sid))
        if i is None:
            missing += 1
            continue
        mks[i] = float(tab["MKs"][k])
        err[i] = float(tab["MKs_err"][k]) if has_err else 0.1
    if missing:
        log.warning("extra training table %s: %d specids not in the survey", path, missing)
    return mks, err


def clean_window_reconstruction(pca_coeff: np.ndarray, products_dir: str) -> np.ndarray:
    """Full-grid reconstruction of every row from its clean-window PCA coefficients
    (Sec. 5.1: what an emission star's spectrum is; network (b) reads it for every star,
    so training and inference see the same representation). NaN rows stay NaN."""
    from obpipe.spectra.bases import load_pca_model

    coeff = np.asarray(pca_coeff)
    out = load_pca_model(products_dir).clean.reconstruct(np.nan_to_num(coeff))
    out[~np.isfinite(coeff[:, 0])] = np.nan
    return out


def products_interstellar_blind(prods: xr.Dataset) -> bool:
    """Whether the products' PCA coefficients (and ``recon_flux``) were projected without
    the interstellar windows: the pca stage's record
    (:data:`obpipe.spectra.bases.INTERSTELLAR_ATTR`; False for older products)."""
    return bool(int(prods["pca_coeff"].attrs.get(INTERSTELLAR_ATTR, 0)))


def check_interstellar(net: MKsNetwork, blind: bool, path: str = "") -> None:
    """A clear error when network ``net`` was trained on inputs projected otherwise than
    the products it is applied to (with / without the interstellar windows, issue 15)."""
    trained = bool(net.meta.get("exclude_interstellar_lines", False))
    if trained != bool(blind):
        how = {True: "without the interstellar windows", False: "with every usable pixel"}
        raise ValueError(
            f"network ({net.kind}) {path or ''}: trained on PCA inputs projected "
            f"{how[trained]} (exclude_interstellar_lines = {str(trained).lower()} in its "
            f"metadata), but these products were projected {how[bool(blind)]} "
            f"([spectral] exclude_interstellar_lines = {str(bool(blind)).lower()}): run the "
            "pca stage with the network's setting, or retrain the networks on these "
            "products")


def _network_inputs(prods: xr.Dataset, rows: np.ndarray, input_kind: str, products_dir: str
                    ) -> dict[str, np.ndarray]:
    if input_kind == "recon_flux":
        return {"a": prods["recon_flux"].isel(spec=rows).values,
                "b": clean_window_reconstruction(prods["pca_coeff"].isel(spec=rows).values,
                                                 products_dir)}
    if input_kind == "pca_coeff":
        return {"a": prods["pca_coeff_full"].isel(spec=rows).values,
                "b": prods["pca_coeff"].isel(spec=rows).values}
    raise ValueError(f"unknown input_kind {input_kind!r}")


def inputs_from_raw(ctx: RunContext, raw: dict[str, np.ndarray], input_kind: str,
                    interstellar_blind: bool) -> dict[str, np.ndarray]:
    """The networks' inputs of raw spectra (``flux``, ``ivar``, ``mask`` rows on the
    survey's grid), made as the run makes its own: the normalize stage's block with the
    run's options, the pca stage's weighted projections
    (:func:`obpipe.spectra.bases.pca_coefficients`; the rest frame is not refined: the
    training spectra are above ``refine_rv_max_snr`` by default) and the reconstructions of
    :func:`_network_inputs`. Rows that fail any step are NaN."""
    from obpipe.spectra.bases import load_pca_model, pca_coefficients
    from obpipe.stages import normalize as normalize_stage

    spec = ctx.config.spectral
    normed = normalize_stage.block(raw, **normalize_stage.block_options(spec))
    model = load_pca_model(ctx.products_dir)
    coeff = pca_coefficients(model, normed["norm_flux"], normed["norm_ivar"],
                             prior=spec.projection_prior, exclude_interstellar=interstellar_blind)
    bad = ~np.isfinite(coeff["pca_coeff"][:, 0])
    if input_kind == "pca_coeff":
        return {"a": coeff["pca_coeff_full"], "b": coeff["pca_coeff"]}
    out = {"a": model.full.reconstruct(np.nan_to_num(coeff["pca_coeff_full"])),
           "b": model.clean.reconstruct(np.nan_to_num(coeff["pca_coeff"]))}
    for m, x in out.items():
        x[bad] = np.nan
        x[recon_out_of_range(x[:, wavelength_mask(m, exclude_interstellar=interstellar_blind)])
          ] = np.nan
    return out


def _raw_rows(ctx: RunContext, rows: np.ndarray) -> dict[str, np.ndarray]:
    survey = store.open_cube(ctx.survey_path)
    return {k: survey[k].isel(spec=rows).values for k in ("flux", "ivar", "mask")}


def reddened_inputs(ctx: RunContext, rows: np.ndarray, cfg: TrainingConfig,
                    interstellar_blind: bool) -> dict[str, np.ndarray]:
    """The networks' inputs (:func:`inputs_from_raw`) of one reddened copy of each survey
    row ``rows`` (:func:`obpipe.luminosity.augment.reddened_copies`, seeded by
    ``cfg.seed``)."""
    from obpipe.luminosity.augment import reddened_copies

    raw = _raw_rows(ctx, rows)
    raw["flux"], raw["ivar"], _ = reddened_copies(
        raw["flux"], raw["ivar"], np.random.default_rng(cfg.seed), cfg.reddened_copies_max_ebv)
    return inputs_from_raw(ctx, raw, cfg.input_kind, interstellar_blind)


def dust_response(ctx: RunContext, net: MKsNetwork, rows: np.ndarray, input_kind: str,
                  interstellar_blind: bool, ebv: float = 1.0, r_v: float = 3.1,
                  curve_per_ebv: np.ndarray | None = None) -> dict[str, Any]:
    """How far network (a)'s M_Ks moves when only the dust in front of the star changes
    (issue 15 item 2; ``benchmarks/reddening_shortcut.py`` asks it for five curve
    families): the raw spectra ``rows`` with ``ebv`` mag of E(B-V) more (A(lambda) /
    E(B-V) ``curve_per_ebv`` on the survey's grid, by default G23 at ``r_v``,
    :func:`obpipe.luminosity.augment.extinction_per_ebv`; ivar / factor^2, so the
    per-pixel S/N is unchanged) and as they are, through :func:`inputs_from_raw` and
    ``net``. A spectroscopic M_Ks would not move; negative: dust reads as luminosity.
    Returns the median change (mag per ``ebv``), its standard error (1.2533 std /
    sqrt(n), as for a Gaussian) and n."""
    from obpipe.luminosity.augment import extinction_per_ebv

    raw = _raw_rows(ctx, rows)
    label = "G23" if curve_per_ebv is None else "given"
    if curve_per_ebv is None:
        curve_per_ebv = extinction_per_ebv(np.array([r_v]), raw["flux"].shape[1])[0]
    factor = (10.0 ** (-0.4 * ebv * np.asarray(curve_per_ebv)[None, :])).astype(np.float32)
    dusty = dict(raw, flux=raw["flux"] * factor, ivar=raw["ivar"] / (factor * factor))
    m0, m1 = (net.predict(inputs_from_raw(ctx, r, input_kind, interstellar_blind)["a"])
              for r in (raw, dusty))
    d = (m1 - m0)[np.isfinite(m1 - m0)]
    if d.size < 10:
        return {"n": int(d.size)}
    return {"n": int(d.size), "ebv_mag": ebv, "r_v": r_v,
            "curve": label,
            "median_mks_change_mag": float(np.median(d)),
            "median_err_mag": float(1.2533 * np.std(d) / np.sqrt(d.size))}


def calibrate_sigma_s(ctx: RunContext, model: str, usable: np.ndarray, snr: np.ndarray,
                      star_id: np.ndarray, net: MKsNetwork, input_kind: str,
                      min_snr: float = 100.0, max_spectra: int = 2000, seed: int = 0,
                      exclude_interstellar: bool = False, pivot_mag: float | None = None,
                      deshrink_below_snr: float | None = None) -> dict[str, Any]:
    """sigma_s(S/N) of eq. (9) for network ``model`` from degraded spectra (issue 15).

    Up to ``max_spectra`` ``usable`` spectra with S/N > ``min_snr`` (of the model's
    emission class; network (b) takes every class when its own has < 200) go through
    :func:`noise_model.degraded_snr_scatter` with the pca stage's projection (prior as
    configured) and the out-of-fold member of each star (:meth:`predict_out_of_fold`);
    ``exclude_interstellar``: the interstellar windows carry no weight in that projection,
    as in the pca stage's (``[spectral] exclude_interstellar_lines``). ``pivot_mag`` and
    ``deshrink_below_snr``: the attenuation toward ``pivot_mag`` below that S/N is measured
    too and sigma_s is that of the de-shrunk readings (``[luminosity] deshrink_low_snr``,
    :func:`noise_model.deshrink`).
    """
    from obpipe.spectra.bases import load_pca_model

    pool = np.flatnonzero(usable & (snr > min_snr))
    if model == "b" and pool.size < 200:
        qf = open_products(ctx.products_dir)["quality_flags"].values
        pool = np.flatnonzero(((qf & BROKEN_BIT) == 0) & (snr > min_snr))
    if pool.size < 20:
        log.warning("luminosity: %d spectra at S/N > %g for network (%s); sigma_s from "
                    "eq. (10)", pool.size, min_snr, model)
        return {"snr": [], "n": [], "sigma_mag": [], "shift_mag": [], "slope": []}
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(pool, min(max_spectra, pool.size), replace=False))
    prods = open_products(ctx.products_dir)
    flux = prods["norm_flux"].isel(spec=rows).values
    ivar = prods["norm_ivar"].isel(spec=rows).values
    prior = bool(ctx.config.spectral.projection_prior)
    pca_model = load_pca_model(ctx.products_dir)
    basis = pca_model.full if model == "a" else pca_model.clean
    ids = star_id[rows]
    if input_kind == "recon_flux":  # the network on the coefficients of the reconstruction
        r0 = basis.reconstruct(np.zeros((1, basis.n_components)))[0]
        net = net.on_coefficients(basis.reconstruct(np.eye(basis.n_components)) - r0, r0)

    excl = interstellar_mask() if exclude_interstellar else None

    def predict(f: np.ndarray, iv: np.ndarray, sel: np.ndarray) -> np.ndarray:
        coeff = basis.project(f, iv, prior=prior, exclude=excl)
        x = np.nan_to_num(coeff) if input_kind == "recon_flux" else coeff
        return net.predict_out_of_fold(x, ids[sel])[0]

    return noise_model.degraded_snr_scatter(flux, ivar, snr[rows], predict, seed=seed,
                                            pivot_mag=pivot_mag,
                                            deshrink_below_snr=deshrink_below_snr)


def calibrate_extra_scatter(net: MKsNetwork, noise: noise_model.NoiseModelResult,
                            x: np.ndarray, star_id: np.ndarray, snr: np.ndarray,
                            ks0: np.ndarray, ks0_err: np.ndarray, plx_mas: np.ndarray,
                            plx_err_mas: np.ndarray, ebv: np.ndarray) -> dict[str, Any]:
    """The extra M_Ks error of luminous reddened stars for network ``net`` (issue 15):
    out-of-fold M_Ks of the given spectra (the training candidates: S/N > 50 with a
    parallax) and their ``MKs_err`` as the stage computes it (``noise``'s sigma_int,
    sigma_s table and spread), then :func:`noise_model.fit_extra_scatter` in parallax
    space. Needs ``noise.meta["sigma_s_degraded"]`` set first. The readings and sigma_s
    are the networks' own, before any de-shrinking (``[luminosity] deshrink_low_snr``):
    the terms then stay what they were without it (de-shrunk, the many good-parallax
    candidates below the training S/N moved them, and the high-S/N pulls with them)."""
    mks, spread, _ = net.predict_out_of_fold(x, star_id)
    err = noise_model.mks_uncertainty(snr, noise.sigma_int, noise.sigma_s100,
                                      spread if noise.includes_epistemic else None,
                                      sigma_s_table=noise.sigma_s_table_shrunk)
    return noise_model.fit_extra_scatter(mks, err, ks0, ks0_err, plx_mas, plx_err_mas, ebv)


def calibrate_broken_scatter(nets: dict[str, MKsNetwork],
                             noise: dict[str, noise_model.NoiseModelResult],
                             x: dict[str, np.ndarray], model: np.ndarray,
                             star_id: np.ndarray, snr: np.ndarray, ebv: np.ndarray,
                             mks_geo: np.ndarray, mks_geo_err: np.ndarray) -> dict[str, Any]:
    """The M_Ks error of spectra flagged broken (issue 15): their out-of-fold M_Ks from the
    network of their emission class (``model``: "a" / "b" per row) and their ``MKs_err``
    as the stage computes it without this term (sigma_int, sigma_s, spread, and
    :func:`calibrate_extra_scatter`'s terms, which must be in ``noise`` first), then
    :func:`noise_model.fit_broken_scatter` against ``mks_geo`` (eq. 11) over both
    networks' rows. The given rows: the broken training candidates (good parallax). As in
    :func:`calibrate_extra_scatter`, the readings before any de-shrinking."""
    mks = np.full(snr.size, np.nan)
    err = np.full(snr.size, np.nan)
    for m, net in nets.items():
        k = (model == m) & np.all(np.isfinite(x[m]), axis=1)
        if not k.any():
            continue
        r = noise[m]
        mks[k], spread, _ = net.predict_out_of_fold(x[m][k], star_id[k])
        err[k] = noise_model.total_mks_error(
            snr[k], r.sigma_int, r.sigma_s100, spread if r.includes_epistemic else None,
            r.sigma_s_table_shrunk, r.extra_terms, ebv[k], mks[k],
            np.zeros(int(k.sum()), bool))
    return noise_model.fit_broken_scatter(mks, err, mks_geo, mks_geo_err)


def deshrink_level(cfg: TrainingConfig) -> float | None:
    """The S/N below which readings are de-shrunk (``[luminosity] deshrink_low_snr``): the
    first level of :data:`noise_model.DEGRADE_SNR` at or above the training S/N
    (``min_snr``); None when off or when no level is that high."""
    if not cfg.deshrink_low_snr:
        return None
    levels = [v for v in noise_model.DEGRADE_SNR if v >= cfg.min_snr]
    return min(levels) if levels else None


def train_from_products(ctx: RunContext, cfg: TrainingConfig, extra_path: str | None = None
                        ) -> dict[str, Any]:
    """Steps 1-3 of the stage: train, calibrate, save the model files."""
    t0 = time.perf_counter()
    survey = store.open_cube(ctx.survey_path)
    prods = open_products(ctx.products_dir)
    snr_all = survey["snr_g"].values.astype(float)
    star_all = survey["star_id"].values.astype(object).astype(str)
    specid_all = survey["specid"].values
    cols = {k: prods[k].values for k in _CANDIDATE_PRODUCTS}
    with np.errstate(invalid="ignore", divide="ignore"):
        plx_snr = cols["parallax_corrected"] / cols["parallax_corrected_error"]
    extra_mks = extra_err = None
    cand = np.isfinite(cols["MKs_geo"]) & (plx_snr > cfg.min_parallax_snr)
    if cfg.network.loss == "fakemag":  # any parallax trains through the parallax-space loss
        cand |= ((snr_all > cfg.min_snr) & np.isfinite(cols["Ks0"])
                 & np.isfinite(cols["parallax_corrected"])
                 & (cols["parallax_corrected_error"] > 0))
    if extra_path:
        extra_mks, extra_err = read_extra_training(extra_path, specid_all)
        cand |= np.isfinite(extra_mks)
    rows = np.flatnonzero(cand)
    log.info("luminosity: %d candidate spectra (good parallax or extra table) of %d",
             rows.size, snr_all.size)
    em = cols["em_flag"][rows]
    ism = products_interstellar_blind(prods)
    x = _network_inputs(prods, rows, cfg.input_kind, ctx.products_dir)
    usable = (((cols["quality_flags"][rows] & BROKEN_BIT) == 0)
              & np.all(np.isfinite(x["a"]), axis=1) & np.all(np.isfinite(x["b"]), axis=1))
    if cfg.input_kind == "recon_flux":
        # failed reconstructions within a model's own pixels never train a network (a
        # non-emission spectrum trains both)
        bad_a = recon_out_of_range(x["a"][:, wavelength_mask("a", exclude_interstellar=ism)])
        bad_b = recon_out_of_range(x["b"][:, wavelength_mask("b", exclude_interstellar=ism)])
        bad = np.where(em == 0, bad_a | bad_b, bad_b)
        usable &= ~bad
        log.info("luminosity: %d candidates with an out-of-range reconstruction excluded",
                 int(np.sum(bad)))
    g_all = None
    if cfg.fit_parallax_zero_point != "none":
        if "phot_g_mean_mag" not in survey:
            raise ValueError(f"{ctx.survey_path}: fit_parallax_zero_point needs the survey "
                             "column phot_g_mean_mag (Gaia G)")
        g_all = survey["phot_g_mean_mag"].values.astype(float)
    t_read = time.perf_counter() - t0
    x_red = None
    if cfg.reddened_copies != "none":  # every row that can train: usable, S/N > min_snr
        t1 = time.perf_counter()
        can = np.flatnonzero(usable & (snr_all[rows] > cfg.min_snr))
        part = reddened_inputs(ctx, rows[can], cfg, ism)
        x_red = {}
        for m, v in part.items():
            x_red[m] = np.full((rows.size, v.shape[1]), np.nan, dtype=np.float32)
            x_red[m][can] = v
        del part
        log.info("luminosity: reddened copies of %d training candidates in %.1f s",
                 can.size, time.perf_counter() - t1)
    res = train_with_binary_cleaning(
        x, star_all[rows], snr_all[rows], em, usable,
        cols["MKs_geo"][rows], cols["MKs_geo_err"][rows], cols["Ks0"][rows],
        cols["Ks0_err"][rows], cols["parallax_corrected"][rows],
        cols["parallax_corrected_error"][rows], cfg,
        extra_mks=None if extra_mks is None else extra_mks[rows],
        extra_mks_err=None if extra_err is None else extra_err[rows],
        interstellar_blind=ism, g_mag=None if g_all is None else g_all[rows],
        x_reddened=x_red,
    )
    del x_red
    res.report["timing_s"]["read_inputs"] = t_read
    # the candidates' parallaxes less each network's fitted residual zero-point (the
    # calibrations below see the parallaxes the networks were trained on)
    plx_rows = cols["parallax_corrected"][rows].astype(float)
    geo_rows = cols["MKs_geo"][rows].astype(float)
    if g_all is not None:
        dz = np.where(em == 0, *(res.networks[m].parallax_zero_point_mas(g_all[rows])
                                 for m in ("a", "b")))
        geo_rows = geometric_mks_with_offset(geo_rows, plx_rows, dz)
        plx_rows = plx_rows - dz
    mdir = os.path.join(ctx.products_dir, MODEL_DIR)
    store.makedirs(mdir)
    for m, path in _model_paths(ctx.products_dir).items():
        res.networks[m].meta.update({"products": store.absolute(ctx.products_dir),
                                     "survey_seed": survey.attrs.get("seed", -1)})
        tmp = temp_name(path)
        res.networks[m].save(tmp)
        store.replace(tmp, path)
    t_cal = time.perf_counter()
    below = deshrink_level(cfg)
    for m, sel in (("a", cols["em_flag"] == 0), ("b", cols["em_flag"] != 0)):
        pivot = None
        if below is not None:  # the mean out-of-fold reading of the network's training set
            tr_m = res.sets.train_a if m == "a" else res.sets.train_b
            pivot = float(np.nanmean(res.networks[m].predict_out_of_fold(
                x[m][tr_m], star_all[rows][tr_m])[0]))
        res.noise[m].meta["sigma_s_degraded"] = calibrate_sigma_s(
            ctx, m, sel & ((cols["quality_flags"] & BROKEN_BIT) == 0), snr_all, star_all,
            res.networks[m], cfg.input_kind, seed=cfg.seed, exclude_interstellar=ism,
            pivot_mag=pivot, deshrink_below_snr=below)
    res.report["timing_s"]["sigma_s_degraded"] = time.perf_counter() - t_cal
    t_cal = time.perf_counter()
    ebv_rows = prods["ebv"].isel(spec=rows).values
    for m, sel in (("a", em == 0), ("b", em != 0)):
        k = sel & usable
        res.noise[m].meta["extra_scatter"] = calibrate_extra_scatter(
            res.networks[m], res.noise[m], x[m][k], star_all[rows][k], snr_all[rows][k],
            cols["Ks0"][rows][k], cols["Ks0_err"][rows][k], plx_rows[k],
            cols["parallax_corrected_error"][rows][k], ebv_rows[k])
    broken = (cols["quality_flags"][rows] & BROKEN_BIT) > 0
    fit = calibrate_broken_scatter(
        res.networks, res.noise, {m: v[broken] for m, v in x.items()},
        np.where(em[broken] == 0, "a", "b"), star_all[rows][broken], snr_all[rows][broken],
        ebv_rows[broken], geo_rows[broken], cols["MKs_geo_err"][rows][broken])
    for m in res.noise:
        res.noise[m].meta["broken_scatter"] = fit
    res.report["timing_s"]["extra_scatter"] = time.perf_counter() - t_cal
    # the dust response of network (a) on up to 400 usable S/N > 100 non-emission spectra
    t_cal = time.perf_counter()
    pool = rows[usable & (em == 0) & (snr_all[rows] > 100)]
    pick = np.sort(np.random.default_rng(cfg.seed).choice(pool, min(400, pool.size),
                                                          replace=False))
    res.report["dust_response_a"] = (dust_response(ctx, res.networks["a"], pick,
                                                   cfg.input_kind, ism)
                                     if pick.size else {"n": 0})
    log.info("luminosity: network (a) moves %s mag for +1 E(B-V) on the spectrum alone",
             res.report["dust_response_a"].get("median_mks_change_mag"))
    res.report["timing_s"]["dust_response"] = time.perf_counter() - t_cal
    for m, path in _noise_paths(ctx.products_dir).items():
        tmp = temp_name(path)
        res.noise[m].save(tmp)
        store.replace(tmp, path)
    # set membership, written as one product column
    sets = np.zeros(snr_all.size, dtype=np.int8)
    s = res.sets
    for name, mask in (("train_a", res.clean_train["a"]), ("train_b", res.clean_train["b"]),
                       ("test", s.test), ("extra", s.extra),
                       ("removed_binary", ((res.folds["a"] != -1) & ~res.clean_train["a"])
                        | ((res.folds["b"] != -1) & ~res.clean_train["b"]))):
        sets[rows[mask]] |= SET_BITS[name]
    n_spec = snr_all.size
    chunk = int(prods["specid"].chunks[0][0])
    ensure_outputs(ctx.products_dir, SETS_STAGE, SET_OUTPUTS, n_spec, chunk)
    write_products_block(ctx.products_dir, 0, {"luminosity_set": sets})
    mark_blocks_done(ctx.products_dir, SETS_STAGE)
    report = {**res.report, "noise": {m: r.summary() for m, r in res.noise.items()},
              "obpipe_version": __version__, "n_candidates": int(rows.size),
              "extra_training": extra_path}
    with store.open_file(os.path.join(mdir, REPORT_FILE), "w") as fh:
        json.dump(report, fh, indent=1, default=float)
    return report


def noise_sigmas(noise: dict[str, noise_model.NoiseModelResult]) -> tuple[tuple[Any, ...], ...]:
    """The ``sigmas`` argument of :func:`luminosity_block` from the fitted noise models."""
    def table(r: noise_model.NoiseModelResult) -> tuple[tuple[float, ...], ...] | None:
        t = r.sigma_s_table
        return None if t is None else (tuple(map(float, t[0])), tuple(map(float, t[1])))

    return tuple((m, r.sigma_int, r.sigma_s100, r.includes_epistemic, table(r), r.extra_terms,
                  r.attenuation_table) for m, r in noise.items())


def luminosity_block(inputs: dict[str, np.ndarray], model_paths: tuple[tuple[str, str], ...],
                     sigmas: tuple[tuple[Any, ...], ...], input_kind: str,
                     batch_size: int = 2048, products_dir: str | None = None,
                     interstellar_blind: bool | None = None) -> dict[str, np.ndarray]:
    """M_Ks, its error and the model code for one chunk of spectra (pure numpy), and the
    residual parallax zero-point its network fitted (``parallax_zp_fit``, mas, from
    ``inputs["phot_g_mean_mag"]``; 0 for a network without a fit).

    ``sigmas``: per model ``(name, sigma_int, sigma_s100[, with_spread[, table[, extra[,
    attenuation]]]])``; with_spread adds the ensemble spread to MKs_err (a noise model fitted
    with it); table, ``((S/N, ...), (sigma_s mag, ...))`` from degraded spectra, replaces
    eq. (10); extra, ``(max_mks, k[, const[, broken]])``, adds in quadrature k E(B-V) at
    M_Ks < max_mks (needs ``inputs["ebv"]``), const everywhere and broken where the spectrum
    is flagged broken (:func:`noise_model.extra_error_mag`); attenuation,
    ``(levels, b, pivot_mag, below_snr)``, de-shrinks the readings below that S/N
    (:func:`noise_model.deshrink`: the members' spread grows by the same factor).

    ``input_kind="recon_flux"``: network (a) reads ``recon_flux``; network (b) the
    clean-window reconstruction from ``pca_coeff`` and the PCA model of ``products_dir``
    (``recon_flux`` itself when ``products_dir`` is None).

    ``interstellar_blind``: whether the inputs were projected without the interstellar
    windows (:func:`products_interstellar_blind`); a network trained otherwise is an
    error (:func:`check_interstellar`). None: not checked."""
    from threadpoolctl import threadpool_limits

    em = np.asarray(inputs["em_flag"])
    snr = np.asarray(inputs["snr_g"], dtype=float)
    n = em.size
    mks = np.full(n, np.nan)
    spread = np.full(n, np.nan)
    err = np.full(n, np.nan)
    code = np.full(n, -9, dtype=np.int8)
    fold = np.full(n, -9, dtype=np.int8)
    zp_fit = np.zeros(n)
    flag = np.where((np.asarray(inputs["quality_flags"]) & BROKEN_BIT) > 0, 2, 0).astype(np.int8)
    paths = dict(model_paths)
    sig = {m: (si, s100, bool(rest[0]) if rest else False,
               rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None,
               rest[3] if len(rest) > 3 else None)
           for m, si, s100, *rest in sigmas}
    for m, rows in (("a", em == 0), ("b", em != 0)):
        if not rows.any():
            continue
        net = load_network(paths[m])
        if interstellar_blind is not None:
            check_interstellar(net, interstellar_blind, paths[m])
        if input_kind == "recon_flux":
            x = inputs["recon_flux"][rows]
            if m == "b" and products_dir is not None:
                x = clean_window_reconstruction(inputs["pca_coeff"][rows], products_dir)
        else:
            x = inputs["pca_coeff_full" if m == "a" else "pca_coeff"][rows]
        if net.fits_parallax_zero_point:
            zp_fit[rows] = net.parallax_zero_point_mas(np.asarray(inputs["phot_g_mean_mag"])[rows])
        with threadpool_limits(1):
            if "star_id" in inputs:  # out-of-fold for the stars the model trained on
                mks[rows], spread[rows], fold[rows] = net.predict_out_of_fold(
                    x, np.asarray(inputs["star_id"])[rows], batch_size=batch_size)
            else:
                mks[rows], spread[rows] = net.predict(x, batch_size=batch_size,
                                                      return_std=True)
                fold[rows] = -1
            flag[rows] |= net.input_out_of_range(x).astype(np.int8)
            flag[rows] |= np.where(fold[rows] == -2, 4, 0).astype(np.int8)
        si, s100, with_spread, table, extra, attenuation = sig[m]
        mks[rows], gain = noise_model.deshrink(mks[rows], snr[rows], attenuation)
        spread[rows] *= gain
        ebv = None
        if extra is not None:
            ebv = (np.asarray(inputs["ebv"])[rows] if "ebv" in inputs
                   else np.full(int(rows.sum()), np.nan))
        err[rows] = noise_model.total_mks_error(
            snr[rows], si, s100, spread[rows] if with_spread else None, table, extra, ebv,
            mks[rows], (flag[rows] & 2) > 0)
        code[rows] = MODEL_CODES[m]
    bad = ~np.isfinite(mks)
    err[bad] = np.nan
    code[bad] = -9
    spread[bad] = np.nan
    fold[bad] = -9
    return {"MKs": mks.astype(np.float32), "MKs_err": err.astype(np.float32),
            "MKs_spread": spread.astype(np.float32),
            "MKs_model": code, "MKs_flag": flag, "MKs_fold": fold,
            "parallax_zp_fit": zp_fit.astype(np.float32)}


def run(ctx: RunContext) -> dict[str, Any]:
    """Train (unless the model files exist), calibrate, then infer M_Ks over the cube."""
    cfg, extra = _config(ctx)
    force = force_requested(ctx)
    paths = _model_paths(ctx.products_dir)
    npaths = _noise_paths(ctx.products_dir)
    report: dict[str, Any] = {}
    have = all(store.exists(p) for p in (*paths.values(), *npaths.values()))
    # --force reruns inference; it retrains only networks this run trained itself, never
    # the ones supplied with --models (as the pca stage keeps a supplied basis)
    retrain = force and not getattr(ctx, "models_supplied", False)
    if retrain or not have:
        report["training"] = train_from_products(ctx, cfg, extra["extra_training"])
    noise = {m: noise_model.NoiseModelResult.load(p) for m, p in npaths.items()}
    sigmas = noise_sigmas(noise)
    input_kind = load_network(paths["a"]).input_kind
    fits_zp = any(load_network(p).fits_parallax_zero_point for p in paths.values())
    blind = products_interstellar_blind(open_products(ctx.products_dir))
    for p in paths.values():  # before any block: a clear error, not one per block
        check_interstellar(load_network(p), blind, p)
    pvars: tuple[str, ...] = ("em_flag", "quality_flags", "ebv") + (
        ("recon_flux", "pca_coeff") if input_kind == "recon_flux" else
        ("pca_coeff", "pca_coeff_full"))
    t0 = time.perf_counter()
    result = run_blockwise_stage(
        ctx.survey_path, ctx.products_dir, STAGE,
        functools.partial(luminosity_block, model_paths=tuple(sorted(paths.items())),
                          sigmas=sigmas, input_kind=input_kind,
                          products_dir=store.absolute(ctx.products_dir),
                          interstellar_blind=blind),
        OUTPUTS, survey_vars=("snr_g", "star_id") + (("phot_g_mean_mag",) if fits_zp else ()),
        product_vars=pvars, scheduler=ctx.scheduler,
        force=force,
    )
    result["inference_seconds"] = time.perf_counter() - t0
    # on the MKs_err array itself: root attributes are rewritten when a later stage adds
    # variables (products.ensure_outputs), variable attributes are not
    grp = zarr.open_group(products_path(ctx.products_dir), mode="r+",
                          zarr_format=store.ZARR_FORMAT)
    grp["MKs_err"].attrs.update({f"noise_{m}_{k}": float(v) for m, r in noise.items()
                                 for k, v in r.mean.items()})
    grp["MKs_err"].attrs.update({f"noise_{m}_epistemic_spread": r.includes_epistemic
                                 for m, r in noise.items()})
    grp["MKs_err"].attrs.update({f"noise_{m}_sigma_s_degraded": r.meta["sigma_s_degraded"]
                                 for m, r in noise.items() if r.sigma_s_table is not None})
    grp["MKs_err"].attrs.update({f"noise_{m}_extra_scatter": r.meta["extra_scatter"]
                                 for m, r in noise.items() if r.meta.get("extra_scatter")})
    grp["MKs_err"].attrs.update({f"noise_{m}_broken_scatter": r.meta["broken_scatter"]
                                 for m, r in noise.items() if r.meta.get("broken_scatter")})
    return {**result, "noise": {m: r.mean for m, r in noise.items()},
            "training_seconds": report.get("training", {}).get("timing_s", {})}


def is_complete(ctx: RunContext) -> bool:
    return stage_complete(ctx.products_dir, STAGE)


#: the stage's block function (one chunk of rows)
block = luminosity_block
