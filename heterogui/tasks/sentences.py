"""Sentence similarity: Spearman correlation of embedding cosines with graded pair labels.

A model is scored by the Spearman rank correlation between the cosine similarity of its two
sentence embeddings and the label, over all pairs (the built-in 168 pairs, or a user's .tsv).
An *embedder* is any function from a tokenizer batch (dict of (B, T) tensors) to sentence
embeddings (B, H). The merged model gives three: its mean-pooled merged token states (what an
exported folder gives) and each model's own head after unmerging (x_m = U_m x*).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from scipy.stats import spearmanr

from heterogui.config import DataRef
from heterogui.datasets.refs import (
    load_sentence_pairs,
    load_sentences,
    pair_lines,
    text_sha256,
    tokenize,
)
from heterogui.datasets.sentence_pairs import Pair
from heterogui.errors import ConfigError
from heterogui.models.bert_modules import mean_pool
from heterogui.models.capture import to_device
from heterogui.pipeline import MergeResult, Prepared, Progress
from heterogui.sources.base import SENTENCE_SIMILARITY
from heterogui.sources.base import Pair as ModelPair
from heterogui.tasks.base import (
    SIMILARITY,
    SPEARMAN,
    Calibration,
    Evaluation,
    Task,
    progress_steps,
    register,
    size_of,
)

Embedder = Callable[[dict[str, torch.Tensor]], torch.Tensor]
CALIBRATION_SIZE = 64  # MiniLM's feature pass takes ~20 s for 256 sentences on 2 CPU cores
CALIBRATION_BATCH = 32
MIN_SENTENCES = 16
MAX_COMPARED = 16


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
    embedder: Embedder, tokenizer: Any, pairs: Sequence[Pair], device: torch.device | str = "cpu"
) -> float:
    """Return the Spearman correlation of pair cosines with the labels."""
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


def tokenizer_of(pair: ModelPair) -> Any:
    """Return model A's tokenizer (the pre-flight checked that B shares its vocabulary).

    Raises:
        ConfigError: model A came without tokenizer files.
    """
    if pair.a.tokenizer is None:
        raise ConfigError(
            f"model A ({pair.a.name}) has no tokenizer files (vocab.txt or tokenizer.json): "
            "put the tokenizer of the model in its folder"
        )
    return pair.a.tokenizer


def text_calibration(ref: DataRef, pair: ModelPair) -> Calibration:
    """Draw calibration sentences and tokenise them with model A's tokenizer.

    Raises:
        ConfigError: not a sentence source, too few sentences, or changed sentences.
    """
    sentences = load_sentences(ref)
    if len(sentences) < MIN_SENTENCES and ref.size is None:
        raise ConfigError(
            f"{ref.source} holds {len(sentences)} sentences; give at least {MIN_SENTENCES}"
        )
    done = dataclasses.replace(ref, sha256=text_sha256(sentences))
    batches = tokenize(tokenizer_of(pair), sentences, ref.batch_size)
    return Calibration(done, batches, len(sentences))


def is_sentences(ref: DataRef) -> bool:
    """Return whether ``ref`` names sentences to calibrate on (built-in or a .txt file)."""
    return ref.source == "sentences" or ref.source.endswith(".txt")


class SentenceSimilarity(Task):
    """Sentence embedding models (BERT encoders), scored on graded sentence pairs."""

    kind = SENTENCE_SIMILARITY
    title = "sentence similarity"
    inputs = "text"
    panels = (SPEARMAN, SIMILARITY)
    metric = "Spearman"

    def data_help(self, role: str) -> str:
        """Return what text data to give."""
        if role == "evaluation":
            return 'give "sts" (built-in scored pairs) or a .tsv file of score<TAB>s1<TAB>s2'
        return 'give "sentences" (built-in) or a .txt file with one sentence per line'

    def default_calibration(self, pair: ModelPair, size: int | None = None) -> DataRef:
        """Return the built-in calibration sentences."""
        return DataRef("sentences", "calibration", size or CALIBRATION_SIZE, CALIBRATION_BATCH)

    def default_evaluation(self, pair: ModelPair) -> DataRef | None:
        """Return the built-in scored sentence pairs."""
        return DataRef("sts", "test", None, CALIBRATION_BATCH)

    def accepts(self, ref: DataRef) -> bool:
        """Return whether ``ref`` names sentences or scored sentence pairs."""
        return is_sentences(ref) or ref.source == "sts" or ref.source.endswith(".tsv")

    def calibration(self, ref: DataRef, pair: ModelPair) -> Calibration:
        """Draw and tokenise the calibration sentences."""
        self.check(ref, "calibration")
        if not is_sentences(ref):
            raise ConfigError(
                f"calibration.source {ref.source!r} names scored sentence pairs, which are for "
                f"evaluation only; {self.data_help('calibration')}"
            )
        return text_calibration(ref, pair)

    def evaluation(self, ref: DataRef, pair: ModelPair) -> Evaluation:
        """Draw the scored sentence pairs."""
        self.check(ref, "evaluation")
        pairs = load_sentence_pairs(ref)
        done = dataclasses.replace(ref, sha256=text_sha256(pair_lines(pairs)))
        return Evaluation(done, pairs)

    def score_models(
        self, prepared: Prepared, ev: Evaluation, pair: ModelPair, progress: Progress | None = None
    ) -> dict[str, float]:
        """Return the Spearman of A, B and their ensemble (concatenated embeddings)."""
        a, b, dev = prepared.net_a.module, prepared.net_b.module, prepared.device
        tok = tokenizer_of(pair)
        embedders = {
            "a": network_embedder(a),
            "b": network_embedder(b),
            "ensemble": ensemble_embedder(a, b),
        }
        n_a, n_b = size_of(a), size_of(b)
        mark = progress_steps(progress, {"a": n_a, "b": n_b, "ensemble": n_a + n_b})
        scores = {}
        for k, e in embedders.items():
            mark(k)
            scores[k] = sts_spearman(e, tok, ev.data, dev)
        mark(None)
        return scores

    def score_merged(
        self, result: MergeResult, ev: Evaluation, pair: ModelPair, progress: Progress | None = None
    ) -> dict[str, float]:
        """Return the merged model's Spearman: exported trunk ("merged"), "head A", "head B"."""
        tok, dev = tokenizer_of(pair), result.prepared.device
        embedders = merged_embedders(result.model)
        mark = progress_steps(progress, dict.fromkeys(embedders, 1.0))
        scores = {}
        for k, e in embedders.items():
            mark(k)
            scores[k] = round(sts_spearman(e, tok, ev.data, dev), 4)
        mark(None)
        return scores

    def columns(self, scores: Any) -> dict[str, float | None]:
        """Return the Spearman column (merged models: the exported trunk's)."""
        return {"Spearman": self.headline(scores)}

    def headline(self, scores: Any) -> float | None:
        """Return the Spearman of a model (a merge: its exported, mean-pooled trunk)."""
        if isinstance(scores, dict):
            return scores.get("merged")
        return scores

    def to_json(self, scores: Any) -> Any:
        """Return the scores as they are (floats or a dict of floats)."""
        return scores

    @torch.no_grad()
    def similarity(
        self, prepared: Prepared, result: MergeResult | None, pair: ModelPair, sentences: list[str]
    ) -> dict[str, torch.Tensor]:
        """Return the cosine similarity matrix (N, N) of ``sentences`` per model.

        Keys: "A", "B", and with a merge "merged (head A: A's space)", "merged (head B: B's
        space)".

        Raises:
            ConfigError: fewer than 2 or more than 16 sentences.
        """
        if not 2 <= len(sentences) <= MAX_COMPARED:
            raise ConfigError(
                f"type 2 to {MAX_COMPARED} sentences, one per line (got {len(sentences)})"
            )
        tok, dev = tokenizer_of(pair), prepared.device
        embedders = {
            "A": network_embedder(prepared.net_a.module),
            "B": network_embedder(prepared.net_b.module),
        }
        if result is not None:
            heads = merged_embedders(result.model)
            embedders["merged (head A: A's space)"] = heads["head A"]
            embedders["merged (head B: B's space)"] = heads["head B"]
        out = {}
        for name, embedder in embedders.items():
            emb = embed(embedder, tok, sentences, device=dev)
            out[name] = emb @ emb.T
        return out


SENTENCES = register(SentenceSimilarity())
