"""Training of the eq. (6) M_Ks network ensemble (Sec. 5.1; the fitted model and its
prediction: :mod:`obpipe.luminosity.network`).

Input. For ``input_kind="recon_flux"`` the first layer reads the coordinates of the
masked reconstructed spectrum in its principal subspace: a fixed orthonormal projection
from a randomised SVD of the training spectra (:func:`_projection`); exactly eq. (6) on
the pixels when ``n_components`` is their rank.

Ensemble (beyond the paper; issue 6c). ``n_members`` networks are trained at once as
a K-fold cross-fitted ensemble: the training stars (all visits of a star together)
are split into K folds (:func:`_folds`), member k trains on the other K-1 folds and
stops early on its own fold (restoring its best epoch). This gives, for free,

* an out-of-fold prediction for every training spectrum from the member that never
  saw it: the honest prediction the binary cleaning of Sec. 5.2 needs (an in-sample
  prediction has partly learned the binary's too-bright target);
* the ensemble mean as the M_Ks estimate (lower variance than one network) and the
  member spread as a per-star epistemic uncertainty.

The members are trained in one batched module (weights with a leading member axis),
each step on a (K, B) gathered batch of every member's own training rows
(:func:`_member_batches`), so K members cost K networks' arithmetic on (K-1)/K of the
rows, in one pass.

Loss. ``"mag"`` (the paper): weighted squared error in magnitudes against a target
with its error (the geometric M_Ks, eqs. 11-12), weight 1 / (err^2 + floor^2).
``"fakemag"`` (beyond the paper, issue 6a; Leung & Bovy 2019): the network's M_Ks
is turned into ``10^(0.2 M_Ks)`` and compared with ``plx 10^(0.2 m0 - 2)`` (mas), which
is linear in the parallax, so stars with ``plx/err < 10`` and negative parallaxes
train without the bias of the magnitude of a noisy parallax; variance
``sigma_fakemag^2 + (0.2 ln10 10^(0.2 M) floor)^2`` (:func:`fakemag_from_parallax`).

Training is seeded, uses Adam (Kingma & Ba 2015) and keeps an exponential moving average
of the weights (``weight_average_epochs``; the average is what is validated, early-stopped
and saved: its held-out loss is smooth, so the learning rate can be higher and the
patience shorter), runs on the CPU unless
``device="auto"`` finds a GPU, and returns an :class:`obpipe.luminosity.network.MKsNetwork`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from obpipe.luminosity.network import (
    DROPOUT,
    EXCLUDED_WINDOWS_AA,
    N_HIDDEN,
    MKsNetwork,
    wavelength_mask,
)
from obpipe.options import Range, option
from obpipe.spectra.pca import CLEAN_WINDOWS_AA
from obpipe.version import __version__

log = logging.getLogger(__name__)

LOSSES = ("mag", "fakemag")
_K_MAG = 0.2 * math.log(10.0)
#: unit of the fitted zero-point coefficients inside the optimiser, mas (10 uas)
_ZP_UNIT_MAS = 0.01
#: the binary mixture of the loss: Delta M_Ks of a binary system uniform up to the
#: equal-mass offset 2.5 log10(2), on a grid of nodes
_DELTA_MAX_MAG = 2.5 * math.log10(2.0)
_N_DELTA = 8


def fakemag_from_parallax(plx_mas: np.ndarray, plx_err_mas: np.ndarray, ks0_mag: np.ndarray,
                          ks0_err_mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parallax-space target ``plx 10^(0.2 m0 - 2)`` (= 10^(0.2 M_Ks) for a perfect
    parallax; Leung & Bovy 2019) and its error from the parallax and ``m0`` errors."""
    scale = fakemag_per_mas(ks0_mag)
    f = np.asarray(plx_mas, float) * scale
    err = np.hypot(np.asarray(plx_err_mas, float) * scale,
                   np.abs(f) * _K_MAG * np.asarray(ks0_err_mag, float))
    return f, err


def fakemag_per_mas(ks0_mag: np.ndarray) -> np.ndarray:
    """``10^(0.2 m0 - 2)``: the parallax-space target per mas of parallax."""
    return 10.0 ** (0.2 * np.asarray(ks0_mag, float) - 2.0)


