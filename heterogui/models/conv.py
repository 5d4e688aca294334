"""Pieces shared by the convolutional families (VGG, ResNet), in 1-D or 2-D."""

from __future__ import annotations

import torch
from torch import nn


def conv(dims: int, c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Module:
    """Return a bias-free Conv1d/Conv2d with 'same' padding for odd kernels.

    A Conv2d's weight is channels-last (``channels_last_weights``); a Conv1d is a ``LineConv``.
    """
    if dims == 1:
        return LineConv(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    layer = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    return channels_last_weights(layer)


def channels_last_weights(module: nn.Module) -> nn.Module:
    """Lay out the 2-D convolution weights of ``module`` channels-last, in place; return it.

    The same values. A pass feeds images channels-last (``pass_layout``), but a one-channel
    batch (or a kernel of one input channel) is laid out both ways at once, and a convolution
    that sees no channels-last operand runs channels-first, and so does everything after it.
    A channels-last weight settles it: the layer runs channels-last and its output stays so.
    Every weight gets the same strides (an ambiguous one-channel kernel too), so a model runs
    its layers in the same layouts, with the same rounding, however its weights were made
    (fused, loaded, copied). Weights already laid out so are left as they are.
    """
    for m in module.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        weight = m.weight.data
        _, c, h, w = weight.shape
        strides = (c * h * w, 1, w * c, c)
        if weight.stride() != strides:
            # not empty_like: on the meta device it imports sympy on its first call
            laid = torch.empty_strided(
                weight.shape, strides, dtype=weight.dtype, device=weight.device
            )
            m.weight.data = laid.copy_(weight)
    return module


class LineConv(nn.Conv1d):
    """A Conv1d that runs as a 2-D convolution of height 1, channels-last.

    The same module, weights and function as a Conv1d (a state dict loads either way); on the
    CPU the 2-D channels-last kernels ran the MNIST-1D ResNet's layers 1.1-8.3x faster than
    the 1-D ones (docs/method.md sec. 6). The output (B, C, L) is channels-last in memory
    (strides (C·L, 1, C)), which the next layer takes as it is.
    """

    def _conv_forward(
        self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)
        out = nn.functional.conv2d(
            input.unsqueeze(2).contiguous(memory_format=torch.channels_last),
            weight.unsqueeze(2).contiguous(memory_format=torch.channels_last),
            bias,
            (1, self.stride[0]),
            (0, self.padding[0]),
            (1, self.dilation[0]),
            self.groups,
        )
        return out.squeeze(2)


def batch_norm(dims: int, channels: int) -> nn.Module:
    """Return a BatchNorm1d/BatchNorm2d."""
    return (LineBatchNorm if dims == 1 else nn.BatchNorm2d)(channels)


class LineBatchNorm(nn.BatchNorm1d):
    """A BatchNorm1d that normalises (B, C, L) as (B, C, 1, L): the channels-last output of a
    ``LineConv`` then takes the fast path of 2-D BatchNorm (the same function)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 3:
            return super().forward(input)
        return super().forward(input.unsqueeze(2)).squeeze(2)


def max_pool(dims: int) -> nn.Module:
    """Return a 2x max pool in 1-D or 2-D."""
    return nn.MaxPool1d(2) if dims == 1 else nn.MaxPool2d(2)


class PoolHead(nn.Module):
    """Global average pool, then a Linear classifier."""

    reads_position_mean = True  # it reads the mean of the positions (``fusion.sequential``)

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
