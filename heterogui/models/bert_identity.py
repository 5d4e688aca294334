"""Identity layers for post-LayerNorm BERT encoders (docs/method.md sec. 5).

A post-LN layer computes y = LN2(h + FFN(h)) with h = LN1(x + Attn(x)). Zeroing both branches
leaves LN2(LN1(x)) = g2 * normalise(x) + b2, which is not x: x is itself the output of the
previous LayerNorm, x = g * z + b with z = normalise(y) of mean 0 and variance 1 over features,
and normalising x again mixes g and b into every feature. Three constructions:

- "plain": zero branches, LayerNorms (1, 0). Output normalise(x); data-free, poor.
- "ls": zero branches, LN1 = (1, 0), LN2 = per-feature least squares of x on normalise(x) over
  the calibration tokens (one cached forward pass). Approximate.
- "exact" (default): uses the previous LayerNorm's (g, b) and two of the layer's FFN neurons.
  The attention output bias is -b, so x - b = g * z. LN1 = (1/g, 0) gives
  h = (z - m / g) / s with per-token scalars m = mean(g * z), s = std(g * z). Because mean(z) = 0,
  mean(h) = -m * mean(1/g) / s, so the per-token error term is linear in h:
  h - (1/g) * mean(h) / mean(1/g) = z / s. The FFN computes exactly that linear map with two
  neurons, since act(u) - act(-u) = u for GELU (exact and tanh), ReLU and SiLU: neuron 1 reads
  +mean(h), neuron 2 reads -mean(h), and both write -(1/g) / mean(1/g) with opposite signs.
  Then LN2 = (g, b) on z / s returns g * z + b = x, up to the LayerNorm epsilons and float
  rounding (measured in docs/transformers.md, bounded in tests/test_bert_identity.py). Data-free.

In a merged model the identity layer's inner spaces are dead (the other model's features are
kept), so the two FFN neurons are dropped there; only its LayerNorm and bias values are merged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from heterogui.distributed import all_reduce_sum_
from heterogui.models.capture import Batch, to_device

if TYPE_CHECKING:
    from heterogui.models.family import Network

log = logging.getLogger(__name__)

# Below this |g| the exact construction's 1/g would amplify rounding too much: fall back to 1.
_MIN_GAIN = 1e-4


def previous_norm(module: nn.Module, block: int) -> nn.LayerNorm:
    """Return the LayerNorm whose output is the input of ``block`` (>= 1)."""
    prev = module.blocks[block - 1]
    return prev.LayerNorm if block == 1 else prev.output.LayerNorm


@torch.no_grad()
def set_exact_identity(layer: nn.Module, norm: nn.LayerNorm) -> None:
    """Build the exact identity (module docstring) into a fresh layer, after the norm ``norm``.

    Raises:
        ValueError: the layer has fewer than two FFN neurons.
    """
    ffn_in, ffn_out = layer.intermediate.dense, layer.output.dense
    if ffn_in.out_features < 2:
        raise ValueError("the exact identity needs an intermediate size of at least 2")
    g, b = norm.weight.detach().double(), norm.bias.detach().double()
    small = g.abs() < _MIN_GAIN
    if bool(small.any()):
        log.warning(
            "%d LayerNorm gains below %g: identity is approximate", int(small.sum()), _MIN_GAIN
        )
        g = torch.where(small, torch.ones_like(g), g)
    inv = 1.0 / g
    hidden = g.numel()
    layer.attention.output.dense.weight.zero_()
    layer.attention.output.dense.bias.copy_(-b)
    layer.attention.output.LayerNorm.weight.copy_(inv)
    layer.attention.output.LayerNorm.bias.zero_()
    ffn_in.weight.zero_()
    ffn_in.bias.zero_()
    ffn_in.weight[0].fill_(1.0 / hidden)
    ffn_in.weight[1].fill_(-1.0 / hidden)
    write = -inv / inv.mean()
    ffn_out.weight.zero_()
    ffn_out.bias.zero_()
    ffn_out.weight[:, 0] = write
    ffn_out.weight[:, 1] = -write
    layer.output.LayerNorm.weight.copy_(g)
    layer.output.LayerNorm.bias.copy_(b)


@torch.no_grad()
def set_least_squares_identity(layer: nn.Module, states: Sequence[tuple]) -> None:
    """Fit LN2 so that the zero-branch layer best reproduces its input (per feature, LSQ).

    states: the layer's input states (hidden (B, T, H), mask (B, T)) on the calibration data.
    """
    norm = layer.output.LayerNorm
    norm.weight.fill_(1.0)
    norm.bias.zero_()
    n = 0.0
    sums = None
    for x, mask in states:
        z = layer((x, mask))[0]
        keep = mask.reshape(-1).bool()
        xs, zs = (t.reshape(-1, t.shape[-1])[keep].double() for t in (x, z))
        batch = torch.stack([xs.sum(0), zs.sum(0), (xs * zs).sum(0), (zs * zs).sum(0)])
        sums = batch if sums is None else sums + batch
        n += float(keep.sum())
    all_reduce_sum_(sums)  # under torchrun: every rank's tokens (heterogui.distributed)
    n = float(all_reduce_sum_(torch.tensor([n], dtype=torch.float64)).item())
    mx, mz, mxz, mzz = sums / n
    gain = (mxz - mx * mz) / (mzz - mz * mz).clamp_min(1e-12)
    norm.weight.copy_(gain)
    norm.bias.copy_(mx - gain * mz)


@torch.no_grad()
def fit_identity(
    net: Network,
    blocks: Sequence[int],
    batches: Sequence[Batch],
    device: torch.device | str = "cpu",
) -> None:
    """Turn the freshly padded identity layers ``blocks`` of ``net`` into identities, in place.

    The mode is ``net.config.identity``: "exact" needs no data, "ls" runs the calibration
    batches once (inputs cached between layers), "plain" keeps the zero-branch layers.
    """
    mode = net.config.identity
    module = net.module
    if mode == "plain" or not blocks:
        return
    if mode == "exact":
        for k in sorted(blocks):
            set_exact_identity(module.blocks[k], previous_norm(module, k))
        return
    was_training = module.training
    module.eval()
    states: list = [to_device(b, device) for b in batches]
    done = 0
    for k in sorted(blocks):
        states = [module.run(s, done, k) for s in states]
        done = k
        set_least_squares_identity(module.blocks[k], states)
    module.train(was_training)
