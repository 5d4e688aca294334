"""The merge pipeline, stage by stage (docs/method.md sec. 1).

``prepare`` runs the models (BN re-estimation, CKA pass, alignment, padding, feature pass: the
passes themselves in ``analysis``) and keeps everything a re-merge needs; ``zip_prepared``
re-merges from those statistics without running A or B again, which is what the workbench
calls when a slider moves.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import torch

from heterogui.align.alignment import placed_by_depths
from heterogui.align.similarity import resolve_measure
from heterogui.analysis import (
    PROBE_BATCHES,
    analysed_from_probe,
    analysed_in_one_pass,
    realign,
    statistics_fit,
    with_measure,
)
from heterogui.config import check_fusion
from heterogui.errors import ConfigError
from heterogui.fusion.assemble import build_merge, least_squares_unmerges
from heterogui.fusion.merged import MergedModel
from heterogui.fusion.regression import Regression
from heterogui.fusion.renormalize import parents_statistics, renormalize
from heterogui.fusion.split_heads import split_rank
from heterogui.head_search import search_heads, searched_groups
from heterogui.matching import correlation, match_spaces, space_correlation
from heterogui.memo import ObjectMemo
from heterogui.models.capture import Batch
from heterogui.models.family import Network
from heterogui.models.graph import ModelGraph
from heterogui.pair_check import check_pair
from heterogui.prepared import MergeResult, Prepared
from heterogui.progress import Progress
from heterogui.ready import ready_with_similarities
from heterogui.stages import timed
from heterogui.zip.collect import collect_moments, statistics_bytes
from heterogui.zip.matchers import Match
from heterogui.zip.plan import (
    ZipSettings,
    checked_settings,
    family_settings,
    head_group_first,
    plan_widths,
    stop_point,
)

log = logging.getLogger(__name__)
# also the names callers import from here: the analysis (``analysis``), the step-5 matching
# (``matching``) and the results
__all__ = [
    "MergeResult",
    "Prepared",
    "ZipSettings",
    "correlation",
    "match_spaces",
    "prepare",
    "realign",
    "space_correlation",
    "with_measure",
    "zip_prepared",
]


def resolve_device(device: str | torch.device) -> torch.device:
    """Return a torch device; "auto" is CUDA when present, else CPU.

    Raises:
        ConfigError: if CUDA is asked for and not available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r} asked for, but CUDA is not available: use cpu/auto"
        )
    return dev


def prepare(
    net_a: Network,
    net_b: Network,
    batches: list[Batch],
    *,
    mode: str = "sma",
    manual: dict[str, list[list[int]]] | None = None,
    device: str | torch.device = "auto",
    reset_input_bn: bool = True,
    progress: Progress | None = None,
    stats_budget: int | None = None,
    measure: str = "auto",
) -> Prepared:
    """Run steps 1-4: BN re-estimation of A and B, CKA, alignment, padding, feature pass.

    stats_budget: see ``Prepared.stats_budget``. measure: what the CKA compares
    (``align.similarity``; "auto": the family's).

    The caller's models are not modified: a model that BatchNorm re-estimation, a move to
    ``device`` or ``.eval()`` would change is copied; any other is shared (``ready_network``),
    so do not modify it while the result is in use.

    Raises:
        IncompatibleModelsError, AlignmentError, ConfigError: see ``check_pair`` and ``align``.
    """
    check_pair(net_a, net_b)
    dev = resolve_device(device)
    report = progress or (lambda _stage, _frac: None)
    timings: dict[str, float] = {}
    ga, gb = net_a.graph(), net_b.graph()
    one_pass = placed_by_depths(ga, gb, mode) and statistics_fit(ga, gb, len(batches), stats_budget)
    measure = resolve_measure(net_a, measure)
    nets, similarities = ready_with_similarities(
        (net_a, net_b), batches, dev, reset_input_bn, timings, report, None if one_pass else measure
    )
    found = {} if similarities is None else {measure: similarities[0]}
    analysis = Prepared(
        nets[0], nets[1], found, None, None, None, {}, batches, dev, timings, stats_budget
    )
    if one_pass:
        return analysed_in_one_pass(analysis, mode, measure, progress)
    if similarities is None and len(batches) >= PROBE_BATCHES:
        probed = analysed_from_probe(analysis, mode, manual, measure, progress)
        if probed is not None:
            return probed
    if similarities is None:  # a pass of its own
        prepared = timed(timings, "similarity", lambda: with_measure(analysis, measure, progress))
    else:  # from the BatchNorm re-estimation pass (heterogui.ready)
        prepared = with_measure(analysis, measure)
    return realign(prepared, mode, manual, progress)


