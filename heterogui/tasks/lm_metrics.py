"""Scores of causal language models: perplexity, bits per byte, generation and collapse alarms.

Pure functions, independent of any model class. A model is a *logits function*: a callable
from a tokenizer batch ``{"input_ids": (B, T), "attention_mask": (B, T)}`` (right padding) to
next-token logits (B, T, V); position t predicts token t + 1. Negative log-likelihoods are in
nats, summed in float64 over the real (non-pad) target tokens. Bits per byte divide by the UTF-8
bytes of the scored text instead of the tokens, so models with different tokenizers compare
(the first token of a text is context, not a target: a tokenizer that adds a BOS token scores
every token of the text).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from heterogui.datasets.refs import batch_slices, text_limit
from heterogui.errors import ConfigError
from heterogui.models.lengths import by_length

LogitsFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]
# several models' logits of one batch, by name (each model run once)
NamedLogitsFn = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
# Rows of (N, V) logits turned into float64 log-probabilities at a time (bounds the memory).
_ROWS = 1024


def _pad_token(tokenizer: Any) -> None:
    """Give a tokenizer without a pad token one: its eos token, else the token of id 0.

    Padding is masked (it is never read, scored or attended to), so any token of the
    vocabulary pads: a folder whose tokenizer.json came without tokenizer_config.json names no
    special tokens, and was refused with advice a recipe cannot follow.
    """
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)


def token_batches(
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int,
    max_tokens: int = 128,
    fold: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Return right-padded batches {"input_ids", "attention_mask"} ((B, T) int64) of the texts.

    Texts are cut at ``max_tokens`` tokens, or fewer where the models read fewer
    (``datasets.refs.text_limit``). A tokenizer without a pad token gets its eos token (else
    the token of id 0). The padding itself is token 0 in ``input_ids``: masked, it changes
    nothing a model computes, and a pad token added past the model's vocabulary (a
    fine-tuning's ``<pad>`` at id ``vocab_size``) would index past its embedding.
    fold: calibration batches (a last one under 4 texts joins the one before:
    ``datasets.refs.batch_slices``).

    Raises:
        ConfigError: batch_size under 1 or max_tokens under 2.
    """
    if batch_size < 1 or max_tokens < 2:
        raise ConfigError(
            f"batch_size {batch_size} and max_tokens {max_tokens}: use a batch_size of at least "
            "1 and max_tokens of at least 2"
        )
    _pad_token(tokenizer)
    max_tokens = text_limit(tokenizer, max_tokens)
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        batches = []
        for part in batch_slices(len(texts), batch_size, fold):
            encoded = tokenizer(
                list(texts[part]),
                padding=True,
                truncation=True,
                max_length=max_tokens,
                return_tensors="pt",
            )
            mask = encoded["attention_mask"]
            ids = encoded["input_ids"].masked_fill(mask == 0, 0)
            batches.append({"input_ids": ids, "attention_mask": mask})
    finally:
        tokenizer.padding_side = side
    return batches


def scored_bytes(tokenizer: Any, texts: Sequence[str], max_tokens: int = 128) -> int:
    """Return the UTF-8 bytes of the texts that ``token_batches`` keeps (all of a text that fits
    in ``max_tokens`` tokens; the start that the first ``max_tokens`` tokens cover otherwise).

    The start is found from the tokenizer's character offsets, or by decoding the kept tokens
    for a tokenizer without offsets.
    """
    max_tokens = text_limit(tokenizer, max_tokens)
    total = 0
    for text in texts:
        if len(tokenizer(text, verbose=False)["input_ids"]) <= max_tokens:  # a length, no run
            total += len(text.encode("utf-8"))
        elif getattr(tokenizer, "is_fast", False):
            kept = tokenizer(
                text, truncation=True, max_length=max_tokens, return_offsets_mapping=True
            )
            end = max((stop for _, stop in kept["offset_mapping"]), default=0)
            total += len(text[:end].encode("utf-8"))
        else:
            kept = tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
            total += len(tokenizer.decode(kept, skip_special_tokens=True).encode("utf-8"))
    return total


def nll_sums(logits_fn: LogitsFn, batches: Sequence[dict[str, torch.Tensor]]) -> tuple[float, int]:
    """Return (next-token negative log-likelihood summed over the batches in nats, tokens).

    Every real token after the first of each row is a target (padding is never one); a
    token's negative log-likelihood is the float32 logsumexp of its logits minus its target's
    logit, summed in float64, without gradients.
    The sums do not depend on which texts share a batch, so the batches are regrouped by
    length first (``models.lengths``): less padding to run.

    Raises:
        ConfigError: logits that are not (B, T, V) for a (B, T) batch.
    """
    return nll_sums_each(lambda batch: {"": logits_fn(batch)}, batches)[""]


