"""The pre-flight's verdict on two model cards: what blocks a merge, and notes on what will
differ (docs/method.md secs. 4, 8).

Depth and width may differ (layer alignment pads the shallower model; elastic zip handles
widths), but everything that fixes what a feature or a token *means* must agree: family and
model type, vocabulary, head dimension, norm placement, activation, and the position and
token-type embedding tables (``sources.preflight`` reads the cards from the headers).
Different position-table sizes block the merge (decision): positional embeddings follow the
residual stream and are merged row by row, so each row must be the same position in both models;
truncating to the shorter table would silently change what the longer model accepts.
"""

from __future__ import annotations

from heterogui.models.bert import same_setting, split_hint
from heterogui.sources.preflight import (
    ROTARY_FAMILIES,
    VISION_FIELDS,
    ModelCard,
    Verdict,
    estimate_merge,
    statistics_allowance,
)
from heterogui.sources.vocab import token_difference, vocab_tokens


def _blocking(a: ModelCard, b: ModelCard) -> list[str]:
    """Return one sentence per property that must agree and does not."""
    return [
        *_type_reasons(a, b),
        *_attention_reasons(a, b),
        *_block_reasons(a, b),
        *_embedding_reasons(a, b),
    ]


def _type_reasons(a: ModelCard, b: ModelCard) -> list[str]:
    """Return the blockers of what a model is: its family and type, its vocabulary."""
    reasons = []
    if a.family != b.family or a.model_type != b.model_type:
        reasons.append(
            f"model families differ ({a.model_type} vs {b.model_type}): heterogui merges two "
            "models of the same family and type; pick two models of one architecture"
        )
    if a.vocab_size != b.vocab_size:
        tokens = vocab_tokens(a.path), vocab_tokens(b.path)
        if tokens[0] is not None and tokens[0] == tokens[1]:
            reasons.append(
                f"embedding tables differ ({a.vocab_size} vs {b.vocab_size} rows) though both "
                f"tokenizers have the same {len(tokens[0])} tokens: resize the smaller model's "
                f"embeddings (model.resize_token_embeddings({max(a.vocab_size, b.vocab_size)})) "
                "and save it again"
            )
            return reasons
        how = token_difference(*tokens) if all(t is not None for t in tokens) else None
        reasons.append(
            f"vocabularies differ ({a.vocab_size} vs {b.vocab_size} tokens"
            f"{'; tokenizers: ' + how if how else ''}): token ids would mean different things; "
            "use two models that share one tokenizer"
        )
    elif a.vocab_hash and b.vocab_hash and a.vocab_hash != b.vocab_hash:
        how = token_difference(vocab_tokens(a.path) or [], vocab_tokens(b.path) or [])
        reasons.append(
            f"vocabularies differ (tokenizers: {how}): token ids would mean different things; use "
            "two models that share one tokenizer"
        )
    return reasons


def _attention_reasons(a: ModelCard, b: ModelCard) -> list[str]:
    """Return the blockers of attention: key/value grouping, rotary settings, head dimension."""
    reasons = []
    if a.kv_heads and b.kv_heads and a.heads // a.kv_heads != b.heads // b.kv_heads:
        reasons.append(
            f"query heads per key/value head differ ({a.heads // a.kv_heads} vs "
            f"{b.heads // b.kv_heads}): a key/value head merges with its query heads, so both "
            "models need the same grouping"
        )
    if a.rope != b.rope:
        reasons.append(
            f"rotary position settings differ ({a.rope} vs {b.rope}): q/k features rotate by "
            "these frequencies; use models with the same rope settings"
        )
    if a.head_dim != b.head_dim:
        reasons.append(
            f"head dimensions differ ({a.head_dim} vs {b.head_dim}): attention heads are merged "
            "whole, so both models need the same "
            + (
                "head_dim (hidden_size / num_attention_heads where config.json sets none)"
                if a.family == "decoder"
                else "hidden_size / num_attention_heads"
            )
            + (split_hint(a.head_dim, b.head_dim) if a.family in ("bert", "vit") else "")
        )
    return reasons


