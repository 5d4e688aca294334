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
    """
    perms = {}
    head_orders: dict[str, torch.Tensor] = {}
    for name, space in graph.spaces.items():
        if name in (INPUT, LOGITS):
            continue
        if space.head_dim:
            heads = space.width // space.head_dim
            group = space.group or name
            if group not in head_orders:
                head_orders[group] = torch.randperm(heads, generator=generator)
            head_order = head_orders[group]
            inner = torch.randperm(space.head_dim, generator=generator)
            perms[name] = (head_order[:, None] * space.head_dim + inner[None, :]).flatten()
        else:
            perms[name] = torch.randperm(space.width, generator=generator)
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
