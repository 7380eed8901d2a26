"""Command line: ``obpipe simulate | ingest | run | validate | info | demo | config``.

Orchestration only: parse arguments, call the library, print results. Errors
exit non-zero with a one-line reason.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from obpipe.config import PipelineConfig

log = logging.getLogger("obpipe")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {value}")
    return value


def _scheduler_spec(text: str) -> str:
    from obpipe.engine.schedulers import LOCAL_CLUSTER, LOCAL_SCHEDULERS, is_scheduler_address

    if text in (*LOCAL_SCHEDULERS, LOCAL_CLUSTER) or is_scheduler_address(text):
        return text
    raise argparse.ArgumentTypeError(
        f"expected {', '.join(LOCAL_SCHEDULERS)}, {LOCAL_CLUSTER} or a scheduler address "
        f"such as tcp://127.0.0.1:8786, got {text!r}")


def _scheduler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", type=_scheduler_spec, default=None,
                   metavar="threads|processes|synchronous|local-cluster|ADDRESS",
                   help="local dask scheduler, a distributed.LocalCluster on 127.0.0.1 "
                   "(local-cluster) or the address of a running scheduler "
                   "(tcp://HOST:8786); default: processes for simulate and ingest, the "
                   "configuration's run.scheduler (threads) otherwise")
    p.add_argument("--address", default=None, type=_scheduler_spec,
                   help="address of a running dask scheduler, e.g. tcp://127.0.0.1:8786 "
                   "(same as --scheduler ADDRESS)")


def _version() -> str:
    from obpipe.version import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    from obpipe.simulate.options import SimulationConfig

    d = SimulationConfig()
    parser = argparse.ArgumentParser(prog="obpipe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--version", action="version", version=f"obpipe {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate a mock LAMOST OB survey into a Zarr cube")
    p.add_argument("--n-stars", type=_positive_int, default=d.n_stars)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", required=True, help="output store (path or fsspec URL)")
    p.add_argument("--chunk-size", type=_positive_int, default=d.chunk_size)
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    for name in ("interloper_fraction", "subdwarf_fraction", "white_dwarf_fraction",
                 "evolved_fraction", "binary_fraction", "emission_fraction",
                 "broken_fraction", "supergiant_fraction"):
        p.add_argument("--" + name.replace("_", "-"), type=_fraction,
                       default=getattr(d, name), help=f"default {getattr(d, name)}")
    p.add_argument("--gaia-release", choices=["dr2", "dr3"], default=d.gaia_release)
    p.add_argument("--extinction-law", choices=["G23", "F99", "F19", "CCM89", "O94"],
                   default=d.extinction_law,
                   help=f"the mock's extinction-curve family (default {d.extinction_law})")
    p.add_argument("--rv-scatter", type=float, default=d.rv_scatter,
                   help=f"star-to-star sigma of R_V about {d.rv_mean} (default {d.rv_scatter})")
    _scheduler_options(p)

    p = sub.add_parser("ingest", help="ingest LAMOST FITS files and a star table into a cube")
    p.add_argument("inputs", nargs="+", metavar="FILES_OR_DIRS",
                   help="LAMOST FITS files (.fits, .fits.gz) or directories to search")
    p.add_argument("--table", required=True,
                   help="Gaia x 2MASS star table (CSV, ECSV, FITS, Parquet, VOTable)")
    p.add_argument("--out", required=True, help="output store (path or fsspec URL)")
    p.add_argument("--append", action="store_true",
                   help="add files to an existing complete store (files in it are skipped)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first file that is not cleanly ingested")
    p.add_argument("--column-map", default=None,
                   help="table column -> cube column: 'old=new,old2=new2' or a JSON file")
    p.add_argument("--match-radius", type=float, default=3.0,
                   help="sky-position join radius in arcsec (when no id is shared)")
    p.add_argument("--gaia-release", choices=["auto", "dr2", "dr3"], default="auto")
    p.add_argument("--chunk-size", type=_positive_int, default=2000,
                   help="spectra per chunk of a new store")
    p.add_argument("--report", default=None,
                   help="CSV report path (default: <store>.ingest_report.csv)")
    p.add_argument("--max-decompressed-mib", type=float, default=64.0, metavar="MIB",
                   help="skip (with a reason) any input file larger than this once "
                   "decompressed; gzip is inflated only up to it (default 64 MiB)")
    p.add_argument("--workers", type=_positive_int, default=None, help="local worker count")
    _scheduler_options(p)

    p = sub.add_parser("run", help="run pipeline stages on a survey store")
    p.add_argument("survey")
    p.add_argument("--out", required=True, help="products directory")
    p.add_argument("--stages", default=None, help="comma-separated stages (default: all)")
    p.add_argument("--force", action="store_true", help="rerun complete stages")
    p.add_argument("--models", default=None, metavar="DIR",
                   help="reuse the trained model files of DIR (a products directory or its "
                        "models/) instead of training: PCA bases, networks, noise models")
    p.add_argument("--allow-simulated-models", action="store_true",
                   help="apply models trained on a simulated survey to a real one "
                        "(recorded in the products and the run summary)")
    _run_options(p)
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    _scheduler_options(p)

    p = sub.add_parser("validate", help="metrics of a store (and products) against truth")
    p.add_argument("survey")
    p.add_argument("--products", default=None, help="products directory to validate too")
    p.add_argument("--json", action="store_true", help="print JSON (default: also JSON)")
    _scheduler_options(p)

    p = sub.add_parser("info", help="human summary of a store")
    p.add_argument("survey")

    p = sub.add_parser("report", help="the paper's figures (PNG) and one HTML page of a run")
    p.add_argument("products", metavar="PRODUCTS", help="products directory")
    p.add_argument("--survey", default=None,
                   help="survey store (default: the products' 'survey' attribute)")
    _scheduler_options(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default: PRODUCTS/report)")

    p = sub.add_parser("demo", help="simulate the default survey and run every stage")
    p.add_argument("--dir", default="demo", help="working directory for the demo products")
    p.add_argument("--n-stars", type=_positive_int, default=d.n_stars)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--overwrite", action="store_true")
    _run_options(p)
    _scheduler_options(p)

    p = sub.add_parser("distance", help="distance posterior of one star (Sec. 7, eqs. 18-24)")
    p.add_argument("--parallax", type=float, default=float("nan"),
                   help="Gaia parallax, mas (zero-point corrected; see --parallax-offset)")
    p.add_argument("--parallax-error", type=float, default=float("nan"), help="mas")
    p.add_argument("--parallax-offset", type=float, default=0.0,
                   help="zero-point subtracted from --parallax, mas (default 0)")
    p.add_argument("--ks", type=float, default=float("nan"), help="apparent 2MASS Ks, mag")
    p.add_argument("--ks-error", type=float, default=0.0, help="mag")
    p.add_argument("--aks", type=float, default=0.0, help="Ks extinction A_Ks, mag (eq. 24)")
    p.add_argument("--aks-error", type=float, default=0.0, help="mag")
    p.add_argument("--mks", type=float, default=float("nan"),
                   help="spectroscopic M_Ks, mag (omit for a parallax-only distance)")
    p.add_argument("--mks-error", type=float, default=float("nan"), help="mag")
    p.add_argument("--prior", choices=("population", "flat", "edsd"), default="population",
                   help="population (default: Galactic OB disc x survey selection; needs "
                        "--ra/--dec), flat (the paper's, Sec. 7) or edsd")
    p.add_argument("--ra", type=float, default=float("nan"), help="deg (population prior)")
    p.add_argument("--dec", type=float, default=float("nan"), help="deg (population prior)")
    p.add_argument("--prior-from", default=None, metavar="PRODUCTS",
                   help="population prior hyperparameters fitted to a survey by `obpipe "
                        "run` (default: PopulationPrior's starting values)")
    p.add_argument("--edsd-length", type=float, default=1.35, help="EDSD length scale, kpc")
    p.add_argument("--d-max", type=float, default=30.0, help="grid edge / flat prior edge, kpc")
    p.add_argument("--plot", default=None, metavar="FILE", help="save the posterior (PNG/PDF)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("photometry", help="E(B-V), A_Ks, zero-point and geometric M_Ks of a "
                       "star table (Gaia archive / 2MASS columns; no spectra)")
    p.add_argument("table", help="star table: CSV, ECSV, Parquet, FITS or VOTable")
    p.add_argument("--out", required=True, help="output Parquet table")
    p.add_argument("--format", default=None, help="astropy table format (default: from name)")
    p.add_argument("--gaia-release", default="auto", choices=("auto", "DR2", "DR3"))
    p.add_argument("--law", default=None, choices=("G23", "F99"),
                   help="extinction-curve family (default: the config's, G23)")
    p.add_argument("--r-v", type=float, default=None, help="R_V of the curve (default 3.1)")
    p.add_argument("--r-v-scatter", type=float, default=None,
                   help="sigma(R_V) propagated into ebv_err / AKs_err (default 0.18)")
    p.add_argument("--fit-r-v", action="store_true",
                   help="fit R_V per star with E(B-V), prior N(r_v, r_v_scatter) (beyond the "
                        "paper; [photometry] fit_r_v)")
    p.add_argument("--low-extinction-coefficients", action="store_true",
                   help="coefficients of the low-extinction limit (the paper's), not at each "
                        "star's own A0")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="TOML configuration; its [photometry] section is used")

    p = sub.add_parser("config", help="the effective run configuration (TOML)")
    p.add_argument("--show", action="store_true",
                   help="print the effective configuration as TOML (the default action)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="TOML configuration file to validate and merge over the defaults")
    return parser


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help="TOML configuration (see `obpipe config --show`)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


@contextlib.contextmanager
def _dask_scheduler(args: argparse.Namespace, default: str | None,
                    config: PipelineConfig | None = None) -> Iterator[str | None]:
    """The scheduler for dask.compute (:func:`obpipe.engine.schedulers.dask_scheduler`):
    ``--address``, else ``--scheduler``, else ``default``; a cluster's client is yielded as
    None."""
    from obpipe.engine.schedulers import RunConfig, dask_scheduler

    run = config.run if config is not None else RunConfig()
    with dask_scheduler(args.address or args.scheduler or default,
                        local_cluster_workers=run.local_cluster_workers,
                        threads_per_worker=run.threads_per_worker,
                        connect_timeout_s=run.connect_timeout_s) as scheduler:
        yield scheduler


def _cmd_simulate(args: argparse.Namespace) -> int:
    from obpipe.simulate.options import SimulationConfig
    from obpipe.simulate.survey import simulate_survey

    fractions = {k: getattr(args, k) for k in (
        "interloper_fraction", "subdwarf_fraction", "white_dwarf_fraction", "evolved_fraction",
        "binary_fraction", "emission_fraction", "broken_fraction", "supergiant_fraction")}
    cfg = SimulationConfig(n_stars=args.n_stars, seed=args.seed, chunk_size=args.chunk_size,
                           gaia_release=args.gaia_release, extinction_law=args.extinction_law,
                           rv_scatter=args.rv_scatter, **fractions)
    cfg.validate()
    t0 = time.perf_counter()
    with _dask_scheduler(args, "processes") as scheduler:
        summary = simulate_survey(args.out, cfg, overwrite=args.overwrite, scheduler=scheduler)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary))
    return 0


def _column_map(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    if os.path.isfile(text):
        with open(text) as fh:
            return dict(json.load(fh))
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"--column-map: expected 'old=new,...' or a JSON file, got {text!r}")
    return {old.strip(): new.strip() for old, new in pairs}


def _cmd_ingest(args: argparse.Namespace) -> int:
    from obpipe.ingest import IngestConfig, ingest

    cfg = IngestConfig(chunk_size=args.chunk_size, match_radius_arcsec=args.match_radius,
                       gaia_release=args.gaia_release, strict=args.strict,
                       max_decompressed_mib=args.max_decompressed_mib)
    t0 = time.perf_counter()
    with _dask_scheduler(args, "processes") as scheduler:
        summary = ingest(args.inputs, args.table, args.out, append=args.append, config=cfg,
                         scheduler=scheduler, column_map=_column_map(args.column_map),
                         report_csv=args.report, num_workers=args.workers)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary))
    return 0


def _run_and_summarize(args: argparse.Namespace, survey: str, products: str,
                       stages: list[str] | None, force: bool) -> dict:
    """run_pipeline with the CLI's configuration, scheduler and progress; the summary."""
    from obpipe.config import load_config
    from obpipe.engine.schedulers import progress_enabled
    from obpipe.pipeline import run_pipeline, summarize_run

    config = load_config(args.config)
    spec = args.address or args.scheduler or config.run.scheduler
    progress = progress_enabled(config.run.progress and not args.quiet)
    t0 = time.perf_counter()
    with _dask_scheduler(args, config.run.scheduler, config) as scheduler:
        report = run_pipeline(survey, products, stages, scheduler=scheduler, force=force,
                              config=config, progress=progress,
                              models_dir=getattr(args, "models", None),
                              allow_simulated_models=getattr(args, "allow_simulated_models",
                                                             False))
        return summarize_run(survey, products, report, time.perf_counter() - t0,
                             scheduler=spec)


