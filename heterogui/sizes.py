"""Sizes of models and merges: parameters and FLOPs, counted without allocating weights.

``estimate`` predicts what ``zip_prepared`` will build for some settings without matching a
single neuron: the widths come from the one width planner (``heterogui.zip.plan``), and the
merged model is built on PyTorch's "meta" device, which has shapes but no memory, so even an
absurd width costs nothing to estimate. FLOPs count the multiply-adds of linear and convolution
layers (x2) for one input, from a forward pass on the meta device (for a merge: once per pair
and stop point, ``merged_layer_flops``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from heterogui import pipeline
from heterogui.fusion.merged import MergedSpec, build_merged
from heterogui.fusion.regression import regressed_spaces
from heterogui.fusion.split_heads import split_config, split_rank, split_widths
from heterogui.matching import match_spaces
from heterogui.memo import ObjectMemo
from heterogui.models.capture import Batch, on_this_thread, run_model, to_device
from heterogui.models.storage import on_meta
from heterogui.zip.plan import family_settings, plan_widths, stop_point

_COUNTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _per_output(module: nn.Module) -> int:
    """Return the multiply-adds of one output value of a linear/conv layer."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.in_channels // module.groups * math.prod(module.kernel_size)


def _out_features(module: nn.Module) -> int:
    """Return the output features (channels) of a linear/conv layer."""
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _layer_flops(module: nn.Module, output: torch.Tensor) -> int:
    """Return 2 x multiply-adds of one linear/conv layer for the batch that gave ``output``."""
    return 2 * int(output.numel()) * _per_output(module)


def count_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Return the forward FLOPs of ``module`` for one input of ``input_shape`` (hooks count).

    The forward runs on the module's device; a meta-device module counts without computing.
    """
    return sum(layer_flops(module, input_shape).values())


def layer_flops(module: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Return the forward FLOPs of every linear and convolution layer of ``module``, by name."""
    flops: dict[str, int] = {}
    names = {m: n for n, m in module.named_modules()}

    def count(mod: nn.Module, out: torch.Tensor) -> None:
        flops[names[mod]] = flops.get(names[mod], 0) + _layer_flops(mod, out)

    with _counting(module, count):
        module(torch.zeros((1, *input_shape), device=_device_of(module)))
    return flops


def batch_flops(module: nn.Module, batches: list[Batch], device: torch.device | str) -> int:
    """Return the FLOPs of the linear and convolution layers of ``module`` over ``batches``.

    The batches run as a pass runs them (padded token positions count: the forward computes
    them).
    """
    total = [0]

    def count(mod: nn.Module, out: torch.Tensor) -> None:
        total[0] += _layer_flops(mod, out)

    with _counting(module, count):
        for batch in batches:
            run_model(module, to_device(batch, device))
    return total[0]


@contextmanager
def _counting(
    module: nn.Module, count: Callable[[nn.Module, torch.Tensor], None]
) -> Iterator[None]:
    """Within the block, call ``count(layer, output)`` after every linear and conv layer.

    The module runs in eval mode without gradients (a counting run never touches BatchNorm
    running statistics) and gets its mode and hooks back on exit.
    """
    was_training = module.training
    handles = [
        m.register_forward_hook(on_this_thread(lambda mod, _inp, out: count(mod, out)))
        for m in module.modules()
        if isinstance(m, _COUNTED)
    ]
    try:
        module.eval()
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()


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


# A merge result or prepared pair does not change once made; the workbench shows its sizes in
# several places (readout, report, card) while FLOPs need a forward pass (on the meta device).
_SIZES = ObjectMemo()


def reference_sizes(prepared: pipeline.Prepared) -> dict[str, dict[str, int | None]]:
    """Return parameters and FLOPs of A, B and their ensemble (A + B); computed once per pair."""
    return copy.deepcopy(_SIZES.get(prepared, "reference", lambda: _reference_sizes(prepared)))


def _reference_sizes(prepared: pipeline.Prepared) -> dict[str, dict[str, int | None]]:
    shape = input_shape(prepared)
    out = {}
    for key, net in (("A", prepared.net_a), ("B", prepared.net_b)):
        module = on_meta(lambda n=net: n.family.build(n.config))
        out[key] = parameters_and_flops(module, shape)
    out["ensemble"] = {
        k: None if out["A"][k] is None else out["A"][k] + out["B"][k]
        for k in ("parameters", "flops")
    }
    return out


