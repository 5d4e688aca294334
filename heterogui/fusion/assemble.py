"""The merged model: fused trunk, tails, unmerge matrices (docs/method.md sec. 9).

``assemble`` is the fusion step of every merge, of two models (``pipeline.zip_prepared``) or
more (``nway.zip_group_prepared``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from heterogui.fusion.fuse import SpaceTransform, fuse_state
from heterogui.fusion.merged import MergedModel, MergedSpec, build_merged, unmerge_name
from heterogui.models.family import Network
from heterogui.models.storage import allocate
from heterogui.zip.match import Match


def assemble(
    padded: Sequence[Network],
    matches: dict[str, Match],
    transforms: dict[str, SpaceTransform],
    stop: int,
    dtype: torch.dtype,
) -> tuple[MergedModel, MergedSpec]:
    """Return the merged model: fused trunk weights, the tails, the unmerge at the stop point.

    padded: the padded models (A, B, and more for an N-way zip), in the matches' model order.
    """
    first = padded[0]
    ga = first.graph()
    widths = {s: m.width for s, m in matches.items()}
    trunk_config = first.family.resize(first.config, widths)
    boundary = ga.block_out[stop - 1] if stop > 0 else None
    layout = ga.spaces[boundary].captures[0].layout if boundary else None
    configs = tuple(net.config for net in padded)
    spec = MergedSpec(trunk_config, configs, stop, layout, tuple(n.task_heads() for n in padded))
    # built on the meta device and handed the fused tensors themselves (assign): the fused
    # weights are held once, not once more as the model's own copy
    model = build_merged(spec, "meta")
    states = [net.module.state_dict() for net in padded]
    fused = fuse_state(ga.tensors, states, transforms, stop)
    state = {f"trunk.{k[len('blocks.') :]}": _as(v, dtype) for k, v in fused.items()}
    del fused
    for m, st in enumerate(states):
        for key, value in st.items():
            block, rest = key.split(".", 2)[1:]
            if int(block) >= stop:  # each model's own tensors: copied, never shared
                state[f"tails.{m}.{int(block) - stop}.{rest}"] = _as(value, dtype, copy=True)
    if boundary:
        for m, u in enumerate(transforms[boundary].unmerge):
            state[unmerge_name(m)] = _as(u, dtype, copy=True)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    stray = [k for k in missing if not k.endswith("num_batches_tracked")]
    if stray or unexpected:
        raise AssertionError(f"merged state mismatch: missing {stray}, unexpected {unexpected}")
    allocate(model, transforms_device(transforms, first))  # the batch counters; rotary tables
    return model.to(dtype=dtype), spec


def _as(tensor: torch.Tensor, dtype: torch.dtype, copy: bool = False) -> torch.Tensor:
    """Return a floating tensor in ``dtype`` (others as they are); a new tensor with copy."""
    if tensor.is_floating_point():
        return tensor.to(dtype=dtype, copy=copy)
    return tensor.clone() if copy else tensor


def transforms_device(transforms: dict[str, SpaceTransform], net: Network) -> torch.device:
    """Return the device the merged model is built on (that of the inputs)."""
    return next(net.module.parameters()).device
