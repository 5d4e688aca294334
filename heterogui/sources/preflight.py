"""Header-only pre-flight: a Hugging Face folder's model card, and what a merge will cost.

Reads config.json, the safetensors headers (8-byte little-endian length, then a JSON header)
and, for the vocabulary check only, vocab.txt, tokenizer.json or vocab.json. Never reads tensor
data, never imports torch, so it answers in milliseconds even for large checkpoints. Whether two
cards can be merged is ``sources.pair_rules.check_pair``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heterogui.errors import ModelLoadError, excerpt, nesting
from heterogui.models.headers import FLOAT_DTYPES, read_safetensors_header
from heterogui.models.hf.common import CAUSAL_LM_FAMILIES, refuse_pickles
from heterogui.sources.vocab import vocab_hash

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
ROTARY_FAMILIES = {"decoder"}
_KEYS = {
    "depth": ("num_hidden_layers", "n_layers", "n_layer", "num_layers"),
    "hidden": ("hidden_size", "dim", "d_model", "n_embd"),
    "heads": ("num_attention_heads", "n_heads", "n_head", "num_heads"),
    "intermediate": ("intermediate_size", "hidden_dim", "ffn_dim", "n_inner", "d_ff"),
    "activation": ("hidden_act", "activation", "activation_function"),
}
# Buffers saved beside parameters that `sum(p.numel() for p in model.parameters())` omits.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# Merge-time estimate (rough): calibration tokens per model, and sustained CPU throughput.
_CALIB_TOKENS = 256 * 128
# MiniLM-L6 forward passes ran at ~9e10 FLOP/s on 2 CPU cores; halved for hooks and statistics.
_FLOPS_PER_SECOND = 5e10

# Vision fields (ViT config.json) that two models must share; None for text models.
VISION_FIELDS = {
    "image_size": "image sizes",
    "patch_size": "patch sizes",
    "num_channels": "channels",
}


@dataclass(frozen=True)
class ModelCard:
    """What config.json and the safetensors headers say about one model folder.

    `est_merge_bytes` estimates peak memory to merge this model with one of its own size: the
    weights of A, B and the merged model in float32 (3 x 4 bytes per parameter) plus 8 bytes
    per element of one O x O matrix (O = 2 x width) per merge point: per layer the Q/K and V/O
    spaces (width) and the MLP (intermediate width), plus the residual stream once, all held at
    once as the workbench holds them (a recipe's two-model merge holds at most its statistics
    budget: ``Verdict.memory_within``). A rough allowance, not an account: the statistics
    are kept in float32 per merge point and block (docs/method.md sec. 6), and the forward
    passes' activations and the matchers' copies come on top; it is 0.76-0.89 of measured
    peaks (README).
    `est_merge_seconds` is a rough CPU estimate, not a measurement: the forward FLOPs of both
    models on 256 x 128 calibration tokens (2 x non-embedding parameters per token) plus a naive
    zip (min(n_A, n_B) x O^2 per merge point), at 5e10 FLOP/s.
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
    norm_eps: float | None = None
    window: int | None = None
    biases: str | None = None
    eos: str | None = None
    image_size: int | None = None
    patch_size: int | None = None
    num_channels: int | None = None


@dataclass(frozen=True)
class Verdict:
    """Whether two models can be merged: blocking `reasons` and non-blocking `notes`;
    `cautions`: the notes on what the merge does other than either model would (another end
    token, dtype), which a merge's report and output repeat; `memory`: the bytes the merge
    needs by the estimate with every statistic held at once, as the workbench and an N-way
    merge hold them (None: not estimated), `statistics` of them (``memory_within``)."""

    ok: bool
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    memory: int | None = None
    cautions: tuple[str, ...] = ()
    statistics: int = 0

    def memory_within(self, budget: int) -> int | None:
        """Return the estimate with the statistics collected part by part within ``budget``
        bytes, as a recipe's two-model merge collects them (``host_memory.stats_budget``)."""
        if self.memory is None:
            return None
        return self.memory - self.statistics + min(self.statistics, budget)