def _round_json(value: object) -> object:
    """JSON form of numpy numbers, 4 significant digits (a summary line stays short
    without being cut mid-number)."""
    import numbers

    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    try:
        return float(f"{float(value):.4g}")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(value)


def _photometry_line(metrics: dict) -> str:
    """The demo's E(B-V)-vs-truth line: whole JSON (never cut mid-number), numbers to 4
    significant digits."""
    phot = metrics.get("photometry", {})
    ebv = phot.get("ebv", {}).get("non_emission_all_bands", phot.get("ebv", {}))
    return "photometry vs truth: " + json.dumps(_rounded(ebv))


def _rounded(value: object) -> object:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    return _round_json(value)


def _format_summary(summary: dict) -> str:
    """The run summary for a person (the numbers come from pipeline.summarize_run)."""
    lines = [f"obpipe run: {len(summary['stages'])} stages in {summary['seconds_total']:.1f} s "
             f"(scheduler: {summary['scheduler']})"]
    lines.append(f"  {'stage':<12} {'status':<20} {'seconds':>8}  blocks written/skipped")
    for name, rec in summary["stages"].items():
        blocks = (f"{rec['blocks_written']}/{rec['blocks_skipped']}"
                  if "blocks_written" in rec else "")
        lines.append(f"  {name:<12} {rec['status']:<20} {rec['seconds']:>8.1f}  {blocks}")
        if rec.get("rerun_because") and rec["rerun_because"] != "--force":
            lines.append(f"  {'':<12} rerun: {rec['rerun_because']}")
    if "n_spectra" in summary:
        lines.append(f"spectra: {summary['n_spectra']} ({summary['n_stars']} stars)")
    if summary.get("fractions"):
        lines.append("fractions of spectra: " + ", ".join(
            f"{k} {v:.3f}" for k, v in summary["fractions"].items()))
    files = summary["files"]
    lines.append(f"products: {files['products_store']}")
    for label in ("catalogs", "models", "figures"):
        if files[label]:
            shown = files[label] if label == "catalogs" else [
                f"{os.path.dirname(files[label][0])} ({len(files[label])} files)"]
            lines.append(f"{label}: " + ", ".join(shown))
    lines.append(f"summary: {files['summary']}")
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    summary = _run_and_summarize(args, args.survey, args.out, stages, args.force)
    print(json.dumps(summary, indent=1) if args.json else _format_summary(summary))
    return 0


