"""Sizes for the live readout: merged widths, parameters and FLOPs, before and after a merge.

``estimate`` predicts what ``zip_prepared`` will build for some settings without matching a
single neuron: widths follow the same rules as ``pipeline.match_spaces`` and the merged model is
built with uninitialised memory (no initialisation cost), so a slider can update the readout at
once. FLOPs count the multiply-adds of linear and convolution layers (x2) for one input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from heterogui import pipeline
from heterogui.models.graph import INPUT
from heterogui.zip.matchers import target_width

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
    """Return the forward FLOPs of ``module`` for one input of ``input_shape`` (hooks count)."""
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


def parameters_and_flops(model: nn.Module, prepared: pipeline.Prepared) -> dict[str, int | None]:
    """Return the parameters and FLOPs (None for token inputs) of a model on the pair's inputs."""
    shape = input_shape(prepared)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops": count_flops(model, shape) if shape is not None else None,
    }


def scratch_copy(build: Any) -> nn.Module:
    """Return ``build()`` with uninitialised CPU memory: cheap to make, for counting only.

    Counting FLOPs on a model shared with other sessions would let the hooks see their
    forwards; a scratch copy has the same shapes and nothing else.
    """
    with torch.device("meta"):
        module = build()
    return module.to_empty(device="cpu")


def reference_sizes(prepared: pipeline.Prepared) -> dict[str, dict[str, int]]:
    """Return parameters and FLOPs of A, B and their ensemble (A + B)."""
    out = {}
    for key, net in (("A", prepared.net_a), ("B", prepared.net_b)):
        module = scratch_copy(lambda n=net: n.family.build(n.config))
        out[key] = parameters_and_flops(module, prepared)
    out["ensemble"] = {
        k: None if out["A"][k] is None else out["A"][k] + out["B"][k]
        for k in ("parameters", "flops")
    }
    return out


def merged_widths(
    prepared: pipeline.Prepared, settings: pipeline.ZipSettings
) -> dict[str, tuple[int, int, int]]:
    """Return (n_A, n_B, merged width) per merge point, as ``zip_prepared`` would choose them.

    Raises:
        ConfigError: a stop point out of range or an unknown override (as the merge would).
    """
    ga, gb = prepared.padded_a.graph(), prepared.padded_b.graph()
    stop = _stop(prepared, settings)
    spaces = sorted({a.space for t in ga.tensors if t.block < stop for a in t.axes} - {INPUT})
    if any(ga.spaces[s].head_dim for s in spaces):  # attention heads: widths come in heads
        matches = pipeline.match_spaces(prepared, settings, stop)
        return {s: (m.n_a, m.n_b, m.width) for s, m in matches.items()}
    out = {}
    for space in spaces:
        n_a, n_b = ga.spaces[space].width, gb.spaces[space].width
        if space in ga.dead or space in gb.dead:
            out[space] = (n_a, n_b, n_b if space in ga.dead else n_a)
            continue
        knobs = settings.for_space(space)
        width = knobs["width"]
        if width is None and knobs["matcher"] in ("permute", "average"):
            width = n_a
        if width is None:
            width = target_width(n_a, n_b, knobs["rho"])
        out[space] = (n_a, n_b, int(width))
    return out


def _stop(prepared: pipeline.Prepared, settings: pipeline.ZipSettings) -> int:
    n_blocks = prepared.padded_a.graph().num_blocks - 1
    stop = n_blocks if settings.stop is None else settings.stop
    if not 0 <= stop <= n_blocks:
        raise pipeline.ConfigError(f"stop point {stop} is out of range: use 0..{n_blocks}")
    return stop


def estimate(prepared: pipeline.Prepared, settings: pipeline.ZipSettings) -> dict[str, Any]:
    """Return the merged widths, parameters and FLOPs that ``settings`` will give.

    Raises:
        ConfigError: see ``merged_widths``.
    """
    widths = merged_widths(prepared, settings)
    pa, pb = prepared.padded_a, prepared.padded_b
    stop = _stop(prepared, settings)
    trunk = pa.family.resize(pa.config, {s: w[2] for s, w in widths.items()})
    ga = pa.graph()
    boundary = ga.block_out[stop - 1] if stop > 0 else None
    layout = ga.spaces[boundary].captures[0].layout if boundary else None
    spec = pipeline.MergedSpec(
        trunk, (pa.config, pb.config), stop, layout, (pa.head_classes(), pb.head_classes())
    )
    model = scratch_copy(lambda: pipeline.build_merged(spec))
    return {"widths": widths, "stop": stop, **parameters_and_flops(model, prepared)}
