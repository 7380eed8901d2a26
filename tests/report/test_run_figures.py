"""Fig. 8 travels with the noise-model files that ``obpipe run --models`` reuses: copied
when the source's figure is current, drawn when the model file is newer than the figure."""

from __future__ import annotations

import os

import numpy as np

from obpipe.luminosity import noise_model
from obpipe.luminosity.noise_model import NoiseModelResult
from obpipe.report import run_figures
from obpipe.stages.luminosity import MODEL_DIR, NOISE_FILES


def _noise_file(products: str, m: str, mtime: float) -> str:
    res = NoiseModelResult(samples=np.zeros((10, 4)), ml=np.zeros(4), keep=np.ones(3, bool),
                           tau=np.ones(4), acceptance=0.3, n_steps=10, converged=True,
                           n_clip_iterations=0, meta={"sample": m})
    path = os.path.join(products, MODEL_DIR, NOISE_FILES[m])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    res.save(path)
    os.utime(path, (mtime, mtime))
    return path


def _figure(products: str, m: str, mtime: float, content: bytes) -> str:
    path = os.path.join(products, "figures", f"fig8_noise_model_{m}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(content)
    os.utime(path, (mtime, mtime))
    return path


def test_fig8_copied_when_current_and_redrawn_when_stale(tmp_path, monkeypatch) -> None:
    drawn: list[str] = []

    def fake_corner(result, path, title=""):
        drawn.append(os.path.basename(path))
        with open(path, "wb") as fh:
            fh.write(b"drawn " + title.encode())
        return path

    monkeypatch.setattr(noise_model, "corner_plot", fake_corner)
    src, dst = str(tmp_path / "train"), str(tmp_path / "run")
    # (a): figure drawn after its model; (b): model refitted after its figure (stale)
    _noise_file(src, "a", 1_000.0)
    _figure(src, "a", 2_000.0, b"figure a")
    _noise_file(src, "b", 3_000.0)
    _figure(src, "b", 2_000.0, b"old figure b")
    for m in ("a", "b"):  # the model files copied first, as install_models does
        _noise_file(dst, m, 4_000.0)
    copied = run_figures.copy_model_figures(src, dst)
    assert [os.path.basename(p) for p in copied] == ["fig8_noise_model_a.png"]
    assert not os.path.exists(os.path.join(dst, "figures", "fig8_noise_model_b.png"))

    out = run_figures.after_stage("luminosity", "unused-survey", dst)
    assert out == {}
    assert drawn == ["fig8_noise_model_b.png"]  # (a) kept as copied, (b) drawn
    with open(os.path.join(dst, "figures", "fig8_noise_model_a.png"), "rb") as fh:
        assert fh.read() == b"figure a"

    # a refit of (a) (its model file rewritten after the figure) draws it again
    _noise_file(dst, "a", os.path.getmtime(
        os.path.join(dst, "figures", "fig8_noise_model_a.png")) + 10)
    run_figures.after_stage("luminosity", "unused-survey", dst)
    assert drawn == ["fig8_noise_model_b.png", "fig8_noise_model_a.png"]
    with open(os.path.join(dst, "figures", "fig8_noise_model_a.png"), "rb") as fh:
        assert fh.read().startswith(b"drawn network (a)")


def test_no_figure_copied_from_a_models_dir_without_figures(tmp_path) -> None:
    src, dst = str(tmp_path / "train"), str(tmp_path / "run")
    _noise_file(src, "a", 1_000.0)
    assert run_figures.copy_model_figures(src, dst) == []
    assert not os.path.exists(os.path.join(dst, "figures"))


def test_figures_drawn_in_a_worker_process_are_the_ones_drawn_in_place(tmp_path,
                                                                      caplog) -> None:
    """FigureDrawer on a process pool writes the same PNG bytes as in this thread, and a
    figure that fails is logged, not raised."""
    from concurrent.futures import ProcessPoolExecutor

    rng = np.random.default_rng(3)
    n = 400
    cols = {"snr_dparallax": rng.normal(0, 2, n), "MKs_geo": rng.normal(-1, 1, n),
            "parallax_corrected": rng.uniform(0.5, 2, n),
            "parallax_corrected_error": np.full(n, 0.05)}
    here = {"cols": cols, "snr": rng.uniform(10, 300, n),
            "path": str(tmp_path / "here" / "fig10.png")}
    there = {**here, "path": str(tmp_path / "there" / "fig10.png")}
    run_figures.FigureDrawer().draw("binary", run_figures.draw_fig10, here)
    with ProcessPoolExecutor(1) as pool:
        with run_figures.FigureDrawer(lambda: pool) as drawer:
            drawer.draw("binary", run_figures.draw_fig10, there)
            drawer.draw("binary", run_figures.draw_fig10, {"cols": {}, "snr": None,
                                                            "path": there["path"]})
            assert drawer.executor is pool
    assert "binary figures not written" in caplog.text
    with open(here["path"], "rb") as a, open(there["path"], "rb") as b:
        assert a.read() == b.read()
