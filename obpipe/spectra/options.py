"""Options of the spectral chain: the normalize, pca and emission stages (Secs. 2-3,
App. A; :mod:`obpipe.spectra.normalize`, :mod:`obpipe.spectra.pca`,
:mod:`obpipe.spectra.emission`)."""

from __future__ import annotations

from dataclasses import dataclass

from obpipe.spectra import normalize, pca


@dataclass(frozen=True)
class SpectralConfig:
    """Options of the spectral chain (defaults: the paper's choices where it has them)."""

    continuum_kernel_aa: float = normalize.CONTINUUM_KERNEL_AA
    n_components: int = pca.N_COMPONENTS
    #: training spectra for the bases: S/N above this, at most ``max_train`` of them
    train_min_snr: float = 50.0
    max_train: int = 8000
    seed: int = 0
    #: weighted projection with the coefficient prior (False: plain weighted LSQ)
    projection_prior: bool = True
    emission_target_purity: float = 0.99
    broken_mad_sigma: float = 8.0
    broken_min_chi2: float = 3.0
