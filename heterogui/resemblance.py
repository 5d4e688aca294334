"""Which parent each merged layer resembles: CKA of the merged trunk with A's and B's layers.

The merged trunk has one layer per slot of the merged depth (docs/method.md sec. 4); slot i of
the identity-padded A and B sits at the same depth. Linear CKA (docs/method.md sec. 3) between
the merged layer's output and each padded parent's output at that slot says where the merge
follows A, where it follows B and where it blends. It is invariant to the permutation and scale
a merge applies, so a model merged with a permuted copy of itself scores 1 against both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heterogui.align.cka import CKAAccumulator
from heterogui.align.similarity import layer_grams
from heterogui.models.capture import to_device
from heterogui.models.graph import ModelGraph
from heterogui.pipeline import MergeResult

MAX_BATCHES = 4  # calibration batches used: enough for a stable CKA, quick on a laptop


@dataclass(frozen=True)
class Resemblance:
    """Per merged layer (slot 0 .. stop-1): CKA with A's and B's layer at that slot.

    to_a / to_b: CKA values; layers_a / layers_b: the parent's layer at the slot in the
    heatmap's numbering ("A3"), or "identity after A2" for an identity-padded slot.
    """

    to_a: list[float]
    to_b: list[float]
    layers_a: list[str]
    layers_b: list[str]


def slot_layers(
    graph: ModelGraph, positions: tuple[tuple[int, ...], ...], depths: tuple[int, ...], name: str
) -> list[str]:
    """Return, per slot of the merged depth, the model's layer there (or its identity layer).

    graph: the model's own (unpadded) graph; positions: its slot of each layer per stage and
    depths: the slots per stage (``Alignment``); name: "A" or "B".
    """
    first = graph.stages[0][0] if graph.stages and graph.stages[0] else 0
    out = [f"{name}{i}" for i in range(first)]  # a stem pairs one to one
    last = f"{name}{first - 1}" if first else "the input"
    for s, depth in enumerate(depths):
        by_slot = {t: graph.stages[s][k] for k, t in enumerate(positions[s])}
        for t in range(depth):
            if t in by_slot:
                last = f"{name}{by_slot[t]}"
                out.append(last)
            else:
                out.append(f"identity after {last}")
    return out


@torch.no_grad()
def parent_resemblance(result: MergeResult, max_batches: int = MAX_BATCHES) -> Resemblance:
    """Return the CKA of every merged trunk layer with A's and B's layer at the same slot."""
    prep = result.prepared
    stop = result.spec.stop
    if stop == 0:  # the merge starts at its first layer: nothing merged to compare
        return Resemblance([], [], [], [])
    merged_names = [f"trunk.{i}" for i in range(stop)]
    parent_names = [f"blocks.{i}" for i in range(stop)]
    acc_a, acc_b = CKAAccumulator(), CKAAccumulator()
    for batch in prep.batches[:max_batches]:
        batch = to_device(batch, prep.device)
        merged = layer_grams(result.model, merged_names, batch)
        acc_a.update(merged, layer_grams(prep.padded_a.module, parent_names, batch))
        acc_b.update(merged, layer_grams(prep.padded_b.module, parent_names, batch))
    al, ga, gb = result.alignment, prep.net_a.graph(), prep.net_b.graph()
    layers_a = slot_layers(ga, al.positions_a, al.depths, "A")
    layers_b = slot_layers(gb, al.positions_b, al.depths, "B")
    return Resemblance(
        [round(float(v), 4) for v in acc_a.matrix().diagonal()],
        [round(float(v), 4) for v in acc_b.matrix().diagonal()],
        layers_a[:stop],
        layers_b[:stop],
    )
