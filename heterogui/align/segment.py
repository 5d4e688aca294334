"""Per-stage layer alignment: SMA, LMA, baselines and manual mappings (docs/method.md sec. 4).

Conventions inside one stage: the deep model has D blocks, the shallow one S <= D. ``sim`` is a
(D, S) matrix (torch tensor or numpy array) of similarities between deep block l and shallow
block k, block 0 of each included. Block 0 is always paired with block 0 (it carries the stride
and the shortcut projection) and is left out of every objective.

An alignment is a tuple ``positions`` of length S, strictly increasing, with positions[0] == 0
and positions[-1] <= D - 1: shallow block k is placed at deep slot positions[k]. Deep slots
that receive no shallow block are filled with identity blocks elsewhere (padding).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

from heterogui.errors import AlignmentError, ConfigError

__all__ = [
    "SEGMENTERS",
    "head",
    "head_tail",
    "lma",
    "lma_first",
    "lma_similar",
    "score",
    "segments",
    "sma",
    "uniform",
    "validate_positions",
]

logger = logging.getLogger(__name__)

Positions = tuple[int, ...]


def _check_depths(depth_deep: int, depth_shallow: int) -> None:
    """Raise AlignmentError unless 1 <= depth_shallow <= depth_deep."""
    if depth_shallow < 1 or depth_deep < 1:
        raise AlignmentError(
            f"a stage needs at least one block in each model, got depth_deep={depth_deep} and "
            f"depth_shallow={depth_shallow}"
        )
    if depth_shallow > depth_deep:
        raise AlignmentError(
            f"the shallow model has more blocks than the deep one ({depth_shallow} > "
            f"{depth_deep}): swap the roles"
        )


def _as_sim(sim: Any) -> np.ndarray:
    """Return sim as a checked (D, S) float64 numpy array."""
    if torch.is_tensor(sim):
        sim = sim.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(sim, dtype=np.float64)
    if arr.ndim != 2:
        raise AlignmentError(
            f"the similarity matrix must be 2-D (deep blocks x shallow blocks), got shape "
            f"{arr.shape}"
        )
    _check_depths(*arr.shape)
    if not np.isfinite(arr).all():
        raise AlignmentError(
            "the similarity matrix contains NaN or infinite values; recompute it (a constant "
            "layer or too few calibration inputs can cause this)"
        )
    return arr


def sma(sim: Any) -> Positions:
    """Align a stage segment-wise: maximise Σ_k sim[a_k, k] over increasing a_1 < ... < a_{S-1}.

    With C = sim[1:, 1:], F[k][l] is the best value placing shallow blocks 1..k on deep blocks
    1..l: F[k][l] = max(F[k][l-1], F[k-1][l-1] + C[l, k]); the choices are backtracked.

    Args:
        sim: (D, S) similarities of deep block l and shallow block k, block 0 included.

    Returns:
        positions (0, a_1, ..., a_{S-1}).

    Raises:
        AlignmentError: if sim is not 2-D, S > D, or it holds NaN/inf.
    """
    arr = _as_sim(sim)
    depth, n_shallow = arr.shape
    rows, cols = depth - 1, n_shallow - 1
    c = arr[1:, 1:]
    f = np.full((cols + 1, rows + 1), -np.inf)
    f[0, :] = 0.0
    take = np.zeros((cols + 1, rows + 1), dtype=bool)
    for k in range(1, cols + 1):
        for l in range(k, rows + 1):
            placed = f[k - 1, l - 1] + c[l - 1, k - 1]
            take[k, l] = placed >= f[k, l - 1]
            f[k, l] = placed if take[k, l] else f[k, l - 1]
    picks: list[int] = []
    k, l = cols, rows
    while k > 0:
        if take[k, l]:
            picks.append(l)
            k -= 1
        l -= 1
    return (0, *reversed(picks))


def lma(sim: Any) -> Positions:
    """Align a stage layer-wise: split deep blocks 1..D-1 into S-1 contiguous segments.

    Segment k (non-empty, in order) is paired with shallow block k and the objective is
    Σ_k Σ_{l in segment k} C[l, k] with C = sim[1:, 1:]. G[k][l] is the best value of deep
    blocks 1..l split into k segments with l in the last one:
    G[k][l] = max(G[k][l-1], G[k-1][l-1]) + C[l, k], G[0][0] = 0. For S == 1 there is nothing to
    split and the deep blocks after slot 0 are left to padding.

    Args:
        sim: (D, S) similarities of deep block l and shallow block k, block 0 included.

    Returns:
        positions: 0, then the last deep slot of each segment (so positions[-1] == D-1 if S > 1).

    Raises:
        AlignmentError: if sim is not 2-D, S > D, or it holds NaN/inf.
    """
    arr = _as_sim(sim)
    depth, n_shallow = arr.shape
    rows, cols = depth - 1, n_shallow - 1
    if cols == 0:
        return (0,)
    c = arr[1:, 1:]
    g = np.full((cols + 1, rows + 1), -np.inf)
    g[0, 0] = 0.0
    # starts[k, l]: deep block l opens segment k (else it extends the segment of block l-1).
    starts = np.zeros((cols + 1, rows + 1), dtype=bool)
    for k in range(1, cols + 1):
        # Segments 1..k need at least k deep blocks; segments k+1..cols need cols-k more.
        for l in range(k, rows - (cols - k) + 1):
            starts[k, l] = g[k - 1, l - 1] >= g[k, l - 1]
            best = g[k - 1, l - 1] if starts[k, l] else g[k, l - 1]
            g[k, l] = best + c[l - 1, k - 1]
    ends = [rows]
    k, l = cols, rows
    while k > 1:
        if starts[k, l]:
            k -= 1
            ends.append(l - 1)
        l -= 1
    return (0, *reversed(ends))


def lma_first(sim: Any) -> Positions:
    """Align with LMA's segments, each shallow block at its segment's first deep slot.

    The placement of the published code (``lma`` places it at the segment's last slot); deep
    slots after the last segment's first are padding.

    Raises:
        AlignmentError: see ``lma``.
    """
    ends = lma(sim)
    return (0, *(end + 1 for end in ends[:-1]))


def lma_similar(sim: Any) -> Positions:
    """Align with LMA's segments, each shallow block at its segment's most similar deep slot.

    Ties go to the earliest slot.

    Raises:
        AlignmentError: see ``lma``.
    """
    arr = _as_sim(sim)
    ends = lma(arr)
    starts = [end + 1 for end in ends[:-1]]
    picks = [
        start + int(np.argmax(arr[start : end + 1, k]))
        for k, (start, end) in enumerate(zip(starts, ends[1:], strict=True), start=1)
    ]
    return (0, *picks)


def _round_half_up(num: int, den: int) -> int:
    """Return num / den rounded half up, in exact integer arithmetic."""
    return (2 * num + den) // (2 * den)


def uniform(depth_deep: int, depth_shallow: int) -> Positions:
    """Space the shallow blocks evenly: a_k = round(k (D-1) / (S-1)), halves rounded up.

    Since S <= D the step is at least 1, so the positions are strictly increasing and the last
    one is D-1.

    Args:
        depth_deep: D, blocks of the deep model in this stage.
        depth_shallow: S, blocks of the shallow model in this stage.

    Returns:
        positions of length S.

    Raises:
        AlignmentError: if S > D or either is below 1.
    """
    _check_depths(depth_deep, depth_shallow)
    if depth_shallow == 1:
        return (0,)
    span, steps = depth_deep - 1, depth_shallow - 1
    return (0, *(_round_half_up(k * span, steps) for k in range(1, depth_shallow)))


def head(depth_deep: int, depth_shallow: int) -> Positions:
    """Place the shallow blocks first: positions 0..S-1, identities after.

    Args:
        depth_deep: D, blocks of the deep model in this stage.
        depth_shallow: S, blocks of the shallow model in this stage.

    Returns:
        positions (0, 1, ..., S-1).

    Raises:
        AlignmentError: if S > D or either is below 1.
    """
    _check_depths(depth_deep, depth_shallow)
    return tuple(range(depth_shallow))


def head_tail(depth_deep: int, depth_shallow: int) -> Positions:
    """Place the first ceil((S-1)/2) shallow blocks after slot 0 and the rest at the stage end.

    Args:
        depth_deep: D, blocks of the deep model in this stage.
        depth_shallow: S, blocks of the shallow model in this stage.

    Returns:
        positions (0, 1, ..., front, D-(S-1-front), ..., D-1) with front = ceil((S-1)/2).

    Raises:
        AlignmentError: if S > D or either is below 1.
    """
    _check_depths(depth_deep, depth_shallow)
    blocks = depth_shallow - 1
    front = math.ceil(blocks / 2)
    back = blocks - front
    return (0, *range(1, front + 1), *range(depth_deep - back, depth_deep))


def _shape_only(fn: Callable[[int, int], Positions]) -> Callable[[Any], Positions]:
    """Wrap a baseline so that it takes a (D, S) similarity matrix and uses only its shape."""

    def segmenter(sim: Any) -> Positions:
        depth_deep, depth_shallow = _as_sim(sim).shape
        return fn(depth_deep, depth_shallow)

    segmenter.__name__ = fn.__name__
    segmenter.__doc__ = fn.__doc__
    return segmenter


SEGMENTERS: dict[str, Callable[[Any], Positions]] = {
    "sma": sma,
    "lma": lma,
    "lma_first": lma_first,
    "lma_similar": lma_similar,
    "uniform": _shape_only(uniform),
    "head": _shape_only(head),
    "head_tail": _shape_only(head_tail),
}
# Segmenters that read the layer similarity (the others depend on the depths only).
NEEDS_SIMILARITY = frozenset({"sma", "lma", "lma_first", "lma_similar"})


def _as_int(value: Any, k: int, shown: list[Any]) -> int:
    """Return value as an int; integral floats (as UI tables give) are accepted."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise AlignmentError(
            f"mapping {shown}: position {value!r} of shallow block {k} is not an integer; "
            "use whole deep slot numbers"
        )
    if isinstance(value, Integral):
        return int(value)
    if not math.isfinite(float(value)) or not float(value).is_integer():
        raise AlignmentError(
            f"mapping {shown}: position {value!r} of shallow block {k} is not an integer; "
            "use whole deep slot numbers"
        )
    return int(value)