# A's and B's statistics at the outputs renormalization corrects (fusion.renormalize), kept
# while the pair lives: they do not depend on the matching, so a re-merge does not run A and B.
_PARENT_SUMS = ObjectMemo()


def zip_prepared(
    prepared: Prepared,
    settings: ZipSettings | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
) -> MergeResult:
    """Run steps 5-7 from cached statistics: match, fuse, build, re-estimate BatchNorm.

    With heads "search" (``head_search``) that is a merge per choice of heads tried, and the
    result is the best one.

    Raises:
        ConfigError: stop point out of range, unknown matcher or override.
        MatcherError: widths or knobs a matcher cannot handle.
    """
    settings = resolved_settings(prepared.net_a, checked_settings(settings))
    if settings.kept_heads or not searched_groups(prepared.padded_a.graph(), settings):
        return _zip_once(prepared, settings, dtype, progress)
    report = progress or (lambda _stage, _frac: None)
    return search_heads(
        prepared,
        settings,
        lambda p, s: _zip_once(p, s, dtype),
        lambda f: report("search", f),
    )


def _zip_once(
    prepared: Prepared,
    settings: ZipSettings,
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
) -> MergeResult:
    """Run one merge (``zip_prepared``) with resolved settings."""
    report = progress or (lambda _stage, _frac: None)
    timings: dict[str, float] = {}
    pa, pb = prepared.padded_a, prepared.padded_b
    stop = stop_point(pa.graph(), settings)
    check_fusion(settings.fusion, settings.ridge)
    split_rank(pa.family, pa.config, settings.heads)  # refused before any work
    regressions: dict[str, Regression] = {}
    if prepared.stats or prepared.stats_budget is None:
        matches = timed(
            timings,
            "match",
            lambda: match_spaces(prepared, settings, stop, progress=lambda f: report("match", f)),
        )
        regressions = timed(
            timings, "regression", lambda: _regressions(prepared, settings, stop, matches)
        )
    else:
        matches = chunked_matches(prepared, settings, stop, timings, report, regressions)
    report("match", 1.0)
    renormalize = partial(_renormalize, prepared) if settings.renormalize else None
    built = build_merge(
        (pa, pb),
        matches,
        regressions,
        prepared.batches,
        prepared.device,
        stop,
        settings,
        dtype,
        timings,
        report,
        renormalize,
    )
    alignment = prepared.alignment
    result = (built.model, built.spec, alignment, matches, built.transforms, prepared, settings)
    return MergeResult(*result, timings, built.renormalized)


def is_merge_of(result: MergeResult, settings: ZipSettings) -> bool:
    """Return whether ``result`` is what ``zip_prepared(result.prepared, settings)`` gives (a
    merge is deterministic): the same settings, "auto" resolved, the heads a head search chose
    aside when ``settings`` leave them to it."""
    prepared = result.prepared
    want = resolved_settings(prepared.net_a, settings)
    got = result.settings
    if not want.kept_heads and searched_groups(prepared.padded_a.graph(), want):
        got = dataclasses.replace(got, kept_heads=want.kept_heads)
    return got == want


def resolved_settings(net: Network, settings: ZipSettings | None, models: int = 2) -> ZipSettings:
    """Return the settings a merge of ``net``'s family runs: fusion and heads "auto" made the
    family's (``zip.plan.family_settings``).

    net: any of the merged models (they share one family); models: how many are merged.
    """
    return family_settings(settings, net.family, models, net.graph())


def _regressions(
    prepared: Prepared, settings: ZipSettings, stop: int, matches: dict[str, Match]
) -> dict[str, Regression]:
    """Return ``least_squares_unmerges`` of a prepared pair."""
    graphs = (prepared.padded_a.graph(), prepared.padded_b.graph())
    return least_squares_unmerges(prepared.stats, graphs, settings, stop, matches)


def _renormalize(
    prepared: Prepared, model: MergedModel, matches: dict[str, Match], stop: int
) -> int:
    """Renormalize the merged model (``fusion.renormalize``) with the pair's kept statistics."""
    pa, pb, batches, dev = prepared.padded_a, prepared.padded_b, prepared.batches, prepared.device

    def parents() -> Any:
        compute = partial(parents_statistics, pa, pb, batches, dev)
        return _PARENT_SUMS.get(prepared, "renormalize", compute)

    return renormalize(model, pa, pb, matches, batches, dev, stop, parents)


