"""BERT family: post-LayerNorm transformer encoders of any depth and width.

Padding and attention heads: docs/method.md secs. 5 and 8.

Blocks: the embeddings (word + position + token type, LayerNorm), one block per encoder layer,
and the head (mean or [CLS] pooling for an embedding model; pooler + classifier for a sequence
classifier). The state passed between blocks is the tuple (hidden (B, T, H), attention_mask
(B, T)); feature hooks see the hidden part. The first block takes the tokenizer's dict.

Spaces (tokens layout, every real token a sample):
- ``stream``: the residual stream, one transform for all its writers and readers (embeddings,
  every LayerNorm, the attention output and FFN output projections, every reader's input axis);
  observed after the embeddings, after each attention sub-layer and after each layer.
- ``layer{i}.qk``: the query/key features of layer i (one space: q·k must be preserved),
  ``layer{i}.vo``: its value features; both have ``head_dim`` and share the head group
  ``layer{i}.attn``, so heads are paired once for both (``heterogui.zip.heads``).
- ``layer{i}.ffn``: the intermediate (activation) features.

Widths may differ per layer (heads, intermediate size): merged layers whose inner spaces were
kept from one model (identity-padded slots) keep that model's width. A Hugging Face BertModel
needs one width for all layers; ``heterogui.export.hf`` pads with zero neurons / zero heads,
which is exact. Parameter names inside blocks are those of Hugging Face, so
``blocks.0.*`` <-> ``embeddings.*`` and ``blocks.{i+1}.*`` <-> ``encoder.layer.{i}.*``.

Identity layers (depth padding): post-LN blocks have no exact zero-branch identity; see
``heterogui.models.bert_identity`` for the construction and its measured deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from heterogui.models.bert_modules import (
    ACTIVATIONS,
    BertNet,
    ClassifierHead,
    Embeddings,
    Layer,
    PoolHead,
)
from heterogui.models.graph import (
    INPUT,
    LOGITS,
    STREAM,
    Capture,
    ModelGraph,
    Space,
    in_axis,
    norm_tags,
    out_axis,
    tag,
)

POOLER = "pooler"
IDENTITY_MODES = ("exact", "ls", "plain")


def check_layer_fields(config: Any) -> None:
    """Normalise and check the per-layer fields shared by the BERT and ViT configs (in place).

    Raises:
        ValueError: per-layer lists of different lengths, an unknown activation or pooling.
    """
    object.__setattr__(config, "heads", tuple(int(h) for h in config.heads))
    object.__setattr__(config, "intermediate", tuple(int(w) for w in config.intermediate))
    if len(config.heads) != len(config.intermediate):
        raise ValueError("heads and intermediate need one entry per layer")
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(f"hidden_act {config.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")
    if config.pooling not in ("mean", "cls"):
        raise ValueError(f'pooling must be "mean" or "cls", got {config.pooling!r}')


@dataclass(frozen=True)
class BertNetConfig:
    """A BERT encoder with per-layer head counts and intermediate sizes.

    heads / intermediate: one entry per layer. num_labels: None for an embedding model (the head
    pools token states: ``pooling`` "mean" or "cls"), else the classifier's output count.
    identity: how identity layers inserted by depth padding are built ("exact", "ls", "plain";
    see ``heterogui.models.bert_identity``).
    """

    vocab_size: int
    max_positions: int
    type_vocab_size: int
    hidden: int
    head_dim: int
    heads: tuple[int, ...]
    intermediate: tuple[int, ...]
    num_labels: int | None = None
    pooling: str = "mean"
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    identity: str = "exact"

    def __post_init__(self) -> None:
        check_layer_fields(self)
        if self.identity not in IDENTITY_MODES:
            raise ValueError(f"identity must be one of {IDENTITY_MODES}, got {self.identity!r}")

    @property
    def num_layers(self) -> int:
        """Return the number of encoder layers."""
        return len(self.heads)

    @property
    def num_classes(self) -> int:
        """Return the head's output width: labels, or the hidden width of an embedding."""
        return self.num_labels if self.num_labels is not None else self.hidden


def build(config: BertNetConfig) -> BertNet:
    """Return a freshly initialised network for ``config``."""
    blocks: list[nn.Module] = [Embeddings(config)]
    blocks += [Layer(config, h, w) for h, w in zip(config.heads, config.intermediate, strict=True)]
    if config.num_labels is None:
        blocks.append(PoolHead(config.pooling))
    else:
        blocks.append(ClassifierHead(config.hidden, config.num_labels))
    return BertNet(blocks)


def space_names(layer: int) -> tuple[str, str, str]:
    """Return the (qk, vo, ffn) space names of encoder layer ``layer`` (0-based)."""
    return f"layer{layer}.qk", f"layer{layer}.vo", f"layer{layer}.ffn"


