"""Decoder family: pre-norm causal language models (Llama, Qwen2, Mistral) of any depth and width.

Attention rules and padding: docs/method.md secs. 5 and 8.

Blocks: the token embeddings (with the rotary tables and the causal mask), one block per decoder
layer, the final RMSNorm, and the language-model head. Parameter names are those of
transformers, so ``blocks.0.*`` <-> ``model.*`` (embed_tokens), ``blocks.{i+1}.*`` <->
``model.layers.{i}.*``, ``blocks.{L+1}.norm.*`` <-> ``model.norm.*`` and ``blocks.{L+2}.*`` <->
``lm_head.*``.

Spaces (tokens layout, every real token a sample):
- ``stream``: the residual stream (embedding columns, every RMSNorm, o_proj and down_proj rows,
  every reader's input axis); observed after the embeddings, after each attention sub-layer,
  after each layer and after the final norm.
- ``layer{i}.q`` / ``.k`` / ``.v`` / ``.o``: the query, key, value and attention-output features
  of layer i, one head group (``layer{i}.attn``). Rotary positions: q/k features never move
  inside a head. Grouped-query attention: a key/value head and its query heads are one pairing
  unit (``Space.unit_heads``). ``o`` is what o_proj reads; its matching follows q's head pairing
  and v's features (``heterogui.zip.rotary``).
- ``layer{i}.mlp``: the gated MLP's neurons (gate_proj and up_proj rows, down_proj columns),
  observed at the gated product.
- ``logits``: the vocabulary, shared by both models (never merged: a merged network averages
  the two heads, ``Family.shared_outputs``).

Depth padding is exact: a pre-norm layer whose o_proj and down_proj are zero is the identity.
Tied embeddings are untied (the merged embedding and head read the stream differently).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from heterogui.models.bert import same_setting
from heterogui.models.decoder_modules import (
    ACTIVATIONS,
    ARCHITECTURES,
    DecoderLayer,
    DecoderNet,
    Embed,
    FinalNorm,
    LMHead,
    attention_window,
    hf_config,
)
from heterogui.models.graph import (
    INPUT,
    LOGITS,
    STREAM,
    Capture,
    ModelGraph,
    RmsStream,
    Space,
    in_axis,
    inert_norms,
    out_axis,
    tag,
)
from heterogui.models.storage import allocate

ROLES = ("q", "k", "v", "o")
# transformers config fields two models must share (besides shapes), with what they mean
SHARED_HF_FIELDS = (
    ("rope_parameters", "rotary position settings"),
    ("hidden_act", "activations"),
    ("attention_bias", "attention biases"),
    ("mlp_bias", "MLP biases"),
)


@dataclass(frozen=True)
class DecoderNetConfig:
    """A pre-norm decoder with per-layer head counts and MLP widths.

    model_type: the transformers architecture ("llama", "qwen2", "mistral"). heads / kv_heads /
    intermediate: one entry per layer (query heads, key/value heads, MLP neurons). hf_fields:
    the other transformers config fields as JSON (rotary settings, norm epsilon, token ids ...),
    kept so a merge is exported with its parents' settings.
    """

    model_type: str
    vocab_size: int
    hidden: int
    head_dim: int
    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    intermediate: tuple[int, ...]
    hf_fields: str = "{}"

    def __post_init__(self) -> None:
        for name in ("heads", "kv_heads", "intermediate"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.model_type not in ARCHITECTURES:
            raise ValueError(
                f"model_type {self.model_type!r} is not one of {sorted(ARCHITECTURES)}"
            )
        if not len(self.heads) == len(self.kv_heads) == len(self.intermediate):
            raise ValueError("heads, kv_heads and intermediate need one entry per layer")
        for h, g in zip(self.heads, self.kv_heads, strict=True):
            if h % g:
                raise ValueError(f"{h} query heads do not split into {g} key/value groups")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")

    @property
    def fields(self) -> dict[str, Any]:
        """Return the other transformers config fields (a fresh dict)."""
        return json.loads(self.hf_fields)

    @property
    def num_layers(self) -> int:
        """Return the number of decoder layers."""
        return len(self.heads)

    @property
    def num_classes(self) -> int:
        """Return the head's output width (the vocabulary)."""
        return self.vocab_size

    @property
    def hidden_act(self) -> str:
        """Return the MLP activation."""
        return str(self.fields.get("hidden_act", "silu"))

    @property
    def norm_eps(self) -> float:
        """Return the RMSNorm epsilon."""
        return float(self.fields.get("rms_norm_eps", 1e-6))

    def group_size(self, layer: int) -> int:
        """Return the query heads per key/value head of ``layer``."""
        return self.heads[layer] // self.kv_heads[layer]


