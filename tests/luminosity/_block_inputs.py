"""What the luminosity_block error-term tests share: a noise model with fixed parameters
and a tiny trained network (a) on random "reconstructed" spectra."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from obpipe.luminosity import noise_model as nm


def fixed_noise_model() -> nm.NoiseModelResult:
    """A noise model whose every sample is theta = (0, 0, 0.2, 0.1), without extra terms."""
    theta = np.array([0.0, 0.0, 0.2, 0.1])
    return nm.NoiseModelResult(samples=np.tile(theta, (10, 1)), ml=theta,
                               keep=np.ones(10, bool), tau=np.ones(4), acceptance=0.3,
                               n_steps=10, converged=True, n_clip_iterations=1)


def tiny_network(tmp_path: Path) -> tuple[np.ndarray, str]:
    """60 random spectra (3,909 pixels, ~1) and the path of a 2-member network (a)
    trained on them for 2 epochs to read M_Ks ~ 10 from pixels 1000-1099."""
    from obpipe.luminosity.network_training import TrainConfig, train_network

    rng = np.random.default_rng(0)
    x = (1.0 + 0.05 * rng.standard_normal((60, 3909))).astype(np.float32)
    path = str(tmp_path / "a.safetensors")
    train_network(x, x[:, 1000:1100].mean(axis=1) * 10, kind="a",
                  config=TrainConfig(max_epochs=2, loss="mag", n_members=2))[0].save(path)
    return x, path
