"""Reddened copies of the training spectra (beyond the paper; issue 15 item 2).

In a magnitude-limited survey the most reddened stars are the distant ones, and so the
luminous ones. A network trained on such stars can learn "reddened, so luminous" from
what the reddening leaves in a normalised spectrum: the pseudo-continuum's running mean
of a sloped spectrum leans toward the kernel's faint side (:mod:`obpipe.spectra.
normalize`). It then reads a faint star behind the same dust as too luminous. That puts a
distance prior into a spectroscopic M_Ks. On the mock, network (a)'s M_Ks moved by
-0.03 to -0.07 mag per magnitude of E(B-V) added to the spectra alone (F19, G23 or O94
curves; -0.01 to -0.03 with the copies: ``benchmarks/reddening_shortcut.py``).

The training set can say otherwise. Each training spectrum gets a copy with extra dust:
the raw flux times 10^(-0.4 dE A(lambda) / E(B-V)), with its ivar divided by the square of
that factor, so that the S/N of every pixel is unchanged and only the dust differs. The
copy keeps the star's M_Ks target. The curve is Gordon et al. (2023, ApJ 950, 86; the
``dust_extinction`` G23 class) at R_V ~ N(3.1, 0.25), clipped to 2.3-4.0, with dE ~
U(0, ``max_ebv``). The mock reddens with its own family (F19 by default), so the two
sides stay independent.
"""

from __future__ import annotations

import functools

import numpy as np

from obpipe.spectra.grid import wavelength_grid

#: R_V nodes at which the curve is evaluated (linear interpolation between them)
R_V_NODES = np.linspace(2.3, 4.0, 9)
R_V_MEAN, R_V_SIGMA = 3.1, 0.25


@functools.lru_cache(maxsize=2)
def _curves(n_pix: int) -> np.ndarray:
    """A(lambda) / E(B-V) of G23 at each R_V node, (n_nodes, n_pix)."""
    import astropy.units as u
    from dust_extinction.parameter_averages import G23

    wave = wavelength_grid()[:n_pix] * u.AA
    return np.stack([rv * np.asarray(G23(Rv=rv)(wave), dtype=float) for rv in R_V_NODES])


def extinction_per_ebv(r_v: np.ndarray, n_pix: int) -> np.ndarray:
    """A(lambda) / E(B-V) (n, n_pix) of G23 at each row's R_V (2.3-4.0), interpolated
    linearly between :data:`R_V_NODES`."""
    r_v = np.clip(np.asarray(r_v, dtype=float), R_V_NODES[0], R_V_NODES[-1])
    curves = _curves(n_pix)
    i = np.clip(np.searchsorted(R_V_NODES, r_v) - 1, 0, R_V_NODES.size - 2)
    t = ((r_v - R_V_NODES[i]) / (R_V_NODES[i + 1] - R_V_NODES[i]))[:, None]
    return (1.0 - t) * curves[i] + t * curves[i + 1]


def reddened_copies(flux: np.ndarray, ivar: np.ndarray, rng: np.random.Generator,
                    max_ebv: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One reddened copy of each raw spectrum (rows of ``flux`` / ``ivar`` on the common
    grid): dE ~ U(0, ``max_ebv``) mag of G23 at R_V ~ N(3.1, 0.25), with the per-pixel S/N
    unchanged (ivar / factor^2). Returns the copies' flux and ivar (float32) and dE."""
    flux = np.asarray(flux, dtype=np.float32)
    ivar = np.asarray(ivar, dtype=np.float32)
    n = flux.shape[0]
    d_ebv = rng.uniform(0.0, max_ebv, n)
    r_v = rng.normal(R_V_MEAN, R_V_SIGMA, n)
    factor = (10.0 ** (-0.4 * d_ebv[:, None] * extinction_per_ebv(r_v, flux.shape[1]))
              ).astype(np.float32)
    return flux * factor, ivar / (factor * factor), d_ebv
