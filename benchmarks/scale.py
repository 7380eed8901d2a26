"""Scaling of inference (issue 8, item 6): every stage after training, on 30k-300k spectra.

For each size N in ``--sizes`` (default 30,000, 100,000 and 300,000 spectra):

1. a mock survey of ``round(N / 1.74)`` stars (about 1.7 visits per star) is made
   blockwise by :func:`obpipe.simulate.survey.simulate_survey` (``processes``
   scheduler, ``--workers`` processes); with ``--workdir`` it is kept and reused by the
   next invocation (same number of stars, seed and chunk size);
2. training, once: ``obpipe run`` (the whole pipeline) on the smallest survey, which
   fits the PCA bases and trains and calibrates the networks into ``train-N/models/``;
3. inference on every size: ``obpipe run --models train-N`` on a fresh products
   directory runs every stage (index ... catalog) in a child process with those model
   files (copied in by the run: files merely placed in ``models/`` are refitted); the
   script checks that every model file of the run is byte for byte the training's
   (SHA-256) and fails otherwise. Timed: the child's wall clock (Python start
   and imports included, as a user sees it); peak resident memory: the child and all
   its descendants (worker processes), sampled every 0.05 s;
4. the machine's own bound, in the same run, on the same survey, scheduler and worker
   count, with one BLAS thread per worker as in the pipeline: reading the cube's flux
   once (``ds.flux.data.sum()`` over the cube's chunks) and one pass that reads the
   flux and multiplies every block by a 3,909 x 100 random matrix (the size of a
   K = 100 projection); the second is the bound the inference time is divided by.

Printed: per size, spectra, seconds, CPU seconds (user + sys of the run's processes: less
sensitive than the wall clock to other jobs on a shared machine; the larger of the
children's rusage and the sampled process tree, see :func:`obpipe_run`), spectra/s, peak
memory, the bound, the ratio and the 1-minute load average; per-spectrum time and peak
memory relative to the smallest size; the targets on 2 cores (>= 1,000 spectra/s,
per-spectrum time ratio <= 1.3, peak memory ratio <= 1.5, within 5x of the bound) with
whether each is met; the seconds of every stage and the peak memory while it ran (from
the run's ``-v`` log lines "stage X: running"), and the CPU seconds per 1,000 spectra of
every stage (the process tree's user + sys, sampled with the memory).

    python benchmarks/scale.py                                   # 30k, 100k, 300k
    python benchmarks/scale.py --sizes 3000,6000                 # a quick check
    python benchmarks/scale.py --workdir /tmp/obpipe-scale --keep  # keep everything
    python benchmarks/scale.py --sizes 30000 --baseline-rev REV --repeat 2  # old vs new
    python benchmarks/scale.py --sizes 30000 --baseline-rev REV --workdir W --reuse-models
    python benchmarks/scale.py --sizes 30000 --baseline-rev REV --code DIR  # DIR/obpipe vs REV

With ``--baseline-rev`` that revision's code (``git archive`` into the workdir,
``PYTHONPATH``) trains its own models on the smallest survey too, and every inference
run is made twice per repeat, with the old code and models and with the working tree's,
alternating, on the same survey, scheduler and workers; the side-by-side seconds are
printed first, then each stage's wall and CPU seconds for both codes (the rest of the
report is the working tree's best run). ``--reuse-models`` skips the training runs
whose ``train-N[-REV]/models`` already hold model files (a training run otherwise
resumes, and retrains when the code's training options changed); ``--same-models``
gives the old code the working tree's model files (the distance stage's cost depends on
the networks' M_Ks through the fitted population prior: with each code's own models the
two runs differ by more than the code).

Disk: about 28 kB per spectrum for a survey and 45 kB per spectrum for its products
(compressed; measured on a 3k survey); a size that does not fit in the free space of
the work directory is skipped with a message. Products of each size are removed after
it is measured unless ``--keep``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from _memory import PeakRSS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECTRA_PER_STAR = 1.74
#: disk per spectrum (bytes), measured on a 3k mock survey and its products (compressed)
SURVEY_BYTES_PER_SPECTRUM = 28_000
PRODUCTS_BYTES_PER_SPECTRUM = 45_000
TARGETS = {"spectra_per_s": 1000.0, "time_ratio": 1.3, "memory_ratio": 1.5, "bound_ratio": 5.0}


def survey_path(workdir: str, n: int, seed: int, chunk: int) -> str:
    return os.path.join(workdir, f"survey-{n}-seed{seed}-chunk{chunk}.zarr")


def make_survey(path: str, n: int, seed: int, chunk: int, workers: int) -> dict[str, Any]:
    """The mock survey of ``n`` spectra at ``path``, reused when complete and the same."""
    import dask

    from obpipe.config import SimulationConfig
    from obpipe.io import store
    from obpipe.simulate.survey import simulate_survey

    n_stars = round(n / SPECTRA_PER_STAR)
    try:
        ds = store.open_cube(path)
        if (int(ds.attrs.get("n_stars", -1)) == n_stars and int(ds.attrs.get("seed", -1)) == seed
                and int(ds["flux"].chunks[0][0]) == min(chunk, ds.sizes["spec"])):
            return {"n_spectra": int(ds.sizes["spec"]), "seconds": 0.0, "reused": True}
    except (FileNotFoundError, OSError, ValueError, KeyError):
        pass
    cfg = SimulationConfig(n_stars=n_stars, seed=seed, chunk_size=chunk)
    t0 = time.perf_counter()
    with dask.config.set(num_workers=workers):
        summary = simulate_survey(path, cfg, overwrite=True, scheduler="processes")
    return {"n_spectra": int(summary["n_spectra"]), "seconds": time.perf_counter() - t0,
            "reused": False}


_STAGE_START = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) obpipe\.pipeline INFO "
                          r"stage (\w+): running")


def stage_peaks(stderr: str, samples: list[tuple[float, int, float]]
                ) -> tuple[dict[str, int], dict[str, float]]:
    """Peak RSS (bytes) and CPU seconds (user + sys of the process tree) while each stage
    ran, from the "stage X: running" log lines (``-v``) and the sampler's timeline;
    "startup" is before the first stage, the last stage runs to the end of the process
    (the run summary included). The CPU time between two samples goes to the stage of
    the later one."""
    starts = [(_dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(),
               m.group(2)) for m in map(_STAGE_START.match, stderr.splitlines()) if m]
    peaks: dict[str, int] = {}
    cpu: dict[str, float] = {}
    cpu_before = 0.0
    for t, rss, cpu_s in samples:
        name = "startup"
        for t_start, stage in starts:
            if t >= t_start:
                name = stage
        peaks[name] = max(peaks.get(name, 0), rss)
        cpu[name] = cpu.get(name, 0.0) + max(cpu_s - cpu_before, 0.0)
        cpu_before = max(cpu_before, cpu_s)
    return peaks, cpu


def obpipe_run(survey: str, products: str, scheduler: str, workers: int,
               code: str | None = None, models: str | None = None) -> dict[str, Any]:
    """``obpipe -v run`` in a child process: wall and CPU seconds (user + sys of the child
    and its worker processes), peak RSS of its tree (and per stage), its summary.
    ``code``: a directory holding the ``obpipe`` package to run (default: the installed
    one, i.e. the working tree). ``models``: reuse the model files of this products
    directory (``obpipe run --models``)."""
    cmd = [sys.executable, "-m", "obpipe.cli", "-v", "run", survey, "--out", products,
           "--scheduler", scheduler, "-q", "--json"]
    if models is not None:
        cmd += ["--models", models]
    env = {**os.environ, "DASK_NUM_WORKERS": str(workers)}
    if code is not None:
        env["PYTHONPATH"] = code
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # run from the products' parent, not from here: ``python -m`` puts the current
    # directory first on sys.path, ahead of PYTHONPATH, so a run started in the
    # repository imports the working tree's obpipe whatever ``code`` says (every
    # "side by side" before this fix compared the working tree with itself)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=os.path.dirname(os.path.abspath(products)))
    with PeakRSS(proc.pid, keep_samples=True) as mem:
        _, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"obpipe run {survey} failed ({proc.returncode}):\n{stderr[-3000:]}")
    with open(os.path.join(products, "run_summary.json")) as fh:
        summary = json.load(fh)
    reaped = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    peaks, stage_cpu = stage_peaks(stderr, mem.samples)
    # the children's rusage counts only the descendants that were waited for: not the
    # worker processes of a fork server (the server is not waited for) or of a pool left
    # to exit unjoined; the sampled process tree (every live descendant plus what each
    # reaped) sees them all but misses the last < 0.05 s: the larger of the two
    cpu = max(reaped, sum(stage_cpu.values()))
    return {"seconds": seconds, "cpu_seconds": cpu, "cpu_seconds_rusage": reaped,
            "peak_rss_bytes": mem.peak,
            "stage_peak_rss_bytes": peaks, "stage_cpu_seconds": stage_cpu, "summary": summary,
            "warnings": [ln for ln in stderr.splitlines()
                         if ln.strip() and " INFO " not in ln]}


def imported_obpipe(code: str | None, cwd: str) -> str:
    """The ``obpipe`` package directory a run with ``code`` (PYTHONPATH) started in ``cwd``
    imports (printed, so that a side-by-side run shows which code each side ran)."""
    env = {**os.environ, **({"PYTHONPATH": code} if code is not None else {})}
    out = subprocess.run([sys.executable, "-c", "import obpipe, os; "
                          "print(os.path.dirname(obpipe.__file__))"], env=env, cwd=cwd,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def model_signature(models_dir: str) -> dict[str, str]:
    """SHA-256 of every model file (``*.npz``, ``*.safetensors``): a refit or a retrain
    writes other numbers."""
    import hashlib

    out = {}
    for name in sorted(os.listdir(models_dir)):
        if name.endswith((".npz", ".safetensors")):
            with open(os.path.join(models_dir, name), "rb") as fh:
                out[name] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _matmul_block(block: np.ndarray, basis: np.ndarray) -> np.ndarray:
    return np.nan_to_num(block) @ basis


def machine_bound(survey: str, scheduler: str, workers: int, n_components: int = 100
                  ) -> dict[str, float]:
    """Seconds to read the flux once, and to read it and multiply every block by a
    3,909 x ``n_components`` random matrix (one blockwise pass), on ``scheduler``."""
    import dask

    from obpipe.io import store

    try:
        from obpipe.engine.schedulers import single_threaded_blas
    except ImportError:  # a checkout from before the engine package (issue 16)
        from obpipe.runtime import single_threaded_blas

    flux = store.open_cube(survey)["flux"].data
    basis = np.random.default_rng(0).standard_normal((flux.shape[1], n_components)
                                                     ).astype(np.float32)
    projected = flux.map_blocks(_matmul_block, basis, chunks=(flux.chunks[0], (n_components,)),
                                dtype=np.float32)
    out = {}
    with single_threaded_blas(), dask.config.set(scheduler=scheduler, num_workers=workers):
        t0 = time.perf_counter()
        flux.sum().compute()
        out["read_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        projected.sum().compute()
        out["read_matmul_s"] = time.perf_counter() - t0
    return out


def free_bytes(path: str) -> int:
    return shutil.disk_usage(path).free


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="30000,100000,300000",
                    help="comma-separated numbers of spectra (the smallest also trains)")
    ap.add_argument("--workdir", default=None,
                    help="keep the simulated surveys (and the training run) here and reuse "
                    "them in later invocations; default: a temporary directory")
    ap.add_argument("--keep", action="store_true",
                    help="keep every products directory (and a temporary workdir)")
    ap.add_argument("--scheduler", default="threads", choices=("threads", "processes"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=2000, help="spectra per chunk")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--baseline-rev", default=None,
                    help="also run each size's inference with the code of this git revision "
                    "(exported with git archive), same survey, models and scheduler, "
                    "alternating with the working tree, and print the two side by side")
    ap.add_argument("--reuse-models", action="store_true",
                    help="skip each code's training run where its train-N/models directory "
                    "already holds model files (no resume check: a code whose provenance "
                    "keys changed would otherwise retrain)")
    ap.add_argument("--same-models", action="store_true",
                    help="with --baseline-rev: the old code's inference reuses the working "
                    "tree's models instead of training its own (same M_Ks, so that the "
                    "later stages' data-dependent costs are the same)")
    ap.add_argument("--code", default=None,
                    help="measure the obpipe package in this directory (PYTHONPATH) as the "
                    "new code instead of the installed working tree, e.g. an export of a "
                    "revision with one change applied (a shared tree holds others' edits)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="inference runs per size and code (the best is reported)")
    args = ap.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    workdir = args.workdir or tempfile.mkdtemp(prefix="obpipe-scale-")
    os.makedirs(workdir, exist_ok=True)
    workdir = os.path.abspath(workdir)
    print(f"cores: {os.cpu_count()}  scheduler: {args.scheduler} x {args.workers}  "
          f"workdir: {workdir}  free disk: {free_bytes(workdir) / 1e9:.1f} GB", flush=True)

    # 1. surveys, smallest first, as long as the survey and its products fit on disk
    surveys: dict[int, dict[str, Any]] = {}
    for n in sizes:
        path = survey_path(workdir, n, args.seed, args.chunk_size)
        need = (0 if os.path.exists(path) else n * SURVEY_BYTES_PER_SPECTRUM) \
            + n * PRODUCTS_BYTES_PER_SPECTRUM
        if free_bytes(workdir) < need * 1.1:
            print(f"size {n}: skipped, needs ~{need / 1e9:.1f} GB, "
                  f"{free_bytes(workdir) / 1e9:.1f} GB free", flush=True)
            continue
        info = make_survey(path, n, args.seed, args.chunk_size, args.workers)
        surveys[n] = {"path": path, **info}
        print(f"survey {n}: {info['n_spectra']} spectra, "
              + ("reused" if info["reused"] else f"simulated in {info['seconds']:.0f} s "
                 f"({info['n_spectra'] / info['seconds']:.0f} spectra/s)"), flush=True)
    if not surveys:
        raise SystemExit("no size fits on disk")

    # 2. training, once, on the smallest survey (resumed when the workdir has it)
    n_train = min(surveys)
    codes: list[tuple[str, str | None]] = [("new", args.code)]
    if args.baseline_rev:
        base_dir = os.path.join(workdir, f"code-{args.baseline_rev}")
        shutil.rmtree(base_dir, ignore_errors=True)
        os.makedirs(base_dir)
        tar = subprocess.run(["git", "-C", REPO, "archive", args.baseline_rev, "obpipe"],
                             check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", base_dir], input=tar, check=True)
        codes.insert(0, (f"old ({args.baseline_rev})", base_dir))
    for label, code in codes:
        print(f"code {label}: {imported_obpipe(code, workdir)}", flush=True)
    # each code trains its own models (a model file records its training options, whose
    # defaults may differ between revisions: the other code would retrain), unless
    # --same-models: then the old code's inference reuses the working tree's models
    # (obpipe run --models never retrains), so that both run on the same M_Ks
    model_dirs: dict[str, str] = {}
    train: dict[str, Any] = {}
    for label, code in sorted(codes, key=lambda c: c[0] != "new"):  # the new code first
        suffix = "" if label == "new" else f"-{args.baseline_rev}"
        if label != "new" and args.same_models:
            model_dirs[label] = model_dirs["new"]
            print(f"training run on {n_train} ({label}): --same-models, the working tree's "
                  f"models", flush=True)
            continue
        train_dir = os.path.join(workdir, f"train-{n_train}{suffix}")
        model_dirs[label] = os.path.join(train_dir, "models")
        if args.reuse_models and os.path.isdir(model_dirs[label]) and model_signature(
                model_dirs[label]):
            print(f"training run on {n_train} ({label}): --reuse-models, the model files of "
                  f"{train_dir} as they are", flush=True)
            continue
        train = obpipe_run(surveys[n_train]["path"], train_dir, args.scheduler, args.workers,
                           code)
        reused = all(v["status"] != "done" for v in train["summary"]["stages"].values())
        print(f"training run on {n_train} ({label}): " + (
            "complete in the workdir, reused" if reused else
            f"{train['seconds']:.0f} s  (" + ", ".join(
                f"{k} {v['seconds']:.0f}" for k, v in train["summary"]["stages"].items())
            + ")"), flush=True)

    # 3.-4. inference with the trained models, then the machine's bound, per size
    rows = []
    side: dict[int, dict[str, list[float]]] = {}
    stage_side: dict[int, dict[str, dict[str, Any]]] = {}
    for n, sv in surveys.items():
        products = os.path.join(workdir, f"products-{n}")
        best_run: dict[str, Any] | None = None
        for rep in range(args.repeat):
            for label, code in codes:
                shutil.rmtree(products, ignore_errors=True)
                before = model_signature(model_dirs[label])
                run = obpipe_run(sv["path"], products, args.scheduler, args.workers, code,
                                 models=os.path.dirname(model_dirs[label]))
                if model_signature(os.path.join(products, "models")) != before:
                    raise SystemExit(f"size {n} ({label}): a model file was rewritten "
                                     "(refit or retrained)")
                not_done = [k for k, v in run["summary"]["stages"].items()
                            if v["status"] != "done"]
                if not_done:
                    raise SystemExit(f"size {n} ({label}): stages not run: {not_done}")
                side.setdefault(n, {}).setdefault(label, []).append(run["seconds"])
                # per-stage wall and CPU seconds of each code's fastest run
                if run["seconds"] <= min(side[n][label]):
                    stage_side.setdefault(n, {})[label] = {
                        "wall": {k: v["seconds"] for k, v in run["summary"]["stages"].items()},
                        "cpu": run["stage_cpu_seconds"], "seconds": run["seconds"],
                        "cpu_seconds": run["cpu_seconds"]}
                n_spec = int(run["summary"]["n_spectra"])
                side[n]["spectra"] = [n_spec]
                print(f"inference {n}, {label}, run {rep + 1}: {run['seconds']:.1f} s "
                      f"({n_spec / run['seconds']:.0f} spectra/s), CPU "
                      f"{run['cpu_seconds']:.1f} s (rusage {run['cpu_seconds_rusage']:.1f} s), "
                      f"load {os.getloadavg()[0]:.1f}; stages "
                      + ", ".join(f"{k} {v['seconds']:.1f}" for k, v in
                                  run["summary"]["stages"].items()), flush=True)
                if label == "new" and (best_run is None
                                       or run["seconds"] < best_run["seconds"]):
                    best_run = run
        assert best_run is not None
        run = best_run
        bound = machine_bound(sv["path"], args.scheduler, args.workers)
        spectra = int(run["summary"]["n_spectra"])
        rows.append({"size": n, "spectra": spectra, "seconds": run["seconds"],
                     "cpu_seconds": run["cpu_seconds"],
                     "spectra_per_s": spectra / run["seconds"],
                     "peak_rss_gb": run["peak_rss_bytes"] / 1e9, **bound,
                     "bound_ratio": run["seconds"] / bound["read_matmul_s"],
                     "stages": {k: v["seconds"] for k, v in run["summary"]["stages"].items()},
                     "stage_peak_rss_gb": {k: v / 1e9 for k, v in
                                           run["stage_peak_rss_bytes"].items()},
                     "stage_cpu_seconds": run["stage_cpu_seconds"],
                     "load_avg_1min": os.getloadavg()[0],
                     "warnings": run["warnings"]})
        r = rows[-1]
        print(f"inference {n}: {spectra} spectra in {r['seconds']:.1f} s "
              f"({r['spectra_per_s']:.0f} spectra/s), peak {r['peak_rss_gb']:.2f} GB; bound "
              f"{bound['read_matmul_s']:.1f} s", flush=True)
        if not args.keep:
            shutil.rmtree(products, ignore_errors=True)

    # report
    if args.baseline_rev:
        print("\nside by side (best of the repeats; seconds, spectra/s):")
        for n, by in side.items():
            n_spec = by.pop("spectra")[0]
            print(f"  {n}: " + "   ".join(f"{k} {min(v):.1f} s ({n_spec / min(v):.0f}/s)"
                                          for k, v in by.items())
                  + f"   ratio old/new {min(next(iter(by.values()))) / min(by['new']):.2f}")
        print("\nper stage, side by side (the fastest run of each code): wall seconds / CPU "
              "seconds (user + sys of the process tree, sampled)")
        for n, by_code in stage_side.items():
            labels = list(by_code)
            names = ["startup"] + [s for s in next(iter(by_code.values()))["wall"]]
            print(f"  {n}:  " + "".join(f"{lab:>26}" for lab in labels))
            for s in names:
                print(f"  {s:<12}" + "".join(
                    f"{by_code[lab]['wall'].get(s, float('nan')):>14.1f} /"
                    f"{by_code[lab]['cpu'].get(s, 0.0):>9.1f}" for lab in labels))
            print(f"  {'total':<12}" + "".join(
                f"{by_code[lab]['seconds']:>14.1f} /{by_code[lab]['cpu_seconds']:>9.1f}"
                for lab in labels))
    print()
    print(f"{'size':>8} {'spectra':>8} {'seconds':>8} {'CPU s':>7} {'spectra/s':>9} "
          f"{'peak GB':>8} {'read s':>7} {'read+mm s':>9} {'x bound':>8} {'load':>5}")
    for r in rows:
        print(f"{r['size']:>8} {r['spectra']:>8} {r['seconds']:>8.1f} {r['cpu_seconds']:>7.0f} "
              f"{r['spectra_per_s']:>9.0f} {r['peak_rss_gb']:>8.2f} {r['read_s']:>7.2f} "
              f"{r['read_matmul_s']:>9.2f} {r['bound_ratio']:>8.1f} {r['load_avg_1min']:>5.1f}")
    base = rows[0]
    per_spec = {r["size"]: r["seconds"] / r["spectra"] for r in rows}
    cpu_per_spec = {r["size"]: r["cpu_seconds"] / r["spectra"] for r in rows}
    time_ratios = {r["size"]: per_spec[r["size"]] / per_spec[base["size"]] for r in rows[1:]}
    mem_ratio = rows[-1]["peak_rss_gb"] / base["peak_rss_gb"]
    for n, q in time_ratios.items():
        print(f"per-spectrum time {n}/{base['size']}: {q:.2f} (CPU time: "
              f"{cpu_per_spec[n] / cpu_per_spec[base['size']]:.2f})")
    print(f"peak memory {rows[-1]['size']}/{base['size']}: {mem_ratio:.2f}")
    print("\nseconds per stage (peak GB of the process tree while it ran):")
    stage_names = ["startup", *rows[0]["stages"]]
    print(f"{'stage':<12}" + "".join(f"{r['size']:>16}" for r in rows))
    for s in stage_names:
        print(f"{s:<12}" + "".join(
            (f"{r['stages'][s]:>9.1f}" if s in r["stages"] else f"{'-':>9}")
            + f" ({r['stage_peak_rss_gb'].get(s, 0):.2f})" for r in rows))
    print("\nCPU seconds per 1,000 spectra per stage (user + sys of the process tree, sampled; "
          "less sensitive to other jobs than the wall clock):")
    print(f"{'stage':<12}" + "".join(f"{r['size']:>10}" for r in rows))
    for s in stage_names:
        print(f"{s:<12}" + "".join(
            f"{1e3 * r['stage_cpu_seconds'].get(s, 0.0) / r['spectra']:>10.3f}" for r in rows))
    print(f"{'total':<12}" + "".join(
        f"{1e3 * sum(r['stage_cpu_seconds'].values()) / r['spectra']:>10.3f}" for r in rows))
    print(f"\ntargets on {os.cpu_count()} cores:")
    checks = [
        (f">= {TARGETS['spectra_per_s']:.0f} spectra/s at every size",
         min(r["spectra_per_s"] for r in rows) >= TARGETS["spectra_per_s"]),
        (f"per-spectrum time ratio <= {TARGETS['time_ratio']}",
         all(q <= TARGETS["time_ratio"] for q in time_ratios.values()) if time_ratios
         else None),
        (f"peak memory ratio <= {TARGETS['memory_ratio']}",
         mem_ratio <= TARGETS["memory_ratio"] if len(rows) > 1 else None),
        (f"within {TARGETS['bound_ratio']:.0f}x of the read+matmul bound at every size",
         max(r["bound_ratio"] for r in rows) <= TARGETS["bound_ratio"]),
    ]
    for label, ok in checks:
        print(f"  {label}: {'n/a' if ok is None else ('met' if ok else 'NOT met')}")
    warnings = sorted({w for r in rows for w in r["warnings"]})
    if warnings:
        print("\nwarnings of the inference runs:\n  " + "\n  ".join(warnings))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"sizes": rows, "training": {"size": n_train,
                                                   "seconds": train.get("seconds"),
                                                   "stages": train.get("summary", {}).get(
                                                       "stages")},
                       "time_ratios": time_ratios, "memory_ratio": mem_ratio,
                       "side_by_side": stage_side,
                       "scheduler": args.scheduler, "workers": args.workers}, fh, indent=1)
    if args.workdir is None and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
