"""A matcher's result: a partition of a merge point's features into groups (docs/method.md sec. 7).

The merged model has one feature per group; the merge matrix M averages a group, the unmerge
matrix U copies a group back to its members.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from heterogui.errors import MatcherError

Device = torch.device | str | None


@dataclass(frozen=True)
class MatchCounts:
    """How a Match combined features: per-group tallies for display.

    Attributes:
        groups: number of groups r.
        cross: groups holding features of both models.
        within_a: A features folded into a group that already has an A feature (Σ max(a-1, 0)).
        within_b: the same for B.
        dropped: features assigned to no group.
        within: the same for every model, in order (an N-way match: A, B, C, ...).
    """

    groups: int
    cross: int
    within_a: int
    within_b: int
    dropped: int
    within: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Match:
    """A partition of the O = n_a + n_b (+ ...) features of one merge point into `width` groups.

    Attributes:
        groups: (O,) int64, the group of each feature (A's first) in [0, width), or -1 for a
            dropped feature (contributes nothing, reconstructed as 0). Groups are numbered in
            order of their smallest member index.
        n_a: number of features of model A.
        n_b: number of features of model B.
        width: number of groups r (the merged width).
        more: the numbers of features of a third, fourth, ... model (an N-way zip), after B's.
        weights: (O,) float64, each feature's share in its group's merged feature (the entries
            of M; every group's sum 1, a dropped feature's 0), or None: the group's average.
            Head selection (``zip.select``) gives one member of a group all of it; U still
            copies the group back to every member.
    """

    groups: Tensor
    n_a: int
    n_b: int
    width: int
    more: tuple[int, ...] = ()
    weights: Tensor | None = None

    @classmethod
    def of_sizes(cls, groups: Tensor, sizes: tuple[int, ...], width: int) -> Match:
        """Return the Match of models with ``sizes`` features each (two or more)."""
        return cls(groups, sizes[0], sizes[1], width, tuple(sizes[2:]))

    def __post_init__(self) -> None:
        g = torch.as_tensor(self.groups).detach().to("cpu", torch.int64).reshape(-1)
        object.__setattr__(self, "groups", g)
        object.__setattr__(self, "more", tuple(int(n) for n in self.more))
        o = sum(self.sizes)
        if g.numel() != o:
            what = "n_a + n_b" if not self.more else "the sum of the widths"
            raise MatcherError(f"groups has {g.numel()} entries, expected {what} = {o}")
        if self.width < 1 or (o and (int(g.min()) < -1 or int(g.max()) >= self.width)):
            raise MatcherError(f"group ids must lie in [-1, {self.width}), width must be >= 1")
        kept = g[g >= 0].numpy()
        _, first = np.unique(kept, return_index=True)
        if first.size != self.width or not np.all(kept[np.sort(first)] == np.arange(self.width)):
            raise MatcherError(
                "groups must use every id in [0, width) and number groups in order of their "
                "smallest member"
            )

        if self.weights is not None:
            object.__setattr__(self, "weights", self._checked_weights(self.weights))

    def _checked_weights(self, weights: Tensor) -> Tensor:
        """Return ``weights`` as (O,) float64 on the CPU, checked to be shares of groups."""
        w = torch.as_tensor(weights).detach().to("cpu", torch.float64).reshape(-1)
        if w.numel() != self.groups.numel() or not bool(torch.isfinite(w).all() & (w >= 0).all()):
            raise MatcherError(
                f"merge weights must be {self.groups.numel()} finite numbers >= 0, one a feature"
            )
        kept = self.groups >= 0
        sums = torch.zeros(self.width, dtype=torch.float64).index_add_(
            0, self.groups[kept], w[kept]
        )
        if bool((w[~kept] != 0).any()) or not torch.allclose(sums, torch.ones_like(sums)):
            raise MatcherError("merge weights must sum to 1 in every group and be 0 where dropped")
        return w

    @property
    def sizes(self) -> tuple[int, ...]:
        """Return the number of features of every model, in order."""
        return (self.n_a, self.n_b, *self.more)

    @property
    def n_features(self) -> int:
        """Return O, the features of all models."""
        return sum(self.sizes)

    def rows_of(self, model: int) -> slice:
        """Return the slice of model ``model``'s features (0 = A) in the O features."""
        start = sum(self.sizes[:model])
        return slice(start, start + self.sizes[model])

    def owners(self) -> Tensor:
        """Return the model of every feature, (O,) int64."""
        return torch.repeat_interleave(torch.arange(len(self.sizes)), torch.tensor(self.sizes))

    def unmerge(self, dtype: torch.dtype = torch.float64, device: Device = None) -> Tensor:
        """Return U, (O, r) 0/1 membership; the row of a dropped feature is all zero."""
        u = torch.zeros(self.n_features, self.width, dtype=dtype, device=device)
        rows = torch.nonzero(self.groups >= 0).reshape(-1)
        u[rows.to(u.device), self.groups[rows].to(u.device)] = 1
        return u

    def merge(self, dtype: torch.dtype = torch.float64, device: Device = None) -> Tensor:
        """Return M, (r, O): each row averages its group (U / column sums, transposed), or
        weighs it by ``weights``."""
        u = self.unmerge(torch.float64, device)
        return (u * self.shares(u.device)[:, None]).T.contiguous().to(dtype)

    def shares(self, device: Device = None) -> Tensor:
        """Return each feature's share in its group's merged feature, (O,) float64: the
        entries of M (``weights``, or 1 / the group's size); 0 for a dropped feature."""
        if self.weights is not None:
            return self.weights.to(device)
        kept = self.groups >= 0
        sizes = torch.bincount(self.groups[kept], minlength=self.width).to(torch.float64)
        shares = torch.zeros(self.n_features, dtype=torch.float64)
        shares[kept] = 1.0 / sizes[self.groups[kept]]
        return shares.to(device)

    def average_columns(self, matrix: Tensor) -> Tensor:
        """Return ``matrix`` Mᵀ: (rows, r), column g the mean of the columns in group g (or
        their sum by ``weights``).

        matrix: (rows, O). The sparse form of the product with M: no (r, O) matrix is formed.
        The columns are summed as rows of the transpose (whole rows added at a time: 8 times
        faster than adding columns at (1,536, 3,072), the same sums bit for bit).
        """
        groups = self.groups.to(matrix.device)
        kept = torch.nonzero(groups >= 0).reshape(-1)
        shares = self.shares(matrix.device).to(matrix.dtype)[kept]
        columns = matrix[:, kept].T.contiguous().mul_(shares[:, None])  # (kept, rows)
        out = matrix.new_zeros(self.width, matrix.shape[0])
        return out.index_add_(0, groups[kept], columns).T.contiguous()

    def m_of(self, model: int, dtype: torch.dtype = torch.float64, device: Device = None) -> Tensor:
        """Return M_m, the columns of M of model ``model``: (r, n_m)."""
        return self.merge(dtype, device)[:, self.rows_of(model)].contiguous()

    def u_of(self, model: int, dtype: torch.dtype = torch.float64, device: Device = None) -> Tensor:
        """Return U_m, the rows of U of model ``model``: (n_m, r)."""
        return self.unmerge(dtype, device)[self.rows_of(model)].contiguous()

    def m_a(self, dtype: torch.dtype = torch.float64, device: Device = None) -> Tensor:
        """Return M_A = M[:, :n_a], (r, n_a)."""
        return self.m_of(0, dtype, device)

    def m_b(self, dtype: torch.dtype = torch.float64, device: Device = None) -> Tensor:
        """Return M_B = M[:, n_a:n_a + n_b], (r, n_b)."""
        return self.m_of(1, dtype, device)

    def u_a(self, dtype: torch.dtype = torch.float64, device: Device = None) -> Tensor:
        """Return U_A = U[:n_a], (n_a, r)."""
        return self.u_of(0, dtype, device)

    def u_b(self, dtype: torch.dtype = torch.float64, device: Device = None) -> Tensor:
        """Return U_B = U[n_a:n_a + n_b], (n_b, r)."""
        return self.u_of(1, dtype, device)

    def cross_pairs(self) -> Tensor:
        """Return the (a, b) index pairs sharing a group, (k, 2) int64, b counted within B."""
        ga, gb = self.groups[self.rows_of(0)], self.groups[self.rows_of(1)]
        same = (ga[:, None] == gb[None, :]) & (ga[:, None] >= 0)
        return torch.nonzero(same)

    def members_per_model(self) -> list[Tensor]:
        """Return, per model, how many of its features each group holds: (width,) int64 each."""
        counts = []
        for m in range(len(self.sizes)):
            g = self.groups[self.rows_of(m)]
            counts.append(torch.bincount(g[g >= 0], minlength=self.width))
        return counts

    def shared_groups(self) -> Tensor:
        """Return which groups hold features of two or more models: (width,) bool."""
        return torch.stack([c > 0 for c in self.members_per_model()]).sum(0) > 1

    def counts(self) -> MatchCounts:
        """Return how many groups are cross-model and how many within-model merges happened.

        cross: groups with features of two or more models; within_a / within_b: of A and B;
        within: of every model.
        """
        per_model = self.members_per_model()
        within = tuple(int((members - 1).clamp(min=0).sum()) for members in per_model)
        return MatchCounts(
            groups=self.width,
            cross=int(self.shared_groups().sum()),
            within_a=within[0],
            within_b=within[1],
            dropped=int((self.groups < 0).sum()),
            within=within,
        )


def canonical_groups(labels: np.ndarray) -> Tensor:
    """Renumber group labels (any ints, -1 = dropped) by order of smallest member."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    kept = labels >= 0
    uniq, first, inverse = np.unique(labels[kept], return_index=True, return_inverse=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.size)
    out[kept] = rank[inverse]
    return torch.from_numpy(out)
