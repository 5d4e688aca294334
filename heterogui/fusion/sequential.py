"""Sequential least-squares fusion: refit each reader on the merged model's own inputs.

One-shot least-squares fusion (``fusion.regression``) regresses the parents' features on
``z = M x``, the merged features the merge *would* see if every earlier layer were exact. The
sequential variant refits each weight that reads a merge point on the inputs it really gets in
the merged model: the trunk runs block by block (A, B (and any further models of an N-way zip)
and the merge in lockstep, on their stored states between blocks); in block k it records, at
the input of every reader, the parents' features x = [x_A ; x_B ; ...] and the merged model's
z, refits the reader as

    W* = Σ_m M_out W_m Ũ_m,   Ũ = (Σ_xz + λ U)(Σ_zz + λ I)⁻¹   (b* = Σ_m M_out (b_m + W_m c_m))

and passes the refitted block's output on (BatchNorm models: the merged model's BatchNorm is
re-estimated after each block). A reader of a convolution treats every position as a sample,
as the one-shot fit does. Attention output projections keep the one-shot fit (their input is
the attention-weighted values).

The tails (each model's own blocks after the stop point: its classifier head) read the stop
point through their unmerge U_m; once the merged model is finished (refit, split, BatchNorm
re-estimated), ``refit_tails`` refits those U_m the same way, on the merged model's own state
at the stop point against each parent's state there (through the origin, as they read it; on
the rows each tail reads: a [CLS] head its first token, a global-average-pool head the mean of
the positions, every other tail every token or position).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import partial

import torch
from torch import nn

from heterogui.distributed import all_reduce_sum_
from heterogui.fusion.bn import has_batch_norm, reestimate_batch_norm
from heterogui.fusion.bn_units import UnitLayer, in_parent_units
from heterogui.fusion.fuse import (
    SpaceTransform,
    fuse_tensor,
    intercept,
    intercept_reader,
    regression_reader,
)
from heterogui.fusion.merged import MergedModel, unmerge_name
from heterogui.fusion.regression import Regression, per_model, solve_regression
from heterogui.fusion.renormalize import merged_name
from heterogui.memo import ObjectMemo
from heterogui.models.capture import (
    Batch,
    capture_inputs,
    first_block_input,
    to_device,
    to_rows,
    token_mask,
)
from heterogui.models.family import Network
from heterogui.models.graph import TensorTag
from heterogui.models.lengths import by_length
from heterogui.zip.match import Match


class _Joint:
    """Sums of x (O), z (r), x zᵀ and z zᵀ over rows, float64."""

    def __init__(self) -> None:
        self.parts: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, x: torch.Tensor, z: torch.Tensor) -> None:
        x, z = x.to(torch.float64), z.to(torch.float64)
        new = {"x": x.sum(0), "z": z.sum(0), "xz": x.T @ z, "zz": z.T @ z}
        for key, value in new.items():
            self.parts[key] = value if key not in self.parts else self.parts[key] + value
        self.count += x.shape[0]

    def fit(self, prior: torch.Tensor, ridge: float, centred: bool) -> tuple[torch.Tensor, ...]:
        """Return (Ũ, offset): the regression of x on z, ridge towards ``prior`` (O, r)."""
        count = torch.tensor([float(self.count)], dtype=torch.float64)
        for value in self.parts.values():
            all_reduce_sum_(value)  # the whole data's sums under torchrun
        n = float(all_reduce_sum_(count).item())
        mean_x, mean_z = self.parts["x"] / n, self.parts["z"] / n
        xz, zz = self.parts["xz"] / n, self.parts["zz"] / n
        if centred:
            xz, zz = xz - torch.outer(mean_x, mean_z), zz - torch.outer(mean_z, mean_z)
        u = solve_regression(xz, zz, ridge, prior)
        return u, (mean_x - u @ mean_z if centred else torch.zeros_like(mean_x))

    def regression(
        self, prior: torch.Tensor, match: Match, ridge: float, centred: bool
    ) -> Regression:
        """Return the regression of x on z (ridge towards ``prior``; cut per model of ``match``)."""
        u, offset = self.fit(prior, ridge, centred)
        parts = per_model(u, match)
        return Regression(parts, per_model(offset, match), parts)


def sequential_readers(
    tags: Iterable[TensorTag], transforms: Mapping[str, SpaceTransform], stop: int
) -> list[TensorTag]:
    """Return the trunk weights to refit: linear layers and convolutions reading a regression."""
    return [t for t in tags if t.block < stop and regression_reader(t, transforms)]


@torch.no_grad()
def refit_sequentially(
    model: nn.Module,
    nets: Sequence[Network],
    parents: Sequence[Mapping[str, torch.Tensor]],
    transforms: Mapping[str, SpaceTransform],
    batches: Iterable[Batch],
    device: torch.device | str,
    stop: int,
    ridge: float,
    pinned: Mapping[str, torch.Tensor],
    units: Sequence[UnitLayer] = (),
    reweigh: Callable[[Collection[str]], None] | None = None,
) -> int:
    """Refit the merged model's readers block by block in place; return how many were refit.

    model: the merged model of the padded ``nets`` (A, B, ...), fused with least squares
    (``transforms`` hold the one-shot regressions; they decide which weights are readers);
    parents: their state dicts as fused (``fusion.bn_units.fusion_states``), which the refit
    reads the weights of; the nets run as they are.
    A BatchNorm merge re-estimates its BatchNorm first and after every block's refit (pinned:
    the channels that keep theirs, ``fusion.pinning``); units: the layers the fusion rescaled
    to BatchNorm units (``fusion.bn_units``; none: the weights as trained), put back in their
    parents' units while the BatchNorm is re-estimated (``in_parent_units``); reweigh: with
    weighted norms (``fusion.norm_weights``, applied before the refit), what weighs again the
    merged tensors of the names it is given that write the stream: each refit fits the
    parents' stream as the paper's merge averages it, which the refit writer then scales to
    the weighted basis the merge's norms read.
    """
    graph = nets[0].graph()
    readers = sequential_readers(graph.tensors, transforms, stop)
    if not readers:
        return 0
    given = batches
    batches = by_length(batches)  # regressions on sums over tokens: any grouping, less padding
    bn = has_batch_norm(model)
    reestimate = partial(_reestimate, model, batches, device, pinned, units, transforms)
    if bn:
        reestimate()
    moved = [to_device(batch, device) for batch in batches]
    states = [[first_block_input(net.module, batch) for batch in moved] for net in nets]
    states.append([model.in_own_dtype(batch) for batch in moved])  # the merged model's, last
    masks = [token_mask(batch) for batch in moved]
    trunk = [list(net.module.blocks) for net in nets] + [list(model.trunk)]
    tags = {t.name: t for t in graph.tensors}
    last = max(t.block for t in readers)
    model.eval()
    for k in range(last + 1):
        here = [t for t in readers if t.block == k]
        if here:
            _refit_block(model, trunk, k, here, states, masks, parents, transforms, ridge, tags)
            if reweigh is not None:
                reweigh({n for t in here for n in (t.name, intercept_reader(t, tags, transforms))})
            if bn:
                reestimate()
        if k < last:
            states = [[trunk[i][k](s) for s in states[i]] for i in range(len(trunk))]
    _keep_parent_rows(model, nets, given, batches, moved, device, stop, states[:-1], last)
    return len(readers)


def _reestimate(model, batches, device, pinned, units, transforms) -> None:
    """Re-estimate the merged model's BatchNorm on ``batches`` as its parents' was (in their
    units, ``in_parent_units``); the model stays in the fusion's units."""
    with in_parent_units(model, units, transforms):
        reestimate_batch_norm(model, batches, device, pinned)


