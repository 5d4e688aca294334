"""Header-only pre-flight: can two Hugging Face folders be merged, and what will it cost?

Reads config.json, the safetensors headers (8-byte little-endian length, then a JSON header) and,
for the vocabulary check only, vocab.txt or tokenizer.json. Never reads tensor data, never
imports torch, so it answers in milliseconds even for large checkpoints.

The rules follow the method (docs/method.md secs. 4, 8): depth and width may differ (layer alignment
pads the shallower model; elastic zip handles widths), but everything that fixes what a feature
or a token *means* must agree: family and model type, vocabulary, head dimension (heads are
merged whole), norm placement, activation, and the position / token-type embedding tables.
Different position-table sizes block the merge (decision): positional embeddings follow the
residual stream and are merged row by row, so each row must be the same position in both models;
truncating to the shorter table would silently change what the longer model accepts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heterogui.errors import ModelLoadError, excerpt
from heterogui.models.bert import split_hint
from heterogui.models.headers import read_safetensors_header
from heterogui.sources.vocab import token_difference, vocab_hash, vocab_tokens

# Families whose blocks apply LayerNorm after the residual add (post-norm) or before (pre-norm).
_FAMILY = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "electra": "bert",
    "distilbert": "bert",
    "mpnet": "bert",
    "albert": "bert",
    "vit": "vit",
    "deit": "vit",
    "dinov2": "vit",
    "llama": "decoder",
    "qwen2": "decoder",
    "mistral": "decoder",
    "gpt2": "gpt2",
}
_NORM = {"bert": "post", "vit": "pre", "gpt2": "pre", "decoder": "pre"}
# Families whose positions are rotary (computed, not a table): their table sizes may differ.
_ROTARY = {"decoder"}
_KEYS = {
    "depth": ("num_hidden_layers", "n_layers", "n_layer", "num_layers"),
    "hidden": ("hidden_size", "dim", "d_model", "n_embd"),
    "heads": ("num_attention_heads", "n_heads", "n_head", "num_heads"),
    "intermediate": ("intermediate_size", "hidden_dim", "ffn_dim", "n_inner", "d_ff"),
    "activation": ("hidden_act", "activation", "activation_function"),
}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
# Buffers saved beside parameters that `sum(p.numel() for p in model.parameters())` omits.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# Merge-time estimate (rough): calibration tokens per model, and sustained CPU throughput.
_CALIB_TOKENS = 256 * 128
# MiniLM-L6 forward passes ran at ~9e10 FLOP/s on 2 CPU cores; halved for hooks and statistics.
_FLOPS_PER_SECOND = 5e10

# Vision fields (ViT config.json) that two models must share; None for text models.
_VISION = {"image_size": "image sizes", "patch_size": "patch sizes", "num_channels": "channels"}


@dataclass(frozen=True)
class ModelCard:
    """What config.json and the safetensors headers say about one model folder.

    `est_merge_bytes` estimates peak memory to merge this model with one of its own size: the
    weights of A, B and the merged model in float32 (3 x 4 bytes per parameter) plus one float64
    covariance matrix O x O (O = 2 x width) per merge point, kept for re-merging (docs/method.md
    sec. 1): per layer the Q/K and V/O spaces (width) and the MLP (intermediate width), plus the
    residual stream once. `est_merge_seconds` is a rough CPU estimate, not a measurement: the
    forward FLOPs of both models on 256 x 128 calibration tokens (2 x non-embedding parameters per
    token) plus a naive zip (min(n_A, n_B) x O^2 per merge point), at 5e10 FLOP/s.
    """

    path: Path
    family: str
    model_type: str
    depth: int
    hidden: int
    heads: int
    head_dim: int
    intermediate: int
    vocab_size: int | None
    max_positions: int | None
    type_vocab_size: int | None
    norm: str
    activation: str
    num_params: int
    dtypes: tuple[str, ...]
    file_bytes: int
    est_merge_bytes: int
    est_merge_seconds: float
    vocab_hash: str | None = None
    kv_heads: int | None = None
    rope: str | None = None
    image_size: int | None = None
    patch_size: int | None = None
    num_channels: int | None = None


@dataclass(frozen=True)
class Verdict:
    """Whether two models can be merged: blocking `reasons` and non-blocking `notes`."""

    ok: bool
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _weight_files(folder: Path) -> list[Path]:
    """Return the safetensors files of a folder (single file or sharded with an index)."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return index_shards(index)
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ModelLoadError(
            f"{folder} has weights only as PyTorch pickles (.bin/.pt); the pre-flight reads "
            "safetensors headers only. Convert once: load the state dict with "
            "torch.load(path, weights_only=True) and write it with safetensors.torch.save_file, "
            "or save_pretrained(..., safe_serialization=True)"
        )
    raise ModelLoadError(
        f"{folder} has no model.safetensors; pass a folder that contains config.json and "
        "model.safetensors"
    )