def _block_reasons(a: ModelCard, b: ModelCard) -> list[str]:
    """Return the blockers of what a block computes: norm placement, activation."""
    reasons = []
    if a.norm != b.norm:
        reasons.append(
            f"normalisation placement differs ({a.norm}-norm vs {b.norm}-norm): blocks do not "
            "compute the same kind of function; pick models with the same block layout"
        )
    if a.activation != b.activation:
        reasons.append(
            f"activation functions differ ({a.activation} vs {b.activation}): merged neurons "
            "need one activation; pick models with the same hidden_act"
        )
    if None not in (a.norm_eps, b.norm_eps) and not same_setting(a.norm_eps, b.norm_eps):
        reasons.append(
            f"norm epsilons differ ({a.norm_eps} vs {b.norm_eps}): a merged norm runs with one; "
            "pick models with the same epsilon"
        )
    if a.biases != b.biases:
        reasons.append(
            f"bias settings differ ({a.biases} vs {b.biases}): a merged layer has biases or "
            "has none; pick models with the same attention_bias and mlp_bias"
        )
    if a.window != b.window:
        reasons.append(
            f"attention windows differ ({a.window} vs {b.window}): a merged layer attends over "
            "one window; pick models with the same sliding_window"
        )
    return reasons


def _embedding_reasons(a: ModelCard, b: ModelCard) -> list[str]:
    """Return the blockers of the input tables: positions, image patches, token types."""
    reasons = []
    if a.max_positions != b.max_positions and a.family not in ROTARY_FAMILIES:
        reasons.append(
            f"position embedding sizes differ ({a.max_positions} vs {b.max_positions} "
            "positions): positional rows are merged position by position; use models with the "
            "same max_position_embeddings (image_size / patch_size for ViT)"
        )
    for field, what in VISION_FIELDS.items():
        if getattr(a, field) != getattr(b, field):
            reasons.append(
                f"{what} differ ({getattr(a, field)} vs {getattr(b, field)}): patches and "
                f"channels are merged one to one; use two ViTs with the same {field}"
            )
    if a.type_vocab_size != b.type_vocab_size:
        reasons.append(
            f"token-type vocabularies differ ({a.type_vocab_size} vs {b.type_vocab_size}): use "
            "models with the same type_vocab_size"
        )
    return reasons


def check_pair(card_a: ModelCard, card_b: ModelCard) -> Verdict:
    """Decide whether two models can be merged, with a reason per blocker and notes otherwise."""
    reasons = _blocking(card_a, card_b)
    notes = []
    if card_a.depth != card_b.depth:
        notes.append(
            f"depths differ ({card_a.depth} vs {card_b.depth}): layer alignment will pad the "
            "shallower model with identity layers (exact: they compute its own function)"
        )
    for label, x, y in (
        ("hidden widths", card_a.hidden, card_b.hidden),
        ("head counts", card_a.heads, card_b.heads),
        ("intermediate widths", card_a.intermediate, card_b.intermediate),
    ):
        if x != y:
            notes.append(f"{label} differ ({x} vs {y}): elastic zip merges them to one width")
    cautions = []
    if card_a.norm == "unknown" and not reasons:
        cautions.append(
            f"norm placement of model type {card_a.model_type!r} is unknown to heterogui; the "
            "merge may fail in the adapter step"
        )
    if "null" not in (card_a.eos, card_b.eos) and card_a.eos != card_b.eos:
        cautions.append(
            f"end-of-sequence tokens differ ({card_a.eos} vs {card_b.eos}): the merge stops "
            "generating at A's (its generation_config is A's)"
        )
    if card_a.dtypes != card_b.dtypes:
        cautions.append(
            f"dtypes differ ({', '.join(card_a.dtypes)} vs {', '.join(card_b.dtypes)}): the "
            "merge runs in float32"
        )
    notes += cautions
    mem, statistics = None, 0
    if not reasons:
        shape = [
            {
                "depth": c.depth,
                "hidden": c.hidden,
                "intermediate": c.intermediate,
                "num_params": c.num_params,
            }
            for c in (card_a, card_b)
        ]
        mem, secs = estimate_merge(shape[0], shape[1], card_a.vocab_size, card_b.vocab_size)
        statistics = statistics_allowance(shape[0], shape[1])
        notes.append(
            f"estimate (rough, not measured): about {mem / 2**30:.2f} GiB of memory and "
            f"{secs:.0f} s on a CPU for the merge"
        )
    return Verdict(
        ok=not reasons,
        reasons=tuple(reasons),
        notes=tuple(notes),
        memory=mem,
        cautions=tuple(cautions),
        statistics=statistics,
    )
