"""GPT-2 family: pre-LayerNorm causal language models with learned positions, any depth and width.

Blocks: the token and position embeddings (with the causal mask), one block per layer, the final
LayerNorm and the language-model head. The spaces are those of BERT and ViT (shared through
``bert.LayerNames``): ``stream`` (embedding columns, position-table columns, every LayerNorm,
the attention and MLP output projections), ``layer{i}.qk`` / ``layer{i}.vo`` (one head group:
GPT-2 has no rotary positions and no grouped keys, so q/k features are matched inside paired
heads with one shared order) and ``layer{i}.ffn``; ``logits`` is the vocabulary, shared by both
models (``Family.shared_outputs``).

transformers' GPT-2 stores q, k and v fused in one Conv1D (``c_attn``, weight (in, out));
``heterogui.models.hf.gpt2_io`` splits and transposes it into three linear layers on loading and
fuses it back on export. A pre-LN layer with zero output projections is the identity, so depth
padding is exact. Learned positions are merged row by row: both models need the same table size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from heterogui.models import bert
from heterogui.models.bert import STREAM, LayerNames, differing_fields, layer_spaces
from heterogui.models.bert_modules import ACTIVATIONS, Intermediate, SelfAttention
from heterogui.models.graph import (
    INPUT,
    LOGITS,
    BlockNet,
    Capture,
    ModelGraph,
    Space,
    in_axis,
    inert_norms,
    norm_tags,
    out_axis,
    tag,
)
from heterogui.models.idle import bias_of, may_skip

GPT2_NAMES = LayerNames(
    "attn.query",
    "attn.key",
    "attn.value",
    "attn_out",
    "mlp.dense",
    "mlp.act",
    "mlp_out",
    ("ln_1", "ln_2"),
    "residual_mid",
)
SHARED_FIELDS = (
    ("vocab_size", "vocabulary sizes"),
    ("max_positions", "position table sizes"),
    ("head_dim", "head dimensions"),
    ("hidden_act", "activations"),
    ("layer_norm_eps", "LayerNorm epsilons"),
)


@dataclass(frozen=True)
class GPT2NetConfig:
    """A GPT-2 with per-layer head counts and MLP widths (``heads`` / ``intermediate``)."""

    vocab_size: int
    max_positions: int
    hidden: int
    head_dim: int
    heads: tuple[int, ...]
    intermediate: tuple[int, ...]
    layer_norm_eps: float = 1e-5
    hidden_act: str = "gelu_new"
    hf_fields: str = "{}"

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(int(h) for h in self.heads))
        object.__setattr__(self, "intermediate", tuple(int(w) for w in self.intermediate))
        if len(self.heads) != len(self.intermediate):
            raise ValueError("heads and intermediate need one entry per layer")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {sorted(ACTIVATIONS)}")

    @property
    def num_layers(self) -> int:
        """Return the number of layers."""
        return len(self.heads)

    @property
    def num_classes(self) -> int:
        """Return the head's output width (the vocabulary)."""
        return self.vocab_size


class Embed(nn.Module):
    """Token + position embeddings and the causal mask (names of transformers' GPT-2)."""

    def __init__(self, c: GPT2NetConfig):
        super().__init__()
        self.wte = nn.Embedding(c.vocab_size, c.hidden)
        self.wpe = nn.Embedding(c.max_positions, c.hidden)

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Map a tokenizer dict to (hidden (B, T, H), mask (B, T), keep (B, 1, T, T))."""
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        t = ids.shape[1]
        positions = torch.arange(t, device=ids.device)
        causal = positions[None, :] <= positions[:, None]
        keep = causal[None, None] & mask[:, None, None, :].bool()
        return self.wte(ids) + self.wpe(positions)[None], mask, keep


class Layer(nn.Module):
    """One pre-LN layer: x + attn(ln_1(x)), then + mlp(ln_2(.)); names in ``GPT2_NAMES``."""

    def __init__(self, c: GPT2NetConfig, heads: int, width: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)
        self.attn = SelfAttention(c.hidden, heads, c.head_dim)
        self.attn_out = nn.Linear(heads * c.head_dim, c.hidden)
        self.residual_mid = nn.Identity()
        self.ln_2 = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)
        self.mlp = Intermediate(c.hidden, width, c.hidden_act)
        self.mlp_out = nn.Linear(width, c.hidden)

    def forward(self, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Run the layer on (hidden, mask, keep)."""
        x, mask, keep = state
        if may_skip(self, (self.attn_out, self.mlp_out), (self.residual_mid,)):
            h = self.residual_mid(x + bias_of(self.attn_out, x))  # an identity layer
            return h + bias_of(self.mlp_out, h), mask, keep
        h = self.residual_mid(x + self.attn_out(self.attn(self.ln_1(x), keep)))
        return h + self.mlp_out(self.mlp(self.ln_2(h))), mask, keep


