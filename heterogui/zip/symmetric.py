"""In-place operations on the (O, O) matrices of ``zip.stats.Moments``: symmetric sums and
correlations, done in blocks or tiles so that no second (O, O) matrix is ever allocated."""

from __future__ import annotations

import torch
from torch import Tensor

# rows and columns of the square tiles ``mirror_upper_`` copies at a time
MIRROR_TILE = 128


def row_blocks(width: int, elements: int = 2**22) -> list[slice]:
    """Return slices of rows of a (width, width) matrix of about ``elements`` each (32 MiB of
    float64 by default)."""
    step = max(1, elements // width)
    return [slice(r, min(r + step, width)) for r in range(0, width, step)]


def symmetrise_(matrix: Tensor) -> None:
    """Replace ``matrix`` by (M + Mᵀ) / 2 in place, block by block (no (O, O) temporary)."""
    blocks = row_blocks(matrix.shape[0])
    for i, rows in enumerate(blocks):
        for cols in blocks[i:]:
            mean = torch.add(matrix[rows, cols], matrix[cols, rows].T).mul_(0.5)
            matrix[rows, cols] = mean
            matrix[cols, rows] = mean.T


def mirror_upper_(matrix: Tensor, tile: int = MIRROR_TILE) -> None:
    """Copy the triangle above the diagonal of ``matrix`` below it, in place, tile by tile.

    The triangle below may hold anything (never computed): it is only written. Square tiles
    keep each transposed copy in cache: at 3,072 features 0.25 of the time of copying row
    blocks of 4M elements, the same matrix bit for bit.
    """
    n = matrix.shape[0]
    for start in range(0, n, tile):
        rows = slice(start, min(start + tile, n))
        for left in range(0, start, tile):
            cols = slice(left, left + tile)
            matrix[rows, cols] = matrix[cols, rows].T
        square = matrix[rows, rows]
        square.copy_(square.triu().add_(square.triu(1).T))


def floored_sigma(
    squares: Tensor, variance: Tensor, count: int, floor: float
) -> tuple[Tensor, Tensor, float]:
    """Return (raw σ, σ floored at ``floor`` times the features' RMS, that floor).

    squares: the sums of x² (the RMS magnitude s = sqrt(mean(squares) / count)); variance: the
    covariance's diagonal.
    """
    scale = torch.sqrt(squares.mean() / count)
    sigma_min = floor * max(float(scale), 1e-30)
    raw_sigma = torch.sqrt(torch.clamp(variance, min=0.0))
    return raw_sigma, raw_sigma.clamp(min=sigma_min), sigma_min


def join_zeros_(corr: Tensor, squares: Tensor) -> None:
    """Set the correlation of every two features that are exactly 0 on all the data to 1, in
    place (squares: the features' sums of x²).

    Such features (the zero rows an export pads a narrower layer with, a unit that never
    fires) compute the same thing, so merging them together is exact; with the floored σ they
    would correlate 0 with each other, and the greedy zip would merge real features instead.
    """
    zero = squares == 0
    if int(zero.sum()) > 1:
        index = zero.nonzero().flatten().to(corr.device)
        corr[index[:, None], index[None, :]] = 1.0


def unit_diagonal_(corr: Tensor, raw_sigma: Tensor, sigma_min: float) -> None:
    """Set the diagonal of ``corr`` to exactly 1 where σ is above its floor, in place.

    var / sqrt(var)**2 can miss 1 by an ulp.
    """
    diagonal = torch.diagonal(corr)
    diagonal.copy_(torch.where(raw_sigma >= sigma_min, torch.ones_like(diagonal), diagonal))