def build(config: DecoderNetConfig) -> DecoderNet:
    """Return a freshly initialised network for ``config`` (transformers' initialisation).

    The modules are created on the meta device and initialised once (normal weights of
    ``initializer_range``, zero biases, unit norms): a merge builds models only to load weights
    into them, and initialising a 135M-parameter model twice took seconds.
    """
    with torch.device("meta"):
        blocks: list[nn.Module] = [Embed(config)]
        blocks += [DecoderLayer(config, i) for i in range(config.num_layers)]
        blocks += [FinalNorm(config), LMHead(config)]
        net = DecoderNet(blocks)
    if torch.get_default_device().type == "meta":
        return net  # built for its shapes, or for weights loaded right after
    allocate(net, torch.device("cpu"))  # not to_empty: its empty_like imports sympy
    blocks[0].reset_rotary(config)
    std = float(config.fields.get("initializer_range", 0.02))
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif type(module).__name__.endswith("RMSNorm"):
                module.weight.fill_(1.0)
    return net


def space_names(layer: int) -> dict[str, str]:
    """Return the space name of every attention role and "mlp" in decoder layer ``layer``."""
    return {role: f"layer{layer}.{role}" for role in (*ROLES, "mlp")}


def biased(config: DecoderNetConfig) -> set[str]:
    """Return the projections that carry a bias (as transformers builds them)."""
    fields = config.fields
    out = set()
    if config.model_type == "qwen2":
        out |= {"q_proj", "k_proj", "v_proj"}
    elif fields.get("attention_bias"):
        out |= {"q_proj", "k_proj", "v_proj", "o_proj"}
    if fields.get("mlp_bias"):
        out |= {"gate_proj", "up_proj", "down_proj"}
    return out


def layer_spaces(config: DecoderNetConfig, i: int) -> tuple[dict[str, Space], list, list]:
    """Return (inner spaces, stream captures, tensor tags) of decoder layer i (block i + 1)."""
    k, names, d = i + 1, space_names(i), config.head_dim
    p, r = f"blocks.{k}", config.group_size(i)
    widths = {"q": config.heads[i] * d, "k": config.kv_heads[i] * d}
    widths |= {"v": widths["k"], "o": widths["q"]}
    spaces = {}
    for role in ROLES:
        proj = f"{p}.self_attn.{role}_proj"
        # v's projection writes it last; q and k are rotated after their projections
        caps = () if role == "o" else (Capture(proj, "tokens", k, proj if role == "v" else None),)
        spaces[names[role]] = Space(
            names[role],
            widths[role],
            caps,
            head_dim=d,
            group=f"layer{i}.attn",
            role=role,
            unit_heads=r if role in ("q", "o") else 1,
        )
    mlp = names["mlp"]
    product = Capture(f"{p}.mlp.product", "tokens", k, f"{p}.mlp.up_proj", shift=False)
    spaces[mlp] = Space(mlp, config.intermediate[i], (product,))
    bias = biased(config)
    tensors = []
    for proj, space, reads in (
        ("q_proj", names["q"], STREAM),
        ("k_proj", names["k"], STREAM),
        ("v_proj", names["v"], STREAM),
        ("o_proj", STREAM, names["o"]),
    ):
        tensors.append(tag(f"{p}.self_attn.{proj}.weight", k, out_axis(space), in_axis(reads)))
        if proj in bias:
            tensors.append(tag(f"{p}.self_attn.{proj}.bias", k, out_axis(space)))
    for proj, space, reads in (
        ("gate_proj", mlp, STREAM),
        ("up_proj", mlp, STREAM),
        ("down_proj", STREAM, mlp),
    ):
        tensors.append(tag(f"{p}.mlp.{proj}.weight", k, out_axis(space), in_axis(reads)))
        if proj in bias:
            tensors.append(tag(f"{p}.mlp.{proj}.bias", k, out_axis(space)))
    for norm in ("input_layernorm", "post_attention_layernorm"):
        tensors.append(tag(f"{p}.{norm}.weight", k, out_axis(STREAM)))
    stream = [Capture(f"{p}.residual_mid", "tokens", k), Capture(p, "tokens", k)]
    return spaces, stream, tensors


