"""Heads split: every attention head of both models kept, each at half its dimension.

``zip.heads: split`` (docs/method.md sec. 8). The head groups are matched with every head
kept side by side (no head of A averaged with one of B), the merge is fused and refit as
usual, and then every head of the merged trunk is cut to rank ``head_dim // 2`` by an exact
change of basis inside the head followed by dropping its weakest half:

- queries and keys: head h scores a query token x against a key token y by
  (W_q x + b_q)ᵀ (W_k y) (+ terms of x alone, which the softmax over keys ignores: the key
  bias is one of them, so it is folded away). The bilinear form [W_q b_q]ᵀ W_k has rank at most
  head_dim; its SVD gives new query and key rows that keep its ``rank`` largest singular
  values (the best rank-r form, by Eckart-Young), split evenly between the two sides. Queries
  are scaled by sqrt(rank / head_dim) so that attention's 1 / sqrt(head_dim) scaling, now of
  the smaller head, gives the same scores.
- values and output: the attention weights of a query sum to 1, so the value bias reaches
  the output as the constant O_h b_v, folded into the output projection's bias; the head then
  writes O_h W_v (a rank head_dim product), cut by its SVD the same way.

At ``rank == head_dim`` this is exact (the function is unchanged up to rounding); at half the
dimension an attention layer of two models with h heads each holds 2h heads of head_dim / 2:
the width of the paper's merge, with no attention pattern averaged away.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch

from heterogui.config import SPLIT_HEADS
from heterogui.errors import ConfigError
from heterogui.fusion.merged import MergedModel, MergedSpec, build_merged, load_merged
from heterogui.models.bert import LayerNames
from heterogui.models.family import Family
from heterogui.models.graph import ModelGraph


def split_rank(family: Family, config: Any, heads: str, models: int = 2) -> int | None:
    """Return the head dimension a merge with ``heads`` gives its heads (None: not split).

    family, config: model A's (the merged models share them); models: how many are merged.
    Models without attention (no ``head_dim``) have nothing to split: None, as for "pair".

    Raises:
        ConfigError: a split that this merge cannot do, with the fix.
    """
    if heads != SPLIT_HEADS or not hasattr(config, "head_dim"):
        return None  # no split asked, or no attention to split (as heads select does nothing)
    if family.attention_names is None:
        raise ConfigError(
            f"zip.heads split is for BERT, ViT and GPT-2 models, not {family.name} models "
            "(their attention has rotary positions); use heads pair"
        )
    if models != 2:
        raise ConfigError(
            f"zip.heads split keeps the heads of two models at half their size, not of "
            f"{models}; use heads pair for a merge of {models} models"
        )
    if config.head_dim < 2:
        raise ConfigError(
            f"zip.heads split halves the heads, but they have {config.head_dim} feature; "
            "use heads pair"
        )
    return config.head_dim // 2


def split_config(config: Any, rank: int) -> Any:
    """Return a transformer config whose heads (same counts) have ``rank`` features each."""
    return dataclasses.replace(config, head_dim=rank)


def split_widths(graph: ModelGraph, widths: Mapping[str, Any], rank: int | None) -> dict:
    """Return ``widths`` with every attention space's heads cut to ``rank`` features each.

    graph: the (padded) models' graph, whose attention spaces are whole heads of their
    ``head_dim``; widths: a count of features, or a tuple of counts, per space; rank None: no
    split, the widths as they are.
    """
    if rank is None:
        return dict(widths)
    out = {}
    for space, width in widths.items():
        head_dim = graph.spaces[space].head_dim
        cut = (lambda n, d=head_dim: n // d * rank) if head_dim else (lambda n: n)
        out[space] = tuple(map(cut, width)) if isinstance(width, tuple) else cut(width)
    return out


def split_heads(model: MergedModel, names: LayerNames, rank: int) -> MergedModel:
    """Return ``model`` with every head of its merged trunk cut to ``rank`` features.

    The tails (each model's blocks past the stop point) are kept as they are. A new model is
    built; ``model`` is left as it was.

    Raises:
        ValueError: rank outside 1..head_dim.
    """
    config = model.spec.trunk_config
    if not 1 <= rank <= config.head_dim:
        raise ValueError(f"rank {rank} is outside 1..{config.head_dim}")
    state = dict(model.state_dict())
    for i in range(config.num_layers):
        block = i + 1
        if block >= model.spec.stop:
            break
        prefix = f"trunk.{block}."
        layer = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        for key, value in split_layer(layer, names, config.heads[i], config.head_dim, rank).items():
            state[prefix + key] = value
    spec = dataclasses.replace(model.spec, trunk_config=split_config(config, rank))
    device = next(model.parameters()).device
    return load_merged(build_merged(spec, "meta"), state, device)


def split_layer(
    layer: dict[str, torch.Tensor], names: LayerNames, heads: int, head_dim: int, rank: int
) -> dict[str, torch.Tensor]:
    """Return the split attention tensors of one layer (its state, keys inside the layer)."""
    w = {k: layer[f"{n}.{k2}"].double() for k, n, k2 in _projections(names)}
    hidden = w["q"].shape[1]
    dtype = layer[f"{names.query}.weight"].dtype
    out = {k: [] for k in ("q", "q_bias", "k", "v", "o")}
    o_bias = w["o_bias"].clone()
    scale = math.sqrt(rank / head_dim)
    for h in range(heads):
        rows = slice(h * head_dim, (h + 1) * head_dim)
        query = torch.cat([w["q"][rows], w["q_bias"][rows, None]], dim=1)  # (d, H + 1)
        left, right = _low_rank(query.T, w["k"][rows].T, rank)  # form = left @ right.T
        out["q"].append(left.T[:, :hidden] * scale)
        out["q_bias"].append(left.T[:, hidden] * scale)
        out["k"].append(right.T)
        output = w["o"][:, rows]  # (H_out, d)
        o_bias += output @ w["v_bias"][rows]
        left, right = _low_rank(output, w["v"][rows].T, rank)  # O_h W_v = left @ right.T
        out["o"].append(left)
        out["v"].append(right.T)
    split = {
        f"{names.query}.weight": torch.cat(out["q"]),
        f"{names.query}.bias": torch.cat(out["q_bias"]),
        f"{names.key}.weight": torch.cat(out["k"]),
        f"{names.key}.bias": w["k_bias"].new_zeros(heads * rank),
        f"{names.value}.weight": torch.cat(out["v"]),
        f"{names.value}.bias": w["v_bias"].new_zeros(heads * rank),
        f"{names.attn_out}.weight": torch.cat(out["o"], dim=1),
        f"{names.attn_out}.bias": o_bias,
    }
    return {k: v.to(dtype).contiguous() for k, v in split.items()}


def _projections(names: LayerNames) -> tuple[tuple[str, str, str], ...]:
    """Return (short key, module, tensor) of the attention tensors a split reads."""
    return (
        ("q", names.query, "weight"),
        ("q_bias", names.query, "bias"),
        ("k", names.key, "weight"),
        ("k_bias", names.key, "bias"),
        ("v", names.value, "weight"),
        ("v_bias", names.value, "bias"),
        ("o", names.attn_out, "weight"),
        ("o_bias", names.attn_out, "bias"),
    )


def _low_rank(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (L, R) of ``rank`` columns with L Rᵀ the best rank-``rank`` form of A Bᵀ.

    a: (m, d), b: (n, d), d small: the SVD is taken of a (d, d) core (QR of both sides), and the
    singular values are split evenly, sqrt to each side.
    """
    qa, ra = torch.linalg.qr(a)
    qb, rb = torch.linalg.qr(b)
    u, s, vh = torch.linalg.svd(ra @ rb.T)
    root = s[:rank].sqrt()
    left, right = qa @ u[:, :rank] * root, qb @ vh[:rank].T * root
    short = rank - root.numel()  # a form of lower rank than asked (m or n below rank)
    if short:
        left = torch.cat([left, left.new_zeros(left.shape[0], short)], dim=1)
        right = torch.cat([right, right.new_zeros(right.shape[0], short)], dim=1)
    return left, right


__all__ = ["MergedSpec", "split_config", "split_heads", "split_rank", "split_widths"]
