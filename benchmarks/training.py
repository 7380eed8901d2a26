"""Luminosity training time, old and new code side by side (issues 6, 19).

Runs the training half of the ``luminosity`` stage (networks (a) and (b), the
binary-cleaning rounds, the emcee noise models) on a products directory that has gone
through ``photometry``, once with the code of ``--baseline-rev`` (exported with ``git
archive`` into a temporary directory) and once with the working tree, alternating
``--repeat`` times in one run, each in its own process pinned to the same ``--cores``.
Nothing is written to the products directory. For each run it prints the seconds of
each step, and the held-out accuracy: M_Ks - MKs_true of the test-set (never trained)
single non-emission OB stars, scatter, bias and pull std (pull = residual / MKs_err,
eq. 10 with the fitted noise model), overall (S/N > 5) and at S/N > 50. The machine's
load (``os.getloadavg``) is printed beside every run: the cores are shared.

    obpipe simulate --out /tmp/dr5.zarr
    obpipe run /tmp/dr5.zarr --out /tmp/dr5_prod --stages index,normalize,pca,emission,photometry
    python benchmarks/training.py --survey /tmp/dr5.zarr --products /tmp/dr5_prod \\
        --baseline-rev 929a27b [--baseline-rev REV2 ...] [--new-rev REV] [--cores 2] \\
        [--repeat 1]

The new code's run also times the sigma_s(S/N) calibration of ``MKs_err`` on degraded
spectra (``calibrate_sigma_s``, issue 15; absent from older revisions: 0 s there), with
``seconds_total`` = training + noise models + calibration, and prints the pull std of the
held-out stars per S/N bin (5-20 / 20-50 / 50-100 / 100-200 / > 200) with the MKs_err
the code would write. A table at the end puts every method's steps side by side.

The methods' test sets differ (their training samples and cleaning rounds do), so the
table also scores every method on the same spectra: those in every method's test set,
with each method's scatter and bias minus the first method's on them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _metrics(d, err, sel) -> dict:  # noqa: ANN001
    import numpy as np

    s = sel & np.isfinite(d) & np.isfinite(err)
    if not s.any():
        return {"n": 0}
    return {"n": int(s.sum()), "scatter": float(np.std(d[s])), "bias": float(np.mean(d[s])),
            "pull_std": float(np.std(d[s] / err[s]))}


SNR_BINS = ((5, 20), (20, 50), (50, 100), (100, 200), (200, 100000))


def _stage_module():  # noqa: ANN202
    """The luminosity stage module of whichever ``obpipe`` was imported:
    ``obpipe.stages.luminosity``, or ``obpipe.luminosity.stage`` before the restructuring
    (issue 16). Decided by the files of that checkout: the installed editable finder
    would otherwise resolve a module the old checkout lacks to the working tree's."""
    import importlib

    import obpipe

    new = os.path.isdir(os.path.join(os.path.dirname(obpipe.__file__), "stages"))
    return importlib.import_module("obpipe.stages.luminosity" if new else
                                   "obpipe.luminosity.stage")


