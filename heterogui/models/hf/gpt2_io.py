"""Hugging Face GPT-2 <-> the heterogui ``gpt2`` family.

transformers stores GPT-2's projections as Conv1D (weight (in, out)) and q, k, v fused in one
``c_attn``; the family uses linear layers (weight (out, in)) with q, k and v apart. Names:

    transformer.wte / wpe / ln_f       <-> blocks.0.wte / blocks.0.wpe / blocks.{L+1}.ln_f
    transformer.h.{i}.ln_1, ln_2       <-> blocks.{i+1}.ln_1, ln_2
    transformer.h.{i}.attn.c_attn      <-> blocks.{i+1}.attn.query / key / value (split, T)
    transformer.h.{i}.attn.c_proj      <-> blocks.{i+1}.attn_out (T)
    transformer.h.{i}.mlp.c_fc, c_proj <-> blocks.{i+1}.mlp.dense, mlp_out (T)
    lm_head                            <-> blocks.{L+2}.lm_head

A transformers GPT-2 ties its attention width to n_embd (heads x head size = hidden size) and
has one MLP width: merged layers are padded with zero heads and zero neurons (exact), and a
merge with more heads than hidden / head size cannot be written as a GPT-2 and is refused.
"""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any

import torch

from heterogui.errors import ModelLoadError
from heterogui.models.family import Network
from heterogui.models.gpt2 import GPT2NetConfig, build
from heterogui.models.hf.common import adapted, check_stream, holding

_LAYER = re.compile(r"transformer\.h\.(\d+)\.(.*)")
_RENAME = {
    "attn.c_proj": "attn_out",
    "mlp.c_fc": "mlp.dense",
    "mlp.c_proj": "mlp_out",
}
_UNSUPPORTED = {
    "scale_attn_by_inverse_layer_idx": "attention scaled by the inverse layer index",
    "add_cross_attention": "cross-attention",
}
# written back into an export's config.json as A had them (reorder_and_upcast_attn: how
# transformers computes attention in half precision, the same function)
_FIELDS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "initializer_range",
    "reorder_and_upcast_attn",
)


def config_from_hf(hf: Any) -> GPT2NetConfig:
    """Return the gpt2-family config of a transformers GPT2Config.

    Raises:
        ModelLoadError: an option the family does not support.
    """
    for field, what in _UNSUPPORTED.items():
        if getattr(hf, field, False):
            raise ModelLoadError(f"GPT-2 with {what} ({field}) is not supported; use a plain GPT-2")
    if not getattr(hf, "scale_attn_weights", True):
        raise ModelLoadError("GPT-2 without scaled attention weights is not supported")
    hidden, heads = int(hf.n_embd), int(hf.n_head)
    layers = int(hf.n_layer)
    inner = int(hf.n_inner or 4 * hidden)
    fields = {k: getattr(hf, k, None) for k in _FIELDS}
    return GPT2NetConfig(
        vocab_size=int(hf.vocab_size),
        max_positions=int(hf.n_positions),
        hidden=hidden,
        head_dim=hidden // heads,
        heads=(heads,) * layers,
        intermediate=(inner,) * layers,
        layer_norm_eps=float(hf.layer_norm_epsilon),
        hidden_act=str(hf.activation_function),
        hf_fields=json.dumps(fields, sort_keys=True),
    )


def state_from_hf(state: dict[str, torch.Tensor], config: GPT2NetConfig) -> dict[str, torch.Tensor]:
    """Rename (split, transpose) a GPT2LMHeadModel state dict into block names."""
    n, out = config.num_layers, {}
    for key, value in state.items():
        value = value.detach().float()
        match = _LAYER.fullmatch(key)
        if match:
            i, rest = int(match.group(1)), match.group(2)
            p = f"blocks.{i + 1}"
            module, _, leaf = rest.rpartition(".")
            if module == "attn.c_attn":
                width = config.heads[i] * config.head_dim
                parts = value.T.split(width) if leaf == "weight" else value.split(width)
                for name, part in zip(("query", "key", "value"), parts, strict=True):
                    out[f"{p}.attn.{name}.{leaf}"] = part.contiguous()
            elif module in _RENAME:
                out[f"{p}.{_RENAME[module]}.{leaf}"] = (
                    value.T.contiguous() if leaf == "weight" else value
                )
            elif module in ("ln_1", "ln_2"):
                out[f"{p}.{rest}"] = value
        elif key in ("transformer.wte.weight", "transformer.wpe.weight"):
            out[f"blocks.0.{key.split('.')[1]}.weight"] = value
        elif key.startswith("transformer.ln_f."):
            out[f"blocks.{n + 1}.ln_f.{key.rsplit('.', 1)[1]}"] = value
        elif key == "lm_head.weight":
            out[f"blocks.{n + 2}.lm_head.weight"] = value
    return out


