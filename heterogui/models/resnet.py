"""CIFAR-style ResNet of BasicBlocks, in 1-D or 2-D (docs/method.md secs. 4, 6).

Blocks: the stem (conv-BN-ReLU), the BasicBlocks of every stage, the pooled linear head. Every
stage has one residual stream: the stem (stage 0) or the first block's projection shortcut
writes it, every block adds to it and reads it, and all of them share one transform. Each
block's inner layer is a merge point of its own. The first block of a later stage halves the
resolution and has a projection shortcut. An identity block is a BasicBlock whose residual
branch is zeroed (its inner layer is then unused: "dead").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from heterogui.models.conv import PoolHead, batch_norm, conv
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
from heterogui.models.idle import channel_bias_of, may_skip
from heterogui.models.vgg import ConvBlock


@dataclass(frozen=True)
class ResNetConfig:
    """Stream width per stage and inner width per block of each stage."""

    in_channels: int
    stream_widths: tuple[int, ...]
    inner_widths: tuple[tuple[int, ...], ...]
    num_classes: int
    spatial_dims: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "stream_widths", tuple(int(w) for w in self.stream_widths))
        inner = tuple(tuple(int(w) for w in s) for s in self.inner_widths)
        object.__setattr__(self, "inner_widths", inner)
        if len(self.stream_widths) != len(self.inner_widths):
            raise ValueError("stream_widths and inner_widths need one entry per stage")
        if self.spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims is {self.spatial_dims}: 1 (signals) or 2 (images)")


def cifar_resnet(
    depths: tuple[int, ...] = (3, 3, 3),
    width: int = 1,
    num_classes: int = 10,
    in_channels: int = 3,
    spatial_dims: int = 2,
    base: int = 16,
) -> ResNetConfig:
    """Return a CIFAR ResNet config (depths (3,3,3) = ResNet-20) of width x``width``."""
    streams = tuple(base * width * 2**s for s in range(len(depths)))
    inner = tuple((w,) * d for w, d in zip(streams, depths, strict=True))
    return ResNetConfig(in_channels, streams, inner, num_classes, spatial_dims)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, dims: int, c_in: int, inner: int, c_out: int, projection: bool):
        super().__init__()
        stride = 2 if projection else 1
        self.conv1 = conv(dims, c_in, inner, 3, stride)
        self.bn1 = batch_norm(dims, inner)
        self.act1 = nn.ReLU()
        self.conv2 = conv(dims, inner, c_out, 3)
        self.bn2 = batch_norm(dims, c_out)
        self.shortcut = (
            nn.Sequential(conv(dims, c_in, c_out, 1, stride), batch_norm(dims, c_out))
            if projection
            else nn.Identity()
        )
        self.act2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if may_skip(self, (self.bn2,), (self.shortcut, self.act2)):  # an identity block
            shortcut = self.shortcut(x)
            return self.act2(channel_bias_of(self.bn2, shortcut) + shortcut)
        branch = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(branch + self.shortcut(x))


def _blocks(config: ResNetConfig) -> list[tuple[int, int, int]]:
    """Return (block index, stage, position in stage) for every BasicBlock (stem is block 0)."""
    out, i = [], 1
    for s, widths in enumerate(config.inner_widths):
        for j in range(len(widths)):
            out.append((i, s, j))
            i += 1
    return out


def build(config: ResNetConfig) -> BlockNet:
    """Return a freshly initialised ResNet for ``config``."""
    dims, streams = config.spatial_dims, config.stream_widths
    blocks: list[nn.Module] = [ConvBlock(dims, config.in_channels, streams[0], 3, pool=False)]
    for _, s, j in _blocks(config):
        projection = s > 0 and j == 0
        c_in = streams[s - 1] if projection else streams[s]
        blocks.append(BasicBlock(dims, c_in, config.inner_widths[s][j], streams[s], projection))
    blocks.append(PoolHead(streams[-1], config.num_classes))
    return BlockNet(blocks)


def stream_name(stage: int) -> str:
    """Return the name of the residual stream of ``stage``."""
    return f"stage{stage}.stream"


def inner_name(block: int) -> str:
    """Return the name of the inner space of BasicBlock ``block``."""
    return f"block{block}.inner"


def graph(config: ResNetConfig, identity_blocks: frozenset[int] = frozenset()) -> ModelGraph:
    """Describe the ResNet's spaces and tensors; identity blocks' inner spaces are dead."""
    layout = "channels"
    stream_caps: list[list[Capture]] = [[] for _ in config.stream_widths]
    stream_caps[0].append(Capture("blocks.0", layout, 0))
    tensors = [
        tag("blocks.0.conv.weight", 0, out_axis(stream_name(0)), in_axis(INPUT)),
        *norm_tags("blocks.0.bn", 0, stream_name(0)),
    ]
    batch_norms = [("blocks.0.conv", "blocks.0.bn")]
    spaces = {INPUT: Space(INPUT, config.in_channels), LOGITS: Space(LOGITS, config.num_classes)}
    stages: list[list[int]] = [[] for _ in config.stream_widths]
    block_out: list[str | None] = [stream_name(0)]
    for i, s, j in _blocks(config):
        stream, inner = stream_name(s), inner_name(i)
        reads = stream_name(s - 1) if (s > 0 and j == 0) else stream
        spaces[inner] = Space(
            inner, config.inner_widths[s][j], (Capture(f"blocks.{i}.act1", layout, i),)
        )
        stream_caps[s].append(Capture(f"blocks.{i}", layout, i))
        p = f"blocks.{i}"
        tensors += [
            tag(f"{p}.conv1.weight", i, out_axis(inner), in_axis(reads)),
            *norm_tags(f"{p}.bn1", i, inner),
            tag(f"{p}.conv2.weight", i, out_axis(stream), in_axis(inner)),
            *norm_tags(f"{p}.bn2", i, stream),
        ]
        batch_norms += [(f"{p}.conv1", f"{p}.bn1"), (f"{p}.conv2", f"{p}.bn2")]
        if s > 0 and j == 0:
            tensors += [
                tag(f"{p}.shortcut.0.weight", i, out_axis(stream), in_axis(reads)),
                *norm_tags(f"{p}.shortcut.1", i, stream),
            ]
            batch_norms.append((f"{p}.shortcut.0", f"{p}.shortcut.1"))
        stages[s].append(i)
        block_out.append(stream)
    for s, width in enumerate(config.stream_widths):
        spaces[stream_name(s)] = Space(stream_name(s), width, tuple(stream_caps[s]))
    n = len(block_out)
    last = stream_name(len(config.stream_widths) - 1)
    tensors.append(tag(f"blocks.{n}.linear.weight", n, out_axis(LOGITS), in_axis(last)))
    tensors.append(tag(f"blocks.{n}.linear.bias", n, out_axis(LOGITS)))
    dead = frozenset(inner_name(i) for i in identity_blocks)
    return ModelGraph(
        spaces,
        tuple(tensors),
        tuple(map(tuple, stages)),
        (*block_out, None),
        dead,
        batch_norms=tuple(batch_norms),
    )


def insert_identity(config: ResNetConfig, stage: int, position: int) -> ResNetConfig:
    """Return the config with an identity block at ``position`` (>= 1) of ``stage``."""
    inner = [list(s) for s in config.inner_widths]
    inner[stage].insert(position, config.stream_widths[stage])
    return replace(config, inner_widths=tuple(map(tuple, inner)))


def init_identity(block: nn.Module) -> None:
    """Zero a freshly built BasicBlock's residual branch: exact identity on inputs >= 0."""
    with torch.no_grad():
        for layer in (block.conv1, block.conv2):
            layer.weight.zero_()
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()


def resize(config: ResNetConfig, widths: dict[str, int]) -> ResNetConfig:
    """Return the config with the widths of the given spaces replaced."""
    streams = tuple(widths.get(stream_name(s), w) for s, w in enumerate(config.stream_widths))
    inner, i = [], 1
    for ws in config.inner_widths:
        inner.append(tuple(widths.get(inner_name(i + j), w) for j, w in enumerate(ws)))
        i += len(ws)
    return replace(
        config,
        stream_widths=streams,
        inner_widths=tuple(inner),
        num_classes=widths.get(LOGITS, config.num_classes),
    )
