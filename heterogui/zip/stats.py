"""Streaming moments of concatenated features [f_A ; f_B] (docs/method.md sec. 6).

At every merge point the features of both models are concatenated (A's first, O = n_A + n_B
columns) and streamed over calibration batches. The state is raw float64 sums (sum of x, sum of
x xᵀ, count), so two accumulations over disjoint data add up exactly, processes can all-reduce
them, and the state can be cached with safetensors and reused for every interactive re-merge.
Covariance and correlation are derived on demand, in float64.

The batches of a pass are summed in their rows' precision and folded into the float64 sums
every ``FOLD_EVERY`` batches (``zip.pending``: centring, tall batches, the fold). Against
all-float64 sums the correlations differ by about 1e-6 (docs/method.md sec. 6 gives the
measured figures). Float64 rows are accumulated in float64 throughout.

After a feature pass the sums are kept **compact** (``compact``): the float32 correlations the
matchers read, with the float64 means, floored standard deviations and sums of squares; the
(O, O) float64 sums are rebuilt from them when read. Half the memory of the float64 sums, and no
second copy for the correlations.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from heterogui.errors import ConfigError
from heterogui.zip.pending import PendingProducts
from heterogui.zip.symmetric import floored_sigma, join_zeros_, row_blocks, unit_diagonal_

__all__ = ["CORR_FLOOR", "FOLD_EVERY", "Moments"]

# centred float32 products summed before folding into float64 (bounds float32 rounding growth)
FOLD_EVERY = 32
# the relative floor on the standard deviations of ``Moments.corr`` (the correlations kept)
CORR_FLOOR = 1e-6


class Moments:
    """Running sums of the features at one merge point.

    Attributes:
        total: (O,) float64 sum of the feature rows.
        outer: (O, O) float64 sum of x xᵀ over the feature rows (pending batches folded in
            when read).
        count: number of rows (samples) accumulated.
        split: number of A's features when the rows come as A's and B's parts
            (``update_parts``). A batch's product is computed only on and above the diagonal
            of its blocks (``zip.pending.upper_blocks``): each block below is the transpose of
            one above.
    """

    def __init__(
        self, total: Tensor, outer: Tensor | None, count: int = 0, split: int | None = None
    ):
        self.total = total
        self._outer = outer  # None until the first batch is folded in (``empty``)
        self.count = count
        self.split = split
        # the batches not folded into the float64 sums yet
        self._pending = PendingProducts(int(total.shape[0]), split, total.device)
        # compact form (``compact``): float32 correlations, floored σ, sums of squares
        self._corr: Tensor | None = None
        self._sigma: Tensor | None = None
        self._squares: Tensor | None = None

    @classmethod
    def empty(
        cls, width: int, device: torch.device | str = "cpu", split: int | None = None
    ) -> Moments:
        """Create an accumulator of O = width features with nothing accumulated.

        split: the number of A's features when rows will come in parts (``update_parts``).

        Raises:
            ConfigError: width is not a positive integer, or split is not inside it.
        """
        if int(width) != width or width < 1:
            raise ConfigError(f"feature width must be a positive integer, got {width!r}")
        if split is not None and not 0 < split < width:
            raise ConfigError(f"split must be between 1 and {width - 1}, got {split!r}")
        total = torch.zeros(int(width), dtype=torch.float64, device=device)
        # the (O, O) float64 sums are allocated when the first batches are folded in: while a
        # pass runs, only the float32 products of its batches take memory (``settle``)
        return cls(total=total, outer=None, count=0, split=split)

    @property
    def outer(self) -> Tensor:
        """Return the (O, O) float64 sum of x xᵀ (folding in the batches not folded yet)."""
        if self._corr is not None:
            return self._rebuilt_outer()
        self.settle()
        if self._outer is None:  # nothing accumulated
            self._outer = self._zeros()
        return self._outer

    @property
    def compacted(self) -> bool:
        """Return whether the sums are kept in the compact form (``compact``)."""
        return self._corr is not None

    def compact(self) -> None:
        """Keep the sums as float32 correlations and float64 vectors from now on.

        Kept: ``corr()`` at the default floor (computed in float64 as always, rounded once to
        float32), the floored standard deviations σ', the sums of squares, ``total`` and
        ``count``. ``cov`` is rebuilt as corr σ'σ'ᵀ and ``outer`` as count (cov + μμᵀ), in
        float64, to the float32 rounding of the correlations (about 6e-8 of σ'_i σ'_j, below the
        1e-6 of the float32 batch products); the diagonal stays exact. Half the memory of the
        (O, O) float64 sums. Accumulating another batch rebuilds them first.
        """
        if self._corr is not None:
            return
        if (
            self._outer is None
            and self._pending.rows
            and self._pending.product.dtype == torch.float32
        ):
            # never folded: no (O, O) float64 sums at all (``PendingProducts.compacted``)
            self._corr, self._sigma, self._squares = self._pending.compacted(
                self.mean(), self.count, CORR_FLOOR
            )
            return
        squares = torch.diagonal(self.outer).clone()
        corr, sigma = self._correlation(CORR_FLOOR, torch.float32)
        self._corr, self._sigma, self._squares, self._outer = corr, sigma, squares, None

    def squares(self) -> Tensor:
        """Return the (O,) float64 sums of x² (the diagonal of ``outer``, without forming it)."""
        return self._squares if self._corr is not None else torch.diagonal(self.outer)

    def moment_blocks(self, centred: bool = True) -> Iterator[tuple[slice, Tensor]]:
        """Yield the covariance (centred) or the second moment E[x xᵀ], row block by row block.

        Each block is (rows, O) float64 and new (the caller may change it): the numbers of
        ``cov()`` (of cov + μμᵀ), exact on the diagonal, without forming the (O, O) matrix.

        Raises:
            ConfigError: nothing was accumulated.
        """
        mu = self.mean()
        diagonal = self.squares() / self.count  # E[x²]
        if centred:
            diagonal = diagonal - mu * mu
        compact = self._corr is not None
        outer = None if compact else self.outer
        for rows in row_blocks(self.width):
            if compact:
                block = (
                    self._corr[rows]
                    .to(torch.float64, copy=True)
                    .mul_(torch.outer(self._sigma[rows], self._sigma))
                )
                if not centred:
                    block.add_(torch.outer(mu[rows], mu))
            else:
                block = torch.div(outer[rows], self.count)
                if centred:
                    block.sub_(torch.outer(mu[rows], mu))
            torch.diagonal(block[:, rows]).copy_(diagonal[rows])
            yield rows, block

    def _rebuilt_cov(self) -> Tensor:
        """Return the compact form's covariance corr σ'σ'ᵀ, float64, exact on the diagonal."""
        return self._assembled(centred=True)

    def _rebuilt_outer(self) -> Tensor:
        """Return count (cov + μμᵀ) of the compact form: the float64 sums, rebuilt."""
        outer = self._assembled(centred=False).mul_(self.count)
        torch.diagonal(outer).copy_(self._squares)
        return outer

    def _assembled(self, centred: bool) -> Tensor:
        """Return ``moment_blocks`` as one (O, O) float64 matrix."""
        matrix = torch.empty(self.width, self.width, dtype=torch.float64, device=self.device)
        for rows, block in self.moment_blocks(centred):
            matrix[rows] = block
        return matrix

    def _expand(self) -> None:
        """Return from the compact form to the float64 sums (to accumulate more batches)."""
        self._outer = self._rebuilt_outer()
        self._corr = self._sigma = self._squares = None

    def _zeros(self) -> Tensor:
        return torch.zeros(self.width, self.width, dtype=torch.float64, device=self.device)

    @property
    def nbytes(self) -> int:
        """Return the bytes the settled sums take (float64 sums, or the compact form)."""
        if self._corr is not None:
            return self.width * (self.width * self._corr.element_size() + 3 * 8)  # 3 vectors
        return (self.width + 1) * self.width * self.total.element_size()

    @property
    def width(self) -> int:
        """Return the number of features O."""
        return int(self.total.shape[0])

    @property
    def device(self) -> torch.device:
        """Return the device the sums live on."""
        return self.total.device

    def update(self, rows: Tensor) -> None:
        """Accumulate a batch of feature rows in place.

        Args:
            rows: (n, O) features, one sample per row, any float dtype and device.

        Raises:
            ConfigError: rows is not 2-D with O columns.
        """
        if rows.dim() != 2 or rows.shape[1] != self.width:
            raise ConfigError(
                f"feature rows must have shape (n, {self.width}), got {tuple(rows.shape)}; "
                "reshape conv features [B, C, H, W] to [B*H*W, C] first"
            )
        if self.split is None:
            self._accumulate([rows])
        else:
            self._accumulate([rows[:, : self.split], rows[:, self.split :]])

    def update_parts(self, rows_a: Tensor, rows_b: Tensor) -> None:
        """Accumulate a batch given as A's rows (n, split) and B's rows (n, O - split).

        Raises:
            ConfigError: no split was set, or the parts' shapes do not fit it.
        """
        if (
            self.split is None
            or rows_a.dim() != 2
            or rows_b.dim() != 2
            or rows_a.shape != (rows_b.shape[0], self.split)
            or rows_b.shape[1] != self.width - self.split
        ):
            raise ConfigError(
                f"parts of shapes {tuple(rows_a.shape)} and {tuple(rows_b.shape)} do not fit "
                f"{self.split} + {self.width - (self.split or 0)} features; create the "
                "accumulator with Moments.empty(width, split=n_a)"
            )
        self._accumulate([rows_a, rows_b])

    def _accumulate(self, parts: list[Tensor]) -> None:
        """Add one batch's product to the pending sums (``zip.pending``) and book its rows."""
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in parts) else torch.float32
        if self._corr is not None:
            self._expand()
        if self._pending.holds_other_than(dtype):
            self.settle()
        xs = [p.detach().to(device=self.device, dtype=dtype) for p in parts]
        shift, sums, n = self._pending.add(xs)
        self.total += n * shift + sums
        self.count += n
        if len(self._pending) >= FOLD_EVERY:
            self.settle()

    def settle(self) -> None:
        """Fold the pending batches into the float64 sums (reading ``outer`` does it too)."""
        if not self._pending.rows:
            return
        if self._outer is None:
            self._outer = self._zeros()
        self._pending.fold_into(self._outer)

    @property
    def products_per_row(self) -> int:
        """Return the multiply-adds one feature row adds to the product (the blocks computed)."""
        return sum((r.stop - r.start) * (c.stop - c.start) for r, c in self._pending.blocks)

    def merged_with(self, other: Moments) -> Moments:
        """Return the accumulation over the union of both data streams (on this device).

        Raises:
            ConfigError: the two accumulations have different widths.
        """
        if not isinstance(other, Moments):
            raise ConfigError(f"can only add Moments to Moments, got {type(other).__name__}")
        if other.width != self.width:
            raise ConfigError(
                f"cannot add moments of widths {self.width} and {other.width}; "
                "both must come from the same merge point"
            )
        return Moments(
            total=self.total + other.total.to(self.device),
            outer=self.outer + other.outer.to(self.device),
            count=self.count + other.count,
            split=self.split,
        )

    def __add__(self, other: Moments) -> Moments:
        """Return the accumulation over the union of both data streams.

        Raises:
            ConfigError: the two accumulations have different widths.
        """
        return self.merged_with(other)

    def _check_count(self) -> None:
        if self.count == 0:
            raise ConfigError(
                "no calibration samples reached this merge point (count is 0); "
                "check the calibration data and that the feature capture covers this layer"
            )

    def mean(self) -> Tensor:
        """Return the feature means, (O,) float64.

        Raises:
            ConfigError: nothing was accumulated.
        """
        self._check_count()
        return self.total / self.count

    def cov(self) -> Tensor:
        """Return the population covariance outer/count - mean meanᵀ, (O, O) float64.

        Raises:
            ConfigError: nothing was accumulated.
        """
        if self._corr is not None:
            return self._rebuilt_cov()
        mu = self.mean()
        cov = torch.div(self.outer, self.count)
        # outer is exactly symmetric and mu_i mu_j = mu_j mu_i, so the covariance is too (the
        # matchers rely on it); not addr_, whose fused rounding differs between (i, j) and (j, i)
        return cov.sub_(torch.outer(mu, mu))

    def corr(self, floor: float = CORR_FLOOR, dtype: torch.dtype = torch.float64) -> Tensor:
        """Return the correlation matrix Cov / (σ σᵀ), (O, O), clipped to [-1, 1].

        Computed in float64 and returned in ``dtype``. In the compact form (``compact``) at the
        default floor: the kept float32 correlations, in ``dtype`` (float32: that very tensor,
        shared: do not modify it).

        The standard deviations are floored *relative to the feature scale*:
        σ_k = max(sqrt(var_k), floor * s), where s = sqrt(mean_k E[x_k²]) is the RMS magnitude
        of all features at this point (raw second moment, so it is non-zero unless every feature
        is exactly zero). A constant or dead feature therefore gets a correlation of ~0 with
        everything (and a diagonal of ~0) instead of NaN/inf, whatever the units of the
        features; a feature whose spread is below floor * s is indistinguishable from float32
        rounding noise anyway. Non-constant features keep a unit diagonal. Features that are
        exactly 0 on all the data compute the same thing: they correlate 1 with each other
        (``symmetric.join_zeros_``), so the zip merges them together, for free.

        Args:
            floor: relative floor on σ, > 0.
            dtype: the result's dtype (float32: half the memory of the float64 result).

        Raises:
            ConfigError: nothing was accumulated, or floor is not positive.
        """
        if not floor > 0:
            raise ConfigError(f"corr floor must be positive, got {floor!r}")
        if self._corr is not None and floor == CORR_FLOOR:
            return self._corr.to(dtype)
        return self._correlation(floor, dtype)[0]

    def _correlation(self, floor: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Return ``corr(floor, dtype)`` from the sums, and the floored σ (float64)."""
        outer, count, mu = self.outer, self.count, self.mean()
        variance = torch.diagonal(outer) / count - mu * mu  # the covariance's diagonal
        raw_sigma, sigma, sigma_min = floored_sigma(torch.diagonal(outer), variance, count, floor)
        corr = torch.empty_like(outer, dtype=dtype)
        # row block by row block, as ``cov`` and then Cov / (σσᵀ) element by element: the same
        # numbers without three (O, O) float64 temporaries (3 GiB at 2 x 5,632 features)
        for rows in row_blocks(self.width):
            block = torch.div(outer[rows], count).sub_(torch.outer(mu[rows], mu))
            corr[rows] = block.div_(torch.outer(sigma[rows], sigma)).clamp_(-1.0, 1.0)
        unit_diagonal_(corr, raw_sigma, sigma_min)
        join_zeros_(corr, torch.diagonal(outer))
        return corr, sigma

    def to_state(self) -> dict[str, Tensor]:
        """Return the sums as a flat dict of tensors, ready for safetensors.save_file."""
        return {
            "total": self.total.contiguous(),
            "outer": self.outer.contiguous(),
            "count": torch.tensor([self.count], dtype=torch.int64),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Tensor], device: torch.device | str | None = None
    ) -> Moments:
        """Rebuild an accumulator from to_state() output.

        Args:
            state: {"total": (O,), "outer": (O, O), "count": (1,) int64}.
            device: where to put the sums; None keeps the device of the stored tensors.

        Raises:
            ConfigError: keys are missing or shapes disagree.
        """
        missing = {"total", "outer", "count"} - set(state)
        if missing:
            raise ConfigError(f"moments state lacks {sorted(missing)}; was it saved by to_state?")
        total = state["total"].to(device=device, dtype=torch.float64)
        outer = state["outer"].to(device=device, dtype=torch.float64)
        o = total.shape[0] if total.dim() == 1 else -1
        if o < 1 or tuple(outer.shape) != (o, o) or state["count"].numel() != 1:
            raise ConfigError(
                f"moments state has inconsistent shapes: total {tuple(total.shape)}, "
                f"outer {tuple(outer.shape)}, count {tuple(state['count'].shape)}"
            )
        outer = torch.add(outer, outer.T).mul_(0.5)  # the invariant ``cov`` relies on
        return cls(total=total.clone(), outer=outer, count=int(state["count"].item()))
