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
from heterogui.datasets.text_tasks import calibration_sentences_rule
from heterogui.errors import ConfigError
from heterogui.models.bert_modules import pool
from heterogui.models.capture import to_device
from heterogui.pipeline import MergeResult, Prepared
from heterogui.progress import Progress
from heterogui.sources.base import SENTENCE_SIMILARITY
from heterogui.sources.base import Pair as ModelPair
from heterogui.tasks.base import (
    SIMILARITY,
    SPEARMAN,
    SWEEP,
    Calibration,
    Evaluation,
    Task,
    progress_steps,
    register,
)

Embedder = Callable[[dict[str, torch.Tensor]], torch.Tensor]
# several embeddings of one batch from one forward pass, by name
Embeddings = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
CALIBRATION_SIZE = 64  # quick first look; 256 sentences: MiniLM L6 + L3 analysis 2.6 s, 1 thread
CALIBRATION_BATCH = 32
MIN_SENTENCES = 16
MAX_COMPARED = 16


def embed(
    embedder: Embedder,
    tokenizer: Any,
    sentences: Sequence[str],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Return L2-normalised embeddings (N, H) of the sentences, on the CPU."""
    return embed_each(_alone(embedder), tokenizer, sentences, batch_size, device)[""]


@torch.no_grad()
def embed_each(
    embeddings: Embeddings,
    tokenizer: Any,
    sentences: Sequence[str],
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Return, per name, the L2-normalised embeddings (N, H) of the sentences, on the CPU."""
    rows: dict[str, list[torch.Tensor]] = {}
    for batch in tokenize(tokenizer, sentences, batch_size):
        for name, value in embeddings(to_device(batch, device)).items():
            rows.setdefault(name, []).append(
                torch.nn.functional.normalize(value.float(), dim=-1).cpu()
            )
    return {name: torch.cat(parts) for name, parts in rows.items()}


def _alone(embedder: Embedder) -> Embeddings:
    return lambda batch: {"": embedder(batch)}


def spearman(predicted: Sequence[float] | torch.Tensor, gold: Sequence[float]) -> float:
    """Return the Spearman rank correlation of two sequences of equal length."""
    value = spearmanr(torch.as_tensor(predicted).tolist(), list(gold)).statistic
    return float(value)


def pair_cosines(
    embeddings: Embeddings,
    tokenizer: Any,
    pairs: Sequence[Pair],
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Return, per embedding, the cosine similarity (P,) of every pair's embeddings."""
    sentences = sorted({s for p in pairs for s in (p.first, p.second)})
    index = {s: i for i, s in enumerate(sentences)}
    first = [index[p.first] for p in pairs]
    second = [index[p.second] for p in pairs]
    embedded = embed_each(embeddings, tokenizer, sentences, device=device)
    return {name: (emb[first] * emb[second]).sum(-1) for name, emb in embedded.items()}


def sts_spearman(
    embedder: Embedder, tokenizer: Any, pairs: Sequence[Pair], device: torch.device | str = "cpu"
) -> float:
    """Return the Spearman correlation of pair cosines with the labels."""
    return sts_spearmans(_alone(embedder), tokenizer, pairs, device)[""]


def sts_spearmans(
    embeddings: Embeddings,
    tokenizer: Any,
    pairs: Sequence[Pair],
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Return, per embedding, the Spearman correlation of pair cosines with the labels."""
    gold = [p.score for p in pairs]
    cosines = pair_cosines(embeddings, tokenizer, pairs, device)
    return {name: spearman(values, gold) for name, values in cosines.items()}


def network_embedder(module: torch.nn.Module) -> Embedder:
    """Return the embedder of a bert-family embedding network (its pooling head)."""
    return lambda batch: module(**batch)


def merged_embeddings(model: Any) -> Embeddings:
    """Return the embeddings of a merged model of two embedding models, from one trunk pass.

    "merged": the merged token states at the stop point pooled as the merge's trunk config says
    (the recipe's transformer.pooling: what an exported model's sentence-transformers modules
    give);
    with nothing merged (stop 0) the two models side by side, embedded as their ensemble is;
    "head A" / "head B": each model's own head after unmerging (x_m = U_m x*).
    """

    def embeddings(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = model.features(**batch)
        head_a, head_b = model.heads(state)
        merged = _pooled(model, state) if isinstance(state, tuple) else side_by_side(head_a, head_b)
        return {"merged": merged, "head A": head_a, "head B": head_b}

    return embeddings


def merged_embedder(model: Any) -> Embedder:
    """Return the "merged" embedder of ``merged_embeddings`` alone (no heads run unless nothing
    was merged)."""

    def embed(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        state = model.features(**batch)
        return (
            _pooled(model, state) if isinstance(state, tuple) else side_by_side(*model.heads(state))
        )

    return embed


def _pooled(model: Any, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Return the merged sentence embeddings of a state, pooled as the merge's trunk says."""
    return pool(state, getattr(model.spec.trunk_config, "pooling", "mean"))


def side_by_side(*embeddings: torch.Tensor) -> torch.Tensor:
    """Return the concatenation of the models' normalised embeddings (how an ensemble embeds)."""
    return torch.cat([torch.nn.functional.normalize(e.float(), dim=-1) for e in embeddings], -1)


def ensemble_embeddings(first: torch.nn.Module, second: torch.nn.Module) -> Embeddings:
    """Return each model's embedding ("a", "b") and their ensemble from one pass of each.

    "ensemble": the concatenation of the two models' normalised embeddings.
    """

    def embeddings(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, b = first(**batch), second(**batch)
        return {"a": a, "b": b, "ensemble": side_by_side(a, b)}

    return embeddings


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
    batches = tokenize(tokenizer_of(pair), sentences, ref.batch_size, fold=True)
    short = ref.source == "sentences" and ref.size is not None and len(sentences) != ref.size
    why = calibration_sentences_rule(ref.size) if short else None
    return Calibration(done, batches, len(sentences), why)


def is_sentences(ref: DataRef) -> bool:
    """Return whether ``ref`` names sentences to calibrate on (built-in or a .txt file)."""
    return ref.source == "sentences" or ref.has_suffix(".txt")


class SentenceSimilarity(Task):
    """Sentence embedding models (BERT encoders), scored on graded sentence pairs."""

    kind = SENTENCE_SIMILARITY
    title = "sentence similarity"
    inputs = "text"
    panels = (SPEARMAN, SIMILARITY, SWEEP)
    metric = "Spearman"
    score_digits = 4

    def data_help(self, role: str) -> str:
        """Return what text data to give."""
        if role == "evaluation":
            return 'give "sts" (built-in scored pairs) or a .tsv file of score<TAB>s1<TAB>s2'
        return 'give "sentences" (built-in) or a .txt file with one sentence per line'

    def default_calibration(self, pair: ModelPair, size: int | None = None) -> DataRef:
        """Return the built-in calibration sentences."""
        return DataRef(
            "sentences",
            "calibration",
            CALIBRATION_SIZE if size is None else size,
            CALIBRATION_BATCH,
        )

    def default_evaluation(self, pair: ModelPair) -> DataRef | None:
        """Return the built-in scored sentence pairs."""
        return DataRef("sts", "test", None, CALIBRATION_BATCH)

    def accepts(self, ref: DataRef) -> bool:
        """Return whether ``ref`` names sentences or scored sentence pairs."""
        return is_sentences(ref) or ref.source == "sts" or ref.has_suffix(".tsv")

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
        return Evaluation(done, pairs, len(pairs))

    def score_models(
        self, prepared: Prepared, ev: Evaluation, pair: ModelPair, progress: Progress | None = None
    ) -> dict[str, float]:
        """Return the Spearman of A, B and their ensemble (concatenated embeddings), to 4
        places as the merge's (``score_merged``)."""
        a, b = prepared.net_a.module, prepared.net_b.module
        scores = _scores(ensemble_embeddings(a, b), pair, ev, prepared.device, progress)
        return {name: round(value, 4) for name, value in scores.items()}

    def score_merged(
        self, result: MergeResult, ev: Evaluation, pair: ModelPair, progress: Progress | None = None
    ) -> dict[str, float]:
        """Return the merged model's Spearman: exported trunk ("merged"), "head A", "head B"."""
        embeddings = merged_embeddings(result.model)
        scores = _scores(embeddings, pair, ev, result.prepared.device, progress)
        return {name: round(value, 4) for name, value in scores.items()}

    def columns(self, scores: Any) -> dict[str, float | None]:
        """Return the Spearman column (merged models: the exported trunk's)."""
        return {"Spearman": self.headline(scores)}

    def headline(self, scores: Any) -> float | None:
        """Return the Spearman of a model (a merge: its exported trunk, pooled as it says)."""
        if isinstance(scores, dict):
            return scores.get("merged")
        return scores

    def to_json(self, scores: Any) -> Any:
        """Return the scores as they are (floats or a dict of floats)."""
        return scores

    def merge_rows(self, merged: Any) -> list[tuple[str, Any]]:
        """Return the merge's heads: each model's own head after unmerging (the outputs
        ``load_merged`` gives; a partial merge's "merged" is its trunk at the stop point)."""
        if not isinstance(merged, dict):
            return []
        return [(f"merged, {k}", merged[k]) for k in ("head A", "head B") if k in merged]

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
        a, b = prepared.net_a.module, prepared.net_b.module
        embedded = embed_each(ensemble_embeddings(a, b), tok, sentences, device=dev)
        named = {"A": embedded["a"], "B": embedded["b"]}
        if result is not None:
            heads = embed_each(merged_embeddings(result.model), tok, sentences, device=dev)
            named["merged (head A: A's space)"] = heads["head A"]
            named["merged (head B: B's space)"] = heads["head B"]
        return {name: emb @ emb.T for name, emb in named.items()}


SENTENCES = register(SentenceSimilarity())


def _scores(
    embeddings: Embeddings,
    pair: ModelPair,
    ev: Evaluation,
    device: torch.device | str,
    progress: Progress | None,
) -> dict[str, float]:
    """Return the Spearman of every embedding on the evaluation pairs (one pass for all)."""
    mark = progress_steps(progress, {"embed": 1.0})
    mark("embed")
    scores = sts_spearmans(embeddings, tokenizer_of(pair), ev.data, device)
    mark(None)
    return scores
