"""MLP family: hidden Linear+ReLU layers of any widths, one stage (docs/method.md sec. 2)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from heterogui.models.graph import (
    INPUT,
    LOGITS,
    BlockNet,
    Capture,
    ModelGraph,
    Space,
    in_axis,
    out_axis,
    tag,
)


@dataclass(frozen=True)
class MLPConfig:
    """An MLP on flattened inputs: in_features -> widths[0] -> ... -> num_classes."""

    in_features: int
    widths: tuple[int, ...]
    num_classes: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))


class LinearBlock(nn.Module):
    """Linear followed by ReLU (flattens its input first)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x.flatten(1)))


class LinearHead(nn.Module):
    """The classifier: a Linear layer on the last hidden features."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def build(config: MLPConfig) -> BlockNet:
    """Return a freshly initialised MLP for ``config``."""
    dims = (config.in_features, *config.widths)
    blocks: list[nn.Module] = [LinearBlock(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)]
    blocks.append(LinearHead(dims[-1], config.num_classes))
    return BlockNet(blocks)


def space_name(block: int) -> str:
    """Return the name of the space written by hidden block ``block``."""
    return f"block{block}"


def graph(config: MLPConfig, identity_blocks: frozenset[int] = frozenset()) -> ModelGraph:
    """Describe the MLP's spaces and tensors (identity blocks have nothing dead)."""
    n = len(config.widths)
    spaces = {INPUT: Space(INPUT, config.in_features), LOGITS: Space(LOGITS, config.num_classes)}
    tensors = []
    prev = INPUT
    for i, width in enumerate(config.widths):
        name = space_name(i)
        spaces[name] = Space(name, width, (Capture(f"blocks.{i}", "flat", i),))
        tensors.append(tag(f"blocks.{i}.linear.weight", i, out_axis(name), in_axis(prev)))
        tensors.append(tag(f"blocks.{i}.linear.bias", i, out_axis(name)))
        prev = name
    tensors.append(tag(f"blocks.{n}.linear.weight", n, out_axis(LOGITS), in_axis(prev)))
    tensors.append(tag(f"blocks.{n}.linear.bias", n, out_axis(LOGITS)))
    block_out = tuple(space_name(i) for i in range(n)) + (None,)
    return ModelGraph(spaces, tuple(tensors), (tuple(range(n)),), block_out)


def insert_identity(config: MLPConfig, stage: int, position: int) -> MLPConfig:
    """Return the config with an identity layer at ``position`` of the (only) stage."""
    widths = list(config.widths)
    widths.insert(position, widths[position - 1])
    return replace(config, widths=tuple(widths))


def init_identity(block: nn.Module) -> None:
    """Make a freshly built hidden block the identity on non-negative inputs."""
    with torch.no_grad():
        block.linear.weight.copy_(torch.eye(block.linear.out_features))
        block.linear.bias.zero_()


def resize(config: MLPConfig, widths: dict[str, int]) -> MLPConfig:
    """Return the config with the widths of the given spaces replaced."""
    new = tuple(widths.get(space_name(i), w) for i, w in enumerate(config.widths))
    return replace(config, widths=new, num_classes=widths.get(LOGITS, config.num_classes))
