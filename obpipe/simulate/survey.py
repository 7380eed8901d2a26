"""The mock LAMOST OB survey: population -> visits -> spectra, written block by block.

Determinism: the star and visit tables (small: ~100 bytes a spectrum) are drawn
once from ``numpy.random.default_rng(seed)``; every spectrum's pixel noise comes
from its own generator seeded by ``(seed, specid)``. A block's content therefore
depends only on the rows it holds, never on the chunking or the scheduler
(threads, processes or a ``distributed`` cluster give byte-identical arrays).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Callable
from typing import Any

import dask
import numpy as np

from obpipe.io import store
from obpipe.io.tables import star_identifier, uniqflag_by_snr
from obpipe.options import to_json
from obpipe.simulate import sed, sky, spectra, stars
from obpipe.simulate.options import SimulationConfig
from obpipe.spectra.grid import SPEED_OF_LIGHT_KMS, velocity_per_pixel_kms, wavelength_grid
from obpipe.version import __version__

log = logging.getLogger(__name__)

#: rows synthesised at once inside a block (bounds the float64 temporaries to ~10 MB each)
SUB_BATCH = 250
BROKEN_KINDS = ("flux_jump", "dead_segment", "wavelength_shift", "spikes")
FIRST_SPECID = 200_000_001

#: truth columns of the real sky's systematics (issue 15, item 3), beside
#: ``store.TRUTH_COLUMNS``
MOCK_TRUTH_COLUMNS: dict[str, store.Column] = {
    "R_V_true": store.Column("float32", "", "R_V = A_V / E(B-V) of the sight line"),
    "parallax_error_true": store.Column(
        "float32", "mas", "true parallax scatter (published external-error relation of "
        "the release, x RUWE for wobbling binaries); parallax_error is what Gaia quotes"),
    "parallax_zp_true": store.Column(
        "float32", "mas", "injected parallax zero-point Z (parallax = true + Z, the sign "
        "of parallax_offset); same values as parallax_zero_point_mas"),
    "ivar_scale_true": store.Column(
        "float32", "", "true noise sigma / quoted sigma (1/sqrt(ivar)) of this exposure"),
    "plate_id": store.Column("int32", "", "plate (and night) of the exposure"),
    "plate_rv_offset_true": store.Column(
        "float32", "km / s", "RV zero-point offset of the plate (in rv, not in rv_true)"),
    "orbital_period_days_true": store.Column(
        "float32", "d", "orbital period of a binary (NaN for single stars)"),
    "is_supergiant": store.Column("bool", "", "B/A supergiant or bright giant (log g 1.5-3)"),
}


def build_tables(cfg: SimulationConfig) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                                                 dict[str, np.ndarray]]:
    """Draw the whole survey's tables: (observed per-spectrum, truth, synthesis params).

    All three have one row per spectrum, in cube order.
    """
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    pop = stars.sample_population(cfg, rng)
    place = sky.place_stars(pop, cfg, rng)
    n_star = cfg.n_stars
    true_mag, obs_mag, err_mag = sky.observe_photometry(
        place["abs_mag"], place["distance_kpc"], place["ebv"], pop["teff"], place["r_v"],
        cfg, rng,
    )
    parallax_true = 1.0 / place["distance_kpc"]
    astro = sky.observe_astrometry(
        parallax_true, true_mag["G"], true_mag["BP"] - true_mag["RP"], place["ra"],
        place["dec"], pop["is_binary"], cfg, rng,
    )
    gaia_id = rng.choice(2**62, size=n_star, replace=False).astype(np.int64)
    systemic_rv = rng.normal(0.0, cfg.rv_dispersion_kms, n_star)
    star_ids = star_identifier(place["ra"], place["dec"])

    # --- visits ---
    n_visits = 1 + rng.poisson(cfg.mean_visits - 1.0, n_star)
    star_index = np.repeat(np.arange(n_star), n_visits)
    visit = (np.arange(star_index.size) - np.repeat(np.cumsum(n_visits) - n_visits, n_visits))
    order = rng.permutation(star_index.size)
    star_index, visit = star_index[order], visit[order].astype(np.int16)
    n_spec = star_index.size
    s = star_index

    g_true = true_mag["G"][s]
    snr = cfg.snr_at_g14 * 10.0 ** (-0.2 * (g_true - 14.0)) / np.sqrt(
        1.0 + 10.0 ** (0.4 * (g_true - 16.5))
    )
    snr *= 10.0 ** rng.normal(0.0, cfg.snr_conditions_dex, n_spec)
    snr = np.clip(snr, cfg.snr_min, cfg.snr_max)
    # plates: the rows are in random order, so consecutive rows make a plate; a plate is
    # one night (MJD + a fraction of the night) and has its own RV zero-point offset
    plate = (np.arange(n_spec) // cfg.spectra_per_plate).astype(np.int32)
    n_plate = int(plate.max()) + 1
    plate_mjd = rng.integers(55_900, 59_300, n_plate).astype(np.int32)
    plate_time = plate_mjd + rng.uniform(0.55, 0.85, n_plate)
    plate_rv = rng.normal(0.0, cfg.plate_rv_offset_kms, n_plate)
    # binaries: the orbital phase of each visit from its date (circular orbits)
    period = np.nan_to_num(pop["orbital_period_days"][s], nan=1.0)
    phase = 2.0 * np.pi * (plate_time[plate] / period + pop["orbital_phase0"][s])
    q = pop["mass_ratio"][s]
    k_rel = pop["k_rel_kms"][s]
    v_primary = k_rel * q / (1.0 + q) * np.sin(phase)
    rv_true = systemic_rv[s] + v_primary
    rv_err = np.clip(cfg.rv_error_at_snr50_kms * 50.0 / snr, 1.5, 60.0) * (
        1.0 + pop["vsini"][s] / 200.0
    )
    rv_meas = rv_true + plate_rv[plate] + rng.normal(0.0, 1.0, n_spec) * rv_err
    # true / quoted noise of each exposure (LAMOST's ivar is mis-scaled)
    ivar_scale = np.clip(cfg.ivar_scale_median * np.exp(
        rng.normal(0.0, cfg.ivar_scale_sigma_ln, n_spec)), 0.8, 1.3)
    secondary_offset = -k_rel * np.sin(phase)  # velocity of the secondary relative to primary

    em_var = np.where(pop["emission_type"][s] == "be_disc", rng.uniform(0.7, 1.3, n_spec), 1.0)
    halpha_ew = pop["halpha_ew"][s] * em_var
    broken = rng.random(n_spec) < cfg.broken_fraction
    broken_kind = np.where(broken, np.asarray(BROKEN_KINDS, dtype=object)[
        rng.integers(0, len(BROKEN_KINDS), n_spec)], "none").astype(object)

    # survey stellar parameters (per visit), degraded by S/N and with pipeline systematics
    teff_t, logg_t, feh_t = pop["teff"][s], pop["logg"][s], pop["feh"][s]
    teff_err = teff_t * (0.03 + 1.5 / snr)
    logg_err = 0.12 + 4.0 / snr
    feh_err = 0.15 + 5.0 / snr
    teff_obs = teff_t * (1.0 - 0.04 * np.clip((teff_t - 30000.0) / 15000.0, 0, 1)) + rng.normal(
        0.0, 1.0, n_spec) * teff_err
    logg_obs = logg_t + rng.normal(0.0, 1.0, n_spec) * logg_err
    feh_obs = feh_t + rng.normal(0.0, 1.0, n_spec) * feh_err
    failed = rng.random(n_spec) < 0.02
    for arr in (teff_obs, logg_obs, feh_obs, teff_err, logg_err, feh_err):
        arr[failed] = np.nan

    specid = FIRST_SPECID + np.arange(n_spec, dtype=np.int64)
    mjd = plate_mjd[plate]
    fibre = np.arange(n_spec) % cfg.spectra_per_plate
    observed: dict[str, np.ndarray] = {
        "specid": specid,
        "fitsname": np.array([f"spec-{m}-MOCK{p:04d}_sp{f // 250 + 1:02d}-{f % 250 + 1:03d}"
                              ".fits" for m, p, f in zip(mjd, plate, fibre, strict=True)],
                             dtype=object),
        "star_id": star_ids[s],
        "uniqflag": uniqflag_by_snr(s, snr),
        "ra": place["ra"][s],
        "dec": place["dec"][s],
        "mjd": mjd,
        "rv": rv_meas,
        "rv_err": rv_err,
        "teff": teff_obs, "teff_err": teff_err,
        "logg": logg_obs, "logg_err": logg_err,
        "feh": feh_obs, "feh_err": feh_err,
        "gaia_id": gaia_id[s],
        "gaia_release": np.full(n_spec, cfg.gaia_release.upper(), dtype=object),
    }
    for key in ("parallax", "parallax_error", "pmra", "pmra_error", "pmdec", "pmdec_error",
                "ruwe", "astrometric_params_solved", "nu_eff_used_in_astrometry",
                "pseudocolour", "ecl_lat"):
        observed[key] = astro[key][s]
    for band, col in sky.BAND_COLUMNS.items():
        observed[col] = obs_mag[band][s]
        observed[f"{col}_error" if col.startswith("phot_") else f"{col}_err"] = err_mag[band][s]

    truth: dict[str, np.ndarray] = {
        "specid": specid,
        "star_index": s.astype(np.int64),
        "visit": visit,
        "star_class": pop["star_class"][s],
        "is_evolved": pop["is_evolved"][s],
        "mass_msun": pop["mass_msun"][s],
        "teff_true": teff_t,
        "logg_true": logg_t,
        "feh_true": feh_t,
        "log_lum_true": pop["log_lum"][s],
        "vsini_true": pop["vsini"][s],
        "MKs_true": pop["MKs"][s],
        "MKs_system_true": pop["MKs_system"][s],
        "Ks_disc_excess_true": pop["disc_ks_excess"][s],
        "distance_kpc_true": place["distance_kpc"][s],
        "parallax_mas_true": parallax_true[s],
        "parallax_zero_point_mas": astro["parallax_zero_point_mas"][s],
        "parallax_zp_true": astro["parallax_zero_point_mas"][s],
        "parallax_error_true": astro["parallax_error_true"][s],
        "ebv_true": place["ebv"][s],
        "R_V_true": place["r_v"][s],
        "AKs_true": true_mag["A_Ks"][s],
        "is_binary": pop["is_binary"][s],
        "mass_ratio": q,
        "teff_secondary_true": pop["teff2"][s],
        "MKs_secondary_true": pop["MKs2"][s],
        "rv_true": rv_true,
        "has_emission": pop["has_emission"][s],
        "emission_type": pop["emission_type"][s],
        "halpha_ew_true": halpha_ew,
        "is_broken": broken,
        "broken_kind": broken_kind,
        "snr_true": snr,
        "ivar_scale_true": ivar_scale,
        "plate_id": plate,
        "plate_rv_offset_true": plate_rv[plate],
        "orbital_period_days_true": pop["orbital_period_days"][s],
        "is_supergiant": pop["is_supergiant"][s],
    }
    synth: dict[str, np.ndarray] = {
        "specid": specid,
        "teff": teff_t, "logg": logg_t, "feh": feh_t, "vsini": pop["vsini"][s],
        "teff2": pop["teff2"][s], "logg2": pop["logg2"][s], "vsini2": pop["vsini2"][s],
        "is_binary": pop["is_binary"][s],
        "g_flux_ratio2": np.where(
            pop["is_binary"][s],
            10.0 ** (-0.4 * (_abs_g(pop["teff2"], pop["logg2"], pop["log_lum2"])
                             - _abs_g(pop["teff"], pop["logg"], pop["log_lum"])))[s], 0.0),
        "rv_residual_kms": rv_true - rv_meas,
        "secondary_offset_kms": secondary_offset,
        "ism_velocity_kms": -rv_meas + rng.normal(0.0, 8.0, n_spec),
        "rv_meas": rv_meas,
        "ebv": place["ebv"][s],
        "ism_ebv": place["ebv"][s] * float(cfg.ism_absorption),
        "r_v": place["r_v"][s],
        "ivar_scale": ivar_scale,
        "g_mag_true": true_mag["g"][s],
        "snr": snr,
        "emission_type": pop["emission_type"][s],
        "halpha_ew": halpha_ew,
        "telluric_residual": rng.uniform(0.02, 0.45, n_spec),
        "calib_c1": rng.normal(0.0, 0.04, n_spec),
        "calib_c2": rng.normal(0.0, 0.03, n_spec),
        "broken_kind": broken_kind,
    }
    return observed, truth, synth


def _abs_g(teff: np.ndarray, logg: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    t = np.nan_to_num(teff, nan=20000.0)
    lum = np.nan_to_num(log_l, nan=-10.0)
    return sed.absolute_magnitudes(t, lum)["g"]


def synthesize_spectra(
    synth: dict[str, np.ndarray], seed: int, resolving_power: float = 1800.0,
    extinction_law: str = "F19", noise_neighbour_correlation: float = 0.0,
) -> dict[str, np.ndarray]:
    """Observed flux, ivar, mask and snr_g for the rows of ``synth`` (pure numpy).

    The continuum is reddened by ``extinction_law`` at each row's R_V (``synth["r_v"]``,
    3.1 if absent); the pixel noise is ``synth["ivar_scale"]`` (1 if absent) times the
    quoted sigma, correlated between neighbouring pixels with coefficient
    ``noise_neighbour_correlation`` (a 3-tap kernel [c, 1, c] / sqrt(1 + 2 c^2) on white
    noise: rho = 2c / (1 + 2c^2), the per-pixel variance unchanged), as LAMOST's
    resampling onto the log-lambda grid does."""
    wave = wavelength_grid()
    n = synth["specid"].size
    out = {
        "flux": np.empty((n, wave.size), np.float32),
        "ivar": np.empty((n, wave.size), np.float32),
        "mask": np.zeros((n, wave.size), np.uint8),
        "snr_g": np.empty(n, np.float32),
    }
    for lo in range(0, n, SUB_BATCH):
        sl = slice(lo, min(lo + SUB_BATCH, n))
        part = {k: v[sl] for k, v in synth.items()}
        f, iv, m, sg = _synthesize_batch(part, wave, seed, resolving_power, extinction_law,
                                         noise_neighbour_correlation)
        out["flux"][sl], out["ivar"][sl], out["mask"][sl], out["snr_g"][sl] = f, iv, m, sg
    return out


def _neighbour_kernel_c(rho: float) -> float:
    """c of the kernel [c, 1, c] whose filtered white noise has lag-1 correlation rho."""
    if rho <= 0.0:
        return 0.0
    return float((1.0 - np.sqrt(1.0 - 2.0 * rho**2)) / (2.0 * rho))


def _synthesize_batch(
    p: dict[str, np.ndarray], wave: np.ndarray, seed: int, resolving_power: float,
    extinction_law: str = "F19", noise_neighbour_correlation: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = p["specid"].size
    vpix = velocity_per_pixel_kms()
    norm1 = spectra.normalized_spectrum(
        wave, p["teff"], p["logg"], p["feh"], p["vsini"], resolving_power,
        shift_px=p["rv_residual_kms"] / vpix,
    )
    shape1 = spectra.planck_shape(wave, p["teff"])
    shape = shape1.copy()
    norm = norm1
    binary = p["is_binary"].astype(bool)
    if binary.any():
        b = np.flatnonzero(binary)
        norm2 = spectra.normalized_spectrum(
            wave, p["teff2"][b], p["logg2"][b], p["feh"][b], p["vsini2"][b], resolving_power,
            shift_px=(p["rv_residual_kms"][b] + p["secondary_offset_kms"][b]) / vpix,
        )
        shape2 = spectra.planck_shape(wave, p["teff2"][b]) * p["g_flux_ratio2"][b][:, None]
        norm = norm1.copy()
        norm[b] = (shape1[b] * norm1[b] + shape2 * norm2) / (shape1[b] + shape2)
        shape[b] = (shape1[b] + shape2) / (1.0 + p["g_flux_ratio2"][b][:, None])
    norm = norm + spectra.emission_spectrum(
        wave, p["emission_type"], p["halpha_ew"], p["vsini"], p["ism_velocity_kms"],
        resolving_power,
    )
    ism_ebv = p["ism_ebv"] if "ism_ebv" in p else p["ebv"]
    norm *= spectra.ism_transmission(wave, ism_ebv, p["ism_velocity_kms"], resolving_power)
    norm *= spectra.telluric_transmission(wave, p["rv_meas"], p["telluric_residual"])

    r_v = p["r_v"] if "r_v" in p else np.full(n, 3.1)
    ext = sed.extinction_curve_per_ebv(r_v, extinction_law)
    i4700 = int(np.searchsorted(wave, 4700.0))
    redden = 10.0 ** (-0.4 * (ext - ext[:, i4700 : i4700 + 1]) * p["ebv"][:, None])
    # AB g magnitude -> F_lambda at 4,700 AA, in 1e-17 erg/s/cm2/AA
    g = np.nan_to_num(p["g_mag_true"], nan=16.0)
    f4700 = 10.0 ** (-0.4 * (g + 48.60)) * 2.99792458e18 / 4700.0**2 * 1e17
    x = (wave - 6400.0) / 2700.0
    calib = 1.0 + p["calib_c1"][:, None] * x[None, :] + p["calib_c2"][:, None] * (x**2)[None, :]
    continuum = f4700[:, None] * shape * redden * np.clip(calib, 0.3, None)
    flux_true = continuum * norm

    tp = spectra.throughput(wave)
    snr_pix = p["snr"][:, None] * tp[None, :]
    sigma = continuum * np.sqrt(np.clip(norm, 0.05, None)) / snr_pix

    flux = np.empty((n, wave.size), np.float32)
    ivar = np.empty((n, wave.size), np.float32)
    mask = np.zeros((n, wave.size), np.uint8)
    sky_px = spectra.SKY_LINES
    c = _neighbour_kernel_c(noise_neighbour_correlation)
    kernel = np.array([c, 1.0, c]) / np.sqrt(1.0 + 2.0 * c * c)
    scale = p["ivar_scale"] if "ivar_scale" in p else np.ones(n)
    for j in range(n):
        rng = np.random.default_rng([seed, 7, int(p["specid"][j])])
        sig = sigma[j].copy()
        white = rng.standard_normal(wave.size + 2)
        noise = np.convolve(white, kernel, mode="valid") if c > 0 else white[1:-1]
        f = flux_true[j] + noise * sig * scale[j]
        m = np.zeros(wave.size, np.uint8)
        # sky-line residuals (observed frame)
        for lam in sky_px:
            c = lam / (1.0 + p["rv_meas"][j] / SPEED_OF_LIGHT_KMS)
            i = int(np.searchsorted(wave, c))
            if 1 <= i < wave.size - 1:
                extra = 3.0 * sig[i - 1 : i + 2]
                f[i - 1 : i + 2] += rng.standard_normal(3) * extra
                sig[i - 1 : i + 2] = np.hypot(sig[i - 1 : i + 2], extra)
                m[i - 1 : i + 2] |= store.MASK_BITS["sky_residual"]
        iv = 1.0 / sig**2
        # bad pixels flagged by the reduction
        bad = rng.choice(wave.size, size=rng.poisson(3), replace=False)
        f[bad] = rng.normal(0.0, 5.0, bad.size) * continuum[j, bad]
        iv[bad] = 0.0
        m[bad] |= store.MASK_BITS["bad_pixel"]
        # partial coverage at the ends
        n_lo, n_hi = rng.integers(0, 4), rng.integers(0, 6)
        for edge in (slice(0, n_lo), slice(wave.size - n_hi, wave.size)):
            f[edge], iv[edge] = 0.0, 0.0
            m[edge] |= store.MASK_BITS["no_coverage"]
        kind = p["broken_kind"][j]
        if kind != "none":
            f, iv = _break_spectrum(kind, wave, f, iv, continuum[j], rng)
        flux[j], ivar[j], mask[j] = f, iv, m
    band = (wave > 4000.0) & (wave < 5500.0)
    with np.errstate(invalid="ignore"):
        snr_g = np.nanmedian(np.where(ivar[:, band] > 0, flux[:, band] * np.sqrt(ivar[:, band]),
                                      np.nan), axis=1)
    return flux, ivar, mask, snr_g.astype(np.float32)


def _break_spectrum(
    kind: str, wave: np.ndarray, f: np.ndarray, iv: np.ndarray, cont: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one of the artefacts of Appendix A / Fig. 15 of the paper."""
    red = wave > spectra.ARM_SPLIT_AA
    if kind == "flux_jump":
        factor = rng.choice([rng.uniform(0.25, 0.6), rng.uniform(1.7, 3.0)])
        f = np.where(red, f * factor, f)
        iv = np.where(red, iv / factor**2, iv)
    elif kind == "dead_segment":
        length = int(rng.integers(150, 800))
        start = int(rng.integers(0, wave.size - length))
        seg = slice(start, start + length)
        f[seg] = rng.normal(0.0, 0.02, length) * cont[seg]
    elif kind == "wavelength_shift":
        shift = int(rng.choice([-1, 1]) * rng.integers(4, 16))
        blue = np.flatnonzero(~red)
        f[blue] = np.roll(f[blue], shift)
    elif kind == "spikes":
        idx = rng.choice(wave.size, size=int(rng.integers(20, 80)), replace=False)
        f[idx] += rng.uniform(2.0, 10.0, idx.size) * cont[idx]
    return f, iv


