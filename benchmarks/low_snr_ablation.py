"""What makes low-S/N spectra read bright? An ablation with fixed networks (issue 15 item 2).

The control mock has the pipeline's own extinction law (G23) and parallax zero-point, so
its training targets carry no law / zero-point bias; on it, never-trained single
non-emission OB stars still read 0.27-0.37 mag bright at S/N 5-50. Each *variant* is the
same survey (same seed, hence the same stars, visits, S/N and star ids) with one of the
mock's systematics switched off, so that only the spectra's noise and artefacts differ;
each is run **with the control run's models** (``obpipe run --models``: the same PCA
bases, networks and noise models, inference only), and the run's M_Ks of each star is
compared with the truth and, paired, with the control run's M_Ks of the same spectrum.
Pipeline-side variants run the control survey itself with another ``[spectral]`` option.

Groups: "never trained" and "out-of-fold" are the control run's own (``MKs_fold`` of its
products: -1 = no member trained on the star, >= 0 = the member that never saw it); the
variant runs use the same models and star ids, hence the same held-out member for every
star (checked: the script stops if a variant's ``MKs_fold`` differs from the control's).
S/N bins are the control survey's ``snr_g`` for every variant (the same spectra in the same
bins; a variant's own S/N differs by its noise). Rows: single non-emission OB stars
(truth).

Usage::

    # once: the control mock and its full run (trains the networks)
    python -c "from obpipe.config import SimulationConfig as C; \
from obpipe.simulate.survey import simulate_survey as s; \
s('g23zp.zarr', C(seed=2026, extinction_law='G23', parallax_zp_variations=False))"
    obpipe run g23zp.zarr --out base   # docs/validation.md's table: at 5eeb1bd; since 60cb45e
    # the projection is interstellar-blind by default: add --config T (and --config T below),
    # T = "[spectral]\nexclude_interstellar_lines = false\n", for that table's control
    # each variant: its mock, an inference-only run with the control's models, the table
    python benchmarks/low_snr_ablation.py make white_noise --dir WORK
    python benchmarks/low_snr_ablation.py run white_noise --dir WORK --models base
    python benchmarks/low_snr_ablation.py score g23zp.zarr base white_noise=WORK/white_noise
    # or all of them in turn (each variant mock is deleted after its run unless --keep)
    python benchmarks/low_snr_ablation.py all --dir WORK --control g23zp.zarr --models base
    # the never-trained stars of an S/N bin re-synthesised with one change at a time, and
    # the network's response to a rest-frame shift
    python benchmarks/low_snr_ablation.py resynth g23zp.zarr base --snr 5 20
    # any other mock that records its simulation_config (e.g. a zero-point-exact copy of
    # the default mock); the continuum is fitted as the run's [spectral]
    # continuum_excludes_interstellar says (--continuum-exclude forces it)
    python benchmarks/low_snr_ablation.py resynth s29zp.zarr P --snr 20 50
    # an oracle: the mock's spectra dereddened with its true E(B-V) before anything else
    # (then e.g. benchmarks/realisations.py on a work directory of such copies)
    python benchmarks/low_snr_ablation.py deredden s29zp.zarr W/survey-2029.zarr
    # the rest frame refined against the PCA reconstruction ([spectral] refine_rv): the
    # refined RV against the mock's true RV per S/N bin, and M_Ks of the stars that neither
    # run trained on, same stars, against a baseline run of the same survey
    python benchmarks/low_snr_ablation.py rv g23zp.zarr RUN --baseline base
    # its own effect, without retraining: a baseline run's networks on its spectra refined
    python benchmarks/low_snr_ablation.py rv-fixed g23zp.zarr base [--shrink]
    # its cost: the pca stage's block on N rows of a run's products, off and on, CPU s
    python benchmarks/low_snr_ablation.py rv-cost g23zp.zarr RUN -n 4000 --repeat 2

``score`` arguments after the control products are NAME=PRODUCTS (the survey is
``PRODUCTS.zarr`` next to them, or the control survey for a pipeline-side variant).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import zarr

log = logging.getLogger("low_snr_ablation")

SNR_BINS = ((5, 20), (20, 50), (50, 100), (100, np.inf))
#: the control mock: the pipeline's own extinction law and parallax zero-point
CONTROL = {"seed": 2026, "extinction_law": "G23", "parallax_zp_variations": False}
#: mock-side variants: SimulationConfig overrides of the control (one systematic off each),
#: and the names of patches of the mock's synthesis (``_patched``) for those without a switch
MOCK_VARIANTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    # the spectra are shifted by the RV measurement error (8 km/s x 50 / (S/N), clipped to
    # 1.5-60 km/s, x (1 + v sin i / 200)) and by the plate's RV zero-point (3 km/s rms)
    "no_rv_error": ({"rv_error_at_snr50_kms": 0.0, "plate_rv_offset_kms": 0.0}, ()),
    "white_noise": ({"noise_neighbour_correlation": 0.0}, ()),
    "exact_ivar": ({"ivar_scale_median": 1.0, "ivar_scale_sigma_ln": 0.0}, ()),
    "no_sky_telluric": ({}, ("sky", "telluric")),
    "no_ism": ({"ism_absorption": False}, ()),
    # all of the noise and instrument systematics above off at once (interstellar lines on)
    "clean_noise": ({"rv_error_at_snr50_kms": 0.0, "plate_rv_offset_kms": 0.0,
                     "noise_neighbour_correlation": 0.0, "ivar_scale_median": 1.0,
                     "ivar_scale_sigma_ln": 0.0}, ("sky", "telluric")),
}
#: pipeline-side variants: TOML of ``obpipe run --config`` on the control survey
PIPELINE_VARIANTS: dict[str, str] = {
    "no_prior": "[spectral]\nprojection_prior = false\n",
}
INFERENCE_STAGES = "index,normalize,pca,emission,photometry,luminosity"
#: (spec, wave) and (spec, K) products of a variant run, deleted once it is done
BULKY_PRODUCTS = ("norm_flux", "norm_ivar", "recon_flux", "pca_coeff", "pca_coeff_full")


@contextmanager
def _patched(names: tuple[str, ...]) -> Iterator[None]:
    """Switch off mock artefacts that have no option: sky-line residuals, telluric bands.

    Diagnostic only (the mock's own module attributes, restored on exit). Without sky lines
    the per-spectrum random stream after them shifts (fewer draws), so the bad pixels and
    edges of a spectrum differ from the control's; the stars and S/N do not."""
    from obpipe.simulate import spectra

    saved = {"sky": spectra.SKY_LINES, "telluric": spectra.telluric_transmission}
    try:
        if "sky" in names:
            spectra.SKY_LINES = ()
        if "telluric" in names:
            spectra.telluric_transmission = (
                lambda wave, rv_kms, residual: np.ones((np.size(rv_kms), np.size(wave))))
        yield
    finally:
        spectra.SKY_LINES = saved["sky"]
        spectra.telluric_transmission = saved["telluric"]


def make_variant(name: str, work: Path) -> Path:
    """Simulate the variant mock WORK/NAME.zarr (threads: the patches stay in-process)."""
    from obpipe.config import SimulationConfig
    from obpipe.simulate.survey import simulate_survey

    overrides, patches = MOCK_VARIANTS[name]
    path = work / f"{name}.zarr"
    with _patched(patches):
        simulate_survey(str(path), SimulationConfig(**CONTROL, **overrides), overwrite=True,
                        scheduler="threads")
    return path


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else json.dumps(v)
    return "".join(f"[{sec}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in kv.items()) + "\n"
                   for sec, kv in sections.items())


def run_variant(name: str, work: Path, models: Path, control: Path | None,
                config: Path | None = None) -> Path:
    """``obpipe run`` of a variant with the control run's models, up to the luminosity
    stage; a pipeline-side variant runs on the control survey with its TOML. ``config``:
    the control run's own TOML (e.g. ``[spectral] exclude_interstellar_lines = false`` for a
    control trained so), given to every variant run (a pipeline variant's options on top)."""
    import tomllib

    out = work / name
    cmd = [str(Path(sys.executable).parent / "obpipe"), "run"]
    sections: dict[str, dict[str, Any]] = tomllib.loads(config.read_text()) if config else {}
    if name in PIPELINE_VARIANTS:
        if control is None:
            raise SystemExit(f"{name}: a pipeline-side variant needs --control SURVEY")
        for sec, kv in tomllib.loads(PIPELINE_VARIANTS[name]).items():
            sections.setdefault(sec, {}).update(kv)
        cmd += [str(control)]
    else:
        cmd += [str(work / f"{name}.zarr")]
    if sections:
        toml = work / f"{name}.toml"
        toml.write_text(_toml(sections))
        cmd += ["--config", str(toml)]
    cmd += ["--out", str(out), "--models", str(models), "--stages", INFERENCE_STAGES, "-q"]
    log.info("%s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    for name_ in BULKY_PRODUCTS:  # 0.85 GB a run: the scores need the per-spectrum values only
        shutil.rmtree(out / "products.zarr" / name_, ignore_errors=True)
    return out


def _read(path: str | Path, group: str | None, names: list[str]) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    g = root[group] if group else root
    return {n: np.asarray(g[n][...]) for n in names if n in g}


def _products(products: Path, specid: np.ndarray) -> dict[str, np.ndarray]:
    """MKs and MKs_fold of the products, in the survey's specid order."""
    p = _read(products / "products.zarr", None, ["specid", "MKs", "MKs_fold"])
    order = {int(s): i for i, s in enumerate(p["specid"])}
    try:
        idx = np.array([order[int(s)] for s in specid])
    except KeyError as exc:
        raise SystemExit(f"{products}: no product row for specid {exc}") from None
    mks = p["MKs"][idx].astype(float)
    mks[mks <= -9] = np.nan
    return {"MKs": mks, "MKs_fold": p["MKs_fold"][idx].astype(int)}


def _control(control: Path, control_products: Path) -> dict[str, Any]:
    """What every variant is compared with: the control survey's rows, S/N, truth and run."""
    obs = _read(control, None, ["specid", "snr_g"])
    t = _read(control, "truth", ["star_class", "is_binary", "has_emission", "MKs_true"])
    cls = np.array(t["star_class"].tolist(), dtype=object).astype(str)
    base = _products(control_products, obs["specid"])
    return {"survey": control, "specid": obs["specid"], "snr": obs["snr_g"].astype(float),
            "MKs_true": t["MKs_true"].astype(float), "base": base,
            "rows": (cls == "OB") & ~t["is_binary"].astype(bool)
            & ~t["has_emission"].astype(bool),
            "groups": {"never_trained": base["MKs_fold"] == -1,
                       "out_of_fold": base["MKs_fold"] >= 0}}


def score_variant(ctl: dict[str, Any], survey: Path, products: Path | None) -> dict[str, Any]:
    """Median M_Ks - truth per S/N bin and group, and the median paired shift (variant -
    control, same spectrum); ``products`` None: the control run itself."""
    res: dict[str, Any] = {}
    if survey != ctl["survey"]:  # same stars, same order, same truth
        v_obs = _read(survey, None, ["specid", "snr_g"])
        v_t = _read(survey, "truth", ["MKs_true"])
        if not np.array_equal(v_obs["specid"], ctl["specid"]):
            raise SystemExit(f"{survey}: spectra differ from the control's")
        same = np.isclose(v_t["MKs_true"], ctl["MKs_true"], equal_nan=True)
        res["truth_MKs_differs"] = int(np.sum(~same))
        with np.errstate(invalid="ignore", divide="ignore"):
            res["median_snr_ratio"] = float(np.nanmedian(v_obs["snr_g"] / ctl["snr"]))
    base = ctl["base"]
    pr = base if products is None else _products(products, ctl["specid"])
    # a spectrum whose emission flag differs between the runs goes to the other network,
    # which did not train on it: such rows are left out (counted); many mean other models
    differs = (pr["MKs_fold"] >= 0) != (base["MKs_fold"] >= 0)
    res["fold_differs"] = int(differs.sum())
    if differs.mean() > 0.01:
        raise SystemExit(f"{products}: MKs_fold differs from the control run's for "
                         f"{differs.sum()} spectra: not the same models / stars")
    resid = np.where(differs, np.nan, pr["MKs"] - ctl["MKs_true"])
    shift = pr["MKs"] - base["MKs"]
    snr = ctl["snr"]
    for gname, gsel in ctl["groups"].items():
        for lo, hi in SNR_BINS:
            sel = ctl["rows"] & gsel & (snr >= lo) & (snr < hi) & np.isfinite(resid)
            any_ = bool(sel.any())
            res[f"{gname}/snr_{lo}_{hi}"] = {
                "n": int(sel.sum()),
                "bias_median": float(np.median(resid[sel])) if any_ else None,
                "std": float(np.std(resid[sel])) if any_ else None,
                "shift_median": float(np.nanmedian(shift[sel])) if any_ else None}
    return res


def score(control: Path, control_products: Path, variants: dict[str, Path]
          ) -> dict[str, Any]:
    """The control run's record and each variant's (``variants``: name -> products; the
    survey is PRODUCTS.zarr where it exists, else the control survey)."""
    ctl = _control(control, control_products)
    out = {"control": score_variant(ctl, control, None)}
    for name, p in variants.items():
        survey = p.with_suffix(".zarr") if p.with_suffix(".zarr").exists() else control
        out[name] = score_variant(ctl, survey, p)
    return out


#: re-synthesis cases: (label, S/N or None for the spectrum's own, changes to the rows)
RESYNTH_CASES: tuple[tuple[str, float | None, tuple[str, ...]], ...] = (
    ("own S/N (the survey's spectra again)", None, ()),
    ("own S/N, no RV residual", None, ("rv",)),
    ("own S/N, no RV residual, no ISM lines", None, ("rv", "ism")),
    ("S/N 200", 200.0, ()),
    ("S/N 200, no RV residual", 200.0, ("rv",)),
    ("S/N 200, no RV residual, no ISM lines", 200.0, ("rv", "ism")),
    ("S/N 200, no RV residual, no ISM lines, E(B-V) = 0", 200.0, ("rv", "ism", "ebv")),
    ("own S/N, no RV residual, no 4429 AA DIB", None, ("rv", "dib4429")),
    ("S/N 200, no RV residual, no 4429 AA DIB", 200.0, ("rv", "dib4429")),
    # the interstellar windows out of the pseudo-continuum's weights as well
    ("own S/N, continuum without the ISM windows", None, ("ismcont",)),
    ("own S/N, no RV residual, continuum without the ISM windows", None, ("rv", "ismcont")),
    ("S/N 200, no RV residual, continuum without the ISM windows", 200.0, ("rv", "ismcont")),
)


def resynthesize(control: Path, products: Path, snr_lo: float, snr_hi: float, n: int,
                 blind: bool = False, shifts_kms: tuple[float, ...] = (10.0, 21.0, 41.0, 69.0),
                 weighting: str = "ivar", continuum_exclude: bool = False) -> None:
    """Network (a) of ``products`` on never-trained single non-emission OB spectra of an S/N
    bin of the mock ``control`` (any mock that records its ``simulation_config``),
    re-synthesised by the mock's own code (``simulate.survey.synthesize_spectra``, same
    stars and noise stream) with one thing changed at a time (:data:`RESYNTH_CASES`), then
    normalised, projected on the run's full basis and predicted as the pipeline does; and the
    response of the same network to a rest-frame shift of the survey's own normalised
    spectra (an exact Fourier shift, unusable pixels filled by the reconstruction).
    ``blind``: the network was trained with ``exclude_interstellar_lines`` (read from the
    products' ``pca_coeff`` where they record it); ``continuum_exclude``: the run had
    ``continuum_excludes_interstellar`` (read from the products' configuration too; every
    case then normalises that way, with the run's ``continuum_shape_degree``)."""
    import zarr

    from obpipe.config import SimulationConfig
    from obpipe.engine.blockwise import open_products
    from obpipe.luminosity.network import MKsNetwork
    from obpipe.simulate import spectra as mock_spectra
    from obpipe.simulate.survey import build_tables, synthesize_spectra
    from obpipe.spectra.bases import load_pca_model
    from obpipe.spectra.grid import velocity_per_pixel_kms, wavelength_grid
    from obpipe.spectra.normalize import CONTINUUM_WEIGHTINGS, normalize
    from obpipe.spectra.pca import interstellar_blind_ivar, interstellar_mask

    # the survey's own simulation options where it records them (any mock; a copy made by
    # zero_point_fit.py keeps them: only parallaxes differ), else the control mock's
    stored = zarr.open_group(str(control), mode="r").attrs.get("simulation_config")
    stored = json.loads(stored) if isinstance(stored, str) else stored
    cfg = SimulationConfig(**stored) if stored else SimulationConfig(**CONTROL)
    _, _, synth = build_tables(cfg)
    ctl = _control(control, products)
    if not np.array_equal(synth["specid"], ctl["specid"]):
        raise SystemExit(f"{control}: its simulation options do not rebuild its spectra")
    prods = open_products(str(products))
    model = np.asarray(prods["MKs_model"].values)
    snr = ctl["snr"]
    pool = np.flatnonzero(ctl["rows"] & ctl["groups"]["never_trained"] & (model == 0)
                          & (snr >= snr_lo) & (snr < snr_hi))
    rows = np.sort(np.random.default_rng(1).choice(pool, min(n, pool.size), replace=False))
    basis = load_pca_model(str(products)).full
    net = MKsNetwork.load(str(products / "models" / "mks_network_a.safetensors"))
    truth = ctl["MKs_true"][rows]
    # products projected without the interstellar windows say so (60cb45e on; the default)
    blind = blind or bool(prods["pca_coeff"].attrs.get(
        "interstellar_blind", False))
    # and the run's configuration says how its continuum was fitted
    run_cfg = prods.attrs.get("obpipe_config")
    run_cfg = json.loads(run_cfg) if isinstance(run_cfg, str) else (run_cfg or {})
    continuum_exclude = continuum_exclude or bool(
        run_cfg.get("spectral", {}).get("continuum_excludes_interstellar", False))
    shape_degree = int(run_cfg.get("spectral", {}).get("continuum_shape_degree", 0))

    def predict(nf: np.ndarray, ni: np.ndarray) -> np.ndarray:
        coeff = basis.project(np.nan_to_num(nf, nan=1.0), interstellar_blind_ivar(ni)
                              if blind else ni)
        return net.predict(basis.reconstruct(np.nan_to_num(coeff)))

    print(f"{products} network (a){' ISM-blind' if blind else ''}: {rows.size} never-trained "
          f"single OB spectra at S/N {snr_lo:g}-{snr_hi:g}, catalog M_Ks - truth "
          f"{np.median(ctl['base']['MKs'][rows] - truth):+.3f} (median)")
    for label, snr_new, changes in RESYNTH_CASES:
        part = {k: v[rows] for k, v in synth.items()}
        if snr_new is not None:
            part["snr"] = np.full(rows.size, snr_new)
        if "rv" in changes:
            part["rv_residual_kms"] = np.zeros(rows.size)
        if "ism" in changes:
            part["ism_ebv"] = np.zeros(rows.size)
        if "ebv" in changes:
            part["ebv"] = np.zeros(rows.size)
        dibs = mock_spectra.DIBS
        if "dib4429" in changes:  # the broad DIB alone out (the mock's module attribute)
            mock_spectra.DIBS = tuple(d for d in dibs if abs(d[0] - 4429.0) > 1.0)
        try:
            o = synthesize_spectra(part, cfg.seed, cfg.resolving_power, cfg.extinction_law,
                                   cfg.noise_neighbour_correlation)
        finally:
            mock_spectra.DIBS = dibs
        exclude = interstellar_mask() if continuum_exclude or "ismcont" in changes else None
        nf, ni = normalize(o["flux"], o["ivar"], o["mask"], weighting=weighting,
                           exclude=exclude, shape_degree=shape_degree)
        print(f"  re-synthesised, {label:60s} {np.median(predict(nf, ni) - truth):+.3f}")
    # how much of the reddened continuum survives normalisation: noise-free, no RV residual
    # and no ISM lines, E(B-V) as it is against 0, |difference| of the normalised flux
    part = {k: v[rows] for k, v in synth.items()}
    part.update(snr=np.full(rows.size, 1000.0), rv_residual_kms=np.zeros(rows.size),
                ism_ebv=np.zeros(rows.size))
    flat = dict(part, ebv=np.zeros(rows.size))
    spectra = [synthesize_spectra(x, cfg.seed, cfg.resolving_power, cfg.extinction_law,
                                  cfg.noise_neighbour_correlation) for x in (part, flat)]
    wave = wavelength_grid()
    bands = ((3750, 4000), (4000, 4500), (4500, 5500), (5500, 7000), (7000, 9000))
    for w, deg in [(w, 0) for w in CONTINUUM_WEIGHTINGS] + [("ivar", 3)]:
        nf2 = [normalize(o["flux"], o["ivar"], o["mask"], weighting=w, shape_degree=deg)
               for o in spectra]
        diff = np.where(nf2[0][1] > 0, np.abs(nf2[0][0] - nf2[1][0]), np.nan)
        cells = [f"{np.nanmedian(np.nanmean(diff[:, (wave >= lo) & (wave < hi)], axis=1)):.4f}"
                 for lo, hi in bands]
        label = f"{w} weights" + (f", shape degree {deg}" if deg else "")
        print(f"  {label}: median |norm. flux(E(B-V) {np.median(part['ebv']):.2f}) - "
              f"norm. flux(0)| at " + ", ".join(f"{lo}-{hi}" for lo, hi in bands) + " AA: "
              + " / ".join(cells))
    # the response to a rest-frame shift, on the products' own normalised spectra
    nf = prods["norm_flux"].isel(spec=rows).values
    ni = prods["norm_ivar"].isel(spec=rows).values
    model_flux = basis.reconstruct(np.nan_to_num(basis.project(np.nan_to_num(nf, nan=1.0), ni)))
    nf = np.where((ni > 0) & np.isfinite(nf), nf, model_flux) - 1.0
    m0 = predict(nf + 1.0, ni)
    pad = 64
    padded = np.pad(nf, ((0, 0), (pad, pad)), mode="edge")
    freq = np.fft.rfftfreq(padded.shape[1])
    for v in shifts_kms:
        d = v / velocity_per_pixel_kms()
        shifted = np.fft.irfft(np.fft.rfft(padded, axis=1) * np.exp(-2j * np.pi * freq * d),
                               n=padded.shape[1], axis=1)[:, pad:-pad] + 1.0
        iv = np.roll(ni, int(np.rint(d)), axis=1)
        print(f"  shifted by {v:4.0f} km/s ({d:.2f} px): median M_Ks change "
              f"{np.median(predict(shifted.astype(np.float32), iv) - m0):+.3f}")



def deredden_copy(survey: Path, out: Path, law: str = "G23", r_v: float = 3.1) -> None:
    """A diagnostic copy of a mock survey whose spectra are dereddened *with the truth's*
    E(B-V) and the pipeline's assumed curve (``law`` at ``r_v``; the mock reddens with its
    own curve and per-star R_V): flux x 10^(0.4 E(B-V) (k(l) - k(4700 AA))), ivar / that
    squared. An oracle: the most that dereddening before the continuum fit could do."""
    import zarr

    from obpipe.simulate.sed import extinction_curve_per_ebv

    if out.exists():
        raise SystemExit(f"{out} exists")
    shutil.copytree(survey, out)
    g = zarr.open_group(str(out), mode="r+")
    if not np.array_equal(g["truth"]["specid"][...], g["specid"][...]):
        raise SystemExit(f"{survey}: truth rows are not the cube's")
    ebv = np.asarray(g["truth"]["ebv_true"][...], dtype=float)
    curve = extinction_curve_per_ebv(np.array([r_v]), law)[0]
    k = (curve - curve[int(np.searchsorted(np.asarray(g["wave"][...]), 4700.0))])
    flux, ivar = g["flux"], g["ivar"]
    for lo in range(0, flux.shape[0], flux.chunks[0]):
        hi = min(lo + flux.chunks[0], flux.shape[0])
        fac = (10.0 ** (0.4 * ebv[lo:hi, None] * k[None, :])).astype(np.float32)
        flux[lo:hi] = flux[lo:hi] * fac
        ivar[lo:hi] = ivar[lo:hi] / fac**2


SNR_BINS = ((5, 20), (20, 50), (50, 100), (100, 200), (200, np.inf))


def refined_rv(survey: Path, products: Path, baseline: Path | None = None) -> dict[str, Any]:
    """``rv_refined_kms`` of a run against the truth, per S/N bin: the true residual
    velocity of the stored frame (``rv_true - rv``) and the error of the refinement
    (``rv_refined_kms - rv_true``: std, robust std, median, pull std with
    ``rv_refined_err_kms``), for all spectra and for single non-emission OB stars; with a
    ``baseline`` run of the same survey, median M_Ks - truth of the single non-emission OB
    stars that no member of either run trained on (the same stars in both columns)."""
    from obpipe.stats import robust_std

    obs = _read(survey, None, ["specid", "snr_g", "rv"])
    t = _read(survey, "truth", ["star_class", "is_binary", "has_emission", "MKs_true",
                                "rv_true"])
    p = _read(products / "products.zarr", None, ["specid", "rv_refined_kms",
                                                  "rv_refined_err_kms"])
    if not np.array_equal(p["specid"], obs["specid"]):
        raise SystemExit(f"{products}: rows not in the survey's order")
    if "rv_refined_kms" not in p:
        raise SystemExit(f"{products}: no rv_refined_kms (run with [spectral] refine_rv)")
    snr = obs["snr_g"].astype(float)
    rv, rv_true = obs["rv"].astype(float), t["rv_true"].astype(float)
    ref, err = p["rv_refined_kms"].astype(float), p["rv_refined_err_kms"].astype(float)
    cls = np.array(t["star_class"].tolist(), dtype=object).astype(str)
    single_ob = (cls == "OB") & ~t["is_binary"].astype(bool) & ~t["has_emission"].astype(bool)
    out: dict[str, Any] = {"n_measured": int(np.isfinite(ref).sum()), "n": int(ref.size)}
    print(f"{products}: rv_refined_kms for {out['n_measured']} of {out['n']} spectra")
    print("  S/N bin | true residual rms | refined - true: std / robust std / median / "
          "pull std / median error (km/s)")
    for label, sel in (("all spectra", np.ones(snr.size, bool)), ("single OB", single_ob)):
        print(f" {label}")
        for lo, hi in SNR_BINS:
            k = sel & (snr >= lo) & (snr < hi) & np.isfinite(ref)
            if k.sum() < 5:
                continue
            e = ref[k] - rv_true[k]
            cell = {"n": int(k.sum()), "true_residual_rms": float(np.std(rv_true[k] - rv[k])),
                    "std": float(np.std(e)), "robust_std": float(robust_std(e)),
                    "median": float(np.median(e)), "pull_std": float(np.std(e / err[k])),
                    "median_err": float(np.median(err[k]))}
            out.setdefault(label, {})[f"{lo}-{hi}"] = cell
            print(f"  {lo:>3}-{hi:<4} (n {cell['n']:5d}) {cell['true_residual_rms']:6.1f} | "
                  f"{cell['std']:6.1f} / {cell['robust_std']:5.1f} / {cell['median']:+5.1f} / "
                  f"{cell['pull_std']:5.2f} / {cell['median_err']:5.1f}")
    # no truth: two visits of a catalog single (binary_flag 0, em_flag 0) at S/N > 100
    import pyarrow.parquet as pq

    cat = pq.read_table(products / "catalog.parquet", columns=[
        "star_id", "snr_g", "rv_refined_kms", "rv_refined_err_kms", "binary_flag",
        "em_flag"]).to_pandas()
    cat = cat[(cat.snr_g > 100) & (cat.binary_flag == 0) & (cat.em_flag == 0)
              & np.isfinite(cat.rv_refined_kms)]
    pairs = cat.groupby("star_id").head(2)
    pairs = pairs[pairs.groupby("star_id")["snr_g"].transform("size") == 2].sort_values(
        "star_id", kind="stable")
    v, e = pairs["rv_refined_kms"].to_numpy(), pairs["rv_refined_err_kms"].to_numpy()
    diff, err2 = v[0::2] - v[1::2], e[0::2] ** 2 + e[1::2] ** 2
    if diff.size >= 5:
        spread = robust_std(diff) / np.sqrt(2.0)
        floor = float(np.sqrt(max(spread**2 - np.median(err2) / 2.0, 0.0)))
        out["repeat_visits"] = {"n_pairs": int(diff.size), "robust_std_kms": float(spread),
                                "pull_robust_std": float(robust_std(diff / np.sqrt(err2))),
                                "floor_kms": floor}
        print(f" no truth: {diff.size} pairs of visits of catalog singles at S/N > 100: "
              f"robust std of the difference / sqrt(2) {spread:.2f} km/s, robust pull std "
              f"{out['repeat_visits']['pull_robust_std']:.2f}: a floor of {floor:.2f} km/s "
              "beyond rv_refined_err_kms")
    if baseline is not None:
        mt = t["MKs_true"].astype(float)
        new, old = _products(products, obs["specid"]), _products(baseline, obs["specid"])
        both = single_ob & (new["MKs_fold"] == -1) & (old["MKs_fold"] == -1)
        print(f" M_Ks - truth, single OB never trained in either run: baseline {baseline} "
              "-> this run (median, paired median shift)")
        for lo, hi in SNR_BINS:
            k = both & (snr >= lo) & (snr < hi) & np.isfinite(new["MKs"]) & np.isfinite(
                old["MKs"])
            if k.sum() < 5:
                continue
            b, r = np.median(old["MKs"][k] - mt[k]), np.median(new["MKs"][k] - mt[k])
            d = np.median(new["MKs"][k] - old["MKs"][k])
            out.setdefault("mks_same_stars", {})[f"{lo}-{hi}"] = {
                "n": int(k.sum()), "baseline": float(b), "refined": float(r),
                "paired": float(d)}
            print(f"  {lo:>3}-{hi:<4} (n {int(k.sum()):5d}) {b:+.3f} -> {r:+.3f} "
                  f"(paired {d:+.3f})")
    return out


def refine_fixed_networks(survey: Path, products: Path, shrink: bool = False,
                          batch: int = 1000) -> dict[str, Any]:
    """M_Ks with a run's own networks, its spectra as they are and refined
    (:func:`obpipe.spectra.velocity.refine_rest_frame` on the run's clean basis, the
    interstellar windows excluded): never-trained single non-emission OB stars of network
    (a), median / std of M_Ks - truth per S/N bin, and the paired median shift. Run on
    products made with ``refine_rv`` off. ``shrink``: also δv shrunk toward the catalogue
    RV by its quoted error, δv rv_err^2 / (rv_err^2 + σ^2)."""
    from obpipe.engine.blockwise import open_products
    from obpipe.luminosity.network import MKsNetwork
    from obpipe.spectra import pca, velocity
    from obpipe.spectra.bases import load_pca_model
    from obpipe.spectra.grid import velocity_per_pixel_kms

    prods = open_products(str(products))
    obs = _read(survey, None, ["specid", "snr_g", "rv_err", "star_id"])
    t = _read(survey, "truth", ["star_class", "is_binary", "has_emission", "MKs_true"])
    if not np.array_equal(prods["specid"].values, obs["specid"]):
        raise SystemExit(f"{products}: rows not in the survey's order")
    cls = np.array(t["star_class"].tolist(), dtype=object).astype(str)
    rows = np.flatnonzero((cls == "OB") & ~t["is_binary"].astype(bool)
                          & ~t["has_emission"].astype(bool) & (prods["MKs_fold"].values == -1)
                          & (prods["MKs_model"].values == 0))
    snr, mt = obs["snr_g"].astype(float)[rows], t["MKs_true"].astype(float)[rows]
    rv_err = obs["rv_err"].astype(float)[rows]
    sid = np.array(obs["star_id"][rows].tolist(), dtype=object).astype(str)
    model = load_pca_model(str(products))
    net = MKsNetwork.load(str(products / "models" / "mks_network_a.safetensors"))
    ism, vpix = pca.interstellar_mask(), velocity_per_pixel_kms()
    variants: dict[str, np.ndarray] = {k: np.empty(rows.size) for k in (
        "off", "on", *(("shrunk",) if shrink else ()))}

    def predict(f: np.ndarray, iv: np.ndarray, ids: np.ndarray) -> np.ndarray:
        c = model.full.project(f, iv, exclude=ism)
        return net.predict_out_of_fold(model.full.reconstruct(np.nan_to_num(c)), ids)[0]

    for lo in range(0, rows.size, batch):
        sl = slice(lo, lo + batch)
        nf = prods["norm_flux"].isel(spec=rows[sl]).values
        ni = prods["norm_ivar"].isel(spec=rows[sl]).values
        variants["off"][sl] = predict(nf, ni, sid[sl])
        f, iv, dv, err = velocity.refine_rest_frame(model.clean, nf, ni,
                                                    model.clean.pixels & ~ism, exclude=ism)
        variants["on"][sl] = predict(f, iv, sid[sl])
        if shrink:
            recon = model.clean.reconstruct(np.nan_to_num(
                model.clean.project(f, iv, exclude=ism)))
            k = rv_err[sl] ** 2 / (rv_err[sl] ** 2 + err**2)
            fs, ivs = velocity.shift_spectra(nf, ni, -np.nan_to_num(dv * k) / vpix, recon)
            variants["shrunk"][sl] = predict(fs, ivs, sid[sl])
    out: dict[str, Any] = {}
    print(f"{products}: network (a), never-trained single OB, M_Ks - truth median / std, "
          + " | ".join(variants) + " (paired median shift of 'on')")
    for lo, hi in (*SNR_BINS, (50, np.inf)):
        k = (snr >= lo) & (snr < hi)
        if k.sum() < 5:
            continue
        cells = {name: (float(np.median(v[k] - mt[k])), float(np.std(v[k] - mt[k])))
                 for name, v in variants.items()}
        paired = float(np.median(variants["on"][k] - variants["off"][k]))
        out[f"{lo}-{hi}"] = {"n": int(k.sum()), **cells, "paired_on": paired}
        print(f"  {lo:>3}-{hi:<4} (n {int(k.sum()):5d}) " + " | ".join(
            f"{m:+.3f} / {sd:.3f}" for m, sd in cells.values()) + f"  ({paired:+.3f})")
    return out


def refine_cost(survey: Path, products: Path, n: int, repeat: int) -> dict[str, Any]:
    """CPU seconds of the pca stage's block (:func:`obpipe.stages.pca.block`, one thread,
    the run's PCA model, interstellar-blind projection) on ``n`` rows of ``products``
    (every k-th, so that the S/N mix is the survey's), ``refine_rv`` off, on below S/N 50
    (the default ``refine_rv_max_snr``) and on for every spectrum, alternating ``repeat``
    times."""
    import time

    from obpipe.stages import pca as pca_stage

    p = zarr.open_group(str(products / "products.zarr"), mode="r")
    n_all = p["norm_flux"].shape[0]
    rows = np.arange(0, n_all, max(n_all // n, 1))[:n]
    inputs = {"norm_flux": np.asarray(p["norm_flux"].get_orthogonal_selection((rows, slice(None)))),
              "norm_ivar": np.asarray(p["norm_ivar"].get_orthogonal_selection((rows, slice(None)))),
              "rv": np.zeros(rows.size, dtype=np.float32),
              "snr_g": np.asarray(zarr.open_group(str(survey), mode="r")["snr_g"][...])[rows]}
    model = str(products / "models" / "pca_model.npz")
    kw = {"model_path": model, "prior": True, "exclude_interstellar": True}
    pca_stage.block({k: v[:8] for k, v in inputs.items()}, **kw, refine_rv=True)  # warm
    variants = {"off": {}, "on, S/N < 50": {"refine_rv": True, "refine_rv_max_snr": 50.0},
                "on, all": {"refine_rv": True}}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat):
        for key, opts in variants.items():
            t0 = time.process_time()
            pca_stage.block(inputs, **kw, **opts)
            times[key].append(time.process_time() - t0)
    low = float(np.mean(inputs["snr_g"] < 50))
    print(f"pca stage block, {rows.size} rows ({low:.0%} at S/N < 50), CPU s per 1,000 "
          "spectra (one thread), " + " vs ".join(variants) + ", run by run: " + ", ".join(
              " vs ".join(f"{times[k][i] / rows.size * 1e3:.2f}" for k in variants)
              for i in range(repeat)))
    return {"rows": int(rows.size), "fraction_below_50": low, **times}


def print_table(res: dict[str, Any]) -> None:
    bins = [f"snr_{lo}_{hi}" for lo, hi in SNR_BINS]
    labels = ["5-20", "20-50", "50-100", ">100"]
    for gname in ("never_trained", "out_of_fold"):
        n = [res["control"][f"{gname}/{b}"]["n"] for b in bins]
        print(f"\n{gname}: median M_Ks - truth (paired shift vs control), S/N "
              + " / ".join(labels) + f"   (n = {' / '.join(map(str, n))})")
        for name, r in res.items():
            cells = []
            for b in bins:
                c = r[f"{gname}/{b}"]
                if c["bias_median"] is None:
                    cells.append("   -   ")
                elif name == "control":
                    cells.append(f"{c['bias_median']:+.3f}")
                else:
                    cells.append(f"{c['bias_median']:+.3f} ({c['shift_median']:+.3f})")
            extra = ""
            if "truth_MKs_differs" in r:
                extra = (f"   [truth M_Ks differs: {r['truth_MKs_differs']}; median S/N ratio "
                         f"{r['median_snr_ratio']:.3f}]")
            if r.get("fold_differs"):
                extra += f" [{r['fold_differs']} spectra on the other network: left out]"
            print(f"  {name:16s} " + " | ".join(cells) + extra)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    names = [*MOCK_VARIANTS, *PIPELINE_VARIANTS]
    m = sub.add_parser("make", help="simulate a mock-side variant")
    m.add_argument("name", choices=list(MOCK_VARIANTS))
    m.add_argument("--dir", required=True, type=Path)
    r = sub.add_parser("run", help="inference-only obpipe run with the control's models")
    r.add_argument("name", choices=names)
    r.add_argument("--dir", required=True, type=Path)
    r.add_argument("--models", required=True, type=Path)
    r.add_argument("--control", type=Path, default=None)
    r.add_argument("--config", type=Path, default=None, help="the control run's TOML")
    s = sub.add_parser("score", help="the table")
    s.add_argument("control", type=Path)
    s.add_argument("control_products", type=Path)
    s.add_argument("variants", nargs="*", help="NAME=PRODUCTS")
    s.add_argument("--json", type=Path, default=None)
    a_ = sub.add_parser("all", help="make, run and score each variant in turn")
    a_.add_argument("--dir", required=True, type=Path)
    a_.add_argument("--control", required=True, type=Path)
    a_.add_argument("--models", required=True, type=Path)
    a_.add_argument("--only", nargs="*", choices=names, default=None)
    a_.add_argument("--keep", action="store_true", help="keep the variant mocks")
    a_.add_argument("--config", type=Path, default=None, help="the control run's TOML")
    rs = sub.add_parser("resynth", help="re-synthesised spectra of an S/N bin, one change at "
                        "a time, and the response to a rest-frame shift (network a)")
    rs.add_argument("control", type=Path)
    rs.add_argument("products", type=Path)
    rs.add_argument("--snr", nargs=2, type=float, default=(5.0, 20.0))
    rs.add_argument("-n", type=int, default=400)
    rs.add_argument("--blind", action="store_true",
                    help="the products' networks are interstellar-blind")
    rs.add_argument("--weighting", default="ivar", help="the run's continuum_weighting")
    rs.add_argument("--continuum-exclude", action="store_true",
                    help="the run had [spectral] continuum_excludes_interstellar")
    dr = sub.add_parser("deredden", help="a copy of a mock dereddened with its true E(B-V) "
                        "(an oracle)")
    dr.add_argument("survey", type=Path)
    dr.add_argument("out", type=Path)
    rvp = sub.add_parser("rv", help="a refine_rv run's refined RV against the truth, and its "
                         "M_Ks against a baseline run on the same stars")
    rvp.add_argument("survey", type=Path)
    rvp.add_argument("products", type=Path)
    rvp.add_argument("--baseline", type=Path, default=None)
    rvp.add_argument("--json", type=Path, default=None)
    rf = sub.add_parser("rv-fixed", help="a run's networks on its spectra as they are and "
                        "refined (inference only)")
    rf.add_argument("survey", type=Path)
    rf.add_argument("products", type=Path)
    rf.add_argument("--shrink", action="store_true")
    rf.add_argument("--json", type=Path, default=None)
    rc = sub.add_parser("rv-cost", help="CPU of the pca stage's block, refine_rv off vs on")
    rc.add_argument("survey", type=Path)
    rc.add_argument("products", type=Path)
    rc.add_argument("-n", type=int, default=4000)
    rc.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args(argv)
    if a.cmd == "rv-fixed":
        res = refine_fixed_networks(a.survey, a.products, a.shrink)
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
    elif a.cmd == "rv-cost":
        refine_cost(a.survey, a.products, a.n, a.repeat)
    elif a.cmd == "rv":
        res = refined_rv(a.survey, a.products, a.baseline)
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
    elif a.cmd == "deredden":
        deredden_copy(a.survey, a.out)
    elif a.cmd == "resynth":
        resynthesize(a.control, a.products, a.snr[0], a.snr[1], a.n, a.blind,
                     weighting=a.weighting, continuum_exclude=a.continuum_exclude)
    elif a.cmd == "make":
        a.dir.mkdir(parents=True, exist_ok=True)
        make_variant(a.name, a.dir)
    elif a.cmd == "run":
        run_variant(a.name, a.dir, a.models, a.control, a.config)
    elif a.cmd == "score":
        variants = dict(v.split("=", 1) for v in a.variants)
        res = score(a.control, a.control_products, {k: Path(v) for k, v in variants.items()})
        print_table(res)
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
    else:
        a.dir.mkdir(parents=True, exist_ok=True)
        ctl = _control(a.control, a.models)
        res = {"control": score_variant(ctl, a.control, None)}
        for name in a.only or names:
            mock = a.dir / f"{name}.zarr"
            if name in MOCK_VARIANTS and not mock.exists():
                make_variant(name, a.dir)
            products = run_variant(name, a.dir, a.models, a.control, a.config)
            res[name] = score_variant(ctl, mock if mock.exists() else a.control, products)
            if name in MOCK_VARIANTS and not a.keep:
                shutil.rmtree(mock)
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
