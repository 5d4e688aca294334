"""Least-squares fusion: the unmerge that best predicts the features (docs/method.md sec. 9).

The paper fuses a weight that reads a merge point with the 0/1 unmerge U: W* = M_out W U, that
is W applied to the copy U z of the merged features z = M x. Least-squares fusion replaces U
with the linear regression of the parents' features x = [x_A ; x_B] on z over the calibration
data,

    Ũ = (Σ_xz + λ U)(Σ_zz + λ I)⁻¹,   Σ_xz = Σ Mᵀ,   Σ_zz = M Σ Mᵀ,

from the moments the feature pass already collected (Σ: the covariance of x). The best linear
prediction of any linear function L x from z is L Ũ z, so W* = M_out W Ũ is the merged weight
that best reproduces the averaged outputs M_out W x from the merged inputs (in the mean-squared
sense, with a ridge λ that pulls Ũ towards the paper's U: where the merged features determine
the parents' exactly (a permuted copy, rho = 0) Ũ is U whatever the ridge). Two forms:

- centred, with an intercept: x ≈ Ũ z + c, c = μ_x − Ũ μ_z. A reader with a bias takes the
  intercept into its bias (b* = M_out (b + W c)), which is the regression on the augmented
  input [z ; 1];
- through the origin (raw second moments instead of covariances): for readers without a bias
  and for the unmerge at a partial zip's stop point, which have nowhere to put an intercept.

The ridge is relative: λ = ridge · trace(Σ_zz) / r, so it does not depend on the features' scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from heterogui.config import DEFAULT_RIDGE
from heterogui.models.graph import ModelGraph, TensorTag
from heterogui.zip.collect import StatKey, pooled_moments, shared_spaces
from heterogui.zip.match import Match
from heterogui.zip.stats import Moments


@dataclass(frozen=True)
class Regression:
    """The least-squares unmerge of one merge point, split per model (A's rows first).

    Each form is fitted only when a reader needs it (``fit_regressions``); None otherwise.

    Attributes:
        centred: (U_A, U_B, ...), (n_m, r): the regression on the centred merged features.
        offset: (c_A, c_B, ...), (n_m,): its intercept, x_m ≈ U_m z + c_m.
        origin: (U_A, U_B, ...), (n_m, r): the regression through the origin, x_m ≈ U_m z.
    """

    centred: tuple[Tensor, ...] | None
    offset: tuple[Tensor, ...] | None
    origin: tuple[Tensor, ...] | None

    def to(self, dtype: torch.dtype, device: torch.device | str) -> Regression:
        """Return the regression in ``dtype`` on ``device``."""

        def move(parts: tuple[Tensor, ...] | None) -> tuple[Tensor, ...] | None:
            return None if parts is None else tuple(t.to(device=device, dtype=dtype) for t in parts)

        return Regression(move(self.centred), move(self.offset), move(self.origin))


def linear_read_space(tag: TensorTag) -> str | None:
    """Return the space a linear layer's or a convolution's weight reads, or None.

    Such a weight has its output at dim 0 and its input at dim 1 (and its name ends in
    ".weight"): what a least-squares regression can feed, with an intercept into its bias.
    """
    if not tag.name.endswith(".weight") or len(tag.axes) != 2:
        return None
    out, read = sorted(tag.axes, key=lambda a: a.dim)
    if (out.dim, out.role, read.dim, read.role) != (0, "out", 1, "in"):
        return None
    return read.space


def bias_name(tag: TensorTag) -> str:
    """Return the name of the bias next to weight ``tag`` ("X.weight" -> "X.bias")."""
    return tag.name[: -len("weight")] + "bias"


def solve_regression(sxz: Tensor, szz: Tensor, ridge: float, prior: Tensor) -> Tensor:
    """Return Ũ = (Σ_xz + λ P)(Σ_zz + λ I)⁻¹, (O, r), λ = ridge · trace(Σ_zz) / r.

    The ridge pulls Ũ towards ``prior`` P (the 0/1 unmerge U), not towards 0: it minimizes
    E‖x − Ũ z‖² + λ‖Ũ − P‖², so where x = P z holds exactly (a permuted copy, rho = 0) the
    solution is P whatever the ridge, and directions the data barely see keep the paper's U.
    """
    lam = ridge_lambda(szz, ridge)
    rhs = torch.add(sxz.T, prior.T, alpha=lam).contiguous()  # a new (r, O): sxz stays
    return ridge_solve(szz, lam, rhs).T


def ridge_lambda(szz: Tensor, ridge: float) -> float:
    """Return λ = ridge · trace(Σ_zz) / r (``ridge`` itself when the trace is 0)."""
    scale = float(torch.diagonal(szz).sum()) / szz.shape[0]
    return ridge * scale if scale > 0 else ridge


def ridge_solve(szz: Tensor, lam: float, rhs: Tensor) -> Tensor:
    """Return X = (Σ_zz + λ I)⁻¹ rhs, (r, k), by Cholesky (least squares where that fails)."""
    system = (szz + szz.T) / 2
    system.diagonal().add_(lam)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:  # not positive definite in floating point: least squares instead
        return torch.linalg.lstsq(system, rhs).solution
    return torch.cholesky_solve(rhs, factor)


def _merged_rows(moments: Moments, match: Match, centred: bool) -> Tensor:
    """Return M Σ, (r, O): Σ the covariance (centred) or the second moment, summed into the
    groups row block by row block (Σ is never formed whole). Σ is symmetric: M Σ = (Σ Mᵀ)ᵀ."""
    groups = match.groups.to(moments.device)
    shares = match.shares(moments.device)
    out = torch.zeros(match.width, moments.width, dtype=torch.float64, device=moments.device)
    for rows, block in moments.moment_blocks(centred):
        index, weights = groups[rows], shares[rows]
        if bool((index < 0).any()):  # dropped features: their rows join no group
            kept = torch.nonzero(index >= 0).reshape(-1)
            block, index, weights = block[kept], index[kept], weights[kept]
        out.index_add_(0, index, block.mul_(weights[:, None]))
    return out


def pivots(match: Match) -> Tensor:
    """Return, per group, the feature whose row of Ũ follows from the others', (r,) int64.

    The group's largest share (the last such feature on a tie). Its row need not be solved:
    the shares s of a group g sum to 1 and z_g = Σ_j s_j x_j exactly, so the regression's rows
    satisfy Σ_j s_j Ũ_j = e_g (the ridge's prior rows are e_g too): ``completed_unmerge``.
    """
    groups, shares = match.groups.numpy(), match.shares().numpy()
    kept = np.nonzero(groups >= 0)[0]
    order = kept[np.lexsort((kept, shares[kept], groups[kept]))]  # by group, share, index
    last = np.append(groups[order][1:] != groups[order][:-1], True)
    return torch.from_numpy(order[last].copy())


def completed_unmerge(solved: Tensor, rows: Tensor, match: Match, pivot: Tensor) -> Tensor:
    """Return Ũ, (O, r), from its rows ``rows`` (``solved``: their transpose, (r, len(rows)))
    and the groups: each pivot's row is (e_g − Σ_j s_j Ũ_j) / s_pivot over the group's other
    members j."""
    device = solved.device
    rows, pivot = rows.to(device), pivot.to(device)
    groups, shares = match.groups.to(device), match.shares(device).to(solved.dtype)
    fit = solved.new_empty(match.n_features, match.width)
    fit[rows] = solved.T
    members = rows[groups[rows] >= 0]
    known = solved.new_zeros(match.width, match.width)
    known.index_add_(0, groups[members], fit[members].mul_(shares[members, None]))
    known.neg_().diagonal().add_(1.0)  # e_g − Σ_j s_j Ũ_j
    fit[pivot] = known.div_(shares[pivot, None])
    return fit


def _solve(moments: Moments, match: Match, ridge: float, centred: bool) -> Tensor:
    """Return Ũ = (Σ Mᵀ + λ U)(M Σ Mᵀ + λ I)⁻¹, (O, r): Σ the covariance (centred) or the
    second moment. Only the rows of features that are no group's pivot are solved, and the
    prior U enters at its ones (no (O, r) matrix of it)."""
    device = moments.device
    merged_rows = _merged_rows(moments, match, centred)  # M Σ: (r, O)
    szz = match.average_columns(merged_rows)  # M Σ Mᵀ: (r, r)
    pivot = pivots(match)
    free = torch.ones(match.n_features, dtype=torch.bool)
    free[pivot] = False
    rows = torch.nonzero(free).reshape(-1)
    lam = ridge_lambda(szz, ridge)
    rhs = merged_rows[:, rows.to(device)]  # (Σ Mᵀ)ᵀ at the rows solved: (r, len(rows))
    member = torch.nonzero(match.groups[rows] >= 0).reshape(-1)
    rhs[match.groups[rows][member].to(device), member.to(device)] += lam  # + λ Uᵀ
    return completed_unmerge(ridge_solve(szz, lam, rhs), rows, match, pivot)


def regression_unmerge(
    moments: Moments,
    match: Match,
    ridge: float = DEFAULT_RIDGE,
    centred: bool = True,
    origin: bool = True,
) -> Regression:
    """Return the least-squares unmerge of a merge point from its moments and matching.

    Computed in float64 on the moments' device. centred / origin: fit that form (with its
    intercept) or through the origin; a form not fitted is None.

    Raises:
        ConfigError: no samples were accumulated.
    """
    fit_centred = offset = fit_origin = None
    if centred:
        fit, mean = _solve(moments, match, ridge, centred=True), moments.mean()
        merged_mean = match.average_columns(mean[None, :])[0]
        fit_centred = per_model(fit, match)
        offset = per_model(mean - fit @ merged_mean, match)
    if origin:
        fit_origin = per_model(_solve(moments, match, ridge, centred=False), match)
    return Regression(fit_centred, offset, fit_origin)


def per_model(t: Tensor, match: Match) -> tuple[Tensor, ...]:
    """Return the rows of ``t`` (O, ...) cut per model of ``match``."""
    return tuple(t[match.rows_of(m)].contiguous() for m in range(len(match.sizes)))


def fit_regressions(
    stats: dict[StatKey, Moments],
    graphs: Sequence[ModelGraph],
    matches: dict[str, Match],
    stop: int,
    ridge: float = DEFAULT_RIDGE,
) -> dict[str, Regression]:
    """Return the least-squares unmerge of every read merge point of ``matches``.

    Read: some trunk weight reads the space (an "in" axis), or it is the stop point. These
    keep the 0/1 unmerge: spaces without statistics (dead ones, a rotary attention output) and
    attention spaces, whose reader (the output projection) reads the attention-weighted values,
    not the values the statistics saw (with them the MiniLM pair's merge lost 5 points of STS
    Spearman; without, it gains at some settings: docs/transformers.md).
    """
    graph_a = graphs[0]
    forms = _reader_forms(graph_a, stop)
    with_bias, through_origin = forms
    return {
        space: regression_unmerge(
            pooled_moments(stats, graph_a, space, stop),
            matches[space],
            ridge,
            centred=space in with_bias,
            origin=space in through_origin,
        )
        for space in regressed_spaces(graphs, matches, stop, forms)
    }


def regressed_spaces(
    graphs: Sequence[ModelGraph],
    spaces: Iterable[str],
    stop: int,
    forms: tuple[set[str], set[str]] | None = None,
) -> list[str]:
    """Return the merge points of ``spaces`` that a least-squares fusion reads through its
    regression (``fit_regressions``): the others keep the paper's 0/1 unmerge. forms: the
    ``_reader_forms`` at ``stop`` when the caller has them."""
    graph_a = graphs[0]
    with_bias, through_origin = forms or _reader_forms(graph_a, stop)
    shared = set(shared_spaces(graphs))
    return [
        space
        for space in spaces
        if (space in with_bias or space in through_origin)
        and space in shared
        and graph_a.spaces[space].captures
        and not graph_a.spaces[space].head_dim
    ]


def _reader_forms(graph_a: ModelGraph, stop: int) -> tuple[set[str], set[str]]:
    """Return the spaces read with an intercept (a linear reader with a bias) and those read
    through the origin (every other reader, and the tails at the stop point)."""
    trunk = [t for t in graph_a.tensors if t.block < stop]
    names = {t.name for t in trunk}
    with_bias = {linear_read_space(t) for t in trunk if bias_name(t) in names} - {None}
    through_origin = {
        a.space
        for t in trunk
        if not (linear_read_space(t) and bias_name(t) in names)
        for a in t.axes
        if a.role == "in"
    }
    if stop > 0:  # the tails (the heads of a full zip) read the stop point through its unmerge
        through_origin.add(graph_a.block_out[stop - 1])
    return with_bias, through_origin
