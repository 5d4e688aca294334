"""Matching a prepared pair's merge points: their correlations and the matchers' choices.

Step 5 of a merge (docs/method.md secs. 1, 7 and 8), shared by ``pipeline.zip_prepared``, the
Neurons tab and the workbench's idle pass: the correlation of every merge point is formed once
per prepared pair and kept while it lives, as are the greedy zip's runs (``zip.greedy``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
import torch

from heterogui.config import SPLIT_HEADS
from heterogui.errors import MatcherError
from heterogui.memo import ObjectMemo
from heterogui.models.graph import ModelGraph, Space
from heterogui.prepared import Prepared
from heterogui.zip.collect import StatKey, pooled_moments
from heterogui.zip.heads import head_group_pairs, match_head_group
from heterogui.zip.matchers import MATCHERS, Match, ZipJob, keep_one_match, zip_side_by_side
from heterogui.zip.plan import ZipSettings, family_settings, head_group_first, plan_widths
from heterogui.zip.rotary import match_rotary_group
from heterogui.zip.select import output_energies, select_members
from heterogui.zip.stats import Moments

# Correlations formed from a prepared pair's statistics, kept while the pair lives: every
# re-merge (a slider move) and the Neurons tab read them again, and forming a 3,072-feature one
# from the sums takes a tenth of a second.
_CORRELATIONS = ObjectMemo()
_ENERGIES = ObjectMemo()  # head selection's unit energies, kept the same way


def correlation(prepared: Prepared, space: str, stop: int | None) -> torch.Tensor:
    """Return the correlation of ``space`` over its captures before ``stop``: (O, O) float32.

    Kept in float32 (half the memory; rounding 6e-8, below the 1e-6 of the statistics'
    float32 products) and shared: do not modify it. stop None: all of the space's captures.

    Raises:
        MatcherError: A's or B's features at ``space`` overflowed (inf or NaN) on the data.
    """

    def compute() -> torch.Tensor:
        return space_correlation(prepared.stats, prepared.padded_a.graph(), space, stop)

    if not prepared.keep_correlations:
        return compute()
    return _CORRELATIONS.get(prepared, (space, stop), compute)


def space_correlation(
    stats: dict[StatKey, Moments], graph: ModelGraph, space: str, stop: int | None
) -> torch.Tensor:
    """Return the float32 correlation of ``space``'s pooled moments before ``stop``.

    Raises:
        MatcherError: a model's features at ``space`` overflowed (inf or NaN) on the data.
    """
    moments = pooled_moments(stats, graph, space, stop)
    # a NaN or inf feature reaches the sums and its own square; an overflowing product
    # x_i x_j means x_i² or x_j² overflows too (Cauchy-Schwarz): the diagonal tells
    diagonal = moments.squares()
    if not bool(torch.isfinite(moments.total).all() and torch.isfinite(diagonal).all()):
        raise MatcherError(
            f"the features of the models at merge point {space} are not finite (NaN or inf) on "
            "the calibration data: the models overflow on these inputs; check the data's scale"
        )
    return moments.corr(dtype=torch.float32)


def match_spaces(
    prepared: Prepared,
    settings: ZipSettings,
    stop: int,
    only: Collection[str] | None = None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Match]:
    """Return the matching of every merge point that a trunk of ``stop`` blocks uses.

    Every merge point is matched to the width ``plan_widths`` gives; the attention spaces of
    one head group share one head pairing. only: match just these merge points (whole head
    groups), for a part of the statistics. progress: called with the fraction of merge
    points matched, after each one or head group (so that a cancel takes effect there).
    Merge points are matched side by side on the threads ``match_workers`` allows; the
    result is the same in any case.

    Raises:
        ConfigError, MatcherError: see ``plan_widths`` and the matchers.
    """
    ga, gb = prepared.padded_a.graph(), prepared.padded_b.graph()
    settings = family_settings(settings, prepared.net_a.family, graph=ga)  # as a merge does
    plan = plan_widths(ga, gb, settings, stop)
    matches: dict[str, Match] = {}
    head_groups: dict[str, list[str]] = {}
    singles, order = [], []  # order: the matchings' order (plan order, head groups last)
    for space, (n_a, n_b, _width) in plan.items():
        if only is not None and space not in only:
            continue
        if space in ga.dead or space in gb.dead:
            matches[space] = keep_one_match(n_a, n_b, "b" if space in ga.dead else "a")
            order.append(space)
        elif ga.spaces[space].head_dim:
            head_groups.setdefault(head_group_first(ga, space), []).append(space)
        else:
            singles.append(space)
            order.append(space)
    together = [s for s in singles if _zipped_on_device(prepared, settings, s)]
    singles = [s for s in singles if s not in together]
    jobs: list[Callable[[], dict[str, Match]]] = [
        lambda s=space: {s: _match_single(prepared, settings, stop, plan[s], s)}
        for space in singles
    ]
    if together:
        jobs.append(lambda: _zip_on_device(prepared, settings, stop, plan, together))
    jobs += [
        lambda f=first, n=names: _match_head_group(prepared, settings, stop, plan, f, n)
        for first, names in head_groups.items()
    ]
    total = max(len(jobs), 1)
    report = progress or (lambda _fraction: None)
    features = max((sum(plan[s][:2]) for s in singles), default=0)
    workers = match_workers(len(jobs), features)
    for found in in_parallel(jobs, lambda done: report(done / total), workers):
        matches.update(found)
    return {k: matches[k] for k in order} | matches


# What the matchers running side by side may hold at once: each holds a float32 copy of its
# merge point's (O, O) correlation (144 MiB at 2 x 3,072 features: seven fit).
MATCH_MEMORY = 2**30


def match_workers(jobs: int, features: int = 0) -> int:
    """Return how many merge points to match at once, of ``jobs`` of up to ``features`` (O).

    The matchers run in NumPy, which leaves Python's lock in its array loops, so merge points
    match side by side on the CPU threads torch may use (one thread: one after the other), as
    many as ``MATCH_MEMORY`` holds copies of the largest correlation.
    """
    fit = MATCH_MEMORY // max(4 * features * features, 1)
    return max(1, min(torch.get_num_threads(), jobs, fit))


def in_parallel(
    jobs: list[Callable[[], dict[str, Match]]], done: Callable[[int], None], workers: int
) -> list[dict[str, Match]]:
    """Return the jobs' results in the jobs' order, ``workers`` of them at a time.

    ``done(n)`` is called in this thread after each of n jobs finishes; when it or a job
    raises, the jobs not started are dropped and the running ones finish before it propagates.
    """
    if workers == 1:
        results = []
        for job in jobs:
            results.append(job())
            done(len(results))
        return results
    pool = ThreadPoolExecutor(workers, thread_name_prefix="heterogui-match")
    try:
        futures = [pool.submit(job) for job in jobs]
        for n, future in enumerate(as_completed(futures), 1):
            future.result()  # a job's error stops the rest here
            done(n)
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# The devices on which a merge's zipped merge points run their greedy loops side by side
# (``zip.matchers.zip_side_by_side``): a GPU runs a loop's small steps at its kernel-launch
# rate, which lock-step shares; on the CPU the NumPy loop is faster (tests add "cpu" here to
# check that both give the same matchings).
ZIP_SIDE_BY_SIDE = {"cuda"}


def _zipped_on_device(prepared: Prepared, settings: ZipSettings, space: str) -> bool:
    """Return whether ``space`` (not in a head group) is zipped on the model's device."""
    return (
        prepared.device.type in ZIP_SIDE_BY_SIDE and settings.for_space(space)["matcher"] == "zip"
    )


