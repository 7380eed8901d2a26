"""The spectrum -> M_Ks neural network of Sec. 5.1 (eq. 6): the fitted model, its file
and its prediction (training: :mod:`obpipe.luminosity.network_training`).

    M_Ks = w . sigma( w~_i sigma( w_{lambda i} f_lambda + b_i ) + b~ )        (6)

A feed-forward multi-layer perceptron: two hidden layers of 100 sigmoid units,
dropout 0.2 after each (training only), a linear output (with a bias). Two models, as in
the paper:

* ``"a"``: stars without emission lines, the whole PCA-reconstructed normalised
  spectrum except :data:`EXCLUDED_WINDOWS_AA` (telluric bands and interstellar Na D);
* ``"b"``: stars with emission lines, the clean windows only
  (:data:`obpipe.spectra.pca.CLEAN_WINDOWS_AA`).

Interstellar-blind inputs (beyond the paper; issue 15, ``[spectral]
exclude_interstellar_lines``, on by default): the clean windows and model (a)'s pixels
both hold interstellar Ca II K, K I and the strong DIBs
(:data:`obpipe.spectra.pca.INTERSTELLAR_WINDOWS_AA`), whose depth grows with E(B-V), hence
with distance. With the option the pca stage gives those pixels zero weight in its
weighted projection (so ``pca_coeff`` and ``recon_flux`` hold no interstellar line; the
products say so in ``pca_coeff``'s attribute ``interstellar_blind``), and both networks
leave them out of their pixels (:func:`wavelength_mask`); the network file records it in
its metadata (``exclude_interstellar_lines``), and a network applied to products
projected the other way is an error.

Input. The reconstructed spectrum is a linear function of at most 100 PCA
coefficients (Sec. 5.1: "the first 100 PCs"), so the model's pixels span a space of at
most ~100 dimensions. The network's first layer is therefore applied to the
coordinates of the (masked) reconstructed spectrum in that space: a fixed orthonormal
``projection`` (n_pix x ``n_components``) from an SVD of the training spectra. With
``n_components`` = the rank this is exactly eq. (6) on the pixels (w_{lambda i} =
projection . w_{k i}: the same function class), at ~1/30 of the cost. The
coordinates are standardised by their training mean and standard deviation, the
output by the target's; everything is in the model file.
``input_kind="pca_coeff"`` (issue 6b) feeds the stored PCA coefficients instead.

Ensemble (beyond the paper; issue 6c). A model holds ``n_members`` networks, cross-fitted
by star (each member never saw one fold of the training stars): the ensemble mean is
the M_Ks estimate, the member spread a per-star epistemic uncertainty, and the member
that never saw a training star gives that star's out-of-fold value
(:meth:`MKsNetwork.predict_out_of_fold`, issue 15).

A model is a safetensors file (named arrays; the JSON metadata, with the training
survey and obpipe version, in its header), loaded with ``safetensors``' numpy API: no
pickle, no torch. Prediction is a pure numpy forward pass (dropout off), so Dask workers
need neither torch threads nor a GPU.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from obpipe.photometry.parallax import zero_point_fit_mas
from obpipe.spectra.grid import wavelength_grid
from obpipe.spectra.pca import (
    CLEAN_WINDOWS_AA,
    _blas_controller,
    interstellar_mask,
    window_mask,
)

log = logging.getLogger(__name__)

#: Windows excluded from model (a) (AA, Sec. 5.1): telluric bands and interstellar Na D.
EXCLUDED_WINDOWS_AA: tuple[tuple[float, float], ...] = (
    (5720.0, 6050.0), (6270.0, 6380.0), (6800.0, 6990.0), (7100.0, 7320.0),
    (7520.0, 7740.0), (8050.0, 8350.0),
)
MODEL_KINDS = ("a", "b")
#: a reconstructed normalised spectrum departing from 1 by more than this within a
#: model's pixels is not a stellar spectrum (a failed projection): not used to train,
#: flagged at inference (``input_out_of_range``)
RECON_MAX_DEVIATION = 2.0
N_HIDDEN = 100
DROPOUT = 0.2
FORMAT_VERSION = 2
#: the ``format`` entry of a network file's safetensors header
NETWORK_FILE_FORMAT = "obpipe-mks-network"


def wavelength_mask(kind: str, wave_aa: np.ndarray | None = None,
                    exclude_interstellar: bool = False) -> np.ndarray:
    """Boolean pixel mask of the network input for model ``kind`` (Sec. 5.1).

    ``"a"``: every pixel outside :data:`EXCLUDED_WINDOWS_AA`; ``"b"``: the clean windows.
    ``exclude_interstellar``: also without :data:`INTERSTELLAR_WINDOWS_AA` (issue 15).
    """
    wave_aa = wavelength_grid() if wave_aa is None else np.asarray(wave_aa)
    if kind == "a":
        m = ~window_mask(EXCLUDED_WINDOWS_AA, wave_aa)
    elif kind == "b":
        m = window_mask(CLEAN_WINDOWS_AA, wave_aa)
    else:
        raise ValueError(f"unknown network model {kind!r}; expected one of {MODEL_KINDS}")
    return m & ~interstellar_mask(wave_aa) if exclude_interstellar else m


def recon_out_of_range(x: np.ndarray, max_dev: float = RECON_MAX_DEVIATION) -> np.ndarray:
    """Rows of (already masked) reconstructed spectra with max |x - 1| > ``max_dev``."""
    with np.errstate(invalid="ignore"):
        return ~(np.nanmax(np.abs(np.asarray(x) - 1.0), axis=1) <= max_dev)

def _sigmoid(x: np.ndarray) -> np.ndarray:
    # numerically safe logistic without overflow warnings
    return 0.5 * (1.0 + np.tanh(0.5 * x))


class MKsNetwork:
    """A fitted eq. (6) network ensemble: weights, input transform and metadata.

    ``weights``: ``l1.weight`` (K, n_in, h), ``l1.bias`` (K, h), ``l2.weight`` (K, h, h),
    ``l2.bias`` (K, h), ``out.weight`` (K, h), ``out.bias`` (K,) for K members.
    ``input_kind`` is ``"recon_flux"`` (pixels of the reconstructed normalised spectrum,
    selected by ``pixel_mask`` and mapped by ``projection``) or ``"pca_coeff"``.
    """

    def __init__(self, weights: dict[str, np.ndarray], x_mean: np.ndarray, x_std: np.ndarray,
                 y_mean: float, y_std: float, pixel_mask: np.ndarray | None,
                 meta: dict[str, Any], projection: np.ndarray | None = None,
                 projection_mean: np.ndarray | None = None) -> None:
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.x_mean = np.asarray(x_mean, dtype=np.float32)
        self.x_std = np.asarray(x_std, dtype=np.float32)
        self.y_mean = float(y_mean)
        self.y_std = float(y_std)
        self.pixel_mask = None if pixel_mask is None else np.asarray(pixel_mask, dtype=bool)
        self.projection = None if projection is None else np.asarray(projection, np.float32)
        self.projection_mean = (None if projection_mean is None
                                else np.asarray(projection_mean, np.float32))
        self.meta = dict(meta)

    # ------------------------------------------------------------------ inputs
    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "a"))

    @property
    def input_kind(self) -> str:
        return str(self.meta.get("input_kind", "recon_flux"))

    @property
    def fits_parallax_zero_point(self) -> bool:
        """Whether the network was trained with a residual parallax zero-point
        (``[luminosity] fit_parallax_zero_point``)."""
        return self.meta.get("parallax_zero_point_terms", "none") != "none"

    def parallax_zero_point_mas(self, phot_g_mean_mag: np.ndarray) -> np.ndarray:
        """The residual parallax zero-point dZ (mas) this network fitted, at each Gaia G
        (:func:`obpipe.photometry.parallax.zero_point_fit_mas`); zeros without a fit."""
        g = np.asarray(phot_g_mean_mag, dtype=float)
        if not self.fits_parallax_zero_point:
            return np.zeros(g.shape)
        return zero_point_fit_mas(g, self.meta["parallax_zp_coefficients_mas"],
                                  self.meta["parallax_zero_point_terms"])

    @property
    def n_members(self) -> int:
        return int(self.weights["out.bias"].shape[0])

    @property
    def n_inputs(self) -> int:
        """Columns the model reads (pixels in its mask, or coefficients)."""
        if self.projection is not None:
            return int(self.projection.shape[0])
        return int(self.x_mean.size)

    def select_inputs(self, x: np.ndarray) -> np.ndarray:
        """The network's input columns of ``x`` (full-grid pixels or coefficients)."""
        x = np.asarray(x)
        if self.pixel_mask is not None and x.shape[1] == self.pixel_mask.size:
            x = x[:, self.pixel_mask]
        if x.shape[1] != self.n_inputs:
            raise ValueError(f"network {self.kind}: {x.shape[1]} input columns, expected "
                             f"{self.n_inputs} ({self.input_kind})")
        return x

    def features(self, x: np.ndarray) -> np.ndarray:
        """Standardised first-layer inputs (float32) of the selected columns ``x``."""
        x = np.asarray(x, dtype=np.float32)
        if self.projection is not None:
            x = (x - self.projection_mean) @ self.projection
        return (x - self.x_mean) / self.x_std

    def on_coefficients(self, recon: np.ndarray, recon_mean: np.ndarray) -> MKsNetwork:
        """The same network reading the coefficients c of a linear reconstruction
        x = c ``recon`` + ``recon_mean`` ((K, n_grid) and (n_grid,), e.g. a PCA basis's
        eq. 2) instead of x: its first-layer projection composed with the reconstruction
        (a (K, n_features) matrix), so a prediction skips the n_grid pixels. The same
        M_Ks as ``predict(reconstruct(c))`` to float32 rounding."""
        recon = np.asarray(recon, dtype=np.float64)
        mean = np.asarray(recon_mean, dtype=np.float64)
        if self.pixel_mask is not None:
            recon, mean = recon[:, self.pixel_mask], mean[self.pixel_mask]
        if self.projection is not None:
            proj = self.projection.astype(np.float64)
            composed = recon @ proj
            offset = (mean - self.projection_mean) @ proj
        else:
            composed, offset = recon, mean
        return MKsNetwork(self.weights, self.x_mean - offset, self.x_std, self.y_mean,
                          self.y_std, None, {**self.meta, "input_kind": "pca_coeff"},
                          projection=composed, projection_mean=np.zeros(composed.shape[0]))

    def input_out_of_range(self, x: np.ndarray) -> np.ndarray:
        """True for rows of reconstructed spectra that leave [1 - d, 1 + d] within the
        model's pixels (d = :data:`RECON_MAX_DEVIATION`); all False for coefficients."""
        if self.input_kind != "recon_flux":
            return np.zeros(np.asarray(x).shape[0], dtype=bool)
        return recon_out_of_range(self.select_inputs(x))

    # ------------------------------------------------------------------ predict
    def predict_members(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """(K, n) M_Ks (mag) of every member (eq. 6, dropout off); NaN where a row has NaN.

        One BLAS thread: the products are small (a batch x 100 x 100 per member), and a
        second thread made them 2-5x slower on a shared machine (training's predictions;
        the luminosity stage's blocks run one thread each anyway)."""
        with _blas_controller().limit(limits=1):
            return self._predict_members(x, batch_size)

    def _predict_members(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        x = self.select_inputs(x)
        n = x.shape[0]
        out = np.full((self.n_members, n), np.nan, dtype=np.float64)
        w = self.weights
        for start in range(0, n, batch_size):
            xb = np.asarray(x[start:start + batch_size], dtype=np.float32)
            ok = np.all(np.isfinite(xb), axis=1)
            if not ok.any():
                continue
            z = self.features(xb[ok])
            h1 = _sigmoid(z @ w["l1.weight"] + w["l1.bias"][:, None, :])
            h2 = _sigmoid(h1 @ w["l2.weight"] + w["l2.bias"][:, None, :])
            y = np.einsum("kbh,kh->kb", h2, w["out.weight"]) + w["out.bias"][:, None]
            res = out[:, start:start + xb.shape[0]]
            res[:, ok] = self.y_mean + self.y_std * y.astype(np.float64)
        return out

    def predict(self, x: np.ndarray, batch_size: int = 4096, return_std: bool = False
                ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """M_Ks (mag): the ensemble mean (with ``return_std`` also the member spread).

        ``x``: (n, n_grid) reconstructed spectra or (n, n_inputs) already-selected inputs.
        """
        members = self.predict_members(x, batch_size)
        mean = members.mean(axis=0)
        if not return_std:
            return mean
        std = members.std(axis=0, ddof=1) if self.n_members > 1 else np.zeros_like(mean)
        return mean, std

    def held_out_member(self, star_id: np.ndarray) -> np.ndarray:
        """Per row, the member that never saw that star (int8; from ``meta["star_folds"]``,
        written by the training): k >= 0 for a star that trained this model (every visit
        of it), -1 for a star no member trained on, -2 for a trained star of a one-network
        model (no member held it out: in-sample)."""
        sf = self.meta.get("star_folds") or {"star_id": [], "fold": []}
        ids = np.asarray(sf["star_id"], dtype=str)
        fold = np.asarray(sf["fold"], dtype=np.int8)
        order = np.argsort(ids)
        ids, fold = ids[order], fold[order]
        q = np.asarray(star_id).astype(object).astype(str)
        out = np.full(q.shape, -1, dtype=np.int8)
        if ids.size:
            pos = np.clip(np.searchsorted(ids, q), 0, ids.size - 1)
            hit = ids[pos] == q
            out[hit] = fold[pos[hit]]
        return out

    def predict_out_of_fold(self, x: np.ndarray, star_id: np.ndarray, batch_size: int = 4096
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """M_Ks (mag) from members that never saw each star (issue 15): the held-out
        member's prediction for a star that trained the model, the ensemble mean for a
        star it never saw (and, in-sample, for a trained star of a one-network model).
        Returns (M_Ks, member spread (mag, all members), :meth:`held_out_member`)."""
        members = self.predict_members(x, batch_size)
        member = self.held_out_member(star_id)
        mks = members.mean(axis=0)
        oof = (member >= 0) & (member < self.n_members)
        mks[oof] = members[member[oof], np.flatnonzero(oof)]
        spread = (members.std(axis=0, ddof=1) if self.n_members > 1
                  else np.zeros_like(mks))
        return mks, spread, member

    # ------------------------------------------------------------------ io
    def save(self, path: str) -> None:
        """Write the model as a safetensors file (``safetensors.numpy``): the arrays as
        tensors, the metadata in the header (``meta_json``, including
        :func:`obpipe.provenance.model_metadata`: obpipe version and training survey).
        Read without torch (:meth:`load`); ``path``: a local path or an fsspec URL."""
        from safetensors.numpy import save

        from obpipe import provenance
        from obpipe.io import store

        tensors: dict[str, np.ndarray] = {
            f"weights.{k}": np.ascontiguousarray(v) for k, v in self.weights.items()}
        tensors["x_mean"] = np.ascontiguousarray(self.x_mean)
        tensors["x_std"] = np.ascontiguousarray(self.x_std)
        tensors["y_mean"] = np.array([self.y_mean], dtype=np.float64)
        tensors["y_std"] = np.array([self.y_std], dtype=np.float64)
        if self.pixel_mask is not None:
            tensors["pixel_mask"] = self.pixel_mask.astype(np.uint8)
        if self.projection is not None:
            tensors["projection"] = np.ascontiguousarray(self.projection)
            tensors["projection_mean"] = np.ascontiguousarray(self.projection_mean)
        self.meta = provenance.stamped(self.meta)
        header = {"format": NETWORK_FILE_FORMAT, "format_version": str(FORMAT_VERSION),
                  "meta_json": json.dumps(self.meta, default=_json_default)}
        with store.open_file(path, "wb") as fh:  # a local path or an fsspec URL
            fh.write(save(tensors, metadata=header))

    @classmethod
    def load(cls, path: str) -> MKsNetwork:
        """Read a model written by :meth:`save` (no torch, no pickle). A file with an
        inconsistent header (shapes, offsets), another format, or a legacy torch ``.pt``
        file raises :class:`obpipe.provenance.ModelFileError` naming it and saying how to
        retrain."""
        from obpipe import provenance

        tensors, header = provenance.read_safetensors(path)
        if header.get("format") != NETWORK_FILE_FORMAT or header.get(
                "format_version") != str(FORMAT_VERSION):
            raise provenance.ModelFileError(
                f"{path}: not an obpipe M_Ks network (format {header.get('format')!r}, "
                f"version {header.get('format_version')!r}; expected "
                f"{NETWORK_FILE_FORMAT!r} version {FORMAT_VERSION})")
        weights = {k.removeprefix("weights."): v for k, v in tensors.items()
                   if k.startswith("weights.")}
        need = {"l1.weight": 3, "l1.bias": 2, "l2.weight": 3, "l2.bias": 2,
                "out.weight": 2, "out.bias": 1}
        bad = [f"{k} (ndim {weights[k].ndim}, expected {n})" if k in weights else
               f"{k} (missing)" for k, n in need.items()
               if k not in weights or weights[k].ndim != n]
        for k in ("x_mean", "x_std", "y_mean", "y_std"):
            if k not in tensors:
                bad.append(f"{k} (missing)")
        if not bad:
            k_, n_in, h = weights["l1.weight"].shape
            shapes = {"l1.bias": (k_, h), "l2.weight": (k_, h, h), "l2.bias": (k_, h),
                      "out.weight": (k_, h), "out.bias": (k_,)}
            bad = [f"{k} shape {weights[k].shape}, expected {v}" for k, v in shapes.items()
                   if weights[k].shape != v]
        if bad:
            raise provenance.ModelFileError(f"{path}: inconsistent network tensors: "
                                            + "; ".join(bad))
        mask = tensors.get("pixel_mask")
        proj = tensors.get("projection")
        return cls(weights, tensors["x_mean"], tensors["x_std"],
                   float(tensors["y_mean"][0]), float(tensors["y_std"][0]),
                   None if mask is None else mask.astype(bool),
                   json.loads(header.get("meta_json", "{}")),
                   projection=proj, projection_mean=tensors.get("projection_mean"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")
