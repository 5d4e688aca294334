"""Which BatchNorm channels of a merged model must keep the statistics they were built with.

A padded identity layer (plain chains) has a BatchNorm built to be the identity. Where such a
channel survives unmerged (its group holds only that model's identity features, e.g. at
rho = 0, or in a model's tail), re-estimating its statistics would turn it into a normaliser
and change the function. Those channels are pinned (``merge.bn``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from heterogui.fusion.bn import BN_TYPES
from heterogui.models.family import Network
from heterogui.zip.matchers import Match


def identity_batch_norms(net: Network) -> set[str]:
    """Return the names of the BatchNorm modules inside the net's identity blocks."""
    return {
        name
        for name, module in net.module.named_modules()
        if isinstance(module, BN_TYPES) and int(name.split(".")[1]) in net.identity_blocks
    }


def pinned_channels(
    model: torch.nn.Module,
    padded: Sequence[Network],
    matches: dict[str, Match],
    stop: int,
) -> dict[str, torch.Tensor]:
    """Return merged BN module name -> channels (int64) to keep during BN re-estimation.

    padded: the padded models, in the matches' model order.
    """
    pinned: dict[str, torch.Tensor] = {}
    out_space = {t.name: t.axes[0].space for t in padded[0].graph().tensors if t.axes}
    for m, net in enumerate(padded):
        for name in identity_batch_norms(net):
            block, rest = name.split(".", 2)[1:]
            if int(block) >= stop:
                channels = torch.arange(dict(net.module.named_modules())[name].num_features)
                pinned[f"tails.{m}.{int(block) - stop}.{rest}"] = channels
                continue
            match = matches[out_space[f"{name}.weight"]]
            key = f"trunk.{block}.{rest}"
            own = _pure_groups(match, m)
            pinned[key] = torch.cat([pinned.get(key, own[:0]), own]).unique()
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in pinned.items()}


def _pure_groups(match: Match, model: int) -> torch.Tensor:
    """Return the groups whose members all come from ``model`` (0 = A, 1 = B, ...)."""
    groups = match.groups
    owner = match.owners()
    valid = groups >= 0
    mixed = torch.zeros(match.width, dtype=torch.bool)
    mixed[groups[valid & (owner != model)]] = True
    present = torch.zeros(match.width, dtype=torch.bool)
    present[groups[valid & (owner == model)]] = True
    return torch.nonzero(present & ~mixed).flatten()
