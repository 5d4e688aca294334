"""Rotary, grouped-query attention: pair key/value groups whole (docs/method.md sec. 8).

A decoder attention layer has four spaces (``Space.role``): q (query heads), k and v (key/value
heads) and o (the attention output o_proj reads, one head per query head). Two rules shape the
matching:

- rotary positions rotate q/k features j and j + d/2 of a head by one frequency, so q and k
  features never move inside a head: a q or k head pair is scored by the mean correlation of
  feature j with feature j;
- a key/value head serves a group of query heads, so the pairing unit is a group: a key/value
  head with its query heads. Two groups are scored by k's and v's head scores plus the best
  pairing of their query heads (Hungarian on the q head scores); v features may be matched
  inside a head pair (Hungarian), and o follows: query head i of a group pairs like in q, and
  its features like v's.

Groups are then paired like heads (``heterogui.zip.heads.pair_heads``: Hungarian, or index for
"average"), the best ``n_pairs`` merged and the rest kept whole, and every space gets a Match
through ``head_match`` with the group as its unit.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from heterogui.errors import MatcherError
from heterogui.zip.heads import cross_blocks, feature_assignments, head_match, pair_heads
from heterogui.zip.matchers import Match


def _diagonal_scores(blocks: np.ndarray) -> np.ndarray:
    """Return the mean correlation of feature j with feature j for every head pair.

    blocks: (h_a, d, h_b, d) -> (h_a, h_b).
    """
    return np.einsum("ajbj->ab", blocks) / blocks.shape[1]


def match_rotary_group(
    corrs: Mapping[str, torch.Tensor],
    roles: Mapping[str, str],
    widths: Mapping[str, tuple[int, int]],
    head_dim: int,
    group_size: int,
    n_pairs: int,
    matcher: str = "zip",
) -> dict[str, Match]:
    """Match the q, k, v and o spaces of one rotary attention layer with one group pairing.

    corrs: space -> (O, O) correlation of [f_A ; f_B] for the q, k and v spaces; roles: space ->
    "q", "k", "v" or "o"; widths: space -> (n_A, n_B); group_size: query heads per key/value
    head (the same in both models); n_pairs: how many group pairs merge.

    Raises:
        MatcherError: widths that are not whole groups, or a missing q, k or v space.
    """
    d, r = head_dim, group_size
    by_role, g_a, g_b = _layer_groups(roles, widths, d, r)
    n_a = g_a * d
    by_index = matcher == "average"
    # k and v: one head per group
    k_score = _diagonal_scores(cross_blocks(corrs[by_role["k"]], n_a, d))
    if by_index:
        v_perm = np.broadcast_to(np.arange(d), (g_a, g_b, d))
        v_score = _diagonal_scores(cross_blocks(corrs[by_role["v"]], n_a, d))
    else:
        v_perm, v_score = feature_assignments(cross_blocks(corrs[by_role["v"]], n_a, d))
    # q: r query heads per group; pair them inside every group pair
    q = _diagonal_scores(cross_blocks(corrs[by_role["q"]], g_a * r * d, d))  # (g_a r, g_b r)
    q_order, q_score = _pair_query_heads(q.reshape(g_a, r, g_b, r), by_index)
    pairs = pair_heads(k_score + v_score + q_score, n_pairs, by_index=by_index)
    inner = np.arange(d)
    heads_in_group = q_order[..., None] * d  # (g_a, g_b, r, 1): B's query head of A's head i
    perms = {
        "k": np.broadcast_to(inner, (g_a, g_b, d)),
        "v": v_perm,
        "q": (heads_in_group + inner).reshape(g_a, g_b, r * d),
        "o": (heads_in_group + v_perm[:, :, None, :]).reshape(g_a, g_b, r * d),
    }
    unit = {"k": d, "v": d, "q": r * d, "o": r * d}
    return {
        name: head_match(pairs, perms[role], g_a, g_b, unit[role]) for name, role in roles.items()
    }


def _layer_groups(
    roles: Mapping[str, str], widths: Mapping[str, tuple[int, int]], d: int, r: int
) -> tuple[dict[str, str], int, int]:
    """Return the space of every role and the key/value heads (g_A, g_B), checking the widths.

    Raises:
        MatcherError: widths that are not whole groups, or a missing q, k or v space.
    """
    by_role = {role: name for name, role in roles.items()}
    if set(by_role) != {"q", "k", "v", "o"}:
        raise MatcherError(f"a rotary attention layer needs q, k, v and o spaces, got {roles}")
    n_a, n_b = widths[by_role["k"]]
    if n_a % d or n_b % d:
        raise MatcherError(f"key/value widths {n_a} and {n_b} are not whole heads of {d}")
    g_a, g_b = n_a // d, n_b // d
    for role, units in (("q", r), ("o", r), ("v", 1)):
        if widths[by_role[role]] != (g_a * units * d, g_b * units * d):
            raise MatcherError(
                f"{by_role[role]}: widths {widths[by_role[role]]} are not {units} heads of {d} "
                f"per key/value head"
            )
    return by_role, g_a, g_b


def _pair_query_heads(q: np.ndarray, by_index: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pair query heads in every group pair: q (g_a, r, g_b, r) -> orders, mean scores."""
    g_a, r, g_b, _ = q.shape
    q_order = np.zeros((g_a, g_b, r), dtype=np.int64)
    q_score = np.zeros((g_a, g_b))
    for p in range(g_a):
        for s in range(g_b):
            block = q[p, :, s, :]
            rows, cols = (
                (np.arange(r), np.arange(r))
                if by_index
                else linear_sum_assignment(block, maximize=True)
            )
            q_order[p, s, rows] = cols
            q_score[p, s] = block[rows, cols].mean()
    return q_order, q_score
