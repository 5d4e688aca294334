"""Attention heads: pair heads, then match features within each head pair (docs/method.md sec. 8).

Heads must stay intact: a merged head holds at most one head of A and one head of B, feature
for feature. For one attention layer the Q/K space and the V/O space share the head pairing
(head h's attention pattern weighs head h's values), so a *head group* of spaces is matched at
once:

1. per space and per head pair (p of A, q of B), the best one-to-one assignment of their
   features (Hungarian on the (head_dim, head_dim) block of Corr[A, B]); its mean correlation
   is the pair's score, summed over the group's spaces;
2. heads are paired by a Hungarian assignment on those scores (or index by index for the
   "average" matcher); with a zip ratio rho only the best round(rho * min(h_A, h_B)) pairs are
   merged, the other heads are kept whole (rho = 0: all heads side by side);
3. every space gets a Match: A's features keep their order, a paired B feature joins its
   partner's group, unpaired B heads follow as new groups. Groups are then numbered in order of
   their smallest member, which keeps every merged head contiguous, so fusion stays generic.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from heterogui.errors import MatcherError
from heterogui.zip.matchers import EQUAL_WIDTHS, MATCHERS, Match
from heterogui.zip.widths import merges_for

HEAD_MATCHERS = tuple(MATCHERS)


def cross_blocks(corr: torch.Tensor, n_a: int, head_dim: int) -> np.ndarray:
    """Return Corr[A, B] as (h_a, head_dim, h_b, head_dim) float64 blocks."""
    cross = corr[:n_a, n_a:].detach().to("cpu", torch.float64).numpy()
    h_a, h_b = n_a // head_dim, cross.shape[1] // head_dim
    return cross.reshape(h_a, head_dim, h_b, head_dim)


def feature_assignments(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the best within-head assignment and its mean correlation for every head pair.

    blocks: (h_a, d, h_b, d) cross-correlations.
    Returns: (perm (h_a, h_b, d) int64: B feature of each A feature, score (h_a, h_b)).
    """
    h_a, d, h_b, _ = blocks.shape
    perm = np.zeros((h_a, h_b, d), dtype=np.int64)
    score = np.zeros((h_a, h_b))
    for p in range(h_a):
        for q in range(h_b):
            block = blocks[p, :, q, :]
            rows, cols = linear_sum_assignment(block, maximize=True)
            perm[p, q, rows] = cols
            score[p, q] = block[rows, cols].mean()
    return perm, score


def pair_heads(score: np.ndarray, n_pairs: int, by_index: bool = False) -> list[tuple[int, int]]:
    """Return the ``n_pairs`` best (A head, B head) pairs of a Hungarian (or index) pairing.

    score: (h_a, h_b) summed mean correlations of head pairs.
    """
    if by_index:
        rows = cols = np.arange(min(score.shape))
    else:
        rows, cols = linear_sum_assignment(score, maximize=True)
    order = np.argsort(-score[rows, cols], kind="stable")[:n_pairs]
    return sorted((int(rows[i]), int(cols[i])) for i in order)


def head_match(
    pairs: list[tuple[int, int]], perm: np.ndarray, h_a: int, h_b: int, head_dim: int
) -> Match:
    """Return the Match of one space for a head pairing and within-head assignments.

    perm: (h_a, h_b, d) B feature assigned to each A feature of a head pair.
    """
    n_a, n_b = h_a * head_dim, h_b * head_dim
    labels = np.empty(n_a + n_b, dtype=np.int64)
    labels[:n_a] = np.arange(n_a)
    paired = {q: p for p, q in pairs}
    next_label = n_a
    for q in range(h_b):
        base = n_a + q * head_dim
        if q in paired:
            p = paired[q]
            labels[base + perm[p, q]] = p * head_dim + np.arange(head_dim)
        else:
            labels[base : base + head_dim] = next_label + np.arange(head_dim)
            next_label += head_dim
    # A's features first and unpaired B heads in order: already numbered by smallest member.
    return Match(torch.from_numpy(labels), n_a, n_b, next_label)