@dataclass(frozen=True)
class LayerNames:
    """Submodule names (inside a layer block) that describe a transformer layer's spaces.

    Shared by the BERT (post-LN) and ViT (pre-LN) families: the spaces and tags of a layer are
    the same, only the names differ. norms: the layer's two LayerNorms (on the stream);
    stream_mid: the module whose output is the stream after the attention sub-layer.
    """

    query: str
    key: str
    value: str
    attn_out: str
    ffn_in: str
    ffn_act: str
    ffn_out: str
    norms: tuple[str, str]
    stream_mid: str


BERT_NAMES = LayerNames(
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "intermediate.act",
    "output.dense",
    ("attention.output.LayerNorm", "output.LayerNorm"),
    "attention.output.LayerNorm",
)


def layer_tensors(k: int, names: LayerNames, qk: str, vo: str, ffn: str) -> list:
    """Return the tensor tags of the transformer layer in block ``k``."""
    p = f"blocks.{k}"
    tensors = []
    for proj, space in ((names.query, qk), (names.key, qk), (names.value, vo)):
        tensors.append(tag(f"{p}.{proj}.weight", k, out_axis(space), in_axis(STREAM)))
        tensors.append(tag(f"{p}.{proj}.bias", k, out_axis(space)))
    for dense, inner in ((names.attn_out, vo), (names.ffn_out, ffn)):
        tensors.append(tag(f"{p}.{dense}.weight", k, out_axis(STREAM), in_axis(inner)))
        tensors.append(tag(f"{p}.{dense}.bias", k, out_axis(STREAM)))
    for norm in names.norms:
        tensors += norm_tags(f"{p}.{norm}", k, STREAM, batch_norm=False)
    tensors.append(tag(f"{p}.{names.ffn_in}.weight", k, out_axis(ffn), in_axis(STREAM)))
    tensors.append(tag(f"{p}.{names.ffn_in}.bias", k, out_axis(ffn)))
    return tensors


def layer_spaces(
    config: Any, i: int, names: LayerNames, layout: str = "tokens"
) -> tuple[dict[str, Space], list[Capture], list]:
    """Return (inner spaces, stream captures, tensor tags) of encoder layer i (block i + 1).

    config: any config with ``head_dim``, ``heads`` and ``intermediate`` per layer.
    """
    k, (qk, vo, ffn) = i + 1, space_names(i)
    p, width = f"blocks.{k}", config.heads[i] * config.head_dim
    attn = dict(head_dim=config.head_dim, group=f"layer{i}.attn")
    caps_qk = (Capture(f"{p}.{names.query}", layout, k), Capture(f"{p}.{names.key}", layout, k))
    spaces = {
        qk: Space(qk, width, caps_qk, **attn),
        vo: Space(
            vo, width, (Capture(f"{p}.{names.value}", layout, k, f"{p}.{names.value}"),), **attn
        ),
        ffn: Space(ffn, config.intermediate[i], (Capture(f"{p}.{names.ffn_act}", layout, k),)),
    }
    # post-LN (the stream after the attention sub-layer is a norm's output): both stream
    # outputs of the layer come out of its norms; pre-LN: they are residual sums
    post_norm = names.stream_mid == names.norms[0]
    mid, out = (f"{p}.{n}" for n in names.norms) if post_norm else (None, None)
    stream = [Capture(f"{p}.{names.stream_mid}", layout, k, mid), Capture(p, layout, k, out)]
    return spaces, stream, layer_tensors(k, names, qk, vo, ffn)


def graph(config: BertNetConfig, identity_blocks: frozenset[int] = frozenset()) -> ModelGraph:
    """Describe the spaces and tensors; identity layers' qk, vo and ffn spaces are dead."""
    layout, n = "tokens", config.num_layers
    spaces = {INPUT: Space(INPUT, config.vocab_size), LOGITS: Space(LOGITS, config.num_classes)}
    stream_caps = [Capture("blocks.0", layout, 0, "blocks.0.LayerNorm")]
    tensors = [
        tag(f"blocks.0.{name}.weight", 0, out_axis(STREAM, 1))
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")
    ]
    tensors += norm_tags("blocks.0.LayerNorm", 0, STREAM, batch_norm=False)
    dead = set()
    for i in range(n):
        inner, stream, layer = layer_spaces(config, i, BERT_NAMES, layout)
        spaces.update(inner)
        stream_caps += stream
        tensors += layer
        if i + 1 in identity_blocks:
            dead |= set(inner)
    spaces[STREAM] = Space(STREAM, config.hidden, tuple(stream_caps))
    head = n + 1
    if config.num_labels is not None:
        spaces[POOLER] = Space(POOLER, config.hidden)
        tensors += [
            tag(f"blocks.{head}.pooler.dense.weight", head, out_axis(POOLER), in_axis(STREAM)),
            tag(f"blocks.{head}.pooler.dense.bias", head, out_axis(POOLER)),
            tag(f"blocks.{head}.classifier.weight", head, out_axis(LOGITS), in_axis(POOLER)),
            tag(f"blocks.{head}.classifier.bias", head, out_axis(LOGITS)),
        ]
    block_out = (STREAM,) * (n + 1) + (None,)
    return ModelGraph(spaces, tuple(tensors), (tuple(range(1, n + 1)),), block_out, frozenset(dead))