def nll_sums_each(
    logits_fn: NamedLogitsFn,
    batches: Sequence[dict[str, torch.Tensor]],
) -> dict[str, tuple[float, int]]:
    """Return ``nll_sums`` of every named logits ``logits_fn`` gives a batch (several models
    scored from one pass of each).

    Raises:
        ConfigError: logits that are not (B, T, V) for a (B, T) batch.
    """
    sums: dict[str, tuple[float, int]] = {}
    with torch.no_grad():
        for batch in by_length(batches):
            for name, logits in logits_fn(batch).items():
                total, tokens = _batch_nll(logits, batch)
                before = sums.get(name, (0.0, 0))
                sums[name] = (before[0] + total, before[1] + tokens)
    return sums


def _batch_nll(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Return one batch's (next-token negative log-likelihood in nats, tokens)."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    if logits.dim() != 3 or logits.shape[:2] != ids.shape:
        raise ConfigError(
            f"the model gave logits of shape {tuple(logits.shape)} for input_ids of shape "
            f"{tuple(ids.shape)}; a language model must return (B, T, vocab) logits"
        )
    ids, mask = ids.to(logits.device), mask.to(logits.device)
    keep = mask[:, 1:] & mask[:, :-1]
    total = 0.0
    # -log p(target) = logsumexp(logits) - logits[target], read in place a row of the batch
    # (at most _ROWS positions) at a time: the stable float32 logsumexp, each token's term and
    # the sum in float64 on the CPU (about 3e-7 nats a token from a float64 log_softmax)
    for row in range(ids.shape[0]):
        for start in range(0, ids.shape[1] - 1, _ROWS):
            stop = min(start + _ROWS, ids.shape[1] - 1)
            kept = keep[row, start:stop].cpu()
            if not kept.any():
                continue
            chunk = logits[row, start:stop].float()
            picked = chunk.gather(1, ids[row, start + 1 : stop + 1, None])[:, 0]
            lse = torch.logsumexp(chunk, dim=-1)
            total += float((lse.cpu().double() - picked.cpu().double())[kept].sum())
    return total, int(keep.sum())


def perplexity(total_nll_nats: float, tokens: int) -> float:
    """Return exp(mean negative log-likelihood per token).

    Raises:
        ConfigError: no tokens were scored.
    """
    if tokens < 1:
        raise ConfigError("no tokens were scored (texts of one token or none); give longer texts")
    return math.exp(total_nll_nats / tokens)


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """Return the negative log-likelihood in bits per UTF-8 byte of the scored text.

    Raises:
        ConfigError: no bytes were scored.
    """
    if n_bytes < 1:
        raise ConfigError("no text was scored (0 bytes); give non-empty texts")
    return total_nll_nats / (math.log(2) * n_bytes)


@dataclasses.dataclass(frozen=True)
class LMScore:
    """A language model's score on texts: summed NLL (nats), target tokens and text bytes."""

    nll: float
    tokens: int
    bytes: int

    @property
    def perplexity(self) -> float:
        """exp(nll / tokens); only comparable between models that share a tokenizer."""
        return perplexity(self.nll, self.tokens)

    @property
    def bits_per_byte(self) -> float:
        """nll / (ln 2 * bytes); comparable across tokenizers."""
        return bits_per_byte(self.nll, self.bytes)

    def to_dict(self) -> dict[str, float | int]:
        """Return the fields and both derived scores (for reports and JSON)."""
        return {
            "nll": self.nll,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
        }


def score_texts(
    logits_fn: LogitsFn,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 8,
    max_tokens: int = 128,
) -> LMScore:
    """Return a model's LMScore on texts (tokenised by ``token_batches``, cut at max_tokens).

    Raises:
        ConfigError: as ``token_batches`` and ``nll_sums`` do.
    """
    nll, tokens = nll_sums(logits_fn, token_batches(tokenizer, texts, batch_size, max_tokens))
    return LMScore(nll, tokens, scored_bytes(tokenizer, texts, max_tokens))


def ensemble_logits(*logits: torch.Tensor) -> torch.Tensor:
    """Return the log of the mean of the models' next-token probabilities (B, T, V), float32.

    The result is a log-probability, so it scores like any logits (log_softmax leaves it as is).

    Raises:
        ConfigError: no logits, or logits of different shapes (different vocabularies).
    """
    if not logits:
        raise ConfigError("ensemble_logits needs the logits of at least one model")
    shapes = {tuple(x.shape) for x in logits}
    if len(shapes) > 1:
        raise ConfigError(
            f"cannot ensemble logits of shapes {sorted(shapes)}: the models must share a "
            "tokenizer (vocabulary) and see the same batch"
        )

    def log_probs(x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x - torch.logsumexp(x, dim=-1, keepdim=True)

    total = log_probs(logits[0])  # the log of the summed probabilities, model by model
    for x in logits[1:]:
        torch.logaddexp(total, log_probs(x), out=total)
    return total.sub_(math.log(len(logits)))


def generate(
    logits_fn: LogitsFn,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 32,
    *,
    sample: bool = False,
    seed: int = 0,
    temperature: float = 0.8,
    top_k: int = 50,
    stop_at_eos: bool = True,
    context: int | None = None,
    step: Callable[[int], None] | None = None,
) -> str:
    """Return the continuation of ``prompt`` (without the prompt): greedy, or sampled.

    Sampling keeps the ``top_k`` most likely tokens, divides the logits by ``temperature`` and
    draws on the CPU with a torch.Generator seeded with ``seed``, so a run repeats exactly. Each
    step re-runs the whole sequence (no cache), or its last tokens where the model reads fewer
    (a position table: ``datasets.refs.text_limit``) or ``context`` says fewer (a long prompt
    would otherwise cost a pass over all of it per token). With ``stop_at_eos`` the eos token
    ends the text (and is not part of it). After each new token, ``step`` gets their count.

    Raises:
        ConfigError: max_new_tokens under 0, temperature not above 0, top_k under 1, or a
            prompt of no tokens.
    """
    step = step or (lambda _tokens: None)  # after each new token: a progress bar, a Cancel
    if max_new_tokens < 0 or temperature <= 0 or top_k < 1:
        raise ConfigError(
            f"max_new_tokens {max_new_tokens}, temperature {temperature}, top_k {top_k}: use "
            "max_new_tokens >= 0, temperature > 0 and top_k >= 1"
        )
    ids = tokenizer(prompt, return_tensors="pt", verbose=False)["input_ids"]  # cut per step
    if ids.shape[1] == 0:
        raise ConfigError("the prompt gives no tokens (empty, and no BOS token); give a prompt")
    generator = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id if stop_at_eos else None
    new: list[int] = []
    window = text_limit(tokenizer) or ids.shape[1] + max_new_tokens
    window = min(window, context) if context else window
    with torch.no_grad():
        for _ in range(max_new_tokens):
            seen = ids[:, -window:]
            batch = {"input_ids": seen, "attention_mask": torch.ones_like(seen)}
            last = logits_fn(batch)[0, -1].float().cpu()
            if sample:
                values, indices = last.topk(min(top_k, last.shape[-1]))
                probs = torch.softmax(values / temperature, dim=-1)
                token = int(indices[torch.multinomial(probs, 1, generator=generator)])
            else:
                token = int(last.argmax())
            if token == eos:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]], dtype=ids.dtype)], dim=1)
            step(len(new))
    return tokenizer.decode(new, skip_special_tokens=True)


