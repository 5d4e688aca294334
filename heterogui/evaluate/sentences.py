"""Sentence similarity: Spearman correlation of embedding cosines with graded labels.

The pairs live in ``heterogui/data/sts_pairs.tsv``: 168 pairs written for this project (28 anchor
sentences on varied everyday topics, each paired with six sentences graded 5 = same meaning down
to 0 = unrelated). A model is scored by the Spearman rank correlation between the cosine
similarity of its two sentence embeddings and the label, over all pairs.

An *embedder* is any function from a tokenizer batch (dict of (B, T) tensors) to sentence
embeddings (B, H); ``network_embedder`` and ``merged_embedders`` make them from heterogui models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

from heterogui.errors import ConfigError
from heterogui.models.bert_modules import mean_pool
from heterogui.models.capture import to_device

Embedder = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Pair:
    """Two sentences and their similarity label in [0, 5]."""

    first: str
    second: str
    score: float


def load_pairs(path: str | Path | None = None) -> list[Pair]:
    """Read scored sentence pairs from a TSV (score, sentence1, sentence2; '#' comments).

    Raises:
        ConfigError: a malformed line or a score outside [0, 5].
    """
    if path is None:
        text = resources.files("heterogui").joinpath("data/sts_pairs.tsv").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#") or line.startswith("score\t"):
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise ConfigError(f"line {number}: expected score<TAB>sentence1<TAB>sentence2")
        score = float(fields[0])
        if not 0 <= score <= 5:
            raise ConfigError(f"line {number}: score {score} is outside [0, 5]")
        pairs.append(Pair(fields[1], fields[2], score))
    return pairs


def tokenize(tokenizer: Any, sentences: Sequence[str], batch_size: int = 32) -> list[dict]:
    """Return padded tokenizer batches (dicts of (B, T) int64 tensors) of the sentences."""
    return [
        dict(tokenizer(list(sentences[i : i + batch_size]), padding=True, return_tensors="pt"))
        for i in range(0, len(sentences), batch_size)
    ]


@torch.no_grad()
def embed(
    embedder: Embedder,
    tokenizer: Any,
    sentences: Sequence[str],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Return L2-normalised embeddings (N, H) of the sentences, on the CPU."""
    rows = [
        torch.nn.functional.normalize(embedder(to_device(b, device)).float(), dim=-1).cpu()
        for b in tokenize(tokenizer, sentences, batch_size)
    ]
    return torch.cat(rows)


def spearman(predicted: Sequence[float] | torch.Tensor, gold: Sequence[float]) -> float:
    """Return the Spearman rank correlation of two sequences of equal length."""
    value = spearmanr(torch.as_tensor(predicted).tolist(), list(gold)).statistic
    return float(value)


def pair_cosines(
    embedder: Embedder, tokenizer: Any, pairs: Sequence[Pair], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Return the cosine similarity (P,) of every pair's embeddings."""
    sentences = sorted({s for p in pairs for s in (p.first, p.second)})
    index = {s: i for i, s in enumerate(sentences)}
    emb = embed(embedder, tokenizer, sentences, device=device)
    first = emb[[index[p.first] for p in pairs]]
    second = emb[[index[p.second] for p in pairs]]
    return (first * second).sum(-1)


def sts_spearman(
    embedder: Embedder,
    tokenizer: Any,
    pairs: Sequence[Pair] | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """Return the Spearman correlation of pair cosines with the labels (default: built-in set)."""
    pairs = load_pairs() if pairs is None else pairs
    return spearman(pair_cosines(embedder, tokenizer, pairs, device), [p.score for p in pairs])


def network_embedder(module: torch.nn.Module) -> Embedder:
    """Return the embedder of a bert-family embedding network (its pooling head)."""
    return lambda batch: module(**batch)


def merged_embedders(model: Any) -> dict[str, Embedder]:
    """Return the embedders of a merged model of two embedding models.

    "merged": mean-pooled merged token states at the stop point (what an exported model gives);
    "head A" / "head B": each model's own head after unmerging (x_m = U_m x*).
    """

    def trunk(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden, mask = model.features(**batch)
        return mean_pool(hidden, mask)

    return {
        "merged": trunk,
        "head A": lambda batch: model(**batch)[0],
        "head B": lambda batch: model(**batch)[1],
    }


def ensemble_embedder(first: torch.nn.Module, second: torch.nn.Module) -> Embedder:
    """Return the concatenation of two models' normalised embeddings (the ensemble reference)."""

    def both(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [torch.nn.functional.normalize(m(**batch), dim=-1) for m in (first, second)]
        return torch.cat(parts, dim=-1)

    return both
