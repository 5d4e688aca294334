"""Convert transformers ViTModel / ViTForImageClassification to and from the ViT family.

Block names (``heterogui.models.vit``) <-> Hugging Face names (transformers 5):

- ``blocks.0.{cls_token, position_embeddings, projection.*}`` <-> ``embeddings.cls_token``,
  ``embeddings.position_embeddings``, ``embeddings.patch_embeddings.projection.*``;
- ``blocks.{i+1}.attention.{query,key,value}``, ``attention_output``, ``intermediate.dense``,
  ``output``, ``layernorm_before/after`` <-> ``layers.{i}.attention.{q,k,v,o}_proj``,
  ``mlp.fc1``, ``mlp.fc2``, ``layernorm_before/after``;
- ``blocks.{L+1}.layernorm`` <-> ``layernorm``; ``blocks.{L+2}.classifier`` <-> ``classifier``.

The pooler of a ViTModel is not used (the head pools token states) and exported as zeros.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import torch

from heterogui.errors import ModelLoadError
from heterogui.models.conv import channels_last_weights
from heterogui.models.family import Network
from heterogui.models.hf.common import adapted, encoder_shape, load_pretrained
from heterogui.models.vit import ViTNetConfig, build

_EMBED = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "position_embeddings",
    "embeddings.patch_embeddings.projection.weight": "projection.weight",
    "embeddings.patch_embeddings.projection.bias": "projection.bias",
}
_LAYER_NAMES = {
    "attention.q_proj": "attention.query",
    "attention.k_proj": "attention.key",
    "attention.v_proj": "attention.value",
    "attention.o_proj": "attention_output",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output",
    "layernorm_before": "layernorm_before",
    "layernorm_after": "layernorm_after",
}
_HF_LAYER = re.compile(r"layers\.(\d+)\.(.+)\.(weight|bias)")


def config_from_hf(hf_config: Any, num_labels: int | None, pooling: str = "cls") -> ViTNetConfig:
    """Return the vit-family config of a transformers ``ViTConfig``.

    Raises:
        ModelLoadError: another model type, no Q/K/V biases, or heads that do not divide hidden.
    """
    if getattr(hf_config, "model_type", None) != "vit":
        raise ModelLoadError(f"model_type {hf_config.model_type!r} is not 'vit'; use a ViT model")
    if not getattr(hf_config, "qkv_bias", True):
        raise ModelLoadError(
            "ViT models without Q/K/V biases (qkv_bias=False) are not supported: heterogui's "
            "ViT blocks carry them; merge ViTs saved with qkv_bias=True"
        )
    return ViTNetConfig(
        image_size=int(hf_config.image_size),
        patch_size=int(hf_config.patch_size),
        num_channels=int(hf_config.num_channels),
        num_labels=num_labels,
        pooling=pooling,
        **encoder_shape(hf_config),
    )


def state_from_hf(state: dict[str, torch.Tensor], config: ViTNetConfig) -> dict[str, torch.Tensor]:
    """Rename a ViTModel / ViTForImageClassification state dict into block names."""
    n, out = config.num_layers, {}
    for key, value in state.items():
        key = key.removeprefix("vit.")
        match = _HF_LAYER.fullmatch(key)
        if key in _EMBED:
            out[f"blocks.0.{_EMBED[key]}"] = value
        elif match and match.group(2) in _LAYER_NAMES:
            name = _LAYER_NAMES[match.group(2)]
            out[f"blocks.{int(match.group(1)) + 1}.{name}.{match.group(3)}"] = value
        elif key.startswith("layernorm."):
            out[f"blocks.{n + 1}.{key}"] = value
        elif key.startswith("classifier.") and config.num_labels is not None:
            out[f"blocks.{n + 2}.{key}"] = value
    return out


def state_to_hf(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename trunk block names into ViTModel names (inverse of ``state_from_hf``)."""
    embed = {v: k for k, v in _EMBED.items()}
    layer = {v: k for k, v in _LAYER_NAMES.items()}
    out = {}
    for key, value in state.items():
        k, rest = key.removeprefix("blocks.").split(".", 1)
        if int(k) == 0:
            out[embed[rest]] = value
        elif int(k) <= num_layers:
            name, leaf = rest.rsplit(".", 1)
            out[f"layers.{int(k) - 1}.{layer[name]}.{leaf}"] = value
        elif int(k) == num_layers + 1:
            out[rest] = value
    return out


def network_from_hf(
    model: Any, label: str = "model", pooling: str = "cls", copy: bool = True
) -> Network:
    """Convert a loaded transformers ViT (the caller's model is untouched; copy False: the
    network takes its float32 tensors, for a model loaded only to be converted).

    Raises:
        ModelLoadError: unsupported config, or weights that do not fill the network.
    """
    classifier = getattr(model, "classifier", None)
    num_labels = int(classifier.out_features) if isinstance(classifier, torch.nn.Linear) else None
    config = config_from_hf(model.config, num_labels, pooling)
    module = adapted(
        partial(build, config),
        state_from_hf(model.state_dict(), config),
        copy,
        label,
        "ViT",
        "ViTModel or ViTForImageClassification",
    )
    channels_last_weights(module)  # the patch projection, as a built ViT lays it out
    return Network(config, module, None, frozenset(), label)


def load_vit(
    path: str | Path,
    *,
    pooling: str = "cls",
    device: str | torch.device = "cpu",
    label: str | None = None,
) -> tuple[Network, None]:
    """Load a ViT folder or hub id as a vit-family Network (no tokenizer: None).

    A folder whose config names ``ViTForImageClassification`` keeps its classifier.

    Raises:
        ModelLoadError: a missing folder, missing weights, or an unsupported model.
    """
    model, _, name = load_pretrained(path, "AutoModelForImageClassification", "ViT")
    net = network_from_hf(model, label or Path(name).name, pooling, copy=False)
    net.module.to(device)
    return net, None
