"""Pieces shared by the convolutional families (VGG, ResNet), in 1-D or 2-D."""

from __future__ import annotations

import torch
from torch import nn


def conv(dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Module:
    """Return a bias-free Conv1d/Conv2d with 'same' padding for odd kernels."""
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    return cls(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


def batch_norm(dims: int, channels: int) -> nn.Module:
    """Return a BatchNorm1d/BatchNorm2d."""
    return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels)


def max_pool(dims: int) -> nn.Module:
    """Return a 2x max pool in 1-D or 2-D."""
    return nn.MaxPool1d(2) if dims == 1 else nn.MaxPool2d(2)


class PoolHead(nn.Module):
    """Global average pool, then a Linear classifier."""

    def __init__(self, c_in: int, n_out: int):
        super().__init__()
        self.linear = nn.Linear(c_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(2).mean(-1))


def set_identity_conv(layer: nn.Module) -> None:
    """Turn a square conv into the identity: a one at the centre tap of each channel."""
    weight = layer.weight
    if weight.shape[0] != weight.shape[1]:
        raise ValueError(f"identity conv needs as many in- as out-channels, got {weight.shape}")
    with torch.no_grad():
        weight.zero_()
        centre = tuple(k // 2 for k in weight.shape[2:])
        for c in range(weight.shape[0]):
            weight[(c, c, *centre)] = 1.0


def set_identity_bn(bn: nn.Module) -> None:
    """Make a BatchNorm the identity in eval mode (running var = 1 - eps: exact, not ~1e-5 off)."""
    with torch.no_grad():
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
