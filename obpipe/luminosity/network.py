"""The spectrum -> M_Ks neural network of Sec. 5.1 (eq. 6).

    M_Ks = w . sigma( w~_i sigma( w_{lambda i} f_lambda + b_i ) + b~ )        (6)

A feed-forward multi-layer perceptron: two hidden layers of 100 sigmoid units,
dropout 0.2 after each, a linear output. Beyond the letter of eq. (6), the input
pixels are standardised by the training set's per-pixel mean and standard
deviation and the target by its mean and standard deviation (sigmoid units
saturate on raw fluxes), and the output layer has a bias; both are part of the
model file, so the mapping is still a fixed function of the spectrum.

Two models, as in the paper:

* ``"a"``: stars without emission lines, the whole PCA-reconstructed normalised
  spectrum except :data:`EXCLUDED_WINDOWS_AA` (telluric bands and interstellar Na D);
* ``"b"``: stars with emission lines, the clean windows only
  (:data:`obpipe.spectra.pca.CLEAN_WINDOWS_AA`).

An input may also be the 100 PCA coefficients instead of pixels (``input_kind``
``"pca_coeff"``; a variant beyond the paper, issue 6 item 6b).

Training is seeded, uses Adam on a (optionally weighted) mean squared error,
and stops early on a validation split, restoring the best epoch. It runs on the
CPU unless ``device="auto"`` finds a GPU. A model is saved with ``torch.save`` as
a dict of tensors plus a JSON metadata string, and loaded with
``torch.load(..., weights_only=True)``: no pickled objects. Prediction is a pure
numpy forward pass on the saved weights (dropout off), so Dask workers need
neither torch threads nor a GPU.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from obpipe import __version__
from obpipe.spectra.grid import wavelength_grid
from obpipe.spectra.pca import CLEAN_WINDOWS_AA, window_mask

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
FORMAT_VERSION = 1


def wavelength_mask(kind: str, wave_aa: np.ndarray | None = None) -> np.ndarray:
    """Boolean pixel mask of the network input for model ``kind`` (Sec. 5.1).

    ``"a"``: every pixel outside :data:`EXCLUDED_WINDOWS_AA`; ``"b"``: the clean windows.
    """
    wave_aa = wavelength_grid() if wave_aa is None else np.asarray(wave_aa)
    if kind == "a":
        return ~window_mask(EXCLUDED_WINDOWS_AA, wave_aa)
    if kind == "b":
        return window_mask(CLEAN_WINDOWS_AA, wave_aa)
    raise ValueError(f"unknown network model {kind!r}; expected one of {MODEL_KINDS}")


def recon_out_of_range(x: np.ndarray, max_dev: float = RECON_MAX_DEVIATION) -> np.ndarray:
    """Rows of (already masked) reconstructed spectra with max |x - 1| > ``max_dev``."""
    with np.errstate(invalid="ignore"):
        return ~(np.nanmax(np.abs(np.asarray(x) - 1.0), axis=1) <= max_dev)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings. Defaults: the paper's architecture, early stopping."""

    n_hidden: int = N_HIDDEN
    dropout: float = DROPOUT
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 400
    patience: int = 20
    validation_fraction: float = 0.1
    seed: int = 0
    #: "cpu" (default) or "auto" (a GPU if torch finds one)
    device: str = "cpu"
    #: torch intra-op threads during training (None: torch's default)
    n_threads: int | None = None