_RESAVE = "re-save the model with save_pretrained(..., safe_serialization=True)"


def index_shards(index: Path) -> list[Path]:
    """Return the shard files a safetensors index names: files beside the index only.

    Raises:
        ModelLoadError: the index is not JSON, has no "weight_map" of tensor names to file
            names, or names a file outside its folder.
    """
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(
            f"{index} is not a valid safetensors index ({excerpt(exc, 120)}); {_RESAVE}"
        ) from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelLoadError(
            f'{index} is not a valid safetensors index: it needs a "weight_map" of tensor names '
            f"to shard file names; {_RESAVE}"
        )
    shards = sorted(set(weight_map.values()))
    outside = [s for s in shards if Path(s).name != s or s in ("", ".", "..")]
    if outside:
        raise ModelLoadError(
            f"{index} names the shard {excerpt(outside[0], 80)!r}, which is not a file beside "
            f"the index: every shard must lie in the model's folder; {_RESAVE}"
        )
    return [index.parent / name for name in shards]


def _pick(config: dict[str, Any], field: str, folder: Path) -> Any:
    for key in _KEYS[field]:
        if config.get(key) is not None:
            return config[key]
    raise ModelLoadError(
        f"config.json in {folder} has no {' / '.join(_KEYS[field])}; the pre-flight supports "
        "transformer configs (BERT family, ViT ...)"
    )