def validate_positions(positions: Sequence[Any], depth_deep: int, depth_shallow: int) -> Positions:
    """Check a (possibly hand-edited) mapping of one stage and return it as a tuple of ints.

    Args:
        positions: S deep slots, one per shallow block (list, tuple, numpy array or 1-D tensor).
        depth_deep: D, blocks of the deep model in this stage.
        depth_shallow: S, blocks of the shallow model in this stage.

    Returns:
        positions as a tuple of Python ints.

    Raises:
        AlignmentError: if S > D, or the mapping has non-integers, the wrong length, a first
            position other than 0, a position outside 0..D-1, or is not strictly increasing.
    """
    _check_depths(depth_deep, depth_shallow)
    if torch.is_tensor(positions) or isinstance(positions, np.ndarray):
        positions = positions.tolist()
    shown = list(positions)
    out = [_as_int(p, k, shown) for k, p in enumerate(shown)]
    if len(out) != depth_shallow:
        raise AlignmentError(
            f"mapping {out} has {len(out)} positions but the shallow model has {depth_shallow} "
            "blocks in this stage; give exactly one deep slot per shallow block"
        )
    for k, p in enumerate(out):
        if not 0 <= p <= depth_deep - 1:
            raise AlignmentError(
                f"mapping {out}: position {p} of shallow block {k} is out of range; the deep "
                f"model has slots 0..{depth_deep - 1} in this stage"
            )
    if out[0] != 0:
        raise AlignmentError(
            f"mapping {out} starts at {out[0]}; shallow block 0 is always paired with deep "
            "block 0, so set the first position to 0"
        )
    for k in range(1, len(out)):
        if out[k] <= out[k - 1]:
            raise AlignmentError(
                f"mapping {out} is not monotone: position {out[k]} of shallow block {k} must be "
                f"greater than {out[k - 1]} (the position of shallow block {k - 1}); make the "
                "positions strictly increasing"
            )
    return tuple(out)