def fakemag_from_mks(mks_mag: np.ndarray, mks_err_mag: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``10^(0.2 M_Ks)`` and its (linearised) error for rows with a known M_Ks."""
    f = 10.0 ** (0.2 * np.asarray(mks_mag, float))
    return f, f * _K_MAG * np.asarray(mks_err_mag, float)

@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and ensemble settings. Defaults: the paper's architecture (eq. 6),
    a 5-member cross-fitted ensemble, early stopping on each member's held-out fold."""

    n_hidden: int = option(N_HIDDEN, doc="sigmoid units per hidden layer (eq. 6: 100)")
    dropout: float = option(
        DROPOUT,
        doc="dropout probability after each hidden layer (Sec. 5.1: 0.2)")
    learning_rate: float = option(
        2e-2,
        doc="Adam learning rate (2e-2 with the weight average: 1e-2 took ~1.7x the epochs to the "
            "same held-out accuracy on the DR5-size mock; 4e-2 ~0.6x, but biased M_Ks by 0.28 mag"
            " on a 500-spectrum training set; issue 19)")
    weight_decay: float = option(0.0, doc="Adam weight decay (L2)")
    batch_size: int = option(
        512,
        doc="mini-batch size (spectra) of the ensemble: an epoch has ceil(training rows / "
            "batch_size) steps, and at each step every member takes its share, ~(K - 1) / K of it,"
            " from its own training rows (its held-out fold costs nothing)")
    max_epochs: int = option(600, doc="most training epochs (early stopping usually ends sooner)")
    patience: int = option(
        5,
        doc="early stopping: epochs without a better validation loss (the averaged weights' "
            "held-out loss is smooth: 5 epochs past its minimum is past it; 15 for raw weights)")
    warm_patience: int = option(
        5,
        doc="early-stopping patience of a warm-started network (a binary-cleaning round that "
            "starts from the previous round's weights: its members improve within a few epochs)")
    warm_max_epochs: int = option(40, doc="most epochs of a warm-started network")
    lr_schedule: str = option(
        "constant",
        doc="\"constant\" learning rate, or \"cosine\": annealed from ``learning_rate`` to 0 over "
            "``max_epochs`` (``warm_max_epochs`` when warm-started; Loshchilov & Hutter 2017, "
            "SGDR, without restarts), so that a short epoch budget still ends converged")
    weight_average_epochs: float | None = option(
        4.0,
        doc="time constant (epochs) of an exponential moving average of the weights (Polyak & "
            "Juditsky 1992 averaging, as an EMA; ``torch.optim.swa_utils.AveragedModel``), decay"
            " 1 - 1 / (epochs x steps per epoch) per step (0.99 on the DR5-size mock): the "
            "averaged weights are validated, early-stopped and kept, so a high learning rate "
            "learns fast while its step noise averages out; None: the raw weights",
        range=Range(0.0, 1e4, low_open=True))
    validation_fraction: float = option(
        0.1,
        doc="held-out share of the training stars when ``n_members == 1`` (with K members each "
            "member holds out its own fold, 1/K)")
    n_members: int = option(
        5,
        doc="K of the cross-fitted ensemble (1: a single network, the paper)")
    n_components: int | None = option(
        100,
        doc="coordinates of the masked reconstructed spectrum fed to the first layer (the rank of "
            "a 100-component reconstruction; None: the raw pixels)")
    feature_scale_power: float = option(
        0.5,
        doc="feature scale s_j = std_j^p * std_max^(1 - p): p = 1 standardises every feature, p = "
            "0 keeps the relative variances of the spectral coordinates (weak directions, mostly "
            "noise, enter the first layer small), in between a compromise")
    loss: str = option(
        "fakemag",
        doc="\"mag\" (the paper: squared error on M_Ks) or \"fakemag\" (parallax space, issue 6a)")
    binary_mixture_fraction: float = option(
        0.0,
        doc="prior fraction f of unresolved binaries among the training targets: > 0 replaces the "
            "squared error by the negative log of a mixture, (1 - f) N(target | M, sigma) + f "
            "N(target | M - Delta, sigma) with Delta ~ U(0, 0.75 mag) (an equal-mass system is 2.5"
            " log10 2 brighter): a too-bright target is explained rather than learned")
    seed: int = option(
        0,
        doc="random seed of the weights, batches and validation split (iteration i of the binary "
            "cleaning uses seed + i)")
    device: str = option("cpu", doc="\"cpu\" (default) or \"auto\" (a GPU if torch finds one)")
    n_threads: int | None = option(
        1,
        doc="torch intra-op threads during training (None: torch's default). The batches are small"
            " (512 x 100): one thread is as fast as two on an idle machine and far faster on a "
            "busy one")

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {self.n_members}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got "
                             f"{self.lr_schedule!r}")


@dataclass
class TrainHistory:
    #: mean over members of the training / held-out loss per epoch
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    #: best epoch of each member
    best_epochs: list[int] = field(default_factory=list)
    seconds: float = 0.0
    #: per training row (after dropping non-finite rows: NaN there) the prediction of the
    #: member that did not train on it (mag)
    out_of_fold: np.ndarray | None = None
    #: per training row the member that held it out (K = 1: 0 held out, -1 trained; -1
    #: for dropped rows)
    fold: np.ndarray | None = None

    @property
    def best_epoch(self) -> int:
        return int(max(self.best_epochs)) if self.best_epochs else -1

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(len(self.train_loss), 1)