def estimate(prepared: pipeline.Prepared, settings: pipeline.ZipSettings) -> dict[str, Any]:
    """Return the merged widths, parameters and FLOPs that ``settings`` will give.

    widths: (n_A, n_B, merged width) per merge point, of the model ``zip_prepared`` will make
    (an attention space's heads halved by a heads split). The stored sizes are exact; the
    effective ones too where the matchings are cheap (``_counts``), else close.

    Raises:
        ConfigError, MatcherError: see ``heterogui.zip.plan.plan_widths`` and
            ``fusion.split_heads.split_rank``.
    """
    pa, pb = prepared.padded_a, prepared.padded_b
    ga, gb = pa.graph(), pb.graph()
    settings = family_settings(settings, pa.family, graph=ga)  # as the merge resolves it
    stop = stop_point(ga, settings)
    widths = plan_widths(ga, gb, settings, stop)
    trunk = pa.family.resize(pa.config, {s: w[2] for s, w in widths.items()})
    rank = split_rank(pa.family, pa.config, settings.heads)
    if rank is not None:
        trunk = split_config(trunk, rank)
    boundary = ga.block_out[stop - 1] if stop > 0 else None
    layout = ga.spaces[boundary].captures[0].layout if boundary else None
    spec = MergedSpec(
        trunk, (pa.config, pb.config), stop, layout, (pa.task_heads(), pb.task_heads())
    )
    model = on_meta(lambda: build_merged(spec))
    counts, shared = _counts(prepared, settings, widths, stop)
    counts = split_widths(ga, counts, rank)
    # the paper's average reads no regression: the slider's estimate skips the graph walk
    least_squares = settings.fusion.startswith("least_squares")
    regressed = regressed_spaces((ga, gb), widths, stop) if least_squares else []
    dense = dense_readers(settings.fusion, regressed, shared)
    effective = effective_size(model, prepared, counts, dense)
    stored = stored_size(model, prepared)
    merged = split_widths(ga, {s: w[2] for s, w in widths.items()}, rank)
    widths = {s: (n_a, n_b, merged[s]) for s, (n_a, n_b, _) in widths.items()}
    return {"widths": widths, "stop": stop, **stored, "effective": effective}


def stored_size(model: Any, prepared: Any) -> dict[str, int | None]:
    """Return the parameters and FLOPs a merged model stores (structural zeros included).

    The model itself (shared with a session) runs nothing (``merged_layer_flops``).
    """
    flops = merged_layer_flops(model, prepared)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops": None if flops is None else sum(flops.values()),
    }


def merged_layer_flops(model: Any, prepared: Any) -> dict[str, int] | None:
    """Return the FLOPs of every linear and convolution layer of a merged model, by name.

    A layer's FLOPs are 2 x its output positions x its output features x the multiply-adds of
    one output. Widths change the last two only, so the positions are counted once per pair
    and stop point (a forward of a shape-only copy on the meta device) and every merge of the
    pair (a slider release) is counted from its layers' shapes. None for token inputs.
    """
    shape = input_shape(prepared)
    if shape is None:
        return None

    def count() -> dict[str, int]:
        copy = on_meta(lambda: build_merged(model.spec))
        modules = dict(copy.named_modules())
        return {
            name: flops // (2 * _out_features(modules[name]) * _per_output(modules[name]))
            for name, flops in layer_flops(copy, shape).items()
        }

    positions = _SIZES.get(prepared, ("positions", model.spec.stop), count)
    return {
        name: 2 * positions[name] * _out_features(module) * _per_output(module)
        for name, module in model.named_modules()
        if isinstance(module, _COUNTED)
    }


def merge_size(result: pipeline.MergeResult) -> dict[str, int | None]:
    """Return a merge's effective parameters and FLOPs, and what it stores beside them.

    Keys: "parameters" and "flops" (not structurally zero: what the merge computes with),
    "stored_parameters" and "stored_flops" (dense block-diagonal weights included). Both
    count the model's parameters: the unmerge matrices at the stop point, which the model file
    holds beside them as buffers, are in neither. Computed once per merge result.
    """
    return copy.deepcopy(_SIZES.get(result, "merge", lambda: _merge_size(result)))


def _merge_size(result: pipeline.MergeResult) -> dict[str, int | None]:
    stored = stored_size(result.model, result.prepared)
    return {
        **merged_effective_size(result),
        "stored_parameters": stored["parameters"],
        "stored_flops": stored["flops"],
    }


STORED_REASON = (
    "the stored model keeps unmerged neurons as dense block-diagonal weights: the zeros off "
    "the blocks are stored but never change an output (a least-squares fusion leaves fewer "
    "such zeros: its readers of a merge point take every merged feature)"
)