def segments(positions: Sequence[Any], depth_deep: int) -> list[list[int]]:
    """List the deep slots that form each shallow block's segment.

    Segment 0 is [0]; segment k is (positions[k-1], positions[k]]. Deep slots after
    positions[-1] (padding at the end of the stage) are appended to the last shallow block's
    segment, so the segments always partition 0..D-1 and there is one per shallow block.

    Args:
        positions: S deep slots, a valid mapping of this stage.
        depth_deep: D, blocks of the deep model in this stage.

    Returns:
        S lists of deep slot indices.

    Raises:
        AlignmentError: if the mapping is invalid (see ``validate_positions``).
    """
    pos = validate_positions(positions, depth_deep, len(positions))
    out = [[0]]
    out += [list(range(pos[k - 1] + 1, pos[k] + 1)) for k in range(1, len(pos))]
    out[-1] += list(range(pos[-1] + 1, depth_deep))
    return out


def score(sim: Any, positions: Sequence[Any], mode: str = "sma") -> float:
    """Evaluate a mapping with the SMA or LMA objective (block 0 excluded).

    "sma": Σ_{k>=1} sim[positions[k], k]. "lma": Σ_{k>=1} Σ_{l in segment k} sim[l, k] with the
    segments of ``segments`` (trailing padding slots count towards the last shallow block).

    Args:
        sim: (D, S) similarities of deep block l and shallow block k, block 0 included.
        positions: S deep slots, one per shallow block.
        mode: "sma" or "lma".

    Returns:
        the objective value as a Python float.

    Raises:
        AlignmentError: if sim or the mapping is invalid.
        ConfigError: if mode is unknown.
    """
    arr = _as_sim(sim)
    depth_deep, depth_shallow = arr.shape
    pos = validate_positions(positions, depth_deep, depth_shallow)
    if mode == "sma":
        return float(sum(arr[pos[k], k] for k in range(1, depth_shallow)))
    if mode == "lma":
        segs = segments(pos, depth_deep)
        return float(sum(arr[l, k] for k in range(1, depth_shallow) for l in segs[k]))
    raise ConfigError(f"unknown score mode {mode!r}; use 'sma' or 'lma'")