def _simulate_block(
    path: str,
    start: int,
    observed: dict[str, np.ndarray],
    truth: dict[str, np.ndarray],
    synth: dict[str, np.ndarray],
    seed: int,
    resolving_power: float,
    storage_options: dict[str, Any] | None,
    extinction_law: str = "F19",
    noise_neighbour_correlation: float = 0.0,
) -> int:
    spec = synthesize_spectra(synth, seed, resolving_power, extinction_law,
                              noise_neighbour_correlation)
    block = dict(observed)
    block.update(spec)
    store.write_block(path, start, block, storage_options=storage_options)
    store.write_block(path, start, truth, group=store.TRUTH_GROUP,
                      storage_options=storage_options)
    return int(synth["specid"].size)


def _check_output_path(path: str, overwrite: bool) -> None:
    if store.is_url(path):
        return
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{parent}: output directory is not writable")


def simulate_survey(
    path: str,
    cfg: SimulationConfig | None = None,
    overwrite: bool = False,
    scheduler: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Simulate a survey and write it as a cube at ``path``; returns a summary dict.

    ``scheduler``: a dask scheduler name ("threads", "processes", "synchronous")
    or None for the current default (a ``distributed.Client`` if one is active).
    """
    cfg = cfg or SimulationConfig()
    cfg.validate()
    _check_output_path(path, overwrite)
    observed, truth, synth = build_tables(cfg)
    n_spec = observed["specid"].size
    chunk = cfg.chunk_size
    attrs = {
        "title": "obpipe mock LAMOST OB survey",
        "obpipe_version": __version__,
        "producer": "obpipe simulate",
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "simulation_config": to_json(cfg),
        "seed": int(cfg.seed),
        "n_stars": int(cfg.n_stars),
        "resolving_power": float(cfg.resolving_power),
        "flux_unit": store.FLUX_UNIT,
        "wavelength_frame": "vacuum, rest frame (shifted by rv)",
    }
    if not store.is_url(path) and overwrite and os.path.exists(path):
        import shutil

        shutil.rmtree(path)
    store.create_cube(path, n_spec, chunk, attrs=attrs,
                      truth_columns={**store.TRUTH_COLUMNS, **MOCK_TRUTH_COLUMNS},
                      overwrite=overwrite, storage_options=storage_options)
    tasks = []
    for start in range(0, n_spec, chunk):
        sl = slice(start, min(start + chunk, n_spec))
        tasks.append(
            dask.delayed(_simulate_block)(
                path, start,
                {k: v[sl] for k, v in observed.items()},
                {k: v[sl] for k, v in truth.items()},
                {k: v[sl] for k, v in synth.items()},
                cfg.seed, cfg.resolving_power, storage_options, cfg.extinction_law,
                cfg.noise_neighbour_correlation,
            )
        )
    kwargs = {"scheduler": scheduler} if scheduler else {}
    done = dask.compute(*tasks, **kwargs)
    if progress:
        progress(sum(done), n_spec)
    store.mark_complete(path, storage_options)
    log.info("simulated %d spectra of %d stars into %s", n_spec, cfg.n_stars, path)
    return {"path": path, "n_stars": cfg.n_stars, "n_spectra": int(n_spec),
            "n_blocks": len(tasks), "chunk_size": chunk}
