"""The modules of the BERT family (Hugging Face parameter names; see ``heterogui.models.bert``).

The state passed between blocks is (hidden (B, T, H), attention_mask (B, T)); the embeddings
block takes the tokenizer's dict and the head returns a tensor. Attention uses PyTorch's
scaled_dot_product_attention with a boolean key mask; every layer may have its own head count
and intermediate width.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from heterogui.models.graph import BlockNet
from heterogui.models.idle import bias_of, may_skip

if TYPE_CHECKING:
    from heterogui.models.bert import BertNetConfig

ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
    "silu": lambda: nn.SiLU(),
    "swish": lambda: nn.SiLU(),
}


class Embeddings(nn.Module):
    """Word + token-type + position embeddings, then LayerNorm (Hugging Face names)."""

    def __init__(self, c: BertNetConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_positions, c.hidden)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden)
        self.LayerNorm = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Map a tokenizer dict (input_ids (B, T), optional masks) to (hidden (B, T, H), mask)."""
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        types = inputs.get("token_type_ids")
        types = torch.zeros_like(ids) if types is None else types
        positions = torch.arange(ids.shape[1], device=ids.device)[None, :]
        x = self.word_embeddings(ids) + self.token_type_embeddings(types)
        x = x + self.position_embeddings(positions)
        return self.LayerNorm(x), mask


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with ``heads`` heads of ``head_dim`` features."""

    def __init__(self, hidden: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.query = nn.Linear(hidden, heads * head_dim)
        self.key = nn.Linear(hidden, heads * head_dim)
        self.value = nn.Linear(hidden, heads * head_dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Attend: x (B, T, H), keep (B, 1, 1, T) bool -> (B, T, heads * head_dim)."""
        b, t, _ = x.shape

        def split(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)

        out = nn.functional.scaled_dot_product_attention(
            split(self.query), split(self.key), split(self.value), attn_mask=keep
        )
        return out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)


class DenseNorm(nn.Module):
    """LayerNorm(dense(x) + residual): the output half of a post-LN sub-layer."""

    def __init__(self, n_in: int, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(n_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Project x (B, T, n_in), add residual (B, T, H), normalise."""
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    """Self-attention sub-layer (Hugging Face's ``attention.self`` / ``attention.output``)."""

    def __init__(self, c: BertNetConfig, heads: int):
        super().__init__()
        self.self = SelfAttention(c.hidden, heads, c.head_dim)
        self.output = DenseNorm(heads * c.head_dim, c.hidden, c.layer_norm_eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Return LayerNorm(x + attention(x)), x: (B, T, H)."""
        return self.output(self.self(x, keep), x)


class Intermediate(nn.Module):
    """The FFN's first projection and activation (the ``act`` output is the ffn space)."""

    def __init__(self, hidden: int, width: int, act: str):
        super().__init__()
        self.dense = nn.Linear(hidden, width)
        self.act = ACTIVATIONS[act]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, T, H) to (B, T, width)."""
        return self.act(self.dense(x))


class Layer(nn.Module):
    """One post-LN encoder layer; maps the state (hidden, mask) to the next state."""

    def __init__(self, c: BertNetConfig, heads: int, width: int):
        super().__init__()
        self.attention = Attention(c, heads)
        self.intermediate = Intermediate(c.hidden, width, c.hidden_act)
        self.output = DenseNorm(width, c.hidden, c.layer_norm_eps)

    def forward(self, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Run the layer on (hidden (B, T, H), mask (B, T))."""
        x, mask = state
        dense, norm = self.attention.output.dense, self.attention.output.LayerNorm
        # an identity layer discards its attention (its FFN is not zero: bert_identity)
        if may_skip(self, (dense,), (norm, self.intermediate, self.output)):
            a = norm(bias_of(dense, x) + x)
        else:
            a = self.attention(x, mask[:, None, None, :].bool())
        return self.output(self.intermediate(a), a), mask


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average token states over real tokens: hidden (B, T, H), mask (B, T) -> (B, H)."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


class PoolHead(nn.Module):
    """The head of an embedding model: mean or [CLS] pooling (no parameters)."""

    def __init__(self, pooling: str):
        super().__init__()
        self.pooling = pooling

    @property
    def reads_first_token(self) -> bool:
        """Whether the head reads the first token's state only (``fusion.sequential``)."""
        return self.pooling == "cls"

    def forward(self, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Return the sentence embeddings (B, H) of a state (hidden (B, T, H), mask)."""
        return pool(state, self.pooling)


def pool(state: tuple[torch.Tensor, torch.Tensor], pooling: str) -> torch.Tensor:
    """Return sentence embeddings (B, H) of a state (hidden (B, T, H), mask): the mean of the
    unmasked token states ("mean") or the first token's ("cls")."""
    hidden, mask = state
    return mean_pool(hidden, mask) if pooling == "mean" else hidden[:, 0]


class Pooler(nn.Module):
    """BERT's pooler: tanh(dense(hidden of the first token))."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Map (B, T, H) to (B, H)."""
        return torch.tanh(self.dense(hidden[:, 0]))


class ClassifierHead(nn.Module):
    """BertForSequenceClassification's head: pooler, then a linear classifier."""

    reads_first_token = True  # the pooler reads [CLS] (``fusion.sequential``)

    def __init__(self, hidden: int, num_labels: int):
        super().__init__()
        self.pooler = Pooler(hidden)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Return logits (B, num_labels)."""
        return self.classifier(self.pooler(state[0]))


class BertNet(BlockNet):
    """A BlockNet called like a Hugging Face model: ``net(input_ids=..., attention_mask=...)``."""

    def forward(
        self,
        input_ids: torch.Tensor | dict[str, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the head's output: embeddings (B, H) or logits (B, num_labels)."""
        return self.run(_inputs(input_ids, attention_mask, token_type_ids))

    def hidden_states(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Return the last layer's token states (B, T, H)."""
        return self.run(_inputs(**inputs), 0, len(self.blocks) - 1)[0]


def _inputs(
    input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None
) -> dict[str, torch.Tensor]:
    if isinstance(input_ids, dict):
        return input_ids
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }
