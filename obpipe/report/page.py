"""The report page: reads a run, draws every figure, writes ``report.html`` and the JSON.

:func:`write_report` loads the products and survey columns (:data:`PRODUCT_COLUMNS`,
:data:`SURVEY_COLUMNS`, and :data:`TRUTH_COLUMNS` of a simulated survey), draws the
figures listed by :func:`_figure_specs` (the report's own from
:mod:`obpipe.report.figures`, Figs. 2, 3, 5, 8 and 10 from the stages' figure code), and
writes the page and ``report_summary.json`` (numbers from :mod:`obpipe.report.summary`).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from obpipe.engine.blockwise import open_products
from obpipe.io import store
from obpipe.report.figures import (
    MissingProducts,
    require_columns,
    write_fig4,
    write_fig9,
    write_fig11,
    write_fig12,
    write_validation_binaries,
    write_validation_distance,
    write_validation_distance_bins,
    write_validation_mks,
)
from obpipe.report.summary import distance_truth_metrics, summary_numbers
from obpipe.version import __version__

log = logging.getLogger("obpipe.report")

#: per-spectrum product variables the report reads (those present)
PRODUCT_COLUMNS = ("specid", "star_id", "uniqflag", "em_flag", "em_flag_star", "quality_flags",
                   "halpha_excess", "halpha_chi2", "ebv", "MKs", "MKs_err", "MKs_geo",
                   "luminosity_set", "snr_dparallax", "binary_flag", "parallax_corrected",
                   "parallax_corrected_error", "dis", "dis_low", "dis_high", "logdis",
                   "logdis_err", "distance_flags", "X", "Y", "Z", "binary_flag_paper",
                   "binary_prob", "parallax_spec", "parallax_spec_err", "MKs_err")
#: survey columns the report reads besides the products
SURVEY_COLUMNS = ("snr_g", "parallax", "parallax_error", "ruwe", "ra", "dec")
#: truth columns the validation figures read
TRUTH_COLUMNS = ("MKs_true", "MKs_system_true", "distance_kpc_true", "ebv_true", "is_binary",
                 "has_emission", "star_class", "is_broken", "mass_ratio",
                 "teff_secondary_true")
REPORT_HTML = "report.html"
SUMMARY_JSON = "report_summary.json"


@dataclass
class FigureResult:
    """One entry of the report: the PNG (relative to the report directory) or why not."""

    key: str
    title: str
    caption: str
    files: list[str] = field(default_factory=list)
    skipped: str | None = None


# ----------------------------------------------------------------- reading the run
def _load_columns(survey_path: str, products_dir: str
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The product variables and survey columns the report uses (those present), as numpy."""
    prods = open_products(products_dir)
    per_spec = [v for v in PRODUCT_COLUMNS if v in prods and prods[v].dims == ("spec",)]
    cols = {k: np.asarray(v.values) for k, v in prods[per_spec].load().data_vars.items()}
    survey = store.open_cube(survey_path)
    if survey.sizes["spec"] != prods.sizes["spec"]:
        raise ValueError(f"{survey_path} has {survey.sizes['spec']} spectra but the products "
                         f"{prods.sizes['spec']}: not the products of this survey")
    names = [c for c in SURVEY_COLUMNS if c in survey and c not in cols]
    cols.update({k: np.asarray(v.values) for k, v in survey[names].load().data_vars.items()})
    if "specid" in cols and not np.array_equal(cols["specid"], survey["specid"].values):
        raise ValueError(f"{survey_path}: specid differs from the products' (another survey?)")
    return cols, dict(prods.attrs)


def _load_truth(survey_path: str) -> dict[str, np.ndarray] | None:
    if not store.has_truth(survey_path):
        return None
    truth = store.open_truth(survey_path)
    names = [c for c in TRUTH_COLUMNS if c in truth]
    return {k: np.asarray(v.values) for k, v in truth[names].load().data_vars.items()}


def _thresholds(attrs: Mapping[str, Any]) -> Any:
    from obpipe.spectra.emission import Thresholds

    if "threshold_emission_significance" not in attrs:
        raise MissingProducts("Figs. 2-3: emission thresholds not in the products "
                              "(run the 'emission' stage)")
    return Thresholds.from_attrs(attrs)


