"""``obpipe report``: the paper's figures and summary numbers of a run, as PNG + one HTML page.

:func:`write_report` reads a products directory (and its survey cube, found through the
products' ``survey`` root attribute unless given) and writes into ``OUT_DIR`` (default
``PRODUCTS_DIR/report``):

=====================================  ==================================================
file                                   content (Xiang et al.)
=====================================  ==================================================
``fig2_pca_reconstruction.png``        Fig. 2: spectra, PCA reconstructions, clean windows
``fig3_halpha_excess.png``             Fig. 3: H-alpha excess vs reduced chi2, threshold
``fig4_ebv_comparison.png``            Fig. 4: E(B-V) vs a reference E(B-V) (the simulated
                                       truth stands in for the Green et al. 2019 3D map),
                                       plx/err > 5, emission vs non-emission; without
                                       truth: E(B-V) vs distance and its distribution
``fig5_mks_spec_vs_geo.png``           Fig. 5: spectroscopic vs geometric M_Ks, test stars
``fig8_noise_model_{a,b}.png``         Fig. 8: posterior of (eps, delta, sigma_int,
                                       sigma_s^100) of each network (eqs. 7-14)
``fig9_composites.png``                truth only: Fig. 9, M_Ks(composite) - M_Ks(primary)
                                       vs q for OB+OB and OB+AFGK binaries
``fig10_parallax_excess.png``          Fig. 10: S/N of the parallax excess (eq. 16)
``fig11_distance.png``                 Fig. 11: distance histogram; relative uncertainty
                                       ln(10) sigma_logd vs d, running median, and the
                                       parallax-only sigma_plx / plx (single stars)
``fig12_xy_map.png``                   Fig. 12: Galactic X-Y map, Sun at X = -8.1 kpc,
                                       1 kpc rings
``validation_mks.png``                 truth only: M_Ks vs the true M_Ks (primary), the
                                       residual vs S/N, the pull distribution
``validation_distance.png``            truth only: distance vs the true distance, the
                                       log-distance pull, relative error vs distance
``report.html``                        the figures (relative paths) and the numbers
``report_summary.json``                the numbers (counts, fractions, highlights and,
                                       with truth, :func:`obpipe.validate.validate_survey`)
=====================================  ==================================================

A figure whose products are missing (a stage not run yet) is skipped with a logged reason
that the page shows too. Figs. 2, 3, 5 and 10 come from the stages' own figure code
(:mod:`obpipe.report.spectral_figures`, :func:`obpipe.report.run_figures.write_fig5`,
:func:`~obpipe.report.run_figures.write_fig10`), re-drawn from the current products.
Large surveys: scatter panels show at most ``MAX_POINTS`` randomly chosen spectra.

Modules: :mod:`~obpipe.report.figures` (the report's own figures),
:mod:`~obpipe.report.page` (reading the run, ``report.html``, ``report_summary.json``),
:mod:`~obpipe.report.summary` (the numbers, pure numpy).
"""

from obpipe.report.figures import (
    FIG9_OB_SECONDARY_TEFF_K,
    MAX_POINTS,
    SUN_X_KPC,
    MissingProducts,
    write_fig4,
    write_fig9,
    write_fig11,
    write_fig12,
    write_validation_binaries,
    write_validation_distance,
    write_validation_distance_bins,
    write_validation_mks,
)
from obpipe.report.page import (
    PRODUCT_COLUMNS,
    REPORT_HTML,
    SUMMARY_JSON,
    SURVEY_COLUMNS,
    TRUTH_COLUMNS,
    FigureResult,
    write_report,
)
from obpipe.report.summary import (
    binned_median,
    distance_truth_metrics,
    parallax_relative_uncertainty,
    parallax_snr,
    relative_distance_uncertainty,
    summary_numbers,
)

__all__ = [
    "FIG9_OB_SECONDARY_TEFF_K", "MAX_POINTS", "PRODUCT_COLUMNS", "REPORT_HTML", "SUMMARY_JSON",
    "SUN_X_KPC", "SURVEY_COLUMNS", "TRUTH_COLUMNS", "FigureResult", "MissingProducts",
    "binned_median", "distance_truth_metrics", "parallax_relative_uncertainty", "parallax_snr",
    "relative_distance_uncertainty", "summary_numbers", "write_fig4", "write_fig9",
    "write_fig11", "write_fig12", "write_report", "write_validation_binaries",
    "write_validation_distance", "write_validation_distance_bins", "write_validation_mks",
]
