"""Matchers: turn the correlation of [f_A ; f_B] into a partition of features.

docs/method.md secs. 6 and 7.

A matcher takes the (O, O) correlation matrix of O = n_A + n_B features (A's first, as
accumulated by heterogui.zip.stats.Moments) and returns a Match: every feature is assigned to one
of r groups (or dropped). The merged model has one feature per group; the merge matrix M averages a
group, the unmerge matrix U copies a group back to its members (docs/method.md sec. 7).

- zip: the greedy elastic zip of B.2 with damping alpha and within-model budget beta, in a fast
  form that returns exactly the matching of the naive loop (zip_naive), ties included.
- permute: Hungarian matching of A's features to B's (equal widths).
- average: feature k of A with feature k of B (equal widths; plain weight averaging).
- keep_one_match: one model's features kept alone, the other's dropped (identity-padded layers).

MATCHERS maps a name to a function with the uniform signature
fn(corr, n_a, n_b, *, width, alpha, beta) -> Match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from heterogui.errors import MatcherError
from heterogui.zip import greedy_device
from heterogui.zip.greedy import (
    Damping,
    Run,
    parents_of,
    remember_run,
    reused_parents,
    spend_budget,
    zip_parents,
)
from heterogui.zip.match import Match, MatchCounts, canonical_groups
from heterogui.zip.widths import (
    NEG_INF,
    as_matrix,
    check_knobs,
    check_sizes,
    loop_dtype,
    named_sizes,
    numpy_start,
    prepared_similarity,
    stuck_error,
    within_model_budget,
)

__all__ = [
    "MATCHERS",
    "Match",
    "MatchCounts",
    "average_match",
    "keep_one_match",
    "permute_match",
    "zip_group",
    "zip_group_naive",
    "zip_match",
    "zip_match_naive",
]


def zip_match_naive(
    corr: Tensor, n_a: int, n_b: int, width: int, alpha: float = 0.5, beta: float = 1.0
) -> Match:
    """Zip features greedily with the plain O(n·O²) loop of docs/method.md sec. 7 (reference).

    Each step merges the pair of groups at the first maximum of the full (O, O) similarity in
    row-major order (i < j by symmetry), sets row and column i to alpha * min of rows i and j
    (1 * min for copies within one model: ``greedy.Damping``), removes j, and charges merges
    within one model m to a budget floor((O - r) n_m / O beta); once a budget is spent, all
    pairs of that model's groups are forbidden.

    Args:
        corr: (O, O) correlation of [f_A ; f_B], O = n_a + n_b.
        n_a: number of A features (the first n_a).
        n_b: number of B features.
        width: number of groups r to reach, 1 <= r <= O (r = O merges nothing).
        alpha: damping of re-merging, in (0, 1].
        beta: fraction of merges that may be within one model, in [0, 1].

    Raises:
        MatcherError: bad shapes or knobs, non-finite corr, or width unreachable under beta.
    """
    return zip_group_naive(corr, (n_a, n_b), width, alpha, beta)


def zip_group_naive(
    corr: Tensor, sizes: tuple[int, ...], width: int, alpha: float = 0.5, beta: float = 1.0
) -> Match:
    """Return ``zip_match_naive`` over the features of any number of models (N-way zip).

    corr: (O, O) correlation of [f_1 ; ... ; f_N], O = sum of ``sizes``; every model has its
    own within-model budget floor((O - r) n_m / O beta), and a merge that completes a group
    across models is not damped (``greedy.Damping``).
    """
    sizes = tuple(sizes)
    sim, budget, owner = numpy_start(corr, sizes, width, alpha, beta)
    width = int(width)
    o = sum(sizes)
    alive = np.ones(o, dtype=bool)
    labels = np.arange(o)
    damping = Damping(owner, len(sizes), alpha)
    for n_groups in range(o, width, -1):
        i, j = divmod(int(np.argmax(sim)), o)
        if sim[i, j] == NEG_INF:
            raise stuck_error(sizes, width, beta, n_groups)
        labels[labels == j] = i
        alive[j] = False
        new = np.minimum(sim[i], sim[j]) * damping.merge(i, j, sim[i, j])
        sim[i, :] = new
        sim[:, i] = new
        sim[i, i] = NEG_INF
        sim[j, :] = NEG_INF
        sim[:, j] = NEG_INF
        spend_budget(sim, alive, budget, owner, i, j)
    return Match.of_sizes(canonical_groups(labels), sizes, width)


def zip_match(
    corr: Tensor, n_a: int, n_b: int, width: int, alpha: float = 0.5, beta: float = 1.0
) -> Match:
    """Zip features greedily (docs/method.md sec. 7), fast: zip_match_naive's groups, ties included.

    Keeps each row's max and first argmax column; the global pick is the first row holding the
    largest row max, then its first argmax, which is the row-major first maximum of the matrix.
    A step costs O(O) plus a recompute of the few rows whose cached argmax was touched.

    Args:
        corr: (O, O) correlation of [f_A ; f_B], O = n_a + n_b.
        n_a: number of A features (the first n_a).
        n_b: number of B features.
        width: number of groups r to reach, 1 <= r <= O (r = O merges nothing).
        alpha: damping of re-merging, in (0, 1].
        beta: fraction of merges that may be within one model, in [0, 1].

    Raises:
        MatcherError: bad shapes or knobs, non-finite corr, or width unreachable under beta.
    """
    return zip_group(corr, (n_a, n_b), width, alpha, beta)


def zip_group(
    corr: Tensor, sizes: tuple[int, ...], width: int, alpha: float = 0.5, beta: float = 1.0
) -> Match:
    """Return ``zip_match`` over the features of any number of models (N-way zip, fast).

    corr: (O, O) correlation of [f_1 ; ... ; f_N], O = sum of ``sizes``; the same groups as
    ``zip_group_naive``, ties included.
    """
    sizes = tuple(sizes)
    check_sizes(*sizes)
    check_knobs(sizes, width, alpha, beta)
    o, width = sum(sizes), int(width)
    budget = [within_model_budget(o, width, n, beta) for n in sizes]

    def start() -> tuple[np.ndarray, np.ndarray]:
        return numpy_start(corr, sizes, width, alpha, beta)[0], np.ones(o, dtype=bool)

    parent, n_groups = zip_parents(corr, sizes, width, alpha, budget, start)
    if n_groups > width:
        raise stuck_error(sizes, width, beta, n_groups)
    return _match_of(parent, sizes, width)


def _match_of(parent: np.ndarray, sizes: tuple[int, ...], width: int) -> Match:
    """Return the Match of a zip's parent pointers."""
    labels = parent
    for _ in range(labels.size.bit_length()):  # pointer jumping: log2(O) rounds reach the roots
        labels = labels[labels]
    return Match.of_sizes(canonical_groups(labels), sizes, width)