def _copy_into(paths: list[str], out_dir: str) -> list[str]:
    names = []
    for p in paths:
        dst = os.path.join(out_dir, os.path.basename(p))
        if store.absolute(p) != store.absolute(dst):
            store.copy_file(p, dst)
        names.append(os.path.basename(p))
    return names


# ----------------------------------------------------------------- the report
def _figure_specs(survey_path: str, products_dir: str, out_dir: str,
                  cols: Mapping[str, np.ndarray], attrs: Mapping[str, Any],
                  truth: Mapping[str, np.ndarray] | None
                  ) -> list[tuple[str, str, str, Callable[[], list[str]]]]:
    """(key, title, caption, draw) for every figure; draw returns file names in out_dir."""
    from obpipe.report import run_figures
    from obpipe.stages import luminosity as lum

    def out(name: str) -> str:
        return os.path.join(out_dir, name)

    def fig23() -> list[str]:
        require_columns(cols, ("em_flag", "quality_flags", "halpha_excess", "halpha_chi2"),
                 "Figs. 2-3")
        from obpipe.report.spectral_figures import write_spectral_figures

        return _copy_into(write_spectral_figures(survey_path, products_dir,
                                                 _thresholds(attrs)), out_dir)

    def fig5() -> list[str]:
        require_columns(cols, ("MKs", "MKs_geo", "luminosity_set"), "Fig. 5")
        return _copy_into([run_figures.write_fig5(survey_path, products_dir)], out_dir)

    def fig8() -> list[str]:
        from obpipe.luminosity import noise_model

        files = []
        for m in ("a", "b"):
            src = os.path.join(products_dir, lum.MODEL_DIR, lum.NOISE_FILES[m])
            if store.exists(src):
                r = noise_model.NoiseModelResult.load(src)
                files.append(noise_model.corner_plot(
                    r, out(f"fig8_noise_model_{m}.png"),
                    title=f"network ({m}): {r.meta.get('sample', '')}"))
        if not files:
            raise MissingProducts("Fig. 8: no noise-model posterior in models/ "
                                  "(run the 'luminosity' stage)")
        return [os.path.basename(f) for f in files]

    def fig10() -> list[str]:
        require_columns(cols, ("snr_dparallax", "MKs_geo"), "Fig. 10")
        return _copy_into([run_figures.write_fig10(survey_path, products_dir)], out_dir)

    specs: list[tuple[str, str, str, Callable[[], list[str]]]] = [
        ("fig2_3", "Figs. 2 and 3: PCA reconstruction and H-alpha emission",
         "Fig. 2: a non-emission and an emission spectrum (black) with the PCA reconstruction "
         "(red); the clean windows in blue. Fig. 3: mean H-alpha excess (6557-6571 AA) "
         "against the reduced chi2 around H-alpha; the dashed line is the emission cut.",
         fig23),
        ("fig4", "Fig. 4: E(B-V)",
         "E(B-V) from adjacent-band colour excesses (Sec. 4) for plx/err > 5, emission "
         "(red) and non-emission (blue) spectra. " + (
             "The reference is the simulated truth (the paper: the Green et al. 2019 map; "
             "paper: mean/std of the difference 0.04/0.09 mag without, 0.11/0.13 mag with "
             "emission)." if truth is not None else
             "No reference map ships with obpipe: E(B-V) against distance and its "
             "distribution."),
         lambda: [os.path.basename(write_fig4(cols, out("fig4_ebv_comparison.png"), truth))]),
        ("fig5", "Fig. 5: spectroscopic vs geometric M_Ks",
         "Test stars with plx/err > 10 and S/N > 20; left network (a) (full spectrum, "
         "non-emission), right network (b) (clean windows, emission). Solid: 1:1; dashed: "
         "+0.75 mag (equal-mass binaries).", fig5),
        ("fig8", "Fig. 8: noise model posterior",
         "emcee posterior of eps, delta, sigma_int and sigma_s^100 (eqs. 7-14) for each "
         "network (paper: sigma_int = 0.25, sigma_s^100 = 0.10 mag).", fig8),
        ("fig10", "Fig. 10: parallax excess",
         "S/N of the difference between spectro-photometric and Gaia parallax (eq. 16) for "
         "plx/err > 10 and S/N > 50; red: MKs_geo < 0. Dashed: the binary cut at 2.", fig10),
        ("fig11", "Fig. 11: distances",
         "Left: heliocentric distances. Right: relative uncertainty ln(10) sigma_logd of "
         "single stars vs distance, running median (solid) and the parallax-only "
         "sigma_plx/plx (dashed, zero-point-corrected parallax; paper: median 8 %).",
         lambda: [os.path.basename(write_fig11(cols, out("fig11_distance.png")))]),
        ("fig12", "Fig. 12: X-Y map",
         "Galactocentric X-Y positions; the Sun (+) at X = -8.1 kpc, dashed rings every "
         "1 kpc.", lambda: [os.path.basename(write_fig12(cols, out("fig12_xy_map.png")))]),
    ]
    if truth is not None:
        specs += [
            ("fig9", "Fig. 9: composite spectra against their primary",
             "M_Ks read by the networks from each binary's composite spectrum minus the "
             "true M_Ks of its primary, against q, for OB+OB (secondary >= 10 kK) and "
             "OB+AFGK systems, S/N > 50 (simulated survey only). Dashed: the system's "
             "photometric offset; dotted: single stars' median residual. Paper (Sec. 6): "
             "composites read as faint as the primary or slightly fainter.",
             lambda: [os.path.basename(write_fig9(cols, truth, out("fig9_composites.png")))]),
            ("validation_mks", "Validation: M_Ks against the truth",
             "Spectroscopic M_Ks against the true M_Ks of the primary (simulated survey "
             "only), the residual against S/N with the quoted error, and the pull.",
             lambda: [os.path.basename(write_validation_mks(cols, truth,
                                                            out("validation_mks.png")))]),
            ("validation_distance", "Validation: distances against the truth",
             "Mode of the distance posterior against the true distance, the pull of the "
             "log-distance, and the relative error against distance with the quoted "
             "uncertainty.",
             lambda: [os.path.basename(write_validation_distance(
                 cols, truth, out("validation_distance.png")))]),
            ("validation_distance_bins", "Validation: distance bias and coverage per bin",
             "Median of true/dis - 1 and the 16-84 % coverage per distance bin, binned by "
             "the true and by the catalogued distance (single stars), with the target bands "
             "and the closed-form bound s sigma^2 / 2 no prior can beat in both binnings.",
             lambda: [os.path.basename(write_validation_distance_bins(
                 cols, truth, out("validation_distance_bins.png")))]),
            ("validation_binaries", "Validation: binary completeness against q",
             "Fraction of true binaries flagged against the mass ratio, plx/sigma > 10, for "
             "the catalog's binary_flag and the paper's single-spectrum flag, with the "
             "false-positive rate among single stars and the closed-form bound of eqs. "
             "15-17 for one spectrum with an unbiased M_Ks. On a mock the binary model's "
             "training stars are included here; held-out figures: docs/validation.md.",
             lambda: [os.path.basename(write_validation_binaries(
                 cols, truth, out("validation_binaries.png")))]),
        ]
    return specs


