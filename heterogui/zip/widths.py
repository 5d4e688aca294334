"""Widths and knobs of a zip, and the similarity matrix its greedy loop starts from.

docs/method.md sec. 7. The merged width of a zip ratio (``target_width``, ``group_width``), the
within-model budgets (``within_model_budget``), exact in rational arithmetic; the checks of the
knobs and of the correlation matrix with the messages a user sees; and the similarity a loop
starts from (``prepared_similarity``: the diagonal and the spent budgets masked).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from heterogui.errors import MatcherError

NEG_INF = -np.inf


def check_sizes(*sizes: int) -> None:
    names = ("n_a", "n_b") if len(sizes) == 2 else (f"width {k}" for k in range(len(sizes)))
    for name, n in zip(names, sizes, strict=False):
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise MatcherError(f"{name} must be a positive integer, got {n!r}")


def target_width(n_a: int, n_b: int, rho: float) -> int:
    """Return the merged width r = n_a + n_b - round(rho * min(n_a, n_b)) (docs/method.md sec. 7).

    rho = 1 gives max(n_a, n_b) (the paper), rho = 0 keeps every feature (the ensemble). The
    rounding is half-up (rho * min = 2.5 -> 3 merges), not Python's round-half-even.

    Raises:
        MatcherError: rho is outside [0, 1] or a width is not a positive integer.
    """
    check_sizes(n_a, n_b)
    if not 0.0 <= rho <= 1.0:
        raise MatcherError(f"zip ratio rho must be in [0, 1], got {rho!r}")
    return n_a + n_b - merges_for(rho, min(n_a, n_b))


def merges_for(rho: float, count: int) -> int:
    """Return round(rho * count), half-up, computed exactly (0.29 * 50 = 14.5 -> 15).

    rho is taken as the exact decimal the user typed, so a float product such as
    14.4999... never rounds the other way.
    """
    return math.floor(Fraction(str(rho)) * count + Fraction(1, 2))


def as_matrix(
    corr: Tensor | np.ndarray, sizes: tuple[int, ...], device: torch.device | str = "cpu"
) -> Tensor:
    """Return a copy of corr on ``device``, (O, O), checked for shape and finiteness.

    A float32 corr stays float32 (the pipeline's correlations are float32: the greedy loop then
    moves half the bytes, and with alpha 0.5 its products, minima and halvings, are exact in
    either precision, so the groups are those of a float64 copy); any other dtype becomes
    float64.
    """
    check_sizes(*sizes)
    dtype = loop_dtype(corr)
    if isinstance(corr, Tensor):
        c = corr.detach().to(device, dtype, copy=True)  # one copy
    else:
        single = dtype == torch.float32
        c = torch.from_numpy(np.array(corr, np.float32 if single else np.float64, copy=True))
        c = c.to(device)
    o = sum(sizes)
    if tuple(c.shape) != (o, o):
        raise MatcherError(
            f"corr must have shape ({o}, {o}) for {named_sizes(sizes)}, got {tuple(c.shape)}"
        )
    if not all_finite(c):
        raise MatcherError("corr contains NaN or inf; compute it with Moments.corr (floored σ)")
    return c


def all_finite(t: Tensor) -> bool:
    """Return whether every element of ``t`` is finite.

    A finite sum has no inf or NaN term (either makes the sum inf or NaN), and summing is one
    pass without a mask: about 35 times quicker than ``isfinite(t).all()`` on a 3,072-square
    float32 matrix. A sum that overflows is checked element by element.
    """
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def loop_dtype(corr: Tensor | np.ndarray) -> torch.dtype:
    """Return the precision the greedy loop zips ``corr`` in: float32 for a float32 corr
    (a tensor or an array), float64 for any other."""
    dtype = corr.dtype if isinstance(corr, Tensor) else np.asarray(corr).dtype
    return torch.float32 if dtype in (torch.float32, np.float32) else torch.float64


def named_sizes(sizes: tuple[int, ...]) -> str:
    """Return "n_a=5, n_b=4" (two models) or "widths (5, 4, 3)"."""
    return f"n_a={sizes[0]}, n_b={sizes[1]}" if len(sizes) == 2 else f"widths {sizes}"


def is_symmetric(t: Tensor, step: int = 256) -> bool:
    """Return whether the square ``t`` equals its transpose exactly.

    On the CPU tile by tile: a tile and its mirror stay in cache, about 3x faster than
    comparing with the whole transposed matrix (3,072 float32 features: 18 ms instead of 53
    ms), which in turn is ~3x faster than numpy; a float32 input moves half the bytes of its
    float64 copy. On another device in one comparison (one wait for its result, not one a tile).
    """
    if t.device.type != "cpu":
        return torch.equal(t, t.T)
    n = t.shape[0]
    for r in range(0, n, step):
        for c in range(r, n, step):
            if not torch.equal(t[r : r + step, c : c + step], t[c : c + step, r : r + step].T):
                return False
    return True


def check_knobs(sizes: tuple[int, ...], width: int, alpha: float, beta: float) -> None:
    o = sum(sizes)
    if isinstance(width, bool) or int(width) != width or not 1 <= width <= o:
        total = "n_a + n_b" if len(sizes) == 2 else "the sum of the widths"
        raise MatcherError(
            f"zip width must be an integer between 1 and {total} = {o}, got {width!r}; "
            "use target_width(n_a, n_b, rho) to derive it from a zip ratio"
        )
    if not 0.0 < alpha <= 1.0:
        raise MatcherError(f"alpha must be in (0, 1], got {alpha!r}; the paper uses 0.5")
    if not 0.0 <= beta <= 1.0:
        raise MatcherError(f"beta must be in [0, 1], got {beta!r}; the paper uses 1.0")


def within_model_budget(o: int, width: int, n: int, beta: float) -> int:
    """Return floor((O - r) * n_m / O * beta) computed exactly (rational arithmetic).

    A float product can land just under an integer (50 * 0.58 = 28.999...) and floor one too
    low; beta is taken as the exact decimal the user typed (``Fraction(str(beta))``).
    """
    return math.floor(Fraction(o - width) * n / o * Fraction(str(beta)))


def prepared_similarity(
    corr, sizes, width, alpha, beta, device: torch.device | str = "cpu"
) -> tuple[Tensor, list[int]]:
    """Validate; return sim on ``device`` (-inf diagonal, exhausted budgets masked) and the
    within-model budgets."""
    sim = as_matrix(corr, sizes, device)
    o = sum(sizes)
    check_knobs(sizes, width, alpha, beta)
    if not is_symmetric(sim):
        sim = 0.5 * (sim + sim.T)  # symmetric sim: the row-major first argmax has i < j
    sim.fill_diagonal_(NEG_INF)
    budget = [within_model_budget(o, width, n, beta) for n in sizes]
    start = 0
    for n, spent in zip(sizes, budget, strict=True):
        if spent == 0:  # every pair of this model's features is forbidden from the start
            sim[start : start + n, start : start + n] = NEG_INF
        start += n
    return sim, budget


def numpy_start(corr, sizes, width, alpha, beta) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Return ``prepared_similarity``'s sim as a CPU array, the budgets, and every feature's
    model."""
    sim, budget = prepared_similarity(corr, sizes, width, alpha, beta)
    return sim.numpy(), budget, np.repeat(np.arange(len(sizes)), sizes)


def stuck_error(sizes: tuple[int, ...], width: int, beta: float, reached: int) -> MatcherError:
    more = "raise beta to allow more within-model merges, or " if beta < 1 else ""
    features = (
        f"n_a={sizes[0]} + n_b={sizes[1]}" if len(sizes) == 2 else " + ".join(map(str, sizes))
    )
    return MatcherError(
        f"cannot zip {features} features down to width {width}: with beta={beta} "
        f"the smallest reachable width is {reached} (no allowed pair is left); {more}raise the "
        f"target width to >= {reached} (lower rho)"
    )


def group_width(sizes: tuple[int, ...], rho: float) -> int:
    """Return the merged width of an N-way zip: O - round(rho (O - max n_m)).

    rho = 1 gives the widest model's width, rho = 0 keeps every feature; two models give
    ``target_width``.

    Raises:
        MatcherError: rho is outside [0, 1] or a width is not a positive integer.
    """
    check_sizes(*sizes)
    if not 0.0 <= rho <= 1.0:
        raise MatcherError(f"zip ratio rho must be in [0, 1], got {rho!r}")
    o = sum(sizes)
    return o - merges_for(rho, o - max(sizes))
