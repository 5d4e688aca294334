"""Merging three or more models at once: the N-way zip (docs/method.md sec. 12).

The two-model pipeline (``pipeline``) generalised where a third model changes something:

- depth: one model at least as deep as every other in every stage is the reference; every
  other model is aligned to it (a CKA pass with the reference, then the alignment mode) and
  padded to its blocks, so all models share one topology;
- statistics: one feature pass of all models collects the moments of [f_1 ; ... ; f_N];
- width: every merge point is zipped by ``zip_group``: the greedy zip over the features of all
  models, one within-model budget per model, to the width O - round(rho (O - max n_m)) (rho 1:
  the widest model's width). A merge point that some models do not use (an identity block's
  inner layer) is zipped over the models that use it; the others' features are dropped;
- fusion: W* = sum over models of M_m W_m U_m (the paper's average, least squares, or least
  squares refit block by block on the merged model's own inputs);
- the merged model runs one tail and head per model.

The same engine pieces as two models (fusion, the merged model, BatchNorm re-estimation);
an N-way merge of two models is the two-model merge. Not supported here (clear errors):
attention layers (transformers merge two at a time: a merge is model A of the next merge),
the one-to-one matchers and renormalization.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from heterogui.align.alignment import Alignment, align, placed_by_depths
from heterogui.align.similarity import layer_similarities, resolve_measure
from heterogui.analysis import pad_aligned
from heterogui.api_input import (
    check_engine_options,
    check_networks,
    checked_batches,
    widened,
)
from heterogui.config import DEFAULT_FUSION, FUSIONS, check_fusion
from heterogui.errors import ConfigError, IncompatibleModelsError
from heterogui.fusion.assemble import build_merge, least_squares_unmerges
from heterogui.fusion.fuse import SpaceTransform
from heterogui.fusion.merged import MergedModel, MergedSpec
from heterogui.models.capture import Batch
from heterogui.models.family import Network
from heterogui.models.graph import ModelGraph, space_order
from heterogui.models.hf.instances import unmerged_input
from heterogui.pair_check import check_pair
from heterogui.pipeline import (
    Progress,
    resolve_device,
    resolved_settings,
    space_correlation,
)
from heterogui.ready import ready_with_similarities
from heterogui.stages import timed
from heterogui.zip.collect import StatKey, collect_moments, similarity_and_moments
from heterogui.zip.match import Match
from heterogui.zip.matchers import zip_group, zip_group_naive
from heterogui.zip.plan import (
    ZipSettings,
    check_override_names,
    checked_settings,
    stop_point,
    trunk_spaces,
)
from heterogui.zip.stats import Moments
from heterogui.zip.widths import group_width

GROUP_MATCHERS = {"zip": zip_group, "zip_naive": zip_group_naive}
GROUP_FUSIONS = tuple(f for f in FUSIONS if f != DEFAULT_FUSION)  # "auto" is resolved first


@dataclass
class PreparedGroup:
    """Steps 1-4 of an N-way merge; everything a re-merge needs.

    nets: the models, ready (on the device, BatchNorm re-estimated), in the caller's order.
    reference: the index of the model every other one is aligned to.
    alignments: per model, its alignment to the reference (A = the reference, B = the model);
        None for the reference itself.
    padded: per model, the model padded to the reference's blocks.
    measure: what the CKA of the alignments compared (the family's when asked for "auto").
    """

    nets: tuple[Network, ...]
    reference: int
    alignments: tuple[Alignment | None, ...]
    padded: tuple[Network, ...]
    stats: dict[StatKey, Moments]
    batches: list[Batch]
    device: torch.device
    measure: str = "outputs"  # what the alignment's CKA compared ("auto" resolved)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class GroupMergeResult:
    """The merged model of an N-way zip with what explains it."""

    model: MergedModel
    spec: MergedSpec
    matches: dict[str, Match]
    transforms: dict[str, SpaceTransform]
    prepared: PreparedGroup
    settings: ZipSettings
    timings: dict[str, float] = field(default_factory=dict)
    refit: int = 0  # weights the sequential least-squares refit fitted again

    def widths(self) -> dict[str, tuple[int, ...]]:
        """Return every model's width and the merged width of each merge point, in
        ``space_order`` (``MergeResult.widths`` for N models)."""
        order = sorted(self.matches, key=space_order)
        return {s: (*self.matches[s].sizes, self.matches[s].width) for s in order}


def reference_model(graphs: Sequence[ModelGraph]) -> int:
    """Return the first model at least as deep as every other in every stage.

    Raises:
        IncompatibleModelsError: no model is (each is deeper somewhere), naming the depths.
    """
    depths = [tuple(len(stage) for stage in g.stages) for g in graphs]
    for k, mine in enumerate(depths):
        if all(a >= b for other in depths for a, b in zip(mine, other, strict=True)):
            return k
    raise IncompatibleModelsError(
        f"no model is at least as deep as every other in every stage (blocks per stage: "
        f"{', '.join(str(list(d)) for d in depths)}); an N-way merge pads every model to one "
        "model's blocks: merge models whose deepest model is deepest in every stage, or merge "
        "two at a time"
    )


def prepare_group(
    nets: Sequence[Network],
    batches: list[Batch],
    *,
    mode: str = "sma",
    device: str | torch.device = "auto",
    reset_input_bn: bool = True,
    progress: Progress | None = None,
    measure: str = "auto",
) -> PreparedGroup:
    """Run steps 1-4 for N models: BatchNorm, CKA with the reference, alignment, padding, stats.

    The caller's models are not modified (see ``pipeline.prepare``). measure: what the CKA
    compares (``align.similarity``; "auto": the family's).

    Raises:
        ConfigError: fewer than two models, or an alignment mode that needs a manual mapping.
        IncompatibleModelsError: models that cannot be merged with the first, or no reference.
        AlignmentError: see ``align``.
    """
    _check_group(nets, mode)
    dev = resolve_device(device)
    report = progress or (lambda _stage, _frac: None)
    timings: dict[str, float] = {}
    graphs = [net.graph() for net in nets]
    ref = reference_model(graphs)
    others = [k for k in range(len(nets)) if k != ref]
    measure = resolve_measure(nets[ref], measure)
    one_pass = all(placed_by_depths(graphs[ref], graphs[k], mode) for k in others)
    ready, similarities = ready_with_similarities(
        nets, batches, dev, reset_input_bn, timings, report, None if one_pass else measure, ref
    )
    stats: dict[StatKey, Moments] | None = None
    if one_pass:
        similarities, stats = timed(
            timings,
            "analysis",
            lambda: similarity_and_moments(
                ready, batches, dev, lambda f: report("analysis", f), measure, ref
            ),
        )
    elif similarities is None:  # a CKA pass of its own (else from the BatchNorm pass)
        similarities = _similarity_pass(ready, ref, others, batches, dev, measure, timings, report)
    alignments, padded = _aligned_to(ref, graphs, ready, similarities, mode, batches, dev, timings)
    if stats is None:
        stats = timed(
            timings,
            "features",
            lambda: collect_moments(padded, batches, dev, progress=lambda f: report("features", f)),
        )
    return PreparedGroup(
        tuple(ready), ref, tuple(alignments), tuple(padded), stats, batches, dev, measure, timings
    )


def _similarity_pass(
    ready: Sequence[Network],
    ref: int,
    others: Sequence[int],
    batches: list[Batch],
    dev: torch.device,
    measure: str,
    timings: dict[str, float],
    report: Progress,
) -> list[torch.Tensor]:
    """Run the CKA pass of the reference against every other model (timed as "similarity")."""
    return timed(
        timings,
        "similarity",
        lambda: layer_similarities(
            ready[ref],
            [ready[k] for k in others],
            batches,
            dev,
            progress=lambda f: report("similarity", f),
            measure=measure,
        ),
    )


def _check_group(nets: Sequence[Network], mode: str) -> None:
    """Raise if ``nets`` cannot be merged N-way with alignment ``mode``.

    Raises:
        ConfigError: fewer than two models, or an alignment mode that needs a manual mapping.
        IncompatibleModelsError: models that cannot be merged with the first.
    """
    if len(nets) < 2:
        raise ConfigError(f"an N-way merge needs at least two models, got {len(nets)}")
    if mode == "manual":
        raise ConfigError(
            "an N-way merge aligns every model to the deepest with an automatic mode; use sma, "
            "lma, lma_first, lma_similar, uniform, head or head_tail"
        )
    for net in nets[1:]:
        check_pair(nets[0], net)


def _aligned_to(
    ref: int,
    graphs: Sequence[ModelGraph],
    ready: Sequence[Network],
    similarities: Sequence[torch.Tensor],
    mode: str,
    batches: list[Batch],
    dev: torch.device,
    timings: dict[str, float],
) -> tuple[list[Alignment | None], list[Network]]:
    """Return every model's alignment to the reference and its padded network.

    graphs: the models' graphs; similarities: the CKA of the reference with each other model,
    in model order. The reference keeps no alignment (None) and is its own padding.
    """
    alignments: list[Alignment | None] = [None] * len(ready)
    padded: list[Network] = list(ready)
    others = [k for k in range(len(ready)) if k != ref]
    for k, similarity in zip(others, similarities, strict=True):
        alignment = timed(
            timings, "alignment", lambda k=k, s=similarity: align(graphs[ref], graphs[k], s, mode)
        )
        alignments[k] = alignment
        padded[k] = timed(
            timings,
            "padding",
            lambda k=k, a=alignment: pad_aligned(ready[k], a.positions_b, a.depths, batches, dev),
        )
    return alignments, padded


def check_group_settings(settings: ZipSettings) -> None:
    """Raise if an N-way zip cannot follow ``settings``.

    Raises:
        ConfigError: a one-to-one matcher, renormalization or heads other than paired.
    """
    matchers = {settings.matcher, *(o.get("matcher", "zip") for o in settings.overrides.values())}
    if not matchers <= set(GROUP_MATCHERS):
        raise ConfigError(
            f"an N-way merge zips with {sorted(GROUP_MATCHERS)}, not {sorted(matchers)}; "
            "set zip.matcher: zip"
        )
    check_fusion(settings.fusion, settings.ridge)
    if settings.fusion not in GROUP_FUSIONS:
        raise ConfigError(
            f"an N-way merge fuses with {list(GROUP_FUSIONS)}, not {settings.fusion!r}; set "
            "zip.fusion to one of them"
        )
    if settings.renormalize:
        raise ConfigError("an N-way merge does not renormalize; set zip.renormalize: false")
    if settings.heads != "pair" or any(
        o.get("heads", "pair") != "pair" for o in settings.overrides.values()
    ):
        raise ConfigError(
            "an N-way merge pairs attention heads as the paper does (zip.heads: pair); remove "
            "zip.heads and its overrides, or merge two models at a time"
        )


def match_group(prepared: PreparedGroup, settings: ZipSettings, stop: int) -> dict[str, Match]:
    """Return the N-way matching of every merge point that a trunk of ``stop`` blocks uses.

    Raises:
        ConfigError: attention layers, overrides of unknown merge points, bad widths.
        MatcherError: see ``zip_group``.
    """
    graphs = [net.graph() for net in prepared.padded]
    first = graphs[0]
    check_override_names(first, settings, graphs[1:])
    matches = {}
    for space in trunk_spaces(first, stop):
        if first.spaces[space].head_dim:
            raise ConfigError(
                f"{space} is an attention layer: an N-way merge zips models without attention "
                "(CNNs, MLPs); merge transformers two at a time (a merge is model A of the next)"
            )
        sizes = tuple(g.spaces[space].width for g in graphs)
        live = [k for k, g in enumerate(graphs) if space not in g.dead]
        matches[space] = _match_space(prepared, settings, stop, space, sizes, live)
    return matches


def _match_space(
    prepared: PreparedGroup,
    settings: ZipSettings,
    stop: int,
    space: str,
    sizes: tuple[int, ...],
    live: list[int],
) -> Match:
    """Return the zip of the models in ``live`` at ``space``; the others' features dropped."""
    offsets = np.cumsum((0, *sizes))
    rows = np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in live])
    live_sizes = tuple(sizes[k] for k in live)
    groups = np.full(offsets[-1], -1, dtype=np.int64)
    if len(live) == 1:  # a layer only one model uses: kept as it is
        groups[rows] = np.arange(rows.size)
        return Match.of_sizes(torch.from_numpy(groups), sizes, rows.size)
    knobs = settings.for_space(space)
    width = knobs["width"] or group_width(live_sizes, knobs["rho"])
    corr = space_correlation(prepared.stats, prepared.padded[0].graph(), space, stop)
    index = torch.from_numpy(rows)
    zipped = GROUP_MATCHERS[knobs["matcher"]](
        corr[index][:, index], live_sizes, width, knobs["alpha"], knobs["beta"]
    )
    groups[rows] = zipped.groups.numpy()
    return Match.of_sizes(torch.from_numpy(groups), sizes, width)


