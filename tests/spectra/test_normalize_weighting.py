"""Pseudo-continuum weights (Sec. 2; issue 15 item 2): "ivar" (Ho et al. 2017) against
"uniform" (the paper's plain Gaussian smoothing). Pure numpy, no Dask."""

from __future__ import annotations

import numpy as np
import pytest

from obpipe.config import PipelineConfig
from obpipe.spectra.grid import wavelength_grid
from obpipe.spectra.normalize import normalize, pseudo_continuum
from obpipe.spectra.options import SpectralConfig
from obpipe.stages import normalize as normalize_stage

WAVE = wavelength_grid()
#: two Balmer-like absorption lines (H-gamma, H-beta), depth 0.5 and 0.3, sigma 8 AA
LINES = (1.0 - 0.5 * np.exp(-0.5 * ((WAVE - 4341.7) / 8.0) ** 2)
         - 0.3 * np.exp(-0.5 * ((WAVE - 4862.7) / 8.0) ** 2))
INNER = slice(50, -50)


def _reddening_leak(continuum: np.ndarray, weighting: str) -> float:
    """Mean |normalised(lines x continuum) - normalised(lines on a flat continuum)|, noise
    at 1 % of the flux (ivar ~ 1/f^2, the same S/N at every pixel)."""
    out = []
    for c in (np.ones_like(WAVE), continuum):
        f = (c * LINES)[None, :]
        nf, _ = normalize(f, 1.0 / (0.01 * f) ** 2, weighting=weighting)
        out.append(nf[0])
    return float(np.mean(np.abs(out[1] - out[0])[INNER]))


@pytest.mark.parametrize("continuum", [np.exp(-(WAVE - 3700.0) / 900.0),  # reddened
                                       (WAVE / 5000.0) ** 4])
def test_uniform_weights_leave_less_of_a_steep_continuum_in_the_lines(
        continuum: np.ndarray) -> None:
    ivar_leak = _reddening_leak(continuum, "ivar")
    uniform_leak = _reddening_leak(continuum, "uniform")
    assert ivar_leak > 1e-3  # the ivar-weighted mean leans to the kernel's faint side
    assert uniform_leak < 0.5 * ivar_leak


def test_uniform_weights_ignore_the_ivar_values_but_not_unusable_pixels() -> None:
    rng = np.random.default_rng(3)
    flux = (1e3 * (WAVE / 5000.0) ** -2 * LINES)[None, :] * (1 + rng.normal(0, 0.01, WAVE.size))
    ivar = rng.uniform(0.5, 2.0, flux.shape)
    c1 = pseudo_continuum(flux, ivar, weighting="uniform")
    c2 = pseudo_continuum(flux, 7.0 * ivar[:, ::-1], weighting="uniform")
    np.testing.assert_allclose(c1, c2, rtol=1e-5)
    assert not np.allclose(pseudo_continuum(flux, ivar), pseudo_continuum(flux, ivar[:, ::-1]),
                           rtol=1e-5)
    bad = flux.copy()
    bad[0, 2000] = 1e7  # a spike with no weight (ivar 0) or masked does not pull it
    ivar_bad = ivar.copy()
    ivar_bad[0, 2000] = 0.0
    np.testing.assert_allclose(pseudo_continuum(bad, ivar_bad, weighting="uniform"),
                               pseudo_continuum(flux, ivar_bad, weighting="uniform"), rtol=1e-5)
    mask = np.zeros(flux.shape, np.uint8)
    mask[0, 2000] = 1
    np.testing.assert_allclose(pseudo_continuum(bad, ivar, mask, weighting="uniform"),
                               pseudo_continuum(flux, ivar, mask, weighting="uniform"), rtol=1e-5)
    nf, ni = normalize(flux, ivar, weighting="uniform")
    np.testing.assert_allclose(ni, ivar * pseudo_continuum(flux, ivar, weighting="uniform") ** 2,
                               rtol=1e-5)


