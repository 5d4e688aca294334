"""ViT family: pre-LayerNorm vision transformers of any depth and width (docs/method.md secs. 5, 8).

Blocks: the patch embeddings (a conv of stride = kernel = patch size, the [CLS] token and the
position table, all writing the stream), one block per encoder layer, the final LayerNorm
(part of the trunk: a Hugging Face ViTModel's ``last_hidden_state`` is normalised), and the
head ([CLS] or mean pooling for a feature model, a linear classifier on the [CLS] state for
ViTForImageClassification). The state passed between blocks is the token tensor (B, 1 + P, H);
every token is a sample.

Spaces are those of BERT (``heterogui.models.bert``; the layer description is shared through
``bert.LayerNames``): ``stream`` (conv weight out-channels, [CLS] token and position rows on their
feature axis, attention-output and FFN-output projections, every LayerNorm), ``layer{i}.qk`` /
``layer{i}.vo`` (one head group per layer) and ``layer{i}.ffn``.

A pre-LN layer computes x + Attn(LN1(x)) then + FFN(LN2(.)): zeroing both output projections
makes it exactly the identity, so depth padding is exact and data-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from heterogui.models import bert
from heterogui.models.bert import STREAM, LayerNames, layer_spaces
from heterogui.models.bert_modules import Intermediate, SelfAttention
from heterogui.models.conv import channels_last_weights
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

VIT_NAMES = LayerNames(
    "attention.query",
    "attention.key",
    "attention.value",
    "attention_output",
    "intermediate.dense",
    "intermediate.act",
    "output",
    ("layernorm_before", "layernorm_after"),
    "residual",
)
insert_identity = bert.insert_identity
resize = bert.resize


@dataclass(frozen=True)
class ViTNetConfig:
    """A ViT encoder with per-layer head counts and intermediate sizes.

    num_labels: None for a feature model (the head pools token states: ``pooling`` "cls" or
    "mean"), else the classifier's output count.
    """

    image_size: int
    patch_size: int
    num_channels: int
    hidden: int
    head_dim: int
    heads: tuple[int, ...]
    intermediate: tuple[int, ...]
    num_labels: int | None = None
    pooling: str = "cls"
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        bert.check_layer_fields(self)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the patch size")

    @property
    def num_layers(self) -> int:
        """Return the number of encoder layers."""
        return len(self.heads)

    @property
    def num_patches(self) -> int:
        """Return the number of patch tokens (without [CLS])."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_classes(self) -> int:
        """Return the head's output width: labels, or the hidden width of a feature model."""
        return self.num_labels if self.num_labels is not None else self.hidden


