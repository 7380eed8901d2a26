"""Accuracy over several realisations of the mock survey: one seed is not a measurement.

The M_Ks targets of issue 15 (|bias| <= 0.05 mag and pull std 0.85-1.2 in every S/N bin)
are medians over ~1,700-5,800 stars per bin, whose statistical error is ~0.02-0.03 mag;
yet from one mock realisation to the next the low-S/N bins move by up to +-0.1 mag
(docs/validation.md). This script measures each setting over several realisations,
so that a setting is judged by its mean, with the spread beside it:

1. for each seed, ``obpipe simulate --n-stars N --seed SEED`` into
   ``WORKDIR/survey-SEED.zarr`` (kept: a later invocation reuses it);
2. for each setting (``--config NAME=FILE.toml``; by default one setting, ``default``,
   with no config file), ``obpipe run`` into ``WORKDIR/products-SEED-NAME``. A setting
   after the first starts from a copy of the first's products, so that stages whose
   options it does not change are not recomputed (the engine reruns every stage whose
   options differ, and every stage after it);
3. each run scored against the truth by :func:`score_truth.score` (single non-emission
   OB stars; trained-on stars out of fold), its JSON written beside the products as
   ``products-SEED-NAME_score.json``. A score already there is reused, products or not
   (``--drop-products`` deletes each products directory, ~0.9 GB at DR5 size, once the
   last setting of its seed has been scored).

Printed: per setting and seed, the median M_Ks - truth and the pull std in the S/N bins
5-20 / 20-50 / 50-100 / 100-200 / > 200 of all stars, the S/N > 50 bias and std, the
E(B-V) scatter, the distance coverage, the slope of the M_Ks residual on the true M_Ks at
S/N 5-20 and 20-50 (0: no pull toward the training mean) and the number of the ten bin
targets failed; then
per setting the mean and standard deviation over the seeds of each figure, and the
targets judged on the means; with three seeds or more, each bin's bias regressed on the
realisation's zero-point residual (:func:`zero_point_residual_uas`). Runs are resumed: an
invocation with more seeds only adds the new ones. ``--exact-zero-point`` measures the
same on copies of the surveys without the zero-point residual (a diagnostic, not a
survey anyone has).

    python benchmarks/realisations.py --workdir W --seeds 2026,2027,2028
    python benchmarks/realisations.py --workdir W --seeds 2026,2027,2028 \\
        --config old=olddef.toml --config new=none   # "none": the defaults
    python benchmarks/realisations.py --workdir W --seeds 2026,2027,2028 --exact-zero-point
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from obpipe.photometry.parallax import parallax_zero_point

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_truth import SNR_BINS, _read_group, score  # noqa: E402
from zero_point_fit import copy_with_zero_point  # noqa: E402

BINS = [f"snr_{lo}_{hi}" for lo, hi in SNR_BINS]
#: issue 15's per-bin targets on single non-emission OB stars
MAX_ABS_BIAS_MAG = 0.05
PULL_RANGE = (0.85, 1.2)
GROUPS = ("all", "never_trained", "trained_on_oof")


def _obpipe(*args: str) -> None:
    cmd = [sys.executable, "-m", "obpipe.cli", *args]
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def realise(workdir: Path, seed: int, n_stars: int, exact_zero_point: bool = False) -> Path:
    """The survey of ``seed``, simulated unless ``workdir`` already holds it; with
    ``exact_zero_point`` its copy whose parallaxes carry exactly the zero-point that the
    pipeline removes (:func:`zero_point_fit.copy_with_zero_point`, ``exact``)."""
    path = workdir / f"survey-{seed}.zarr"
    if not (path / "zarr.json").exists():
        if path.exists():
            shutil.rmtree(path)
        _obpipe("simulate", "--out", str(path), "--seed", str(seed), "--n-stars", str(n_stars))
    if not exact_zero_point:
        return path
    exact = workdir / f"survey-{seed}-zpexact.zarr"
    if not (exact / "zarr.json").exists():
        shutil.rmtree(exact, ignore_errors=True)
        copy_with_zero_point(str(path), str(exact), "exact")
    return exact


def zero_point_residual_uas(survey: Path, min_snr: float = 50.0) -> float:
    """What the pipeline's parallax correction leaves of the mock's zero-point, in uas:
    the mean of ``parallax_zp_true - Z_pipeline`` over the OB stars' spectra at S/N >
    ``min_snr`` (the networks' training domain), weighted by ``1 / parallax_error^2`` as
    the parallax-space loss weights them. Positive: corrected parallaxes too large,
    targets too faint. The mock's DR2 sky pattern (17 uas rms on ~14 deg) leaves a
    different mean over the footprint in every realisation."""
    cols = ["gaia_release", "phot_g_mean_mag", "nu_eff_used_in_astrometry", "pseudocolour",
            "ecl_lat", "astrometric_params_solved", "parallax_error", "snr_g"]
    o = _read_group(str(survey), None, cols)
    t = _read_group(str(survey), "truth", ["parallax_zp_true", "star_class"])
    z, _ = parallax_zero_point(o["gaia_release"], o["phot_g_mean_mag"],
                              o["nu_eff_used_in_astrometry"], o["pseudocolour"], o["ecl_lat"],
                              o["astrometric_params_solved"])
    resid = t["parallax_zp_true"] - z
    w = o["parallax_error"] ** -2.0
    sel = (t["star_class"] == "OB") & (o["snr_g"] > min_snr) & np.isfinite(resid) & (w > 0)
    return float(1e3 * np.sum(w[sel] * resid[sel]) / np.sum(w[sel]))


def run_and_score(survey: Path, products: Path, config: str | None,
                  start_from: Path | None) -> dict[str, Any]:
    """``obpipe run`` (resumed where ``products`` has a partial run) and its score; a
    score already written beside ``products`` is reused (delete it to run again)."""
    scored = products.with_name(products.name + "_score.json")
    if scored.exists():
        return json.loads(scored.read_text())
    if start_from is not None and start_from.exists() and not products.exists():
        shutil.copytree(start_from, products)
    args = ["run", str(survey), "--out", str(products)]
    if config:
        args += ["--config", config]
    _obpipe(*args)
    res = score(str(survey), str(products))
    scored.write_text(json.dumps(res, indent=1))
    return res


def figures(res: dict[str, Any], group: str = "all") -> dict[str, float]:
    """The scored figures of one run: per-bin bias and pull std, S/N > 50, E(B-V),
    coverage and the count of failed bin targets."""
    m = res["mks"][group]
    out: dict[str, float] = {}
    fails = 0
    for b in BINS:
        bias, pull = m[b].get("bias_median", np.nan), m[b].get("pull_std", np.nan)
        out[f"bias_{b}"], out[f"pull_{b}"] = bias, pull
        fails += int(not abs(bias) <= MAX_ABS_BIAS_MAG)
        fails += int(not PULL_RANGE[0] <= pull <= PULL_RANGE[1])
    out["bias_snr_gt_50"] = m["snr_gt_50"].get("bias_median", np.nan)
    out["std_snr_gt_50"] = m["snr_gt_50"].get("std", np.nan)
    out["ebv_std"] = res["ebv"].get("std", np.nan)
    out["coverage"] = res["distance"]["coverage_all_single"]
    for b in ("snr_5_20", "snr_20_50"):  # NaN in scores written before it existed
        out[f"slope_{b}"] = m[b].get("slope_on_true", np.nan)
    out["fails"] = fails
    return out


def regression_on_zero_point(per_seed: list[dict[str, float]]) -> dict[str, tuple[float, ...]]:
    """Each bin's bias regressed on the realisation's zero-point residual over the seeds:
    slope (mag per uas), intercept (the bias at a zero residual, mag) and the rms of the
    seeds about the line, beside the rms about the mean (needs >= 3 seeds)."""
    x = np.array([f["zp_residual_uas"] for f in per_seed])
    out = {}
    for b in BINS:
        y = np.array([f[f"bias_{b}"] for f in per_seed])
        slope, intercept = np.polyfit(x, y, 1)
        about_line = float(np.sqrt(np.sum((y - slope * x - intercept) ** 2) / (y.size - 2)))
        out[b] = (float(slope), float(intercept), about_line, float(np.std(y, ddof=1)))
    return out


def _row(f: dict[str, float], sign: str = "+") -> str:
    bias = " / ".join(f"{f[f'bias_{b}']:{sign}.3f}" for b in BINS)
    pull = " / ".join(f"{f[f'pull_{b}']:.2f}" for b in BINS)
    return (f"{bias} | {pull} | {f['bias_snr_gt_50']:{sign}.3f} / {f['std_snr_gt_50']:.3f} | "
            f"{f['ebv_std']:.3f} | {f['coverage']:.3f} | {f['slope_snr_5_20']:+.2f} / "
            f"{f['slope_snr_20_50']:+.2f} | {f['fails']:.{0 if sign else 1}f}")


def summary(per_seed: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation (ddof 1; 0 for one seed) of each figure over seeds."""
    keys = per_seed[0].keys()
    mean = {k: float(np.mean([f[k] for f in per_seed])) for k in keys}
    sd = {k: float(np.std([f[k] for f in per_seed], ddof=1)) if len(per_seed) > 1 else 0.0
          for k in keys}
    return mean, sd


def verdict_on_means(mean: dict[str, float]) -> list[str]:
    """The bin targets judged on the means over the seeds: one line per failed target."""
    failed = []
    for b in BINS:
        if not abs(mean[f"bias_{b}"]) <= MAX_ABS_BIAS_MAG:
            failed.append(f"bias {b} {mean[f'bias_{b}']:+.3f}")
        if not PULL_RANGE[0] <= mean[f"pull_{b}"] <= PULL_RANGE[1]:
            failed.append(f"pull {b} {mean[f'pull_{b}']:.2f}")
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, help="surveys and products (kept, reused)")
    ap.add_argument("--seeds", default="2026,2027,2028", help="comma-separated mock seeds")
    ap.add_argument("--n-stars", type=int, default=16002, help="stars per realisation "
                    "(default: the DR5-size default survey)")
    ap.add_argument("--config", action="append", default=[], metavar="NAME=FILE",
                    help="a setting: its name and TOML file ('none': the defaults); "
                         "repeatable; default: one setting 'default' with the defaults")
    ap.add_argument("--group", choices=GROUPS, default="all",
                    help="stars scored: all, never trained on, or trained on (out of fold)")
    ap.add_argument("--exact-zero-point", action="store_true",
                    help="run on copies of the surveys whose parallaxes carry exactly the "
                         "zero-point the pipeline removes (a diagnostic: what the method "
                         "does without the mock's zero-point residual)")
    ap.add_argument("--drop-products", action="store_true",
                    help="delete each seed's products once scored (keep the scores)")
    ap.add_argument("--json", default=None, help="write every figure here")
    a = ap.parse_args(argv)
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",") if s]
    settings: list[tuple[str, str | None]] = []
    for item in a.config or ["default=none"]:
        name, _, path = item.partition("=")
        if not name or not path:
            ap.error(f"--config {item!r}: expected NAME=FILE")
        if path != "none" and not os.path.exists(path):
            ap.error(f"--config {item!r}: no file {path}")
        settings.append((name, None if path == "none" else os.path.abspath(path)))

    table: dict[str, dict[int, dict[str, float]]] = {name: {} for name, _ in settings}
    for seed in seeds:
        survey = realise(workdir, seed, a.n_stars, a.exact_zero_point)
        tag = f"{seed}-zpexact" if a.exact_zero_point else f"{seed}"
        zp_resid = zero_point_residual_uas(survey)
        first: Path | None = None
        for name, cfg in settings:
            products = workdir / f"products-{tag}-{name}"
            res = run_and_score(survey, products, cfg, first)
            first = first or products
            table[name][seed] = figures(res, a.group)
            table[name][seed]["zp_residual_uas"] = zp_resid
            print(f"seed {seed} {name}: {_row(table[name][seed])}", flush=True)
        if a.drop_products:
            for name, _ in settings:
                shutil.rmtree(workdir / f"products-{tag}-{name}", ignore_errors=True)

    print(f"\n{a.group} single non-emission OB stars; bins S/N {' / '.join(BINS)}")
    print("| setting | seed | median M_Ks - truth | pull std | S/N > 50 bias / std | "
          "E(B-V) std | coverage | slope on true M_Ks, S/N 5-20 / 20-50 | fails |")
    print("|---|---|---|---|---|---|---|---|---|")
    out: dict[str, Any] = {}
    for name, _ in settings:
        rows = [table[name][s] for s in seeds]
        for s in seeds:
            print(f"| {name} | {s} | {_row(table[name][s])} |")
        mean, sd = summary(rows)
        print(f"| {name} | mean | {_row(mean, '+')} |")
        print(f"| {name} | sd | {_row(sd, '')} |")
        out[name] = {"per_seed": {str(s): table[name][s] for s in seeds}, "mean": mean,
                     "sd": sd, "failed_on_means": verdict_on_means(mean)}
    spread = np.ptp([table[settings[0][0]][s]["zp_residual_uas"] for s in seeds])
    if len(seeds) >= 3 and spread > 0.5:
        print("\nEach bin's bias against the realisation's zero-point residual (uas; "
              "1/sigma^2-weighted mean over OB spectra at S/N > 50): slope (mag/uas), "
              "intercept (mag), rms about the line / about the mean")
        for name, _ in settings:
            rows = [table[name][s] for s in seeds]
            print(f"{name}: residual " + " / ".join(f"{f['zp_residual_uas']:+.1f}" for f in rows))
            reg = regression_on_zero_point(rows)
            for b, (k, c, rl, rm) in reg.items():
                print(f"  {b}: slope {k:+.4f}, intercept {c:+.3f}, rms {rl:.3f} / {rm:.3f}")
            out[name]["zero_point_regression"] = reg
    print()
    for name, _ in settings:
        failed = out[name]["failed_on_means"]
        print(f"{name}: bin targets on the mean of {len(seeds)} realisations: "
              + ("all met" if not failed else "failed: " + ", ".join(failed)))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
