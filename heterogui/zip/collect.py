"""The feature pass: statistics of [f_A ; f_B] at every merge point (docs/method.md sec. 6)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

import torch

from heterogui.distributed import all_reduce_moments
from heterogui.models.capture import (
    Batch,
    CapturePass,
    to_device,
    to_rows,
    token_mask,
)
from heterogui.models.family import Network
from heterogui.models.graph import INPUT, LOGITS, ModelGraph
from heterogui.zip.stats import Moments

# (space, block): the captures of a space inside one block share one accumulator (a residual
# stream is seen twice per transformer layer; pooling per block keeps what a stop point needs)
StatKey = tuple[str, int]


def capture_points(graph: ModelGraph) -> list[tuple[str, str, str, int]]:
    """Return (space, module, layout, block) for every capture of every mergeable space."""
    return [
        (name, cap.module, cap.layout, cap.block)
        for name, space in graph.spaces.items()
        if name not in (INPUT, LOGITS)
        for cap in space.captures
    ]


@torch.no_grad()
def collect_moments(
    net_a: Network,
    net_b: Network,
    batches: Iterable[Batch],
    device: torch.device | str = "cpu",
    progress: Callable[[float], None] | None = None,
    spaces: Collection[str] | None = None,
    dtype: torch.dtype | None = None,
) -> dict[StatKey, Moments]:
    """Run A and B (same topology) on the batches and accumulate moments at every capture.

    Returns moments of the concatenated features (O = n_A + n_B) per (space, block), pooled over
    the space's captures in that block, for every space that is not dead in either model
    (only those in ``spaces`` when given: a pass over part of the merge points). dtype: cast
    the features to it first (float64: float64 products, to measure the float32 ones).
    """
    # a dead space (an identity block's unused inner layer) is never matched: skip its statistics
    dead = net_a.graph().dead | net_b.graph().dead
    points = [
        p
        for p in capture_points(net_a.graph())
        if p[0] not in dead and (spaces is None or p[0] in spaces)
    ]
    modules = sorted({module for _, module, _, _ in points})
    stats: dict[StatKey, Moments] = {}
    passes = [CapturePass(net.module, modules) for net in (net_a, net_b)]
    batches = list(batches)
    for step, batch in enumerate(batches):
        batch = to_device(batch, device)
        mask = token_mask(batch)
        outs = [capture(batch) for capture in passes]
        for space, module, layout, block in points:
            rows_a, rows_b = (to_rows(out[module], layout, mask).to(dtype) for out in outs)
            key = (space, block)
            if key not in stats:
                n_a = rows_a.shape[1]
                stats[key] = Moments.empty(n_a + rows_b.shape[1], rows_a.device, split=n_a)
            stats[key].update_parts(rows_a, rows_b)
        if progress is not None:
            progress((step + 1) / len(batches))
    for moments in stats.values():
        moments.settle()  # fold the float32 products in and free their buffers
    all_reduce_moments(stats)  # the whole data's sums under torchrun (heterogui.distributed)
    return stats


def statistics_bytes(graph_a: ModelGraph, graph_b: ModelGraph, space: str) -> int:
    """Return the bytes the statistics of ``space`` take while they are collected.

    Per block: the (O, O) float64 sums and the float32 products not yet folded into them.
    """
    o = graph_a.spaces[space].width + graph_b.spaces[space].width
    blocks = {c.block for c in graph_a.spaces[space].captures}
    return len(blocks) * (o * o * 12 + o * 8)


def pooled_moments(
    stats: dict[StatKey, Moments], graph: ModelGraph, space: str, stop: int | None = None
) -> Moments:
    """Return the moments of ``space`` summed over its captures in blocks before ``stop``."""
    blocks = sorted(
        {c.block for c in graph.spaces[space].captures if stop is None or c.block < stop}
    )
    if not blocks:
        raise KeyError(f"space {space!r} has no capture before block {stop}")
    total = stats[(space, blocks[0])]
    for block in blocks[1:]:
        total = total + stats[(space, block)]
    return total
