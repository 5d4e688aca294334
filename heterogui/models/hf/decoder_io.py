"""Hugging Face causal language models <-> the heterogui ``decoder`` family.

``load_decoder`` opens a ``save_pretrained`` folder through ``AutoModelForCausalLM`` (never with
remote code, safetensors only) and converts it into a decoder ``Network``; ``causal_lm`` turns a
decoder network (a merge held as one network) back into a transformers model. Names:

    model.embed_tokens.*     <-> blocks.0.embed_tokens.*
    model.layers.{i}.*       <-> blocks.{i+1}.*
    model.norm.*             <-> blocks.{L+1}.norm.*
    lm_head.*                <-> blocks.{L+2}.lm_head.*

A transformers Llama has one head count and one MLP width for all layers (and refuses head
counts that do not divide hidden_size). A merged layer may be narrower: it is padded with zero
key/value groups (zero q/k/v rows, zero o_proj columns: a zero query attends uniformly to zero
values, so the group adds exactly 0) and zero MLP neurons (zero gate/up rows, zero down_proj
columns, and silu(0) * 0 = 0). The head count is the smallest whole number of groups at least
the widest layer's that divides hidden_size.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import torch

from heterogui.errors import ExportError, ModelLoadError
from heterogui.models.decoder import DecoderNetConfig, build, make_config
from heterogui.models.decoder_modules import ARCHITECTURES
from heterogui.models.family import Network
from heterogui.models.hf.common import adapted, holding, load_pretrained

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.*)")
_BLOCK = re.compile(r"blocks\.(\d+)\.(.*)")


def state_from_hf(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename a transformers causal-LM state dict into block names (buffers dropped)."""
    out = {}
    for key, value in state.items():
        match = _LAYER.fullmatch(key)
        if match:
            out[f"blocks.{int(match.group(1)) + 1}.{match.group(2)}"] = value
        elif key == "model.embed_tokens.weight":
            out["blocks.0.embed_tokens.weight"] = value
        elif key == "model.norm.weight":
            out[f"blocks.{num_layers + 1}.norm.weight"] = value
        elif key == "lm_head.weight":
            out[f"blocks.{num_layers + 2}.lm_head.weight"] = value
    return out


def state_to_hf(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename block names into transformers causal-LM names."""
    out = {}
    for key, value in state.items():
        k, rest = _BLOCK.fullmatch(key).groups()
        k = int(k)
        if k == 0:
            out[f"model.{rest}"] = value
        elif k <= num_layers:
            out[f"model.layers.{k - 1}.{rest}"] = value
        elif k == num_layers + 1:
            out[f"model.{rest}"] = value
        else:
            out[rest] = value
    return out


def network_from_hf(model: Any, label: str = "model", copy: bool = True) -> Network:
    """Convert a loaded transformers causal LM (the caller's model is untouched; copy False:
    the network takes its float32 tensors, for a model loaded only to be converted).

    Raises:
        ModelLoadError: an unsupported architecture, or weights that do not fill the network.
    """
    try:
        config = make_config(model.config)
    except ValueError as exc:
        raise ModelLoadError(f"{label}: {exc}") from exc
    module = adapted(
        partial(build, config),
        state_from_hf(model.state_dict(), config.num_layers),
        copy,
        label,
        "decoder",
        "causal language model (…ForCausalLM)",
    )
    return Network(config, module, None, frozenset(), label)


def load_decoder(
    path: str | Path, *, device: str | torch.device = "cpu", label: str | None = None
) -> tuple[Network, Any]:
    """Load a causal-LM folder as a decoder (or GPT-2) Network, with its tokenizer.

    Raises:
        ModelLoadError: a missing folder, missing weights, no causal-LM head, or an
            unsupported architecture.
    """
    model, tokenizer, name = load_pretrained(
        path, "AutoModelForCausalLM", "causal language model", tokenizer=True
    )
    if getattr(model, "lm_head", None) is None:
        raise ModelLoadError(
            f"{name} has no language-model head (config.json names no …ForCausalLM "
            "architecture); save the model with AutoModelForCausalLM"
        )
    net = causal_lm_network(model, label or Path(name).name, copy=False)
    net.module.to(device)
    return net, tokenizer


def causal_lm_network(model: Any, label: str, copy: bool = True) -> Network:
    """Convert a loaded transformers causal LM by its adapter: GPT-2's, else the decoders'
    (copy: see ``network_from_hf``).

    Raises:
        ModelLoadError: an unsupported architecture, or weights that do not fill the network.
    """
    if getattr(model.config, "model_type", None) == "gpt2":
        from heterogui.models.hf.gpt2_io import network_from_hf as gpt2_network

        return gpt2_network(model, label, copy)
    return network_from_hf(model, label, copy)


def uniform_heads(config: DecoderNetConfig) -> tuple[int, int]:
    """Return (heads, key/value heads) every layer is padded to for a transformers config.

    Raises:
        ExportError: no whole number of key/value groups at least the widest layer's divides
            hidden_size.
    """
    group = config.heads[0] // config.kv_heads[0]
    for heads in range(max(config.heads), config.hidden + 1):
        if heads % group == 0 and config.hidden % heads == 0:
            return heads, heads // group
    raise ExportError(
        f"a transformers {config.model_type} needs a head count that divides hidden_size "
        f"{config.hidden}, in groups of {group}, of at least {max(config.heads)}: there is none; "
        "merge with another rho on the stream so that its width has such a divisor"
    )


def _pad(t: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Return ``t`` with zeros appended along ``dim`` up to ``size``."""
    extra = size - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_zeros(shape)], dim)


def padded_state(
    state: dict[str, torch.Tensor], config: DecoderNetConfig, heads: int, kv: int
) -> dict[str, torch.Tensor]:
    """Return a block-named state with every layer padded to ``heads`` / ``kv`` / widest MLP."""
    d, width = config.head_dim, max(config.intermediate)
    rows = {"q_proj": heads * d, "k_proj": kv * d, "v_proj": kv * d}
    rows |= {"gate_proj": width, "up_proj": width}
    cols = {"o_proj": heads * d, "down_proj": width}
    out = {}
    for name, value in state.items():
        value = value.detach().cpu().float()
        proj = name.rsplit(".", 2)[-2]
        if proj in rows:
            value = _pad(value, 0, rows[proj])
        elif proj in cols and name.endswith(".weight"):
            value = _pad(value, 1, cols[proj])
        out[name] = value.contiguous()
    return out


def hf_fields(config: DecoderNetConfig, heads: int, kv: int) -> dict[str, Any]:
    """Return the transformers config fields of the padded merged shape."""
    prefix = ARCHITECTURES[config.model_type][1]
    fields = config.fields
    fields.pop("tie_word_embeddings", None)
    return fields | {
        "architectures": [f"{prefix}ForCausalLM"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden,
        "head_dim": config.head_dim,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "intermediate_size": max(config.intermediate),
        "num_hidden_layers": config.num_layers,
        "tie_word_embeddings": False,
    }


def causal_lm(net: Network, dtype: torch.dtype = torch.float32) -> Any:
    """Return the transformers causal LM of a decoder network (widths padded to uniform), its
    weights in ``dtype``, for writing (``common.holding``: it shares the network's tensors).

    Raises:
        ExportError: see ``uniform_heads``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = net.config
    heads, kv = uniform_heads(config)
    hf_config = AutoConfig.for_model(config.model_type, **hf_fields(config, heads, kv))
    state = padded_state(net.module.state_dict(), config, heads, kv)
    return holding(
        lambda: AutoModelForCausalLM.from_config(hf_config),
        state_to_hf(state, config.num_layers),
        dtype,
    )
