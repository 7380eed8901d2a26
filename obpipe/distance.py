"""Bayesian distances on the 0.1 pc grid (Sec. 7, eqs. 18-24).

The posterior of the distance d of one star (eq. 18) is the product of the parallax
likelihood (eqs. 19, 21) and the spectro-photometric likelihood (eqs. 20, 22, 23)
times the prior:

    P(d) ∝ G(plx; 1/d, dplx) · G(M_Ks; m_Ks - A_Ks - 5 log10(d / 10 pc), sigma_tot) · P(d)

with d in kpc and plx in mas (1/d), ``sigma_tot = sqrt(dM_Ks^2 + dm_Ks^2 + dA_Ks^2)``
(eq. 23) and A_Ks = R_Ks E(B-V) (eq. 24; computed by the photometry stage, which
also gives the dereddened magnitude ``Ks0 = m_Ks - A_Ks`` and its error
``sqrt(dm_Ks^2 + dA_Ks^2)``). Binaries (flag 1) use the parallax alone (Sec. 7).

Priors: "flat" (the paper) on (0, d_max], or, beyond the paper, the exponentially
decreasing space density P(d) ∝ d^2 exp(-d/L) of Bailer-Jones et al. (2018, AJ 156,
58), which gives a proper posterior to parallax-only stars of low plx/dplx; under the
flat prior those are truncated by d_max and flagged.

The grid: d_i = (i + 1) h, i = 0 .. N-1, h = 0.1 pc, N = d_max / h (3e5 points for
30 kpc). Per star:

* ``dis``: the grid point of the largest posterior (the mode; under the population
  prior 10^logdis instead, :func:`point_estimate`);
* ``dis_low`` / ``dis_high``: the first grid point at which the cumulative
  distribution reaches 0.16 / 0.84;
* ``logdis`` / ``logdis_err``: the posterior mean and standard deviation of
  log10(d / kpc) (the expectation does not depend on whether the PDF is sampled in d
  or log d; the paper: "PDF-weighted mean and standard deviation").

The window. Write the negative log posterior as Phi/2 with
Phi = A + B + G, A = ((plx - 1/d)/dplx)^2, B = ((Ks0 - M_Ks - 5 log10 d - 10)/sigma_tot)^2
and G = -2 ln(P(d) / max P) ≥ 0. Every term is ≥ 0, so with K = Phi at any trial
distance (we take the best of a few dozen) every grid point where the posterior is
within e^-T of its maximum satisfies A, B, G ≤ c^2 = K + 2T — each of which is an
interval in d that follows in closed form from its Gaussian factor. The window is the
intersection of those intervals, still on the 0.1 pc grid. Outside it every point has
posterior < max · exp(-(c^2 - Phi_min)/2); after the evaluation we check that the
mass this can hide (number of points outside times that bound) is below half the
mass of the grid point at each percentile, so the mode and the percentiles equal the
full-grid answers to the grid step (the mode exactly); otherwise T grows by 10 and
the star is evaluated again. Inside a window the grid is evaluated in segments of
``segment_points`` (memory bound per task whatever the window), combined with a
running log-sum-exp.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from obpipe.options import option

#: distance priors: the paper's "flat", Bailer-Jones et al. (2018) "edsd", and the
#: Galactic "population" prior fitted to the catalog (obpipe.distance.PopulationPrior)
DISTANCE_PRIORS = ("flat", "edsd", "population")
DISTANCE_POINT_ESTIMATES = ("auto", "mode", "log_mean")


@dataclass(frozen=True)
class DistanceConfig:
    """Options of the distance posterior (Sec. 7, eqs. 18-24; ``obpipe.distance``)."""

    grid_step_pc: float = option(
        0.1,
        doc="grid step of the distance posterior, pc (the paper's 0.1 pc)")
    d_max_kpc: float = option(
        30.0,
        doc="largest distance on the grid, kpc: the edge of the flat prior (the OB disk of the "
            "Milky Way ends ~ 15-20 kpc from the Sun towards the anticentre; 30 kpc leaves room "
            "for halo runaways and for parallax-only posteriors to show that they are improper)")
    prior: str = option(
        "population",
        doc="distance prior: \"flat\" (the paper, Sec. 7), \"edsd\", the exponentially "
            "decreasing space density P(d) ~ d^2 exp(-d / L) of Bailer-Jones et al. (2018), "
            "or \"population\" (the default: a Galactic OB disc times the survey's selection, "
            "fitted to the survey; obpipe.distance.PopulationPrior; why: docs/validation.md)")
    edsd_length_kpc: float = option(1.35, doc="length scale L of the \"edsd\" prior, kpc")
    window_log_tolerance: float = option(
        15.0,
        doc="the window keeps every grid point whose log posterior is within this many nats of the"
            " maximum (starting value: a star whose window could hide more than half the mass of "
            "the grid point at a percentile is re-evaluated with 10 more nats, so results equal "
            "the full grid's to the grid step whatever this value)")
    segment_points: int = option(
        65536,
        doc="grid points evaluated at once inside one star's window (memory bound per task)")
    coarse_nodes: int = option(
        512,
        doc="windows wider than this many nodes are evaluated on two levels: exactly at every "
            "(width / coarse_nodes)-th grid point, and at every 0.1 pc point only where the mode "
            "and the percentiles are decided (same answers as the full grid; see obpipe.distance)")
    parallax_only_binaries: bool = option(
        True,
        doc="spectroscopic M_Ks is ignored (parallax alone) for binary_flag == 1 (Sec. 7)")
    population_prior_weight: float = option(
        0.2,
        doc="exponent w of the \"population\" prior in the posterior, P(d)^w (1: full Bayes, 0: "
            "flat): 0.2 balances the bias binned by true and by catalogued distance on two mocks"
            " (benchmarks/distance_priors.py; docs/validation.md)")
    point_estimate: str = option(
        "auto",
        doc="the catalogue's ``dis``: \"mode\" (the paper's, Table 1), \"log_mean\" (exp of "
            "the posterior mean of ln d, i.e. 10^logdis) or \"auto\": the mode under the flat "
            "and edsd priors, log_mean under the population prior (smaller largest bias over "
            "the distance bins binned by true and by catalogued distance on two mocks: "
            "benchmarks/distance_priors.py, docs/validation.md \"Distances: what the data "
            "allow\")")

    def __post_init__(self) -> None:
        if self.point_estimate not in DISTANCE_POINT_ESTIMATES:
            raise ValueError(f"point_estimate must be one of {DISTANCE_POINT_ESTIMATES}, got "
                             f"{self.point_estimate!r}")
        if self.prior not in DISTANCE_PRIORS:
            raise ValueError(f"distance prior must be one of {DISTANCE_PRIORS}, got "
                             f"{self.prior!r}")
        if not 0 < self.grid_step_pc <= 1000:
            raise ValueError(f"grid_step_pc must be in (0, 1000], got {self.grid_step_pc}")
        if not self.d_max_kpc > self.grid_step_pc * 1e-3:
            raise ValueError(f"d_max_kpc must exceed the grid step, got {self.d_max_kpc}")
        if not 0 <= self.population_prior_weight <= 1:
            raise ValueError("population_prior_weight must be in [0, 1], got "
                             f"{self.population_prior_weight}")
        if self.edsd_length_kpc <= 0:
            raise ValueError(f"edsd_length_kpc must be > 0, got {self.edsd_length_kpc}")
        if self.window_log_tolerance < 10:
            raise ValueError("window_log_tolerance below 10 nats would bias the percentiles")
        if self.segment_points < 1024:
            raise ValueError("segment_points must be >= 1024")
        if self.coarse_nodes < 64:
            raise ValueError("coarse_nodes must be >= 64")


log = logging.getLogger(__name__)

#: bits of ``distance_flags``
DISTANCE_FLAG_BITS: Mapping[str, int] = {
    "parallax_only": 1,  # no spectro-photometric term: binary, or no M_Ks / Ks0
    "binary_parallax_only": 2,  # ... because binary_flag == 1 (Sec. 7)
    "no_parallax": 4,  # no usable Gaia parallax: spectro-photometric distance alone
    "truncated_by_prior_edge": 8,  # the posterior reaches d_max (flat prior: improper)
    "no_distance": 16,  # neither a parallax nor a spectro-photometric distance
    "window_widened": 32,  # the a-posteriori window check asked for a wider window
    # the posterior is narrower than ~2 grid steps: mode and width from the Laplace
    # approximation in ln d (continuous), so logdis_err and dis_high - dis_low are > 0
    "analytic_width": 64,
    "mode_outside_interval": 128,  # the mode lies outside [dis_low, dis_high]
    # parallax and spectro-photometric parallax differ by more than 5 sigma
    "parallax_photometric_tension": 256,
}
#: |plx - plx_phot| / sqrt(dplx^2 + dplx_phot^2) above which the tension bit is set
TENSION_SIGMA = 5.0
_MAX_WIDENINGS = 4
_PERCENTILES = (0.16, 0.84)


@dataclass(frozen=True)
class DistanceGrid:
    """The 0.1 pc grid d_i = (i + 1) h (kpc) and per-point tables shared by all stars."""

    step_kpc: float
    n_points: int
    inv_d: np.ndarray  # 1 / d, mas (1 / kpc)
    log10_d: np.ndarray  # log10(d / kpc)
    log10_d_sq: np.ndarray
    d_kpc: np.ndarray  # d, the values of distance_kpc(i)
    ln_d: np.ndarray  # ln(d / kpc), for the population prior
    #: tables of the population prior's terms common to every star, by (beta, alpha)
    #: (:func:`_star_population_penalty`)
    prior_tables: dict[tuple[float, float], tuple[np.ndarray, np.ndarray, np.ndarray]] = \
        field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, cfg: DistanceConfig) -> DistanceGrid:
        step = cfg.grid_step_pc * 1e-3
        n = int(np.floor(cfg.d_max_kpc / step + 1e-9))
        d = (np.arange(n, dtype=np.float64) + 1.0) * step
        lg = np.log10(d)
        return cls(step, n, 1.0 / d, lg, lg * lg, d, np.log(d))

    def distance_kpc(self, index: np.ndarray | int) -> np.ndarray:
        return (np.asarray(index, dtype=np.float64) + 1.0) * self.step_kpc

    @property
    def d_max_kpc(self) -> float:
        return float(self.n_points * self.step_kpc)


def distance_modulus_terms(ks0_mag: np.ndarray, ks0_err_mag: np.ndarray, mks_mag: np.ndarray,
                           mks_err_mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The spectro-photometric term of eq. (22): ``dm0 = m_Ks - A_Ks - M_Ks`` (mag) and
    ``sigma_tot = sqrt(dM_Ks^2 + dm_Ks^2 + dA_Ks^2)`` (eq. 23), with ``Ks0 = m_Ks - A_Ks``
    and ``Ks0_err = sqrt(dm_Ks^2 + dA_Ks^2)``. NaN where an input is missing."""
    ks0 = np.asarray(ks0_mag, dtype=np.float64)
    mks = np.asarray(mks_mag, dtype=np.float64)
    sig = np.hypot(np.asarray(mks_err_mag, dtype=np.float64),
                   np.asarray(ks0_err_mag, dtype=np.float64))
    return ks0 - mks, sig


