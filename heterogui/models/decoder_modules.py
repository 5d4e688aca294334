"""The modules of the decoder family (Hugging Face names; see ``heterogui.models.decoder``).

Attention, RMSNorm and the rotary embedding are the transformers modules of the model's
architecture (Llama, Qwen2, Mistral), built from a per-layer copy of its config, so a merged
layer may have its own head counts. Only the residual wiring of a pre-norm block and the gated
MLP (one line each) are written here, to expose two observation points that transformers has no
module for: the stream after the attention sub-layer (``residual_mid``) and the gated product
that ``down_proj`` reads (``mlp.product``).

The state passed between blocks is (hidden (B, T, H), attention_mask (B, T), (cos, sin),
keep (B, 1, T, T) bool); the first block takes the tokenizer's dict, the final norm returns the
normalised hidden states and the head returns logits (B, T, vocab).
"""

from __future__ import annotations

import functools
import importlib
import json
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from heterogui.models.graph import BlockNet
from heterogui.models.idle import bias_of, may_skip

if TYPE_CHECKING:
    from heterogui.models.decoder import DecoderNetConfig

# model_type -> (transformers module, class-name prefix)
ARCHITECTURES = {
    "llama": ("transformers.models.llama.modeling_llama", "Llama"),
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2"),
    "mistral": ("transformers.models.mistral.modeling_mistral", "Mistral"),
}
ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}


def hf_class(model_type: str, name: str) -> type:
    """Return the transformers class ``<Prefix><name>`` of an architecture (e.g. LlamaAttention)."""
    module, prefix = ARCHITECTURES[model_type]
    return getattr(importlib.import_module(module), prefix + name)


@functools.lru_cache(maxsize=256)
def _hf_config(model_type: str, fields: str) -> Any:
    from transformers import AutoConfig

    data = json.loads(fields)
    heads = {k: data.pop(k) for k in ("num_attention_heads", "num_key_value_heads")}
    # transformers refuses head counts that do not divide hidden_size even with an explicit
    # head_dim; a merged layer's counts need not (its heads keep head_dim), so they are set after
    config = AutoConfig.for_model(model_type, num_attention_heads=1, num_key_value_heads=1, **data)
    for key, value in heads.items():
        setattr(config, key, value)
    config._attn_implementation = "sdpa"
    return config


def attention_window(c: DecoderNetConfig) -> int | None:
    """Return the sliding attention window a decoder's layers use (None: full attention):
    Mistral's window (Qwen2 models with windows are refused when loaded)."""
    return getattr(hf_config(c), "sliding_window", None) if c.model_type == "mistral" else None


def hf_config(c: DecoderNetConfig, layer: int | None = None) -> Any:
    """Return the transformers config of ``c`` (widths of ``layer``, or of layer 0).

    Cached: never modify the returned object.
    """
    i = 0 if layer is None else layer
    fields = json.loads(c.hf_fields) | {
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden,
        "head_dim": c.head_dim,
        "num_attention_heads": c.heads[i],
        "num_key_value_heads": c.kv_heads[i],
        "intermediate_size": c.intermediate[i],
        "num_hidden_layers": c.num_layers,
    }
    return _hf_config(c.model_type, json.dumps(fields, sort_keys=True))


class Embed(nn.Module):
    """Token embeddings, rotary position tables and the causal mask of a batch."""

    def __init__(self, c: DecoderNetConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden)
        self.reset_rotary(c)
        self.window = attention_window(c)

    def reset_rotary(self, c: DecoderNetConfig) -> None:
        """(Re)build the rotary embedding on the CPU (its frequencies are computed, not stored)."""
        with torch.device("cpu"):
            self.rotary_emb = hf_class(c.model_type, "RotaryEmbedding")(hf_config(c))

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[Any, ...]:
        """Map a tokenizer dict (input_ids (B, T), attention_mask) to the first state."""
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        x = self.embed_tokens(ids)
        t = ids.shape[1]
        positions = torch.arange(t, device=ids.device)[None, :].expand(ids.shape[0], t)
        cos, sin = self.rotary_emb(x, positions)
        rows, cols = torch.arange(t, device=ids.device)[:, None], torch.arange(t, device=ids.device)
        causal = cols <= rows
        if self.window:
            causal = causal & (rows - cols < self.window)
        keep = causal[None, None] & mask[:, None, None, :].bool()
        return x, mask, (cos, sin), keep


class GatedMLP(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)); ``product`` observes what down_proj reads."""

    def __init__(self, hidden: int, width: int, act: str, bias: bool):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=bias)
        self.up_proj = nn.Linear(hidden, width, bias=bias)
        self.down_proj = nn.Linear(width, hidden, bias=bias)
        self.act_fn = ACTIVATIONS[act]()
        self.product = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, H) to (B, T, H)."""
        return self.down_proj(self.product(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, c: DecoderNetConfig, layer: int):
        super().__init__()
        config = hf_config(c, layer)
        norm = hf_class(c.model_type, "RMSNorm")
        self.self_attn = hf_class(c.model_type, "Attention")(config, layer)
        self.mlp = GatedMLP(
            c.hidden, c.intermediate[layer], c.hidden_act, bool(getattr(config, "mlp_bias", False))
        )
        self.input_layernorm = norm(c.hidden, eps=c.norm_eps)
        self.post_attention_layernorm = norm(c.hidden, eps=c.norm_eps)
        self.residual_mid = nn.Identity()

    def forward(self, state: tuple[Any, ...]) -> tuple[Any, ...]:
        """Run the layer on the state (hidden, mask, rotary tables, keep)."""
        x, mask, rotary, keep = state
        o_proj, down_proj = self.self_attn.o_proj, self.mlp.down_proj
        if may_skip(self, (o_proj, down_proj), (self.residual_mid,)):  # an identity layer
            h = self.residual_mid(x + bias_of(o_proj, x))
            return h + bias_of(down_proj, h), mask, rotary, keep
        attn = self.self_attn(
            self.input_layernorm(x), position_embeddings=rotary, attention_mask=keep
        )
        h = self.residual_mid(x + attn[0])
        return h + self.mlp(self.post_attention_layernorm(h)), mask, rotary, keep


class FinalNorm(nn.Module):
    """The final RMSNorm; returns the normalised hidden states (B, T, H)."""

    def __init__(self, c: DecoderNetConfig):
        super().__init__()
        self.norm = hf_class(c.model_type, "RMSNorm")(c.hidden, eps=c.norm_eps)

    def forward(self, state: tuple[Any, ...]) -> torch.Tensor:
        """Normalise the hidden part of the state."""
        return self.norm(state[0])


class LMHead(nn.Module):
    """The language-model head: logits (B, T, vocab) of the normalised hidden states."""

    def __init__(self, c: DecoderNetConfig):
        super().__init__()
        self.lm_head = nn.Linear(c.hidden, c.vocab_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Map (B, T, H) to logits (B, T, vocab)."""
        return self.lm_head(hidden)


class DecoderNet(BlockNet):
    """A BlockNet called like a causal LM: ``net(input_ids=..., attention_mask=...)``."""

    def forward(
        self,
        input_ids: torch.Tensor | dict[str, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the next-token logits (B, T, vocab)."""
        if isinstance(input_ids, dict):
            return self.run(input_ids)
        return self.run({"input_ids": input_ids, "attention_mask": attention_mask})
