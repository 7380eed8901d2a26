"""Pseudo-continuum weights (Sec. 2; issue 15 item 2): "ivar" (Ho et al. 2017) against
"uniform" (the paper's plain Gaussian smoothing), the interstellar windows left out and the
broad shape divided out first. Pure numpy, no Dask."""

from __future__ import annotations

from pathlib import Path

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


def _f19_reddening(ebv: float) -> np.ndarray:
    """10^(-0.4 A(lambda)) of the Fitzpatrick et al. (2019) curve at R_V = 3.1 from
    ``dust_extinction`` (the mock's default family, not the pipeline's polynomial)."""
    import astropy.units as u
    from dust_extinction.parameter_averages import F19

    return 10 ** (-0.4 * 3.1 * ebv * F19(Rv=3.1)(WAVE * u.AA))


@pytest.mark.parametrize("weighting", ["ivar", "uniform"])
def test_broad_shape_makes_the_normalised_lines_blind_to_reddening(weighting: str) -> None:
    """Issue 15 item 2: on a hot star's steep blue continuum, a reddening whose log is
    smooth in 1/lambda (a power law, E(B-V) ~ 1.5) leaves the normalised Balmer lines as
    they were; the plain running mean lets it through. A real curve (F19, E(B-V) = 1.5)
    keeps its intermediate-scale structure (~4370, 4870 AA), which no smooth shape
    removes: with the default ivar weights the leak around H-gamma and H-beta is still
    more than halved."""
    hot = (WAVE / 4000.0) ** -3.0
    balmer = (WAVE > 4200.0) & (WAVE < 5000.0)

    def leak(reddening: np.ndarray, degree: int, where: np.ndarray) -> float:
        out = []
        for f in (hot * LINES, hot * LINES * reddening):
            f = (1e3 * f)[None, :]
            out.append(normalize(f, 1.0 / (0.01 * f) ** 2, weighting=weighting,
                                 shape_degree=degree)[0][0])
        return float(np.mean(np.abs(out[1] - out[0])[where]))

    inner = np.zeros(WAVE.size, bool)
    inner[INNER] = True
    power = (WAVE / 5000.0) ** 2.25
    assert leak(power, 0, inner) > 3e-4
    assert leak(power, 3, inner) < 0.1 * leak(power, 0, inner)
    if weighting == "ivar":
        f19 = _f19_reddening(1.5)
        assert leak(f19, 3, balmer) < 0.5 * leak(f19, 0, balmer)


def test_broad_shape_recovers_an_exact_polynomial_shape_and_falls_back_to_flat() -> None:
    from obpipe.spectra.normalize import broad_shape

    x = 1e4 / WAVE
    truth = np.exp(2.0 + 0.8 * x - 0.3 * x**2 + 0.05 * x**3)[None, :]
    good = np.ones(truth.shape, bool)
    good[0, 1000:1500] = False  # a gap does not matter to an exact fit
    np.testing.assert_allclose(broad_shape(truth, good, 3), truth, rtol=1e-4)
    # a constant factor scales the shape by it (the normalised flux is unchanged)
    np.testing.assert_allclose(broad_shape(7.0 * truth, good, 3), 7.0 * truth, rtol=1e-4)
    none = np.zeros(truth.shape, bool)
    none[0, :5] = True  # too few usable pixels: flat, at their median
    flat = broad_shape(truth, none, 3)
    np.testing.assert_allclose(flat, np.median(truth[0, :5]), rtol=1e-5)
    assert np.all(broad_shape(np.full(truth.shape, np.nan), good, 3) == 1.0)


def test_stage_passes_the_shape_degree_and_hashes_it_only_when_set() -> None:
    on = PipelineConfig(spectral=SpectralConfig(continuum_shape_degree=3))
    assert "continuum_shape_degree" not in normalize_stage.provenance_config(
        PipelineConfig(spectral=SpectralConfig(continuum_shape_degree=0)))
    assert normalize_stage.provenance_config(on)["continuum_shape_degree"] == 3
    flux = (1e3 * (WAVE / 4000.0) ** -3.0 * LINES * _f19_reddening(1.0))[None, :]
    ivar = 1.0 / (0.01 * flux) ** 2
    inputs = {"flux": flux, "ivar": ivar, "mask": np.zeros(flux.shape, np.uint8)}
    got = normalize_stage.block(inputs, width_aa=50.0, shape_degree=3)["norm_flux"]
    np.testing.assert_allclose(got, normalize(flux, ivar, shape_degree=3)[0], rtol=1e-5)
    assert not np.allclose(got, normalize_stage.block(inputs, width_aa=50.0)["norm_flux"],
                           rtol=1e-4)
    with pytest.raises(ValueError, match="continuum_shape_degree"):
        PipelineConfig(spectral=SpectralConfig(continuum_shape_degree=-1))


def test_broad_shape_on_real_lamost_spectra(shared_data: Path) -> None:
    """Real LAMOST spectra (../shared/data, DR1 and DR6-DR8): a smooth reddening factor
    ((lambda / 5000 AA)^1.5, about E(B-V) = 1.2 of a hot star's slope change) moves the
    normalised flux at 3,900-5,500 AA of every spectrum by under a tenth of what it moves
    it without the broad shape; without reddening the two normalisations agree to 0.2 %
    in each spectrum's median."""
    from obpipe.io.lamost import read_lamost
    from obpipe.io.lamost_grid import to_grid

    files = sorted(shared_data.glob("lamost_dr*/*.fits*"))[::3]
    assert len(files) >= 30
    grids = [to_grid(read_lamost(p)) for p in files]
    flux, ivar, mask = (np.array([getattr(g, k) for g in grids]) for k in ("flux", "ivar", "mask"))
    red = ((WAVE / 5000.0) ** 1.5).astype(np.float32)
    blue_green = (WAVE > 3900.0) & (WAVE < 5500.0)
    leak, plain = {}, {}
    for degree in (0, 3):
        a = normalize(flux, ivar, mask, shape_degree=degree)
        b = normalize(flux * red, ivar / red**2, mask, shape_degree=degree)
        ok = (a[1] > 0) & (b[1] > 0)
        leak[degree] = np.nanmean(np.where(ok, np.abs(a[0] - b[0]), np.nan)[:, blue_green],
                                  axis=1)
        plain[degree] = np.where(a[1] > 0, a[0], np.nan)
    assert np.all(leak[0] > 0)
    assert np.all(leak[3] < 0.1 * leak[0]), files[int(np.argmax(leak[3] / leak[0]))].name
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.nanmedian(plain[3] / plain[0], axis=1)
    assert np.all(np.abs(ratio - 1.0) < 2e-3)