def _n_pairs(h_a: int, h_b: int, head_dim: int, matcher: str, rho: float, width: int | None):
    if matcher in EQUAL_WIDTHS:
        if h_a != h_b:
            raise MatcherError(
                f"{matcher} needs equal head counts, got {h_a} and {h_b}; use the zip matcher"
            )
        return h_a
    if width is not None:
        if width % head_dim or not max(h_a, h_b) <= width // head_dim <= h_a + h_b:
            raise MatcherError(
                f"an attention width must be whole heads of {head_dim} between "
                f"{max(h_a, h_b) * head_dim} and {(h_a + h_b) * head_dim}, got {width}"
            )
        return h_a + h_b - width // head_dim
    if not 0.0 <= rho <= 1.0:
        raise MatcherError(f"zip ratio rho must be in [0, 1], got {rho!r}")
    return merges_for(rho, min(h_a, h_b))


def head_group_pairs(
    n_a: int, n_b: int, unit: int, matcher: str, rho: float, width: int | None
) -> int:
    """Return how many units (heads, or query groups) of a head group merge for these knobs.

    n_a, n_b, width: widths of the group's first space; unit: its features per unit.

    Raises:
        MatcherError: widths that are not whole units, or a width/rho out of range.
    """
    if n_a % unit or n_b % unit:
        raise MatcherError(f"widths {n_a} and {n_b} are not whole heads of {unit}")
    return _n_pairs(n_a // unit, n_b // unit, unit, matcher, rho, width)


def head_group_width(
    n_a: int, n_b: int, head_dim: int, matcher: str, rho: float, width: int | None
) -> int:
    """Return the merged width of a head group's spaces (whole heads) for these knobs.

    Raises:
        MatcherError: widths that are not whole heads, or a width/rho out of range.
    """
    pairs = head_group_pairs(n_a, n_b, head_dim, matcher, rho, width)
    return (n_a + n_b) - pairs * head_dim


def match_head_group(
    corrs: Mapping[str, torch.Tensor],
    n_a: int,
    n_b: int,
    head_dim: int,
    *,
    matcher: str = "zip",
    rho: float = 1.0,
    width: int | None = None,
) -> dict[str, Match]:
    """Match the spaces of one head group with one shared head pairing.

    corrs: space name -> (O, O) correlation of [f_A ; f_B], O = n_a + n_b, same widths for all.
    matcher: "zip"/"zip_naive" (Hungarian pairing, rho or width), "permute" (Hungarian, all
    heads), "average" (head k with head k, feature j with feature j).

    Raises:
        MatcherError: widths that are not whole heads, unknown matcher, bad rho/width.
    """
    if matcher not in HEAD_MATCHERS:
        raise MatcherError(f"unknown matcher {matcher!r} for attention heads; use {HEAD_MATCHERS}")
    if n_a % head_dim or n_b % head_dim:
        raise MatcherError(f"widths {n_a} and {n_b} are not whole heads of {head_dim}")
    h_a, h_b = n_a // head_dim, n_b // head_dim
    n_pairs = _n_pairs(h_a, h_b, head_dim, matcher, rho, width)
    perms = {}
    total = np.zeros((h_a, h_b))
    for name, corr in corrs.items():
        if tuple(corr.shape) != (n_a + n_b, n_a + n_b):
            raise MatcherError(
                f"{name}: corr has shape {tuple(corr.shape)}, expected O = {n_a + n_b}"
            )
        if matcher == "average":
            perms[name] = np.broadcast_to(np.arange(head_dim), (h_a, h_b, head_dim))
            continue
        perms[name], score = feature_assignments(cross_blocks(corr, n_a, head_dim))
        total += score
    pairs = pair_heads(total, n_pairs, by_index=matcher == "average")
    return {name: head_match(pairs, perms[name], h_a, h_b, head_dim) for name in corrs}
