"""Fusion in BatchNorm units: each parent's layers rescaled to unit-variance outputs first.

A layer whose output a BatchNorm normalizes (weight W, bias b; running mean mu, variance v,
epsilon e) computes the same function as the layer W / s, b / s with running mean mu / s and
variance 1 - e, where s = sqrt(v + e) per output channel: the BatchNorm then divides by one.
Fusion averages (or regresses onto) the *rows* of W across the models; as trained, those rows
write pre-BatchNorm features whose scales differ between the models and between channels, so
the larger one dominates the merged row. Rescaled, every row writes features in the units its
BatchNorm reads, and each model's feature counts as much as the other's.

After fusion (and the sequential refit), each merged row is scaled back by its group's average
scale (M applied to the models' s): the merged model's layers keep the parents' units, a
channel that merges nothing (rho = 0) gets its own weights back exactly, and re-estimating the
merged BatchNorm (``fusion.bn``) normalizes as the parents' did, epsilon included.

The rescaling reads nothing but the parents' weights and running statistics: no extra pass,
and the statistics the matching read (the features after the BatchNorm) do not change.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from heterogui.fusion.fuse import SpaceTransform, fuse_tensor
from heterogui.fusion.renormalize import merged_name
from heterogui.models.family import Network
from heterogui.models.graph import TensorTag


@dataclass(frozen=True)
class UnitLayer:
    """A trunk layer that feeds a BatchNorm, with each model's scale s = sqrt(v + e).

    layer / norm: module names; block: their block; channels: the TensorTag of the
    BatchNorm's running variance (the space its channels live in); scales: one per model (1
    for a model whose block is an identity block: left exactly as built).
    """

    layer: str
    norm: str
    block: int
    channels: TensorTag
    scales: list[torch.Tensor]


def unit_scales(nets: Sequence[Network], stop: int) -> list[UnitLayer]:
    """Return every trunk layer (blocks before ``stop``) that feeds a BatchNorm, with its scales.

    nets: the padded models (A, B, ...; one topology). An identity block's layers have scale 1:
    built exact, their BatchNorm's variance is already 1 - e.
    """
    graph = nets[0].graph()
    tags = {t.name: t for t in graph.tensors}
    units = []
    for layer, norm in graph.batch_norms:
        block = int(layer.split(".")[1])
        if block >= stop:
            continue
        per_model = []
        for net in nets:
            bn = net.module.get_submodule(norm)
            var = bn.running_var.to(torch.float64)
            identity = block in net.identity_blocks
            per_model.append(torch.ones_like(var) if identity else torch.sqrt(var + bn.eps))
        units.append(UnitLayer(layer, norm, block, tags[f"{norm}.running_var"], per_model))
    return units


def fusion_states(
    nets: Sequence[Network], units: Sequence[UnitLayer]
) -> list[dict[str, torch.Tensor]]:
    """Return the state dicts fusion reads: each net's own, divided by the ``units``' scales
    (none: as they are). The nets themselves are not modified: rescaled tensors are new ones.
    """
    states = [dict(net.module.state_dict()) for net in nets]
    for unit in units:
        for net, state, scale in zip(nets, states, unit.scales, strict=True):
            if unit.block not in net.identity_blocks:  # an identity block: exactly as built
                eps = float(net.module.get_submodule(unit.norm).eps)
                _rescale(state, unit.layer, unit.norm, scale, eps)
    return states


def _rescale(
    state: dict[str, torch.Tensor], layer: str, norm: str, scale: torch.Tensor, eps: float
) -> None:
    """Replace (not modify) the tensors of ``layer`` and ``norm`` in ``state``: divided by s."""
    var = state[f"{norm}.running_var"]
    for key in (f"{layer}.weight", f"{layer}.bias", f"{norm}.running_mean"):
        if key in state:
            state[key] = (state[key] / _along_rows(scale, state[key])).to(state[key].dtype)
    state[f"{norm}.running_var"] = torch.full_like(var, 1.0 - eps)


def _along_rows(scale: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """Return ``scale`` shaped to broadcast along the first axis of ``tensor``."""
    return scale.view((-1,) + (1,) * (tensor.dim() - 1))


@torch.no_grad()
def restore_units(
    model: nn.Module,
    units: Sequence[UnitLayer],
    transforms: Mapping[str, SpaceTransform],
    inverse: bool = False,
) -> None:
    """Scale the merged model's rescaled layers back by their groups' scales, in place.

    inverse: the other way, back to BatchNorm units (weights, biases and running means
    divided by the scale s, running variance v made (v + e) / s² - e).
    """
    for unit in units:
        scale = fuse_tensor(unit.channels, unit.scales, transforms)
        factor = 1 / scale if inverse else scale
        _multiply(model.get_submodule(merged_name(unit.layer)), ("weight", "bias"), factor)
        bn = model.get_submodule(merged_name(unit.norm))
        _multiply(bn, ("running_mean",), factor)
        var = bn.running_var
        restored = (var.to(scale) + bn.eps) * factor**2 - bn.eps
        var.copy_(torch.where(scale == 1, var.to(scale), restored))  # 1: identity, exact


@contextmanager
def in_parent_units(
    model: nn.Module, units: Sequence[UnitLayer], transforms: Mapping[str, SpaceTransform]
) -> Iterator[None]:
    """Within the block, the merged model (in BatchNorm units) is in its parents' units.

    For re-estimating its BatchNorm as the parents' was: in BatchNorm units a BatchNorm adds
    its epsilon to a variance divided by s², where the parent added it to the variance itself,
    and the batches' normalized features that later BatchNorms see would differ by that share
    (a merge that must give its parents back, at rho 0, missed them by about 1e-4 of the zoo
    ResNets' outputs).
    """
    restore_units(model, units, transforms)
    try:
        yield
    finally:
        restore_units(model, units, transforms, inverse=True)


def _multiply(module: nn.Module, names: tuple[str, ...], scale: torch.Tensor) -> None:
    """Multiply the named tensors of ``module`` (those it has) by ``scale`` along axis 0."""
    for name in names:
        tensor = getattr(module, name, None)
        if tensor is not None:
            tensor.mul_(_along_rows(scale, tensor).to(tensor))
