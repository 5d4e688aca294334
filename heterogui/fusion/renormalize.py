"""Renormalization: the merged features get the parents' mean and scale (docs/method.md sec. 9).

Averaging matched weights shrinks the merged features: a group's members are not perfectly
correlated, so their average varies less than each of them (REPAIR's observation). BatchNorm
models get their statistics back from BatchNorm re-estimation; transformers (LayerNorm,
RMSNorm) do not. Renormalization runs A and B over the calibration data once (and the merged
trunk block by block), reads every merge point where a per-feature affine module writes the
output last (``Capture.affine``: the post-LN norms of BERT, value projections, a gated MLP's up
projection, the final norm; ``Space.norm_outputs``: the norms of pre-norm layers), and
rescales that module so each merged feature gets its group's average statistics:

- with a shift (a bias): mean μ_t = mean of the members' means, spread σ_t = mean of their
  standard deviations; w ← w σ_t/σ, b ← (b − μ) σ_t/σ + μ_t;
- without one: the root mean square, w ← w rms_t/rms.

Residual streams of pre-norm models are sums and have no such module; the norms that read them
are corrected instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from heterogui.distributed import all_reduce_sum_
from heterogui.fusion.merged import MergedModel
from heterogui.models.capture import (
    Batch,
    CapturePass,
    capture_outputs,
    to_device,
    to_rows,
    token_mask,
)
from heterogui.models.family import Network
from heterogui.models.graph import Capture
from heterogui.models.lengths import by_length
from heterogui.zip.match import Match

# features whose spread in the merged model is below this fraction of the point's RMS keep
# their scale (a dead or constant feature has nothing to rescale)
FLOOR = 1e-6


class _Sums:
    """Per-feature sum, sum of squares and count of one capture in one model, float64."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None
        self.count = 0

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.to(torch.float64)
        total, squares = rows.sum(0), (rows * rows).sum(0)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += rows.shape[0]

    def all_reduce(self) -> None:
        """Sum over the ranks under torchrun (``heterogui.distributed``; a no-op otherwise)."""
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.total.device)
        all_reduce_sum_(self.total)
        all_reduce_sum_(self.squares)
        self.count = int(all_reduce_sum_(count).item())

    def mean(self) -> torch.Tensor:
        return self.total / self.count

    def rms(self) -> torch.Tensor:
        return (self.squares / self.count).sqrt()

    def std(self) -> torch.Tensor:
        return (self.squares / self.count - self.mean() ** 2).clamp(min=0).sqrt()


def merged_name(module: str) -> str:
    """Return the merged model's name of a trunk module ("blocks.3.x" -> "trunk.3.x")."""
    return "trunk." + module[len("blocks.") :]


def renormalized_points(
    net_a: Network, net_b: Network, matches: Mapping[str, Match], stop: int
) -> list[tuple[str, Capture]]:
    """Return (space, capture) of every merged output with an affine module, before ``stop``.

    The captures with an affine module, and the norm outputs (``Space.norm_outputs``) of
    blocks that are real in both models (an identity block's norms feed layers that add
    nothing, so their statistics are no target).
    """
    ga, gb = net_a.graph(), net_b.graph()
    dead = ga.dead | gb.dead
    identity = net_a.identity_blocks | net_b.identity_blocks
    return [
        (name, cap)
        for name, space in ga.spaces.items()
        if name in matches and name not in dead
        for cap in (
            *(c for c in space.captures if c.affine is not None),
            *(c for c in space.norm_outputs if c.block not in identity),
        )
        if cap.block < stop
    ]


def renormalizes(net_a: Network, net_b: Network) -> bool:
    """Return whether renormalization would correct anything in a merge of these models."""
    graph = net_a.graph()
    return bool(renormalized_points(net_a, net_b, graph.spaces, graph.num_blocks))