def _torch_module(n_in: int, n_hidden: int, dropout: float, n_members: int = 1) -> Any:
    """``n_members`` independent eq. (6) networks evaluated in one batched pass:
    input (B, n_in) -> output (K, B). Parameter names and shapes as
    :class:`MKsNetwork` ``weights``; ``nn.Linear``'s default initialisation per member."""
    import torch
    from torch import nn

    class _Ensemble(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            k = n_members
            self.l1 = _BatchedLinear(k, n_in, n_hidden)
            self.l2 = _BatchedLinear(k, n_hidden, n_hidden)
            self.out = _BatchedLinear(k, n_hidden, 1)
            self.drop = nn.Dropout(dropout)

        def forward(self, x: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor] | None
                    = None) -> torch.Tensor:
            """``masks``: the two dropout masks (K, B, h), already scaled by 1 / (1 - p)
            (:func:`_dropout_masks`); None: torch's dropout (in training mode)."""
            h = torch.sigmoid(self.l1(x))
            h = h * masks[0] if masks is not None else self.drop(h)
            h = torch.sigmoid(self.l2(h))
            h = h * masks[1] if masks is not None else self.drop(h)
            return self.out(h)

    class _BatchedLinear(nn.Module):
        def __init__(self, k: int, n_in_: int, n_out: int) -> None:
            super().__init__()
            bound = 1.0 / math.sqrt(n_in_)
            w = torch.empty(k, n_in_, n_out).uniform_(-bound, bound)
            b = torch.empty(k, n_out).uniform_(-bound, bound)
            if n_out == 1:
                w, b = w[:, :, 0], b[:, 0]
            self.weight = nn.Parameter(w)
            self.bias = nn.Parameter(b)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.weight.dim() == 2:  # output layer: (K, B, h) -> (K, B)
                return torch.einsum("kbh,kh->kb", x, self.weight) + self.bias[:, None]
            if x.dim() == 2:  # shared input (B, n_in): one GEMM for all members
                k, n_in_, n_out = self.weight.shape
                w = self.weight.permute(1, 0, 2).reshape(n_in_, k * n_out)
                return (x @ w).reshape(-1, k, n_out).transpose(0, 1) + self.bias[:, None, :]
            return torch.baddbmm(self.bias[:, None, :], x, self.weight)

    return _Ensemble()