class PatchEmbeddings(nn.Module):
    """Patch projection, [CLS] token and position embeddings (block 0)."""

    def __init__(self, c: ViTNetConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, c.hidden) * 0.02)
        self.position_embeddings = nn.Parameter(torch.randn(1, c.num_patches + 1, c.hidden) * 0.02)
        self.projection = channels_last_weights(
            nn.Conv2d(c.num_channels, c.hidden, c.patch_size, stride=c.patch_size)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Map images (B, C, S, S) to tokens (B, 1 + P, H)."""
        x = self.projection(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.position_embeddings


class ViTLayer(nn.Module):
    """One pre-LN layer: x + Attn(LN1(x)), then + FFN(LN2(.)); names in ``VIT_NAMES``."""

    def __init__(self, c: ViTNetConfig, heads: int, width: int):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)
        self.attention = SelfAttention(c.hidden, heads, c.head_dim)
        self.attention_output = nn.Linear(heads * c.head_dim, c.hidden)
        self.residual = nn.Identity()  # its output is the stream after the attention sub-layer
        self.layernorm_after = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)
        self.intermediate = Intermediate(c.hidden, width, c.hidden_act)
        self.output = nn.Linear(width, c.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map tokens (B, T, H) to tokens (B, T, H)."""
        if may_skip(self, (self.attention_output, self.output), (self.residual,)):
            x = self.residual(x + bias_of(self.attention_output, x))  # an identity layer
            return x + bias_of(self.output, x)
        x = self.residual(x + self.attention_output(self.attention(self.layernorm_before(x), None)))
        return x + self.output(self.intermediate(self.layernorm_after(x)))


class FinalNorm(nn.Module):
    """The encoder's closing LayerNorm (Hugging Face's ``layernorm``)."""

    def __init__(self, c: ViTNetConfig):
        super().__init__()
        self.layernorm = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise tokens (B, T, H)."""
        return self.layernorm(x)


class ViTHead(nn.Module):
    """[CLS] or mean pooling, then (for a classifier) a linear layer."""

    def __init__(self, c: ViTNetConfig):
        super().__init__()
        self.pooling = c.pooling if c.num_labels is None else "cls"
        self.classifier = nn.Linear(c.hidden, c.num_labels) if c.num_labels is not None else None

    @property
    def reads_first_token(self) -> bool:
        """Whether the head reads the [CLS] state only (``fusion.sequential``)."""
        return self.pooling == "cls"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map tokens (B, T, H) to features (B, H) or logits (B, num_labels)."""
        pooled = x[:, 0] if self.pooling == "cls" else x.mean(dim=1)
        return pooled if self.classifier is None else self.classifier(pooled)


class ViTNet(BlockNet):
    """A BlockNet of ViT blocks; ``hidden_states`` gives ViTModel's ``last_hidden_state``."""

    def hidden_states(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return the normalised token states (B, 1 + P, H)."""
        return self.run(pixels, 0, len(self.blocks) - 1)


def build(config: ViTNetConfig) -> ViTNet:
    """Return a freshly initialised network for ``config``."""
    blocks: list[nn.Module] = [PatchEmbeddings(config)]
    blocks += [
        ViTLayer(config, h, w) for h, w in zip(config.heads, config.intermediate, strict=True)
    ]
    return ViTNet([*blocks, FinalNorm(config), ViTHead(config)])


def graph(config: ViTNetConfig, identity_blocks: frozenset[int] = frozenset()) -> ModelGraph:
    """Describe the spaces and tensors; identity layers' qk, vo and ffn spaces are dead."""
    layout, n = "tokens", config.num_layers
    spaces = {INPUT: Space(INPUT, config.num_channels), LOGITS: Space(LOGITS, config.num_classes)}
    stream_caps = [Capture("blocks.0", layout, 0)]
    tensors = [
        tag("blocks.0.cls_token", 0, out_axis(STREAM, 2)),
        tag("blocks.0.position_embeddings", 0, out_axis(STREAM, 2)),
        tag("blocks.0.projection.weight", 0, out_axis(STREAM), in_axis(INPUT)),
        tag("blocks.0.projection.bias", 0, out_axis(STREAM)),
    ]
    dead: set[str] = set()
    for i in range(n):
        inner, stream, layer = layer_spaces(config, i, VIT_NAMES, layout)
        spaces.update(inner)
        stream_caps += stream
        tensors += layer
        if i + 1 in identity_blocks:
            dead |= set(inner)
    stream_caps.append(Capture(f"blocks.{n + 1}", layout, n + 1, f"blocks.{n + 1}.layernorm"))
    tensors += norm_tags(f"blocks.{n + 1}.layernorm", n + 1, STREAM, batch_norm=False)
    norm_outputs = tuple(
        Capture(name, layout, k, name)
        for k in range(1, n + 1)
        for name in (f"blocks.{k}.{norm}" for norm in VIT_NAMES.norms)
    )
    spaces[STREAM] = Space(STREAM, config.hidden, tuple(stream_caps), norm_outputs=norm_outputs)
    head = n + 2
    if config.num_labels is not None:
        tensors += [
            tag(f"blocks.{head}.classifier.weight", head, out_axis(LOGITS), in_axis(STREAM)),
            tag(f"blocks.{head}.classifier.bias", head, out_axis(LOGITS)),
        ]
    block_out = (STREAM,) * (n + 2) + (None,)
    inert = inert_norms(tensors, identity_blocks, VIT_NAMES.norms)
    stages = (tuple(range(1, n + 1)),)
    return ModelGraph(spaces, tuple(tensors), stages, block_out, frozenset(dead), inert)


def init_identity(block: nn.Module) -> None:
    """Zero a fresh layer's two output projections: a pre-LN layer is then exactly the identity."""
    with torch.no_grad():
        for dense in (block.attention_output, block.output):
            dense.weight.zero_()
            dense.bias.zero_()


SHARED_FIELDS = (
    ("image_size", "image sizes"),
    ("patch_size", "patch sizes"),
    ("num_channels", "input channels"),
    ("head_dim", "head dimensions"),
    ("hidden_act", "activations"),
    ("layer_norm_eps", "LayerNorm epsilons"),
)


def check_pair(config_a: ViTNetConfig, config_b: ViTNetConfig) -> list[str]:
    """Return one sentence per property two ViT configs must share and do not."""
    return bert.check_layer_pair(config_a, config_b, SHARED_FIELDS, "ViT")