def _zip_on_device(
    prepared: Prepared,
    settings: ZipSettings,
    stop: int,
    plan: dict[str, tuple[int, int, int]],
    spaces: list[str],
) -> dict[str, Match]:
    """Return the zip matchings of ``spaces``, their loops side by side on the model's device.

    At once, as many merge points as a quarter of the device's free memory holds.
    """
    dev = prepared.device
    memory = torch.cuda.mem_get_info(dev)[0] // 4 if dev.type == "cuda" else MATCH_MEMORY
    jobs = []
    for space in spaces:
        n_a, n_b, width = plan[space]
        knobs = settings.for_space(space)
        corr = correlation(prepared, space, stop)
        jobs.append(ZipJob(corr, (n_a, n_b), width, knobs["alpha"], knobs["beta"]))
    return dict(zip(spaces, zip_side_by_side(jobs, dev, memory), strict=True))


def _match_single(
    prepared: Prepared,
    settings: ZipSettings,
    stop: int,
    sizes: tuple[int, int, int],
    space: str,
) -> Match:
    """Return the matching of one merge point that is not part of a head group.

    Raises:
        MatcherError: the matcher's refusal, after the merge point's name.
    """
    n_a, n_b, width = sizes
    knobs = settings.for_space(space)
    try:
        return MATCHERS[knobs["matcher"]](
            correlation(prepared, space, stop),
            n_a,
            n_b,
            width=width,
            alpha=knobs["alpha"],
            beta=knobs["beta"],
        )
    except MatcherError as exc:
        raise MatcherError(f"merge point {space}: {exc}") from None


