"""Minibatch linear CKA with the unbiased HSIC estimator (docs/method.md sec. 3).

Per batch of n inputs, every layer gets one Gram matrix K = X Xᵀ (float64). The unbiased
estimator of Nguyen et al. (2021) is applied to the zero-diagonal Grams,

    HSIC1(K, L) = [tr(KL) + (1ᵀK1)(1ᵀL1) / ((n-1)(n-2)) - 2/(n-2) · 1ᵀKL1] / (n(n-3)),

and averaged over batches; CKA(i, j) = HSIC(K_i, L_j) / sqrt(HSIC(K_i, K_i) · HSIC(L_j, L_j)).
The whole L_a x L_b matrix is filled from batched products of the Grams, never pair by pair.

HSIC1 is the inner product of U-centred Gram matrices divided by n(n-3), so by Cauchy-Schwarz
the batch-averaged CKA lies in [-1, 1]. Unlike the biased estimator it can be slightly negative
for unrelated representations: that is a property of the unbiased estimator, not a bug, so it is
kept (see ``CKAAccumulator.matrix``).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from heterogui.distributed import all_reduce_sum_, world_size
from heterogui.errors import ConfigError

__all__ = ["CKAAccumulator", "cka_matrix", "gram", "hsic_matrix", "linear_cka"]

logger = logging.getLogger(__name__)

# Unbiased HSIC divides by n(n-3) and (n-2): fewer inputs leave it undefined.
MIN_BATCH = 4
# CKA is bounded by 1 in magnitude (Cauchy-Schwarz); smaller excursions are round-off.
_CLIP_TOL = 1e-8  # the unbiased estimator cancels large terms: ~1e-9 is seen
# A self-HSIC this small relative to its own tr(KK) term is round-off around zero: the layer is
# constant over the inputs (e.g. dead units) and its CKA with anything is undefined; report 0.
_DEGENERATE_RTOL = 1e-12


def gram(x: Tensor) -> Tensor:
    """Return the linear Gram matrix of a batch of features, as float64.

    The products are float64 for float64 features and float32 for any other (a model's
    float32, bfloat16 or float16 outputs): half the time of widening them first, and the CKA
    moves by under 1e-6 (docs/method.md sec. 3).

    Args:
        x: (n, ...) features of n inputs; trailing dimensions are flattened to (n, d).

    Returns:
        (n, n) float64 matrix K = x xᵀ, on x's device.

    Raises:
        ConfigError: if x has no batch dimension.
    """
    if x.dim() < 1:
        raise ConfigError("gram() needs features shaped (n, ...), got a scalar tensor")
    flat = x.reshape(x.shape[0], -1)
    if flat.dtype == torch.float64:
        return flat @ flat.T
    flat = flat.to(torch.float32)
    return (flat @ flat.T).to(torch.float64)


def _check_batch(grams: Tensor, name: str) -> int:
    """Check a (L, n, n) stack of Grams and return n."""
    if grams.dim() != 3 or grams.shape[1] != grams.shape[2]:
        raise ConfigError(
            f"{name} must be a stack of square Gram matrices shaped (L, n, n), "
            f"got shape {tuple(grams.shape)}"
        )
    n = grams.shape[1]
    if n < MIN_BATCH:
        raise ConfigError(
            f"CKA needs at least {MIN_BATCH} inputs per batch, got {n}; calibrate on at "
            f"least {MIN_BATCH} inputs with a batch_size of at least {MIN_BATCH}"
        )
    return n


def _zero_diagonal(grams: Tensor) -> Tensor:
    """Return a float64 copy of (L, n, n) Grams with zeroed diagonals."""
    out = grams.to(torch.float64, copy=True)
    out.diagonal(dim1=1, dim2=2).zero_()
    return out


def _hsic_from_terms(tr_kl: Tensor, sum_k: Tensor, sum_l: Tensor, kl1: Tensor, n: int) -> Tensor:
    """Combine the sufficient statistics of HSIC1 (all broadcastable to the output shape)."""
    return (tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl1) / (n * (n - 3))


def hsic_matrix(grams_a: Tensor, grams_b: Tensor) -> Tensor:
    """Compute the unbiased HSIC1 of every pair of Gram matrices at once.

    The Grams must be symmetric (as ``gram`` returns them): tr(KL) is then sum(K * L) and
    1ᵀKL1 is (K1)·(L1), so every pair comes out of two batched contractions.

    Args:
        grams_a: (L_a, n, n) Gram matrices of model A's layers on one batch.
        grams_b: (L_b, n, n) Gram matrices of model B's layers on the same batch.

    Returns:
        (L_a, L_b) float64 tensor, entry (i, j) = HSIC1(K_i, L_j).

    Raises:
        ConfigError: if the shapes are not (L, n, n), the batch sizes differ, or n < 4.
    """
    n = _check_batch(grams_a, "grams_a")
    n_b = _check_batch(grams_b, "grams_b")
    if n != n_b:
        raise ConfigError(
            f"Gram matrices come from different batch sizes ({n} vs {n_b}); "
            "compute both models' features on the same inputs"
        )
    ka = _zero_diagonal(grams_a)
    lb = _zero_diagonal(grams_b)
    tr_kl = torch.einsum("aij,bij->ab", ka, lb)
    row_a = ka.sum(dim=2)
    row_b = lb.sum(dim=2)
    kl1 = row_a @ row_b.T
    sum_a = row_a.sum(dim=1)
    sum_b = row_b.sum(dim=1)
    return _hsic_from_terms(tr_kl, sum_a[:, None], sum_b[None, :], kl1, n)


def _hsic_self(grams: Tensor) -> tuple[Tensor, Tensor]:
    """Return HSIC1(K_i, K_i) and its tr(KK) term for (L, n, n) Grams, each (L,).

    Only the diagonal of ``hsic_matrix(grams, grams)`` is needed, so it is computed in O(L n²)
    instead of O(L² n²).
    """
    n = _check_batch(grams, "grams")
    k = _zero_diagonal(grams)
    tr_kk = (k * k).sum(dim=(1, 2))
    rows = k.sum(dim=2)
    sums = rows.sum(dim=1)
    kk1 = (rows * rows).sum(dim=1)
    hsic = _hsic_from_terms(tr_kk, sums, sums, kk1, n)
    return hsic, tr_kk / (n * (n - 3))


class CKAAccumulator:
    """Average unbiased HSIC terms over minibatches and turn them into a CKA matrix."""

    def __init__(self) -> None:
        """Start with no batches."""
        self.batches = 0
        self._sum_ab: Tensor | None = None
        self._sum_aa: Tensor | None = None
        self._sum_bb: Tensor | None = None
        self._scale_aa: Tensor | None = None
        self._scale_bb: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int] | None:
        """Return (L_a, L_b) once a batch has been added, else None."""
        return None if self._sum_ab is None else tuple(self._sum_ab.shape)

    def update(self, grams_a: Tensor, grams_b: Tensor) -> None:
        """Add one batch of Gram matrices.

        Args:
            grams_a: (L_a, n, n) Grams of model A's layers on this batch.
            grams_b: (L_b, n, n) Grams of model B's layers on the same inputs.

        Raises:
            ConfigError: if n < 4, the shapes are wrong, or the number of layers differs from
                earlier batches.
        """
        hsic_ab = hsic_matrix(grams_a, grams_b)
        if self._sum_ab is not None and hsic_ab.shape != self._sum_ab.shape:
            raise ConfigError(
                f"this batch has {tuple(hsic_ab.shape)} (layers of A, layers of B) but earlier "
                f"batches had {tuple(self._sum_ab.shape)}; capture the same layers every batch "
                "or start a new CKAAccumulator"
            )
        hsic_aa, scale_aa = _hsic_self(grams_a)
        hsic_bb, scale_bb = _hsic_self(grams_b)
        if self._sum_ab is None:
            self._sum_ab, self._sum_aa, self._sum_bb = hsic_ab, hsic_aa, hsic_bb
            self._scale_aa, self._scale_bb = scale_aa, scale_bb
        else:
            self._sum_ab = self._sum_ab + hsic_ab
            self._sum_aa = self._sum_aa + hsic_aa
            self._sum_bb = self._sum_bb + hsic_bb
            self._scale_aa = self._scale_aa + scale_aa
            self._scale_bb = self._scale_bb + scale_bb
        self.batches += 1

    def all_reduce(self) -> None:
        """Sum the HSIC terms and the batch count over all ranks (``heterogui.distributed``).

        ``matrix`` averages the sums over the batches, so after this every rank's matrix is
        that of all ranks' batches: what one process gets on the whole data. A no-op without a
        process group; every rank must have added at least one batch.
        """
        if world_size() <= 1:
            return
        if self._sum_ab is None:
            raise ConfigError(
                "a process has no CKA batches to share; give every process calibration data"
            )
        for name in ("_sum_ab", "_sum_aa", "_sum_bb", "_scale_aa", "_scale_bb"):
            all_reduce_sum_(getattr(self, name))
        count = torch.tensor([self.batches], dtype=torch.int64)
        self.batches = int(all_reduce_sum_(count).item())

    def matrix(self) -> Tensor:
        """Return the CKA matrix of the batches seen so far.

        A layer whose averaged self-HSIC is not positive (beyond round-off) is constant over the
        inputs; its row or column is 0. Values outside [-1, 1] by at most 1e-8 are round-off and
        are clipped; nothing else is clipped, in particular the small negative values that the
        unbiased estimator gives for unrelated layers are kept.

        Returns:
            (L_a, L_b) float64 tensor of CKA values.

        Raises:
            ConfigError: if no batch has been added.
        """
        if self._sum_ab is None:
            raise ConfigError("no batches were added to the CKAAccumulator; call update() first")
        aa = self._sum_aa / self.batches
        bb = self._sum_bb / self.batches
        ok_a = aa > _DEGENERATE_RTOL * (self._scale_aa / self.batches)
        ok_b = bb > _DEGENERATE_RTOL * (self._scale_bb / self.batches)
        if not bool(ok_a.all()) or not bool(ok_b.all()):
            logger.warning(
                "CKA undefined for constant layers (A: %s, B: %s); reported as 0",
                torch.nonzero(~ok_a).flatten().tolist(),
                torch.nonzero(~ok_b).flatten().tolist(),
            )
        denom = torch.sqrt(aa.clamp(min=0.0)[:, None] * bb.clamp(min=0.0)[None, :])
        valid = ok_a[:, None] & ok_b[None, :]
        ab = self._sum_ab / self.batches
        cka = torch.where(valid, ab / torch.where(valid, denom, torch.ones_like(denom)), 0.0)
        over = cka.abs() > 1.0 + _CLIP_TOL
        if bool(over.any()):
            logger.warning("CKA beyond [-1, 1] past round-off at %d entries", int(over.sum()))
        near = cka.abs() <= 1.0 + _CLIP_TOL
        return torch.where(near, cka.clamp(-1.0, 1.0), cka)


def _batches(n: int, batch_size: int | None) -> list[slice]:
    """Split range(n) into slices; a trailing remainder under 4 inputs joins the previous one."""
    if batch_size is None or batch_size >= n:
        return [slice(0, n)]
    if batch_size < MIN_BATCH:
        raise ConfigError(
            f"CKA needs at least {MIN_BATCH} inputs per batch, got batch_size={batch_size}; "
            "use a larger calibration batch"
        )
    starts = list(range(0, n, batch_size))
    if n - starts[-1] < MIN_BATCH:
        starts.pop()
    return [slice(s, e) for s, e in zip(starts, [*starts[1:], n], strict=True)]


def cka_matrix(
    feats_a: list[Tensor], feats_b: list[Tensor], batch_size: int | None = None
) -> Tensor:
    """Compute the minibatch CKA matrix between two lists of layer features.

    A trailing remainder of fewer than 4 inputs is folded into the previous batch, so no input
    is dropped.

    Args:
        feats_a: L_a tensors, each (n, ...) (any feature size per layer), model A on n inputs.
        feats_b: L_b tensors, each (n, ...), model B on the same n inputs in the same order.
        batch_size: inputs per minibatch; None puts all n inputs in one batch.

    Returns:
        (L_a, L_b) float64 tensor of CKA values.

    Raises:
        ConfigError: if a list is empty, the layers disagree on n, or a batch has n < 4.
    """
    if not feats_a or not feats_b:
        raise ConfigError("cka_matrix needs at least one layer of features from each model")
    sizes = {int(f.shape[0]) for f in [*feats_a, *feats_b]}
    if len(sizes) != 1:
        raise ConfigError(
            f"layer features have different numbers of inputs {sorted(sizes)}; "
            "capture every layer of both models on the same calibration inputs"
        )
    (n,) = sizes
    acc = CKAAccumulator()
    for sl in _batches(n, batch_size):
        grams_a = torch.stack([gram(f[sl]) for f in feats_a])
        grams_b = torch.stack([gram(f[sl]) for f in feats_b])
        acc.update(grams_a, grams_b)
    return acc.matrix()


def _hsic1_reference(k: Tensor, g: Tensor) -> tuple[float, float]:
    """Evaluate HSIC1 of two (n, n) Grams with explicit matrix products, and its tr(KL) term."""
    n = k.shape[0]
    k = k - torch.diag(torch.diagonal(k))
    g = g - torch.diag(torch.diagonal(g))
    ones = torch.ones(n, 1, dtype=torch.float64, device=k.device)
    trace = torch.trace(k @ g)
    cross = (ones.T @ k @ ones) * (ones.T @ g @ ones) / ((n - 1) * (n - 2))
    middle = 2.0 / (n - 2) * (ones.T @ k @ g @ ones)
    norm = n * (n - 3)
    return float((trace + cross - middle) / norm), float(trace / norm)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Compute unbiased linear CKA of one pair of representations on a single batch.

    A plain per-pair implementation, kept as a reference for the batched path.

    Args:
        x: (n, ...) features of one layer on n inputs.
        y: (n, ...) features of another layer on the same n inputs.

    Returns:
        CKA as a Python float (0.0 if either representation is constant over the inputs).

    Raises:
        ConfigError: if x and y disagree on n or n < 4.
    """
    if x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"x has {x.shape[0]} inputs but y has {y.shape[0]}; pass features of the same inputs"
        )
    n = int(x.shape[0])
    if n < MIN_BATCH:
        raise ConfigError(
            f"CKA needs at least {MIN_BATCH} inputs per batch, got {n}; calibrate on at "
            f"least {MIN_BATCH} inputs with a batch_size of at least {MIN_BATCH}"
        )
    kx, ky = gram(x), gram(y)
    xy, _ = _hsic1_reference(kx, ky)
    xx, scale_x = _hsic1_reference(kx, kx)
    yy, scale_y = _hsic1_reference(ky, ky)
    if xx <= _DEGENERATE_RTOL * scale_x or yy <= _DEGENERATE_RTOL * scale_y:
        return 0.0
    return xy / math.sqrt(xx * yy)
