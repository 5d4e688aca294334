"""The merged model: fused trunk, tails, unmerge matrices (docs/method.md sec. 9).

``build_merge`` runs every step after matching, for two models (``pipeline.zip_prepared``) or
more (``nway.zip_group_prepared``): the least-squares unmerges, the fused model (``assemble``),
the sequential refit, renormalization and the merged model's BatchNorm.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from heterogui.fusion.bn import reestimate_batch_norm
from heterogui.fusion.bn_units import UnitLayer, fusion_states, restore_units, unit_scales
from heterogui.fusion.fuse import SpaceTransform, fuse_state
from heterogui.fusion.merged import (
    MergedModel,
    MergedSpec,
    build_merged,
    load_merged,
    unmerge_name,
)
from heterogui.fusion.norm_weights import weigh_norms, weigh_tensors
from heterogui.fusion.pinning import pinned_channels
from heterogui.fusion.regression import Regression, fit_regressions
from heterogui.fusion.sequential import refit_sequentially, refit_tails
from heterogui.fusion.split_heads import split_heads, split_rank
from heterogui.models.bert import LayerNames
from heterogui.models.capture import Batch
from heterogui.models.family import Network
from heterogui.models.graph import ModelGraph
from heterogui.stages import timed
from heterogui.zip.collect import StatKey
from heterogui.zip.match import Match
from heterogui.zip.plan import ZipSettings
from heterogui.zip.stats import Moments

# the fusions that refit the heads' unmerge on the finished merge (``refit_tails``)
REFITS_TAILS = ("least_squares_heads", "least_squares_sequential")


def assemble(
    padded: Sequence[Network],
    states: Sequence[dict[str, torch.Tensor]],
    matches: dict[str, Match],
    transforms: dict[str, SpaceTransform],
    stop: int,
    dtype: torch.dtype,
) -> tuple[MergedModel, MergedSpec]:
    """Return the merged model: fused trunk weights, the tails, the unmerge at the stop point.

    padded: the padded models (A, B, and more for an N-way zip), in the matches' model order;
    states: the state dicts fused, one a model (``fusion.bn_units.fusion_states``).
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
    inert = [ga.inert, *(net.graph().inert for net in padded[1:])]
    fused = fuse_state(ga.tensors, states, transforms, stop, inert)
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
    load_merged(model, state, transforms_device(transforms, first))
    return model.to(dtype=dtype), spec


def _as(tensor: torch.Tensor, dtype: torch.dtype, copy: bool = False) -> torch.Tensor:
    """Return a floating tensor in ``dtype`` (others as they are); a new tensor with copy."""
    if tensor.is_floating_point():
        return tensor.to(dtype=dtype, copy=copy)
    return tensor.clone() if copy else tensor


def transforms_device(transforms: dict[str, SpaceTransform], net: Network) -> torch.device:
    """Return the device the merged model is built on (that of the inputs)."""
    return next(net.module.parameters()).device


@dataclass
class BuiltMerge:
    """The merged model of a matching, fused and finished (``build_merge``).

    refit: weights the sequential least-squares refit fitted again; renormalized: merged
    outputs renormalization rescaled (0 when not asked).
    """

    model: MergedModel
    spec: MergedSpec
    transforms: dict[str, SpaceTransform]
    refit: int = 0
    renormalized: int = 0


