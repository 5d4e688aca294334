"""Permute the neurons of a model without changing its function.

A neuron-permuted copy of a model is the reference sanity check of merging
(docs/method.md sec. 7): zipping a model with its permuted copy must give the model back.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from heterogui.models.family import Network
from heterogui.models.graph import INPUT, LOGITS, ModelGraph


def random_permutations(graph: ModelGraph, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Return a random permutation (int64) for every permutable space of the graph.

    Spaces with a head_dim keep heads intact: whole heads are shuffled and the features
    inside every head are shuffled with one shared order. Spaces of one head group (Q/K and
    V/O of an attention layer) share their head order, so every head keeps its own values.
    Rotary attention (``Space.role``): key/value groups move with their query heads, the query
    heads of a group are shuffled together in q and o, q/k features stay in place inside a
    head, and o's features follow v's.
    """
    perms = {}
    shared: dict[tuple[str, str], torch.Tensor] = {}

    def draw(key: tuple[str, str], n: int) -> torch.Tensor:
        if key not in shared:
            shared[key] = torch.randperm(n, generator=generator)
        return shared[key]

    for name, space in graph.spaces.items():
        if name in (INPUT, LOGITS):
            continue
        if not space.head_dim:
            perms[name] = torch.randperm(space.width, generator=generator)
            continue
        group, d = space.group or name, space.head_dim
        units = draw((group, "units"), space.width // space.unit)
        if space.role is None:
            inner = torch.randperm(d, generator=generator)
            perms[name] = (units[:, None] * d + inner[None, :]).flatten()
            continue
        r = space.unit_heads
        heads = draw((group, "heads"), r) if r > 1 else torch.zeros(1, dtype=torch.long)
        inner = draw((group, "v"), d) if space.role in ("v", "o") else torch.arange(d)
        perm = units[:, None, None] * r * d + heads[None, :, None] * d + inner[None, None, :]
        perms[name] = perm.flatten()
    return perms


def permute_network(net: Network, perms: dict[str, torch.Tensor]) -> Network:
    """Return a copy of ``net`` whose spaces are reordered by ``perms`` (same function)."""
    module = copy.deepcopy(net.module)
    state = module.state_dict()
    for t in net.graph().tensors:
        tensor = state[t.name]
        for axis in t.axes:
            if axis.space in perms:
                tensor = tensor.index_select(axis.dim, perms[axis.space].to(tensor.device))
        state[t.name] = tensor
    module.load_state_dict(state)
    return dataclasses.replace(net, module=module, label=f"{net.label}-permuted")
