"""The feature pass: statistics of [f_A ; f_B] at every merge point (docs/method.md sec. 6)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence

import torch

from heterogui.align.similarity import SimilaritySums
from heterogui.distributed import all_reduce_moments, world_size
from heterogui.host_memory import release_freed_memory
from heterogui.models.capture import Batch, run_passes, to_rows, token_mask
from heterogui.models.family import Network
from heterogui.models.graph import INPUT, LOGITS, ModelGraph, unshared_spaces
from heterogui.models.lengths import by_length
from heterogui.zip.stats import FOLD_EVERY, Moments

# (space, block): the captures of a space inside one block share one accumulator (a residual
# stream is seen twice per transformer layer; pooling per block keeps what a stop point needs)
StatKey = tuple[str, int]


def capture_points(graph: ModelGraph) -> list[tuple[str, str, str, int]]:
    """Return (space, module, layout, block) for every capture of every mergeable space."""
    return [
        (name, cap.module, cap.layout, cap.block)
        for name, space in graph.spaces.items()
        if name not in (INPUT, LOGITS)
        for cap in space.captures
    ]


@torch.no_grad()
def collect_moments(
    nets: Sequence[Network],
    batches: Iterable[Batch],
    device: torch.device | str = "cpu",
    progress: Callable[[float], None] | None = None,
    spaces: Collection[str] | None = None,
    dtype: torch.dtype | None = None,
    compact: bool = True,
    points: Collection[StatKey] | None = None,
    regroup: bool = True,
) -> dict[StatKey, Moments]:
    """Run the models (same topology) on the batches and accumulate moments at every capture.

    nets: A and B, or more models (an N-way zip). Returns moments of the concatenated features
    (O = n_A + n_B + ...) per (space, block), pooled over the space's captures in that block;
    ``MomentSums`` says which points and what spaces, points, dtype and compact do. regroup:
    regroup token batches by length first (False: as given, as the one-pass analysis does).
    """
    sums = MomentSums(nets, spaces, dtype, points)
    batches = by_length(list(batches)) if regroup else list(batches)  # sums: any grouping
    modules = [net.module for net in nets]
    run_passes(modules, [sums.modules] * len(nets), batches, device, [sums.add], progress)
    return sums.result(compact)


@torch.no_grad()
def similarity_and_moments(
    nets: Sequence[Network],
    batches: Sequence[Batch],
    device: torch.device | str = "cpu",
    progress: Callable[[float], None] | None = None,
    measure: str = "outputs",
    reference: int = 0,
    layers: Sequence[list[str]] | None = None,
) -> tuple[list[torch.Tensor], dict[StatKey, Moments]]:
    """Return the layer CKA and the feature moments of ``nets`` from one pass.

    nets: the padded models. Returns the CKA of the reference's layers against each other
    model's, in order (``layer_similarities``), and the moments (``collect_moments``). One
    forward per model and batch feeds both: the batches as given, since minibatch CKA depends
    on their grouping; the moments, sums over tokens, differ from ``collect_moments``'s
    length-sorted batches by float rounding only (identical for inputs without padding).
    layers: per model, the modules whose outputs the CKA compares (``own_layers``: a padded
    model's own blocks); default: every block but the head (models nothing was inserted in).
    """
    order = [reference, *(k for k in range(len(nets)) if k != reference)]
    chosen = None if layers is None else [layers[k] for k in order]
    cka, moments = SimilaritySums([nets[k] for k in order], measure, chosen), MomentSums(nets)
    layers = dict(zip(order, cka.layers, strict=True))
    names = [[*layers[k], *moments.modules] for k in range(len(nets))]

    def add_cka(batch: Batch, outs: list[dict[str, torch.Tensor]]) -> None:
        cka.add(batch, [outs[k] for k in order])

    modules = [net.module for net in nets]
    run_passes(modules, names, list(batches), device, [add_cka, moments.add], progress)
    return cka.matrices(), moments.result()


class MomentSums:
    """The statistics of a feature pass: moments of [f_A ; f_B ; ...] at every merge point.

    Points: every (space, block) of a space that at least two models use (``shared_spaces``;
    only those in ``spaces`` when given: a pass over part of the merge points; only the
    (space, block) in ``points`` when given: what a realignment does not keep). dtype: cast the
    features to it first (float64: float64 products, to measure the float32 ones). ``add`` is
    a ``run_passes`` consumer; every model captures ``modules``.
    """

    def __init__(
        self,
        nets: Sequence[Network],
        spaces: Collection[str] | None = None,
        dtype: torch.dtype | None = None,
        points: Collection[StatKey] | None = None,
    ) -> None:
        graphs = [net.graph() for net in nets]
        shared = set(shared_spaces(graphs))
        self.captures = [
            p
            for p in capture_points(graphs[0])
            if p[0] in shared
            and (spaces is None or p[0] in spaces)
            and (points is None or (p[0], p[3]) in points)
        ]
        self.modules = sorted({module for _, module, _, _ in self.captures})
        self.dtype = dtype
        self.stats: dict[StatKey, Moments] = {}

    def add(self, batch: Batch, outs: list[dict[str, torch.Tensor]]) -> None:
        """Accumulate one batch's captured outputs (one dict per model)."""
        mask = token_mask(batch)
        for space, module, layout, block in self.captures:
            rows = [to_rows(out[module], layout, mask).to(self.dtype) for out in outs]
            key = (space, block)
            if key not in self.stats:
                width, split = sum(r.shape[1] for r in rows), rows[0].shape[1]
                # two models: the blocks below the diagonal are transposes, not computed (split)
                two = split if len(rows) == 2 else None
                self.stats[key] = Moments.empty(width, rows[0].device, two)
            if len(rows) == 2:
                self.stats[key].update_parts(*rows)
            else:
                self.stats[key].update(torch.cat(rows, dim=1))

    def result(self, compact: bool = True) -> dict[StatKey, Moments]:
        """Return the moments, summed over all processes (under torchrun).

        compact: keep each point's sums in the compact form (``Moments.compact``: float32
        correlations, half the memory); False keeps the float64 sums themselves.
        """
        alone = world_size() <= 1
        for moments in self.stats.values():
            if compact and alone:  # the float32 products become the correlations, in place
                moments.compact()
            else:
                moments.settle()  # fold the float32 products in and free their buffers
        all_reduce_moments(self.stats)  # the whole data's sums under torchrun
        if compact:
            for moments in self.stats.values():
                moments.compact()  # (after the sums are reduced, under torchrun)
        release_freed_memory()  # the batches' activations: back to the system, not the heap
        return self.stats


def shared_spaces(graphs: Sequence[ModelGraph]) -> list[str]:
    """Return the merge points whose statistics a feature pass collects, in capture order.

    A space dead in a model (an identity block's unused inner layer) has no use for that
    model's features; a space that fewer than two models use is never zipped (two models:
    the spaces dead in neither).
    """
    alone = unshared_spaces(graphs)
    return [
        n for n in dict.fromkeys(n for n, _, _, _ in capture_points(graphs[0])) if n not in alone
    ]


def statistics_bytes(
    graph_a: ModelGraph, graph_b: ModelGraph, space: str, batches: int | None = None
) -> int:
    """Return the bytes the statistics of ``space`` take while a pass of ``batches`` runs.

    Per block: the float32 products of the batches (4 bytes an element), which become the
    compact form in place (float32 correlations, three float64 vectors; ``Moments.compact``).
    A pass of more than FOLD_EVERY batches (or of an unknown number), or one under torchrun,
    folds them into float64 sums as well: 12 bytes an element (the sums and the products, then
    the sums and the correlations formed from them).
    """
    o = graph_a.spaces[space].width + graph_b.spaces[space].width
    blocks = {c.block for c in graph_a.spaces[space].captures}
    folds_in_pass = batches is None or batches > FOLD_EVERY or world_size() > 1
    return len(blocks) * (o * o * (12 if folds_in_pass else 4) + o * 8 * 3)


def pass_bytes(
    graph_a: ModelGraph, graph_b: ModelGraph, spaces: Sequence[str], batches: int | None = None
) -> int:
    """Return the most bytes of statistics one pass over ``spaces`` holds at once."""
    return sum(statistics_bytes(graph_a, graph_b, s, batches) for s in spaces)


def pooled_moments(
    stats: dict[StatKey, Moments], graph: ModelGraph, space: str, stop: int | None = None
) -> Moments:
    """Return the moments of ``space`` summed over its captures in blocks before ``stop``."""
    blocks = sorted(
        {c.block for c in graph.spaces[space].captures if stop is None or c.block < stop}
    )
    if not blocks:
        raise KeyError(f"space {space!r} has no capture before block {stop}")
    total = stats[(space, blocks[0])]
    for block in blocks[1:]:
        total = total + stats[(space, block)]
    return total