def build_merge(
    padded: Sequence[Network],
    matches: dict[str, Match],
    regressions: dict[str, Regression],
    batches: list[Batch],
    dev: torch.device,
    stop: int,
    settings: ZipSettings,
    dtype: torch.dtype,
    timings: dict[str, float],
    report: Callable[[str, float], None],
    renormalize: Callable[[MergedModel, dict[str, Match], int], int] | None = None,
) -> BuiltMerge:
    """Return the merged model of ``matches``: fused, refit, renormalized, BatchNorm re-estimated.

    The steps after matching, for two models (``zip_prepared``) or more (``nway``): the
    transforms (with the least-squares unmerges), the fused model (``fusion.assemble``; in
    BatchNorm units when the settings ask: ``fusion.bn_units``), the
    sequential refit when the settings ask for it, the stream's RMSNorms weighed when the
    settings ask (``fusion.norm_weights``), ``renormalize(model, matches, stop)`` when
    given, the heads split (``fusion.split_heads``) when the settings ask for it, and the merged
    model's BatchNorm (identity channels pinned).

    Raises:
        ConfigError: a heads split that these models cannot take (``split_rank``).
    """
    rank = split_rank(padded[0].family, padded[0].config, settings.heads, len(padded))
    transforms = {
        s: SpaceTransform.from_match(m, dtype, dev, regressions.get(s)) for s, m in matches.items()
    }
    units = unit_scales(padded, stop) if settings.bn_units else []
    states = fusion_states(padded, units)
    model, spec = timed(
        timings, "fuse", lambda: assemble(padded, states, matches, transforms, stop, dtype)
    )
    pinned = pinned_channels(model, padded, matches, stop)
    built = BuiltMerge(model, spec, transforms)
    graph = padded[0].graph()
    scales = weigh_norms(model, graph, matches, stop) if settings.norm_weights else None
    if settings.fusion == "least_squares_sequential":
        reweigh = None if scales is None else partial(weigh_tensors, model, graph, scales)
        _refit(built, padded, states, batches, dev, stop, settings, pinned, units, reweigh, timings)
    if units:
        restore_units(model, units, transforms)
    if renormalize is not None:
        built.renormalized = timed(
            timings, "renormalize", lambda: renormalize(model, matches, stop)
        )
    if rank is not None:
        _split(built, padded[0].family.attention_names, rank, timings)
    _finish(built.model, padded, batches, dev, pinned, settings, timings, report)
    return built


def _refit(
    built: BuiltMerge,
    padded: Sequence[Network],
    states: Sequence[dict[str, torch.Tensor]],
    batches: list[Batch],
    dev: torch.device,
    stop: int,
    settings: ZipSettings,
    pinned: dict[str, torch.Tensor],
    units: Sequence[UnitLayer],
    reweigh: Callable[[Collection[str]], None] | None,
    timings: dict[str, float],
) -> None:
    """Refit the fused model's weights block by block (``refit_sequentially``), timed "refit";
    reweigh: what weighs the stream's writers again once refit (weighted norms), or None."""
    model, transforms, ridge = built.model, built.transforms, settings.ridge
    built.refit = timed(
        timings,
        "refit",
        lambda: refit_sequentially(
            model, padded, states, transforms, batches, dev, stop, ridge, pinned, units, reweigh
        ),
    )


def _split(built: BuiltMerge, names: LayerNames, rank: int, timings: dict[str, float]) -> None:
    """Split the merged model's heads (``split_heads``), timed "split"; ``built`` takes it."""
    model = built.model
    built.model = timed(timings, "split", lambda: split_heads(model, names, rank))
    built.spec = built.model.spec


def _finish(
    model: MergedModel,
    padded: Sequence[Network],
    batches: list[Batch],
    dev: torch.device,
    pinned: dict[str, torch.Tensor],
    settings: ZipSettings,
    timings: dict[str, float],
    report: Callable[[str, float], None],
) -> None:
    """Re-estimate the merged model's BatchNorm, set it to eval, refit its tails when asked."""
    timed(
        timings,
        "bn_merged",
        lambda: reestimate_batch_norm(
            model, batches, dev, pinned, progress=lambda f: report("bn_merged", f)
        ),
    )
    model.eval()
    if settings.fusion in REFITS_TAILS:
        timed(
            timings,
            "refit_tails",
            lambda: refit_tails(model, padded, batches, dev, settings.ridge),
        )


def least_squares_unmerges(
    stats: dict[StatKey, Moments],
    graphs: Sequence[ModelGraph],
    settings: ZipSettings,
    stop: int,
    matches: dict[str, Match],
) -> dict[str, Regression]:
    """Return the least-squares unmerges of ``matches`` (none with the paper's fusion)."""
    if not settings.fusion.startswith("least_squares"):
        return {}
    return fit_regressions(stats, graphs, matches, stop, settings.ridge)
