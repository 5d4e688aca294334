"""Fuse weights with the per-space transforms: W* = sum_m M_m W_m U_m (docs/method.md sec. 9)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from heterogui.models.graph import INPUT, TensorTag
from heterogui.zip.matchers import Match


@dataclass(frozen=True)
class SpaceTransform:
    """The merge (M_m: (r, n_m)) and unmerge (U_m: (n_m, r)) matrices of a space, per model."""

    merge: tuple[torch.Tensor, torch.Tensor]
    unmerge: tuple[torch.Tensor, torch.Tensor]

    @property
    def width(self) -> int:
        """Return the merged width r."""
        return self.merge[0].shape[0]

    @classmethod
    def from_match(
        cls, match: Match, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> SpaceTransform:
        """Return the transform of a Match, in ``dtype`` on ``device``."""
        kw = {"dtype": dtype, "device": device}
        return cls((match.m_a(**kw), match.m_b(**kw)), (match.u_a(**kw), match.u_b(**kw)))


def apply_along(matrix: torch.Tensor, tensor: torch.Tensor, dim: int) -> torch.Tensor:
    """Return ``matrix`` applied to axis ``dim`` of ``tensor``.

    matrix: (r, n); tensor: (..., n at ``dim``, ...) -> (..., r at ``dim``, ...).
    """
    moved = tensor.movedim(dim, 0)
    out = matrix @ moved.reshape(moved.shape[0], -1)
    return out.reshape(matrix.shape[0], *moved.shape[1:]).movedim(0, dim)


def fuse_tensor(
    tensor_tag: TensorTag,
    tensors: tuple[torch.Tensor, torch.Tensor],
    transforms: Mapping[str, SpaceTransform],
) -> torch.Tensor:
    """Return the merged tensor: the sum over models of M (written axes) and U (read axes).

    A tensor that lives in no merged space (only the raw input) is averaged instead.
    """
    merged_axes = [a for a in tensor_tag.axes if a.space != INPUT]
    if not merged_axes:
        return (tensors[0] + tensors[1]) / 2
    total = None
    for m, tensor in enumerate(tensors):
        out = tensor
        for axis in merged_axes:
            tr = transforms[axis.space]
            matrix = tr.merge[m] if axis.role == "out" else tr.unmerge[m].T
            out = apply_along(matrix.to(out.dtype), out, axis.dim)
        total = out if total is None else total + out
    return total


def fuse_state(
    tags: tuple[TensorTag, ...],
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    transforms: Mapping[str, SpaceTransform],
    stop: int,
) -> dict[str, torch.Tensor]:
    """Return the merged tensors of every tagged tensor in blocks ``[0, stop)``."""
    return {
        t.name: fuse_tensor(t, (state_a[t.name], state_b[t.name]), transforms)
        for t in tags
        if t.block < stop
    }
