"""Weighted RMSNorms: the merged stream's norms divide by the models' own scale
(docs/method.md sec. 9).

An RMSNorm divides by the root mean square of the features it reads. Model m's norms read its
n_m stream features; merged feature k stands for c_mk of them (its group's members from model
m, to each of which U_m copies it), so model m's mean square, seen through the merge, is
sum_k c_mk z_k² / n_m. A plain RMSNorm over the r merged features takes sum_k z_k² / r
instead: a feature kept from one model counts as much as one merged from both, and a wider
merge (rho below 1) changes every norm's scale. The merged norms should divide by the models'
average, sum_k w_k z_k² with w_k = mean_m c_mk / n_m.

Scaling the stream's basis by s_k = sqrt(r w_k) turns the plain mean square into that one:
every tensor that writes the stream (the embeddings' columns, o_proj's and down_proj's rows
and biases) is multiplied by s_k and every norm gain divided by it, so each norm's output is
what it was with the weighted mean square, and the exported model is a plain model of its
class. The merged trunk's output, when it is the stream rather than a norm's output (a
partial zip), is divided by s_k in the unmerge. A model merged with a permuted copy of itself
then computes its function at every rho (``tests/test_norm_weights.py``); with one feature of each
model in every group (rho 1, equal widths, no merge within a model) every s_k is exactly 1.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import torch

from heterogui.fusion.merged import MergedModel, unmerge_name
from heterogui.fusion.renormalize import merged_name
from heterogui.models.graph import ModelGraph
from heterogui.zip.match import Match


def stream_scales(match: Match) -> torch.Tensor:
    """Return s_k = sqrt(r w_k) of every merged feature, float64 (exactly 1 where w_k = 1/r).

    w_k = mean_m c_mk / n_m is formed over a common denominator in integers, so a group whose
    weight is exactly 1/r gets exactly 1.
    """
    sizes = match.sizes
    common = math.lcm(*sizes)
    weight = torch.zeros(match.width, dtype=torch.int64)
    for m, n in enumerate(sizes):
        groups = match.groups[match.rows_of(m)]
        counts = torch.bincount(groups[groups >= 0], minlength=match.width)
        weight += counts * (common // n)
    # s_k² = r · weight_k / (common · N): both integers
    return (match.width * weight).double().div(common * len(sizes)).sqrt()


def weighed_scales(graph: ModelGraph, matches: Mapping[str, Match]) -> torch.Tensor | None:
    """Return the stream's scales s_k that weighing applies, or None when it changes nothing
    (no RMSNorm stream among ``matches``, or every s_k is 1)."""
    stream = graph.rms_stream
    if stream is None or stream.space not in matches:
        return None
    scales = stream_scales(matches[stream.space])
    return None if bool((scales == 1).all()) else scales


@torch.no_grad()
def weigh_norms(
    model: MergedModel, graph: ModelGraph, matches: Mapping[str, Match], stop: int
) -> torch.Tensor | None:
    """Weigh the merged stream's RMSNorms in place (module docstring); return the scales s_k,
    or None when weighing changes nothing (``weighed_scales``)."""
    scales = weighed_scales(graph, matches)
    if scales is None:
        return None
    weigh_tensors(model, graph, scales, {t.name for t in graph.tensors if t.block < stop})
    if stop - 1 not in graph.rms_stream.normed_blocks:  # the tails read the scaled stream
        for m in range(len(model.tails)):
            unmerge = getattr(model, unmerge_name(m))
            unmerge.div_(scales.to(unmerge.dtype))
    return scales


@torch.no_grad()
def weigh_tensors(
    model: MergedModel, graph: ModelGraph, scales: torch.Tensor, names: Collection[str]
) -> None:
    """Weigh the merged tensors of ``names`` that write the stream (their rows times s_k) or
    hold its norms' gains (divided by s_k); leave the others. The sequential refit weighs each
    stream writer it fits again this way (``fusion.sequential``)."""
    stream = graph.rms_stream
    for tag in graph.tensors:
        axes = [a for a in tag.axes if a.space == stream.space and a.role == "out"]
        if tag.name not in names or not axes:
            continue
        param = model.get_parameter(merged_name(tag.name))
        shape = [1] * param.dim()
        shape[axes[0].dim] = -1
        factor = scales.to(param.dtype).reshape(shape)
        if tag.name in stream.gains:
            param.div_(factor)
        else:
            param.mul_(factor)