@torch.no_grad()
def renormalize(
    model: MergedModel,
    net_a: Network,
    net_b: Network,
    matches: Mapping[str, Match],
    batches: Iterable[Batch],
    device: torch.device | str,
    stop: int,
    parent_sums: Callable[[], list[dict[str, _Sums]]] | None = None,
) -> int:
    """Rescale the merged model's affine modules in place; return the outputs corrected.

    parent_sums: returns ``parents_statistics`` of these models and batches (a re-merge keeps
    them: they do not depend on the matching); default: computed here.

    model: the merged model (``fusion.merged.MergedModel``) of the padded ``net_a`` and
    ``net_b`` with ``matches``, before any re-estimation. A and B run once; the merged trunk
    runs block by block on the stored states between blocks, each block corrected before its
    output is passed on, so each block is measured on the corrected features it will read
    (correcting every block from one pass compounds the shifts: on the MiniLM pair that cost
    17 points of STS Spearman). Each trunk block runs twice: about two forwards in all.
    """
    points = renormalized_points(net_a, net_b, matches, stop)
    if not points:
        return 0
    batches = by_length(batches)  # per-feature sums over tokens: any grouping, less padding
    parents = (parent_sums or (lambda: parents_statistics(net_a, net_b, batches, device)))()
    was_training = model.training
    model.eval()
    # the trunk's state between blocks, batch by batch (block 0 reads the batch itself)
    moved = [to_device(batch, device) for batch in batches]
    masks = [token_mask(batch) for batch in moved]
    # a float64 merge reads the float32 inputs its parents read (a ViT's pixels) in its dtype
    states = [model.in_own_dtype(batch) for batch in moved]
    last = max(cap.block for _, cap in points)
    for k, block in enumerate(model.trunk[: last + 1]):
        here = [(space, cap) for space, cap in points if cap.block == k]
        if here:
            merged = _block_sums(model, block, [_renamed(cap) for _, cap in here], states, masks)
            for space, cap in here:
                merged_sums = merged[merged_name(cap.module)]
                sums = [parents[0][cap.module], parents[1][cap.module], merged_sums]
                _rescale(model, cap, sums, matches[space])
        if k < last:  # the corrected block's output is what the next block reads
            states = [block(state) for state in states]
    model.train(was_training)
    return len(points)


def _block_sums(
    model: nn.Module,
    block: nn.Module,
    caps: list[Capture],
    states: list[Any],
    masks: list[torch.Tensor | None],
) -> dict[str, _Sums]:
    """Run one trunk block on the stored states; return the sums of its captured outputs.

    Keyed by the merged model's module names (``caps`` are already renamed).
    """
    sums = {cap.module: _Sums() for cap in caps}
    with capture_outputs(model, list(sums)) as found:
        for state, mask in zip(states, masks, strict=True):
            block(state)
            for cap in caps:
                sums[cap.module].add(to_rows(found[cap.module], cap.layout, mask))
    for s in sums.values():
        s.all_reduce()  # the whole data's sums under torchrun
    return sums


def parents_statistics(
    net_a: Network, net_b: Network, batches: list[Batch], device: torch.device | str
) -> list[dict[str, _Sums]]:
    """Return A's and B's per-feature sums at every output renormalization may correct.

    One pass of each model; keyed by module name.
    """
    graph = net_a.graph()
    points = renormalized_points(net_a, net_b, graph.spaces, graph.num_blocks)
    modules = sorted({cap.module for _, cap in points})
    batches = by_length(batches)
    return [_sums(net.module, modules, points, batches, device) for net in (net_a, net_b)]


def _renamed(cap: Capture) -> Capture:
    return dataclasses.replace(cap, module=merged_name(cap.module))


def _sums(
    module: nn.Module,
    names: list[str],
    points: list[tuple[str, Capture]],
    batches: list[Batch],
    device: torch.device | str,
) -> dict[str, _Sums]:
    """Run ``module`` over the batches; return per-feature sums of each captured output."""
    capture = CapturePass(module, names)
    sums = {cap.module: _Sums() for _, cap in points}
    for batch in batches:
        batch = to_device(batch, device)
        mask = token_mask(batch)
        found = capture(batch)
        for _, cap in points:
            sums[cap.module].add(to_rows(found[cap.module], cap.layout, mask))
    for s in sums.values():
        s.all_reduce()  # the whole data's sums under torchrun
    return sums


def _rescale(model: nn.Module, cap: Capture, sums: list[_Sums], match: Match) -> None:
    """Rescale the merged affine module of ``cap`` towards its groups' average statistics."""
    parents, merged = sums[:2], sums[2]
    writer = model.get_submodule(merged_name(cap.affine))
    bias = getattr(writer, "bias", None)
    shift = cap.shift and bias is not None
    measure = (lambda s: s.std()) if shift else (lambda s: s.rms())
    target = match.average_columns(torch.cat([measure(s) for s in parents])[None])[0]
    now = measure(merged)
    floor = FLOOR * float(merged.rms().pow(2).mean().sqrt())
    scale = torch.where(now > floor, target / now.clamp(min=floor), torch.ones_like(now))
    weight = writer.weight
    weight.mul_(scale.to(weight.dtype).reshape(-1, *([1] * (weight.dim() - 1))))
    if shift:
        mean = match.average_columns(torch.cat([s.mean() for s in parents])[None])[0]
        new = (bias.to(torch.float64) - merged.mean()) * scale + mean
        bias.copy_(new.to(bias.dtype))