def _edsd_penalty(d_kpc: np.ndarray, length_kpc: float) -> np.ndarray:
    """G = -2 ln(P(d) / max P) for P ∝ d^2 exp(-d/L) (maximum at d = 2L), ≥ 0."""
    x = np.asarray(d_kpc, dtype=np.float64) / (2.0 * length_kpc)
    return 4.0 * (x - 1.0 - np.log(x))


#: columns of the per-star population-prior terms (:func:`population_prior_terms`)
_PT = {name: i for i, name in enumerate((
    "a_r0", "cos2b", "abs_sinb", "ln_sel_length", "ln_p_max", "beta", "inv_h_r", "inv_h_z",
    "alpha", "r0", "d_mode", "weight"))}


@dataclass(frozen=True)
class PopulationPrior:
    """Hyperparameters of the Galactic population prior (beyond the paper).

    Along the line of sight (l, b) of a star, at distance d (kpc),

        ln P(d) = beta ln d - (R(d) - R0) / h_R - |z(d)| / h_z - (d / L_i)^alpha

    with R(d) = sqrt(R0^2 + d^2 cos^2 b - 2 R0 d cos b cos l) the Galactocentric radius
    and z = d sin b the height (Sun at R0 = 8.1 kpc, z = 0; the paper's convention):
    the number of stars in the cone, d^beta (2 for a uniform density) times an
    exponential OB disc in R and |z| (as e.g. the young thin disc of Bland-Hawthorn &
    Gerhard 2016, ARA&A 54, 529: h_R ~ 2.6 kpc, h_z ~ 0.05-0.3 kpc), times the survey's
    selection in apparent magnitude, exp(-(d / L_i)^alpha): a star of absolute magnitude
    M_i drops below the survey's limit beyond a distance L_i = L_0 10^(-0.2 gamma (M_i -
    M_ref)) (gamma = 1 without extinction; extinction, which grows with d, makes it
    smaller). Every hyperparameter is fitted to the catalog itself
    (:func:`fit_population_prior`, a maximum of the marginal likelihood).

    ``weight`` w (not fitted) tempers the prior in the posterior, P(d)^w: w = 1 is the
    full Bayesian posterior, whose mode is unbiased for stars binned by their catalogued
    distance but pulled towards the population's bulk for stars binned by their true
    distance (regression to the mean); w = 0 is the paper's flat prior (the reverse).
    The default, ``DistanceConfig.population_prior_weight``, was chosen on one mock and
    checked on another (docs/validation.md).
    """

    beta: float = 2.0
    disk_scale_length_kpc: float = 2.6
    disk_scale_height_kpc: float = 0.3
    selection_length_kpc: float = 3.0  # L_0 at M_ref
    selection_power: float = 2.0  # alpha
    luminosity_power: float = 0.6  # gamma
    mks_ref_mag: float = -2.0
    sun_r_kpc: float = 8.1
    weight: float = 1.0

    def as_dict(self) -> dict[str, float]:
        import dataclasses as _dc

        return {k: float(v) for k, v in _dc.asdict(self).items()}


def population_log_prior(d_kpc: np.ndarray, pt: np.ndarray,
                         ln_d: np.ndarray | None = None) -> np.ndarray:
    """ln P(d) of :class:`PopulationPrior` (unnormalised) from per-star terms ``pt``
    (last axis: the columns of :data:`_PT`, broadcast against ``d_kpc``; a 1-D ``pt`` is
    one star's row). ``ln_d``: ln(d_kpc) if the caller has it tabulated."""
    d = np.asarray(d_kpc, dtype=np.float64)
    col = {k: pt[..., i] for k, i in _PT.items()}
    r0 = col["r0"]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if ln_d is None:
            ln_d = np.log(d)
        r = np.sqrt(np.maximum(r0 * r0 + d * d * col["cos2b"] - 2.0 * d * col["a_r0"], 0.0))
        out = (col["beta"] * ln_d - (r - r0) * col["inv_h_r"] - d * col["abs_sinb"]
               * col["inv_h_z"] - np.exp(col["alpha"] * (ln_d - col["ln_sel_length"])))
    return out


def population_penalty(d_kpc: np.ndarray, pt: np.ndarray,
                       ln_d: np.ndarray | None = None) -> np.ndarray:
    """G = -2 w ln(P(d) / max P) ≥ 0 of the (tempered) population prior (see :func:`phi`)."""
    return pt[..., _PT["weight"]] * np.maximum(
        -2.0 * (population_log_prior(d_kpc, pt, ln_d) - pt[..., _PT["ln_p_max"]]), 0.0)


def _star_population_penalty(grid: DistanceGrid, sl: slice, pt: np.ndarray) -> np.ndarray:
    """:func:`population_penalty` of one star (``pt``: its row of the terms) on the grid
    points ``sl``, with the terms every star shares -- beta ln d, d^alpha = exp(alpha ln d)
    and d^2 -- tabulated on the grid once per (beta, alpha): equal to
    :func:`population_penalty` to rounding (~1e-13 relative), ~2x faster on the few
    hundred to few thousand points a star's refinement evaluates at a time."""
    t = dict(zip(_PT, pt.tolist(), strict=True))
    key = (t["beta"], t["alpha"])
    tables = grid.prior_tables.get(key)
    if tables is None:
        tables = (t["beta"] * grid.ln_d, np.exp(t["alpha"] * grid.ln_d), grid.d_kpc ** 2)
        grid.prior_tables[key] = tables
    beta_ln_d, d_alpha, d_sq = tables
    d = grid.d_kpc[sl]
    r0 = t["r0"]
    with np.errstate(invalid="ignore", over="ignore"):
        # -ln P(d) = -beta ln d + (R - R0)/h_R + d |sin b|/h_z + (d/L)^alpha (PopulationPrior)
        g = d_sq[sl] * t["cos2b"]
        g -= d * (2.0 * t["a_r0"])
        g += r0 * r0
        np.maximum(g, 0.0, out=g)
        np.sqrt(g, out=g)
        g -= r0
        g *= t["inv_h_r"]
        g += d * (t["abs_sinb"] * t["inv_h_z"])
        g += d_alpha[sl] * np.exp(-t["alpha"] * t["ln_sel_length"])
        g -= beta_ln_d[sl]
        g += t["ln_p_max"]  # G = -2 w (ln P - ln P_max), >= 0
        g *= 2.0 * t["weight"]
        np.maximum(g, 0.0, out=g)
    return g


def population_prior_terms(l_deg: np.ndarray, b_deg: np.ndarray, mks_mag: np.ndarray,
                           hyper: PopulationPrior, d_max_kpc: float,
                           d_min_kpc: float = 1e-4) -> np.ndarray:
    """Per-star terms (n, len(_PT)) of the population prior along each line of sight.

    ``mks_mag``: the star's spectroscopic M_Ks (its selection length L_i); NaN uses
    M_ref. ``ln_p_max`` is the maximum of ln P on a log grid of 1,024 points over
    [d_min, d_max] (1.2 % apart: ln P, whose curvature in ln d is ~10 at most, is then
    within ~2e-4 of its maximum) plus 1e-3, so that G ≥ 0; ``d_mode`` where it is
    reached."""
    lr = np.radians(np.asarray(l_deg, dtype=np.float64))
    br = np.radians(np.asarray(b_deg, dtype=np.float64))
    mks = np.asarray(mks_mag, dtype=np.float64)
    n = lr.size
    pt = np.zeros((n, len(_PT)))
    pt[:, _PT["a_r0"]] = np.cos(br) * np.cos(lr) * hyper.sun_r_kpc
    pt[:, _PT["cos2b"]] = np.cos(br) ** 2
    pt[:, _PT["abs_sinb"]] = np.abs(np.sin(br))
    m = np.where(np.isfinite(mks), mks, hyper.mks_ref_mag)
    pt[:, _PT["ln_sel_length"]] = (np.log(hyper.selection_length_kpc) - 0.2 * np.log(10.0)
                                   * hyper.luminosity_power * (m - hyper.mks_ref_mag))
    pt[:, _PT["beta"]] = hyper.beta
    pt[:, _PT["inv_h_r"]] = 1.0 / hyper.disk_scale_length_kpc
    pt[:, _PT["inv_h_z"]] = 1.0 / hyper.disk_scale_height_kpc
    pt[:, _PT["alpha"]] = hyper.selection_power
    pt[:, _PT["r0"]] = hyper.sun_r_kpc
    pt[:, _PT["weight"]] = hyper.weight
    d = np.geomspace(d_min_kpc, d_max_kpc, 1024)
    for start in range(0, n, 1024):
        sl = slice(start, start + 1024)
        lp = population_log_prior(d[None, :], pt[sl, None, :])
        j = np.nanargmax(np.where(np.isfinite(lp), lp, -np.inf), axis=1)
        pt[sl, _PT["ln_p_max"]] = lp[np.arange(j.size), j] + 1e-3
        pt[sl, _PT["d_mode"]] = d[j]
    return pt


def _check_prior_terms(cfg: DistanceConfig, prior_terms: np.ndarray | None, n: int
                       ) -> np.ndarray | None:
    if cfg.prior != "population":
        return None
    if prior_terms is None:
        raise ValueError("the population prior needs per-star terms "
                         "(obpipe.distance.population_prior_terms: l, b, M_Ks)")
    pt = np.asarray(prior_terms, dtype=np.float64)
    if pt.shape != (n, len(_PT)):
        raise ValueError(f"prior_terms must have shape ({n}, {len(_PT)}), got {pt.shape}")
    return pt