def _match_head_group(
    prepared: Prepared,
    settings: ZipSettings,
    stop: int,
    plan: dict[str, tuple[int, int, int]],
    first: str,
    names: list[str],
) -> dict[str, Match]:
    """Return the matchings of one head group's spaces (one head pairing)."""
    ga = prepared.padded_a.graph()
    knobs = settings.for_space(first)
    n_a, n_b, width = plan[first]
    spaces = [ga.spaces[n] for n in names]
    if settings.heads == SPLIT_HEADS:  # every head kept side by side: nothing to correlate
        return {n: Match(torch.arange(sum(plan[n][:2])), *plan[n]) for n in names}
    if any(s.role for s in spaces):
        unit = ga.spaces[first].unit
        pairs = head_group_pairs(n_a, n_b, unit, knobs["matcher"], 1.0, width)
        corrs = {s.name: correlation(prepared, s.name, stop) for s in spaces if s.captures}
        group = match_rotary_group(
            corrs,
            {s.name: s.role for s in spaces},
            {n: plan[n][:2] for n in names},
            spaces[0].head_dim,
            max(s.unit_heads for s in spaces),
            pairs,
            knobs["matcher"],
        )
    else:
        corrs = {n: correlation(prepared, n, stop) for n in names}
        group = match_head_group(
            corrs, n_a, n_b, ga.spaces[first].head_dim, matcher=knobs["matcher"], width=width
        )
    if knobs["heads"] in ("select", "search"):
        group = _select_heads(prepared, stop, group, settings.kept_heads.get(first))
    return group


def head_energies(
    prepared: Prepared, value: Space, output: Space, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return A's and B's unit energies at a head group (``zip.select.output_energies``).

    ``value``: the space of the values; ``output``: the space the output projection reads.
    They depend on the statistics and the weights only, so a prepared pair keeps them like its
    correlations (a re-merge with heads selected forms none again). Shared: do not modify.
    """

    def compute() -> tuple[np.ndarray, np.ndarray]:
        ga = prepared.padded_a.graph()
        moments = pooled_moments(prepared.stats, ga, value.name, stop)
        mean = moments.mean()
        second = moments.cov().add_(torch.outer(mean, mean))
        n_a = ga.spaces[value.name].width
        energies = []
        for net, rows in zip(
            (prepared.padded_a, prepared.padded_b), (slice(0, n_a), slice(n_a, None)), strict=True
        ):
            state = net.module.state_dict()
            readers = [
                state[name].movedim(dim, -1) for name, dim in net.graph().readers(output.name)
            ]
            energies.append(
                output_energies(second[rows, rows], readers, value.head_dim, output.unit_heads)
            )
        return energies[0], energies[1]

    if not prepared.keep_correlations:
        return compute()
    return _ENERGIES.get(prepared, ("energies", value.name, output.name, stop), compute)


def _select_heads(
    prepared: Prepared, stop: int, group: dict[str, Match], kept: tuple[int, ...] | None = None
) -> dict[str, Match]:
    """Return a head group's matchings with every merged pair taken from its stronger unit.

    ``zip.select``: units (heads, or key/value heads with their query heads) are ranked by
    what their values write through the output projection, from the calibration statistics.
    kept: per unit of A, 1 to keep A's head in its pair, 0 to keep B's (a head search's
    choice, ``ZipSettings.kept_heads``); None: by energy.
    """
    ga = prepared.padded_a.graph()
    spaces = [ga.spaces[n] for n in group]
    # the space the output projection reads; its values are its own features, or (rotary,
    # grouped-query attention) those of the key/value heads its query heads read
    output = next((s for s in spaces if ga.readers(s.name)), None)
    value = (
        output
        if output is None or output.captures
        else next((s for s in spaces if s.role == "v"), None)
    )
    if value is None:
        raise MatcherError(
            f"zip.heads select needs the output projection and values of {sorted(group)}, "
            "which this model family does not tag; use heads pair"
        )
    if kept is not None:
        n_b = group[value.name].n_b // value.unit
        energies = (np.array([float(k == 1) for k in kept]), np.full(n_b, 0.5))
    else:
        energies = head_energies(prepared, value, output, stop)
    return {
        name: select_members(match, ga.spaces[name].unit, *energies)
        for name, match in group.items()
    }