def graph(config: DecoderNetConfig, identity_blocks: frozenset[int] = frozenset()) -> ModelGraph:
    """Describe the spaces and tensors; identity layers' inner spaces are dead."""
    n = config.num_layers
    spaces = {INPUT: Space(INPUT, config.vocab_size), LOGITS: Space(LOGITS, config.vocab_size)}
    stream_caps = [Capture("blocks.0", "tokens", 0)]
    tensors = [tag("blocks.0.embed_tokens.weight", 0, out_axis(STREAM, 1))]
    dead: set[str] = set()
    for i in range(n):
        inner, stream, layer = layer_spaces(config, i)
        spaces.update(inner)
        stream_caps += stream
        tensors += layer
        if i + 1 in identity_blocks:
            dead |= set(inner)
    norm, head = n + 1, n + 2
    stream_caps.append(Capture(f"blocks.{norm}", "tokens", norm, f"blocks.{norm}.norm"))
    norm_outputs = tuple(
        Capture(name, "tokens", k, name)
        for k in range(1, n + 1)
        for name in (f"blocks.{k}.input_layernorm", f"blocks.{k}.post_attention_layernorm")
    )
    tensors.append(tag(f"blocks.{norm}.norm.weight", norm, out_axis(STREAM)))
    tensors.append(tag(f"blocks.{head}.lm_head.weight", head, out_axis(LOGITS), in_axis(STREAM)))
    spaces[STREAM] = Space(STREAM, config.hidden, tuple(stream_caps), norm_outputs=norm_outputs)
    block_out = (STREAM,) * (n + 2) + (None,)
    inert = inert_norms(tensors, identity_blocks, ("input_layernorm", "post_attention_layernorm"))
    stages = (tuple(range(1, n + 1)),)
    gains = frozenset(t.name for t in tensors if t.name.endswith("norm.weight"))
    rms = RmsStream(STREAM, gains, frozenset({norm}))
    return ModelGraph(
        spaces, tuple(tensors), stages, block_out, frozenset(dead), inert, rms_stream=rms
    )


def insert_identity(config: DecoderNetConfig, stage: int, position: int) -> DecoderNetConfig:
    """Return the config with an identity layer at ``position`` (>= 1), its predecessor's widths."""
    lists = [list(config.heads), list(config.kv_heads), list(config.intermediate)]
    for values in lists:
        values.insert(position, values[position - 1])
    return replace(
        config, heads=tuple(lists[0]), kv_heads=tuple(lists[1]), intermediate=tuple(lists[2])
    )


def init_identity(block: nn.Module) -> None:
    """Zero a fresh layer's o_proj and down_proj: a pre-norm layer then is the identity."""
    with torch.no_grad():
        for proj in (block.self_attn.o_proj, block.mlp.down_proj):
            proj.weight.zero_()
            if proj.bias is not None:
                proj.bias.zero_()
        for norm in (block.input_layernorm, block.post_attention_layernorm):
            norm.weight.fill_(1.0)


