"""Describe a model as data: feature spaces and the weights that read and write them.

Every family (MLP, VGG, ResNet, BERT ...) exposes its parameters as ``TensorTag`` records that
say, per tensor axis, which feature space it writes ("out": merged with M) or reads ("in":
merged with U). Merging is then one generic path (docs/method.md sec. 9): for a merged tensor,
``W* = sum_m  M_m  W_m  U_m`` applied axis by axis.

A model is a sequence of blocks (``BlockNet``); the last block is the task head. Spaces are
observed at module outputs (``Capture``); a space may be observed at several places (a residual
stream is seen after the stem and after every block of its stage) and its statistics are
pooled over all of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

Layout = Literal["flat", "channels", "tokens"]
Role = Literal["out", "in"]

INPUT = "input"
LOGITS = "logits"
STREAM = "stream"  # a transformer's residual stream (BERT, ViT, GPT-2, decoders)


@dataclass(frozen=True)
class Capture:
    """Where a feature space is observed: the output of module ``module``.

    layout: "flat" for (B, C), "channels" for conv maps (B, C, *spatial) with every position a
    sample, "tokens" for (B, T, C) with every (unpadded) token a sample.
    block: index of the block that owns the module (for partial zip and alignment).
    affine: the module whose per-feature scale (weight) and shift (bias) act last on this
        output: a norm, or the linear layer itself; None where the output is a sum (a residual
        stream) or comes out of a nonlinearity. Renormalization (``fusion.renormalize``)
        corrects the merged features there.
    shift: whether the affine module's bias shifts this output (False: a scale only, as the
        up projection of a gated MLP scales the product it feeds).
    """

    module: str
    layout: Layout
    block: int
    affine: str | None = None
    shift: bool = True


@dataclass(frozen=True)
class Space:
    """A feature space with its width in one model.

    head_dim: for attention spaces, the size of one head (features are matched within heads).
    group: spaces whose heads must be paired together (the Q/K and V/O spaces of one attention
        layer: head h's attention pattern weighs head h's values), None for a group of one.
    role: the space's part in a rotary, grouped-query attention layer ("q", "k", "v", "o"; None
        elsewhere). Rotary positions tie q/k feature j of a head to a frequency, so q and k
        features never move inside a head; "o" (the attention output, read by o_proj) has no
        statistics of its own: its matching follows the query heads' pairing and v's features
        (docs/method.md sec. 8).
    unit_heads: heads per pairing unit (q and o of grouped-query attention: the query heads of
        one key/value head move together with it; 1 elsewhere).
    norm_outputs: outputs in this space that only renormalization reads (``fusion.renormalize``):
        a pre-norm model's norm outputs, which its attention and MLP read, each written last by
        the norm itself (``Capture.affine``). They are not statistics captures.
    """

    name: str
    width: int
    captures: tuple[Capture, ...] = ()
    head_dim: int | None = None
    group: str | None = None
    role: str | None = None
    unit_heads: int = 1
    norm_outputs: tuple[Capture, ...] = ()

    @property
    def unit(self) -> int | None:
        """Return the features of one pairing unit (a head, or a query group), None if free."""
        return self.head_dim * self.unit_heads if self.head_dim else None


@dataclass(frozen=True)
class RmsStream:
    """A residual stream that only RMSNorms read (a pre-norm decoder's): the merged model weighs
    its features in those norms (``fusion.norm_weights``).

    space: the stream's space. gains: the RMSNorms' weights (state-dict keys); every other
    tensor with an out axis on the stream writes it. normed_blocks: the blocks whose output is
    an RMSNorm's (the final norm's), not the stream itself.
    """

    space: str
    gains: frozenset[str]
    normed_blocks: frozenset[int]


@dataclass(frozen=True)
class Axis:
    """One axis of a tensor that lives in a feature space."""

    dim: int
    space: str
    role: Role


@dataclass(frozen=True)
class TensorTag:
    """A parameter (state-dict key) with the feature spaces of its axes."""

    name: str
    axes: tuple[Axis, ...]
    block: int


@dataclass(frozen=True)
class ModelGraph:
    """The spaces and tagged tensors of one model, plus its block structure.

    stages: block indices per stage (the unit of layer alignment; the stem and the head are not
    in any stage). block_out: the space each block's output lives in (None for the head).
    dead: the spaces of identity blocks that carry nothing. inert: the tensors that do not change
    the model's function, whatever their values: the norms of a pre-norm identity layer, which
    only its dead spaces read (``inert_norms``); fusion leaves them out of a group's average
    wherever another model's tensor is live (``fusion.fuse.fuse_state``). batch_norms: (layer,
    BatchNorm) module names, each BatchNorm with the layer whose output it normalizes (fusion in
    BatchNorm units reads them: ``fusion.bn_units``). rms_stream: the residual stream when only
    RMSNorms read it (None elsewhere).
    """

    spaces: dict[str, Space]
    tensors: tuple[TensorTag, ...]
    stages: tuple[tuple[int, ...], ...]
    block_out: tuple[str | None, ...]
    dead: frozenset[str] = field(default_factory=frozenset)
    inert: frozenset[str] = field(default_factory=frozenset)
    batch_norms: tuple[tuple[str, str], ...] = ()
    rms_stream: RmsStream | None = None

    @property
    def num_blocks(self) -> int:
        """Return the number of blocks, head included."""
        return len(self.block_out)

    def widths(self) -> dict[str, int]:
        """Return the width of every space."""
        return {name: s.width for name, s in self.spaces.items()}

    def readers(self, space: str) -> list[tuple[str, int]]:
        """Return (tensor name, axis) of every tensor that reads ``space`` (an "in" axis)."""
        return [
            (t.name, a.dim)
            for t in self.tensors
            for a in t.axes
            if a.space == space and a.role == "in"
        ]


def space_order(name: str) -> tuple:
    """Return a sort key of merge point names that puts layer2 before layer10 (reports, tables)."""
    return tuple(int(t) if t.isascii() and t.isdigit() else t for t in re.split(r"(\d+)", name))


def out_axis(space: str, dim: int = 0) -> Axis:
    """Return an axis written by this tensor (merged with M)."""
    return Axis(dim, space, "out")


def in_axis(space: str, dim: int = 1) -> Axis:
    """Return an axis read by this tensor (merged with U)."""
    return Axis(dim, space, "in")


def tag(name: str, block: int, *axes: Axis) -> TensorTag:
    """Return a TensorTag for state-dict key ``name`` owned by ``block``."""
    return TensorTag(name, tuple(axes), block)


def inert_norms(
    tensors: list[TensorTag], identity_blocks: frozenset[int], norms: tuple[str, ...]
) -> frozenset[str]:
    """Return the tensors of the norms named ``norms`` inside the identity blocks.

    In a pre-norm layer whose output projections are zero, the norms feed only the layer's dead
    spaces: their values (1 and 0 as built) do not change the function.
    """
    prefixes = tuple(f"blocks.{k}.{norm}." for k in identity_blocks for norm in norms)
    return frozenset(t.name for t in tensors if t.name.startswith(prefixes))


def norm_tags(prefix: str, block: int, space: str, batch_norm: bool = True) -> list[TensorTag]:
    """Return the tags of a norm layer's vectors (BatchNorm running statistics included)."""
    names = ("weight", "bias", "running_mean", "running_var") if batch_norm else ("weight", "bias")
    return [tag(f"{prefix}.{n}", block, out_axis(space)) for n in names]


class BlockNet(nn.Module):
    """A network run as a plain sequence of blocks; the last block is the task head.

    Families build their modules as BlockNets so that a merged model can run a merged trunk
    (blocks ``[0, s)``) followed by one tail per model (blocks ``[s, end)``).
    """

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def run(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run blocks ``[start, stop)`` on ``x``."""
        for block in list(self.blocks)[start:stop]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def unshared_spaces(graphs: Sequence[ModelGraph]) -> set[str]:
    """Return the spaces fewer than two of the (padded) models use: where the others have an
    identity block's dead space, the one model's features are kept as they are, never zipped."""
    return {n for n in graphs[0].spaces if sum(n not in g.dead for g in graphs) < 2}