@dataclass(frozen=True, eq=False)
class ZipJob:
    """One merge point's two-model zip: ``zip_match(corr, *sizes, width, alpha, beta)``."""

    corr: Tensor
    sizes: tuple[int, int]
    width: int
    alpha: float = 0.5
    beta: float = 1.0


def zip_side_by_side(jobs: Sequence[ZipJob], device: torch.device, memory: int) -> list[Match]:
    """Return ``zip_match`` of every job, their greedy loops run in lock-step on ``device``.

    ``zip.greedy_device``: merge points of one size advance one step together, as many at a
    time as ``memory`` bytes of similarities hold (at least one). A width that a kept run
    covers is read off it, as in ``zip_match``; the loops run from scratch otherwise and are
    kept for the next widths.

    Raises:
        MatcherError: as ``zip_match`` (checked for every job before any loop runs), or a job
            of more than two models.
    """
    found: list[np.ndarray | None] = []
    budgets = []
    for job in jobs:
        sizes, width = tuple(job.sizes), int(job.width)
        check_sizes(*sizes)
        if len(sizes) != 2:
            raise MatcherError(
                f"zip_side_by_side zips two models' features, got {named_sizes(sizes)}; "
                "use zip_group for more models"
            )
        check_knobs(sizes, width, job.alpha, job.beta)
        budgets.append([within_model_budget(sum(sizes), width, n, job.beta) for n in sizes])
        found.append(reused_parents(job.corr, sizes, width, job.alpha, budgets[-1]))
    alike: dict[tuple[tuple[int, ...], torch.dtype], list[int]] = {}  # one size and precision
    for n, job in enumerate(jobs):
        if found[n] is None:
            alike.setdefault((tuple(job.sizes), loop_dtype(job.corr)), []).append(n)
    for (sizes, dtype), todo in alike.items():
        o = sum(sizes)
        at_once = max(1, memory // (8 * o * o))
        for first in range(0, len(todo), at_once):
            chunk = [jobs[n] for n in todo[first : first + at_once]]
            for n, steps in zip(todo[first:], _zip_chunk(chunk, dtype, device), strict=False):
                job = jobs[n]
                if len(steps) < o - job.width:
                    raise stuck_error(sizes, job.width, job.beta, o - len(steps))
                remember_run(job.corr, sizes, job.alpha, Run(steps, tuple(budgets[n])))
                found[n] = parents_of(o, steps)
    return [
        _match_of(parent, tuple(job.sizes), int(job.width))
        for parent, job in zip(found, jobs, strict=True)
    ]


def _zip_chunk(
    chunk: Sequence[ZipJob], dtype: torch.dtype, device: torch.device
) -> list[np.ndarray]:
    """Zip merge points of one size and precision side by side on ``device``; return their
    steps."""
    sizes = tuple(chunk[0].sizes)
    o, budgets = sum(sizes), []
    sims = torch.empty((len(chunk), o, o), dtype=dtype, device=device)
    for k, job in enumerate(chunk):
        sim, budget = prepared_similarity(
            job.corr, sizes, int(job.width), job.alpha, job.beta, device
        )
        sims[k] = sim
        budgets.append(budget)
        del sim
    owner = np.repeat(np.arange(2), sizes)
    alphas, widths = [j.alpha for j in chunk], [int(j.width) for j in chunk]
    return greedy_device.zip_side_by_side(sims, budgets, owner, alphas, widths)


def _check_equal(name: str, n_a: int, n_b: int) -> None:
    check_sizes(n_a, n_b)
    if n_a != n_b:
        raise MatcherError(
            f"{name} needs equal widths, got n_a={n_a} and n_b={n_b}; "
            "use the zip matcher for different widths"
        )


def permute_match(corr: Tensor, n_a: int, n_b: int) -> Match:
    """Pair each A feature with one B feature, maximising the summed correlation (Hungarian).

    Args:
        corr: (O, O) correlation of [f_A ; f_B], O = n_a + n_b; only corr[:n_a, n_a:] is used.
        n_a: number of A features.
        n_b: number of B features (must equal n_a).

    Raises:
        MatcherError: widths differ, or corr has the wrong shape or non-finite values.
    """
    _check_equal("permute", n_a, n_b)
    c = as_matrix(corr, (n_a, n_b)).numpy()
    rows, cols = linear_sum_assignment(c[:n_a, n_a:], maximize=True)
    groups = np.empty(n_a + n_b, dtype=np.int64)
    groups[rows] = rows
    groups[n_a + cols] = rows
    return Match(groups=canonical_groups(groups), n_a=n_a, n_b=n_b, width=n_a)


def average_match(corr: Tensor, n_a: int, n_b: int) -> Match:
    """Pair A feature k with B feature k (plain weight averaging).

    Args:
        corr: (O, O) correlation of [f_A ; f_B]; only its shape is checked.
        n_a: number of A features.
        n_b: number of B features (must equal n_a).

    Raises:
        MatcherError: widths differ or corr has the wrong shape.
    """
    _check_equal("average", n_a, n_b)
    if tuple(corr.shape) != (n_a + n_b, n_a + n_b):
        raise MatcherError(f"corr must have shape ({n_a + n_b}, {n_a + n_b}), got {corr.shape}")
    groups = torch.arange(n_a, dtype=torch.int64).repeat(2)
    return Match(groups=groups, n_a=n_a, n_b=n_b, width=n_a)


def keep_one_match(n_a: int, n_b: int, keep: str) -> Match:
    """Keep one model's features, each alone and in order; drop the other model's features.

    Used where one model's features are unused, e.g. the inner layer of an identity-padded block.

    Args:
        n_a: number of A features.
        n_b: number of B features.
        keep: "a" or "b", the model whose features are kept.

    Raises:
        MatcherError: keep is not "a" or "b", or a width is not a positive integer.
    """
    check_sizes(n_a, n_b)
    if keep not in ("a", "b"):
        raise MatcherError(f'keep must be "a" or "b", got {keep!r}')
    kept = torch.arange(n_a if keep == "a" else n_b, dtype=torch.int64)
    drop = torch.full((n_b if keep == "a" else n_a,), -1, dtype=torch.int64)
    groups = torch.cat([kept, drop] if keep == "a" else [drop, kept])
    return Match(groups=groups, n_a=n_a, n_b=n_b, width=int(kept.numel()))


def _registered(name: str, fn: Callable[..., Match], zipper: bool) -> Callable[..., Match]:
    """Wrap a matcher in the uniform registry signature."""

    def entry(
        corr: Tensor,
        n_a: int,
        n_b: int,
        *,
        width: int | None = None,
        alpha: float = 0.5,
        beta: float = 1.0,
    ) -> Match:
        if zipper:
            return fn(corr, n_a, n_b, max(n_a, n_b) if width is None else width, alpha, beta)
        _check_equal(name, n_a, n_b)
        if width is not None and width != n_a:
            raise MatcherError(
                f"{name} always gives width n_a={n_a}, got width={width}; "
                "use the zip matcher for another width"
            )
        return fn(corr, n_a, n_b)

    entry.__name__ = f"{name}_entry"
    entry.__doc__ = f"Run {fn.__name__} as fn(corr, n_a, n_b, *, width, alpha, beta); " + (
        "width None means max(n_a, n_b)." if zipper else "width must be None or n_a."
    )
    return entry


MATCHERS: dict[str, Callable[..., Match]] = {
    "zip": _registered("zip", zip_match, zipper=True),
    "zip_naive": _registered("zip_naive", zip_match_naive, zipper=True),
    "permute": _registered("permute", permute_match, zipper=False),
    "average": _registered("average", average_match, zipper=False),
}
# Matchers that pair features one to one: equal widths only, the merged width is n_A (no rho,
# alpha or beta). The others zip to any width between max(n_A, n_B) and n_A + n_B.
EQUAL_WIDTHS = frozenset({"permute", "average"})