def _dropout_masks(rng: np.random.Generator, shape: tuple[int, ...], p: float,
                   buffers: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] | None = None
                   ) -> np.ndarray:
    """Two stacked inverted-dropout masks (2, *shape) float32: 0 with probability ``p``
    (to 1 / 65,536), else 1 / (1 - p). From the raw 64-bit output of ``rng``'s bit
    generator (``BitGenerator.random_raw``), four 16-bit uniforms per draw: torch's CPU
    Bernoulli sampler took 60 % of a training step of the batched ensemble, and
    ``Generator.bytes`` 3x the time of ``random_raw`` for the same bits.

    ``buffers`` (a dict kept across the calls of one training): the (bool, float32)
    arrays of each shape are allocated once and overwritten, so the masks (4 MB per
    batch of 512) do not fault in fresh pages at every step (which took 3/4 of this
    function's time); the values are those of a fresh call with the same ``rng``."""
    full = (2, *shape)
    n = 2 * int(np.prod(shape))
    u = rng.bit_generator.random_raw(-(-n // 4)).view(np.uint16)[:n].reshape(full)
    thr = np.uint16(min(round(p * 65536), 65535))
    if buffers is None:
        return np.where(u >= thr, np.float32(1.0 / (1.0 - p)), np.float32(0.0))
    if full not in buffers:
        buffers[full] = (np.empty(full, dtype=bool), np.empty(full, dtype=np.float32))
    keep, out = buffers[full]
    np.greater_equal(u, thr, out=keep)
    np.multiply(keep, np.float32(1.0 / (1.0 - p)), out=out)
    return out


def _member_batches(rows: list[Any], n_steps: int, gen: Any) -> tuple[Any, Any]:
    """One epoch of ``n_steps`` mini-batches for K members trained in step, each member
    from its own rows.

    ``rows``: per member a 1-d int64 tensor of its training rows (n_k of them).
    Returns ``order`` (S, K, B) int64 and ``weight`` (S, K, B) float32, S = ``n_steps``,
    B = ceil(max n_k / S): step s gathers member k's rows ``order[s, k]`` with weight 1,
    padding (row 0) with weight 0. Each member's rows are shuffled (``gen``) and dealt
    round-robin over the steps, so every row comes once per epoch and every step holds
    floor or ceil of n_k / S of member k's rows (no step is all padding for a member)."""
    import torch

    k_mem = len(rows)
    n_max = max(int(r.numel()) for r in rows)
    n_steps = max(1, min(n_steps, n_max))
    bsz = -(-n_max // n_steps)
    order = torch.zeros((k_mem, bsz * n_steps), dtype=torch.int64, device=rows[0].device)
    weight = torch.zeros((k_mem, bsz * n_steps), dtype=torch.float32, device=rows[0].device)
    for k, r in enumerate(rows):
        order[k, :r.numel()] = r[torch.randperm(r.numel(), generator=gen).to(r.device)]
        weight[k, :r.numel()] = 1.0
    # slot j -> step j % S, position j // S
    return (order.reshape(k_mem, bsz, n_steps).permute(2, 0, 1),
            weight.reshape(k_mem, bsz, n_steps).permute(2, 0, 1))


def _member_loss(out: Any, b: Any, w: Any, row_loss: Any, row_weight: Any) -> Any:
    """Per-member weighted mean loss (K,) of the gathered rows ``b`` (K, B): network
    outputs ``out`` (K, B), 0/1 weights ``w`` (K, B) (0: padding or a row the member
    holds out), ``row_loss(out, b)`` and ``row_weight(b)`` (K, B)."""
    wm = w * row_weight(b)
    return (wm * row_loss(out, b)).sum(dim=1) / wm.sum(dim=1).clamp_min(1e-12)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _folds(groups: np.ndarray, n_members: int, validation_fraction: float, seed: int
           ) -> np.ndarray:
    """Fold index per row, all rows of a group (star) together, from a stable hash of
    the group and ``seed``: a group keeps its fold when other rows are added or removed
    (binary cleaning), so a warm-started member never held out a row it trained on.
    K = 1: fold 0 is the ``validation_fraction`` share, -1 the rest; else 0..K-1."""
    import zlib

    uniq, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    u = np.array([zlib.crc32(f"{seed}:{g}".encode()) for g in uniq], dtype=np.float64)
    u = u / 2.0**32
    if n_members == 1:
        fold_of_group = np.where(u < validation_fraction, 0, -1)
        if not np.any(fold_of_group == 0) and uniq.size > 1:
            fold_of_group[np.argmin(u)] = 0
    else:
        if uniq.size < n_members:
            raise ValueError(f"{uniq.size} stars cannot fill {n_members} folds")
        fold_of_group = np.minimum((u * n_members).astype(np.int64), n_members - 1)
        # tiny sets: a fold the hash left empty takes a star from the largest fold
        for k in range(n_members):
            if not np.any(fold_of_group == k):
                big = np.argmax(np.bincount(fold_of_group, minlength=n_members))
                fold_of_group[np.flatnonzero(fold_of_group == big)[0]] = k
    return fold_of_group[inv]


def _projection(x: np.ndarray, n_components: int, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the leading ``n_components`` right singular vectors of ``x`` (rows).

    Randomised range finder with one power iteration (Halko, Martinsson & Tropp 2011,
    SIAM Rev. 53, 217, Algs. 4.3 + 5.1): a Gaussian sketch of ``n_components + 30``
    columns, QR, then the SVD of the small projected matrix. The reconstructed spectra
    span at most the PCA's 100 dimensions, so the sketch captures that span exactly; it
    costs ~2 n p (k + 30) flops instead of the p^3 eigendecomposition of the p x p Gram
    matrix (p = 3,053 pixels: 13 s -> < 1 s)."""
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float32)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    xc = x - mean
    n_keep = min(n_components, x.shape[0] - 1, x.shape[1])
    n_sketch = min(n_keep + 30, *xc.shape)
    g = np.random.default_rng(seed).standard_normal((xc.shape[1], n_sketch))
    y = xc @ g.astype(np.float32)
    # the QR of a tall, thin matrix is a chain of small panel steps: one BLAS thread (two
    # took 8x longer on the shared 2-core machine, the threads waiting on each other)
    with threadpool_limits(1):
        q, _ = np.linalg.qr(y.astype(np.float64))
    y = xc @ (xc.T @ q.astype(np.float32))  # one power iteration
    with threadpool_limits(1):
        q, _ = np.linalg.qr(y.astype(np.float64))
    b = (q.T.astype(np.float32) @ xc).astype(np.float64)
    _, _, vt = np.linalg.svd(b, full_matrices=False)
    v = vt[:n_keep].T
    return mean, np.ascontiguousarray(v.astype(np.float32))


def train_network(
    x: np.ndarray,
    y_mag: np.ndarray,
    kind: str = "a",
    weights: np.ndarray | None = None,
    config: TrainConfig | None = None,
    pixel_mask: np.ndarray | None = None,
    input_kind: str = "recon_flux",
    meta: dict[str, Any] | None = None,
    *,
    y_err_mag: np.ndarray | None = None,
    sigma_floor_mag: float | None = None,
    fakemag: np.ndarray | None = None,
    fakemag_err: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    init: MKsNetwork | None = None,
    folds: np.ndarray | None = None,
    zp_design: np.ndarray | None = None,
    fakemag_per_mas: np.ndarray | None = None,
) -> tuple[MKsNetwork, TrainHistory]:
    """Fit the eq. (6) network (ensemble) to M_Ks targets.

    ``x``: (n, n_grid) full-grid inputs (``pixel_mask`` selects the model's pixels;
    default :func:`wavelength_mask` of ``kind`` for ``input_kind="recon_flux"``) or
    (n, n_in) inputs. Loss ``"mag"``: targets ``y_mag`` (mag) with weights ``weights``
    or 1 / (``y_err_mag``^2 + ``sigma_floor_mag``^2) (unweighted when neither is given).
    Loss ``"fakemag"`` (``config.loss``): targets ``fakemag`` +- ``fakemag_err``
    (:func:`fakemag_from_parallax`), variance floor ``sigma_floor_mag``; ``y_mag`` (may
    be NaN) then only sets the output scale. ``groups`` (e.g. star ids) keeps rows of a
    group in one fold. ``init``: warm start from a model of the same ensemble size (its
    input transform, output scale and weights; e.g. the previous binary-cleaning
    iteration, whose members held out the same stars). ``folds``: the held-out member of
    each row (0..K-1; K = 1: 0 held out, -1 trained), e.g. fixed once for all cleaning
    rounds; None: :func:`_folds` of ``groups``. Rows with a non-finite input or target
    are dropped (NaN in the history's ``out_of_fold``, -1 in its ``fold``). Each member
    keeps its best epoch on its held-out fold (early stopping: ``patience`` epochs, or
    ``warm_patience`` with ``init``).

    ``zp_design`` (n, P) with ``fakemag_per_mas`` (n,) (loss ``"fakemag"`` only; beyond
    the paper): each member also fits coefficients ``c`` (mas) of a residual parallax
    zero-point ``dZ = zp_design @ c``, its targets becoming ``fakemag - fakemag_per_mas
    dZ`` (the target of the parallax ``varpi - dZ``); rows that should not move (no
    parallax) have zero design rows. The member-mean ``c`` and each member's go in the
    metadata (``parallax_zp_coefficients_mas``, ``..._by_member_mas``), and a warm start
    starts from ``init``'s.

    Runs with ``config.n_threads`` torch and BLAS threads (the projection, the
    standardisation and the numpy predictions too: on a shared machine a second BLAS
    thread made the small matrix products 2-5x slower).
    """
    from threadpoolctl import threadpool_limits

    cfg = config or TrainConfig()
    with threadpool_limits(cfg.n_threads) if cfg.n_threads else contextlib.nullcontext():
        return _fit(x, y_mag, kind, weights, cfg, pixel_mask, input_kind, meta,
                    y_err_mag=y_err_mag, sigma_floor_mag=sigma_floor_mag, fakemag=fakemag,
                    fakemag_err=fakemag_err, groups=groups, init=init, folds=folds,
                    zp_design=zp_design, fakemag_per_mas=fakemag_per_mas)


def _fit(
    x: np.ndarray,
    y_mag: np.ndarray,
    kind: str,
    weights: np.ndarray | None,
    cfg: TrainConfig,
    pixel_mask: np.ndarray | None,
    input_kind: str,
    meta: dict[str, Any] | None,
    *,
    y_err_mag: np.ndarray | None,
    sigma_floor_mag: float | None,
    fakemag: np.ndarray | None,
    fakemag_err: np.ndarray | None,
    groups: np.ndarray | None,
    init: MKsNetwork | None,
    folds: np.ndarray | None,
    zp_design: np.ndarray | None = None,
    fakemag_per_mas: np.ndarray | None = None,
) -> tuple[MKsNetwork, TrainHistory]:
    """:func:`train_network` within its thread limits."""
    import torch

    if input_kind == "recon_flux" and pixel_mask is None:
        pixel_mask = wavelength_mask(kind)
    x = np.asarray(x)
    if pixel_mask is not None and x.shape[1] == pixel_mask.size:
        x = x[:, pixel_mask]
    x = np.asarray(x, dtype=np.float32)
    n_all = x.shape[0]
    y = np.asarray(y_mag, dtype=np.float64)
    fake = cfg.loss == "fakemag"
    if fake:
        if fakemag is None or fakemag_err is None:
            raise ValueError("loss 'fakemag' needs fakemag and fakemag_err")
        t = np.asarray(fakemag, np.float64)
        t_err = np.asarray(fakemag_err, np.float64)
        ok_t = np.isfinite(t) & np.isfinite(t_err) & (t_err > 0)
    elif zp_design is not None:
        raise ValueError("a zero-point fit (zp_design) needs loss 'fakemag'")
    else:
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
        elif y_err_mag is not None:
            w = 1.0 / (np.nan_to_num(np.asarray(y_err_mag, float), nan=1.0) ** 2
                       + (sigma_floor_mag or 0.0) ** 2)
        else:
            w = np.ones_like(y)
        ok_t = np.isfinite(y) & np.isfinite(w) & (w > 0)
    ok = np.all(np.isfinite(x), axis=1) & ok_t
    idx = np.flatnonzero(ok)
    x = x[idx]
    n = idx.size
    if n < 20:
        raise ValueError(f"network {kind}: only {n} usable training rows")
    grp = np.arange(n_all) if groups is None else np.asarray(groups)
    if folds is not None:
        fold = np.asarray(folds, dtype=np.int64)[idx]
        if cfg.n_members > 1 and np.unique(fold).size != cfg.n_members:
            raise ValueError(f"folds must fill 0..{cfg.n_members - 1}")
    else:
        fold = _folds(grp[idx], cfg.n_members, cfg.validation_fraction, cfg.seed)
    if init is not None and init.n_members != cfg.n_members:
        raise ValueError(f"warm start from {init.n_members} members, config has "
                         f"{cfg.n_members}")
    k_mem = cfg.n_members
    # train / held-out masks per member (K = 1: the validation share is held out)
    member = np.arange(k_mem)[:, None]
    held = (fold[None, :] == member) if k_mem > 1 else (fold[None, :] == 0)
    train_mask = ~held
    trainable = train_mask.any(axis=0)

    proj_mean = projection = None
    if init is not None:  # warm start: the previous model's input transform and weights
        proj_mean, projection = init.projection_mean, init.projection
        feats = init.features(x) * init.x_std + init.x_mean
    elif input_kind == "recon_flux" and cfg.n_components:
        proj_mean, projection = _projection(x[trainable], cfg.n_components)
        feats = (x - proj_mean) @ projection
    else:
        feats = x
    x_mean = feats[trainable].mean(axis=0)
    x_std = feats[trainable].std(axis=0)
    p = cfg.feature_scale_power
    if init is not None:
        x_mean, x_std, p = init.x_mean, init.x_std, 1.0
    x_std = x_std ** p * float(np.max(x_std)) ** (1.0 - p)
    x_std = np.where(x_std > 1e-6, x_std, 1.0).astype(np.float32)
    y_ok = y[idx]
    if fake:
        t, t_err = t[idx], t_err[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            m_scale = np.where(t > 0, 5.0 * np.log10(np.where(t > 0, t, 1.0)), np.nan)
        m_scale = np.where(np.isfinite(y_ok), y_ok, m_scale)
        good_t = np.isfinite(m_scale) & trainable & (t > 2 * t_err)
        ref = m_scale[good_t] if good_t.sum() >= 10 else m_scale[np.isfinite(m_scale)]
    else:
        w = w[idx]
        ref = y_ok[trainable]
    y_mean, y_std = float(np.mean(ref)), float(np.std(ref) or 1.0)
    if init is not None:
        y_mean, y_std = init.y_mean, init.y_std

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = _device(cfg.device)
    old_threads = torch.get_num_threads()
    if cfg.n_threads:
        torch.set_num_threads(cfg.n_threads)
    floor = float(sigma_floor_mag or 0.0)
    try:
        model = _torch_module(feats.shape[1], cfg.n_hidden, cfg.dropout, k_mem)
        if init is not None:
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                                   init.weights.items()})
        model = model.to(device)
        xt = torch.from_numpy(((feats - x_mean) / x_std).astype(np.float32)).to(device)
        # binary mixture (Sec. 6 physics in the loss): with probability f the target is a
        # system brighter than the star by Delta ~ U(0, 2.5 log10 2) (grid of nodes)
        f_bin = float(cfg.binary_mixture_fraction)
        deltas = torch.from_numpy(((np.arange(_N_DELTA) + 0.5) / _N_DELTA * _DELTA_MAX_MAG)
                                  .astype(np.float32)).to(device)
        log_w0 = math.log(1.0 - f_bin) if f_bin > 0 else 0.0
        log_wj = math.log(f_bin / _N_DELTA) if f_bin > 0 else 0.0

        def mixture_nll(z0: torch.Tensor, zj: torch.Tensor, log_var: torch.Tensor
                        ) -> torch.Tensor:
            """-log[(1-f) N(z0) + f/J sum_j N(zj)] for squared standardised residuals."""
            terms = torch.cat([(log_w0 - 0.5 * z0)[None], log_wj - 0.5 * zj], dim=0)
            return -torch.logsumexp(terms, dim=0) + 0.5 * log_var

        zp_c = zp_dt = None
        if fake and zp_design is not None:
            # residual zero-point coefficients per member, in units of _ZP_UNIT_MAS (Adam's
            # steps are ~learning_rate units), and each row's fakemag per unit
            design = np.nan_to_num(np.asarray(zp_design, np.float64).reshape(n_all, -1)[idx])
            per_mas = np.nan_to_num(np.asarray(fakemag_per_mas, np.float64)[idx])
            zp_dt = torch.from_numpy((design * (per_mas * _ZP_UNIT_MAS)[:, None])
                                     .astype(np.float32)).to(device)
            c0 = np.zeros((k_mem, design.shape[1]))
            if init is not None and "parallax_zp_coefficients_by_member_mas" in init.meta:
                c0 = np.asarray(init.meta["parallax_zp_coefficients_by_member_mas"], float)
            zp_c = torch.tensor(c0 / _ZP_UNIT_MAS, dtype=torch.float32, device=device,
                                requires_grad=True)

        if fake:
            tt = torch.from_numpy(t.astype(np.float32)).to(device)
            te = torch.from_numpy(t_err.astype(np.float32)).to(device)

            def row_loss(out: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                fp = torch.pow(10.0, 0.2 * (y_mean + y_std * out))
                var = te[b] ** 2 + (fp.detach() * _K_MAG * floor) ** 2
                target = tt[b]
                if zp_c is not None:  # the target of varpi - dZ: fakemag - per_mas dZ
                    target = target - (zp_dt[b] * zp_c[:, None, :]).sum(dim=-1)
                z0 = (fp - target) ** 2 / var
                if f_bin <= 0:
                    return z0
                # a binary's target is 10^(0.2 (M - Delta)): fp 10^(-0.2 Delta)
                fj = fp[None] * torch.pow(10.0, -0.2 * deltas)[:, None, None]
                zj = (fj - target) ** 2 / var[None]
                return mixture_nll(z0, zj, torch.log(var))

            def row_weight(b: torch.Tensor) -> torch.Tensor:
                return torch.ones(b.shape, device=device)
        else:
            yt = torch.from_numpy(((y_ok - y_mean) / y_std).astype(np.float32)).to(device)
            wt = torch.from_numpy((w / np.mean(w[trainable])).astype(np.float32)).to(device)
            # variance (standardised units) of each target for the mixture: 1 / w
            vt = torch.from_numpy((1.0 / w / y_std**2).astype(np.float32)).to(device)

            def row_loss(out: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                if f_bin <= 0:
                    return (out - yt[b]) ** 2
                z0 = (out - yt[b]) ** 2 / vt[b]
                zj = (out[None] - deltas[:, None, None] / y_std - yt[b]) ** 2 / vt[b]
                return mixture_nll(z0, zj, torch.log(vt[b]))

            def row_weight(b: torch.Tensor) -> torch.Tensor:
                return wt[b] if f_bin <= 0 else torch.ones(b.shape, device=device)

        # validation: each member on its own held-out rows only, gathered once into a
        # (K, M) index padded with weight 0 (1/K of a pass over every row)
        held_rows = [np.flatnonzero(held[k]) for k in range(k_mem)]
        m_max = max(1, max(r.size for r in held_rows))
        va_idx = np.zeros((k_mem, m_max), dtype=np.int64)
        va_w = np.zeros((k_mem, m_max), dtype=np.float32)
        for k, r in enumerate(held_rows):
            va_idx[k, :r.size] = r
            va_w[k, :r.size] = 1.0
        va_idx_t = torch.from_numpy(va_idx).to(device)
        va_wt = torch.from_numpy(va_w).to(device)
        x_va = xt[va_idx_t]

        # the steps of one pass over the rows that train any member: each member's
        # batch is its share, ~(K - 1) / K of batch_size
        n_steps = -(-int(trainable.sum()) // cfg.batch_size)
        ema = None
        if cfg.weight_average_epochs:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            decay = 1.0 - 1.0 / max(1.0, cfg.weight_average_epochs * n_steps)
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        eval_model = model if ema is None else ema.module

        def val_loss() -> np.ndarray:
            v = _member_loss(eval_model(x_va), va_idx_t, va_wt, row_loss, row_weight)
            return v.cpu().numpy().astype(float)

        rng_drop = np.random.default_rng(cfg.seed)
        drop_buffers: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        patience = cfg.warm_patience if init is not None else cfg.patience
        max_epochs = cfg.warm_max_epochs if init is not None else cfg.max_epochs
        # each member's mini-batches come from its own training rows only (a (K, B)
        # gathered index: the rows it holds out cost no compute), all members in step
        tr_rows = [torch.from_numpy(np.flatnonzero(train_mask[k])).to(device)
                   for k in range(k_mem)]
        groups_opt: list[dict[str, Any]] = [{"params": list(model.parameters())}]
        if zp_c is not None:
            groups_opt.append({"params": [zp_c], "weight_decay": 0.0})
        opt = torch.optim.Adam(groups_opt, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        hist = TrainHistory()
        best = np.full(k_mem, np.inf)
        best_ep = np.full(k_mem, -1)
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        best_c = None if zp_c is None else zp_c.detach().clone()
        since = np.zeros(k_mem, dtype=int)
        t0 = time.perf_counter()
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
                 if cfg.lr_schedule == "cosine" else None)
        for epoch in range(max_epochs):
            model.train()
            order, pad_w = _member_batches(tr_rows, n_steps, gen)
            total = 0.0
            n_b = 0
            for b, wb in zip(order, pad_w, strict=True):
                opt.zero_grad()
                masks = None
                if cfg.dropout > 0:
                    mk = torch.from_numpy(_dropout_masks(
                        rng_drop, (k_mem, b.shape[1], cfg.n_hidden), cfg.dropout,
                        drop_buffers)).to(device)
                    masks = (mk[0], mk[1])
                loss = _member_loss(model(xt[b], masks), b, wb, row_loss, row_weight).sum()
                loss.backward()
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
                total += float(loss.detach()) / k_mem
                n_b += 1
            eval_model.eval()
            with torch.no_grad():
                vl = val_loss()
            hist.train_loss.append(total / max(n_b, 1))
            hist.val_loss.append(float(np.mean(vl)))
            improved = vl < best - 1e-5
            if improved.any():
                sel = torch.from_numpy(np.flatnonzero(improved)).to(device)
                for k, v in eval_model.state_dict().items():
                    best_state[k][sel] = v.detach()[sel]
                if best_c is not None:
                    best_c[sel] = zp_c.detach()[sel]
                best[improved] = vl[improved]
                best_ep[improved] = epoch
            since = np.where(improved, 0, since + 1)
            if np.all(since >= patience):
                break
            if sched is not None:
                sched.step()
        hist.seconds = time.perf_counter() - t0
        model.load_state_dict(best_state)
        # out-of-fold predictions: each member on the rows it held out (already gathered
        # and standardised for the validation)
        model.eval()
        with torch.no_grad():
            held_out_mag = (y_mean + y_std * model(x_va).double()).cpu().numpy()
    finally:
        torch.set_num_threads(old_threads)
    hist.best_epochs = [int(e) for e in best_ep]
    weights_np = {k: v.detach().cpu().numpy() for k, v in best_state.items()}
    net_meta = {
        "kind": kind, "input_kind": input_kind, "n_inputs": int(x.shape[1]),
        "n_features": int(feats.shape[1]), "n_members": k_mem, "loss": cfg.loss,
        "sigma_floor_mag": sigma_floor_mag,
        "n_train": int(trainable.sum()), "n_rows": int(n),
        "best_epochs": hist.best_epochs, "epochs_run": len(hist.train_loss),
        "best_val_loss_by_member": [float(v) for v in best],
        "train_seconds": hist.seconds, "config": asdict(cfg),
        **({} if best_c is None else {
            "parallax_zp_coefficients_by_member_mas":
                (best_c.cpu().double().numpy() * _ZP_UNIT_MAS).tolist(),
            "parallax_zp_coefficients_mas":
                (best_c.cpu().double().numpy().mean(axis=0) * _ZP_UNIT_MAS).tolist()}),
        "obpipe_version": __version__, "architecture": "eq. 6: sigmoid(100) - dropout - "
        "sigmoid(100) - dropout - linear; first layer on the coordinates of the masked "
        "reconstructed spectrum in its principal subspace"
        if projection is not None else "eq. 6: sigmoid(100) - dropout - sigmoid(100) - "
        "dropout - linear",
        "wavelength_windows_aa": (EXCLUDED_WINDOWS_AA if kind == "a" else CLEAN_WINDOWS_AA)
        if input_kind == "recon_flux" else None,
        "windows_meaning": ("excluded" if kind == "a" else "used")
        if input_kind == "recon_flux" else None,
        **(meta or {}),
    }
    net = MKsNetwork(weights_np, x_mean, x_std, y_mean, y_std,
                     pixel_mask if input_kind == "recon_flux" else None, net_meta,
                     projection=projection, projection_mean=proj_mean)
    oof = np.full(n_all, np.nan)
    for k, r in enumerate(held_rows):
        oof[idx[r]] = held_out_mag[k, :r.size]
    hist.out_of_fold = oof
    hist.fold = np.full(n_all, -1, dtype=np.int64)
    hist.fold[idx] = fold if k_mem > 1 else np.where(fold == 0, 0, -1)
    resid = oof[idx] - y_ok
    fin = np.isfinite(resid)
    net.meta["out_of_fold_rms_mag"] = float(np.sqrt(np.mean(resid[fin] ** 2))) if fin.any() \
        else None
    log.info("network %s (%s, %d inputs -> %d features, %d members, loss %s): %d rows, "
             "best epochs %s of %d, out-of-fold rms %s mag, %.3f s/epoch", kind, input_kind,
             x.shape[1], feats.shape[1], k_mem, cfg.loss, n, hist.best_epochs,
             len(hist.train_loss), net.meta["out_of_fold_rms_mag"], hist.seconds_per_epoch)
    return net, hist
