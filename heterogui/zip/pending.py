"""The batches of a feature pass not yet folded into float64 sums (docs/method.md sec. 6).

``zip.stats.Moments`` streams the features [f_A ; f_B] of a merge point; this is its batch
side. Each batch's product is computed in the rows' precision (float32 for float32 features:
about twice the speed of float64 products) around the batch's own mean, so no large mean is
squared in float32; the centred products are summed here (``PendingProducts.product``) and
folded into the float64 sums together with the exact mean terms (``fold_into``): the centred
rows' column sums are taken in the rows' precision and widened, and ``Σx`` gains n·shift +
them. A tall batch (many rows per feature: a CNN's early layers) skips the centring copy when
no feature's mean dwarfs its spread (``add``). Batches never folded can become the compact
form's correlations in place (``compacted``).

Only the blocks on and above the diagonal of a batch's parts are computed (``upper_blocks``):
each block below is the transpose of one above.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from heterogui.zip.symmetric import (
    floored_sigma,
    join_zeros_,
    mirror_upper_,
    row_blocks,
    symmetrise_,
    unit_diagonal_,
)

# elements of the float64 row blocks the in-place compaction corrects at a time (4 MiB)
COMPACT_BLOCK = 2**19
# a batch with at least this many rows per feature is multiplied uncentred when it may be
TALL = 16
# the most a feature's float32 rounding may grow, uncentred: E[x²] / Var x (4 bits)
UNCENTRED_GROWTH = 16.0
# a model's features are multiplied in two halves when each half has at least this many
MIN_HALF = 96


def _halves(start: int, stop: int) -> list[slice]:
    """Return the columns [start, stop) as one slice, or two halves when it is wide enough.

    The product of a batch fills only the blocks on and above the diagonal of its parts: with
    each model's features in two halves, 10 of 16 blocks instead of 3 of 4, about 17% fewer
    multiply-adds (measured 0.81-0.93 of the time at 384-3,072 features a model, 1 thread).
    """
    if stop - start < 2 * MIN_HALF:
        return [slice(start, stop)]
    middle = (start + stop) // 2
    return [slice(start, middle), slice(middle, stop)]


def upper_blocks(width: int, split: int | None) -> list[tuple[slice, slice]]:
    """Return the (rows, columns) of the product blocks a batch computes (upper ones).

    The parts: A's features and B's (one part without a split), each halved when wide.
    """
    edges = [0, width] if split is None else [0, split, width]
    parts = [h for start, stop in itertools.pairwise(edges) for h in _halves(start, stop)]
    return [(parts[i], parts[j]) for i in range(len(parts)) for j in range(i, len(parts))]


class PendingProducts:
    """The summed products of the batches since the last fold, and what the fold needs.

    Attributes:
        blocks: the (rows, columns) of the blocks each batch computes (``upper_blocks``).
        product: (O, O) summed products of the batches (on and above the diagonal of
            ``blocks`` only; the rest is never written), None when no batch is pending.
        shifts: per batch, its centre (O,) float64 (zeros for a batch taken uncentred).
        sums: per batch, the sums of its shifted rows (O,) float64.
        rows: per batch, its number of rows.
    """

    def __init__(self, width: int, split: int | None, device: torch.device) -> None:
        self.width, self.device = width, device
        self.blocks = upper_blocks(width, split)
        self.product: Tensor | None = None
        self.shifts: list[Tensor] = []
        self.sums: list[Tensor] = []
        self.rows: list[int] = []

    def __len__(self) -> int:
        """Return the number of pending batches."""
        return len(self.rows)

    def holds_other_than(self, dtype: torch.dtype) -> bool:
        """Return whether batches of another dtype are pending (fold them before ``add``)."""
        return bool(self.rows) and self.product.dtype != dtype

    def add(self, xs: list[Tensor]) -> tuple[Tensor, Tensor, int]:
        """Add one batch's product, given as its parts side by side; return its booking.

        xs: the parts (n, O_k) in one dtype (float32 or float64), on ``device``; no batch of
        another dtype pending (``holds_other_than``). Returns (shift, sums, n): the batch's
        centre (O,) and the sums of its shifted rows (O,), float64, and its row count; the raw
        sum of its rows is n·shift + sums.
        """
        if int(xs[0].shape[0]) >= TALL * self.width:
            booking = self._add_uncentred(xs)
            if booking is not None:
                return booking
        # centre on the batch mean rounded to the compute dtype: the shift is exact in float64,
        # so the mean terms folded in later are exact too
        shift = torch.cat([x.mean(dim=0) for x in xs])
        if len(xs) == 1:
            x = xs[0] - shift
        else:  # the parts side by side, centred in place (a new tensor: the callers' stay)
            x = torch.cat(xs, dim=1).sub_(shift)
        fresh = self._product_for(x.dtype)
        for rows, cols in self.blocks:
            self.product[rows, cols].addmm_(x[:, rows].T, x[:, cols], beta=0.0 if fresh else 1.0)
        # the centred rows' sums in the compute dtype (pairwise, about the products' rounding),
        # widened after: a float64 reduction of float32 rows costs several times the products
        # of narrow features. The raw sum is n·shift + them, exactly as the fold reads it
        return self._record(shift.to(torch.float64), x.sum(dim=0).to(torch.float64), x.shape[0])

    def _product_for(self, dtype: torch.dtype) -> bool:
        """Make ``product`` exist; return True when it is new (unwritten).

        Batches pending are of ``dtype`` (``holds_other_than``). A new one is not zeroed: the
        first batch's products overwrite it; the blocks below the diagonal stay unused.
        """
        if self.product is not None:
            return False
        self.product = torch.empty(self.width, self.width, dtype=dtype, device=self.device)
        return True

    def _record(self, shift: Tensor, sums: Tensor, n: int) -> tuple[Tensor, Tensor, int]:
        """Book a batch whose products were added: its shift, its shifted rows' sums, n."""
        self.shifts.append(shift)
        self.sums.append(sums)
        self.rows.append(int(n))
        return shift, sums, int(n)

    def _add_uncentred(self, xs: list[Tensor]) -> tuple[Tensor, Tensor, int] | None:
        """Add a tall batch's product of its rows as they are (shift 0); None: not taken.

        With many rows per feature (``TALL``) centring is the costly part of a batch: a copy of
        every row, where the products read the parts in place. Uncentred, a feature's float32
        rounding grows by its second moment over its variance, E[x²] / Var x; the batch is
        taken only when that is at most ``UNCENTRED_GROWTH`` for every feature (read off the
        product's diagonal and the column sums: all-zero features pass, constant ones do not),
        else the caller centres it.
        """
        edges = [0, *itertools.accumulate(x.shape[1] for x in xs)]

        def columns(part: slice) -> Tensor:
            k = next(i for i in range(len(xs)) if edges[i] <= part.start < edges[i + 1])
            return xs[k][:, part.start - edges[k] : part.stop - edges[k]]

        n = int(xs[0].shape[0])
        product = [columns(rows).T @ columns(cols) for rows, cols in self.blocks]
        diagonal = [p for (rows, cols), p in zip(self.blocks, product, strict=True) if rows == cols]
        squares = torch.cat([torch.diagonal(p) for p in diagonal]).to(torch.float64)
        sums = torch.cat([x.sum(dim=0) for x in xs]).to(torch.float64)
        second = squares / n
        spread = second - (sums / n) ** 2
        if not bool(((second == 0) | (second <= UNCENTRED_GROWTH * spread)).all()):
            return None
        fresh = self._product_for(product[0].dtype)
        for (rows, cols), p in zip(self.blocks, product, strict=True):
            block = self.product[rows, cols]
            block.copy_(p) if fresh else block.add_(p)
        return self._record(torch.zeros_like(sums), sums, n)

    def fold_into(self, outer: Tensor) -> None:
        """Add the pending batches to the (O, O) float64 sums of x xᵀ ``outer``; clear them."""
        product = self.product
        for rows, cols in self.blocks:  # in place, float32 into float64: no temporaries
            outer[rows, cols].add_(product[rows, cols])
            if rows != cols:
                outer[cols, rows].add_(product[rows, cols].T)
        shifts, sums = torch.stack(self.shifts), torch.stack(self.sums)
        weights = torch.tensor(self.rows, dtype=torch.float64, device=self.device)
        # sum over batches of (c + s)(c + s)ᵀ = C + s dᵀ + d sᵀ + n s sᵀ, d = sum of c
        outer.addmm_(shifts.T, sums).addmm_(sums.T, shifts)
        outer.addmm_((shifts * weights[:, None]).T, shifts)
        symmetrise_(outer)  # exactly symmetric (``Moments.cov`` relies on it)
        self.clear()

    def compacted(self, mean: Tensor, count: int, floor: float) -> tuple[Tensor, Tensor, Tensor]:
        """Return the compact form of batches never folded, built in place; clear them.

        mean: (O,) float64 means of every row accumulated (these batches' rows only);
        count: their number; floor: the relative floor of the standard deviations. Returns
        (corr (O, O) float32, floored σ (O,) float64, sums of squares (O,) float64).

        With E the batches' centres minus the overall mean (k, O), D the sums of their centred
        rows (k, O, about 0) and W their row counts, the mean terms of the float64 fold cancel:
        count · cov = C + Eᵀ D + Dᵀ E + Eᵀ W E, C the summed centred products. The rank-2k
        correction is formed in float64 row block by row block and added to C, which becomes
        the correlations where it lies; the vectors (σ', the sums of squares) are float64.
        Nothing large is squared in float32, so the result matches a fold and a compaction to
        float32 rounding, without the (O, O) float64 sums or a second (O, O) buffer.
        """
        corr = self.product
        shifts, sums = torch.stack(self.shifts), torch.stack(self.sums)
        weights = torch.tensor(self.rows, dtype=torch.float64, device=self.device)[:, None]
        dev = shifts - mean
        left, right = torch.cat([dev, sums]), torch.cat([sums + weights * dev, dev])
        diag = torch.diagonal(corr).to(torch.float64)
        centred = diag + (left * right).sum(dim=0)  # count · variance, in float64
        squares = diag + 2 * (shifts * sums).sum(dim=0) + (weights * shifts * shifts).sum(dim=0)
        raw_sigma, sigma, sigma_min = floored_sigma(squares, centred / count, count, floor)
        inverse = (1.0 / (sigma * count**0.5)).to(torch.float32)  # C / count / (σ σᵀ)
        # the products were computed on and above the diagonal (``blocks``): correct that part
        # (small row blocks: the float64 correction and its float32 copy are the only
        # temporaries), then mirror it below
        for rows in row_blocks(self.width, COMPACT_BLOCK):
            cols = slice(rows.start, self.width)
            low_rank = left[:, rows].T @ right[:, cols]
            block = corr[rows, cols].add_(low_rank.to(torch.float32))
            block.mul_(inverse[rows, None]).mul_(inverse[None, cols]).clamp_(-1.0, 1.0)
        mirror_upper_(corr)
        unit_diagonal_(corr, raw_sigma, sigma_min)
        join_zeros_(corr, squares)
        self.clear()
        return corr, sigma, squares

    def clear(self) -> None:
        """Drop the pending batches (after they were folded or compacted)."""
        self.product, self.shifts, self.sums, self.rows = None, [], [], []