def chunked_matches(
    prepared: Prepared,
    settings: ZipSettings,
    stop: int,
    timings: dict[str, float],
    progress: Progress,
    regressions: dict[str, Regression] | None = None,
) -> dict[str, Match]:
    """Return ``match_spaces``'s matches, collecting statistics part by part within the budget.

    The merge points are cut into parts (a head group stays whole) whose statistics fit
    ``prepared.stats_budget``; each part gets its own pass over the calibration data, is
    matched, and its statistics are dropped before the next part's pass. Statistics of a merge
    point do not depend on which others are collected with it, so the matches equal one pass's.
    regressions: filled with each part's least-squares unmerges (``fit_regressions``).
    """
    ga, gb = prepared.padded_a.graph(), prepared.padded_b.graph()
    trunk = list(plan_widths(ga, gb, settings, stop))
    dead = ga.dead | gb.dead
    units = _merge_units(ga, trunk, dead)
    parts = _statistics_parts(ga, gb, units, len(prepared.batches), prepared.stats_budget)
    matches = match_spaces(prepared, settings, stop, only=dead & set(trunk))  # no statistics
    for k, part in enumerate(parts):
        report = within(progress, "features", k / len(parts), (k + 1) / len(parts))
        matches.update(_part_matches(prepared, settings, stop, part, timings, report, regressions))
    return matches


def _merge_units(ga: ModelGraph, trunk: list[str], dead: frozenset[str]) -> dict[str, list[str]]:
    """Return the live trunk merge points grouped so that a head group stays whole."""
    units: dict[str, list[str]] = {}
    for space in trunk:
        if space not in dead:
            first = head_group_first(ga, space) if ga.spaces[space].unit else space
            units.setdefault(first, []).append(space)
    return units


def _statistics_parts(
    ga: ModelGraph, gb: ModelGraph, units: dict[str, list[str]], count: int, budget: int
) -> list[list[str]]:
    """Return the units cut into parts whose statistics over ``count`` batches fit ``budget``."""
    parts: list[list[str]] = [[]]
    size = 0
    for names in units.values():
        need = sum(statistics_bytes(ga, gb, n, count) for n in names)
        if parts[-1] and size + need > budget:
            parts.append([])
            size = 0
        parts[-1] += names
        size += need
    return parts


def _part_matches(
    prepared: Prepared,
    settings: ZipSettings,
    stop: int,
    part: list[str],
    timings: dict[str, float],
    report: Callable[[float], None],
    regressions: dict[str, Regression] | None,
) -> dict[str, Match]:
    """Return the matches of one part's merge points, from a pass of their own statistics.

    The statistics are dropped on return; regressions: filled with the part's unmerges.
    """
    stats = timed(
        timings,
        "features",
        lambda: collect_moments(
            (prepared.padded_a, prepared.padded_b),
            prepared.batches,
            prepared.device,
            progress=report,
            spaces=set(part),
        ),
    )
    view = replace(prepared, stats=stats, keep_correlations=False)
    found = timed(timings, "match", lambda: match_spaces(view, settings, stop, only=set(part)))
    if regressions is not None:
        regressions.update(
            timed(timings, "regression", lambda: _regressions(view, settings, stop, found))
        )
    return found


def within(progress: Progress, stage: str, lo: float, hi: float) -> Callable[[float], None]:
    """Return a fraction callback that reports ``stage`` from ``lo`` to ``hi``."""
    return lambda frac: progress(stage, lo + (hi - lo) * frac)


def merge_networks(
    net_a: Network,
    net_b: Network,
    batches: list[Any],
    settings: ZipSettings | None = None,
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
    **options: Any,
) -> MergeResult:
    """Merge two in-memory networks on calibration batches (the engine, without sources).

    batches: list of input tensors (B, ...) (or tokenizer dicts) drawn from both tasks.
    options: ``prepare``'s keywords (mode, manual, measure, device,
    reset_input_bn).

    Raises:
        HeteroguiError: incompatible networks or invalid settings.
    """
    prepared = prepare(net_a, net_b, batches, progress=progress, **options)
    return zip_prepared(prepared, settings, dtype, progress)