def resize(config: DecoderNetConfig, widths: dict[str, int]) -> DecoderNetConfig:
    """Return the config with the widths of the given spaces replaced.

    Raises:
        ValueError: a layer's widths that are not whole heads, or q/o and k/v that disagree.
    """
    heads, kv, inter = list(config.heads), list(config.kv_heads), list(config.intermediate)
    d = config.head_dim
    for i in range(config.num_layers):
        names = space_names(i)
        w = {role: widths.get(names[role]) for role in ROLES}
        w_q = w["q"] if w["q"] is not None else w["o"]
        w_k = w["k"] if w["k"] is not None else w["v"]
        w_q = heads[i] * d if w_q is None else w_q
        w_k = kv[i] * d if w_k is None else w_k
        if (w["o"] not in (None, w_q)) or (w["v"] not in (None, w_k)) or w_q % d or w_k % d:
            raise ValueError(
                f"layer {i}: q/o widths {w['q']}/{w['o']} and k/v widths {w['k']}/{w['v']} must "
                f"agree and be whole heads of {d}"
            )
        if (w_q // d) % (w_k // d):
            raise ValueError(f"layer {i}: {w_q // d} query heads for {w_k // d} key/value heads")
        heads[i], kv[i] = w_q // d, w_k // d
        inter[i] = widths.get(names["mlp"], inter[i])
    return replace(
        config,
        hidden=widths.get(STREAM, config.hidden),
        heads=tuple(heads),
        kv_heads=tuple(kv),
        intermediate=tuple(inter),
    )


def check_pair(config_a: DecoderNetConfig, config_b: DecoderNetConfig) -> list[str]:
    """Return one sentence per property two decoder configs must share and do not."""
    reasons = []
    for field, what in (
        ("model_type", "architectures"),
        ("vocab_size", "vocabulary sizes"),
        ("head_dim", "head dimensions"),
    ):
        va, vb = getattr(config_a, field), getattr(config_b, field)
        if va != vb:
            extra = " (attention heads merge whole)" if field == "head_dim" else ""
            reasons.append(
                f"{what} differ ({va} vs {vb}){extra}: both models need the same {field}"
            )
    fa, fb = config_a.fields, config_b.fields
    for field, what in SHARED_HF_FIELDS:
        if fa.get(field) != fb.get(field):
            reasons.append(
                f"{what} differ ({fa.get(field)} vs {fb.get(field)}): both models need the same "
                f"{field}"
            )
    for what, va, vb in (
        ("RMSNorm epsilons", config_a.norm_eps, config_b.norm_eps),
        ("attention windows", attention_window(config_a), attention_window(config_b)),
    ):
        if not same_setting(va, vb):  # a merged layer runs with one setting: B's would change
            reasons.append(f"{what} differ ({va} vs {vb}): both models need the same setting")
    ra = {config_a.group_size(i) for i in range(config_a.num_layers)}
    rb = {config_b.group_size(i) for i in range(config_b.num_layers)}
    if ra != rb:
        reasons.append(
            f"query heads per key/value head differ ({sorted(ra)} vs {sorted(rb)}): a key/value "
            "head merges with its query heads, so both models need the same grouping"
        )
    return reasons


def make_config(hf: Any) -> DecoderNetConfig:
    """Return the decoder config of a transformers Llama / Qwen2 / Mistral config.

    Raises:
        ValueError: an architecture or setting the decoder family does not support.
    """
    kind = getattr(hf, "model_type", None)
    if kind not in ARCHITECTURES:
        raise ValueError(
            f"model_type {kind!r} is not a supported decoder; use one of {sorted(ARCHITECTURES)}"
        )
    layer_types = getattr(hf, "layer_types", None) or ()
    if kind == "qwen2" and "sliding_attention" in layer_types:  # max_window_layers: full
        raise ValueError(
            "this Qwen2 model has layers with sliding-window attention (use_sliding_window: true, "
            "layer_types), which heterogui does not run (its layers would attend to every "
            "token); merge models with full attention, or save the model with "
            "use_sliding_window false if it was trained so"
        )
    data = hf.to_dict()
    shape_keys = (
        "vocab_size",
        "hidden_size",
        "head_dim",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "num_hidden_layers",
    )
    from transformers import PretrainedConfig

    # generic transformers fields (labels, output switches) say nothing about the decoder
    drop = set(PretrainedConfig().to_dict()) - {"bos_token_id", "eos_token_id", "pad_token_id"}
    drop |= {"quantization_config", "_model_name_or_path", "layer_types", "dtype", "torch_dtype"}
    drop |= {"use_cache"}
    kept = {k: v for k, v in data.items() if k not in drop and k not in shape_keys}
    layers = int(hf.num_hidden_layers)
    heads = int(hf.num_attention_heads)
    kv = int(getattr(hf, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(hf, "head_dim", None) or hf.hidden_size // heads)
    return DecoderNetConfig(
        model_type=kind,
        vocab_size=int(hf.vocab_size),
        hidden=int(hf.hidden_size),
        head_dim=head_dim,
        heads=(heads,) * layers,
        kv_heads=(kv,) * layers,
        intermediate=(int(hf.intermediate_size),) * layers,
        hf_fields=json.dumps(kept, sort_keys=True, default=str),
    )


__all__ = ["DecoderNetConfig", "build", "graph", "hf_config", "make_config"]