def test_unknown_weighting_is_refused_by_name() -> None:
    flux = np.ones((1, WAVE.size))
    with pytest.raises(ValueError, match="'median'"):
        normalize(flux, flux, weighting="median")
    with pytest.raises(ValueError, match="continuum_weighting"):
        PipelineConfig(spectral=SpectralConfig(continuum_weighting="median"))


def test_stage_passes_the_option_and_hashes_it_only_when_set() -> None:
    default = PipelineConfig()
    uniform = PipelineConfig(spectral=SpectralConfig(continuum_weighting="uniform"))
    assert "continuum_weighting" not in normalize_stage.provenance_config(default)
    assert normalize_stage.provenance_config(uniform)["continuum_weighting"] == "uniform"
    flux = (1e3 * np.exp(-(WAVE - 3700.0) / 900.0) * LINES)[None, :]
    ivar = 1.0 / (0.01 * flux) ** 2
    inputs = {"flux": flux, "ivar": ivar, "mask": np.zeros(flux.shape, np.uint8)}
    got = normalize_stage.block(inputs, width_aa=50.0, weighting="uniform")["norm_flux"]
    np.testing.assert_allclose(got, normalize(flux, ivar, weighting="uniform")[0], rtol=1e-5)
    assert not np.allclose(got, normalize_stage.block(inputs, width_aa=50.0)["norm_flux"],
                           rtol=1e-4)


def test_excluded_windows_do_not_lower_the_continuum_of_the_lines_beside_them() -> None:
    """A broad interstellar band (the 4428 AA DIB, 20 % deep) inside an excluded window
    leaves the continuum of He I 4471 / H-gamma where it is without the band; not
    excluded, it lowers it (issue 15 item 2)."""
    from obpipe.spectra.pca import interstellar_mask

    window = interstellar_mask()
    assert window[np.searchsorted(WAVE, 4429.0)]
    dib = 1.0 - 0.2 * np.exp(-0.5 * ((WAVE - 4429.0) / 7.0) ** 2)
    dib[~window] = 1.0  # the band confined to its window
    flux_clean = (1e3 * LINES)[None, :]
    flux_dib = flux_clean * dib
    ivar = 1.0 / (0.01 * flux_clean) ** 2
    near = (WAVE > 4370.0) & (WAVE < 4500.0) & ~window
    with_band = pseudo_continuum(flux_dib, ivar)[0, near]
    without = pseudo_continuum(flux_clean, ivar, exclude=window)[0, near]
    excluded = pseudo_continuum(flux_dib, ivar, exclude=window)[0, near]
    assert np.max(np.abs(with_band / without - 1.0)) > 0.005  # the band pulls it down
    np.testing.assert_allclose(excluded, without, rtol=1e-5)
    # the excluded pixels are normalised like the others (their own flux / the continuum)
    nf, ni = normalize(flux_dib, ivar, exclude=window)
    assert np.all(ni[0, window] > 0)
    assert nf[0, np.searchsorted(WAVE, 4429.0)] < 0.85


def test_stage_excludes_the_interstellar_windows_by_default_and_hashes_the_choice() -> None:
    off = PipelineConfig(spectral=SpectralConfig(continuum_excludes_interstellar=False))
    assert PipelineConfig().spectral.continuum_excludes_interstellar
    assert normalize_stage.provenance_config(PipelineConfig())[
        "continuum_excludes_interstellar"] is True
    assert normalize_stage.provenance_config(off)["continuum_excludes_interstellar"] is False
    from obpipe.spectra.pca import interstellar_mask

    flux = (1e3 * LINES * (1.0 - 0.2 * np.exp(-0.5 * ((WAVE - 4429.0) / 7.0) ** 2)))[None, :]
    ivar = 1.0 / (0.01 * flux) ** 2
    inputs = {"flux": flux, "ivar": ivar, "mask": np.zeros(flux.shape, np.uint8)}
    got = normalize_stage.block(inputs, width_aa=50.0, exclude_interstellar=True)["norm_flux"]
    np.testing.assert_allclose(got, normalize(flux, ivar, exclude=interstellar_mask())[0],
                               rtol=1e-5)
    assert not np.allclose(got, normalize_stage.block(inputs, width_aa=50.0)["norm_flux"],
                           rtol=1e-4)