def galactic_lb_deg(ra_deg: np.ndarray, dec_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Galactic longitude and latitude (deg) of ICRS positions (astropy)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    ra = np.asarray(ra_deg, dtype=np.float64)
    dec = np.asarray(dec_deg, dtype=np.float64)
    ok = np.isfinite(ra) & np.isfinite(dec)
    l_deg = np.zeros(ra.shape)
    b_deg = np.zeros(ra.shape)
    if ok.any():
        g = SkyCoord(ra=ra[ok] * u.deg, dec=dec[ok] * u.deg, frame="icrs").galactic
        l_deg[ok] = g.l.deg
        b_deg[ok] = g.b.deg
    return l_deg, b_deg


#: box bounds of the fitted hyperparameters (beta, ln h_R, ln h_z, ln L_0, ln alpha, gamma)
#: (:func:`fit_population_prior`)
PRIOR_FIT_BOUNDS: tuple[tuple[float, float], ...] = (
    (-1.0, 4.0), (-3.0, 4.0), (-5.0, 1.5), (-3.0, 4.0), (-1.5, 2.5), (-0.5, 2.0))
#: 0.2 ln 10: d ln L_i / d(gamma (M_i - M_ref)) of the selection length
_LN10_5 = 0.2 * math.log(10.0)


@dataclass(frozen=True)
class _PriorFitTables:
    """Everything of the marginal likelihood of :func:`fit_population_prior` that does not
    depend on the hyperparameters: stars (rows) x the log grid of distances (columns)."""

    d_kpc: np.ndarray  # (m,) log grid
    ln_d: np.ndarray  # (m,)
    ln_like: np.ndarray  # (n, m) -chi^2 / 2 of eqs. (19)-(22)
    dr_kpc: np.ndarray  # (n, m) R(d) - R0, Galactocentric radius minus the Sun's
    abs_sinb: np.ndarray  # (n,) |sin b|: z = d |sin b|
    dm_ref_mag: np.ndarray  # (n,) M_i - M_ref


def _prior_fit_tables(plx: np.ndarray, plx_err: np.ndarray, dm0: np.ndarray, sig: np.ndarray,
                      l_deg: np.ndarray, b_deg: np.ndarray, mks: np.ndarray, d_max_kpc: float,
                      start: PopulationPrior, n_points: int = 200) -> _PriorFitTables:
    d = np.geomspace(0.01, d_max_kpc, n_points)
    ln_d = np.log(d)
    chi2 = (((plx[:, None] - 1.0 / d[None, :]) / plx_err[:, None]) ** 2
            + ((dm0[:, None] - 5.0 * np.log10(d)[None, :] - 10.0) / sig[:, None]) ** 2)
    lr, br = np.radians(l_deg), np.radians(b_deg)
    r0 = start.sun_r_kpc
    r = np.sqrt(np.maximum(r0**2 + d[None, :] ** 2 * np.cos(br)[:, None] ** 2
                           - 2.0 * d[None, :] * r0 * (np.cos(br) * np.cos(lr))[:, None], 0.0))
    return _PriorFitTables(d, ln_d, -0.5 * chi2, r - r0, np.abs(np.sin(br)),
                           np.where(np.isfinite(mks), mks, start.mks_ref_mag)
                           - start.mks_ref_mag)


def _prior_neg_log_like(x: np.ndarray, t: _PriorFitTables) -> tuple[float, np.ndarray]:
    """The negative log marginal likelihood of :func:`fit_population_prior` and its
    gradient in x = (beta, ln h_R, ln h_z, ln L_0, ln alpha, gamma).

    With lp_ij = ln P(d_j | x, star i) + ln d_j (the log grid's dd = d dln d),

        -ln L = -sum_i [ln sum_j exp(ln_like_ij + lp_ij) - ln sum_j exp(lp_ij)],

    whose gradient is -sum_ij (p_ij - q_ij) d lp_ij / dx, p and q the two softmax weights
    over j; d lp / dx is ln d, (R - R0) / h_R, |z| / h_z and, for the selection term
    u = (d / L_i)^alpha, alpha u, -alpha u ln(d / L_i) and -alpha u 0.2 ln10 (M_i - M_ref)."""
    beta, ihr, ihz, alpha = x[0], math.exp(-x[1]), math.exp(-x[2]), math.exp(x[4])
    ln_l = x[3] - _LN10_5 * x[5] * t.dm_ref_mag  # ln L_i
    e = np.exp(-alpha * ln_l)  # L_i^-alpha
    da = np.exp(alpha * t.ln_d)  # d^alpha
    # lp = (beta + 1) ln d - (R - R0) / h_R - d |sin b| / h_z - L_i^-alpha d^alpha
    lp = np.multiply(t.dr_kpc, -ihr)
    lp += np.stack([-ihz * t.abs_sinb, -e, np.ones_like(e)], axis=1) @ np.stack(
        [t.d_kpc, da, (beta + 1.0) * t.ln_d])
    basis = np.stack([t.ln_d, t.d_kpc, da, da * t.ln_d], axis=1)
    out = []
    for w in (t.ln_like + lp, lp):  # numerator (data x prior), normaliser (prior)
        top = w.max(axis=1)
        w -= top[:, None]
        np.maximum(w, -700.0, out=w)  # exp(-700) ~ 1e-304 of the top term: the same sums,
        np.exp(w, out=w)  # without exp's slow underflow path (~4x slower)
        s = w.sum(axis=1)
        out.append((np.log(s) + top, (w @ basis) / s[:, None],
                    np.einsum("ij,ij->i", w, t.dr_kpc) / s))
    (lse_p, vp, rp), (lse_q, vq, rq) = out
    v, r = vp - vq, rp - rq  # sums of (p - q) times ln d, d, d^alpha, d^alpha ln d; dr
    ua = alpha * e * v[:, 2]  # sum_j (p - q) alpha u
    grad = np.array([-v[:, 0].sum(), -ihr * r.sum(), -ihz * (t.abs_sinb @ v[:, 1]),
                     -ua.sum(), alpha * (e @ v[:, 3] - (e * ln_l) @ v[:, 2]),
                     _LN10_5 * (ua @ t.dm_ref_mag)])
    return -float(np.sum(lse_p - lse_q)), grad


#: names of the fitted parameters x of :func:`fit_population_prior`, in order
PRIOR_FIT_PARAMETERS = ("beta", "ln_h_r", "ln_h_z", "ln_l0", "ln_alpha", "gamma")


def fit_population_prior(parallax_mas: np.ndarray, parallax_error_mas: np.ndarray,
                         dm0_mag: np.ndarray, sigma_tot_mag: np.ndarray, l_deg: np.ndarray,
                         b_deg: np.ndarray, mks_mag: np.ndarray, d_max_kpc: float,
                         start: PopulationPrior | None = None, max_stars: int = 3000,
                         seed: int = 0) -> tuple[PopulationPrior, dict[str, Any]]:
    """Hyperparameters of :class:`PopulationPrior` fitted to a catalog (empirical Bayes).

    Maximises the marginal likelihood of the stars' data given the hyperparameters,
    sum_i ln ∫ L_i(d) P(d | theta, l_i, b_i, M_i) dd / ∫ P(d | theta, ...) dd, with
    L_i the product of the parallax and spectro-photometric likelihoods (eqs. 19-22),
    on a log grid of 200 distances (4 % apart) from 0.01 kpc to ``d_max_kpc``, over up
    to ``max_stars`` stars with both factors (a random subset, ``seed``), in x = (beta,
    ln h_R, ln h_z, ln L_0, ln alpha, gamma) within :data:`PRIOR_FIT_BOUNDS`, by L-BFGS-B
    with the analytic gradient (:func:`_prior_neg_log_like`). Returns the fitted prior
    and a summary: stars, negative log-likelihood at the start and at the optimum,
    iterations, evaluations, the parameters at a bound, and each parameter's standard
    error from the inverse Hessian (finite differences of the gradient; large where
    parameters are degenerate).
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    start = start or PopulationPrior()
    plx = np.asarray(parallax_mas, dtype=np.float64)
    plx_err = np.asarray(parallax_error_mas, dtype=np.float64)
    dm0 = np.asarray(dm0_mag, dtype=np.float64)
    sig = np.asarray(sigma_tot_mag, dtype=np.float64)
    lon = np.asarray(l_deg, dtype=np.float64)
    lat = np.asarray(b_deg, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        use = np.flatnonzero(np.isfinite(plx) & (plx_err > 0) & np.isfinite(dm0) & (sig > 0)
                             & np.isfinite(lon) & np.isfinite(lat))
    if use.size > max_stars:
        use = np.sort(np.random.default_rng(seed).choice(use, max_stars, replace=False))
    if use.size < 50:
        log.warning("population prior: only %d stars with a parallax and an M_Ks; the "
                    "starting hyperparameters are used", use.size)
        return start, {"n_stars": int(use.size), "fitted": False}
    tables = _prior_fit_tables(plx[use], plx_err[use], dm0[use], sig[use], lon[use],
                               lat[use], np.asarray(mks_mag, dtype=np.float64)[use],
                               d_max_kpc, start)
    x0 = np.array([start.beta, math.log(start.disk_scale_length_kpc),
                   math.log(start.disk_scale_height_kpc), math.log(start.selection_length_kpc),
                   math.log(start.selection_power), start.luminosity_power])
    lo, hi = np.array(PRIOR_FIT_BOUNDS).T
    x0 = np.clip(x0, lo, hi)
    f0, _ = _prior_neg_log_like(x0, tables)
    n = float(use.size)

    def per_star(x: np.ndarray) -> tuple[float, np.ndarray]:  # O(1) values for the tolerances
        f, g = _prior_neg_log_like(x, tables)
        return f / n, g / n

    with threadpool_limits(1):  # (n x 200) @ (200 x 4): threaded BLAS only contends
        res = minimize(per_star, x0, jac=True, method="L-BFGS-B", bounds=PRIOR_FIT_BOUNDS,
                       options={"maxiter": 500, "ftol": 1e-12, "gtol": 1e-6})
        x = np.clip(res.x, lo, hi)
        errors = _prior_fit_standard_errors(x, tables, lo, hi)
    fitted = PopulationPrior(float(x[0]), math.exp(x[1]), math.exp(x[2]), math.exp(x[3]),
                             math.exp(x[4]), float(x[5]), start.mks_ref_mag, start.sun_r_kpc,
                             start.weight)
    info = {"n_stars": int(use.size), "fitted": True, "method": "L-BFGS-B",
            "neg_log_like_start": float(f0), "neg_log_like": float(res.fun) * n,
            "iterations": int(res.nit), "evaluations": int(res.nfev),
            "converged": bool(res.success),
            "at_bound": [k for k, v, a, b in zip(PRIOR_FIT_PARAMETERS, x, lo, hi, strict=True)
                         if v <= a + 1e-6 or v >= b - 1e-6],
            "standard_errors": dict(zip(PRIOR_FIT_PARAMETERS, errors, strict=True))}
    if not res.success:
        log.warning("population prior: L-BFGS-B did not converge (%s); the last point is "
                    "used", res.message)
    log.info("population prior fitted on %d stars: %s", use.size, fitted.as_dict())
    return fitted, info


def _prior_fit_standard_errors(x: np.ndarray, t: _PriorFitTables, lo: np.ndarray,
                               hi: np.ndarray, step: float = 1e-4) -> list[float | None]:
    """sqrt(diag(H^-1)) of -ln L at ``x`` (H by forward differences of the analytic
    gradient, inside the bounds); None (JSON null) where H is not positive definite, as at
    a bound."""
    g0 = _prior_neg_log_like(x, t)[1]
    h = np.zeros((x.size, x.size))
    for k in range(x.size):
        a = x.copy()
        a[k] = x[k] + step if x[k] + step <= hi[k] else x[k] - step
        h[k] = (_prior_neg_log_like(a, t)[1] - g0) / (a[k] - x[k])
    h = 0.5 * (h + h.T)
    try:
        np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        return [None] * x.size
    return [float(v) for v in np.sqrt(np.diag(np.linalg.inv(h)))]


def phi(d_kpc: np.ndarray, parallax_mas: float, parallax_error_mas: float, dm0_mag: float,
        sigma_tot_mag: float, prior: str = "flat", edsd_length_kpc: float = 1.35,
        prior_terms: np.ndarray | None = None) -> np.ndarray:
    """Phi(d) = -2 ln posterior + const ≥ 0 (eqs. 18-22) of one star on distances ``d_kpc``.

    A NaN ``parallax_mas`` drops the parallax factor, a NaN ``dm0_mag`` the
    spectro-photometric one. ``d_kpc`` beyond the prior's support is not handled here.
    ``prior_terms``: the star's row of :func:`population_prior_terms` (population prior).
    """
    d = np.asarray(d_kpc, dtype=np.float64)
    out = np.zeros(d.shape)
    if np.isfinite(parallax_mas):
        out += ((parallax_mas - 1.0 / d) / parallax_error_mas) ** 2
    if np.isfinite(dm0_mag):
        out += ((dm0_mag - 5.0 * np.log10(d) - 10.0) / sigma_tot_mag) ** 2
    if prior == "edsd":
        out += _edsd_penalty(d, edsd_length_kpc)
    elif prior == "population" and prior_terms is not None:
        out += population_penalty(d, np.asarray(prior_terms, dtype=np.float64))
    return out


def _phi_many(d_kpc: np.ndarray, plx: np.ndarray, plx_err: np.ndarray, dm0: np.ndarray,
              sig: np.ndarray, cfg: DistanceConfig, pt: np.ndarray | None = None
              ) -> np.ndarray:
    """Phi for many stars (rows) at per-star trial distances (columns)."""
    out = np.zeros(d_kpc.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = ((plx[:, None] - 1.0 / d_kpc) / plx_err[:, None]) ** 2
        b = ((dm0[:, None] - 5.0 * np.log10(d_kpc) - 10.0) / sig[:, None]) ** 2
    out += np.where(np.isfinite(plx)[:, None], a, 0.0)
    out += np.where(np.isfinite(dm0)[:, None], b, 0.0)
    if cfg.prior == "edsd":
        out += _edsd_penalty(d_kpc, cfg.edsd_length_kpc)
    elif cfg.prior == "population" and pt is not None:
        out += population_penalty(d_kpc, pt[:, None, :])
    return out


def _edsd_interval(c2: np.ndarray, length_kpc: float) -> tuple[np.ndarray, np.ndarray]:
    """The interval where G ≤ c2 for the EDSD prior (G convex in ln d, minimum 0 at 2L)."""
    lo_x = np.full(c2.shape, 1e-12)  # G(x) decreasing on (0, 1]
    hi_x = np.ones(c2.shape)
    for _ in range(80):  # bisection for the lower root x < 1 (G(x) = c2)
        mid = np.sqrt(lo_x * hi_x)
        above = 4.0 * (mid - 1.0 - np.log(mid)) > c2
        lo_x = np.where(above, mid, lo_x)
        hi_x = np.where(above, hi_x, mid)
    lower = lo_x
    lo_x = np.ones(c2.shape)
    hi_x = 1.0 + c2  # G(1 + c2) = 4 (c2 - ln(1 + c2)) ≥ c2 for c2 ≥ 0... checked below
    hi_x = np.where(4.0 * (hi_x - 1.0 - np.log(hi_x)) >= c2, hi_x, 10.0 * hi_x + 10.0)
    for _ in range(80):
        mid = 0.5 * (lo_x + hi_x)
        below = 4.0 * (mid - 1.0 - np.log(mid)) <= c2
        lo_x = np.where(below, mid, lo_x)
        hi_x = np.where(below, hi_x, mid)
    return lower * 2.0 * length_kpc, hi_x * 2.0 * length_kpc


def posterior_windows(
    parallax_mas: np.ndarray,
    parallax_error_mas: np.ndarray,
    dm0_mag: np.ndarray,
    sigma_tot_mag: np.ndarray,
    grid: DistanceGrid,
    cfg: DistanceConfig,
    log_tolerance: np.ndarray | float | None = None,
    prior_terms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid index windows [lo, hi) holding every point within e^-T of each star's maximum.

    Returns ``(lo, hi, c2)``; ``c2`` = K + 2T is the bound on each term of Phi inside
    the window (see the module docstring). Inputs are per-star arrays; a NaN parallax
    or dm0 drops that factor. Stars with neither get an empty window (lo == hi == 0).
    """
    plx = np.asarray(parallax_mas, dtype=np.float64)
    plx_err = np.asarray(parallax_error_mas, dtype=np.float64)
    dm0 = np.asarray(dm0_mag, dtype=np.float64)
    sig = np.asarray(sigma_tot_mag, dtype=np.float64)
    n = plx.size
    tol = np.broadcast_to(np.asarray(cfg.window_log_tolerance if log_tolerance is None
                                     else log_tolerance, dtype=np.float64), (n,))
    h, d_max = grid.step_kpc, grid.d_max_kpc
    # trial distances: a log grid over the whole range plus each factor's own peak
    trials = np.geomspace(h, d_max, 48)[None, :].repeat(n, axis=0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        d_phot = 10.0 ** ((dm0 - 10.0) / 5.0)
        d_plx = np.where(plx > 0, 1.0 / plx, np.nan)
    extra = np.stack([d_phot, d_plx, np.sqrt(d_phot * d_plx)], axis=1)
    if cfg.prior == "edsd":
        extra = np.concatenate([extra, np.full((n, 1), 2.0 * cfg.edsd_length_kpc)], axis=1)
    pt = _check_prior_terms(cfg, prior_terms, n)
    if pt is not None:
        extra = np.concatenate([extra, pt[:, _PT["d_mode"], None]], axis=1)
    extra = np.clip(np.where(np.isfinite(extra), extra, h), h, d_max)
    trials = np.concatenate([trials, extra], axis=1)
    k = np.min(_phi_many(trials, plx, plx_err, dm0, sig, cfg, pt), axis=1)
    c2 = k + 2.0 * tol
    c = np.sqrt(c2)
    d_lo = np.full(n, h)
    d_hi = np.full(n, d_max)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        has_plx = np.isfinite(plx) & (plx_err > 0)
        upper_plx = plx + c * plx_err  # 1/d ≤ plx + c dplx
        lower_plx = plx - c * plx_err  # 1/d ≥ plx - c dplx
        d_lo = np.where(has_plx & (upper_plx > 0), np.maximum(d_lo, 1.0 / upper_plx), d_lo)
        d_hi = np.where(has_plx & (lower_plx > 0), np.minimum(d_hi, 1.0 / lower_plx), d_hi)
        has_phot = np.isfinite(dm0) & (sig > 0)
        d_lo = np.where(has_phot, np.maximum(d_lo, 10.0 ** ((dm0 - c * sig - 10.0) / 5.0)),
                        d_lo)
        d_hi = np.where(has_phot, np.minimum(d_hi, 10.0 ** ((dm0 + c * sig - 10.0) / 5.0)),
                        d_hi)
    if cfg.prior == "edsd":
        e_lo, e_hi = _edsd_interval(c2, cfg.edsd_length_kpc)
        d_lo = np.maximum(d_lo, e_lo)
        d_hi = np.minimum(d_hi, e_hi)
    # to grid indices (d_i = (i + 1) h), widened by one point against rounding
    lo = np.clip(np.ceil(d_lo / h) - 2, 0, grid.n_points).astype(np.int64)
    hi = np.clip(np.floor(d_hi / h) + 1, 0, grid.n_points).astype(np.int64)
    usable = (has_plx | has_phot) & np.isfinite(c2)
    lo = np.where(usable, lo, 0)
    hi = np.where(usable, np.maximum(hi, lo), 0)
    return lo, hi, c2


@dataclass
class _Summary:
    i_mode: int
    i_low: int
    i_high: int
    logdis: float
    logdis_err: float
    phi_min: float
    w_low: float  # posterior at the percentiles relative to the maximum
    w_high: float
    w_edge: float  # posterior at the last grid point relative to the maximum


def _log_post(grid: DistanceGrid, sl: slice, plx: float, plx_err: float, dm0: float,
              sig: float, cfg: DistanceConfig, pt: np.ndarray | None = None) -> np.ndarray:
    """-Phi/2 on the grid points ``sl`` (a slice, possibly strided) (eqs. 18-22)."""
    inv_d = grid.inv_d[sl]
    out = np.zeros(inv_d.size)
    if math.isfinite(plx):
        t = inv_d - plx
        t *= 1.0 / plx_err
        np.multiply(t, t, out=t)
        out += t
    if math.isfinite(dm0):
        t = grid.log10_d[sl] * (-5.0 / sig)
        t += (dm0 - 10.0) / sig
        np.multiply(t, t, out=t)
        out += t
    if cfg.prior == "edsd":
        out += _edsd_penalty(grid.d_kpc[sl], cfg.edsd_length_kpc)
    elif cfg.prior == "population" and pt is not None:
        out += _star_population_penalty(grid, sl, pt)
    out *= -0.5
    return out


def _edge_weight(grid: DistanceGrid, plx: float, plx_err: float, dm0: float, sig: float,
                 cfg: DistanceConfig, ref: float, pt: np.ndarray | None = None) -> float:
    last = _log_post(grid, slice(grid.n_points - 1, grid.n_points), plx, plx_err, dm0, sig,
                     cfg, pt)
    return float(np.exp(last[0] - ref))


def _summarize_fine(grid: DistanceGrid, lo: int, hi: int, plx: float, plx_err: float,
                    dm0: float, sig: float, cfg: DistanceConfig,
                    pt: np.ndarray | None = None) -> _Summary:
    """Every 0.1 pc point of [lo, hi), in segments of ``segment_points`` (log-sum-exp)."""
    seg = cfg.segment_points
    starts = list(range(lo, hi, seg))
    maxima, sums, s1, s2, argmax = [], [], [], [], []
    kept: np.ndarray | None = None
    for s in starts:
        e = min(s + seg, hi)
        lp = _log_post(grid, slice(s, e), plx, plx_err, dm0, sig, cfg, pt)
        j = int(lp.argmax())
        m = float(lp[j])
        w = np.exp(lp - m)
        maxima.append(m)
        argmax.append(s + j)
        sums.append(float(w.sum()))
        s1.append(float(w @ grid.log10_d[s:e]))
        s2.append(float(w @ grid.log10_d_sq[s:e]))
        if len(starts) == 1:
            kept = w
    mx = np.asarray(maxima)
    top = int(mx.argmax())
    m_all = float(mx[top])
    scale = np.exp(mx - m_all)
    seg_mass = np.asarray(sums) * scale
    total = float(seg_mass.sum())
    mean = float(np.dot(s1, scale)) / total
    var = max(float(np.dot(s2, scale)) / total - mean * mean, 0.0)
    cum = np.cumsum(seg_mass)
    idx, wq = [], []
    for q in _PERCENTILES:
        target = q * total
        k = min(int(cum.searchsorted(target, side="left")), len(starts) - 1)
        before = float(cum[k - 1]) if k > 0 else 0.0
        s = starts[k]
        w = kept if kept is not None else np.exp(
            _log_post(grid, slice(s, min(s + seg, hi)), plx, plx_err, dm0, sig, cfg, pt)
            - m_all)
        c = w.cumsum() + before
        j = min(int(c.searchsorted(target, side="left")), w.size - 1)
        idx.append(s + j)
        wq.append(float(w[j]))
    return _Summary(argmax[top], idx[0], idx[1], mean, float(np.sqrt(var)), -2.0 * m_all,
                    wq[0], wq[1], _edge_weight(grid, plx, plx_err, dm0, sig, cfg, m_all, pt)
                    if hi == grid.n_points else 0.0)


@functools.lru_cache(maxsize=4)
def _lagrange_inverse(first_node: int) -> np.ndarray:
    """inv(V) of the Vandermonde matrix of the nodes first_node .. first_node + 3."""
    nodes = np.arange(first_node, first_node + 4, dtype=np.float64)
    return np.linalg.inv(np.vander(nodes, 4, increasing=True))


def _cubic_cell_weights(stride: int, first_node: int = -1) -> np.ndarray:
    """Weights of the nodes at first_node .. first_node + 3 (in strides) giving the sum of
    the cubic through them over the ``stride`` fine points 0, 1/stride, ..., of cell [0, 1):
    the power sums sum_j (j/stride)^p (Faulhaber) times the inverse Vandermonde matrix."""
    n = float(stride)
    j1 = (n - 1) * n / 2
    j2 = (n - 1) * n * (2 * n - 1) / 6
    j3 = j1 * j1
    power_sums = np.array([n, j1 / n, j2 / n**2, j3 / n**3])
    return power_sums @ _lagrange_inverse(first_node)


def _node_pass(grid: DistanceGrid, lo: np.ndarray, hi: np.ndarray, n_cells: int,
               plx: np.ndarray, plx_err: np.ndarray, dm0: np.ndarray, sig: np.ndarray,
               cfg: DistanceConfig, pt: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The coarse level of :func:`_summarize_two_level` for many stars at once.

    Star i has nodes lo_i + k stride_i, k = 0 .. n_cells, stride_i = (W_i - 1) // n_cells,
    and cells of stride_i grid points; the last cell, which also takes the grid points
    after the last node up to hi, is left to :func:`_refine_two_level` (exact). Returns
    per-star arrays: stride, ref (max node log posterior), f (node posterior / max, 2D),
    cum (cumulative sums of cells 0 .. n_cells-2, 2D), s1 / s2 (their sums of f log10 d
    and f log10(d)^2), interp_error (bound on the error of cum, same units as f) and sd_k
    (posterior width in nodes).
    """
    stride = np.maximum((hi - lo - 1) // n_cells, 1)
    k = np.arange(n_cells + 1)
    idx = lo[:, None] + stride[:, None] * k[None, :]
    with np.errstate(invalid="ignore"):
        lp = np.zeros(idx.shape)
        has_plx = np.isfinite(plx)
        if has_plx.any():
            t = (grid.inv_d[idx] - np.where(has_plx, plx, 0.0)[:, None]) / np.where(
                has_plx, plx_err, 1.0)[:, None]
            lp += np.where(has_plx[:, None], t * t, 0.0)
        has_phot = np.isfinite(dm0)
        if has_phot.any():
            t = (np.where(has_phot, dm0, 0.0)[:, None] - 10.0 - 5.0 * grid.log10_d[idx]) / (
                np.where(has_phot, sig, 1.0)[:, None])
            lp += np.where(has_phot[:, None], t * t, 0.0)
        if cfg.prior == "edsd":
            lp += _edsd_penalty(grid.d_kpc[idx], cfg.edsd_length_kpc)
        elif cfg.prior == "population" and pt is not None:
            lp += population_penalty(grid.d_kpc[idx], pt[:, None, :], grid.ln_d[idx])
    lp *= -0.5
    ref = lp.max(axis=1)
    f = np.exp(lp - ref[:, None])
    lg = grid.log10_d[idx]
    fsum = f.sum(axis=1)
    mean_k = (f @ k) / fsum
    sd_k = np.sqrt(np.maximum((f * (k[None, :] - mean_k[:, None]) ** 2).sum(axis=1) / fsum,
                              0.0))
    # cubic weights per star (they depend on the stride): power sums times inv(V)
    nf = stride.astype(np.float64)
    j1 = (nf - 1) * nf / 2
    j2 = (nf - 1) * nf * (2 * nf - 1) / 6
    power = np.stack([nf, j1 / nf, j2 / nf**2, j1 * j1 / nf**3], axis=1)
    w_mid = power @ _lagrange_inverse(-1)
    w_left = power @ _lagrange_inverse(-2)
    w_first = power @ _lagrange_inverse(0)
    cells = np.empty((lo.size, n_cells))
    c1 = np.empty_like(cells)
    c2 = np.empty_like(cells)
    fu = f * lg
    fu2 = fu * lg
    for arr, vals in ((cells, f), (c1, fu), (c2, fu2)):
        arr[:, 1:-1] = sum(w_mid[:, m:m + 1] * vals[:, m:m + n_cells - 2] for m in range(4))
        arr[:, 0] = (w_first * vals[:, :4]).sum(axis=1)
    other = sum(w_left[:, m:m + 1] * f[:, m:m + n_cells - 3] for m in range(4))
    err = np.abs(other - cells[:, 2:-1]).sum(axis=1)
    err += np.abs(cells[:, 0] - 0.5 * nf * (f[:, 0] + f[:, 1]))
    return {"stride": stride, "ref": ref, "f": f, "cum": np.cumsum(cells[:, :-1], axis=1),
            "s1": c1[:, :-1].sum(axis=1), "s2": c2[:, :-1].sum(axis=1), "interp_error": err,
            "sd_k": sd_k}


def _refine_two_level(grid: DistanceGrid, lo: int, hi: int, node: Mapping[str, Any], i: int,
                      plx: float, plx_err: float, dm0: float, sig: float,
                      cfg: DistanceConfig, pt: np.ndarray | None = None) -> _Summary | None:
    """The fine level for star ``i`` of a :func:`_node_pass`: exact 0.1 pc points where the
    mode and the percentiles are decided; None if a check fails (the caller refines)."""
    stride = int(node["stride"][i])
    f = node["f"][i]
    n_cells = f.size - 1
    sd_k = float(node["sd_k"][i])
    top = int(f.argmax())
    if stride < 2 or sd_k < 20.0 or top == 0:
        return None
    ref = float(node["ref"][i])
    exact: dict[int, np.ndarray] = {}

    def evaluate_cells(cells: set[int]) -> None:
        """Every 0.1 pc point of the given cells, one evaluation per contiguous run."""
        todo = sorted(k for k in cells if k not in exact and 0 <= k < n_cells)
        while todo:
            first = last = todo.pop(0)
            while todo and todo[0] == last + 1:
                last = todo.pop(0)
            s = lo + first * stride
            e = hi if last == n_cells - 1 else lo + (last + 1) * stride
            w = np.exp(_log_post(grid, slice(s, e), plx, plx_err, dm0, sig, cfg, pt) - ref)
            for k in range(first, last + 1):
                a = (k - first) * stride
                exact[k] = w[a:] if k == n_cells - 1 else w[a:a + stride]

    # the last cell with the points after the last node: exactly
    evaluate_cells({n_cells - 1})
    w_last = exact[n_cells - 1]
    s_last = lo + (n_cells - 1) * stride
    cum_i = node["cum"][i]
    cum = np.concatenate((cum_i, [cum_i[-1] + w_last.sum()]))
    total = float(cum[-1])
    mean = (float(node["s1"][i]) + float(w_last @ grid.log10_d[s_last:hi])) / total
    var = max((float(node["s2"][i]) + float(w_last @ grid.log10_d_sq[s_last:hi])) / total
              - mean * mean, 0.0)
    crossing = [int(cum.searchsorted(q * total, side="left")) for q in _PERCENTILES]
    # the mode: the fine maximum is within half a stride of a node whose value is at
    # least (1 - delta) times it, delta ~ (1/sd_k)^2 / 8; take every node within 4x that
    delta = 0.5 / (sd_k * sd_k)
    wanted = {k for kc in crossing for k in (kc - 1, kc, kc + 1)}
    wanted |= {int(k) for nd in np.flatnonzero(f >= 1.0 - delta) for k in (nd - 1, nd)}
    evaluate_cells(wanted)
    idx, wq = [], []
    for q, kc in zip(_PERCENTILES, crossing, strict=True):
        target = q * total
        k0 = max(kc - 1, 0)
        k1 = min(kc + 1, n_cells - 1)
        running = float(cum[k0 - 1]) if k0 > 0 else 0.0
        found = None
        for k in range(k0, k1 + 1):
            w = exact[k]
            c = w.cumsum() + running
            j = int(c.searchsorted(target, side="left"))
            if j < w.size:
                found = (lo + k * stride + j, float(w[j]))
                break
            running = float(c[-1])
        if found is None:
            return None
        idx.append(found[0])
        wq.append(found[1])
    # the interpolated mass before a percentile must be good to a fraction of one point
    if float(node["interp_error"][i]) >= 0.05 * min(wq):
        return None
    best_k, best_j, best_w = -1, -1, -np.inf
    for k, w in exact.items():
        j = int(w.argmax())
        if w[j] > best_w:
            best_k, best_j, best_w = k, j, float(w[j])
    i_mode = lo + best_k * stride + best_j
    m_all = ref + float(np.log(best_w))
    scale = 1.0 / best_w  # report weights relative to the true maximum
    edge = (_edge_weight(grid, plx, plx_err, dm0, sig, cfg, m_all, pt) if hi == grid.n_points
            else 0.0)  # outside the window: below e^-T by construction
    return _Summary(i_mode, idx[0], idx[1], mean, float(np.sqrt(var)), -2.0 * m_all,
                    wq[0] * scale, wq[1] * scale, edge)


def _summarize_two_level(grid: DistanceGrid, lo: int, hi: int, n_cells: int, plx: float,
                         plx_err: float, dm0: float, sig: float,
                         cfg: DistanceConfig, pt: np.ndarray | None = None
                         ) -> _Summary | None:
    """The same answers as :func:`_summarize_fine` from fewer evaluations.

    The posterior is evaluated exactly at ``n_cells + 1`` nodes spread over the window;
    the sum of the 0.1 pc points of each cell follows from the cubic through four nodes.
    The interpolation error is estimated by the difference from the stencil shifted by
    one node; summed over all cells it must stay below 5 % of the mass of one grid point
    at either percentile (and the posterior must span >= 20 nodes per standard
    deviation), otherwise None is returned and the caller refines. The 0.1 pc points are
    then evaluated exactly where the answers are decided: the cells around each
    percentile crossing and around every node close to the maximum (the mode). So the
    mode and the percentiles are those of the full 0.1 pc grid, and logdis / logdis_err
    agree to ~1e-9. (:func:`_two_level_summaries` runs the node level for many stars at
    once, level after level.)
    """
    if (hi - lo - 1) // n_cells < 2:
        return None
    arr = [np.array([v], dtype=np.float64) for v in (plx, plx_err, dm0, sig)]
    node = _node_pass(grid, np.array([lo]), np.array([hi]), n_cells, *arr, cfg,
                      None if pt is None else np.asarray(pt)[None, :])
    return _refine_two_level(grid, lo, hi, node, 0, plx, plx_err, dm0, sig, cfg, pt)


#: grid values held at once by one batched node pass (stars x nodes): 512 stars at the
#: first level (``coarse_nodes``), fewer at the finer levels
_NODE_BATCH_VALUES = 512 * 2048


def _two_level_summaries(grid: DistanceGrid, lo: np.ndarray, hi: np.ndarray, plx: np.ndarray,
                         plx_err: np.ndarray, dm0: np.ndarray, sig: np.ndarray,
                         cfg: DistanceConfig, pt: np.ndarray | None = None
                         ) -> dict[int, _Summary]:
    """:func:`_summarize_two_level` for many stars, level by level.

    Level 0 has ``coarse_nodes`` cells, each further level 4x more; at every level the
    node pass runs for a batch of stars at once (:func:`_node_pass`, vectorised over
    stars) and the stars whose refinement fails go on to the next level while their
    window holds >= 2 points per cell. The same arithmetic per star as one star at a
    time, only batched (one vectorised node pass per batch instead of one per star).
    Returns the summaries by position in the inputs; stars without one need
    :func:`_summarize_fine`.
    """
    out: dict[int, _Summary] = {}
    n_cells = cfg.coarse_nodes
    pending = np.arange(lo.size)
    while pending.size:
        pending = pending[(hi[pending] - lo[pending] - 1) // n_cells >= 2]
        batch = 512 if n_cells == cfg.coarse_nodes else max(1, min(
            512, _NODE_BATCH_VALUES // n_cells))
        failed = []
        for start in range(0, pending.size, batch):
            part = pending[start:start + batch]
            node = _node_pass(grid, lo[part], hi[part], n_cells, plx[part], plx_err[part],
                              dm0[part], sig[part], cfg, None if pt is None else pt[part])
            for j, k in enumerate(part):
                s = _refine_two_level(grid, int(lo[k]), int(hi[k]), node, j, plx[k],
                                      plx_err[k], dm0[k], sig[k], cfg,
                                      None if pt is None else pt[k])
                if s is None:
                    failed.append(k)
                else:
                    out[int(k)] = s
        pending = np.asarray(failed, dtype=np.int64)
        n_cells *= 4
    return out


def summarize_distance_posteriors(
    parallax_mas: np.ndarray,
    parallax_error_mas: np.ndarray,
    dm0_mag: np.ndarray,
    sigma_tot_mag: np.ndarray,
    cfg: DistanceConfig | None = None,
    windowed: bool = True,
    grid: DistanceGrid | None = None,
    prior_terms: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Eqs. (18)-(23) on the 0.1 pc grid for arrays of stars.

    ``parallax_mas`` / ``parallax_error_mas``: zero-point-corrected Gaia parallax (NaN
    or error ≤ 0: no parallax factor); ``dm0_mag`` = Ks0 - M_Ks and ``sigma_tot_mag``
    from :func:`distance_modulus_terms` (NaN: parallax alone). ``windowed=False``
    evaluates every star on the whole grid (the reference the window must equal).
    ``prior_terms``: for ``cfg.prior == "population"``, the per-star terms of
    :func:`population_prior_terms` (required then, ignored otherwise); parallax-only
    rows use the prior untempered (weight 1).

    A posterior narrower than ~2 grid steps gets its mode and width from the Laplace
    approximation (bit ``analytic_width``); a mode outside [dis_low, dis_high] and a
    parallax-photometric tension above :data:`TENSION_SIGMA` are flagged.

    ``dis`` is the mode, or 10^logdis under the population prior (:func:`point_estimate`);
    ``mode_outside_interval`` then flags a ``dis`` outside [dis_low, dis_high].

    Returns ``dis``, ``dis_low``, ``dis_high`` (kpc), ``logdis``, ``logdis_err``
    (log10 kpc), ``distance_flags`` (bits of :data:`DISTANCE_FLAG_BITS`, without the
    binary bit, which the caller sets) and ``window_points`` (grid points evaluated).
    """
    cfg = cfg or DistanceConfig(prior="flat")  # None: the paper's flat prior
    grid = grid or DistanceGrid.build(cfg)
    plx = np.asarray(parallax_mas, dtype=np.float64).copy()
    plx_err = np.asarray(parallax_error_mas, dtype=np.float64)
    dm0 = np.asarray(dm0_mag, dtype=np.float64).copy()
    sig = np.asarray(sigma_tot_mag, dtype=np.float64)
    n = plx.size
    pt = _check_prior_terms(cfg, prior_terms, n)
    with np.errstate(invalid="ignore"):
        plx[~(np.isfinite(plx) & np.isfinite(plx_err) & (plx_err > 0))] = np.nan
        dm0[~(np.isfinite(dm0) & np.isfinite(sig) & (sig > 0))] = np.nan
    if pt is not None:
        # a parallax-only posterior (binaries, no M_Ks) has no spectro-photometric
        # distance to trade bias against: it gets the untempered population prior
        pt = pt.copy()
        pt[np.isnan(dm0), _PT["weight"]] = 1.0
    flags = np.zeros(n, dtype=np.int32)
    flags[np.isnan(dm0)] |= DISTANCE_FLAG_BITS["parallax_only"]
    flags[np.isnan(plx)] |= DISTANCE_FLAG_BITS["no_parallax"]
    none = np.isnan(plx) & np.isnan(dm0)
    flags[none] = DISTANCE_FLAG_BITS["no_distance"]
    out = {k: np.full(n, np.nan) for k in ("dis", "dis_low", "dis_high", "logdis",
                                             "logdis_err")}
    points = np.zeros(n, dtype=np.int64)
    tol = np.full(n, float(cfg.window_log_tolerance))
    todo = np.flatnonzero(~none)
    for attempt in range(_MAX_WIDENINGS + 1):
        if todo.size == 0:
            break
        if windowed and attempt < _MAX_WIDENINGS:
            lo, hi, c2 = posterior_windows(plx[todo], plx_err[todo], dm0[todo], sig[todo],
                                           grid, cfg, tol[todo],
                                           None if pt is None else pt[todo])
        else:
            lo = np.zeros(todo.size, dtype=np.int64)
            hi = np.full(todo.size, grid.n_points, dtype=np.int64)
            c2 = np.full(todo.size, np.inf)
        retry = []
        summaries = _two_level_summaries(grid, lo, hi, plx[todo], plx_err[todo], dm0[todo],
                                         sig[todo], cfg, None if pt is None else pt[todo]
                                         ) if windowed else {}
        for k, i in enumerate(todo):
            s = summaries.pop(k, None)
            if s is None:
                s = _summarize_fine(grid, int(lo[k]), int(hi[k]), plx[i], plx_err[i], dm0[i],
                                    sig[i], cfg, None if pt is None else pt[i])
            points[i] += hi[k] - lo[k]
            n_out = grid.n_points - (hi[k] - lo[k])
            if n_out > 0:
                # outside: posterior < max exp(-(c2 - Phi_min)/2) per point
                # (a posterior narrower than the grid step can leave every grid point
                # above the continuous bound K: then the bound says nothing -> retry)
                # compared in logs: n_out e^(...) overflows for a useless (huge) bound
                log_hidden = np.log(n_out) - 0.5 * (c2[k] - s.phi_min)
                with np.errstate(divide="ignore"):
                    log_needed = np.log(0.5 * min(s.w_low, s.w_high))
                if log_hidden >= log_needed:
                    retry.append(i)
                    continue
            out["dis"][i] = grid.distance_kpc(s.i_mode)
            out["dis_low"][i] = grid.distance_kpc(s.i_low)
            out["dis_high"][i] = grid.distance_kpc(s.i_high)
            out["logdis"][i] = s.logdis
            out["logdis_err"][i] = s.logdis_err
            # the posterior still reaches d_max: improper under the flat prior (any
            # weight at the edge); under a proper prior, still above 1e-3 of its maximum
            # there (a nearly flat tempered prior too weak to close it)
            edge_level = (np.exp(-cfg.window_log_tolerance) if cfg.prior == "flat"
                          else 1e-3)
            if s.w_edge >= edge_level:
                flags[i] |= DISTANCE_FLAG_BITS["truncated_by_prior_edge"]
        todo = np.asarray(retry, dtype=np.int64)
        if todo.size:
            flags[todo] |= DISTANCE_FLAG_BITS["window_widened"]
            tol[todo] += 10.0
            log.debug("distance: %d stars re-evaluated on a wider window", todo.size)
    _narrow_posteriors(out, flags, plx, plx_err, dm0, sig, grid.step_kpc)
    if point_estimate(cfg) == "log_mean":
        out["dis"] = 10.0 ** out["logdis"]
    with np.errstate(invalid="ignore"):
        outside = (out["dis"] < out["dis_low"]) | (out["dis"] > out["dis_high"])
    flags[outside] |= DISTANCE_FLAG_BITS["mode_outside_interval"]
    flags[np.abs(parallax_tension(plx, plx_err, dm0, sig)) > TENSION_SIGMA] |= (
        DISTANCE_FLAG_BITS["parallax_photometric_tension"])
    return {**out, "distance_flags": flags, "window_points": points}


def point_estimate(cfg: DistanceConfig) -> str:
    """The catalogue's ``dis`` under ``cfg``: "mode" (the paper's, Sec. 7 / Table 1) or
    "log_mean" (exp of the posterior mean of ln d: 10^logdis); ``cfg.point_estimate``
    "auto" is the mode under the flat and edsd priors, log_mean under the population
    prior.

    Why log_mean with the population prior: for a posterior near lognormal in d with
    width s (in ln d), the mode of the density in d lies a factor exp(-s^2) below the
    median, so the mode is biased nearer by ~s^2 in every bin (+4 % in true/dis - 1 at
    s = 0.2): on two DR5-size mocks 10^logdis lowers the largest |median(true/dis - 1)|
    over the bins of true and of catalogued distance from 28.5 % to 20.5 % (seed 2026)
    and 22.6 % to 18.1 % (seed 77), and brings the 3-5 kpc bin within 3 %
    (docs/validation.md, "Distances: what the data allow")."""
    if cfg.point_estimate != "auto":
        return cfg.point_estimate
    return "log_mean" if cfg.prior == "population" else "mode"


def parallax_tension(parallax_mas: np.ndarray, parallax_error_mas: np.ndarray,
                     dm0_mag: np.ndarray, sigma_tot_mag: np.ndarray) -> np.ndarray:
    """(plx - plx_phot) / sqrt(dplx^2 + dplx_phot^2) with the spectro-photometric
    parallax plx_phot = 10^(-(dm0 - 10) / 5) mas and dplx_phot = 0.2 ln10 sigma_tot
    plx_phot (eqs. 15-17 with dm0 = Ks0 - M_Ks); NaN without both factors."""
    plx = np.asarray(parallax_mas, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        plx_s = 10.0 ** (-(np.asarray(dm0_mag, dtype=np.float64) - 10.0) / 5.0)
        err_s = plx_s * 0.2 * np.log(10.0) * np.asarray(sigma_tot_mag, dtype=np.float64)
        return (plx - plx_s) / np.hypot(np.asarray(parallax_error_mas, dtype=np.float64),
                                        err_s)


def _narrow_posteriors(out: dict[str, np.ndarray], flags: np.ndarray, plx: np.ndarray,
                       plx_err: np.ndarray, dm0: np.ndarray, sig: np.ndarray,
                       step_kpc: float) -> None:
    """The Laplace approximation in u = ln d for posteriors narrower than ~2 grid steps.

    With Phi(u) = ((plx - e^-u) / dplx)^2 + ((dm0 - 10 - 5 u / ln10) / sigma_tot)^2
    (eqs. 19-22; the prior is flat on such scales), Newton's method from the grid mode
    gives the mode u*, and sigma_u = sqrt(2 / Phi''(u*)): dis = e^u*, dis_low / dis_high
    = e^(u* -/+ sigma_u), logdis = u* / ln10, logdis_err = sigma_u / ln10. In place."""
    dis = out["dis"]
    with np.errstate(invalid="ignore"):
        width = np.log(10.0) * out["logdis_err"] * dis
        narrow = np.isfinite(dis) & ((width < 2.0 * step_kpc)
                                     | (out["dis_high"] <= out["dis_low"]))
    idx = np.flatnonzero(narrow)
    if idx.size == 0:
        return
    p, pe, m, sg = plx[idx], plx_err[idx], dm0[idx], sig[idx]
    hp, hm = np.isfinite(p), np.isfinite(m)
    p0, pe0 = np.where(hp, p, 0.0), np.where(hp, pe, 1.0)
    m0, sg0 = np.where(hm, m, 0.0), np.where(hm, sg, 1.0)
    k = 5.0 / np.log(10.0)
    u = np.log(dis[idx])
    for _ in range(50):
        y = np.exp(-u)
        g1 = np.where(hp, 2.0 * (p0 - y) * y / pe0**2, 0.0) + np.where(
            hm, -2.0 * k * (m0 - 10.0 - k * u) / sg0**2, 0.0)
        g2 = np.where(hp, 2.0 * (y * y - (p0 - y) * y) / pe0**2, 0.0) + np.where(
            hm, 2.0 * k * k / sg0**2, 0.0)
        step = np.where(g2 > 0, g1 / np.where(g2 > 0, g2, 1.0), 0.0)
        u = u - np.clip(step, -0.1, 0.1)
        if np.all(np.abs(step) < 1e-12):
            break
    y = np.exp(-u)
    g2 = np.where(hp, 2.0 * (y * y - (p0 - y) * y) / pe0**2, 0.0) + np.where(
        hm, 2.0 * k * k / sg0**2, 0.0)
    ok = g2 > 0
    sigma_u = np.sqrt(2.0 / np.where(ok, g2, 1.0))
    ok &= np.exp(u) * sigma_u < 2.0 * step_kpc
    j = idx[ok]
    u, sigma_u = u[ok], sigma_u[ok]
    out["dis"][j] = np.exp(u)
    out["dis_low"][j] = np.exp(u - sigma_u)
    out["dis_high"][j] = np.exp(u + sigma_u)
    out["logdis"][j] = u / np.log(10.0)
    out["logdis_err"][j] = sigma_u / np.log(10.0)
    flags[j] |= DISTANCE_FLAG_BITS["analytic_width"]


def galactocentric_xyz_kpc(ra_deg: np.ndarray, dec_deg: np.ndarray, distance_kpc: np.ndarray,
                           sun_x_kpc: float = -8.1) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """Galactic Cartesian X, Y, Z (kpc) with the Sun at X = -8.1 kpc, Y = Z = 0 (Sec. 7).

    astropy's ``Galactocentric`` frame with ``galcen_distance`` = |sun_x_kpc| and
    ``z_sun`` = 0 (so the Sun lies exactly on X = sun_x_kpc, Y = Z = 0): X points
    from the Sun towards the Galactic centre, Y in the direction of Galactic rotation
    (l = 90 deg), Z towards the North Galactic Pole. NaN distances give NaN.
    """
    import astropy.units as u
    from astropy.coordinates import Galactocentric, SkyCoord

    d = np.asarray(distance_kpc, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0) & np.isfinite(ra_deg) & np.isfinite(dec_deg)
    x = np.full(d.shape, np.nan)
    y = np.full(d.shape, np.nan)
    z = np.full(d.shape, np.nan)
    if ok.any():
        frame = Galactocentric(galcen_distance=abs(sun_x_kpc) * u.kpc, z_sun=0 * u.pc,
                               roll=0 * u.deg)
        c = SkyCoord(ra=np.asarray(ra_deg)[ok] * u.deg, dec=np.asarray(dec_deg)[ok] * u.deg,
                     distance=d[ok] * u.kpc, frame="icrs").transform_to(frame)
        x[ok] = c.x.to_value(u.kpc)
        y[ok] = c.y.to_value(u.kpc)
        z[ok] = c.z.to_value(u.kpc)
    return x, y, z


def posterior_curve(parallax_mas: float, parallax_error_mas: float, dm0_mag: float,
                    sigma_tot_mag: float, cfg: DistanceConfig | None = None,
                    max_points: int = 4000, prior_terms: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The normalised posterior density (1/kpc) of one star over its window, for plots:
    at most ``max_points`` grid points (every k-th 0.1 pc point)."""
    cfg = cfg or DistanceConfig(prior="flat")  # None: the paper's flat prior
    grid = DistanceGrid.build(cfg)
    args = [np.array([v], dtype=np.float64) for v in (parallax_mas, parallax_error_mas,
                                                       dm0_mag, sigma_tot_mag)]
    pt = None if prior_terms is None else np.asarray(prior_terms, dtype=np.float64)
    lo, hi, _ = posterior_windows(*args, grid, cfg,
                                  prior_terms=None if pt is None else pt.reshape(1, -1))
    step = max(1, int(hi[0] - lo[0]) // max_points)
    sl = slice(int(lo[0]), int(hi[0]), step)
    plx = parallax_mas if np.isfinite(parallax_error_mas) and parallax_error_mas > 0 else np.nan
    lp = _log_post(grid, sl, plx, parallax_error_mas, dm0_mag, sigma_tot_mag, cfg,
                   None if pt is None else pt.reshape(-1))
    dens = np.exp(lp - lp.max())
    d = grid.distance_kpc(np.arange(grid.n_points)[sl])
    dens /= np.trapezoid(dens, d)
    return d, dens


def write_posterior_plot(path: str, parallax_mas: float, parallax_error_mas: float,
                         dm0_mag: float, sigma_tot_mag: float, summary: Mapping[str, float],
                         cfg: DistanceConfig | None = None,
                         prior_terms: np.ndarray | None = None) -> str:
    """A PNG/PDF of one star's posterior with its factors, mode and 16/84 percentiles."""
    from matplotlib.figure import Figure

    cfg = cfg or DistanceConfig(prior="flat")  # None: the paper's flat prior
    d, dens = posterior_curve(parallax_mas, parallax_error_mas, dm0_mag, sigma_tot_mag, cfg,
                              prior_terms=prior_terms)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(d, dens, "k-", lw=1.5, label="posterior (eq. 18)")
    for label, args, style in (("parallax only", (parallax_mas, parallax_error_mas, np.nan,
                                                  np.nan), "C0--"),
                               ("spectro-photometric only", (np.nan, np.nan, dm0_mag,
                                                             sigma_tot_mag), "C3--")):
        if np.isfinite(args[0]) or np.isfinite(args[2]):
            pt = None if prior_terms is None else np.asarray(prior_terms).reshape(-1)
            dens_f = np.exp(-0.5 * phi(d, *args, prior=cfg.prior,
                                       edsd_length_kpc=cfg.edsd_length_kpc, prior_terms=pt))
            if dens_f.max() > 0:
                ax.plot(d, dens_f / np.trapezoid(dens_f, d), style, lw=1, label=label)
    ax.axvline(summary["dis"], color="k", lw=0.8)
    ax.axvspan(summary["dis_low"], summary["dis_high"], color="0.85", zorder=0,
               label="16-84 %")
    ax.set_xlabel("distance (kpc)")
    ax.set_ylabel("probability density (1 / kpc)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def star_distance(parallax_mas: float, parallax_error_mas: float, ks_mag: float,
                  ks_error_mag: float, aks_mag: float, aks_error_mag: float, mks_mag: float,
                  mks_error_mag: float, cfg: DistanceConfig | None = None,
                  l_deg: float = float("nan"), b_deg: float = float("nan"),
                  hyper: PopulationPrior | None = None) -> dict[str, Any]:
    """Eqs. (18)-(24) for one star from its raw inputs (``obpipe distance``, Sec. 8).

    The inputs are checked first (:func:`check_star_inputs`: a ValueError names the
    problem). The population prior needs the star's Galactic ``l_deg`` / ``b_deg`` and
    its hyperparameters ``hyper`` (default: :class:`PopulationPrior`'s, with
    ``cfg.population_prior_weight``).

    ``Ks0 = Ks - A_Ks`` with ``sqrt(dKs^2 + dA_Ks^2)``; NaN M_Ks (or Ks) gives the
    parallax-only distance. Returns the summary (kpc, log10 kpc), the relative
    uncertainty ln(10) logdis_err (Fig. 11), the flag names and the terms used.
    """
    cfg = cfg or DistanceConfig(prior="flat")  # None: the paper's flat prior
    check_star_inputs(parallax_mas, parallax_error_mas, ks_mag, ks_error_mag, aks_mag,
                      aks_error_mag, mks_mag, mks_error_mag)
    pt = None
    if cfg.prior == "population":
        if not (np.isfinite(l_deg) and np.isfinite(b_deg)):
            raise ValueError("the population prior needs the star's position (Galactic l, "
                             "b or RA, Dec); give it, or choose the flat (paper) or edsd "
                             "prior")
        import dataclasses as _dc

        hp = _dc.replace(hyper or PopulationPrior(), weight=cfg.population_prior_weight)
        pt = population_prior_terms(np.array([l_deg]), np.array([b_deg]),
                                    np.array([mks_mag]), hp, cfg.d_max_kpc)
    ks0 = ks_mag - aks_mag
    ks0_err = float(np.hypot(ks_error_mag, aks_error_mag))
    dm0, sig = distance_modulus_terms(np.array([ks0]), np.array([ks0_err]),
                                      np.array([mks_mag]), np.array([mks_error_mag]))
    res = summarize_distance_posteriors(np.array([parallax_mas]), np.array([parallax_error_mas]),
                                        dm0, sig, cfg, prior_terms=pt)
    out: dict[str, Any] = {k: float(v[0]) for k, v in res.items()
                           if k not in ("distance_flags", "window_points")}
    flags = int(res["distance_flags"][0])
    out["flags"] = [k for k, v in DISTANCE_FLAG_BITS.items() if flags & v] or ["none"]
    out["relative_uncertainty"] = float(np.log(10) * out["logdis_err"])
    out["parallax_mas"] = float(parallax_mas)
    out["dm0_mag"] = float(dm0[0])
    out["sigma_tot_mag"] = float(sig[0])
    out["prior"] = cfg.prior
    out["parallax_tension_sigma"] = float(parallax_tension(
        np.array([parallax_mas]), np.array([parallax_error_mas]), dm0, sig)[0])
    if pt is not None:
        out["prior_terms"] = pt[0].tolist()
    return out


#: physical limits of one star's inputs (:func:`check_star_inputs`): no star is nearer
#: than 1 pc (Proxima Centauri: 768 mas), none brighter than Ks = -5 or with M_Ks
#: outside [-12, 20] mag (the most luminous stars ~ -11, cool white dwarfs ~ +15);
#: A_Ks above 10 mag is beyond any sight line of an optical survey
PHYSICAL_LIMITS = {"parallax_mas": (-1000.0, 1000.0), "ks_mag": (-5.0, 30.0),
                   "aks_mag": (-0.5, 10.0), "mks_mag": (-12.0, 20.0)}


def check_star_inputs(parallax_mas: float, parallax_error_mas: float, ks_mag: float,
                      ks_error_mag: float, aks_mag: float, aks_error_mag: float,
                      mks_mag: float, mks_error_mag: float) -> None:
    """Reject non-finite, non-physical or inconsistent inputs of one star (ValueError
    naming the input and the allowed range). NaN means "not given"; infinities are
    rejected; every given value's error must be finite and > 0 (Ks, A_Ks: ≥ 0)."""
    vals = {"parallax": parallax_mas, "parallax_error": parallax_error_mas, "ks": ks_mag,
            "ks_error": ks_error_mag, "aks": aks_mag, "aks_error": aks_error_mag,
            "mks": mks_mag, "mks_error": mks_error_mag}
    for name, v in vals.items():
        if v is not None and np.isinf(v):
            raise ValueError(f"{name} = {v}: must be finite (or omitted)")

    def given(v: float) -> bool:
        return v is not None and np.isfinite(v)

    for name, key in (("parallax", "parallax_mas"), ("ks", "ks_mag"), ("aks", "aks_mag"),
                      ("mks", "mks_mag")):
        lo, hi = PHYSICAL_LIMITS[key]
        if given(vals[name]) and not lo <= vals[name] <= hi:
            raise ValueError(f"{name} = {vals[name]} is not physical: allowed [{lo}, {hi}]"
                             f" ({key.split('_')[-1]})")
    if given(parallax_mas) and not (given(parallax_error_mas) and parallax_error_mas > 0):
        raise ValueError(f"parallax_error = {parallax_error_mas}: a parallax needs an error "
                         "> 0 mas")
    if given(mks_mag):
        if not (given(mks_error_mag) and mks_error_mag > 0):
            raise ValueError(f"mks_error = {mks_error_mag}: an M_Ks needs an error > 0 mag")
        if not given(ks_mag):
            raise ValueError("mks given without ks: the spectro-photometric distance needs "
                             "the apparent Ks")
    for name in ("ks_error", "aks_error"):
        if given(vals[name]) and vals[name] < 0:
            raise ValueError(f"{name} = {vals[name]}: must be >= 0 mag")
    if given(ks_mag) and given(mks_mag) and not (given(ks_error_mag) and given(aks_mag)
                                                 and given(aks_error_mag)):
        raise ValueError("ks_error, aks and aks_error must be finite with ks and mks")


# ---------------------------------------------------------------- distances of catalog rows
#: root attribute of the products holding the population prior fitted by the distance
#: stage (JSON: ``{"hyperparameters": {...}, "fit": {...}}``)
PRIOR_ATTR = "distance_population_prior"


def population_prior_from_record(raw: Any) -> PopulationPrior | None:
    """The fitted population prior recorded in the products' :data:`PRIOR_ATTR` (a JSON
    text or a dict), or None where none was recorded."""
    import json

    if not raw:
        return None
    rec = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return PopulationPrior(**rec["hyperparameters"])


def parallax_only_binary(binary_flag: np.ndarray, parallax_mas: np.ndarray,
                         parallax_error_mas: np.ndarray) -> np.ndarray:
    """Rows whose distance uses the parallax alone (Sec. 7): binaries (flag 1) that have
    a parallax; a binary without one (flagged from its RVs or RUWE) keeps its
    spectro-photometric distance rather than none."""
    from obpipe.binary import FLAG_BINARY

    plx = np.asarray(parallax_mas, dtype=np.float64)
    err = np.asarray(parallax_error_mas, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        has = np.isfinite(plx) & np.isfinite(err) & (err > 0)
    return (np.asarray(binary_flag) == FLAG_BINARY) & has


def block_prior_terms(ra_deg: np.ndarray, dec_deg: np.ndarray, mks_mag: np.ndarray,
                      cfg: DistanceConfig, hyper: PopulationPrior | None
                      ) -> np.ndarray | None:
    """Per-star population-prior terms of some rows (None for another prior)."""
    import dataclasses

    if cfg.prior != "population":
        return None
    if hyper is None:
        log.warning("population prior: no fitted hyperparameters, the defaults are used")
    hyper = dataclasses.replace(hyper or PopulationPrior(), weight=cfg.population_prior_weight)
    lon, lat = galactic_lb_deg(ra_deg, dec_deg)
    return population_prior_terms(lon, lat, mks_mag, hyper, cfg.d_max_kpc)


def catalog_distances(ra_deg: np.ndarray, dec_deg: np.ndarray, ks0_mag: np.ndarray,
                      ks0_err_mag: np.ndarray, mks_mag: np.ndarray, mks_err_mag: np.ndarray,
                      binary_flag: np.ndarray, parallax_mas: np.ndarray,
                      parallax_error_mas: np.ndarray, cfg: DistanceConfig,
                      hyper: PopulationPrior | None = None) -> dict[str, np.ndarray]:
    """The distance columns of some catalog rows (Sec. 7, eqs. 18-24), the one recipe of
    the distance stage (per visit) and of the unique-star view (M_Ks combined per star).

    Binaries (``binary_flag`` 1) with a parallax use the parallax alone where
    ``cfg.parallax_only_binaries`` (Sec. 7; flag bit ``binary_parallax_only``); under the
    population prior ``hyper`` (its fitted hyperparameters) that posterior is proper
    whatever the parallax. Returns ``dis``, ``dis_low``, ``dis_high`` (kpc, mode and
    16th / 84th percentiles), ``logdis``, ``logdis_err`` (dex, float32),
    ``distance_flags`` and the Galactocentric ``X``, ``Y``, ``Z`` (kpc, float32; Sun at
    X = -8.1 kpc).
    """
    dm0, sig = distance_modulus_terms(ks0_mag, ks0_err_mag, mks_mag, mks_err_mag)
    binary = parallax_only_binary(binary_flag, parallax_mas, parallax_error_mas)
    if cfg.parallax_only_binaries:
        dm0 = np.where(binary, np.nan, dm0)
    res = summarize_distance_posteriors(
        parallax_mas, parallax_error_mas, dm0, sig, cfg, grid=DistanceGrid.build(cfg),
        prior_terms=block_prior_terms(ra_deg, dec_deg, mks_mag, cfg, hyper))
    flags = res["distance_flags"]
    if cfg.parallax_only_binaries:
        flags[binary] |= DISTANCE_FLAG_BITS["binary_parallax_only"]
    x, y, z = galactocentric_xyz_kpc(ra_deg, dec_deg, res["dis"])
    return {"dis": res["dis"], "dis_low": res["dis_low"], "dis_high": res["dis_high"],
            "logdis": res["logdis"].astype(np.float32),
            "logdis_err": res["logdis_err"].astype(np.float32), "distance_flags": flags,
            "X": x.astype(np.float32), "Y": y.astype(np.float32), "Z": z.astype(np.float32)}