def _keep_parent_rows(model, nets, given, ordered, moved, device, stop, states, last) -> None:
    """Run the parents on from their inputs of block ``last`` to the stop point and keep the rows
    their tails read there (``parent_rows``' entry), so ``refit_tails`` does not run them again
    from the start: the same blocks on the same states, so the same rows.

    ordered / moved: ``given`` regrouped by length (``by_length``), and on ``device``.
    """
    layout = model.spec.layout
    if layout is None or not isinstance(given, list):  # nothing merged, or nothing to key on
        return
    reads = tuple(tail_reads(tail[0], layout) for tail in model.tails)

    def compute() -> tuple[tuple[object, ...], list[Batch], list[list[torch.Tensor]]]:
        at_stop = [[net.module.run(s, last, stop) for s in states[i]] for i, net in enumerate(nets)]
        rows = [
            _rows_read([theirs[b] for theirs in at_stop], batch, layout, reads)
            for b, batch in enumerate(moved)
        ]
        return (tuple(nets[1:]), given), ordered, rows

    key = _rows_key(nets, given, device, stop, layout, reads)
    _PARENT_ROWS.get(nets[0], key, compute)  # kept already after a first merge: nothing runs


def _refit_block(model, trunk, k, readers, states, masks, parents, transforms, ridge, tags) -> None:
    """Record the readers' inputs in block k of the models and the merge; refit each reader."""
    modules = [t.name[: -len(".weight")] for t in readers]
    local = [m[len(f"blocks.{k}.") :] for m in modules]
    joints = {m: _Joint() for m in modules}
    for b, mask in enumerate(masks):
        found = []
        for i in range(len(trunk)):
            with capture_inputs(trunk[i][k], local) as seen:
                trunk[i][k](states[i][b])
            found.append(seen)
        for module, name in zip(modules, local, strict=True):
            kind = trunk[-1][k].get_submodule(name)
            rows = [_rows(kind, f[name], mask) for f in found]
            joints[module].add(torch.cat(rows[:-1], dim=1), rows[-1])
    params = dict(model.named_parameters())
    for tag, module in zip(readers, modules, strict=True):
        read = regression_reader(tag, transforms)
        bias = intercept_reader(tag, tags, transforms)
        match = transforms[read].match
        prior = match.unmerge(torch.float64, joints[module].parts["xz"].device)
        reg = joints[module].regression(prior, match, ridge, centred=bias is not None)
        local_transforms = dict(transforms)
        local_transforms[read] = SpaceTransform(
            None, None, transforms[read].match, transforms[read].dtype, transforms[read].device, reg
        )
        weights = [parent[tag.name] for parent in parents]
        weight = fuse_tensor(tag, weights, local_transforms, centred=bias is not None)
        params[merged_name(tag.name)].copy_(weight)
        if bias is not None:
            fused = fuse_tensor(tags[bias], [parent[bias] for parent in parents], transforms)
            params[merged_name(bias)].copy_(fused + intercept(tag, weights, local_transforms))


