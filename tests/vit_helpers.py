"""Tiny random transformers ViTs for the ViT tests (``test_vit``, ``test_cli_vit``)."""

from __future__ import annotations

import torch


def tiny_vit(hidden=32, heads=4, inter=64, layers=3, seed=0, labels=None, patch=4):
    """Return a random transformers ViT of 8 x 8 grey images (a classifier with ``labels``)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=patch,
        num_channels=1,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        **({"num_labels": labels} if labels else {}),
    )
    model = ViTForImageClassification(config) if labels else ViTModel(config)
    with torch.no_grad():  # non-trivial LayerNorms and embeddings, like trained models
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(torch.rand_like(p) + 0.5)
            elif "layernorm" in name or "cls_token" in name or "position" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()