def worker(survey_path: str, products_dir: str, network_seed: int | None = None) -> dict:
    """One training run with whichever ``obpipe`` is first on ``sys.path``: networks and
    cleaning rounds, the emcee noise models and (where the code has it) the sigma_s(S/N)
    calibration on degraded spectra (``calibrate_sigma_s``), each timed."""
    import numpy as np

    from obpipe.io import store
    from obpipe.luminosity import noise_model
    from obpipe.luminosity import training as tr
    from obpipe.pipeline import RunContext
    lum = _stage_module()

    ctx = RunContext(survey_path, products_dir, scheduler="threads", force=True)
    if len(inspect.signature(lum._config).parameters) > 1:  # before the typed config
        cfg, extra = lum._config(ctx, {} if network_seed is None else
                                 {"network": {"seed": network_seed}})
    else:
        cfg, extra = lum._config(ctx)
        if network_seed is not None:
            cfg = replace(cfg, network=replace(cfg.network, seed=network_seed))
    captured: dict = {}

    def capture(*a, **k):  # noqa: ANN002, ANN003, ANN202
        captured["args"], captured["kwargs"] = a, k
        raise StopIteration

    real = tr.train_with_binary_cleaning
    lum.train_with_binary_cleaning = capture
    real_inputs = lum._network_inputs

    def inputs(prods, rows, *rest):  # noqa: ANN001, ANN002, ANN202
        captured["rows"] = rows
        return real_inputs(prods, rows, *rest)

    lum._network_inputs = inputs
    t0 = time.perf_counter()
    try:
        lum.train_from_products(ctx, cfg, extra["extra_training"])
    except StopIteration:
        pass
    t_read = time.perf_counter() - t0
    a, k = captured["args"], captured["kwargs"]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = real(*a, **k)
    t_train = time.perf_counter() - t0
    rep = res.report
    steps: dict = {"read_inputs": t_read}
    for it in rep["iterations"]:
        for m in ("a", "b"):
            i = it["iteration"]
            steps[f"round_{i}_network_{m}_s"] = it.get(f"train_seconds_{m}")
            steps[f"round_{i}_network_{m}_epochs"] = it.get(f"epochs_{m}")
        steps[f"round_{it['iteration']}_total_s"] = it.get("seconds")
    steps["mcmc_noise_models_s"] = rep["timing_s"].get("mcmc")
    for m in ("a", "b"):
        nm = res.noise[m]
        steps[f"mcmc_{m}_steps_tau_max_acceptance"] = [
            int(nm.n_steps), float(np.max(nm.tau)), round(float(nm.acceptance), 3)]
    # sigma_s(S/N) from degraded spectra, as train_from_products calls it
    t_cal = 0.0
    if hasattr(lum, "calibrate_sigma_s"):
        survey = store.open_cube(survey_path)
        prods = lum.open_products(products_dir)
        snr_all = survey["snr_g"].values.astype(float)
        star_all = survey["star_id"].values.astype(object).astype(str)
        em_all = prods["em_flag"].values
        ok = (prods["quality_flags"].values & lum.BROKEN_BIT) == 0
        for m, sel in (("a", em_all == 0), ("b", em_all != 0)):
            t0 = time.perf_counter()
            res.noise[m].meta["sigma_s_degraded"] = lum.calibrate_sigma_s(
                ctx, m, sel & ok, snr_all, star_all, res.networks[m], cfg.input_kind,
                seed=cfg.seed)
            steps[f"sigma_s_degraded_{m}_s"] = time.perf_counter() - t0
            t_cal += steps[f"sigma_s_degraded_{m}_s"]
            steps[f"sigma_s_degraded_{m}_mag"] = [
                round(v, 3) for v in res.noise[m].meta["sigma_s_degraded"]["sigma_mag"]]
    # held-out accuracy: test-set rows (no member trained on their star) vs the truth
    x, snr, em = a[0], np.asarray(a[2], float), np.asarray(a[3])
    rows = captured["rows"]
    truth = store.open_truth(survey_path)
    true = truth["MKs_true"].values.astype(float)[rows]
    single_ob = ((truth["star_class"].values.astype(object).astype(str)[rows] == "OB")
                 & ~truth["is_binary"].values.astype(bool)[rows]
                 & ~truth["has_emission"].values.astype(bool)[rows]
                 & ~truth["is_broken"].values.astype(bool)[rows])
    test = res.sets.test & (em == 0) & single_ob
    net = res.networks["a"]
    mks, spread = net.predict(x["a"][test] if isinstance(x, dict) else x[test],
                              return_std=True)
    nm = res.noise["a"]
    table = getattr(nm, "sigma_s_table", None)
    kw = {"sigma_s_table": table} if table is not None else {}
    err = noise_model.mks_uncertainty(snr[test], nm.sigma_int, nm.sigma_s100,
                                      spread if nm.includes_epistemic else None, **kw)
    d = mks - true[test]
    s_t = snr[test]
    acc = {"test_single_nonemission_ob_snr_gt_5": _metrics(d, err, s_t > 5),
           "test_single_nonemission_ob_snr_gt_50": _metrics(d, err, s_t > 50)}
    acc["pull_std_by_snr"] = {f"{lo}-{hi}": _metrics(d, err, (s_t >= lo) & (s_t < hi))
                              for lo, hi in SNR_BINS}
    acc["never_trained_by_snr"] = _never_trained(
        survey_path, products_dir, res, rows, np.asarray(a[1]).astype(str), nm, kw)
    # per-spectrum residuals, for the comparison on the stars every method held out
    acc["test_spectra"] = {"row": np.asarray(rows)[test].tolist(), "residual": d.tolist(),
                           "mks_err": err.tolist(), "snr": s_t.tolist()}
    return {"seconds_total": t_train + t_cal, "seconds_training_and_mcmc": t_train,
            "seconds_sigma_s_degraded": t_cal, "seconds": steps, "heldout": acc,
            "noise_a": nm.mean, "load_1min_start_end": [load0, os.getloadavg()[0]]}


