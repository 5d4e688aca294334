"""Sizes of models and merges: parameters and FLOPs, counted without allocating weights.

``estimate`` predicts what ``zip_prepared`` will build for some settings without matching a
single neuron: the widths come from the one width planner (``heterogui.zip.plan``), and the
merged model is built on PyTorch's "meta" device, which has shapes but no memory, so even an
absurd width costs nothing to estimate. FLOPs count the multiply-adds of linear and convolution
layers (x2) for one input, from a forward pass on the meta device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from heterogui import pipeline
from heterogui.fusion.merged import MergedSpec, build_merged
from heterogui.zip.plan import plan_widths, stop_point

_COUNTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _layer_flops(module: nn.Module, output: torch.Tensor) -> int:
    """Return 2 x multiply-adds of one linear/conv layer for the batch that gave ``output``."""
    per_output = (
        module.in_features
        if isinstance(module, nn.Linear)
        else (module.in_channels // module.groups * int(torch.tensor(module.kernel_size).prod()))
    )
    return 2 * int(output.numel()) * int(per_output)


def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Return the forward FLOPs of ``module`` for one input of ``input_shape`` (hooks count).

    The forward runs on the module's device; a meta-device module counts without computing.
    """
    total = 0

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        nonlocal total
        total += _layer_flops(mod, out)

    was_training = module.training
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, _COUNTED)]
    try:
        module.eval()  # never let a counting run touch BatchNorm running statistics
        with torch.no_grad():
            module(torch.zeros((1, *input_shape), device=_device_of(module)))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def input_shape(prepared: pipeline.Prepared) -> tuple[int, ...] | None:
    """Return the shape of one calibration input without the batch axis (None for dicts)."""
    batch = prepared.batches[0]
    return tuple(batch.shape[1:]) if isinstance(batch, torch.Tensor) else None


def parameters_and_flops(model: nn.Module, shape: tuple[int, ...] | None) -> dict[str, int | None]:
    """Return the parameters and FLOPs (None without an input shape: token inputs) of a model."""
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops": count_flops(model, shape) if shape is not None else None,
    }


def shape_only(build: Any) -> nn.Module:
    """Return ``build()`` on the meta device: shapes without memory, for counting only."""
    with torch.device("meta"):
        return build()


def reference_sizes(prepared: pipeline.Prepared) -> dict[str, dict[str, int | None]]:
    """Return parameters and FLOPs of A, B and their ensemble (A + B)."""
    shape = input_shape(prepared)
    out = {}
    for key, net in (("A", prepared.net_a), ("B", prepared.net_b)):
        module = shape_only(lambda n=net: n.family.build(n.config))
        out[key] = parameters_and_flops(module, shape)
    out["ensemble"] = {
        k: None if out["A"][k] is None else out["A"][k] + out["B"][k]
        for k in ("parameters", "flops")
    }
    return out


def merged_widths(
    prepared: pipeline.Prepared, settings: pipeline.ZipSettings
) -> dict[str, tuple[int, int, int]]:
    """Return (n_A, n_B, merged width) per merge point, as ``zip_prepared`` will choose them.

    Raises:
        ConfigError, MatcherError: see ``heterogui.zip.plan.plan_widths``.
    """
    ga, gb = prepared.padded_a.graph(), prepared.padded_b.graph()
    return plan_widths(ga, gb, settings, stop_point(ga, settings))


def estimate(prepared: pipeline.Prepared, settings: pipeline.ZipSettings) -> dict[str, Any]:
    """Return the merged widths, parameters and FLOPs that ``settings`` will give.

    Raises:
        ConfigError, MatcherError: see ``merged_widths``.
    """
    widths = merged_widths(prepared, settings)
    pa, pb = prepared.padded_a, prepared.padded_b
    ga = pa.graph()
    stop = stop_point(ga, settings)
    trunk = pa.family.resize(pa.config, {s: w[2] for s, w in widths.items()})
    boundary = ga.block_out[stop - 1] if stop > 0 else None
    layout = ga.spaces[boundary].captures[0].layout if boundary else None
    spec = MergedSpec(
        trunk, (pa.config, pb.config), stop, layout, (pa.task_heads(), pb.task_heads())
    )
    model = shape_only(lambda: build_merged(spec))
    return {"widths": widths, "stop": stop, **parameters_and_flops(model, input_shape(prepared))}


def merged_size(model: Any, prepared: pipeline.Prepared) -> dict[str, int | None]:
    """Return the parameters and FLOPs of a merged model on the pair's inputs.

    Counted on a shape-only copy: the model itself (shared with a session) runs nothing.
    """
    return parameters_and_flops(shape_only(lambda: build_merged(model.spec)), input_shape(prepared))
