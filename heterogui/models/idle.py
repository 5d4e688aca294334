"""Identity blocks skip the work their zero projections discard (docs/method.md sec. 5).

Depth padding (``align.pad``) inserts identity blocks whose residual branches end in a
projection with all-zero weights (a transformer layer's output projections, a ResNet block's
last BatchNorm gain): whatever the branch computes, that projection outputs its bias. A block
marked by ``mark_identity`` computes the bias directly, without the branch, when that is safe
(``may_skip``): in eval mode, the projections' weights still all zero, and no hook on a module
the short path does not call (a capture there sees what the whole branch computes). The block
then gives the same numbers as the whole branch for finite inputs (a zero may change sign).
On MiniLM L6 + L3, the padded L3 runs the matmuls of 3 of its 6 layers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn

SKIPS_DISCARDED = "skips_discarded"


def mark_identity(block: nn.Module) -> None:
    """Let an identity block built by padding skip its discarded branches (``may_skip``)."""
    setattr(block, SKIPS_DISCARDED, True)


def may_skip(
    block: nn.Module, readers: Sequence[nn.Module], called: Collection[nn.Module] = ()
) -> bool:
    """Return whether ``block`` may output its readers' biases instead of running its branches.

    readers: the modules that read the branches (a Linear, or a BatchNorm whose gain is the
    weight). called: the sub-modules the short path still calls (with everything inside them);
    a hook on any other module of the block means the whole branch runs. Every block's forward
    asks, so an unmarked block answers from its own ``__dict__`` (no attribute lookup miss).
    """
    if not block.__dict__.get(SKIPS_DISCARDED, False) or block.training:
        return False
    if any(bool(reader.weight.any()) for reader in readers):
        return False
    allowed = {id(block), *(id(m) for c in called for m in c.modules())}
    return not any(
        (m._forward_hooks or m._forward_pre_hooks) and id(m) not in allowed for m in block.modules()
    )


def bias_of(reader: nn.Linear, like: torch.Tensor) -> torch.Tensor:
    """Return what a Linear with zero weight outputs for inputs shaped like ``like``."""
    out = like.new_zeros((*like.shape[:-1], reader.out_features))
    return out if reader.bias is None else out + reader.bias


def channel_bias_of(norm: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """Return what an eval-mode BatchNorm with zero gain outputs: its bias, shaped like ``like``."""
    shape = (1, -1) + (1,) * (like.dim() - 2)
    # laid out as ``like`` (channels-last features stay so): the branch it stands for is
    return torch.zeros_like(like) + norm.bias.view(shape)
