"""One merge point's features in display order, with its merged groups (docs/method.md sec. 7).

``neuron_view`` orders the O = n_A + n_B features of a merge point by the matching: the merged
groups, cross-model groups first, then within-model groups, each kind by the mean correlation
of its members (strongest first, A's member first in each group), then the features kept alone,
then the dropped ones. It also picks the features a detail view shows for a large layer (the
strongest groups, at most ``MAX_FEATURES`` features). ``heterogui.ui.fig_neurons`` draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from heterogui.zip.matchers import Match

MAX_FEATURES = 256  # a layer up to this size is drawn whole; the detail view's feature budget
DETAIL_GROUPS = 48  # merged groups the detail view of a larger layer shows
# colours told apart with protanopia and deuteranopia too (Okabe-Ito blue, orange; wine): the
# green, orange and red before were one colour to a protanope (across / within)
KINDS = (
    ("alone", "kept alone", "#9e9e9e"),
    ("cross", "merged across A and B", "#0072b2"),
    ("within", "merged within one model", "#e69f00"),
    ("dropped", "dropped", "#882255"),
)
KIND_COLOURS = {key: colour for key, _, colour in KINDS}
ALONE, CROSS, WITHIN, DROPPED = range(4)


@dataclass(frozen=True)
class NeuronView:
    """One merge point's features in display order, with its merged groups (sec. 7).

    Attributes:
        corr: (O, O) correlation of [f_A ; f_B], as given (not reordered).
        n_a, n_b: the two models' widths.
        order: (O,) the feature shown at each display position.
        kinds: (O,) the kind (``KINDS`` index) of the feature at each display position.
        spans: (G, 4) int, one row per group of two or more features in display order:
            (first position, stop position, kind, group id).
        strength: (G,) the mean correlation of each span's member pairs.
        pairs: "cross" (one feature of A, one of B) and "within" (same model): the correlation
            of every pair of features that share a group.
        detail: display positions of the detail view (ascending); all of them for a small layer.
        detail_spans: indices into ``spans`` of the groups the detail view shows.
        merged: whether there is a matching (False: the space is not merged).
    """

    corr: np.ndarray
    n_a: int
    n_b: int
    order: np.ndarray
    kinds: np.ndarray
    spans: np.ndarray
    strength: np.ndarray
    pairs: dict[str, np.ndarray]
    detail: np.ndarray
    detail_spans: np.ndarray
    merged: bool

    @property
    def n_features(self) -> int:
        """Return O = n_A + n_B."""
        return self.n_a + self.n_b

    @property
    def full(self) -> bool:
        """Return whether the detail view shows every feature (a small layer)."""
        return self.detail.size == self.n_features

    def group_count(self, kind: int) -> int:
        """Return the number of groups of two or more features of ``kind`` (CROSS or WITHIN)."""
        return int((self.spans[:, 2] == kind).sum())

    def shown_count(self, kind: int) -> int:
        """Return how many groups of ``kind`` the detail view shows."""
        return int((self.spans[self.detail_spans, 2] == kind).sum())


def neuron_view(
    corr: np.ndarray,
    n_a: int,
    n_b: int,
    match: Match | None,
    max_features: int = MAX_FEATURES,
    detail_groups: int = DETAIL_GROUPS,
) -> NeuronView:
    """Return the display order of a merge point's features and the detail view's selection.

    Groups are ranked by the mean correlation of their member pairs (the zip merges the most
    correlated features first, docs/method.md sec. 7). A layer of at most ``max_features``
    features is shown whole; a larger one's detail holds up to ``detail_groups`` groups of at
    most ``max_features`` features in all: the strongest cross-model groups, with a quarter of
    the places kept for the strongest within-model groups (the places one kind cannot fill go
    to the other).
    """
    corr = np.asarray(corr)
    o = n_a + n_b
    if match is None:
        order, kinds = np.arange(o), np.zeros(o, dtype=int)
        spans, strength = np.zeros((0, 4), dtype=int), np.zeros(0)
        pairs = {"cross": np.zeros(0), "within": np.zeros(0)}
    else:
        order, kinds, spans, strength, pairs = _arrange(corr, match)
    if o <= max_features:
        detail, chosen = np.arange(o), np.arange(len(spans))
    elif len(spans):
        chosen = _choose(spans, detail_groups, max_features)
        detail = np.concatenate([np.arange(spans[i, 0], spans[i, 1]) for i in chosen])
    else:  # nothing merged: the first features of A and of B
        half = max_features // 2
        pos_of = np.empty(o, dtype=int)
        pos_of[order] = np.arange(o)
        picked = np.r_[np.arange(min(half, n_a)), n_a + np.arange(min(half, n_b))]
        detail, chosen = np.sort(pos_of[picked]), np.zeros(0, dtype=int)
    return NeuronView(
        corr, n_a, n_b, order, kinds, spans, strength, pairs, detail, chosen, match is not None
    )


def _arrange(corr: np.ndarray, match: Match):
    """Return (order, kinds, spans, strength, pairs) of a matching (see ``NeuronView``)."""
    n_a, o = match.n_a, match.n_features
    groups = match.groups.numpy()
    kept = np.flatnonzero(groups >= 0)
    members = kept[np.argsort(groups[kept], kind="stable")]  # by group, ascending inside
    sizes = np.bincount(groups[kept], minlength=match.width)
    offsets = np.r_[0, np.cumsum(sizes)[:-1]]
    from_a = np.bincount(groups[kept[kept < n_a]], minlength=match.width)
    kind = np.where(sizes < 2, ALONE, np.where((from_a > 0) & (from_a < sizes), CROSS, WITHIN))
    strength = np.full(match.width, np.nan)
    cross, within = [], []
    for size in np.unique(sizes[sizes > 1]):  # the pairs of all groups of one size at once
        ids = np.flatnonzero(sizes == size)
        feats = members[offsets[ids, None] + np.arange(size)]  # (groups, size)
        i, j = np.triu_indices(size, 1)
        left, right = feats[:, i], feats[:, j]
        values = np.asarray(corr[left, right], dtype=np.float64)
        strength[ids] = values.mean(axis=1)
        across = (left < n_a) != (right < n_a)
        cross.append(values[across])
        within.append(values[~across])
    rank = {CROSS: 0, WITHIN: 1, ALONE: 2}
    key = np.array([rank[k] for k in kind.tolist()])
    group_order = np.lexsort((np.arange(match.width), -np.nan_to_num(strength), key))
    ranked = sizes[group_order]
    starts = np.r_[0, np.cumsum(ranked)]
    inside = np.arange(kept.size) - np.repeat(starts[:-1], ranked)  # rank inside the group
    order = np.r_[
        members[np.repeat(offsets[group_order], ranked) + inside], np.flatnonzero(groups < 0)
    ]
    feature_kind = np.full(o, DROPPED)
    feature_kind[kept] = kind[groups[kept]]
    multi = ranked > 1
    spans = np.stack(
        [starts[:-1][multi], starts[1:][multi], kind[group_order][multi], group_order[multi]],
        axis=1,
    ).astype(int)
    pairs = {
        "cross": np.concatenate(cross) if cross else np.zeros(0),
        "within": np.concatenate(within) if within else np.zeros(0),
    }
    return order, feature_kind[order], spans.reshape(-1, 4), strength[spans[:, 3]], pairs


def _choose(spans: np.ndarray, count: int, max_features: int) -> np.ndarray:
    """Return the spans the detail view shows: the strongest of each kind (spans are ranked)."""
    cross = np.flatnonzero(spans[:, 2] == CROSS)
    within = np.flatnonzero(spans[:, 2] == WITHIN)
    take_cross = min(cross.size, count - min(within.size, count // 4))
    take_within = min(within.size, count - take_cross)
    sizes = spans[:, 1] - spans[:, 0]
    while take_cross + take_within > 1:  # keep the feature budget: drop the weakest group
        total = sizes[cross[:take_cross]].sum() + sizes[within[:take_within]].sum()
        if total <= max_features:
            break
        if take_cross > 3 * take_within or take_within == 0:
            take_cross -= 1
        else:
            take_within -= 1
    return np.r_[cross[:take_cross], within[:take_within]].astype(int)


def feature_order(
    match: Match | None, n_a: int, n_b: int, corr: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (order of the O features for display, kind index per displayed feature).

    Without a match: A's features then B's, all "alone". Without ``corr`` the groups of a
    kind keep their numbering instead of being ranked by strength.
    """
    o = n_a + n_b
    if corr is None:  # every group equally strong: a view of zeros, nothing allocated
        corr = np.broadcast_to(np.float64(0), (o, o))
    view = neuron_view(corr, n_a, n_b, match, max_features=o)
    return view.order, view.kinds


def runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Return the runs of consecutive positions as (first, stop)."""
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.r_[positions[0], positions[breaks]]
    stops = np.r_[positions[breaks - 1] + 1, positions[-1] + 1]
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def block_means(view: NeuronView, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean correlation over factor x factor blocks of the display order and the
    most common kind of feature per block; a feature's correlation with itself is left out."""
    o = view.n_features
    nb = math.ceil(o / factor)
    block = np.arange(o) // factor  # block of each display position
    corr = np.asarray(view.corr)
    if corr.dtype not in (np.float32, np.float64):
        corr = corr.astype(np.float64)
    onehot = np.zeros((nb, o), dtype=corr.dtype)
    onehot[block, view.order] = 1.0  # feature index -> its block
    sums = ((onehot @ corr) @ onehot.T).astype(np.float64)  # block sums in one product
    counts = np.bincount(block, minlength=nb).astype(np.float64)
    sums[np.diag_indices(nb)] -= np.bincount(block, weights=np.diag(corr)[view.order], minlength=nb)
    pairs = np.outer(counts, counts)
    pairs[np.diag_indices(nb)] -= counts
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(pairs > 0, sums / pairs, np.nan)
    tally = np.zeros((nb, len(KINDS)), dtype=np.int64)
    np.add.at(tally, (block, view.kinds), 1)
    return means, tally.argmax(axis=1)


def matched_correlations(corr: np.ndarray, match: Match) -> dict[str, np.ndarray]:
    """Return the correlations of merged feature pairs: "cross" (A-B) and "within" (same model)."""
    return _arrange(np.asarray(corr), match)[4]