def insert_identity(config: BertNetConfig, stage: int, position: int) -> BertNetConfig:
    """Return the config with an identity layer at ``position`` (>= 1) of the one stage.

    The new layer copies its predecessor's widths (its inner spaces are dead, so any width
    would do; equal widths keep a merged model uniform).
    """
    heads, inter = list(config.heads), list(config.intermediate)
    heads.insert(position, heads[position - 1])
    inter.insert(position, inter[position - 1])
    return replace(config, heads=tuple(heads), intermediate=tuple(inter))


def init_identity(block: nn.Module) -> None:
    """Zero a fresh layer's residual branches and reset its LayerNorms (data-free part).

    The layer then computes LN2(LN1(x)) = normalise(x): the "plain" identity. The exact and
    least-squares constructions (``bert_identity.fit_identity``) build on this.
    """
    with torch.no_grad():
        for dense in (block.attention.output.dense, block.output.dense):
            dense.weight.zero_()
            dense.bias.zero_()
        for norm in (block.attention.output.LayerNorm, block.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()


def layer_widths(config: Any, widths: dict[str, int]) -> dict[str, Any]:
    """Return the resized per-layer fields (hidden, heads, intermediate) of a transformer config.

    config: any config with ``hidden``, ``head_dim`` and per-layer ``heads`` / ``intermediate``
    (BERT, ViT, GPT-2).

    Raises:
        ValueError: a layer's qk and vo widths differ or are not whole heads.
    """
    heads, inter = list(config.heads), list(config.intermediate)
    for i in range(config.num_layers):
        qk, vo, ffn = space_names(i)
        w_qk = widths.get(qk, heads[i] * config.head_dim)
        w_vo = widths.get(vo, heads[i] * config.head_dim)
        if w_qk != w_vo or w_qk % config.head_dim:
            raise ValueError(
                f"layer {i}: q/k width {w_qk} and v/o width {w_vo} must be equal whole heads of "
                f"{config.head_dim}"
            )
        heads[i] = w_qk // config.head_dim
        inter[i] = widths.get(ffn, inter[i])
    hidden = widths.get(STREAM, config.hidden)
    return {"hidden": hidden, "heads": tuple(heads), "intermediate": tuple(inter)}


def resize(config: BertNetConfig, widths: dict[str, int]) -> BertNetConfig:
    """Return the config with the widths of the given spaces replaced.

    Raises:
        ValueError: a layer's qk and vo widths differ or are not whole heads.
    """
    labels = config.num_labels
    return replace(
        config,
        **layer_widths(config, widths),
        num_labels=labels if labels is None else widths.get(LOGITS, labels),
    )


SHARED_FIELDS = (
    ("vocab_size", "vocabulary sizes"),
    ("max_positions", "position table sizes"),
    ("type_vocab_size", "token-type vocabularies"),
    ("head_dim", "head dimensions"),
    ("hidden_act", "activations"),
    ("layer_norm_eps", "LayerNorm epsilons"),
)


def differing_fields(
    config_a: Any, config_b: Any, fields: tuple[tuple[str, str], ...], family: str
) -> list[str]:
    """Return one sentence per (field, description) whose values differ between the configs."""
    reasons = []
    for field, what in fields:
        va, vb = getattr(config_a, field), getattr(config_b, field)
        if not same_setting(va, vb):
            reasons.append(
                f"{what} differ ({va} vs {vb}): both {family} models need the same {field}"
            )
    return reasons


def same_setting(a: Any, b: Any) -> bool:
    """Return whether two config values agree (floats to float32 rounding: a config.json may
    hold 1e-12 as 9.999999960041972e-13)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def split_hint(head_dim_a: int, head_dim_b: int) -> str:
    """Return how to fix differing head sizes when one is half the other, else "".

    A merge made with zip.heads split (the ViT default, ``fusion.split_heads``) has heads of
    half its models' size, so it cannot pair with a model of their size.
    """
    small, large = sorted((head_dim_a, head_dim_b))
    if small == large or large // 2 != small:
        return ""
    return (
        " (a merge made with zip.heads split has heads of half its models' size: to merge it "
        "again, make it with zip.heads: pair)"
    )


def check_layer_pair(
    config_a: Any, config_b: Any, fields: tuple[tuple[str, str], ...], family: str
) -> list[str]:
    """Return ``differing_fields`` of two encoders whose heads a split may have halved."""
    reasons = differing_fields(config_a, config_b, fields, family)
    hint = split_hint(config_a.head_dim, config_b.head_dim)
    return [r + hint if r.startswith("head dimensions") else r for r in reasons]


def check_pair(config_a: BertNetConfig, config_b: BertNetConfig) -> list[str]:
    """Return one sentence per property two BERT configs must share and do not."""
    return check_layer_pair(config_a, config_b, SHARED_FIELDS, "BERT")
