"""Pipeline-side parallax zero-point and external errors against the mock's truth, in
Gaia DR2 and DR3 mode (issue 18, item 3).

The mock injects its own zero-point and error inflation (``obpipe.simulate.sky``: DR2 a
G/colour/sky-dependent zero-point; DR3 the Lindegren et al. 2021 recipe plus a 10 uas sky
pattern and Maiz Apellaniz 2022's G-dependent k); the pipeline removes Leung & Bovy's
constant (DR2) or Lindegren et al. 2021 via gaiadr3-zeropoint (DR3) and inflates the
quoted errors with ``obpipe.photometry.parallax.external_parallax_error``. Per G bin:
the median and robust (scaled MAD) standard deviation of the pull (corrected parallax -
true) / error, with the quoted and with the external error, and the median residual
zero-point. A calibrated error gives a robust sd of 1.

    python benchmarks/parallax_errors.py [--n-stars 4000] [--seed 9]
"""

from __future__ import annotations

import argparse

import numpy as np

from obpipe.config import SimulationConfig
from obpipe.photometry import parallax as px
from obpipe.simulate.survey import build_tables
from obpipe.stats import robust_std


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-stars", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=9)
    args = ap.parse_args()
    for rel in ("dr2", "dr3"):
        obs, truth, _ = build_tables(SimulationConfig(n_stars=args.n_stars, seed=args.seed,
                                                      gaia_release=rel))
        zp, flags = px.parallax_zero_point(
            obs["gaia_release"], obs["phot_g_mean_mag"], obs["nu_eff_used_in_astrometry"],
            obs["pseudocolour"], obs["ecl_lat"], obs["astrometric_params_solved"])
        ext = px.external_parallax_error(obs["parallax_error"], obs["phot_g_mean_mag"],
                                         obs["gaia_release"])
        corr = obs["parallax"] - zp
        g = obs["phot_g_mean_mag"]
        print(f"== {rel}: {g.size} spectra, zero-point fallback {np.mean(flags > 0):.3f}")
        for name, err in (("quoted", obs["parallax_error"]), ("external", ext)):
            pull = (corr - truth["parallax_mas_true"]) / err
            for lo, hi in ((0, 13), (13, 16), (16, 30)):
                m = (g >= lo) & (g < hi)
                med = float(np.median(pull[m]))
                rsd = float(robust_std(pull[m]))
                resid = 1e3 * float(np.median((zp - truth["parallax_zero_point_mas"])[m]))
                print(f"   {name:8s} G {lo}-{hi}: n={int(m.sum())} median pull {med:+.2f}, "
                      f"robust sd {rsd:.2f}, residual zero-point {resid:+.1f} uas")


if __name__ == "__main__":
    main()
