"""Pad a shallower model with identity blocks into the deep topology (docs/method.md sec. 5).

A stage's ``positions`` give, for every block of the model, its slot in the padded stage;
slots with no block get an identity block, so the padded model computes the same function.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import torch

from heterogui.errors import AlignmentError
from heterogui.models.family import Network


def block_index_map(
    old_stages: tuple[tuple[int, ...], ...],
    new_stages: tuple[tuple[int, ...], ...],
    positions: tuple[tuple[int, ...], ...],
    old_num_blocks: int,
    new_num_blocks: int,
) -> dict[int, int]:
    """Return old block index -> new block index (stem, closing blocks and head included)."""
    mapping = {}
    first = old_stages[0][0] if old_stages and old_stages[0] else 0
    for i in range(first):  # blocks before the first stage (a stem) keep their index
        mapping[i] = i
    for old, new, pos in zip(old_stages, new_stages, positions, strict=True):
        for k, block in enumerate(old):
            mapping[block] = new[pos[k]]
    last = max((b for stage in old_stages for b in stage), default=first - 1)
    for i in range(last + 1, old_num_blocks):  # blocks after the stages (the head) keep their
        mapping[i] = new_num_blocks - (old_num_blocks - i)  # offset from the end
    return mapping


def pad_network(
    net: Network, positions: tuple[tuple[int, ...], ...], depths: tuple[int, ...]
) -> Network:
    """Return a copy of ``net`` padded to ``depths`` blocks per stage.

    positions: per stage, the slot of each of the net's blocks (strictly increasing, from 0).
    depths: per stage, the number of blocks of the padded stage.

    Raises:
        AlignmentError: if positions do not fit the net's stages or the target depths.
    """
    fam = net.family
    graph = net.graph()
    if len(positions) != len(graph.stages) or len(depths) != len(graph.stages):
        raise AlignmentError(
            f"{net.label} has {len(graph.stages)} stages but the mapping has {len(positions)} "
            f"and the target depths {len(depths)}; give one entry per stage"
        )
    config = net.config
    for s, (pos, depth) in enumerate(zip(positions, depths, strict=True)):
        if len(pos) != len(graph.stages[s]) or list(pos) != sorted(set(pos)) or pos[0] != 0:
            raise AlignmentError(
                f"stage {s} positions {list(pos)} must start at 0, increase "
                f"strictly and list all {len(graph.stages[s])} blocks"
            )
        if pos[-1] >= depth:
            raise AlignmentError(f"stage {s} position {pos[-1]} is beyond the depth {depth}")
        for slot in sorted(set(range(depth)) - set(pos)):
            config = fam.insert_identity(config, s, slot)
    if config == net.config:
        return net
    new_graph = fam.graph(config)
    mapping = block_index_map(
        graph.stages, new_graph.stages, positions, graph.num_blocks, new_graph.num_blocks
    )
    with torch.random.fork_rng(devices=[]):
        module = fam.build(config)
    state = {_rename(k, mapping): v for k, v in net.module.state_dict().items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    identity = frozenset(set(range(new_graph.num_blocks)) - set(mapping.values()))
    stray = [k for k in missing if int(k.split(".")[1]) not in identity]
    if unexpected or stray:
        raise AssertionError(f"padding lost weights: missing {stray}, unexpected {unexpected}")
    for block in identity:
        fam.init_identity(module.blocks[block])
    old_identity = {mapping[b] for b in net.identity_blocks}
    module.to(next(net.module.parameters()).device)
    module.train(net.module.training)
    return dataclasses.replace(
        net, config=config, module=module, identity_blocks=identity | old_identity
    )


def _rename(key: str, mapping: dict[int, int]) -> str:
    match = re.match(r"blocks\.(\d+)\.(.*)", key)
    if not match:
        return key
    return f"blocks.{mapping[int(match.group(1))]}.{match.group(2)}"


def copy_network(net: Network) -> Network:
    """Return a deep copy of ``net`` (the caller's model is never edited)."""
    return dataclasses.replace(net, module=copy.deepcopy(net.module))