def _weight_files(folder: Path) -> list[Path]:
    """Return the safetensors files of a folder (single file or sharded with an index)."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return index_shards(index)
    refuse_pickles(folder)
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
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelLoadError(
            f"{index} is not a valid safetensors index ({excerpt(nesting(exc), 120)}); {_RESAVE}"
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


def _check_heads(config: dict[str, Any], folder: Path, hidden: int, heads: int) -> None:
    """Refuse a config whose heads cannot divide its width (or its key/value heads its heads):
    the pair check blamed the other model ("head dimensions differ (32 vs 21)").

    Raises:
        ModelLoadError: naming the fields and their values.
    """
    width, count = (_present(config, _KEYS[f]) for f in ("hidden", "heads"))
    if heads < 1 or hidden < 1:  # n_heads, d_model: names _check_numbers does not know
        field, value = (count, heads) if heads < 1 else (width, hidden)
        raise ModelLoadError(
            f"{folder}/config.json: {field} must be a whole number of at least 1, got {value}; "
            "fix config.json (save_pretrained writes it)"
        )
    kv = config.get("num_key_value_heads")
    problem = heads_problem(
        (width, hidden),
        (count, heads),
        ("num_key_value_heads", kv if isinstance(kv, int) and kv > 0 else None),
        "head_dim" if config.get("head_dim") is None else None,
    )
    if problem:
        raise ModelLoadError(
            f"{folder}/config.json: {problem}; fix config.json (save_pretrained writes it)"
        )


def heads_problem(
    width: tuple[Any, int],
    heads: tuple[Any, int],
    kv_heads: tuple[Any, int | None],
    missing_head_dim: str | None,
) -> str | None:
    """Return why a transformer's heads cannot split its width, or its key/value heads its
    heads (None: they can). Each shape comes as (its key, its value), kv_heads' value None
    when the model sets none; missing_head_dim: the key of the head width the model leaves
    unset (the width must then divide evenly), None when it sets one. One rule for config.json
    and GGUF headers, each naming its own keys."""
    (width_key, width_value), (heads_key, heads_value) = width, heads
    kv_key, kv_value = kv_heads
    if missing_head_dim is not None and width_value % heads_value:
        return (
            f"{width_key} ({width_value}) is not a multiple of {heads_key} ({heads_value}), "
            f"and no {missing_head_dim} is set"
        )
    if kv_value and heads_value % kv_value:
        return f"{heads_key} ({heads_value}) is not a multiple of {kv_key} ({kv_value})"
    return None


def _present(config: dict[str, Any], keys: Sequence[str]) -> str | None:
    """Return the first of ``keys`` that ``config`` sets (None: none)."""
    return next((k for k in keys if config.get(k) is not None), None)


def _pick(config: dict[str, Any], field: str, folder: Path) -> Any:
    key = _present(config, _KEYS[field])
    if key is not None:
        return config[key]
    raise ModelLoadError(
        f"config.json in {folder} has no {' / '.join(_KEYS[field])}; the pre-flight supports "
        "transformer configs (BERT family, ViT ...)"
    )


def _positions(config: dict[str, Any]) -> int | None:
    """Return the positions a model reads (GPT-2's ``n_positions``; a ViT's patches + [CLS])."""
    for field in ("max_position_embeddings", "n_positions"):
        if config.get(field) is not None:
            return int(config[field])
    if config.get("image_size") and config.get("patch_size"):
        return (int(config["image_size"]) // int(config["patch_size"])) ** 2 + 1  # + [CLS]
    return None


@dataclass(frozen=True)
class Sizes:
    """What config.json and the safetensors headers say of a folder's sizes (``sizes``)."""

    folder: Path
    config: dict[str, Any]
    files: list[Path]
    num_params: int
    dtypes: Counter[str]  # the floating parameters' numbers per safetensors dtype
    model_type: str
    family: str
    hidden: int
    heads: int
    depth: int
    inter: int