def _never_trained(survey_path: str, products_dir: str, res, rows, star_ids, nm,  # noqa: ANN001
                   kw: dict) -> dict:
    """Pull std per S/N bin of every spectrum (any S/N, any parallax) of the single
    non-emission OB stars that trained no member (``obpipe validate``'s never-trained
    split), network (a)'s ensemble mean and the MKs_err the code would write."""
    import numpy as np

    from obpipe.io import store
    from obpipe.luminosity import noise_model
    lum = _stage_module()

    survey = store.open_cube(survey_path)
    prods = lum.open_products(products_dir)
    truth = store.open_truth(survey_path)
    trained = np.unique(star_ids[res.sets.train_a | res.sets.train_b])
    stars = survey["star_id"].values.astype(object).astype(str)
    snr = survey["snr_g"].values.astype(float)
    sel = ((prods["em_flag"].values == 0) & ~np.isin(stars, trained)
           & (truth["star_class"].values.astype(object).astype(str) == "OB")
           & ~truth["is_binary"].values.astype(bool) & ~truth["has_emission"].values.astype(bool)
           & ~truth["is_broken"].values.astype(bool) & (snr >= 5))
    idx = np.flatnonzero(sel)
    mks = np.full(idx.size, np.nan)
    spread = np.full(idx.size, np.nan)
    for lo in range(0, idx.size, 4000):
        x = prods["recon_flux"].isel(spec=idx[lo:lo + 4000]).values
        mks[lo:lo + 4000], spread[lo:lo + 4000] = res.networks["a"].predict(x, return_std=True)
    err = noise_model.mks_uncertainty(snr[idx], nm.sigma_int, nm.sigma_s100,
                                      spread if nm.includes_epistemic else None, **kw)
    d = mks - truth["MKs_true"].values.astype(float)[idx]
    return {f"{lo}-{hi}": _metrics(d, err, (snr[idx] >= lo) & (snr[idx] < hi))
            for lo, hi in SNR_BINS}


def _common_test_set(runs: list[dict]) -> dict:
    """Held-out accuracy of each method on the same spectra: the test-set single
    non-emission OB spectra that no member of *any* compared method trained on (the
    methods' own test sets differ: their training samples and cleaning rounds do).
    Returns, per method, scatter / bias / pull std at S/N > 5 and > 50, and the
    difference of each to the first (oldest) method, per spectrum paired."""
    import numpy as np

    per = {r["method"]: r["heldout"].get("test_spectra") for r in runs}
    if any(v is None for v in per.values()):
        return {}
    common = None
    for v in per.values():
        rows = set(v["row"])
        common = rows if common is None else common & rows
    keep = np.array(sorted(common), dtype=np.int64)
    out: dict = {"n_common": int(keep.size)}
    ref = None
    for name, v in per.items():
        order = np.argsort(v["row"])
        row = np.asarray(v["row"])[order]
        at = order[np.searchsorted(row, keep)]
        d, err, snr = (np.asarray(v[k], float)[at] for k in ("residual", "mks_err", "snr"))
        m = {f"snr_gt_{lo}": _metrics(d, err, snr > lo) for lo in (5, 50)}
        if ref is None:
            ref = m
        else:
            for k in m:
                m[k]["scatter_minus_first"] = m[k]["scatter"] - ref[k]["scatter"]
                m[k]["bias_minus_first"] = m[k]["bias"] - ref[k]["bias"]
        out[name] = m
    return out


def _export(rev: str, dest: str) -> str:
    os.makedirs(dest, exist_ok=True)
    tar = subprocess.run(["git", "-C", REPO, "archive", rev, "obpipe"], check=True,
                         capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=tar, check=True)
    return dest