def _cmd_distance(args: argparse.Namespace) -> int:
    import math

    from obpipe.distance import DistanceConfig, galactic_lb_deg, star_distance, write_posterior_plot

    cfg = DistanceConfig(prior=args.prior, edsd_length_kpc=args.edsd_length,
                         d_max_kpc=args.d_max)
    lon, lat = float("nan"), float("nan")
    hyper = None
    if cfg.prior == "population":
        if not (math.isfinite(args.ra) and math.isfinite(args.dec)):
            print("obpipe distance: the default population prior needs the star's position: "
                  "give --ra and --dec (deg), or choose --prior flat (the paper's) or edsd",
                  file=sys.stderr)
            return 2
        lb = galactic_lb_deg([args.ra], [args.dec])
        lon, lat = float(lb[0][0]), float(lb[1][0])
        if args.prior_from:
            from obpipe.stages.distance import fitted_prior

            hyper = fitted_prior(args.prior_from)
            if hyper is None:
                print(f"obpipe distance: {args.prior_from} holds no fitted population prior",
                      file=sys.stderr)
                return 2
    try:
        res = star_distance(args.parallax - args.parallax_offset, args.parallax_error,
                            args.ks, args.ks_error, args.aks, args.aks_error, args.mks,
                            args.mks_error, cfg, l_deg=lon, b_deg=lat, hyper=hyper)
    except ValueError as exc:
        print(f"obpipe distance: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        res["plot"] = write_posterior_plot(args.plot, res["parallax_mas"],
                                           args.parallax_error, res["dm0_mag"],
                                           res["sigma_tot_mag"], res, cfg,
                                           prior_terms=res.get("prior_terms"))
    if args.json:
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                          for k, v in res.items()}, indent=1))
        return 0
    if math.isnan(res["dis"]):
        print("no distance: give a parallax with its error, or Ks and M_Ks with errors")
        return 1
    from obpipe.distance import point_estimate

    label = f"distance ({'mode' if point_estimate(cfg) == 'mode' else '10^logdis'})"
    print(f"{label:16s} {res['dis']:.6g} kpc  (+{res['dis_high'] - res['dis']:.3g} / "
          f"-{res['dis'] - res['dis_low']:.3g}; 16th {res['dis_low']:.6g}, "
          f"84th {res['dis_high']:.6g})")
    print(f"log10(d / kpc)   {res['logdis']:.4f} +- {res['logdis_err']:.4f}  "
          f"(relative uncertainty {res['relative_uncertainty']:.3f})")
    print(f"flags            {res['flags']}")
    if args.plot:
        print(f"plot             {res['plot']}")
    return 0