class FinalNorm(nn.Module):
    """The final LayerNorm (``ln_f``); returns the normalised hidden states."""

    def __init__(self, c: GPT2NetConfig):
        super().__init__()
        self.ln_f = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)

    def forward(self, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Normalise the hidden part of the state."""
        return self.ln_f(state[0])


class LMHead(nn.Module):
    """The language-model head (untied from the token embeddings)."""

    def __init__(self, c: GPT2NetConfig):
        super().__init__()
        self.lm_head = nn.Linear(c.hidden, c.vocab_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Map (B, T, H) to logits (B, T, vocab)."""
        return self.lm_head(hidden)


class GPT2Net(BlockNet):
    """A BlockNet called like a causal LM: ``net(input_ids=..., attention_mask=...)``."""

    def forward(self, input_ids: Any, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return the next-token logits (B, T, vocab)."""
        if isinstance(input_ids, dict):
            return self.run(input_ids)
        return self.run({"input_ids": input_ids, "attention_mask": attention_mask})


def build(config: GPT2NetConfig) -> GPT2Net:
    """Return a freshly initialised network for ``config``."""
    blocks: list[nn.Module] = [Embed(config)]
    blocks += [Layer(config, h, w) for h, w in zip(config.heads, config.intermediate, strict=True)]
    return GPT2Net([*blocks, FinalNorm(config), LMHead(config)])


def graph(config: GPT2NetConfig, identity_blocks: frozenset[int] = frozenset()) -> ModelGraph:
    """Describe the spaces and tensors; identity layers' qk, vo and ffn spaces are dead."""
    n = config.num_layers
    spaces = {INPUT: Space(INPUT, config.vocab_size), LOGITS: Space(LOGITS, config.vocab_size)}
    stream_caps = [Capture("blocks.0", "tokens", 0)]
    tensors = [tag(f"blocks.0.{name}.weight", 0, out_axis(STREAM, 1)) for name in ("wte", "wpe")]
    dead: set[str] = set()
    for i in range(n):
        inner, stream, layer = layer_spaces(config, i, GPT2_NAMES)
        spaces.update(inner)
        stream_caps += stream
        tensors += layer
        if i + 1 in identity_blocks:
            dead |= set(inner)
    norm, head = n + 1, n + 2
    stream_caps.append(Capture(f"blocks.{norm}", "tokens", norm))
    tensors += norm_tags(f"blocks.{norm}.ln_f", norm, STREAM, batch_norm=False)
    tensors.append(tag(f"blocks.{head}.lm_head.weight", head, out_axis(LOGITS), in_axis(STREAM)))
    spaces[STREAM] = Space(STREAM, config.hidden, tuple(stream_caps))
    block_out = (STREAM,) * (n + 2) + (None,)
    inert = inert_norms(tensors, identity_blocks, GPT2_NAMES.norms)
    stages = (tuple(range(1, n + 1)),)
    return ModelGraph(spaces, tuple(tensors), stages, block_out, frozenset(dead), inert)


insert_identity = bert.insert_identity


def init_identity(block: nn.Module) -> None:
    """Zero a fresh layer's output projections: a pre-LN layer then is the identity."""
    with torch.no_grad():
        for dense in (block.attn_out, block.mlp_out):
            dense.weight.zero_()
            dense.bias.zero_()


def resize(config: GPT2NetConfig, widths: dict[str, int]) -> GPT2NetConfig:
    """Return the config with the widths of the given spaces replaced.

    Raises:
        ValueError: a layer's qk and vo widths differ or are not whole heads.
    """
    return replace(config, **bert.layer_widths(config, widths))


def check_pair(config_a: GPT2NetConfig, config_b: GPT2NetConfig) -> list[str]:
    """Return one sentence per property two GPT-2 configs must share and do not."""
    return differing_fields(config_a, config_b, SHARED_FIELDS, "GPT-2")
