"""Head search: which parent's head each merged head pair keeps, chosen on the calibration data.

docs/method.md sec. 8. ``zip.heads: select`` keeps each merged pair's head of larger output
energy, a rule read off the statistics. ``zip.heads: search`` starts from that choice and
improves it by greedy coordinate descent: it flips one pair's choice at a time (A's head for
B's or back), merges, and keeps the flip when the merge reproduces its parents better on the
calibration data; sweeps repeat until a sweep keeps no flip (at most ``SWEEPS``). The result is
a local optimum: no single flip lowers the divergence.

How well a merge reproduces its parents (``divergence``): for each model, its outputs against
the merge's output for it (the merge has one head per model), over the calibration batches.
Outputs that are logits (a classifier's, a language model's) compare by the KL divergence of the
parent's distribution to the merge's (per task head, per token); other outputs (an encoder's
embeddings) by their squared error relative to the parent's own spread. Padded token positions
do not count.

A search costs a merge and a forward of the merge over the calibration data per flip tried:
(pairs + 1) per sweep. The parents' outputs are computed once per prepared pair.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from heterogui.distributed import all_reduce_sum_
from heterogui.memo import ObjectMemo
from heterogui.models.capture import to_device
from heterogui.models.family import Network
from heterogui.models.graph import LOGITS, ModelGraph
from heterogui.prepared import MergeResult, Prepared
from heterogui.zip.plan import ZipSettings, head_group_firsts

SWEEPS = 3  # the most sweeps over every pair
# parents' outputs kept for a prepared pair when they fit (else recomputed for every flip)
KEEP_OUTPUTS_BYTES = 512 * 2**20

Merge = Callable[[Prepared, ZipSettings], MergeResult]
Choices = dict[str, tuple[int, ...]]

_PARENT_OUTPUTS = ObjectMemo()


def searched_groups(graph: ModelGraph, settings: ZipSettings) -> list[str]:
    """Return the head groups (their first spaces) whose heads knob is "search"."""
    return [f for f in head_group_firsts(graph) if settings.for_space(f)["heads"] == "search"]


def search_heads(
    prepared: Prepared,
    settings: ZipSettings,
    merge: Merge,
    progress: Callable[[float], None] | None = None,
) -> MergeResult:
    """Return the merge whose kept heads (``ZipSettings.kept_heads``) the search chose.

    merge: runs one merge of ``prepared`` with given settings (the pipeline's zip); the first
    has no kept heads, so its searched groups select by output energy.
    """
    report = progress or (lambda _f: None)
    start = time.perf_counter()
    graph = prepared.padded_a.graph()
    best = merge(prepared, settings)
    # a partial zip (a stop point) merges the head groups before it only: the others are
    # each model's own, with nothing to choose
    firsts = [f for f in searched_groups(graph, settings) if f in best.matches]
    choices = kept_choices(best, firsts)
    flips = [(f, u) for f in firsts for u, bit in enumerate(choices[f]) if bit >= 0]
    if not flips:
        return best
    targets = parent_outputs(prepared)
    lowest = divergence(best.model, prepared, targets)
    tried = 1
    for sweep in range(SWEEPS):
        changed = False
        for k, (first, unit) in enumerate(flips):
            report((sweep * len(flips) + k) / (SWEEPS * len(flips)))
            trial = dict(choices)
            bits = list(trial[first])
            bits[unit] = 1 - bits[unit]
            trial[first] = tuple(bits)
            result = merge(prepared, dataclasses.replace(settings, kept_heads=trial))
            value = divergence(result.model, prepared, targets)
            tried += 1
            if value < lowest:
                best, lowest, choices, changed = result, value, trial, True
        if not changed:
            break
    report(1.0)
    best.settings = dataclasses.replace(best.settings, kept_heads=choices)
    best.timings["search"] = time.perf_counter() - start
    best.searched = (tried, lowest)
    return best


def kept_choices(result: MergeResult, firsts: list[str]) -> Choices:
    """Return, per head group, which head each of A's units keeps in the merge ``result``.

    1: A's head, 0: B's head, -1: the unit is in no pair of A's and B's heads (kept alone,
    merged within A, or dropped): nothing to choose.
    """
    graph = result.prepared.padded_a.graph()
    choices: Choices = {}
    for first in firsts:
        match = result.matches[first]
        unit = graph.spaces[first].unit
        units = match.n_a // unit
        bits = [-1] * units
        if match.weights is not None:
            shared = match.shared_groups()
            for u in range(units):
                g = int(match.groups[u * unit])
                if g >= 0 and bool(shared[g]):
                    bits[u] = int(match.weights[u * unit] == 1)
        choices[first] = tuple(bits)
    return choices


def writes_logits(net: Network) -> bool:
    """Return whether ``net``'s output is logits (a classifier or language-model head)."""
    return any(a.space == LOGITS and a.role == "out" for t in net.graph().tensors for a in t.axes)


def parent_outputs(prepared: Prepared) -> list[tuple[torch.Tensor, ...]] | None:
    """Return A's and B's outputs on each calibration batch (None: too large to keep)."""

    def compute() -> list[tuple[torch.Tensor, ...]] | None:
        outputs, total = [], 0
        for batch in prepared.batches:
            outs = _parents_on(prepared, batch)
            total += sum(o.numel() * o.element_size() for o in outs)
            if total > KEEP_OUTPUTS_BYTES:
                return None
            outputs.append(outs)
        return outputs

    return _PARENT_OUTPUTS.get(prepared, "outputs", compute)


def _parents_on(prepared: Prepared, batch: Any) -> tuple[torch.Tensor, ...]:
    x = to_device(batch, prepared.device)
    with torch.no_grad():
        return tuple(net.module.eval()(x) for net in (prepared.net_a, prepared.net_b))


def divergence(
    model: torch.nn.Module,
    prepared: Prepared,
    targets: list[tuple[torch.Tensor, ...]] | None,
) -> float:
    """Return how far the merge's outputs are from its parents' on the calibration data.

    The sum over the models of the mean KL divergence (logits) or relative squared error
    (other outputs); see the module's docstring.
    """
    nets = (prepared.net_a, prepared.net_b)
    logits = [writes_logits(net) for net in nets]
    sums = [0.0, 0.0]
    weights = [0.0, 0.0]
    spreads = [0.0, 0.0]
    model.eval()
    for k, batch in enumerate(prepared.batches):
        x = to_device(batch, prepared.device)
        parents = targets[k] if targets is not None else _parents_on(prepared, batch)
        with torch.no_grad():
            outs = model(x)
        mask = _positions(batch, parents[0])
        for m, net in enumerate(nets):
            out, ref = outs[m].float(), parents[m].float()
            if logits[m]:
                value = _kl(ref, out, net)
            else:
                value = (out - ref).pow(2).sum(-1)
                spreads[m] += float(_weighted(ref.sub(ref.mean(0)).pow(2).sum(-1), mask))
            sums[m] += float(_weighted(value, mask))
            weights[m] += float(mask.sum()) if mask is not None else value.numel()
    # under torchrun each process holds its shard of the batches: the sums are added, so every
    # process scores the whole data and keeps the same flips (and the processes stay in step)
    summed = all_reduce_sum_(torch.tensor([*sums, *weights, *spreads], dtype=torch.float64))
    sums, weights, spreads = summed[:2].tolist(), summed[2:4].tolist(), summed[4:].tolist()
    total = 0.0
    for m in range(2):
        if logits[m]:
            total += sums[m] / max(weights[m], 1.0)
        else:
            total += sums[m] / max(spreads[m], 1e-30)
    return total


def _kl(ref: torch.Tensor, out: torch.Tensor, net: Network) -> torch.Tensor:
    """Return KL(parent || merge) per position, summed over the net's task heads."""
    sizes = [len(h.classes) for h in net.task_heads()]
    if sum(sizes) != ref.shape[-1]:
        sizes = [ref.shape[-1]]
    value = torch.zeros(ref.shape[:-1])
    for r, o in zip(torch.split(ref, sizes, -1), torch.split(out, sizes, -1), strict=True):
        p = F.log_softmax(r, -1)
        value += (p.exp() * (p - F.log_softmax(o, -1))).sum(-1).cpu()
    return value


def _positions(batch: Any, output: torch.Tensor) -> torch.Tensor | None:
    """Return the (B, T) mask of real tokens when ``output`` is per token, else None."""
    if not isinstance(batch, Mapping) or "attention_mask" not in batch or output.dim() < 3:
        return None
    mask = batch["attention_mask"]
    return mask.float() if tuple(mask.shape) == tuple(output.shape[:2]) else None


def _weighted(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    values = values.cpu()
    return values.sum() if mask is None else (values * mask.cpu()).sum()