def _shared_counts(match: Any) -> tuple[int, int, int]:
    """Return (groups with A's features, groups with B's, groups with both) of a matching."""
    groups = match.groups
    a = set(groups[: match.n_a].tolist()) - {-1}
    b = set(groups[match.n_a :].tolist()) - {-1}
    return len(a), len(b), len(a & b)


# The most entries (sum of O² over the merge points) whose matchings an estimate computes to
# count the merge's shared groups exactly: the zoo pairs' take about 20 ms, and the merge that
# follows reuses the zips' steps. Larger pairs (a transformer's 2 x 3,072-feature MLPs) count
# them from the planned widths.
MATCHED_ESTIMATE_ENTRIES = 2**22


def _counts(
    prepared: pipeline.Prepared,
    settings: pipeline.ZipSettings,
    widths: dict[str, tuple[int, int, int]],
    stop: int,
) -> tuple[dict[str, tuple[int, int, int]], dict[str, tuple[bool, bool]]]:
    """Return the groups with A's features, B's and both per merge point, and whether some of
    A's and of B's features share a group (``merged_models``): from the matchings themselves
    where they are cheap (``MATCHED_ESTIMATE_ENTRIES``), else from the planned widths
    (``planned_counts``: any merge pairs features of both).

    Raises:
        MatcherError: a width the zip cannot reach (the merge would refuse it too).
    """
    if not estimated_by_matching(prepared, widths):
        counts = planned_counts(prepared, widths)
        return counts, {s: (n_a + n_b > r,) * 2 for s, (n_a, n_b, r) in widths.items()}
    matches = match_spaces(prepared, settings, stop)
    return (
        {s: _shared_counts(matches[s]) for s in widths},
        {s: merged_models(matches[s]) for s in widths},
    )


def merged_models(match: Any) -> tuple[bool, bool]:
    """Return whether some feature of A, and some feature of B, shares its group with another
    feature (of either model): its row of a least-squares unmerge reads every merged feature,
    where a feature alone in its group is copied (the paper's 0/1 row)."""
    groups = match.groups
    kept = groups >= 0
    sizes = torch.bincount(groups[kept], minlength=match.width)
    shared = kept & (sizes[groups.clamp(min=0)] >= 2)
    return bool(shared[: match.n_a].any()), bool(shared[match.n_a : match.n_a + match.n_b].any())


def estimated_by_matching(
    prepared: pipeline.Prepared, widths: dict[str, tuple[int, int, int]]
) -> bool:
    """Return whether ``estimate`` matches every merge point of these widths (cheap enough)."""
    entries = sum((n_a + n_b) ** 2 for n_a, n_b, _ in widths.values())
    return bool(prepared.stats) and entries <= MATCHED_ESTIMATE_ENTRIES


def planned_counts(
    prepared: pipeline.Prepared, widths: dict[str, tuple[int, int, int]]
) -> dict[str, tuple[int, int, int]]:
    """Return the counts of ``_shared_counts`` that planned widths imply (before matching).

    Merges are taken as A-B pairs first (exact for beta = 0, close otherwise); merges beyond
    min(n_A, n_B) fold features of the wider model together.
    """
    ga, gb = prepared.padded_a.graph(), prepared.padded_b.graph()
    out = {}
    for space, (n_a, n_b, r) in widths.items():
        if space in ga.dead or space in gb.dead:
            out[space] = (0, n_b, 0) if space in ga.dead else (n_a, 0, 0)
            continue
        merges = n_a + n_b - r
        shared = min(merges, n_a, n_b)
        extra = merges - shared  # within-model merges: the wider model loses groups
        a, b = (n_a - extra, n_b) if n_a >= n_b else (n_a, n_b - extra)
        out[space] = (a, b, shared)
    return out