def repeated_ngram_rate(token_ids: Sequence[int], n: int = 4) -> float:
    """Return the share of the sequence's n-grams that already occurred earlier in it.

    0.0 for a sequence with fewer than n tokens; a model that loops on one phrase tends to 1.
    """
    grams = [tuple(token_ids[i : i + n]) for i in range(len(token_ids) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def collapse_alarm(
    merged: dict[str, float],
    parents: list[dict[str, float]],
    repetition: float | None = None,
    *,
    factor: float = 2.0,
    repetition_limit: float = 0.5,
    parent_repetition: Sequence[float] = (),
    repetition_margin: float = 0.2,
) -> list[str]:
    """Return one reason per sign that a merged language model collapsed (empty: none).

    merged / parents: perplexity per domain of the merge and of each parent model. A domain
    alarms when the merge's perplexity is not finite or more than ``factor`` times the worse
    parent's; ``repetition`` (the repeated n-gram rate of its generations) alarms above
    ``repetition_limit`` and, when the parents' rates are known (``parent_repetition``), above
    the most repetitive parent's by more than ``repetition_margin`` (small models that repeat
    themselves make merges that do too; that is not a collapse). Domains no parent was scored
    on are skipped.
    """
    reasons = []
    for domain, value in merged.items():
        scores = [p[domain] for p in parents if domain in p]
        if not scores:
            continue
        worse = max(scores)
        if not math.isfinite(value):
            reasons.append(
                f"{domain}: perplexity {value} (not a number the merge can be scored by); "
                f"the worse parent's is {worse:.1f}"
            )
        elif value > factor * worse:
            reasons.append(
                f"{domain}: perplexity {value:.1f} is {value / worse:.1f}x the worse parent's "
                f"{worse:.1f}"
            )
    worst_parent = max(parent_repetition, default=None)
    above_parents = worst_parent is None or repetition is None
    above_parents = above_parents or repetition > worst_parent + repetition_margin
    if repetition is not None and repetition > repetition_limit and above_parents:
        parents_said = (
            f"; the parents' {', '.join(f'{r:.0%}' for r in parent_repetition)}"
            if parent_repetition
            else ""
        )
        reasons.append(
            f"generations repeat themselves: {repetition:.0%} of their n-grams occurred before "
            f"(limit {repetition_limit:.0%}{parents_said})"
        )
    return reasons