@dataclass
class TrainHistory:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(len(self.train_loss), 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # numerically safe logistic without overflow warnings
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


class MKsNetwork:
    """A fitted eq. (6) network: weights, input standardisation and metadata.

    ``input_kind`` is ``"recon_flux"`` (pixels of the reconstructed normalised
    spectrum, selected by ``pixel_mask``) or ``"pca_coeff"`` / ``"pca_coeff_full"``.
    """

    def __init__(self, weights: dict[str, np.ndarray], x_mean: np.ndarray, x_std: np.ndarray,
                 y_mean: float, y_std: float, pixel_mask: np.ndarray | None,
                 meta: dict[str, Any]) -> None:
        self.weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        self.x_mean = np.asarray(x_mean, dtype=np.float32)
        self.x_std = np.asarray(x_std, dtype=np.float32)
        self.y_mean = float(y_mean)
        self.y_std = float(y_std)
        self.pixel_mask = None if pixel_mask is None else np.asarray(pixel_mask, dtype=bool)
        self.meta = dict(meta)

    # ------------------------------------------------------------------ inputs
    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "a"))

    @property
    def input_kind(self) -> str:
        return str(self.meta.get("input_kind", "recon_flux"))

    @property
    def n_inputs(self) -> int:
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

    def input_out_of_range(self, x: np.ndarray) -> np.ndarray:
        """True for rows of reconstructed spectra that leave [1 - d, 1 + d] within the
        model's pixels (d = :data:`RECON_MAX_DEVIATION`); all False for coefficients."""
        if self.input_kind != "recon_flux":
            return np.zeros(np.asarray(x).shape[0], dtype=bool)
        return recon_out_of_range(self.select_inputs(x))

    # ------------------------------------------------------------------ predict
    def predict(self, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """M_Ks (mag) for each row of ``x`` (eq. 6, dropout off); NaN where a row has NaN.

        ``x``: (n, n_grid) reconstructed spectra or (n, n_inputs) already-selected inputs.
        """
        x = self.select_inputs(x)
        n = x.shape[0]
        out = np.full(n, np.nan, dtype=np.float64)
        w = self.weights
        for start in range(0, n, batch_size):
            xb = np.asarray(x[start:start + batch_size], dtype=np.float32)
            ok = np.all(np.isfinite(xb), axis=1)
            if not ok.any():
                continue
            z = (xb[ok] - self.x_mean) / self.x_std
            h1 = _sigmoid(z @ w["l1.weight"].T + w["l1.bias"])
            h2 = _sigmoid(h1 @ w["l2.weight"].T + w["l2.bias"])
            y = h2 @ w["out.weight"].T + w["out.bias"]
            res = out[start:start + xb.shape[0]]
            res[ok] = self.y_mean + self.y_std * y[:, 0].astype(np.float64)
        return out

    # ------------------------------------------------------------------ io
    def save(self, path: str) -> None:
        """Write the model (tensors + JSON metadata; loadable with ``weights_only=True``)."""
        import torch

        payload: dict[str, Any] = {
            f"weights.{k}": torch.from_numpy(np.ascontiguousarray(v))
            for k, v in self.weights.items()
        }
        payload["x_mean"] = torch.from_numpy(self.x_mean)
        payload["x_std"] = torch.from_numpy(self.x_std)
        payload["y_mean"] = torch.tensor(self.y_mean, dtype=torch.float64)
        payload["y_std"] = torch.tensor(self.y_std, dtype=torch.float64)
        if self.pixel_mask is not None:
            payload["pixel_mask"] = torch.from_numpy(self.pixel_mask.astype(np.uint8))
        payload["meta_json"] = json.dumps(self.meta, default=_json_default)
        payload["format_version"] = FORMAT_VERSION
        torch.save(payload, path)

    @classmethod
    def load(cls, path: str) -> MKsNetwork:
        """Read a model written by :meth:`save` (``torch.load(weights_only=True)``)."""
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True)
        if int(data.get("format_version", -1)) != FORMAT_VERSION:
            raise ValueError(f"{path}: not an obpipe M_Ks network (format "
                             f"{data.get('format_version')!r})")
        weights = {k.removeprefix("weights."): v.numpy() for k, v in data.items()
                   if k.startswith("weights.")}
        mask = data.get("pixel_mask")
        return cls(weights, data["x_mean"].numpy(), data["x_std"].numpy(),
                   float(data["y_mean"]), float(data["y_std"]),
                   None if mask is None else mask.numpy().astype(bool),
                   json.loads(data["meta_json"]))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _torch_module(n_in: int, n_hidden: int, dropout: float) -> Any:
    import torch
    from torch import nn

    class _MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = nn.Linear(n_in, n_hidden)
            self.l2 = nn.Linear(n_hidden, n_hidden)
            self.out = nn.Linear(n_hidden, 1)
            self.drop = nn.Dropout(dropout)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.drop(torch.sigmoid(self.l1(x)))
            h = self.drop(torch.sigmoid(self.l2(h)))
            return self.out(h)[:, 0]

    return _MLP()


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def train_network(
    x: np.ndarray,
    y_mag: np.ndarray,
    kind: str = "a",
    weights: np.ndarray | None = None,
    config: TrainConfig | None = None,
    pixel_mask: np.ndarray | None = None,
    input_kind: str = "recon_flux",
    meta: dict[str, Any] | None = None,
) -> tuple[MKsNetwork, TrainHistory]:
    """Fit the eq. (6) network to targets ``y_mag`` (M_Ks, mag).

    ``x``: (n, n_grid) full-grid inputs (``pixel_mask`` selects the model's pixels;
    default :func:`wavelength_mask` of ``kind`` for ``input_kind="recon_flux"``) or
    (n, n_in) inputs. ``weights``: per-row loss weights (e.g. 1/sigma^2); rows with a
    non-finite input or target are dropped. A seeded ``validation_fraction`` of the rows
    drives early stopping; the best epoch's weights are kept.
    """
    import torch

    cfg = config or TrainConfig()
    if input_kind == "recon_flux" and pixel_mask is None:
        pixel_mask = wavelength_mask(kind)
    x = np.asarray(x)
    if pixel_mask is not None and x.shape[1] == pixel_mask.size:
        x = x[:, pixel_mask]
    x = x.astype(np.float32, copy=False)
    y = np.asarray(y_mag, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    ok = np.all(np.isfinite(x), axis=1) & np.isfinite(y) & np.isfinite(w) & (w > 0)
    x, y, w = x[ok], y[ok], w[ok]
    n = y.size
    if n < 20:
        raise ValueError(f"network {kind}: only {n} usable training rows")
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(n)
    n_val = max(int(round(cfg.validation_fraction * n)), 1)
    val_idx, tr_idx = perm[:n_val], perm[n_val:]

    x_mean = x[tr_idx].mean(axis=0)
    x_std = x[tr_idx].std(axis=0)
    x_std = np.where(x_std > 1e-6, x_std, 1.0).astype(np.float32)
    y_mean, y_std = float(np.mean(y[tr_idx])), float(np.std(y[tr_idx]) or 1.0)
    w = w / np.mean(w[tr_idx])

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = _device(cfg.device)
    old_threads = torch.get_num_threads()
    if cfg.n_threads:
        torch.set_num_threads(cfg.n_threads)
    try:
        model = _torch_module(x.shape[1], cfg.n_hidden, cfg.dropout).to(device)
        xt = torch.from_numpy((x - x_mean) / x_std).to(device)
        yt = torch.from_numpy(((y - y_mean) / y_std).astype(np.float32)).to(device)
        wt = torch.from_numpy(w.astype(np.float32)).to(device)
        tr_t = torch.from_numpy(tr_idx).to(device)
        val_t = torch.from_numpy(val_idx).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate,
                               weight_decay=cfg.weight_decay)
        hist = TrainHistory()
        best = math.inf
        best_state: dict[str, Any] = {}
        since_best = 0
        t0 = time.perf_counter()
        for epoch in range(cfg.max_epochs):
            model.train()
            order = tr_t[torch.randperm(tr_t.numel(), generator=gen).to(device)]
            total = 0.0
            for s in range(0, order.numel(), cfg.batch_size):
                b = order[s:s + cfg.batch_size]
                opt.zero_grad()
                loss = torch.mean(wt[b] * (model(xt[b]) - yt[b]) ** 2)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * b.numel()
            model.eval()
            with torch.no_grad():
                vl = float(torch.mean(wt[val_t] * (model(xt[val_t]) - yt[val_t]) ** 2))
            hist.train_loss.append(total / tr_t.numel())
            hist.val_loss.append(vl)
            if vl < best - 1e-5:
                best, since_best, hist.best_epoch = vl, 0, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if since_best >= cfg.patience:
                    break
        hist.seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(old_threads)
    weights_np = {k: v.numpy() for k, v in best_state.items()}
    info = {
        "kind": kind, "input_kind": input_kind, "n_inputs": int(x.shape[1]),
        "n_train": int(tr_idx.size), "n_validation": int(val_idx.size),
        "best_epoch": hist.best_epoch, "epochs_run": len(hist.train_loss),
        "best_val_loss_std_units": best,
        "val_rms_mag": float(math.sqrt(best) * y_std),
        "train_seconds": hist.seconds, "config": asdict(cfg),
        "obpipe_version": __version__, "architecture": "eq. 6: sigmoid(100) - dropout - "
        "sigmoid(100) - dropout - linear",
        "wavelength_windows_aa": (EXCLUDED_WINDOWS_AA if kind == "a" else CLEAN_WINDOWS_AA)
        if input_kind == "recon_flux" else None,
        "windows_meaning": ("excluded" if kind == "a" else "used")
        if input_kind == "recon_flux" else None,
        **(meta or {}),
    }
    log.info("network %s (%s, %d inputs): %d train / %d val rows, best epoch %d of %d, "
             "val rms %.3f mag, %.3f s/epoch", kind, input_kind, x.shape[1], tr_idx.size,
             val_idx.size, hist.best_epoch, len(hist.train_loss), info["val_rms_mag"],
             hist.seconds_per_epoch)
    return MKsNetwork(weights_np, x_mean, x_std, y_mean, y_std, pixel_mask, info), hist