def effective_entries(
    model: Any,
    prepared: pipeline.Prepared,
    counts: dict[str, tuple[int, int, int]],
    dense: dict[str, tuple[bool, bool]] | None = None,
) -> dict[str, int]:
    """Return, per parameter of a merged model, how many entries are not structurally zero.

    counts: per merge point, (groups holding A's features, B's, both). A fused entry (output
    group g, input group h) is zero by construction unless one model has features in both g
    and h (W* = sum_m M_m W_m U_m); layers of a padded identity block contribute nothing (they
    compute the identity). So at rho = 0 (no group shared) the count is exactly the
    ensemble's, and it falls as groups are shared. Tails count whole (minus identity blocks).

    dense: per merge point read through a least-squares unmerge (``fusion.regression``), for
    A and B, whether some of that model's features share a group (``merged_models``): their
    rows of the unmerge read every merged feature, so the model's readers take every merged
    group. Where all of a model's features stay alone in their groups, the
    regression is exactly the paper's 0/1 unmerge (rho = 0 stays the ensemble's count); the
    sequential refit fits on the merged model's own inputs, which differ from the parents',
    so its readers are counted dense throughout (``dense_readers``).
    """
    dense = dense or {}
    ga = prepared.padded_a.graph()
    identity = (prepared.padded_a.identity_blocks, prepared.padded_b.identity_blocks)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    out: dict[str, int] = {}
    for tag in ga.tensors:
        name = f"trunk.{tag.name.split('.', 1)[1]}"
        if tag.block >= model.spec.stop or name not in shapes:
            continue
        shape = shapes[name]
        axes = [a for a in tag.axes if a.space in counts]
        rest = math.prod(d for k, d in enumerate(shape) if k not in {a.dim for a in axes})
        real = [tag.block not in identity[m] for m in (0, 1)]
        terms = [math.prod(_groups_read(a, counts, dense, m) for a in axes) for m in (0, 1)]
        both = math.prod(_groups_read(a, counts, dense, 2) for a in axes)
        count = real[0] * terms[0] + real[1] * terms[1] - (real[0] and real[1]) * both
        out[name] = count * rest if axes else math.prod(shape) * any(real)
    for m, tail in enumerate(model.tails):
        for name, p in tail.named_parameters():
            block = model.spec.stop + int(name.split(".", 1)[0])
            out[f"tails.{m}.{name}"] = 0 if block in identity[m] else p.numel()
    return out


def _groups_read(
    axis: Any,
    counts: dict[str, tuple[int, int, int]],
    dense: dict[str, tuple[bool, bool]],
    m: int,
) -> int:
    """Return how many groups of ``axis``'s merge point hold entries of model ``m`` (2: of
    both), counting every group on an input axis that a dense unmerge reads."""
    a, b, both = counts[axis.space]
    if axis.role != "in" or axis.space not in dense:
        return counts[axis.space][m]
    dense_a, dense_b = dense[axis.space]
    width = a + b - both
    if m < 2:
        return width if (dense_a, dense_b)[m] else (a, b)[m]
    return width if dense_a and dense_b else b if dense_a else a if dense_b else both


def effective_size(
    model: Any,
    prepared: pipeline.Prepared,
    counts: dict[str, tuple[int, int, int]],
    dense: dict[str, tuple[bool, bool]] | None = None,
) -> dict[str, int | None]:
    """Return the parameters and FLOPs of a merge that are not structurally zero.

    The stored model keeps unmerged features as dense block-diagonal weights (exact zeros off
    the blocks); what it computes with is this effective size: exactly the ensemble's at
    rho = 0 (but under the sequential refit), falling as rho rises with the paper's fusion
    (``effective_entries``; ``dense``: least-squares readers).
    """
    entries = effective_entries(model, prepared, counts, dense)
    layers = merged_layer_flops(model, prepared)
    flops = None
    if layers is not None:
        weights = dict(model.named_parameters())
        flops = 0
        for layer, count in layers.items():
            total = weights[f"{layer}.weight"].numel()
            flops += count * entries.get(f"{layer}.weight", total) // total
    return {"parameters": sum(entries.values()), "flops": flops}


def merged_effective_size(result: pipeline.MergeResult) -> dict[str, int | None]:
    """Return the effective size of a merge from its matchings."""
    counts = {s: _shared_counts(m) for s, m in result.matches.items()}
    counts = split_widths(result.prepared.padded_a.graph(), counts, result.split_rank)
    regressed = [s for s, t in result.transforms.items() if t.regression is not None]
    merged = {s: merged_models(result.matches[s]) for s in regressed}
    dense = dense_readers(result.settings.fusion, regressed, merged)
    return effective_size(result.model, result.prepared, counts, dense)


def dense_readers(
    fusion: str, regressed: list[str], merged: dict[str, tuple[bool, bool]]
) -> dict[str, tuple[bool, bool]]:
    """Return ``effective_entries``' dense map of the merge points a least-squares fusion
    regresses (none with the paper's average): whether each model's features share a group;
    the sequential refit fits every reader on the merged model's own inputs, which differ from
    the parents' (a LayerNorm over both models' features, the earlier layers' errors), so
    there every reader of a regressed point takes every merged feature."""
    if fusion == "least_squares_sequential":
        return {s: (True, True) for s in regressed}
    return {s: merged[s] for s in regressed}