def _highlights(summary: Mapping[str, Any], metrics: Mapping[str, Any] | None
                ) -> list[tuple[str, Any, str]]:
    """(label, value, paper / note) rows for the top of the page."""
    f = summary.get("fractions", {})
    rows: list[tuple[str, Any, str]] = [
        ("spectra", summary.get("n_spectra"), "27,784 (DR5)"),
        ("stars", summary.get("n_stars"), "16,002"),
        ("stages complete", ", ".join(summary.get("stages_complete", [])), ""),
        ("emission-line stars (fraction of stars)", f.get("emission_stars"), "0.13"),
        ("broken spectra (fraction)", f.get("broken_spectra"), ""),
        ("binary flag = 1 (fraction of classified)", f.get("binary_of_classified"), ""),
        ("median M_Ks error (mag)", summary.get("median_MKs_err"), ""),
        ("median distance (kpc)", summary.get("median_distance_kpc"), ""),
        ("median relative distance uncertainty", summary.get(
            "median_relative_distance_uncertainty"), "0.08"),
        ("distance > 5 kpc (fraction)", f.get("distance_gt_5kpc"), ""),
        ("catalog rows", summary.get("catalog_rows"), "one per spectrum"),
        ("catalog rows, unique stars", summary.get("catalog_unique_rows"), ""),
    ]
    if metrics:
        def get(*path: str) -> Any:
            cur: Any = metrics
            for p in path:
                if not isinstance(cur, Mapping) or p not in cur:
                    return None
                cur = cur[p]
            return cur

        rows += [
            ("truth: emission completeness (EW < -2 AA)",
             get("spectral", "emission_completeness_ew_lt_-2"), ""),
            ("truth: emission purity", get("spectral", "emission_purity"), ""),
            ("truth: broken-spectrum recall", get("spectral", "broken_recall"), ""),
            ("truth: E(B-V) bias, non-emission (mag)",
             get("photometry", "ebv", "non_emission", "bias"), "0.04 vs Green+19"),
            ("truth: E(B-V) scatter, non-emission (mag)",
             get("photometry", "ebv", "non_emission", "scatter"), "0.09 vs Green+19"),
            ("truth: M_Ks - true, single non-emission S/N > 50: median (mag)",
             get("luminosity", "mks_vs_truth", "single_nonemission_ob_snr_gt_50", "median"),
             ""),
            ("truth: same, robust scatter (mag)",
             get("luminosity", "mks_vs_truth", "single_nonemission_ob_snr_gt_50",
                 "robust_scatter"), ""),
            ("noise model (a): sigma_int (mag)",
             get("luminosity", "noise_model", "a", "sigma_int"), "0.25"),
            ("noise model (a): sigma_s at S/N = 100 (mag)",
             get("luminosity", "noise_model", "a", "sigma_s100"), "0.10"),
            ("truth: binary completeness, q >= 0.85, plx/err > 10",
             get("luminosity", "binary", "completeness_by_q", "q_ge_0.85", "plx_snr_gt_10",
                 "completeness"), ""),
            ("truth: binary false-positive rate (singles)",
             get("luminosity", "binary", "false_positive_rate_singles"), ""),
            ("truth: distance relative error, single: median",
             get("report_distance", "relative_error_single", "median"), ""),
            ("truth: distance relative error, single: robust std",
             get("report_distance", "relative_error_single", "robust_std"), ""),
            ("truth: log-distance pull std, single",
             get("report_distance", "logdis_pull_single", "std"), "1"),
        ]
    return [r for r in rows if r[1] is not None and r[1] != ""]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        v = float(v)
        if not math.isfinite(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


def _jsonable(v: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, NaN / inf to None (strict JSON)."""
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(float(v)) else None
    if v is None or isinstance(v, str):
        return v
    return str(v)


def _html(title: str, meta: list[tuple[str, str]], highlights: list[tuple[str, Any, str]],
          figures: list[FigureResult], metrics: Mapping[str, Any] | None) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:left;font-size:90%}img{max-width:100%;border:1px solid"
        " #eee}.skip{color:#a00}figure{margin:1.5em 0}figcaption{font-size:90%;color:#333}"
        "</style></head><body>",
        f"<h1>{e(title)}</h1>", "<table>",
        *[f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in meta], "</table>",
        "<h2>Summary</h2>",
        "<table><tr><th>quantity</th><th>this run</th><th>paper / expected</th></tr>",
        *[f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td><td>{e(n)}</td></tr>"
          for k, v, n in highlights],
        "</table>", "<h2>Figures</h2>", "<ul>",
        *[f'<li><a href="#{e(f.key)}">{e(f.title)}</a>'
          + (' <span class="skip">(skipped)</span>' if f.skipped else "") + "</li>"
          for f in figures],
        "</ul>",
    ]
    for f in figures:
        parts.append(f'<figure id="{e(f.key)}"><h3>{e(f.title)}</h3>')
        if f.skipped:
            parts.append(f'<p class="skip">skipped: {e(f.skipped)}</p>')
        for name in f.files:
            parts.append(f'<img src="{e(name)}" alt="{e(f.title)}">')
        parts.append(f"<figcaption>{e(f.caption)}</figcaption></figure>")
    if metrics:
        parts += ["<h2>All metrics against the truth</h2>",
                  "<details><summary>obpipe validate (flattened)</summary><table>",
                  *[f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td></tr>"
                    for k, v in _flatten(metrics)],
                  "</table></details>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def _catalog_rows(products_dir: str, summary: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    for key, name in (("catalog_rows", "catalog.parquet"),
                      ("catalog_unique_rows", "catalog_unique.parquet")):
        path = os.path.join(products_dir, name)
        fs, where = store.url_to_fs(path)  # (None, path) for a local path
        if store.exists(path):
            try:
                summary[key] = int(pq.ParquetFile(where, filesystem=fs).metadata.num_rows)
            except (OSError, ValueError) as exc:  # pragma: no cover - a broken file
                log.warning("report: cannot read %s: %s", path, exc)
        elif store.isdir(path):  # a partitioned catalog
            summary[key] = int(pq.ParquetDataset(where, filesystem=fs).read(columns=[])
                               .num_rows)


def write_report(products_dir: str, survey_path: str | None = None,
                 out_dir: str | None = None) -> str:
    """Write the figures, ``report.html`` and ``report_summary.json``; return the HTML path.

    ``survey_path`` defaults to the products' ``survey`` root attribute; ``out_dir`` to
    ``PRODUCTS_DIR/report``. Figures whose products are missing are skipped (logged, and
    listed on the page); metrics against the truth are added for a simulated survey.
    """
    prods_attrs = dict(open_products(products_dir).attrs)
    survey_path = survey_path or prods_attrs.get("survey")
    if not survey_path:
        raise ValueError(f"{products_dir}: no 'survey' attribute in the products; pass the "
                         "survey store (--survey)")
    out_dir = out_dir or os.path.join(products_dir, "report")
    store.makedirs(out_dir)
    cols, attrs = _load_columns(survey_path, products_dir)
    truth = _load_truth(survey_path)
    summary = summary_numbers(cols, attrs)
    _catalog_rows(products_dir, summary)
    metrics: dict[str, Any] | None = None
    if truth is not None:
        from obpipe.validate import validate_survey

        metrics = validate_survey(survey_path, products_dir)
        if all(k in cols for k in ("dis", "logdis", "logdis_err")):
            single = ~truth["is_binary"].astype(bool) & ~truth["is_broken"].astype(bool)
            metrics["report_distance"] = distance_truth_metrics(
                cols["dis"], cols["logdis"], cols["logdis_err"], truth["distance_kpc_true"],
                single)
    figures: list[FigureResult] = []
    for key, title, caption, draw in _figure_specs(survey_path, products_dir, out_dir,
                                                   cols, attrs, truth):
        res = FigureResult(key, title, caption)
        try:
            res.files = draw()
        except MissingProducts as exc:
            res.skipped = str(exc)
            log.info("report: %s skipped: %s", key, exc)
        except Exception as exc:  # a figure never stops the report
            res.skipped = f"failed: {type(exc).__name__}: {exc}"
            log.warning("report: %s failed: %s", key, exc, exc_info=True)
        figures.append(res)
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    meta = [("products", store.absolute(products_dir)), ("survey", str(survey_path)),
            ("truth", "yes (simulated survey)" if truth is not None else "no"),
            ("obpipe", __version__), ("products written by", str(attrs.get(
                "obpipe_version", "?"))), ("created (UTC)", created)]
    highlights = _highlights(summary, metrics)
    page = _html("obpipe report", meta, highlights, figures, metrics)
    path = os.path.join(out_dir, REPORT_HTML)
    with store.open_file(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    with store.open_file(os.path.join(out_dir, SUMMARY_JSON), "w", encoding="utf-8") as fh:
        json.dump(_jsonable({"summary": summary, "highlights": [list(r) for r in highlights],
                   "figures": [{"key": f.key, "files": f.files, "skipped": f.skipped}
                               for f in figures],
                   "metrics": metrics, "products": store.absolute(products_dir),
                   "survey": str(survey_path), "created_utc": created}),
                  fh, indent=1, allow_nan=False)
    log.info("report: %s (%d figures, %d skipped)", path,
             sum(bool(f.files) for f in figures), sum(bool(f.skipped) for f in figures))
    return path
