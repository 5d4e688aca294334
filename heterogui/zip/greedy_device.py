"""The greedy zip's loop on the model's device, several merge points side by side.

docs/method.md sec. 7. ``GreedyZip.run`` (heterogui.zip.greedy) takes O/2 dependent steps per
merge point, each a few vector operations over O features. On a CPU that loop is bound by
memory traffic (a step's column write touches one cache line per feature); on a GPU a step is
bound by the launches of its small kernels instead. So here:

- merge points of one size advance in lock-step: one step is one set of launches for all of
  them (a merge point that is done or stuck takes throwaway steps on its own rows until the
  others are done; they are not recorded);
- a step is device work only (no wait for the host), so on CUDA it is captured once as a CUDA
  graph and replayed: one launch a step. The host reads back each step's picks (one small
  copy) to keep the budgets and the steps taken, and masks a model whose budget ran out.

The steps are ``GreedyZip.run``'s: the same cached row maxima and first argmax columns, the
same float operations on the similarities (minimum, damping, -inf at dead columns) and the
same rows recomputed, so every merge point gets the very groups of ``zip.matchers.zip_group``,
ties included (tests/test_greedy_device.py). Rows to recompute are taken ``STALE_ROWS`` at a
time a step (rows whose cached argmax was one of the two merged groups: a handful); a step
that had more recomputes that merge point's rows in full before the next pick. Two models
only: the N-way zip's damping stays on the CPU loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from heterogui.zip.greedy import COPIES

_NEG_INF = float("-inf")
STALE_ROWS = 32  # rows a step recomputes per merge point; more: the whole point's rows
CUDA_GRAPHS = True  # replay the step as a CUDA graph on CUDA (False: launch it op by op)


class LockStep:
    """The state of P greedy zips of O features each, stepped together on the sims' device.

    ``step`` is device work only; afterwards ``picks`` holds, per merge point, the groups
    merged (i, j), whether no allowed pair was left, and whether the step had more rows to
    recompute than it took.
    """

    def __init__(self, sims: Tensor, alphas: Sequence[float], owner: Tensor):
        count, o, _ = sims.shape
        dev = sims.device
        self.sims = sims
        self.alpha = torch.tensor(list(alphas), dtype=sims.dtype, device=dev)[:, None]
        self.one = torch.ones_like(self.alpha)  # the factor of a merge of copies
        self.owner = owner.to(dev)  # the model of each feature, so of each group's first
        self.mixed = torch.zeros(count, o, dtype=torch.bool, device=dev)  # both models' members
        self.points = torch.arange(count, device=dev)
        self.cols = torch.arange(o, device=dev)
        self.dead = torch.zeros(count, o, dtype=sims.dtype, device=dev)  # -inf: a dead column
        self.neg = torch.tensor(_NEG_INF, dtype=sims.dtype, device=dev)
        self.minus_one = torch.tensor(-1, device=dev)
        self.true = torch.tensor(True, device=dev)
        self.row_max, self.row_arg = sims.max(dim=2)  # every row's max, first argmax column
        self.picks = torch.zeros(4, count, dtype=torch.int64, device=dev)
        self.stale_rows = min(STALE_ROWS, o)

    def step(self) -> None:
        """Merge, at every merge point, the first row-major maximum's pair (j into i)."""
        points, row_max, row_arg = self.points, self.row_max, self.row_arg
        best, i = row_max.max(dim=1)  # the first row holding the max
        j = row_arg.gather(1, i[:, None]).squeeze(1).clamp_(min=0)
        self.picks[0].copy_(i)
        self.picks[1].copy_(j)
        self.picks[2].copy_(best == _NEG_INF)
        # GreedyZip.merge: alpha (1 for copies within one model) min of rows i and j, -inf at
        # dead columns, to row and column i
        same = self.owner[i] == self.owner[j]
        mixed_i, mixed_j = self.mixed[points, i], self.mixed[points, j]
        copies = (best >= COPIES) & same & ~mixed_i & ~mixed_j
        self.mixed.index_put_((points, i), mixed_i | mixed_j | ~same)
        factor = torch.where(copies[:, None], self.one, self.alpha)
        new = torch.minimum(self.sims[points, i], self.sims[points, j]).mul_(factor)
        self.dead.index_put_((points, j), self.neg)
        new += self.dead
        self.sims.index_put_((points, i), new)
        self.sims.index_put_((points[:, None], self.cols, i[:, None]), new)
        # GreedyZip.run: row j dies; a row takes the new value at column i when it beats its
        # max or ties it at a smaller column; rows whose argmax was i or j, and row i, go stale
        row_max.index_put_((points, j), self.neg)
        row_arg.index_put_((points, j), self.minus_one)
        col = i[:, None]
        stale = (row_arg == col) | (row_arg == j[:, None])
        stale.index_put_((points, i), self.true)
        take = (new > row_max) | ((new == row_max) & (row_arg > col))
        row_max.copy_(torch.where(take, new, row_max))
        row_arg.copy_(torch.where(take, col, row_arg))
        self.picks[3].copy_(stale.sum(dim=1) > self.stale_rows)
        flagged, rows = stale.to(self.sims.dtype).topk(self.stale_rows, dim=1)
        flagged = flagged > 0
        values, args = (self.sims[points[:, None], rows] + self.dead[:, None, :]).max(dim=2)
        row_max.scatter_(1, rows, torch.where(flagged, values, row_max.gather(1, rows)))
        row_arg.scatter_(1, rows, torch.where(flagged, args, row_arg.gather(1, rows)))

    def recompute(self, point: int, rows: Tensor, alive: np.ndarray) -> None:
        """Recompute the row maxima of ``rows`` of one merge point exactly (dead rows: -inf)."""
        values, args = (self.sims[point, rows] + self.dead[point]).max(dim=1)
        live = torch.from_numpy(alive).to(rows.device)[rows]
        self.row_max[point, rows] = torch.where(live, values, self.neg)
        self.row_arg[point, rows] = torch.where(live, args, self.minus_one)