def sizes(path: str | Path) -> Sizes:
    """Return a local Hugging Face folder's sizes from config.json and safetensors headers only,
    refusing a config.json that describes a model far larger than its weights (before
    transformers builds it: ``_check_size``).

    Raises:
        ModelLoadError: the folder or config.json is missing or unreadable, weights are not in
            safetensors, a safetensors header is corrupt, or the sizes disagree.
    """
    folder = Path(path).expanduser()
    config = _read_config(folder)
    _check_numbers(config, folder)
    files = _weight_files(folder)
    num_params, dtypes = _float_parameters(files, config.get("vocab_size"), folder)
    model_type = str(config.get("model_type", "unknown"))
    family = _FAMILY.get(model_type, model_type)
    if family != "vit" and config.get("vocab_size") is None:  # the pair check compares them
        raise ModelLoadError(
            f"{folder}/config.json has no vocab_size (the rows of its token embedding); fix "
            "config.json (save_pretrained writes it)"
        )
    hidden, heads = int(_pick(config, "hidden", folder)), int(_pick(config, "heads", folder))
    _check_heads(config, folder, hidden, heads)
    depth = int(_pick(config, "depth", folder))
    inter = _intermediate(config, family, hidden, folder)
    _check_size(config, folder, num_params, depth, hidden, inter)
    return Sizes(
        folder, config, files, num_params, dtypes, model_type, family, hidden, heads, depth, inter
    )


