"""Pad a shallower model with identity blocks into the deep topology (docs/method.md sec. 5).

A stage's ``positions`` give, for every block of the model, its slot in the padded stage;
slots with no block get an identity block, so the padded model computes the same function.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

import torch
from torch import nn

from heterogui.errors import AlignmentError
from heterogui.models.family import Family, Network
from heterogui.models.idle import mark_identity
from heterogui.models.storage import allocate, on_meta


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
    """Return ``net`` padded to ``depths`` blocks per stage (``net`` itself when nothing pads).

    positions: per stage, the slot of each of the net's blocks (strictly increasing, from 0).
    depths: per stage, the number of blocks of the padded stage.

    The padded module holds the net's own block modules (the same objects, no weight copy)
    and new identity blocks: only those take new memory. So do not modify a padded block that
    came from ``net`` in place unless ``net`` may change with it (the identity blocks, listed
    in ``identity_blocks``, are the padded network's own). The net's module is not modified.

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
    identity = frozenset(set(range(new_graph.num_blocks)) - set(mapping.values()))
    shell = on_meta(lambda: fam.build(config))  # shapes only: no memory, no initialisation
    if _blocks_only(shell) and _blocks_only(net.module):
        module = _reuse_blocks(net, shell, mapping, identity)
    else:  # a module with more than its blocks: build it whole and load the net's weights
        module = _copy_into_new(net, config, mapping, identity)
    old_identity = {mapping[b] for b in net.identity_blocks}
    return dataclasses.replace(
        net, config=config, module=module, identity_blocks=identity | old_identity
    )


def _blocks_only(module: nn.Module) -> bool:
    """Return whether ``module`` is its ``blocks`` and nothing else (every family's BlockNet)."""
    return (
        list(module._modules) == ["blocks"]
        and isinstance(module._modules["blocks"], nn.ModuleList)
        and not module._parameters
        and not module._buffers
    )


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _reuse_blocks(
    net: Network, shell: nn.Module, mapping: dict[int, int], identity: frozenset[int]
) -> nn.Module:
    """Return ``shell`` (built on the meta device) holding the net's blocks and new identities.

    Raises:
        AssertionError: a block of the net that does not fit its slot (a family bug).
    """
    blocks = list(shell.blocks)
    for old, new in mapping.items():
        block = net.module.blocks[old]
        if _shapes(block) != _shapes(blocks[new]):
            raise AssertionError(f"padding: block {old} does not fit slot {new} of the padded net")
        blocks[new] = block
    first = next(net.module.parameters())
    for k in identity:
        blocks[k] = _identity_block(net.family, blocks[k], first.device, first.dtype)
        blocks[k].train(net.module.training)
    shell.blocks = nn.ModuleList(blocks)
    shell.training = net.module.training
    return shell


def _identity_block(
    fam: Family, shell: nn.Module, device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """Return the meta-built block ``shell`` made a real identity block on ``device``.

    Its tensors start at zero, then every submodule's own initialisation runs (norms get unit
    gains, BatchNorm unit variances; random draws from a fixed seed, the global generator left
    as it was), then the family's ``init_identity``: the same identity for every call.
    """
    block = allocate(shell, torch.device("cpu"))
    with torch.no_grad():
        for t in (*block.parameters(), *block.buffers()):
            if t.is_floating_point():
                t.zero_()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(0)
            for sub in block.modules():
                reset = getattr(sub, "reset_parameters", None)
                if callable(reset):
                    reset()
    fam.init_identity(block)
    mark_identity(block)
    return block.to(device=device, dtype=dtype)


def _copy_into_new(
    net: Network, config: Any, mapping: dict[int, int], identity: frozenset[int]
) -> nn.Module:
    """Return the padded module built whole, the net's weights copied into it."""
    fam = net.family
    with torch.random.fork_rng(devices=[]):
        module = fam.build(config)
    state = {_rename(k, mapping): v for k, v in net.module.state_dict().items()}
    missing, unexpected = module.load_state_dict(state, strict=False)
    stray = [k for k in missing if int(k.split(".")[1]) not in identity]
    if unexpected or stray:
        raise AssertionError(f"padding lost weights: missing {stray}, unexpected {unexpected}")
    for block in identity:
        fam.init_identity(module.blocks[block])
        mark_identity(module.blocks[block])
    module.to(next(net.module.parameters()).device)
    module.train(net.module.training)
    return module


def _rename(key: str, mapping: dict[int, int]) -> str:
    match = re.match(r"blocks\.(\d+)\.(.*)", key)
    if not match:
        return key
    return f"blocks.{mapping[int(match.group(1))]}.{match.group(2)}"


def copy_network(net: Network) -> Network:
    """Return a deep copy of ``net`` (the caller's model is never edited)."""
    return dataclasses.replace(net, module=copy.deepcopy(net.module))


def ready_network(net: Network, device: torch.device, modifies: bool = False) -> Network:
    """Return ``net`` on ``device`` in eval mode without modifying the caller's module.

    The caller's module is shared (no copy) when it already is on ``device`` and in eval mode
    and the caller does not modify it (``modifies``: e.g. BatchNorm re-estimation); else a deep
    copy is moved there. The Network object returned is always a new one.
    """
    if (
        modifies
        or not _on_device(net.module, device)
        or any(m.training for m in net.module.modules())
    ):
        net = copy_network(net)
        net.module.to(device).eval()
        return net
    return dataclasses.replace(net)


def _on_device(module: nn.Module, device: torch.device) -> bool:
    """Return whether every parameter and buffer of ``module`` is on ``device`` already."""
    want = torch.device(device)
    if want.type == "cuda" and want.index is None:
        want = torch.device("cuda", torch.cuda.current_device())
    return all(t.device == want for t in (*module.parameters(), *module.buffers()))
