"""VGG-style plain CNN: stages of conv-BN-ReLU blocks, 2x max pool before each later stage.

Every block output is a merge point (docs/method.md sec. 6); identity padding uses a centre-tap
identity kernel with an identity BatchNorm (docs/method.md sec. 5).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from heterogui.models.conv import (
    PoolHead,
    batch_norm,
    conv,
    max_pool,
    set_identity_bn,
    set_identity_conv,
)
from heterogui.models.graph import (
    INPUT,
    LOGITS,
    BlockNet,
    Capture,
    ModelGraph,
    Space,
    in_axis,
    norm_tags,
    out_axis,
    tag,
)


@dataclass(frozen=True)
class VGGConfig:
    """Widths of the conv blocks per stage; spatial_dims 1 (signals) or 2 (images)."""

    in_channels: int
    stages: tuple[tuple[int, ...], ...]
    num_classes: int
    spatial_dims: int = 2
    kernel: int = 3

    def __post_init__(self) -> None:
        stages = tuple(tuple(int(w) for w in s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if self.spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims is {self.spatial_dims}: 1 (signals) or 2 (images)")


class ConvBlock(nn.Module):
    """(Max pool,) conv, BatchNorm, ReLU."""

    def __init__(self, dims: int, c_in: int, c_out: int, kernel: int, pool: bool):
        super().__init__()
        self.pool = max_pool(dims) if pool else nn.Identity()
        self.conv = conv(dims, c_in, c_out, kernel)
        self.bn = batch_norm(dims, c_out)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(self.pool(x))))


def _flat_widths(config: VGGConfig) -> list[tuple[int, int, bool]]:
    """Return (stage, width, pools-first) for every block in order."""
    return [
        (s, w, s > 0 and j == 0) for s, ws in enumerate(config.stages) for j, w in enumerate(ws)
    ]


def build(config: VGGConfig) -> BlockNet:
    """Return a freshly initialised VGG for ``config``."""
    blocks: list[nn.Module] = []
    c_in = config.in_channels
    for _, width, pool in _flat_widths(config):
        blocks.append(ConvBlock(config.spatial_dims, c_in, width, config.kernel, pool))
        c_in = width
    blocks.append(PoolHead(c_in, config.num_classes))
    return BlockNet(blocks)


def space_name(block: int) -> str:
    """Return the name of the space written by block ``block``."""
    return f"block{block}"


def graph(config: VGGConfig, identity_blocks: frozenset[int] = frozenset()) -> ModelGraph:
    """Describe the VGG's spaces and tensors."""
    spaces = {INPUT: Space(INPUT, config.in_channels), LOGITS: Space(LOGITS, config.num_classes)}
    tensors, stages, block_out = [], [[] for _ in config.stages], []
    prev = INPUT
    for i, (stage, width, _) in enumerate(_flat_widths(config)):
        name = space_name(i)
        spaces[name] = Space(name, width, (Capture(f"blocks.{i}", "channels", i),))
        tensors.append(tag(f"blocks.{i}.conv.weight", i, out_axis(name), in_axis(prev)))
        tensors += norm_tags(f"blocks.{i}.bn", i, name)
        stages[stage].append(i)
        block_out.append(name)
        prev = name
    n = len(block_out)
    tensors.append(tag(f"blocks.{n}.linear.weight", n, out_axis(LOGITS), in_axis(prev)))
    tensors.append(tag(f"blocks.{n}.linear.bias", n, out_axis(LOGITS)))
    batch_norms = tuple((f"blocks.{i}.conv", f"blocks.{i}.bn") for i in range(n))
    return ModelGraph(
        spaces,
        tuple(tensors),
        tuple(map(tuple, stages)),
        (*block_out, None),
        frozenset(),
        batch_norms=batch_norms,
    )


def insert_identity(config: VGGConfig, stage: int, position: int) -> VGGConfig:
    """Return the config with an identity block at ``position`` (>= 1) of ``stage``."""
    stages = [list(s) for s in config.stages]
    stages[stage].insert(position, stages[stage][position - 1])
    return replace(config, stages=tuple(map(tuple, stages)))


def init_identity(block: nn.Module) -> None:
    """Make a freshly built (non-pooling) block the identity on non-negative inputs."""
    set_identity_conv(block.conv)
    set_identity_bn(block.bn)


def resize(config: VGGConfig, widths: dict[str, int]) -> VGGConfig:
    """Return the config with the widths of the given spaces replaced."""
    stages, i = [], 0
    for ws in config.stages:
        stages.append(tuple(widths.get(space_name(i + j), w) for j, w in enumerate(ws)))
        i += len(ws)
    return replace(config, stages=tuple(stages), num_classes=widths.get(LOGITS, config.num_classes))