def _positions(config: dict[str, Any]) -> int | None:
    if config.get("max_position_embeddings") is not None:
        return int(config["max_position_embeddings"])
    if config.get("image_size") and config.get("patch_size"):
        return (int(config["image_size"]) // int(config["patch_size"])) ** 2 + 1  # + [CLS]
    return None


def inspect_model(path: str | Path) -> ModelCard:
    """Describe a local Hugging Face folder from config.json and safetensors headers only.

    Raises:
        ModelLoadError: the folder or config.json is missing or unreadable, weights are not in
            safetensors, or a safetensors header is corrupt.
    """
    folder = Path(path).expanduser()
    config = _read_config(folder)
    files = _weight_files(folder)
    num_params, dtypes = _float_parameters(files)
    model_type = str(config.get("model_type", "unknown"))
    family = _FAMILY.get(model_type, model_type)
    hidden, heads = int(_pick(config, "hidden", folder)), int(_pick(config, "heads", folder))
    depth = int(_pick(config, "depth", folder))
    inter = _intermediate(config, family, hidden, folder)
    shape = {"depth": depth, "hidden": hidden, "intermediate": inter, "num_params": num_params}
    mem, secs = estimate_merge(shape, shape, config.get("vocab_size"), config.get("vocab_size"))
    return ModelCard(
        path=folder,
        family=family,
        model_type=model_type,
        depth=depth,
        hidden=hidden,
        heads=heads,
        head_dim=int(config.get("head_dim") or hidden // heads),
        intermediate=inter,
        vocab_size=int(config["vocab_size"]) if config.get("vocab_size") is not None else None,
        max_positions=_positions(config),
        type_vocab_size=config.get("type_vocab_size"),
        norm=_NORM.get(family, "unknown"),
        activation=str(_pick(config, "activation", folder)),
        num_params=num_params,
        dtypes=tuple(sorted(dtypes)),
        file_bytes=sum(f.stat().st_size for f in files),
        est_merge_bytes=mem,
        est_merge_seconds=secs,
        vocab_hash=vocab_hash(folder),
        kv_heads=int(config.get("num_key_value_heads") or heads) if family == "decoder" else None,
        rope=_rope(config) if family in _ROTARY else None,
        **{field: config.get(field) for field in _VISION},
    )


def _read_config(folder: Path) -> dict[str, Any]:
    """Return the parsed config.json of a model folder (ModelLoadError: missing or not JSON)."""
    if not folder.is_dir():
        raise ModelLoadError(
            f"folder {folder} does not exist; pass a folder that contains config.json and "
            "model.safetensors"
        )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(
            f"{folder} has no config.json; pass a save_pretrained folder (config.json and "
            "model.safetensors)"
        )
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON ({exc}); fix or re-save it") from exc


def _float_parameters(files: list[Path]) -> tuple[int, set[str]]:
    """Return the number of floating parameters in safetensors ``files`` (no buffers), dtypes."""
    num_params, dtypes = 0, set()
    for file in files:
        for name, info in read_safetensors_header(file).items():
            if info["dtype"] in _FLOAT_DTYPES and not name.endswith(_BUFFER_SUFFIXES):
                num_params += math.prod(info["shape"])
                dtypes.add(info["dtype"])
    return num_params, dtypes


def _intermediate(config: dict[str, Any], family: str, hidden: int, folder: Path) -> int:
    """Return the MLP width of a config (GPT-2 without n_inner: 4 x hidden)."""
    if family == "gpt2" and config.get("n_inner") is None:
        return 4 * hidden  # GPT-2's default MLP width
    return int(_pick(config, "intermediate", folder))


def _rope(config: dict[str, Any]) -> str:
    """Return a decoder's rotary settings as sorted JSON (rope_parameters, or rope_theta)."""
    rope = config.get("rope_parameters") or {
        "rope_theta": config.get("rope_theta", 10000.0),
        "rope_scaling": config.get("rope_scaling"),
    }
    return json.dumps(rope, sort_keys=True)


def estimate_merge(
    a: dict[str, int], b: dict[str, int], vocab_a: int | None, vocab_b: int | None
) -> tuple[int, float]:
    """Return (bytes, seconds) estimates of merging models of shapes a and b (see ModelCard)."""
    depth = max(a["depth"], b["depth"])
    o_h, o_i = a["hidden"] + b["hidden"], a["intermediate"] + b["intermediate"]
    params = a["num_params"] + b["num_params"]
    weights = 4 * (params + max(a["num_params"], b["num_params"]))
    cov = 8 * ((1 + 2 * depth) * o_h**2 + depth * o_i**2)
    embed = (vocab_a or 0) * a["hidden"] + (vocab_b or 0) * b["hidden"]
    forward = 2 * max(params - embed, 0) * _CALIB_TOKENS
    m_h, m_i = min(a["hidden"], b["hidden"]), min(a["intermediate"], b["intermediate"])
    zip_ops = (1 + 2 * depth) * m_h * o_h**2 + depth * m_i * o_i**2
    return weights + cov, round((forward + zip_ops) / _FLOPS_PER_SECOND, 1)


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
            "whole, so both models need the same hidden_size / num_attention_heads"
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
    return reasons


def _embedding_reasons(a: ModelCard, b: ModelCard) -> list[str]:
    """Return the blockers of the input tables: positions, image patches, token types."""
    reasons = []
    if a.max_positions != b.max_positions and a.family not in _ROTARY:
        reasons.append(
            f"position embedding sizes differ ({a.max_positions} vs {b.max_positions} "
            "positions): positional rows are merged position by position; use models with the "
            "same max_position_embeddings (image_size / patch_size for ViT)"
        )
    for field, what in _VISION.items():
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
    if card_a.norm == "unknown" and not reasons:
        notes.append(
            f"norm placement of model type {card_a.model_type!r} is unknown to heterogui; the "
            "merge may fail in the adapter step"
        )
    if card_a.dtypes != card_b.dtypes:
        notes.append(
            f"dtypes differ ({card_a.dtypes} vs {card_b.dtypes}): the merge runs in float32"
        )
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
        notes.append(
            f"estimate (rough, not measured): about {mem / 2**30:.2f} GiB of memory and "
            f"{secs:.0f} s on a CPU for the merge"
        )
    return Verdict(ok=not reasons, reasons=tuple(reasons), notes=tuple(notes))
