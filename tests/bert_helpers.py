"""Tiny random BERT encoders and token batches shared by the BERT tests."""

from __future__ import annotations

import torch

VOCAB = 100


def tiny_hf(hidden=32, heads=4, inter=64, layers=3, seed=0, labels=None):
    """Return a random transformers BERT (a classifier when ``labels`` is given), eval mode."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        **({"num_labels": labels} if labels else {}),
    )
    model = BertForSequenceClassification(config) if labels else BertModel(config)
    with torch.no_grad():  # trained models have non-trivial LayerNorms; so should the tests
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(torch.rand_like(p) + 0.5)
            elif "LayerNorm.bias" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def token_batch(seed: int, n: int = 16, length: int = 12) -> dict[str, torch.Tensor]:
    """Return random token ids with padded rows of different lengths."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=gen)
    lens = torch.randint(3, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None] < lens[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def batches(count: int = 6) -> list[dict[str, torch.Tensor]]:
    return [token_batch(s) for s in range(count)]


def real(x: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return the rows of token states (B, T, H) at real tokens."""
    return x[batch["attention_mask"].bool()]
