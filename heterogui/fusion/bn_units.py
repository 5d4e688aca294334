"""Fusion in BatchNorm units: each parent's layers rescaled to unit-variance outputs first.

A layer whose output a BatchNorm normalizes (weight W, bias b; running mean mu, variance v,
epsilon e) computes the same function as the layer W / s, b / s with running mean mu / s and
variance 1 - e, where s = sqrt(v + e) per output channel: the BatchNorm then divides by one.
Fusion averages (or regresses onto) the *rows* of W across the models; as trained, those rows
write pre-BatchNorm features whose scales differ between the models and between channels, so
the larger one dominates the merged row. Rescaled, every row writes features in the units its
BatchNorm will read, and each model's feature counts as much as the other's. The merged
BatchNorm is re-estimated afterwards either way (``fusion.bn``).

The rescaling reads nothing but the parents' weights and running statistics: no extra pass,
and the statistics the matching read (the features after the BatchNorm) do not change.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from heterogui.models.family import Network


def fusion_states(
    nets: Sequence[Network], stop: int, bn_units: bool
) -> list[dict[str, torch.Tensor]]:
    """Return the state dicts fusion reads: each net's own, rescaled to BatchNorm units if asked.

    nets: the padded models (A, B, ...). Only the trunk (blocks before ``stop``) is rescaled;
    the tails are copied as they are. Identity blocks are left alone: built to be exact (their
    BatchNorm's variance is already 1 - e). The nets themselves are not modified.
    """
    states = [dict(net.module.state_dict()) for net in nets]
    if bn_units:
        for net, state in zip(nets, states, strict=True):
            for layer, norm in net.graph().batch_norms:
                block = int(layer.split(".")[1])
                if block < stop and block not in net.identity_blocks:
                    eps = float(net.module.get_submodule(norm).eps)
                    _rescale(state, layer, norm, eps)
    return states


def _rescale(state: dict[str, torch.Tensor], layer: str, norm: str, eps: float) -> None:
    """Replace (not modify) the tensors of ``layer`` and ``norm`` in ``state``: BatchNorm units."""
    var = state[f"{norm}.running_var"]
    scale = torch.sqrt(var.to(torch.float64) + eps)
    weight = state[f"{layer}.weight"]
    shape = (-1,) + (1,) * (weight.dim() - 1)
    state[f"{layer}.weight"] = (weight / scale.view(shape)).to(weight.dtype)
    if f"{layer}.bias" in state:
        bias = state[f"{layer}.bias"]
        state[f"{layer}.bias"] = (bias / scale).to(bias.dtype)
    mean = state[f"{norm}.running_mean"]
    state[f"{norm}.running_mean"] = (mean / scale).to(mean.dtype)
    state[f"{norm}.running_var"] = torch.full_like(var, 1.0 - eps)
