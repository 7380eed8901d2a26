"""Options of the spectral chain: the normalize, pca and emission stages (Secs. 2-3,
App. A; :mod:`obpipe.spectra.normalize`, :mod:`obpipe.spectra.pca`,
:mod:`obpipe.spectra.emission`)."""

from __future__ import annotations

from dataclasses import dataclass

from obpipe.options import Range, option
from obpipe.spectra import normalize, pca


@dataclass(frozen=True)
class SpectralConfig:
    """Options of the spectral chain (defaults: the paper's choices where it has them)."""

    continuum_kernel_aa: float = option(
        normalize.CONTINUUM_KERNEL_AA,
        doc="width L (AA) of the Gaussian pseudo-continuum kernel w = exp(-(lambda - lambda0)^2 / "
            "L^2) (Sec. 2: 50 AA)")
    continuum_weighting: str = option(
        "ivar",
        doc="weights of the pseudo-continuum's running mean: \"ivar\" (inverse variance, Ho et "
            "al. 2017) or \"uniform\" (every usable pixel alike: the paper's plain Gaussian "
            "smoothing, Sec. 2; leaves less of the reddening in the normalised spectrum, issue "
            "15 item 2)")
    continuum_excludes_interstellar: bool = option(
        True,
        doc="leave the interstellar lines' windows (:data:`obpipe.spectra.pca."
            "INTERSTELLAR_WINDOWS_AA`) out of the pseudo-continuum's running mean (beyond the "
            "paper, issue 15 item 2; on since the eleventh session): a strong interstellar "
            "line then cannot lower the continuum of the stellar lines within ~50 AA of it "
            "(the 4428 AA DIB sits between H-gamma and He I 4471), which made reddened "
            "low-S/N stars read bright through the interstellar-blind projection. Five "
            "zero-point-exact mocks, S/N 5-20: -0.055 -> -0.005 mag (docs/validation.md)")
    continuum_shape_degree: int = option(
        0,
        doc="degree of the polynomial in 1/lambda of the spectrum's log broad shape divided "
            "out before the pseudo-continuum's running mean (beyond the paper, issue 15 item "
            "2; 0: off, the paper's running mean of the flux itself). Makes the normalised "
            "spectrum blind to a reddening or flux-calibration slope "
            "(:func:`obpipe.spectra.normalize.pseudo_continuum`)",
        range=Range(0, 8))
    n_components: int = option(
        pca.N_COMPONENTS,
        doc="principal components K of each PCA basis (Sec. 3: 100)")
    train_min_snr: float = option(
        50.0,
        doc="training spectra for the bases: S/N above this, at most ``max_train`` of them")
    max_train: int = option(
        8000,
        doc="at most this many training spectra for the bases (a seeded random subset of those "
            "above train_min_snr)")
    seed: int = option(0, doc="random seed of the training subset and of the randomized PCA")
    projection_prior: bool = option(
        True,
        doc="weighted projection with the coefficient prior (False: plain weighted LSQ)")
    exclude_interstellar_lines: bool = option(
        True,
        doc="interstellar-blind projection (issue 15 item 2, beyond the paper): the windows of "
            "the interstellar lines (Ca II K, Na D, K I, the strong DIBs; "
            ":data:`obpipe.spectra.pca.INTERSTELLAR_WINDOWS_AA`) get zero weight in the pca "
            "stage's weighted projection and residual statistics, so pca_coeff / recon_flux "
            "(the networks' inputs) hold no interstellar line, and the networks leave those "
            "pixels out: they cannot read distance (E(B-V)) as luminosity "
            "(docs/validation.md); False: the paper's projection of every usable pixel")
    refine_rv: bool = option(
        True,
        doc="rest frame refined against the PCA reconstruction (issue 15 item 2, beyond the "
            "paper): the pca stage measures each spectrum's residual velocity against its own "
            "clean-window reconstruction (linearised weighted least squares on dR/dv, the "
            "clean windows without the interstellar ones, two steps; "
            ":func:`obpipe.spectra.velocity.refine_rest_frame`), shifts it to that rest "
            "frame and projects it again, so the networks do not read a catalogue-RV error "
            "as luminosity; products rv_refined_kms, rv_refined_err_kms. On (tenth session) "
            "with [luminosity] clean_two_sided: alone it moves the low-S/N bins faint by "
            "0.05-0.16 mag where the one-sided cleaning's faint targets are left; together "
            "they centre the S/N > 50 bias (mean -0.012 against +0.028 over five mock "
            "realisations; docs/validation.md, \"Two-sided cleaning with the refined rest "
            "frame\")")
    refine_rv_max_snr: float = option(
        50.0,
        doc="refine_rv only for spectra below this S/N (snr_g); at or above it (the S/N > 50 "
            "training spectra of the bases and networks) they keep the catalogue frame: "
            "networks trained on refined spectra gave half the low-S/N gain back (control "
            "mock S/N 5-20: -0.13 with every spectrum refined, -0.06 with this); 1e4: all")
    emission_target_purity: float = option(
        0.99,
        doc="H-alpha emission threshold: the smallest significance at which the mirrored negative "
            "tail (false positives) is below 1 - purity of the positive tail (Sec. 3)")
    broken_mad_sigma: float = option(
        8.0,
        doc="broken spectrum: largest 16-pixel reduced chi2 above the median + this many MADs of "
            "its S/N bin (App. A)")
    broken_min_chi2: float = option(
        3.0,
        doc="broken spectrum: and above this reduced chi2 (App. A)")
