"""Fuse weights with the per-space transforms: W* = sum_m M_m W_m U_m (docs/method.md sec. 9).

With least-squares fusion (``fusion.regression``) a space's readers take its regression
unmerge instead of the 0/1 U, and a reader with a bias takes the regression's intercept into it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch

from heterogui.fusion.regression import Regression, bias_name, linear_read_space
from heterogui.models.graph import INPUT, TensorTag
from heterogui.zip.matchers import Match


class SpaceTransform:
    """The merge (M_m: (r, n_m)) and unmerge (U_m: (n_m, r)) matrices of a space, per model.

    Two models, or more for an N-way zip (the Match's ``sizes``).

    A transform of a Match (``from_match``) keeps the Match and applies M and U by indexing:
    M_m averages each group's members, U_mᵀ sums them, so a fusion costs one pass over the
    weights instead of a dense (r, n) product per axis, and the dense matrices (37 MB per
    1,536-neuron MLP of a 135M decoder) are only formed when someone reads ``merge`` or
    ``unmerge``. Both paths give the same numbers (to float rounding of groups of three or
    more members).

    regression: the least-squares unmerge of the space (``fusion.regression``), or None for the
    paper's 0/1 U. When set, readers take it (``along`` role "in") and ``unmerge`` is its
    through-origin form.
    """

    def __init__(
        self,
        merge: tuple[torch.Tensor, torch.Tensor] | None,
        unmerge: tuple[torch.Tensor, torch.Tensor] | None,
        match: Match | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        regression: Regression | None = None,
    ):
        if match is None and (merge is None or unmerge is None):
            raise ValueError("a SpaceTransform needs its matrices or a Match")
        self._merge, self._unmerge, self.match = merge, unmerge, match
        self._weights: torch.Tensor | None = None
        self._members: dict[int, Members] = {}
        self.dtype, self.device = dtype, torch.device(device)
        self.regression = None if regression is None else regression.to(dtype, device)
        if self.regression is not None:  # None: the space's readers all take the centred form
            self._unmerge = self.regression.origin

    @classmethod
    def from_match(
        cls,
        match: Match,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        regression: Regression | None = None,
    ) -> SpaceTransform:
        """Return the transform of a Match, in ``dtype`` on ``device``."""
        return cls(None, None, match, dtype, device, regression)

    @property
    def merge(self) -> tuple[torch.Tensor, ...]:
        """Return (M_A, M_B, ...), one per model, formed on first use."""
        if self._merge is None:
            kw = {"dtype": self.dtype, "device": self.device}
            self._merge = tuple(self.match.m_of(m, **kw) for m in range(len(self.match.sizes)))
        return self._merge

    @property
    def unmerge(self) -> tuple[torch.Tensor, ...]:
        """Return (U_A, U_B, ...), one per model, formed on first use.

        Raises:
            RuntimeError: the space has a regression without its through-origin form.
        """
        if self._unmerge is None and self.regression is not None:
            raise RuntimeError("no through-origin regression was fitted for this merge point")
        if self._unmerge is None:
            kw = {"dtype": self.dtype, "device": self.device}
            self._unmerge = tuple(self.match.u_of(m, **kw) for m in range(len(self.match.sizes)))
        return self._unmerge

    @property
    def width(self) -> int:
        """Return the merged width r."""
        return self.match.width if self.match is not None else self.merge[0].shape[0]

    def _group_weights(self) -> torch.Tensor:
        """Return 1 / group size, float64 (once per transform: every tensor of a space uses it)."""
        if self._weights is None:
            groups = self.match.groups
            sizes = torch.bincount(groups[groups >= 0], minlength=self.match.width)
            self._weights = 1.0 / sizes.to(torch.float64)
        return self._weights

    def along(
        self,
        model: int,
        role: str,
        tensor: torch.Tensor,
        dim: int,
        centred: bool = False,
        into: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return M_model (role "out") or U_modelᵀ (role "in") applied to axis ``dim``.

        centred: with a regression, read with its centred form (the caller adds the intercept
        to the reader's bias: ``intercept``); else with the through-origin form.
        into: add the result to this tensor (of the result's shape) in place and return it:
        the sum over models without a tensor per model.
        """
        if role == "in" and self.regression is not None:
            form = self.regression.centred if centred else self.regression.origin
            if form is None:  # fit_regressions fits the forms the space's readers take
                kind = "centred" if centred else "through-origin"
                raise RuntimeError(f"no {kind} regression was fitted for this merge point")
            return _added(apply_along(form[model].T.to(tensor.dtype), tensor, dim), into)
        if self.match is None:
            matrix = self.merge[model] if role == "out" else self.unmerge[model].T
            return _added(apply_along(matrix.to(tensor.dtype), tensor, dim), into)
        dim = dim % tensor.dim()
        device, trailing = tensor.device, [1] * (tensor.dim() - dim - 1)
        # Each group's first member of this model is gathered along ``dim`` in place (not moved
        # to the front first); its further members, few, are added in feature order, as a
        # scatter of every member (zeros, then index_add) would: that took 2-4 times as long,
        # on a 30,522-token embedding 93 ms a model against 42.
        members = self._members_of(model)
        if role == "out":  # M averages a group over all its members (or weighs them: shares)
            weight = self._group_weights()
            first_weight = weight if members.first_share is None else members.first_share
            first_weight = first_weight.to(device, tensor.dtype).reshape(-1, *trailing)
        first = members.first.to(device)
        if first.numel():
            part = tensor.index_select(dim, first)  # never the caller's tensor
            if role == "out":
                part.mul_(first_weight)
            if members.missing is not None:  # groups without a member of this model
                part.index_fill_(dim, members.missing.to(device), 0)
            into = part if into is None else into.add_(part)
        elif into is None:  # no feature of this model is kept
            shape = list(tensor.shape)
            shape[dim] = self.match.width
            into = tensor.new_zeros(shape)
        if members.more is not None:
            more, groups = members.more.to(device), members.more_groups.to(device)
            rows = tensor.index_select(dim, more)
            if role == "out":
                share = members.more_share
                share = weight.index_select(0, members.more_groups) if share is None else share
                rows.mul_(share.to(device, tensor.dtype).reshape(-1, *trailing))
            into.index_add_(dim, groups, rows)
        return into

    def _members_of(self, model: int) -> Members:
        """Return where model ``model``'s kept features go: each group's first, then the rest."""
        if model not in self._members:
            m = self.match
            groups = m.groups[m.rows_of(model)]
            features = torch.nonzero(groups >= 0).reshape(-1)
            owner = groups[features]
            first_of = torch.full((m.width,), -1, dtype=torch.int64)
            first_of.scatter_reduce_(0, owner, features, "amin", include_self=False)
            is_first = first_of[owner] == features
            more = features[~is_first]
            first = first_of if bool((first_of >= 0).all()) else first_of.clamp(min=0)
            missing = torch.nonzero(first_of < 0).reshape(-1)
            shares = None if m.weights is None else m.weights[m.rows_of(model)]
            self._members[model] = Members(
                first if features.numel() else features,
                missing if missing.numel() else None,
                more if more.numel() else None,
                owner[~is_first] if more.numel() else None,
                None if shares is None or not features.numel() else shares[first],
                None if shares is None or not more.numel() else shares[more],
            )
        return self._members[model]


@dataclass(frozen=True)
class Members:
    """Where a model's kept features go in the groups of a merge point (``_members_of``).

    first: (r,) each group's first member of the model (feature order; 0 where it has none),
    or empty when the model keeps no feature; missing: the groups without a member of the
    model, or None; more, more_groups: the other kept features, in feature order, and their
    groups, or None when every group has at most one member of the model. first_share,
    more_share: their entries of M when the Match has ``weights`` (else None: M averages).
    """

    first: torch.Tensor
    missing: torch.Tensor | None
    more: torch.Tensor | None
    more_groups: torch.Tensor | None
    first_share: torch.Tensor | None = None
    more_share: torch.Tensor | None = None


def _added(value: torch.Tensor, into: torch.Tensor | None) -> torch.Tensor:
    """Return ``value``, or ``into`` with ``value`` added in place."""
    return value if into is None else into.add_(value)


def apply_along(matrix: torch.Tensor, tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Return ``matrix`` applied to axis ``dim`` of ``tensor``.

    matrix: (r, n); tensor: (..., n at ``dim``, ...) -> (..., r at ``dim``, ...).
    """
    moved = tensor.movedim(dim, 0)
    out = matrix @ moved.reshape(moved.shape[0], -1)
    return out.reshape(matrix.shape[0], *moved.shape[1:]).movedim(0, dim)


def fuse_tensor(
    tensor_tag: TensorTag,
    tensors: Sequence[torch.Tensor],
    transforms: Mapping[str, SpaceTransform],
    centred: bool = False,
) -> torch.Tensor:
    """Return the merged tensor: the sum over models of M (written axes) and U (read axes).

    A tensor that lives in no merged space (only the raw input) is averaged instead.
    centred: read axes with a regression use its centred form (see ``SpaceTransform.along``).
    """
    merged_axes = [a for a in tensor_tag.axes if a.space != INPUT]
    if not merged_axes:
        return sum(tensors[1:], tensors[0]) / len(tensors)
    *first, last = merged_axes
    total = None
    for m, tensor in enumerate(tensors):
        out = tensor
        for axis in first:
            out = transforms[axis.space].along(m, axis.role, out, axis.dim, centred)
        # the last axis adds each model's part into one tensor
        total = transforms[last.space].along(m, last.role, out, last.dim, centred, into=total)
    return total


def fuse_live(
    tensor_tag: TensorTag,
    tensors: Sequence[torch.Tensor],
    transforms: Mapping[str, SpaceTransform],
    live: Sequence[bool],
) -> torch.Tensor:
    """Return the merged tensor averaged over the live models' members of each group.

    For a tensor that only some models use (``ModelGraph.inert``: an identity layer's norms):
    a group with a live member takes the mean of its live members; a group of inert members
    only keeps their mean. A tensor with a read axis is fused as usual.
    """
    plain = fuse_tensor(tensor_tag, tensors, transforms)
    if any(a.role != "out" for a in tensor_tag.axes if a.space != INPUT):
        return plain
    zeros = [torch.zeros_like(t) for t in tensors]
    kept = [t if on else z for t, z, on in zip(tensors, zeros, live, strict=True)]
    ones = [torch.ones_like(t) if on else z for t, z, on in zip(tensors, zeros, live, strict=True)]
    total = fuse_tensor(tensor_tag, kept, transforms)
    share = fuse_tensor(tensor_tag, ones, transforms)  # the live members' share of each group
    return torch.where(share > 0, total / share.where(share > 0, 1.0), plain)


def regression_reader(tag: TensorTag, transforms: Mapping[str, SpaceTransform]) -> str | None:
    """Return the space ``tag`` reads through a regression, or None.

    A weight (out at dim 0, in at dim 1: a linear layer or a convolution) whose input space has
    a least-squares regression.
    """
    space = linear_read_space(tag)
    transform = transforms.get(space) if space is not None else None
    return space if transform is not None and transform.regression is not None else None


def intercept_reader(
    tag: TensorTag, names: Collection[str], transforms: Mapping[str, SpaceTransform]
) -> str | None:
    """Return the bias that takes the intercept of the regression ``tag`` reads, or None.

    A ``regression_reader`` whose layer has a bias next to it ("X.weight" and "X.bias").
    """
    bias = bias_name(tag)
    return bias if regression_reader(tag, transforms) and bias in names else None


def intercept(
    tag: TensorTag,
    tensors: Sequence[torch.Tensor],
    transforms: Mapping[str, SpaceTransform],
) -> torch.Tensor:
    """Return M_out Σ_m W_m c_m: what the intercept of the read space adds to the merged bias.

    A convolution adds its kernel's sum (exact away from the zero-padded border).
    """
    out, read = sorted(tag.axes, key=lambda a: a.dim)
    offsets = transforms[read.space].regression.offset
    total = None
    for m, weight in enumerate(tensors):
        c = offsets[m].to(weight.dtype).reshape(1, -1, *([1] * (weight.dim() - 2)))
        response = (weight * c).sum(dim=tuple(range(1, weight.dim())))
        moved = transforms[out.space].along(m, "out", response, 0)
        total = moved if total is None else total + moved
    return total


def fuse_state(
    tags: tuple[TensorTag, ...],
    states: Sequence[Mapping[str, torch.Tensor]],
    transforms: Mapping[str, SpaceTransform],
    stop: int,
    inert: Sequence[Collection[str]] = (),
) -> dict[str, torch.Tensor]:
    """Return the merged tensors of every tagged tensor in blocks ``[0, stop)``.

    states: the (padded) models' state dicts, in the transforms' model order.
    inert: per model, the tensors that do not change its function (``ModelGraph.inert``); where
    another model's tensor is live, they are left out of the groups' averages (``fuse_live``).
    A reader of a space with a regression: its bias (if it has one) takes the intercept.
    """
    trunk = [t for t in tags if t.block < stop]
    names = {t.name for t in trunk}
    fused, corrections = {}, {}
    for t in trunk:
        pair = [state[t.name] for state in states]
        live = [t.name not in names_m for names_m in inert]
        if any(live) and not all(live):
            fused[t.name] = fuse_live(t, pair, transforms, live)
            continue
        bias = intercept_reader(t, names, transforms)
        fused[t.name] = fuse_tensor(t, pair, transforms, centred=bias is not None)
        if bias is not None:
            corrections[bias] = intercept(t, pair, transforms)
    for bias, correction in corrections.items():
        fused[bias] = fused[bias] + correction
    return fused