def network_from_hf(model: Any, label: str = "model", copy: bool = True) -> Network:
    """Convert a loaded transformers GPT2LMHeadModel (the caller's model is untouched; copy
    False: the network takes its float32 tensors, for a model loaded only to be converted).

    Raises:
        ModelLoadError: an unsupported option, or weights that do not fill the network.
    """
    config = config_from_hf(model.config)
    module = adapted(
        partial(build, config),
        state_from_hf(model.state_dict(), config),
        copy,
        label,
        "GPT-2",
        "GPT2LMHeadModel",
    )
    return Network(config, module, None, frozenset(), label)


def _pad(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    extra = size - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_zeros(shape)], dim)


def check_heads(config: GPT2NetConfig) -> int:
    """Return the head count of a transformers GPT-2 of this width (hidden / head size).

    Raises:
        ExportError: a layer with more heads than that.
    """
    check_stream(config.hidden, config.head_dim, max(config.heads), "GPT-2", "n_embd")
    return config.hidden // config.head_dim


def gpt2_state(net: Network) -> tuple[dict[str, torch.Tensor], int, int]:
    """Return (GPT2LMHeadModel state dict, heads, inner width) of a gpt2 network, padded.

    Raises:
        ExportError: a layer with more heads than hidden / head size.
    """
    config: GPT2NetConfig = net.config
    slots, width = check_heads(config), max(config.intermediate)
    attn, n = slots * config.head_dim, config.num_layers
    state = {k: v.detach().cpu().float() for k, v in net.module.state_dict().items()}
    out = {
        "transformer.wte.weight": state["blocks.0.wte.weight"],
        "transformer.wpe.weight": state["blocks.0.wpe.weight"],
        "transformer.ln_f.weight": state[f"blocks.{n + 1}.ln_f.weight"],
        "transformer.ln_f.bias": state[f"blocks.{n + 1}.ln_f.bias"],
        "lm_head.weight": state[f"blocks.{n + 2}.lm_head.weight"],
    }
    for i in range(n):
        p, q = f"blocks.{i + 1}", f"transformer.h.{i}"
        qkv = [
            _pad(state[f"{p}.attn.{name}.weight"], 0, attn) for name in ("query", "key", "value")
        ]
        bias = [_pad(state[f"{p}.attn.{name}.bias"], 0, attn) for name in ("query", "key", "value")]
        out[f"{q}.attn.c_attn.weight"] = torch.cat(qkv).T.contiguous()
        out[f"{q}.attn.c_attn.bias"] = torch.cat(bias)
        out[f"{q}.attn.c_proj.weight"] = _pad(state[f"{p}.attn_out.weight"], 1, attn).T.contiguous()
        out[f"{q}.attn.c_proj.bias"] = state[f"{p}.attn_out.bias"]
        out[f"{q}.mlp.c_fc.weight"] = _pad(state[f"{p}.mlp.dense.weight"], 0, width).T.contiguous()
        out[f"{q}.mlp.c_fc.bias"] = _pad(state[f"{p}.mlp.dense.bias"], 0, width)
        out[f"{q}.mlp.c_proj.weight"] = _pad(state[f"{p}.mlp_out.weight"], 1, width).T.contiguous()
        out[f"{q}.mlp.c_proj.bias"] = state[f"{p}.mlp_out.bias"]
        for norm in ("ln_1", "ln_2"):
            for leaf in ("weight", "bias"):
                out[f"{q}.{norm}.{leaf}"] = state[f"{p}.{norm}.{leaf}"]
    return out, slots, width


def gpt2_lm(net: Network, dtype: torch.dtype = torch.float32) -> Any:
    """Return the transformers GPT2LMHeadModel of a gpt2 network (widths padded to uniform),
    its weights in ``dtype``, for writing (``common.holding``).

    Raises:
        ExportError: see ``gpt2_state``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config: GPT2NetConfig = net.config
    state, heads, width = gpt2_state(net)
    fields = {k: v for k, v in json.loads(config.hf_fields).items() if v is not None}
    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.max_positions,
        n_embd=config.hidden,
        n_layer=config.num_layers,
        n_head=heads,
        n_inner=width,
        activation_function=config.hidden_act,
        layer_norm_epsilon=config.layer_norm_eps,
        tie_word_embeddings=False,
        architectures=["GPT2LMHeadModel"],
        **fields,
    )
    return holding(lambda: GPT2LMHeadModel(hf_config), state, dtype)