def zip_side_by_side(
    sims: Tensor,
    budgets: Sequence[list[int]],
    owner: np.ndarray,
    alphas: Sequence[float],
    widths: Sequence[int],
) -> list[np.ndarray]:
    """Zip P merge points of O features each greedily, in lock-step; return their steps.

    sims: (P, O, O) starting similarities (symmetric, -inf diagonal, models with budget 0
    masked), modified in place. budgets: per merge point, the within-model budget of each of
    the two models, modified in place. owner: (O,) the model of each feature (0 or 1).
    widths: the groups each merge point zips down to.

    Returns:
        Per merge point, its steps as an (n, 2) int32 array: step t merged group [t, 1] into
        group [t, 0]. Fewer than O - width steps: no allowed pair was left (the caller
        reports it).
    """
    count, o, _ = sims.shape
    state = LockStep(sims, alphas, torch.from_numpy(owner))
    alive = np.ones((count, o), dtype=bool)
    steps = [np.empty((o - w, 2), dtype=np.int32) for w in widths]
    taken = [0] * count
    active = [p for p in range(count) if o > widths[p]]
    use_graph = sims.device.type == "cuda" and CUDA_GRAPHS
    step: Callable[[], None] = state.step
    while active:
        step()
        i, j, stuck, overflow = state.picks.tolist()
        if use_graph and step == state.step:  # the first step ran eagerly (a warm-up)
            step = _captured(state.step, sims.device)
        for p in list(active):
            if stuck[p]:
                active.remove(p)
                continue
            a, b = i[p], j[p]
            alive[p, b] = False
            steps[p][taken[p]] = a, b
            taken[p] += 1
            m = owner[a]
            if m == owner[b]:
                budgets[p][m] -= 1
                if budgets[p][m] == 0:  # forbid every pair of this model's live groups
                    reps = torch.from_numpy(np.flatnonzero(alive[p] & (owner == m)))
                    reps = reps.to(sims.device)
                    sims[p][reps[:, None], reps] = _NEG_INF
                    state.recompute(p, reps, alive[p])
            if overflow[p]:
                state.recompute(p, state.cols, alive[p])
            if taken[p] == len(steps[p]):
                active.remove(p)
    return [s[:t] for s, t in zip(steps, taken, strict=True)]


def _captured(step: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """Return ``step`` captured as a CUDA graph (its replay: the same work, one launch).

    Other merge points are matched on other threads meanwhile (``matching.in_parallel``), some
    forming their correlations on the device: the capture forbids unsafe calls on its own
    thread only. The graph is captured and replayed with ``device`` current (the models may
    sit on a GPU other than the current one).
    """
    with torch.cuda.device(device):
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            step()

    def replay() -> None:
        with torch.cuda.device(device):
            graph.replay()

    return replay