def inspect_model(path: str | Path) -> ModelCard:
    """Describe a local Hugging Face folder from config.json and safetensors headers only.

    Raises:
        ModelLoadError: as ``sizes``.
    """
    found = sizes(path)
    folder, config, family, hidden, heads = (
        found.folder,
        found.config,
        found.family,
        found.hidden,
        found.heads,
    )
    shape = {
        "depth": found.depth,
        "hidden": hidden,
        "intermediate": found.inter,
        "num_params": found.num_params,
    }
    mem, secs = estimate_merge(shape, shape, config.get("vocab_size"), config.get("vocab_size"))
    return ModelCard(
        path=folder,
        family=family,
        model_type=found.model_type,
        depth=found.depth,
        hidden=hidden,
        heads=heads,
        head_dim=int(config.get("head_dim") or hidden // heads),
        intermediate=found.inter,
        vocab_size=int(config["vocab_size"]) if config.get("vocab_size") is not None else None,
        max_positions=_positions(config),
        type_vocab_size=config.get("type_vocab_size"),
        norm=_NORM.get(family, "unknown"),
        activation=str(_pick(config, "activation", folder)),
        num_params=found.num_params,
        dtypes=tuple(sorted(found.dtypes)),
        file_bytes=sum(f.stat().st_size for f in found.files),
        est_merge_bytes=mem,
        est_merge_seconds=secs,
        vocab_hash=vocab_hash(folder),
        kv_heads=int(config.get("num_key_value_heads") or heads) if family == "decoder" else None,
        rope=_rope(config) if family in ROTARY_FAMILIES else None,
        norm_eps=next((config[k] for k in NORM_EPS_FIELDS if k in config), None),
        window=_window(config) if found.model_type == "mistral" else None,
        biases=bias_settings(config) if family == "decoder" else None,
        eos=json.dumps(config.get("eos_token_id")) if family in CAUSAL_LM_FAMILIES else None,
        **{field: config.get(field) for field in VISION_FIELDS},
    )


def _check_size(
    config: dict[str, Any], folder: Path, num_params: int, depth: int, hidden: int, inter: int
) -> None:
    """Raise when config.json implies more parameters than the weights hold: at least two MLP
    matrices per layer and the token embedding. transformers builds the model config.json
    describes before it reads a weight, so a width of 10^7 or 100,000 layers in a 5 MB folder
    took gigabytes (and minutes) before it was refused."""
    vocab = config.get("vocab_size")
    least = depth * 2 * hidden * inter + (int(vocab) * hidden if isinstance(vocab, int) else 0)
    if least > 2 * num_params + 1_000_000:
        raise ModelLoadError(
            f"{folder}/config.json describes a model of at least {least:,} parameters ({depth} "
            f"layers, hidden {hidden}, MLP {inter}, vocabulary {vocab}), but its weights hold "
            f"{num_params:,}: fix config.json to match the weights"
        )


def bias_settings(config: dict[str, Any]) -> str:
    """Return a decoder's bias settings ("attention_bias true, mlp_bias false"; absent: false,
    as transformers reads them; Qwen2's q/k/v biases come with its model_type)."""
    return ", ".join(
        f"{field} {str(bool(config.get(field, False))).lower()}"
        for field in ("attention_bias", "mlp_bias")
    )


def _window(config: dict[str, Any]) -> int | None:
    """Return a Mistral config's sliding window as transformers reads it (null: full
    attention; absent: MistralConfig's default)."""
    if "sliding_window" in config:
        return config["sliding_window"]
    from transformers import MistralConfig  # only for a Mistral config that leaves it out

    return MistralConfig().sliding_window


# the names config.json gives the norms' epsilon (decoders, BERT and ViT, GPT-2)
NORM_EPS_FIELDS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")


# config.json fields the pre-flight reads as numbers: whole numbers (with their least value) and
# positive ones; a string or a 0 there gave a TypeError or ZeroDivisionError traceback
_WHOLE_FIELDS = {
    **dict.fromkeys(
        (
            "hidden_size",
            "num_attention_heads",
            "num_hidden_layers",
            "intermediate_size",
            "vocab_size",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
            "image_size",
            "patch_size",
            "num_channels",
            "n_embd",
            "n_head",
            "n_layer",
            "n_inner",
            "n_positions",
        ),
        1,
    ),
    "type_vocab_size": 0,
}
_POSITIVE_FIELDS = ("layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps", "rope_theta")


def _check_numbers(config: dict[str, Any], folder: Path) -> None:
    """Refuse a number field of config.json of the wrong type or range, naming it.

    Raises:
        ModelLoadError: the first such field, with the value found.
    """
    for key, least in _WHOLE_FIELDS.items():
        value = config.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < least
        ):
            raise ModelLoadError(
                f"{folder}/config.json: {key} must be a whole number of at least {least}, got "
                f"{excerpt(repr(value), 40)}; fix config.json (save_pretrained writes it)"
            )
    archs = config.get("architectures")
    if archs is not None and not (
        isinstance(archs, list) and all(isinstance(a, str) for a in archs)
    ):
        raise ModelLoadError(
            f"{folder}/config.json: architectures must be a list of class names, got "
            f"{excerpt(repr(archs), 40)}; fix config.json (save_pretrained writes it)"
        )
    for key in _POSITIVE_FIELDS:
        value = config.get(key)
        if value is not None and (
            not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1e30
        ):
            raise ModelLoadError(
                f"{folder}/config.json: {key} must be a positive number, got "
                f"{excerpt(repr(value), 40)}; fix config.json (save_pretrained writes it)"
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
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(
            f"{config_path} is not valid JSON ({nesting(exc)}); fix or re-save it"
        ) from exc


# the token embedding's weight in BERT, Llama-style decoders and GPT-2 (rows: the vocabulary)
_EMBEDDINGS = ("word_embeddings.weight", "embed_tokens.weight", "wte.weight")


def _float_parameters(
    files: list[Path], vocab_size: Any = None, folder: Path | None = None
) -> tuple[int, Counter[str]]:
    """Return the number of floating parameters in safetensors ``files`` (no buffers), and
    their numbers per dtype.

    Raises:
        ModelLoadError: a token embedding whose rows are not config.json's ``vocab_size``.
    """
    num_params, dtypes = 0, Counter()
    for file in files:
        for name, info in read_safetensors_header(file).items():
            if info["dtype"] in FLOAT_DTYPES and not name.endswith(_BUFFER_SUFFIXES):
                numbers = math.prod(info["shape"])
                num_params += numbers
                dtypes[info["dtype"]] += numbers
            rows = info["shape"][0] if info["shape"] else None
            if vocab_size is not None and name.endswith(_EMBEDDINGS) and rows != vocab_size:
                raise ModelLoadError(
                    f"{folder}/config.json says vocab_size {vocab_size}, but the weights' token "
                    f"embedding {name} has {rows} rows; fix config.json to match the weights"
                )
    return num_params, dtypes


def _intermediate(config: dict[str, Any], family: str, hidden: int, folder: Path) -> int:
    """Return the MLP width of a config (GPT-2 without n_inner: 4 x hidden)."""
    if family == "gpt2" and config.get("n_inner") is None:
        return 4 * hidden  # GPT-2's default MLP width
    return int(_pick(config, "intermediate", folder))


def _rope(config: dict[str, Any]) -> str:
    """Return a decoder's rotary settings as sorted JSON, the same for both config layouts.

    transformers 5 writes one ``rope_parameters`` (rope_theta, rope_type and the scaling's
    keys); transformers 4 wrote ``rope_theta`` and ``rope_scaling`` (its type as "type" or
    "rope_type", null without scaling), as the hub's checkpoints keep them. Both become
    {rope_theta, rope_type, the scaling's keys}, numbers as floats: a merge written by
    transformers 5 pairs with a checkpoint of the same rotary settings saved by 4.
    """
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    kind, legacy = rope.pop("rope_type", None), rope.pop("type", None)
    rope["rope_type"] = kind or legacy or "default"
    floats = {
        k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
        for k, v in rope.items()
    }
    return json.dumps(floats, sort_keys=True)


def statistics_allowance(a: dict[str, int], b: dict[str, int]) -> int:
    """Return the bytes ``estimate_merge`` allows for the statistics of models of shapes a
    and b, every merge point held at once (see ModelCard)."""
    depth = max(a["depth"], b["depth"])
    o_h, o_i = a["hidden"] + b["hidden"], a["intermediate"] + b["intermediate"]
    return 8 * ((1 + 2 * depth) * o_h**2 + depth * o_i**2)


def estimate_merge(
    a: dict[str, int],
    b: dict[str, int],
    vocab_a: int | None,
    vocab_b: int | None,
    budget: int | None = None,
) -> tuple[int, float]:
    """Return (bytes, seconds) estimates of merging models of shapes a and b (see ModelCard).

    budget: the statistics' bytes a merge that collects them part by part holds at most (a
    recipe's two-model merge: ``host_memory.stats_budget``); None: every statistic held at
    once, as the workbench keeps them for re-merging.
    """
    depth = max(a["depth"], b["depth"])
    o_h, o_i = a["hidden"] + b["hidden"], a["intermediate"] + b["intermediate"]
    params = a["num_params"] + b["num_params"]
    weights = 4 * (params + max(a["num_params"], b["num_params"]))
    # the statistics and what the passes hold beside them (see ModelCard); a recipe's merge
    # collects more than its budget part by part (``pipeline.chunked_matches``): unbudgeted, a
    # 1.1B Llama pair that merges by recipe within 15.3 GiB was estimated at 37.7 GiB, and
    # refused on a 24 GiB machine
    cov = statistics_allowance(a, b)
    if budget is not None:
        cov = min(cov, budget)
    embed = (vocab_a or 0) * a["hidden"] + (vocab_b or 0) * b["hidden"]
    forward = 2 * max(params - embed, 0) * _CALIB_TOKENS
    m_h, m_i = min(a["hidden"], b["hidden"]), min(a["intermediate"], b["intermediate"])
    zip_ops = (1 + 2 * depth) * m_h * o_h**2 + depth * m_i * o_i**2
    return weights + cov, round((forward + zip_ops) / _FLOPS_PER_SECOND, 1)