def _cmd_photometry(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np

    from obpipe.config import load_config
    from obpipe.photometry.star_table import run_photometry_table

    cfg = load_config(args.config).photometry
    over = {"law": args.law, "r_v": args.r_v, "r_v_scatter": args.r_v_scatter}
    if args.low_extinction_coefficients:
        over["extinction_dependent"] = False
    if args.fit_r_v:
        over["fit_r_v"] = True
    cfg = dataclasses.replace(cfg, **{k: v for k, v in over.items() if v is not None})
    frame = run_photometry_table(args.table, args.out, args.format, args.gaia_release,
                                 **dataclasses.asdict(cfg))
    n_ebv = int(np.isfinite(frame["ebv"]).sum())
    print(f"{len(frame)} rows: {n_ebv} with E(B-V) (median reduced chi2 "
          f"{np.nanmedian(frame['ebv_chi2']):.2f}), {int(np.isfinite(frame['MKs_geo']).sum())} "
          f"with MKs_geo; extinction {cfg.law} R_V={cfg.r_v}"
          + (f" (prior; fitted per star, median {np.nanmedian(frame['r_v']):.2f})"
             if cfg.fit_r_v else ""))
    print(f"written: {args.out}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from obpipe.config import config_to_toml, load_config

    print(config_to_toml(load_config(args.config)), end="")
    return 0


@contextlib.contextmanager
def _default_scheduler(args: argparse.Namespace) -> Iterator[None]:
    """``--scheduler`` / ``--address`` as Dask's default scheduler for library calls that
    compute with it (validate, report); the threads scheduler when neither is given."""
    import dask

    with _dask_scheduler(args, "threads") as scheduler:
        if scheduler is None:  # a cluster: its client is the default already
            yield
        else:
            with dask.config.set(scheduler=scheduler):
                yield


def _cmd_validate(args: argparse.Namespace) -> int:
    from obpipe.validate import validate_survey

    with _default_scheduler(args):
        metrics = validate_survey(args.survey, args.products)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from obpipe.info import store_summary

    print(store_summary(args.survey))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from obpipe.report import write_report

    with _default_scheduler(args):
        print(write_report(args.products, survey_path=args.survey, out_dir=args.out))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from obpipe.info import store_summary
    from obpipe.simulate.options import SimulationConfig
    from obpipe.simulate.survey import simulate_survey
    from obpipe.validate import validate_survey

    os.makedirs(args.dir, exist_ok=True)
    survey = os.path.join(args.dir, "survey.zarr")
    products = os.path.join(args.dir, "products")
    t0 = time.perf_counter()
    if os.path.exists(survey) and not args.overwrite:
        print(f"using existing survey {survey} (pass --overwrite to simulate again)")
    else:
        cfg = SimulationConfig(n_stars=args.n_stars, seed=args.seed)
        with _dask_scheduler(args, "processes") as scheduler:
            simulate_survey(survey, cfg, overwrite=True, scheduler=scheduler)
        print(f"simulated {survey} in {time.perf_counter() - t0:.0f} s")
    summary = _run_and_summarize(args, survey, products, None, False)
    print(store_summary(survey))
    metrics = validate_survey(survey, products)
    pop = metrics.get("population", {})
    print(_format_summary(summary))
    print(f"population: {pop.get('n_stars')} stars, {pop.get('n_spectra')} spectra; "
          f"emission {pop.get('emission_fraction_of_stars', float('nan')):.3f}, "
          f"broken {pop.get('broken_fraction_of_spectra', float('nan')):.3f}")
    spec = metrics.get("spectral", {})
    if spec:
        print(f"emission flags vs truth: completeness (EW < -2 AA) "
              f"{spec['emission_completeness_ew_lt_-2']:.3f}, purity "
              f"{spec['emission_purity']:.3f}; broken-spectrum recall "
              f"{spec['broken_recall']:.3f}")
    if metrics.get("photometry"):
        print(_photometry_line(metrics))
    lum = metrics.get("luminosity", {})
    if lum:
        ms = lum.get("mks_vs_truth", {})
        single = ms.get("single_nonemission_ob_snr_gt_50", {})
        emis = ms.get("single_emission_ob_snr_gt_50", {})
        print(f"M_Ks vs truth, single non-emission OB, S/N > 50: scatter "
              f"{single.get('scatter', float('nan')):.3f} (robust "
              f"{single.get('robust_scatter', float('nan')):.3f}), bias "
              f"{single.get('bias', float('nan')):+.3f}, pull std "
              f"{single.get('pull_std', float('nan')):.2f}; emission stars scatter "
              f"{emis.get('scatter', float('nan')):.3f}")
        binary = lum.get("binary", {})
        eq = binary.get("completeness_by_q", {}).get("q_ge_0.85", {}).get("plx_snr_gt_10", {})
        if eq:
            bound = eq.get("expected_unbiased_quoted_err")
            print(f"binaries vs truth: completeness q >= 0.85, plx/err > 10: "
                  f"{eq.get('completeness') or float('nan'):.3f} (an unbiased M_Ks with the "
                  f"quoted errors: {bound if bound is not None else float('nan'):.3f}); "
                  f"false positives among singles "
                  f"{binary.get('false_positive_rate_singles') or float('nan'):.3f}")
    dist = metrics.get("distance", {})
    if dist:
        print(f"distances vs truth (single stars): coverage of [dis_low, dis_high] "
              f"{dist['coverage_16_84_single']:.3f}, median relative uncertainty "
              f"{dist['median_rel_uncertainty_single']:.3f} (> 10 kpc "
              f"{dist['median_rel_uncertainty_gt10kpc']:.3f}), gain over the parallax "
              f"alone beyond 5 kpc {dist.get('gain_gt5kpc', float('nan')):.2f}x")
    from obpipe.report import write_report

    report = write_report(products, survey)
    print(f"report:   {os.path.abspath(report)}")
    print(f"full metrics: obpipe validate {survey} --products {products}")
    print(f"products: {os.path.abspath(products)}")
    print(f"survey:   {os.path.abspath(survey)}")
    print("open with: xarray.open_zarr(PATH, consolidated=False)")
    return 0


COMMANDS = {"simulate": _cmd_simulate, "ingest": _cmd_ingest, "run": _cmd_run,
            "validate": _cmd_validate, "info": _cmd_info, "report": _cmd_report,
            "distance": _cmd_distance,
            "photometry": _cmd_photometry,
            "demo": _cmd_demo,
            "config": _cmd_config}


def _quiet_distributed() -> None:
    """Without -v, a local cluster or a scheduler connection logs warnings only: Dask's
    distributed sets its own logger to INFO when imported (~40 lines per run: scheduler
    start, worker registrations, client connections), and the client warns about
    "Sending large graph" for the stages' graphs (which embed their small inputs)."""
    import warnings

    import dask

    dask.config.set({"distributed.logging.distributed": "warning"})
    if "distributed" in sys.modules:  # imported already: its logger level is set
        logging.getLogger("distributed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"\s*Sending large graph", category=UserWarning)


def main(argv: Sequence[str] | None = None) -> int:
    from obpipe.engine.memory import set_process_allocator

    set_process_allocator()  # process-wide: here, at the entry, never in a block function
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose:
        _quiet_distributed()
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("obpipe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one-line reason for the user; details with -v
        if args.verbose:
            log.exception("failed")
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"obpipe {args.command}: error: {reason}", file=sys.stderr)
        return 2


def console_main() -> int:
    """The ``obpipe`` console script: :func:`main`."""
    return main()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
