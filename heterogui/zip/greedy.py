"""The greedy zip's fast loop, and the runs it keeps so that the next width starts where they agree.

docs/method.md sec. 7. A zip to width r takes O - r greedy steps; each merges the most similar
pair of live groups. What a step picks depends only on the similarities, which the steps before
it wrote, and on which models' within-model pairs are masked: a model is masked once its
within-model merges reach its budget floor((O - r) n_m / O beta), so the budget is the only
thing the width changes. Two zips of one correlation to different widths therefore take the
same steps for as long as their budgets mask the same models at the same steps.

A slider move re-zips the same correlation to another width. ``zip_parents`` keeps the steps of
the last few runs per correlation (a torch tensor, kept while it lives, forgotten once it is
modified in place) and reuses the longest run that agrees with the new budgets:

- the new zip needs no more steps than agree: its groups are read off those steps, no loop;
- else the agreeing steps are replayed (each step's row and column update, without the search
  for the next pair) and the loop goes on from there.

Either way the groups are those of a zip from scratch, ties included: the replay performs the
very same float operations, and the loop's cached row maxima are recomputed exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from heterogui.memo import ObjectMemo

_NEG_INF = -np.inf
_RUNS_KEPT = 3  # per correlation: the longest run (the default width's) and the latest ones
# Two groups of one model's features at least this similar are copies of one feature (a
# merge that kept a feature from both of its models holds it twice, and merging that merge
# again meets both copies): merging them leaves that feature as it was, so the merged group is
# not damped. Copies across models complete a group, which is damped as the paper does.
COPIES = 1.0 - 1e-6


@dataclass(frozen=True, eq=False)
class Run:
    """The steps of one zip: step t merged group ``steps[t, 1]`` into group ``steps[t, 0]``.

    budget: the within-model budgets it started from (one per model).
    """

    steps: np.ndarray
    budget: tuple[int, ...]


def mask_model(sim: np.ndarray, alive: np.ndarray, owner: np.ndarray, model: int) -> np.ndarray:
    """Forbid every pair of live representatives of one model; return those representatives."""
    reps = np.flatnonzero(alive & (owner == model))
    sim[np.ix_(reps, reps)] = _NEG_INF
    return reps


def spend_budget(sim, alive, budget, owner, i, j) -> np.ndarray | None:
    """Charge a within-model merge of i and j; return the reps masked when a budget runs out."""
    m = owner[i]
    if m != owner[j]:
        return None
    budget[m] -= 1
    return mask_model(sim, alive, owner, m) if budget[m] == 0 else None


class Damping:
    """The factor a merged group's similarities are damped by (alpha, or 1 for a free merge).

    Two models: alpha (the paper: every re-merge is damped), except for a merge of copies
    within one model (groups of that model's features alone, similarity at least ``COPIES``),
    which is 1. More models: a merge that completes a group across models is not a re-merge
    either: a group whose members come from distinct models and another such group with none
    of its models are not damped (factor 1), so a third model's feature joins a pair of A and B
    at their full correlation; a merge of copies within one model keeps its group as clean as
    it was; every other pair is damped by alpha.
    """

    def __init__(self, owner: np.ndarray, n_models: int, alpha: float):
        self.alpha = alpha
        self.many = n_models > 2
        self.models = np.left_shift(1, owner.astype(np.int64))  # bit set of each group's models
        self.clean = np.ones(owner.size, dtype=bool)  # no two members from one model

    def merge(self, i: int, j: int, similarity: float) -> float | np.ndarray:
        """Record that group j joined group i at ``similarity``; return the factor of i's new
        similarities."""
        models = self.models
        one = models[i] == models[j] and models[i] & (models[i] - 1) == 0  # one model's alone
        copies = one and similarity >= COPIES
        if self.many:
            self.clean[i] &= self.clean[j] & (copies or (models[i] & models[j]) == 0)
        models[i] |= models[j]
        if copies or not self.many:
            return 1.0 if copies else self.alpha
        free = self.clean & self.clean[i] & ((models & models[i]) == 0)
        return np.where(free, 1.0, self.alpha)


class GreedyZip:
    """The greedy zip's state: similarities, budgets, parent pointers and the steps taken.

    sim: (O, O) similarities with a -inf diagonal (and masked models), modified in place;
    alive, budget: modified in place; owner: the model of each feature.
    """

    def __init__(self, sim, alive, budget, owner, alpha):
        o = sim.shape[0]
        self.sim, self.alive, self.budget, self.owner = sim, alive, budget, owner
        self.parent = np.arange(o)
        self.dead = np.zeros(o, dtype=sim.dtype)  # 0 for a live column, -inf for a dead one
        self.new = np.empty(o, dtype=sim.dtype)
        self.damping = Damping(owner, len(budget), alpha)
        self.steps = np.empty((o, 2), dtype=np.int32)
        self.taken = 0

    @property
    def groups_left(self) -> int:
        """Return the number of groups left."""
        return self.sim.shape[0] - self.taken

    def merge(self, i: int, j: int) -> np.ndarray | None:
        """Merge group j into group i; return the reps masked when a budget ran out.

        Dead rows and columns are never rewritten (a strided column write is the dearest
        operation here): reads add ``dead``, which gives exactly the naive loop's -inf.
        """
        sim, new = self.sim, self.new
        self.parent[j] = i
        self.alive[j] = False
        self.dead[j] = _NEG_INF
        self.steps[self.taken] = i, j
        self.taken += 1
        np.minimum(sim[i], sim[j], out=new)
        new *= self.damping.merge(i, j, sim[i, j])  # new[i] = -inf already: sim[i, i] = -inf
        new += self.dead
        sim[i] = new
        sim[:, i] = new
        return spend_budget(sim, self.alive, self.budget, self.owner, i, j)

    def replay(self, steps: np.ndarray) -> None:
        """Take ``steps`` (a run's first steps that agree with this zip's budgets)."""
        for i, j in steps.tolist():
            self.merge(i, j)

    def run(self, width: int) -> None:
        """Take greedy steps until ``width`` groups are left or no allowed pair is.

        row_max[k] / row_arg[k] hold the max and first argmax column of row k over live columns
        (dead rows: -inf, -1). After merging j into i only column i changes in other rows
        (column j dies), plus the block of a model whose budget ran out. A row keeps its cached
        argmax unless the new value at column i beats it or ties it at a smaller column; rows
        whose argmax was i or j, row i itself and masked rows are recomputed. Rows whose max is
        -inf may cache any column: they stay all -inf and are never picked.
        """
        sim, dead, new = self.sim, self.dead, self.new
        row_max, row_arg = self._row_maxima()
        while self.groups_left > width:
            i = int(row_max.argmax())  # first row holding the max = row-major first maximum
            if row_max[i] == _NEG_INF:
                break
            j = int(row_arg[i])
            masked = self.merge(i, j)
            row_max[j] = _NEG_INF
            row_arg[j] = -1
            stale = row_arg == i
            stale |= row_arg == j
            stale[i] = True
            if masked is not None:
                stale[masked] = True
            take = new > row_max
            take |= (new == row_max) & (row_arg > i)  # stale rows may be taken: recomputed below
            np.copyto(row_max, new, where=take)
            np.copyto(row_arg, i, where=take)
            rows = stale.nonzero()[0]
            sub = sim[rows]
            sub += dead
            row_max[rows] = sub.max(axis=1)
            row_arg[rows] = sub.argmax(axis=1)

    def _row_maxima(self, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Return every row's max and first argmax over live columns (dead rows: -inf, -1)."""
        sim, dead = self.sim, self.dead
        if not self.taken:
            return sim.max(axis=1), sim.argmax(axis=1)
        o = sim.shape[0]
        row_max, row_arg = np.empty(o, dtype=sim.dtype), np.empty(o, dtype=np.int64)
        for start in range(0, o, block):  # a block of rows at a time: no (O, O) temporary
            sub = sim[start : start + block] + dead
            row_max[start : start + block] = sub.max(axis=1)
            row_arg[start : start + block] = sub.argmax(axis=1)
        row_max[~self.alive] = _NEG_INF
        row_arg[~self.alive] = -1
        return row_max, row_arg

    def recorded(self, budget: Sequence[int]) -> Run:
        """Return the steps taken as a Run that started from ``budget``."""
        return Run(self.steps[: self.taken].copy(), tuple(budget))


def shared_steps(run: Run, budget: Sequence[int], owner: np.ndarray) -> int:
    """Return how many of ``run``'s first steps a zip starting from ``budget`` takes too.

    Before step t both zips are in the same state when every model is masked in both or in
    neither: model m is masked once its within-model merges so far reach its budget.
    """
    steps = run.steps
    first, second = owner[steps[:, 0]], owner[steps[:, 1]]
    within = first == second
    shared = len(steps)
    for m, (theirs, ours) in enumerate(zip(run.budget, budget, strict=True)):
        if theirs == ours:
            continue
        merged = np.concatenate(([0], np.cumsum(within & (first == m))))  # before step t
        differ = np.flatnonzero((merged >= theirs) != (merged >= ours))
        if differ.size:
            shared = min(shared, int(differ[0]))
    return shared


def parents_of(o: int, steps: np.ndarray) -> np.ndarray:
    """Return the parent pointers after ``steps`` (each merged feature points to its group)."""
    parent = np.arange(o)
    parent[steps[:, 1]] = steps[:, 0]
    return parent


# The runs of the correlations zipped lately (a slider re-zips the same one): per tensor, its
# version counter (an in-place change makes it a new key), the models' widths and alpha.
_RUNS = ObjectMemo(limit=256)


def kept_runs(corr: Tensor | np.ndarray, sizes: tuple[int, ...], alpha: float) -> list[Run]:
    """Return the list of runs kept for ``corr`` (a new empty one for anything but a tensor
    with a version counter: inference-mode tensors have none)."""
    if not isinstance(corr, Tensor) or corr.is_inference():
        return []
    key = (sizes, float(alpha), corr._version, corr.dtype, tuple(corr.shape))
    return _RUNS.get(corr, key, list)


def zip_parents(
    corr: Tensor | np.ndarray,
    sizes: tuple[int, ...],
    width: int,
    alpha: float,
    budget: list[int],
    start: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, int]:
    """Zip greedily to ``width``; return the parent pointers and the number of groups left.

    budget: the within-model budgets of this width. start: returns (sim, alive), the loop's
    starting state (checked, symmetric, -inf diagonal, budget-0 models masked); it is only
    called when a loop has to run. More groups than ``width`` are left when no allowed pair
    was: the caller reports it.
    """
    o = sum(sizes)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    runs, best, shared = _agreeing(corr, sizes, alpha, budget, owner)
    if best is not None and shared >= o - width:
        return parents_of(o, best.steps[: o - width]), width
    sim, alive = start()
    zipper = GreedyZip(sim, alive, list(budget), owner, alpha)
    if best is not None:
        zipper.replay(best.steps[:shared])
    zipper.run(width)
    if zipper.groups_left == width:  # a run that got stuck is not worth keeping
        _remember(runs, zipper.recorded(budget))
    return zipper.parent, zipper.groups_left


def reused_parents(
    corr: Tensor | np.ndarray, sizes: tuple[int, ...], width: int, alpha: float, budget: list[int]
) -> np.ndarray | None:
    """Return the parent pointers of a zip to ``width`` read off a kept run, or None when no
    kept run agrees with its budgets for all of its steps (``zip_parents`` without a loop)."""
    o = sum(sizes)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    _, best, shared = _agreeing(corr, sizes, alpha, budget, owner)
    if best is not None and shared >= o - width:
        return parents_of(o, best.steps[: o - width])
    return None


def remember_run(corr: Tensor | np.ndarray, sizes: tuple[int, ...], alpha: float, run: Run) -> None:
    """Keep ``run``, a zip of ``corr`` that reached its width, for the next widths."""
    _remember(kept_runs(corr, sizes, alpha), run)


def _agreeing(
    corr: Tensor | np.ndarray,
    sizes: tuple[int, ...],
    alpha: float,
    budget: Sequence[int],
    owner: np.ndarray,
) -> tuple[list[Run], Run | None, int]:
    """Return the runs kept for ``corr``, the one sharing the most first steps with a zip
    from ``budget`` (None: none shares a step), and how many it shares."""
    runs = kept_runs(corr, sizes, alpha)
    best, shared = None, 0
    for run in runs:
        n = shared_steps(run, budget, owner)
        if n > shared:
            best, shared = run, n
    return runs, best, shared


def _remember(runs: list[Run], run: Run) -> None:
    """Add ``run``; keep the longest run and the latest ones, ``_RUNS_KEPT`` in all."""
    runs.append(run)
    while len(runs) > _RUNS_KEPT:
        longest = max(runs, key=lambda r: len(r.steps))
        del runs[next(k for k, r in enumerate(runs) if r is not longest)]