def _rows(module: nn.Module, inputs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Return a reader's inputs as samples x features (a convolution: every position a sample)."""
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return to_rows(inputs, "channels")
    if inputs.dim() == 3:
        return to_rows(inputs, "tokens", mask)
    return to_rows(inputs, "flat")


@torch.no_grad()
def refit_tails(
    model: MergedModel,
    nets: Sequence[Network],
    batches: Iterable[Batch],
    device: torch.device | str,
    ridge: float,
) -> bool:
    """Refit the unmerges the tails read the stop point through, in place; False: none.

    Per model m, U_m = (Σ_xz + λ U₀)(Σ_zz + λ I)⁻¹ over the calibration rows the tail reads,
    with x the parent's state at the stop point (the padded ``nets`` run up to it), z the
    merged model's (``model.features``) and U₀ its unmerge as built; second moments through
    the origin, as the tail reads x_m = U_m z. The rows are those the tail's first block reads
    (``tail_reads``): the first token of a [CLS] head, the mean of the positions of a
    global-average-pool head (the fit then weighs what the classifier sees, one row an input),
    every token or position otherwise.
    """
    stop, layout = model.spec.stop, model.spec.layout  # the stop point's feature layout
    if layout is None:  # nothing merged: the tails read the models' own inputs
        return False
    reads = tuple(tail_reads(tail[0], layout) for tail in model.tails)
    ordered, parents = parent_rows(nets, batches, device, stop, layout, reads)
    joints = [_Joint() for _ in nets]
    model.eval()
    for batch, theirs in zip(ordered, parents, strict=True):
        moved = to_device(batch, device)
        rows = partial(_tail_rows, layout=layout, mask=token_mask(moved))
        merged = _features_of(model.features(moved))
        merged_rows = {kind: rows(merged, kind) for kind in set(reads)}
        for joint, kind, x in zip(joints, reads, theirs, strict=True):
            joint.add(x, merged_rows[kind])
    for m, (joint, built) in enumerate(zip(joints, model.unmerge_matrices(), strict=True)):
        u, _ = joint.fit(built.to(torch.float64), ridge, centred=False)
        buffer = getattr(model, unmerge_name(m))
        buffer.copy_(u.to(buffer.device, buffer.dtype))
    return True


# each model's rows at the stop point per calibration batch (``parent_rows``): they do not
# depend on the merge, so a re-merge from the same statistics runs only the merged model
_PARENT_ROWS = ObjectMemo(limit=8)


def parent_rows(
    nets: Sequence[Network],
    batches: Iterable[Batch],
    device: torch.device | str,
    stop: int,
    layout: str,
    reads: tuple[str, ...],
) -> tuple[list[Batch], list[list[torch.Tensor]]]:
    """Return (the batches regrouped by length, per batch of them each net's rows at the stop
    point as its tail reads them (``reads``), from ``nets`` run up to ``stop``).

    Kept while the padded A (``nets[0]``) lives, for the same other nets, batches (the same
    list object), device, stop and rows: the entry holds those objects, so an id in its key
    cannot be another object's; the merged model runs over the batches in the order returned.
    """

    def compute() -> tuple[tuple[object, ...], list[Batch], list[list[torch.Tensor]]]:
        ordered, out = by_length(batches), []
        for batch in ordered:
            moved = to_device(batch, device)
            states = [net.module.run(first_block_input(net.module, moved), 0, stop) for net in nets]
            out.append(_rows_read(states, moved, layout, reads))
        return (tuple(nets[1:]), batches), ordered, out

    if not isinstance(batches, list):  # a one-off iterable: nothing to key on
        return compute()[1:]
    key = _rows_key(nets, batches, device, stop, layout, reads)
    return _PARENT_ROWS.get(nets[0], key, compute)[1:]


def _rows_key(nets, batches, device, stop: int, layout: str, reads: tuple[str, ...]) -> tuple:
    """Return the key of ``parent_rows``' entry (with ``nets[0]`` as its owner)."""
    return (tuple(id(n) for n in nets[1:]), id(batches), str(device), stop, layout, reads)


def _rows_read(
    states: Sequence[object], batch: Batch, layout: str, reads: tuple[str, ...]
) -> list[torch.Tensor]:
    """Return each net's rows at the stop point as its tail reads them, from its state there on
    ``batch`` (on the device: its mask picks the real tokens)."""
    rows = partial(_tail_rows, layout=layout, mask=token_mask(batch))
    return [rows(_features_of(state), kind) for state, kind in zip(states, reads, strict=True)]


def tail_reads(first: nn.Module, layout: str) -> str:
    """Return which rows of the stop point a tail whose first block is ``first`` reads.

    "first": the first token only (a [CLS] head, ``reads_first_token``, token layouts);
    "mean": the mean of the positions only (a global average pool, ``reads_position_mean``,
    channel layouts); "all": every token or position.
    """
    if layout == "tokens" and getattr(first, "reads_first_token", False):
        return "first"
    if layout == "channels" and getattr(first, "reads_position_mean", False):
        return "mean"
    return "all"


def _tail_rows(
    feats: torch.Tensor, kind: str, layout: str, mask: torch.Tensor | None
) -> torch.Tensor:
    """Return a stop-point state as the rows a tail reads (``tail_reads``): one per input for
    "first" (its first token) and "mean" (its positions' mean), else every token or position."""
    if kind == "first":
        return feats[:, 0]
    if kind == "mean":
        return feats.flatten(2).mean(-1)
    return to_rows(feats, layout, mask)


def _features_of(state: object) -> torch.Tensor:
    """Return the features of a block state (a transformer's is (hidden, attention mask))."""
    return state[0] if isinstance(state, tuple) else state