def _table(runs: list[dict]) -> str:
    """Each method's per-step seconds and held-out accuracy side by side (best repeat)."""
    best: dict[str, dict] = {}
    for r in runs:
        if r["method"] not in best or r["seconds_total"] < best[r["method"]]["seconds_total"]:
            best[r["method"]] = r
    names = list(best)
    keys: list[str] = []
    for r in best.values():
        keys += [k for k in r["seconds"] if k not in keys]
    rows = [("seconds_total", [best[n]["seconds_total"] for n in names]),
            ("seconds_training_and_mcmc",
             [best[n].get("seconds_training_and_mcmc", best[n]["seconds_total"])
              for n in names]),
            ("seconds_sigma_s_degraded",
             [best[n].get("seconds_sigma_s_degraded", 0.0) for n in names])]
    rows += [(k, [best[n]["seconds"].get(k) for n in names]) for k in keys]
    for sel in ("test_single_nonemission_ob_snr_gt_5", "test_single_nonemission_ob_snr_gt_50"):
        for q in ("n", "scatter", "bias", "pull_std"):
            rows.append((f"{sel}.{q}", [best[n]["heldout"][sel].get(q) for n in names]))
    for key, label in (("pull_std_by_snr", "test set"),
                       ("never_trained_by_snr", "never trained, all")):
        for lo, hi in SNR_BINS:
            b = f"{lo}-{hi}"
            rows.append((f"pull std, {label}, S/N {b} (n)", [
                None if b not in best[n]["heldout"].get(key, {}) else
                f"{best[n]['heldout'][key][b].get('pull_std', float('nan')):.3f}"
                f" ({best[n]['heldout'][key][b]['n']})" for n in names]))
        if key == "never_trained_by_snr":
            rows.append((f"scatter/bias, {label}, S/N 50-100", [
                None if "50-100" not in best[n]["heldout"].get(key, {}) else
                f"{best[n]['heldout'][key]['50-100'].get('scatter', float('nan')):.3f}/"
                f"{best[n]['heldout'][key]['50-100'].get('bias', float('nan')):+.3f}"
                for n in names]))
    common = _common_test_set(list(best.values()))
    if common:
        rows.append(("common test spectra (n)", [common["n_common"]] * len(names)))
        for sel in ("snr_gt_5", "snr_gt_50"):
            for q in ("scatter", "bias", "pull_std", "scatter_minus_first",
                      "bias_minus_first"):
                rows.append((f"common test set, {sel}.{q}",
                             [common[n][sel].get(q) for n in names]))
    rows.append(("load_1min_start_end", [best[n]["load_1min_start_end"] for n in names]))

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
        if isinstance(v, list):
            return "/".join(fmt(x) for x in v)
        return "-" if v is None else str(v)

    w = max(len(k) for k, _ in rows)
    out = [f"{'':{w}}  " + "  ".join(f"{n:>24}" for n in names)]
    out += [f"{k:{w}}  " + "  ".join(f"{fmt(v):>24}" for v in vals) for k, vals in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--survey", required=True)
    ap.add_argument("--products", required=True, help="products dir through 'photometry'")
    ap.add_argument("--cores", type=int, default=2, help="CPU cores to run on")
    ap.add_argument("--baseline-rev", action="append", default=[],
                    help="git revision of an old code (repeat for several; none: the "
                    "working tree only)")
    ap.add_argument("--new-rev", default=None,
                    help="git revision of the new code (default: the working tree)")
    ap.add_argument("--repeat", type=int, default=1, help="old/new pairs, alternating")
    ap.add_argument("--network-seed", type=int, default=None,
                    help="seed of the networks (initial weights, folds, dropout, batches) "
                    "in every run: the seed-to-seed spread of the held-out accuracy")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(worker(args.survey, args.products, args.network_seed), default=float))
        return
    cpus = sorted(os.sched_getaffinity(0))[:args.cores]
    os.sched_setaffinity(0, cpus)
    with tempfile.TemporaryDirectory(prefix="obpipe-baseline-") as tmp:
        methods = [(f"old ({rev})", _export(rev, os.path.join(tmp, rev.replace("/", "_"))))
                   for rev in args.baseline_rev]
        methods.append(("new", REPO if args.new_rev is None else
                        _export(args.new_rev, os.path.join(tmp, "new"))))
        out: dict = {"cores": cpus, "runs": []}
        for rep in range(args.repeat):
            for name, path in methods:
                env = {**os.environ, "PYTHONPATH": path}
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--survey",
                       args.survey, "--products", args.products]
                if args.network_seed is not None:
                    cmd += ["--network-seed", str(args.network_seed)]
                r = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True,
                                   cwd=tmp)
                res = json.loads(r.stdout.strip().splitlines()[-1])
                res["method"], res["repeat"] = name, rep
                out["runs"].append(res)
                brief = {**res, "heldout": {k: v for k, v in res["heldout"].items()
                                            if k != "test_spectra"}}
                print(json.dumps(brief, default=float), flush=True)
        by: dict = {}
        for r in out["runs"]:
            by.setdefault(r["method"], []).append(r["seconds_total"])
        out["seconds_total_by_method"] = by
        new = min(by["new"])
        out["speedup_best_vs"] = {k: min(v) / new for k, v in by.items() if k != "new"}
        print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
        print(_table(out["runs"]))


if __name__ == "__main__":
    main()