def zip_group_prepared(
    prepared: PreparedGroup,
    settings: ZipSettings | None = None,
    dtype: torch.dtype = torch.float32,
) -> GroupMergeResult:
    """Run steps 5-7 for N models from cached statistics: match, fuse, build, BatchNorm.

    Raises:
        ConfigError: see ``check_group_settings`` and ``match_group``.
        MatcherError: see ``zip_group``.
    """
    settings = resolved_settings(prepared.nets[0], settings, len(prepared.nets))
    check_group_settings(settings)
    timings: dict[str, float] = {}
    padded = prepared.padded
    stop = stop_point(padded[0].graph(), settings)
    matches = timed(timings, "match", lambda: match_group(prepared, settings, stop))
    graphs = [net.graph() for net in padded]
    regressions = timed(
        timings,
        "regression",
        lambda: least_squares_unmerges(prepared.stats, graphs, settings, stop, matches),
    )
    built = build_merge(
        padded,
        matches,
        regressions,
        prepared.batches,
        prepared.device,
        stop,
        settings,
        dtype,
        timings,
        lambda _stage, _frac: None,
    )
    result = (built.model, built.spec, matches, built.transforms, prepared, settings, timings)
    return GroupMergeResult(*result, built.refit)


def merge_group(
    nets: Sequence[Network],
    batches: list[Batch],
    settings: ZipSettings | None = None,
    dtype: torch.dtype = torch.float32,
    **options,
) -> GroupMergeResult:
    """Merge N in-memory networks on calibration batches (``prepare_group`` + zip).

    options: ``prepare_group``'s keywords (mode, device, reset_input_bn, progress).

    Raises:
        ConfigError: objects that are not heterogui networks, or bad batches, settings or
            options (``api_input``), in one line.
        HeteroguiError: networks an N-way merge does not take (``check_group``).
    """
    nets = [unmerged_input(net, chr(ord("A") + k)) for k, net in enumerate(nets)]
    for k, net in enumerate(nets):
        if not isinstance(net, Network):
            cls = type(net)
            raise ConfigError(
                f"model {chr(ord('A') + k)} is a {cls.__module__}.{cls.__qualname__}; "
                "merge_group takes heterogui networks (zoo or heterogui folders: "
                "heterogui.run.load_pair(...).a.net, or heterogui.models.io.load_network) "
                "and merges (heterogui.merge's result)"
            )
    nets = widened(nets)
    check_networks(nets)
    check_engine_options({"dtype": dtype, **options}, prepare_group)
    settings = checked_settings(settings)
    batches = checked_batches(nets, batches)
    start = time.perf_counter()
    prepared = prepare_group(nets, batches, **options)
    result = zip_group_prepared(prepared, settings, dtype)
    result.timings["total"] = time.perf_counter() - start
    return result
