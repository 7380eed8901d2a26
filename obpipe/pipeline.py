"""Orchestration: the registry of stages and ``obpipe run``.

A stage is a named callable ``run(ctx) -> dict`` plus ``is_complete(ctx) -> bool``.
Stages run in registration order; a stage whose products are complete is skipped
(resume). The survey store and the products directory are the only interfaces:
stages read the survey cube and earlier products, and write new variables into
``PRODUCTS_DIR/products.zarr`` (or small model files beside it). The final
catalog will live at ``PRODUCTS_DIR/catalog.parquet`` / ``catalog.fits``.

No science lives here: every stage's science is in its own module.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from obpipe import provenance
from obpipe.config import PipelineConfig, to_dict, to_json
from obpipe.engine.blockwise import invalidate_stage, products_path, temp_name
from obpipe.engine.context import RunContext
from obpipe.engine.lock import products_lock
from obpipe.engine.memory import release_free_heap
from obpipe.io import store
from obpipe.stages import STAGE_NAMES
from obpipe.version import __version__

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Stage:
    """``prepare`` (optional): starts, without waiting, something slow that the stage will
    need (worker processes), called once the products store exists while earlier stages
    run; it must not change any product."""

    name: str
    description: str
    run: Callable[[RunContext], dict[str, Any]]
    is_complete: Callable[[RunContext], bool]
    prepare: Callable[[RunContext], None] | None = None


#: the stage modules in run order (each of the shape of :mod:`obpipe.stages`)
STAGE_MODULES = tuple(f"obpipe.stages.{name}" for name in STAGE_NAMES)


def registered_stages() -> list[Stage]:
    """All stages in run order: one per module of :mod:`obpipe.stages`."""
    from obpipe.stages import (
        binary,
        catalog,
        distance,
        emission,
        index,
        luminosity,
        normalize,
        pca,
        photometry,
    )

    modules = (index, normalize, pca, emission, photometry, luminosity, binary, distance,
               catalog)
    assert tuple(m.NAME for m in modules) == STAGE_NAMES
    return [Stage(m.NAME, m.DESCRIPTION, m.run, m.is_complete, getattr(m, "prepare", None))
            for m in modules]


def stage_names() -> list[str]:
    return [s.name for s in registered_stages()]


def select_stages(names: Sequence[str] | None) -> list[Stage]:
    """The registered stages named in ``names`` (all if None), in run order."""
    stages = registered_stages()
    if not names:
        return stages
    known = {s.name for s in stages}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(s.name for s in stages)}"
        )
    return [s for s in stages if s.name in set(names)]


def run_pipeline(
    survey_path: str,
    products_dir: str,
    stages: Sequence[str] | None = None,
    scheduler: str | None = None,
    force: bool = False,
    config: PipelineConfig | None = None,
    progress: bool = False,
    models_dir: str | None = None,
    allow_simulated_models: bool = False,
) -> dict[str, Any]:
    """Run the selected stages in order under the products directory's lock.

    A stage is skipped when it is complete and its provenance key (its config section,
    the survey's identity and the keys of the stages it read: :mod:`obpipe.provenance`)
    equals the one recorded with its completion; a stage whose key changed, or one
    downstream of a stage that ran in this run, is rerun from scratch (logged with what
    changed). ``force`` reruns every selected stage.

    ``config``: the typed configuration (default: all defaults); ``stages`` and
    ``force`` given here win over ``config.run``. ``scheduler`` is what
    ``dask.compute`` gets (a local scheduler's name, or None for Dask's default, e.g.
    an active ``distributed.Client``; see :func:`obpipe.engine.schedulers.dask_scheduler`).
    ``progress``: progress bars on stderr (:mod:`obpipe.engine.schedulers`). ``models_dir``:
    trained model files to reuse (copied into ``PRODUCTS_DIR/models``; never
    retrained); models trained on a simulated survey are refused for a real survey
    unless ``allow_simulated_models`` (then listed in the products' attributes and the
    run summary, ``simulated_models``).
    Raises :class:`obpipe.engine.lock.ProductsLocked` if another run holds the directory.
    Returns, per stage, its status ("done" / "skipped (complete)"), wall-clock
    ``seconds`` and the stage's own report.
    """
    config = config or PipelineConfig()
    # workers resolve relative paths against their own working directory: make them absolute
    survey_path, products_dir = (store.absolute(p) for p in (survey_path, products_dir))
    stages = stages or list(config.run.stages) or None
    force = force or config.run.force
    store.open_cube(survey_path)  # fail early, with the reason, on an invalid survey
    selected = select_stages(stages)
    with products_lock(products_dir):
        ident = provenance.survey_identity(survey_path)
        ctx = RunContext(survey_path, products_dir, scheduler, force, config=config,
                         models_supplied=bool(models_dir))
        if models_dir:
            install_models(models_dir, products_dir, ident, allow_simulated_models)
        simulated_models = check_models(products_dir, ident, allow_simulated_models)
        return _run_stages(ctx, selected, ident, simulated_models, progress)


def _run_stages(ctx: RunContext, selected: Sequence[Stage], ident: dict[str, Any],
                simulated_models: list[str], progress: bool) -> dict[str, Any]:
    from obpipe.engine.pools import background_pool
    from obpipe.engine.schedulers import (
        dask_progress,
        show_progress,
        single_threaded_blas,
        stage_banner,
    )
    from obpipe.report.run_figures import FigureDrawer, after_stage

    report: dict[str, Any] = {}
    prepared = False
    ran: set[str] = set()
    records = provenance_records(ctx.products_dir)
    # the figures, drawn off the stages' path where the run has a pool of processes
    drawer = FigureDrawer(lambda: background_pool(ctx))
    with show_progress(progress), single_threaded_blas(), \
            provenance.training_survey(ident), drawer:
        for i, stage in enumerate(selected, start=1):
            t0 = time.perf_counter()
            new = _stage_record(ctx, stage.name, ident, records)
            rerun = _rerun_reason(ctx, stage, new, records.get(stage.name), ran)
            if rerun is None:
                if stage.name not in records:  # complete, made without a record: adopted
                    log.warning("stage %s: complete without a provenance record; adopted "
                                "under the current configuration", stage.name)
                    _write_record(ctx, stage.name, {**new, "status": "complete",
                                                    "adopted": True})
                    records[stage.name] = new
                log.info("stage %s: complete, skipped", stage.name)
                report[stage.name] = {"status": "skipped (complete)",
                                      "seconds": time.perf_counter() - t0}
                continue
            run_ctx = ctx
            replaced = False  # products of an earlier run replaced (not a first run)
            if rerun:
                replaced = stage.name in records or stage.is_complete(ctx)
                log.log(logging.WARNING if replaced else logging.INFO,
                        "stage %s: rerun (%s)", stage.name, rerun)
                if ctx.models_supplied and stage.name in MODEL_STAGES:
                    invalidate_stage(ctx.products_dir, stage.name)  # supplied models kept
                else:
                    run_ctx = dataclasses.replace(ctx, force=True)
            log.info("stage %s: running", stage.name)
            stage_banner(i, len(selected), stage.name, stage.description)
            if stage.name != "index":  # index rewrites the store (and its attributes)
                _write_record(ctx, stage.name, {**new, "status": "running"})
                # this run's configuration before the stage runs: the catalog stage copies
                # it into the catalogs' metadata, also when it is the only stage that runs
                _record_run(ctx, ident, simulated_models)
            with dask_progress(stage.name):
                try:
                    result = stage.run(run_ctx)
                finally:  # the block buffers a stage kept for its next block go back
                    release_free_heap()
            result = {**result, **after_stage(stage.name, ctx.survey_path, ctx.products_dir,
                                              drawer)}
            new["finished_utc"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            _write_record(ctx, stage.name, {**new, "status": "complete"})
            records[stage.name] = new
            ran.add(stage.name)
            report[stage.name] = {"status": "done", "seconds": time.perf_counter() - t0,
                                  **({"rerun_because": rerun} if replaced else {}),
                                  **result}
            _record_run(ctx, ident, simulated_models)
            if not prepared:  # once, after the first stage run: the products exist now
                prepared = True
                _prepare_later_stages(ctx, selected[i:], ctx.force)
    return report


#: the stages whose products each stage reads (its provenance upstream); a stage not
#: listed here reads every earlier stage
STAGE_READS: dict[str, tuple[str, ...]] = {
    "index": (),
    "normalize": ("index",),
    "pca": ("index", "normalize"),
    "emission": ("index", "normalize", "pca"),
    "photometry": ("index",),
    "luminosity": ("index", "pca", "emission", "photometry"),
    "binary": ("index", "photometry", "luminosity"),
    "distance": ("index", "photometry", "luminosity", "binary"),
    "catalog": ("index", "pca", "emission", "photometry", "luminosity", "binary",
                "distance"),
}
#: stages that train model files (PRODUCTS_DIR/models/...): with ``--models`` they reuse
#: the supplied files and never retrain
MODEL_STAGES = ("pca", "luminosity")


def stage_reads(name: str) -> tuple[str, ...]:
    """The stages ``name`` reads (:data:`STAGE_READS`; every earlier one if unlisted)."""
    if name in STAGE_READS:
        return STAGE_READS[name]
    names = stage_names()
    return tuple(names[: names.index(name)]) if name in names else ()


def stage_config_section(ctx: RunContext, name: str) -> Any:
    """The configuration a stage runs with (what its provenance key hashes): the stage
    module's ``provenance_config(config)`` where it has one, else its typed section
    (``SECTION``) as a dict, else nothing."""
    import importlib

    module = importlib.import_module(f"obpipe.stages.{name}")
    if hasattr(module, "provenance_config"):
        return module.provenance_config(ctx.config)
    section = getattr(module, "SECTION", None)
    return to_dict(getattr(ctx.config, section)) if section else {}


def _stage_record(ctx: RunContext, name: str, ident: dict[str, Any],
                  records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    section = stage_config_section(ctx, name)
    if ctx.models_supplied and name in MODEL_STAGES:
        section = {"models_supplied": _model_checksums(ctx.products_dir)}
    upstream = {u: str(records.get(u, {}).get("key", "")) for u in stage_reads(name)}
    return {"key": provenance.stage_key(section, ident["id"], upstream),
            "config_hash": provenance.digest(section), "config": section,
            "survey": ident["id"], "upstream": upstream, "obpipe_version": __version__}


def _rerun_reason(ctx: RunContext, stage: Stage, new: dict[str, Any],
                  old: dict[str, Any] | None, ran: set[str]) -> str | None:
    """None: skip (complete, same provenance); "": run (not complete, resume);
    otherwise run from scratch, for the reason returned."""
    if ctx.force:
        return "--force"
    upstream_ran = [u for u in stage_reads(stage.name) if u in ran]
    if upstream_ran:
        return f"upstream stage(s) {', '.join(upstream_ran)} rerun in this run"
    if old is not None and old.get("key") != new["key"]:
        changed = []
        if old.get("survey") != new["survey"]:
            changed.append(f"survey changed ({old.get('survey')} -> {new['survey']})")
        if old.get("config_hash") != new["config_hash"]:
            diff = _diff_keys(old.get("config"), new["config"])
            changed.append(f"config changed ({diff})")
        ups = [u for u in new["upstream"] if old.get("upstream", {}).get(u)
               != new["upstream"][u]]
        if ups:
            changed.append(f"upstream stage(s) {', '.join(ups)} changed")
        return "; ".join(changed) or "provenance changed"
    if stage.is_complete(ctx):
        return None
    return ""


def _diff_keys(old: Any, new: Any, prefix: str = "") -> str:
    """Names of the options that differ between two config sections (dicts)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return prefix.rstrip(".") or "section"
    names = []
    for k in sorted(set(old) | set(new)):
        if provenance.digest(old.get(k)) != provenance.digest(new.get(k)):
            sub = _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")
            names.append(sub)
    return ", ".join(names) or "section"


def provenance_records(products_dir: str) -> dict[str, dict[str, Any]]:
    """Stage name -> provenance record, from the products' root attributes."""
    try:
        attrs = dict(xr.open_zarr(products_path(products_dir),
                                  consolidated=store.CONSOLIDATED).attrs)
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return {}
    return provenance.stage_records(attrs)


def _write_record(ctx: RunContext, name: str, record: dict[str, Any]) -> None:
    store.update_attrs(ctx.products_path, {provenance.RECORD_PREFIX + name: record})


def _record_run(ctx: RunContext, ident: dict[str, Any], simulated_models: list[str]) -> None:
    """The run's effective configuration, the survey's identity and, if any, the
    simulated-survey models applied to a real survey, in the products' root attributes
    (each stage's own record holds the section it ran with)."""
    try:
        store.update_attrs(ctx.products_path, {
            "obpipe_config": to_json(ctx.config), "survey_identity": ident,
            "simulated_models": simulated_models})
    except (FileNotFoundError, OSError, ValueError, KeyError) as exc:
        log.warning("configuration not recorded in %s: %s", ctx.products_path, exc)


# ------------------------------------------------------------------ model files
def model_files(products_dir: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """The model files of a products directory (those that exist), by name
    (``suffixes``: default :data:`MODEL_SUFFIXES`)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(os.path.join(products_dir, MODELS_DIR))
    if not fs.exists(root):
        return []
    names = sorted(os.path.basename(p) for p in fs.ls(root, detail=False))
    return [os.path.join(products_dir, MODELS_DIR, n) for n in names
            if n.endswith(suffixes or MODEL_SUFFIXES)]


MODELS_DIR = "models"
MODEL_SUFFIXES = (".npz", ".safetensors")
#: network files of obpipe before safetensors (torch pickles): never read
LEGACY_SUFFIXES = (".pt",)


def _model_checksums(products_dir: str) -> dict[str, str]:
    import hashlib

    out = {}
    for path in model_files(products_dir):
        with store.open_file(path, "rb") as fh:
            out[os.path.basename(path)] = hashlib.blake2b(fh.read(), digest_size=16).hexdigest()
    return out


def install_models(models_dir: str, products_dir: str, survey: dict[str, Any],
                   allow_simulated: bool) -> list[str]:
    """Copy the model files of ``models_dir`` (a products directory or its ``models/``)
    into ``PRODUCTS_DIR/models`` for reuse (logged); error if there are none, or if one
    may not be applied to ``survey`` (:func:`check_models`; then nothing is copied)."""
    root = models_dir.rstrip("/")
    if os.path.basename(root) == MODELS_DIR:
        root = os.path.dirname(root)
    found = model_files(root)
    legacy = model_files(root, LEGACY_SUFFIXES)
    if legacy and not any(p.endswith(".safetensors") for p in found):
        raise provenance.ModelFileError(provenance.legacy_torch_message(legacy[0]))
    if not found:
        raise FileNotFoundError(f"{models_dir}: no model files (*.npz, *.safetensors) in "
                                f"{os.path.join(root, MODELS_DIR)}")
    check_models(root, survey, allow_simulated)
    dst_dir = os.path.join(products_dir, MODELS_DIR)
    store.makedirs(dst_dir)
    copied = []
    for path in found:
        dst = os.path.join(dst_dir, os.path.basename(path))
        if store.absolute(path) != store.absolute(dst):
            tmp = temp_name(dst)
            store.copy_file(path, tmp)
            store.replace(tmp, dst)
        copied.append(dst)
    log.warning("reusing %d model file(s) from %s: %s", len(copied), models_dir,
                ", ".join(os.path.basename(p) for p in copied))
    if store.absolute(root) != store.absolute(products_dir):
        from obpipe.report.run_figures import copy_model_figures

        copy_model_figures(root, products_dir)  # their figures (Fig. 8), not redrawn
    return copied


def check_models(products_dir: str, survey: dict[str, Any], allow_simulated: bool
                 ) -> list[str]:
    """Check every model file that this run may apply (:func:`provenance.
    check_model_for_survey`); returns those trained on a simulated survey that a real
    survey uses (allowed by ``allow_simulated``)."""
    used = []
    for path in model_files(products_dir, LEGACY_SUFFIXES):
        log.warning("%s", provenance.legacy_torch_message(path) + "; not read (the "
                    "luminosity stage trains new networks where none are found)")
    for path in model_files(products_dir):
        meta = provenance.model_file_metadata(path)
        if provenance.check_model_for_survey(meta, path, survey, allow_simulated):
            log.warning("%s: trained on a simulated survey, applied to the real survey %s "
                        "(--allow-simulated-models)", path, survey.get("path"))
            used.append(os.path.basename(path))
    return used


def _prepare_later_stages(ctx: RunContext, later: Sequence[Stage], force: bool) -> None:
    """Call the ``prepare`` hook of every later stage that will run (each hook once)."""
    seen: set[Any] = set()
    for stage in later:
        if stage.prepare is None or stage.prepare in seen:
            continue
        try:
            if force or not stage.is_complete(ctx):
                seen.add(stage.prepare)
                stage.prepare(ctx)
        except Exception as exc:  # an optimisation only: the stage starts it itself
            log.warning("stage %s: prepare failed (%s); it starts when the stage runs",
                        stage.name, exc)


#: Fractions in the run summary: name -> (product variable, value counted), spectra with
#: the variable's value equal to it (flags) or, with None, with a finite value.
SUMMARY_FRACTIONS: dict[str, tuple[str, int | None]] = {
    "emission": ("em_flag", 1),
    "emission_undetermined": ("em_flag", -9),
    "ebv_measured": ("ebv", None),
    "MKs_geo_measured": ("MKs_geo", None),
    "MKs_estimated": ("MKs", None),
    "binary": ("binary_flag", 1),
    "binary_unclassified": ("binary_flag", -9),
    "distance_estimated": ("dis", None),
}


def _list_files(products_dir: str, pattern: str) -> list[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(products_dir)
    found = sorted(fs.glob(f"{root.rstrip('/')}/{pattern}"))
    if store.is_url(products_dir):
        proto = products_dir.split("://", 1)[0]
        return [p if store.is_url(p) else f"{proto}://{p}" for p in found]
    return found


def summarize_run(
    survey_path: str,
    products_dir: str,
    report: dict[str, Any],
    seconds: float | None = None,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """The end-of-run summary: counts, fractions, per-stage timings, where the files are.

    ``report``: what :func:`run_pipeline` returned. Fractions are of all spectra
    (:data:`SUMMARY_FRACTIONS`, for the products that exist; ``broken`` is bit
    ``broken`` of ``quality_flags``). Also written to ``PRODUCTS_DIR/run_summary.json``.
    """
    survey_path, products_dir = (store.absolute(p) for p in (survey_path, products_dir))
    summary: dict[str, Any] = {"survey": survey_path, "products_dir": products_dir,
                               "scheduler": scheduler or "default"}
    stages = {}
    for name, rec in report.items():
        keep = {k: rec[k] for k in ("status", "rerun_because", "blocks_written",
                                    "blocks_skipped", "spectra_written") if k in rec}
        keep["seconds"] = round(float(rec.get("seconds", 0.0)), 2)
        stages[name] = keep
    summary["stages"] = stages
    summary["seconds_total"] = round(float(seconds if seconds is not None else sum(
        s["seconds"] for s in stages.values())), 2)
    try:
        from obpipe.engine.blockwise import open_products

        prods = open_products(products_dir)
    except FileNotFoundError:
        prods = None
    if prods is not None:
        summary["n_spectra"] = int(prods.sizes["spec"])
        star_id = prods["star_id"].values.astype(object).astype(str)
        summary["n_stars"] = int(np.unique(star_id).size)
        fractions: dict[str, float] = {}
        for name, (var, value) in SUMMARY_FRACTIONS.items():
            if var not in prods:
                continue
            x = prods[var].values
            hit = np.isfinite(x) if value is None else (x == value)
            fractions[name] = round(float(np.mean(hit)), 4)
        if "quality_flags" in prods:
            from obpipe.spectra.emission import QUALITY_BITS

            q = prods["quality_flags"].values
            fractions["broken"] = round(float(np.mean((q & QUALITY_BITS["broken"]) > 0)), 4)
        summary["fractions"] = fractions
        summary["products_variables"] = len(prods.data_vars)
        attrs = prods.attrs
        summary["survey_identity"] = attrs.get("survey_identity")
        summary["config"] = (json.loads(attrs["obpipe_config"]) if "obpipe_config" in attrs
                             else None)
        summary["provenance"] = provenance_records(products_dir)
        summary["simulated_models"] = list(attrs.get("simulated_models", []))
    summary["files"] = {
        "products_store": products_path(products_dir),
        "catalogs": _list_files(products_dir, "catalog*"),
        "models": _list_files(products_dir, "models/*"),
        "figures": _list_files(products_dir, "figures/*"),
        "summary": os.path.join(products_dir, SUMMARY_FILE),
    }
    try:
        import fsspec

        with fsspec.open(summary["files"]["summary"], "w") as fh:
            json.dump(summary, fh, indent=1)
    except OSError as exc:
        log.warning("run summary not written: %s", exc)
    return summary


SUMMARY_FILE = "run_summary.json"
