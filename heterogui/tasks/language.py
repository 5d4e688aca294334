"""Language modelling: perplexity per text domain, generations, and a collapse alarm.

A decoder is scored by its perplexity (and bits per byte) on held-out texts of each domain: the
built-in domains (``heterogui.datasets.text_domains``: English technical prose from the Python
documentation, Python source code from the standard library; "domains" names both) or a .txt
file (one text a line, a domain of its own). The ensemble is the mean of A's and B's next-token
probabilities; the merge's logits are the mean of its two heads' logits, exactly what an
exported causal-LM folder computes (``heterogui.export.causal_lm``).

A merge that completes but writes garbage is flagged (``alarms``): a domain where its perplexity
is far above both parents', or greedy continuations of fixed prompts that repeat themselves.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from heterogui.config import DataRef
from heterogui.datasets.refs import text_sha256
from heterogui.datasets.text_domains import DOMAINS, load_texts
from heterogui.errors import ConfigError
from heterogui.memo import ObjectMemo
from heterogui.models.capture import to_device
from heterogui.pipeline import MergeResult, Prepared
from heterogui.progress import Progress
from heterogui.sources.base import LANGUAGE_MODELING, Pair
from heterogui.tasks.base import (
    GENERATIONS,
    PERPLEXITY,
    SWEEP,
    Calibration,
    Evaluation,
    Task,
    progress_steps,
    register,
    size_of,
)
from heterogui.tasks.lm_metrics import (
    LMScore,
    LogitsFn,
    NamedLogitsFn,
    collapse_alarm,
    ensemble_logits,
    generate,
    nll_sums_each,
    repeated_ngram_rate,
    scored_bytes,
    token_batches,
)
from heterogui.tasks.sentences import tokenizer_of

ALL_DOMAINS = "domains"  # both built-in domains, scored one by one
CALIBRATION_SIZE = 32
EVALUATION_SIZE = 48  # texts per domain
BATCH = 8
MAX_TOKENS = 128
MAX_NEW_TOKENS = 32
MAX_PROMPTS = 4
LEAST_PER_DOMAIN = 4  # calibration texts drawn from each built-in domain at the least
# the tokens a workbench continuation reads: a prompt's last 256 (each new token runs the
# models over all of them again; a 600-token prompt took 134 s on SmolLM2 without the cut)
CONTEXT = 256
# Fixed prompts whose greedy continuations the collapse alarm checks for repetition.
PROBE_PROMPTS = ("The Python tutorial explains", "def read_config(path):")


def domain_texts(ref: DataRef) -> dict[str, list[str]]:
    """Return the texts of a DataRef by domain (``ref.size`` texts per domain).

    Raises:
        ConfigError: an unknown source, or texts that differ from the recorded sha256.
    """
    if ref.source != ALL_DOMAINS:
        name = Path(ref.source).stem if ref.has_suffix(".txt") else ref.source
        return {name: load_texts(ref)}
    out = {d: load_texts(dataclasses.replace(ref, source=d, sha256=None)) for d in DOMAINS}
    digest = text_sha256([t for texts in out.values() for t in texts])
    if ref.sha256 and ref.sha256 != digest:
        raise ConfigError(
            f"the texts drawn from {ref.source} changed: sha256 {digest[:12]}... but the recipe "
            f"records {ref.sha256[:12]}...; restore them (the same Python version) or remove "
            "sha256 from the recipe"
        )
    return out


def text_hash(texts: dict[str, list[str]]) -> str:
    """Return the sha256 a recipe records for texts by domain."""
    return text_sha256([t for group in texts.values() for t in group])


def network_logits(module: torch.nn.Module, last: bool = False) -> LogitsFn:
    """Return the logits function of a decoder network (a BlockNet whose final block is the
    language-model head). last: the head reads the last position only, (B, 1, vocab) logits:
    what a generation step needs, without the head's cost at every other position."""
    if not last:
        return lambda batch: module(**batch)
    head = len(module.blocks) - 1

    def next_token(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return module.blocks[head](module.run(batch, stop=head)[:, -1:])

    return next_token


# the latest merge's folded head: its scoring, its repetition check and Generate fold it once
_FOLDED_HEADS = ObjectMemo(limit=1)


def merged_logits(model: Any, last: bool = False) -> LogitsFn:
    """Return the logits function of a merged decoder: the mean of its heads' logits (last:
    at the last position only, as ``network_logits``).

    A full zip's heads are folded into one weight first (``MergedModel.shared_head``): the
    same mean to float rounding, from one product with the merged state.
    """
    folded = _FOLDED_HEADS.get(model, "head", model.shared_head)

    def both(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        state = model.features(**batch)
        if folded is not None and torch.is_tensor(state):
            return torch.nn.functional.linear(state[:, -1:] if last else state, folded)
        a, b = model.heads(state, last_position=last)
        return (a + b) / 2

    return both


def with_ensemble(first: torch.nn.Module, second: torch.nn.Module) -> NamedLogitsFn:
    """Return the logits of "a", "b" and their "ensemble" (the log of the mean next-token
    probabilities) from one pass of each model."""

    def logits(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, b = first(**batch), second(**batch)
        return {"a": a, "b": b, "ensemble": ensemble_logits(a, b)}

    return logits


def score_domains(
    logits_fn: LogitsFn, tokenizer: Any, texts: dict[str, list[str]], device: torch.device
) -> dict[str, LMScore]:
    """Return the score of a model on every domain's texts."""
    return score_domains_each(lambda batch: {"": logits_fn(batch)}, tokenizer, texts, device)[""]


@torch.no_grad()
def score_domains_each(
    logits_fn: NamedLogitsFn, tokenizer: Any, texts: dict[str, list[str]], device: torch.device
) -> dict[str, dict[str, LMScore]]:
    """Return, per name of the logits ``logits_fn`` gives, the score on every domain's texts."""
    out: dict[str, dict[str, LMScore]] = {}
    for domain, group in texts.items():
        batches = [to_device(b, device) for b in token_batches(tokenizer, group, BATCH, MAX_TOKENS)]
        scored = scored_bytes(tokenizer, group, MAX_TOKENS)
        for name, (nll, tokens) in nll_sums_each(logits_fn, batches).items():
            out.setdefault(name, {})[domain] = LMScore(nll, tokens, scored)
    return out


@torch.no_grad()
def repetition(logits_fn: LogitsFn, tokenizer: Any, device: torch.device) -> float:
    """Return the worst repeated-4-gram rate of greedy continuations of the probe prompts
    (``logits_fn``: last-position logits suffice, ``network_logits(..., last=True)``)."""
    rates = []
    for prompt in PROBE_PROMPTS:
        text = generate(_on(logits_fn, device), tokenizer, prompt, MAX_NEW_TOKENS)
        rates.append(repeated_ngram_rate(tokenizer(text)["input_ids"]))
    return max(rates)


def _on(logits_fn: LogitsFn, device: torch.device) -> LogitsFn:
    return lambda batch: logits_fn(to_device(batch, device)).cpu()


class LanguageModeling(Task):
    """Causal language models, scored on held-out text per domain."""

    kind = LANGUAGE_MODELING
    title = "language modelling"
    inputs = "text"
    panels = (PERPLEXITY, GENERATIONS, SWEEP)
    # the mean of the domains' perplexities (each domain weighs the same, whatever its tokens)
    metric = "mean perplexity"
    score_digits = 3  # as the perplexity table
    lower_is_better = True

    def data_help(self, role: str) -> str:
        """Return what text data to give."""
        return (
            f'give "{ALL_DOMAINS}" (both built-in domains), one of {list(DOMAINS)}, or a .txt '
            "file with one text a line"
        )

    def default_calibration(self, pair: Pair, size: int | None = None) -> DataRef:
        """Return texts of both built-in domains (calibration split)."""
        return DataRef(
            ALL_DOMAINS, "calibration", CALIBRATION_SIZE if size is None else size, BATCH
        )

    def default_evaluation(self, pair: Pair) -> DataRef | None:
        """Return the held-out texts of both built-in domains."""
        return DataRef(ALL_DOMAINS, "test", EVALUATION_SIZE, BATCH)

    def accepts(self, ref: DataRef) -> bool:
        """Return whether ``ref`` names texts."""
        return ref.source in (ALL_DOMAINS, *DOMAINS) or ref.has_suffix(".txt")

    def calibration(self, ref: DataRef, pair: Pair) -> Calibration:
        """Draw and tokenise the calibration texts (half per domain for "domains")."""
        self.check(ref, "calibration")
        why = None
        if ref.source == ALL_DOMAINS and ref.size is not None:
            each = max(ref.size // len(DOMAINS), LEAST_PER_DOMAIN)
            per_domain = dataclasses.replace(ref, size=each)
            texts = domain_texts(dataclasses.replace(per_domain, sha256=None))
            done = dataclasses.replace(ref, sha256=text_hash(texts))
            if ref.sha256 and ref.sha256 != done.sha256:
                domain_texts(dataclasses.replace(per_domain, sha256=ref.sha256))  # raises
            drawn = sum(len(group) for group in texts.values())
            # the reason only where it explains the count (not where the domains ran short)
            if each * len(DOMAINS) != ref.size and drawn == each * len(DOMAINS):
                why = (
                    f"{ALL_DOMAINS!r} draws as many texts from each of its {len(DOMAINS)} "
                    f"domains, at least {LEAST_PER_DOMAIN}: give a multiple of {len(DOMAINS)}, "
                    f"{LEAST_PER_DOMAIN * len(DOMAINS)} or more"
                )
        else:
            texts = domain_texts(ref)
            done = dataclasses.replace(ref, sha256=text_hash(texts))
        flat = [t for group in texts.values() for t in group]
        batches = token_batches(tokenizer_of(pair), flat, ref.batch_size, MAX_TOKENS, fold=True)
        return Calibration(done, batches, len(flat), why)

    def evaluation(self, ref: DataRef, pair: Pair) -> Evaluation:
        """Draw the held-out texts by domain."""
        self.check(ref, "evaluation")
        texts = domain_texts(ref)
        fewest = min(len(group) for group in texts.values())
        return Evaluation(dataclasses.replace(ref, sha256=text_hash(texts)), texts, fewest)

    def score_models(
        self, prepared: Prepared, ev: Evaluation, pair: Pair, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Return the per-domain scores of A, B and their ensemble (and A's and B's repetition)."""
        a, b, dev = prepared.net_a.module, prepared.net_b.module, prepared.device
        tok = tokenizer_of(pair)
        n_a, n_b = size_of(a), size_of(b)
        # the texts: one pass of each model scores A, B and the ensemble; then each generates
        mark = progress_steps(progress, {"perplexity": 4.0 * (n_a + n_b), "a": n_a, "b": n_b})
        mark("perplexity")
        per_domain = score_domains_each(with_ensemble(a, b), tok, ev.data, dev)
        scores = {k: {d: s.to_dict() for d, s in v.items()} for k, v in per_domain.items()}
        for key, module in (("a", a), ("b", b)):  # what the alarm compares the merge's with
            mark(key)
            fn = network_logits(module, last=True)
            scores[key]["repetition"] = round(repetition(fn, tok, dev), 4)
        mark(None)
        return scores

    def score_merged(
        self, result: MergeResult, ev: Evaluation, pair: Pair, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Return the merge's per-domain scores and the repetition of its greedy text."""
        tok, dev = tokenizer_of(pair), result.prepared.device
        fn = merged_logits(result.model)
        mark = progress_steps(progress, {"perplexity": 4.0, "repetition": 1.0})
        mark("perplexity")
        scores: dict[str, Any] = {
            d: s.to_dict() for d, s in score_domains(fn, tok, ev.data, dev).items()
        }
        mark("repetition")
        scores["repetition"] = round(repetition(merged_logits(result.model, True), tok, dev), 4)
        mark(None)
        return scores

    def columns(self, scores: Any) -> dict[str, float | None]:
        """Return the perplexity of every domain (and their mean)."""
        per = self.perplexities(scores)
        mean = {"mean perplexity": self.headline(scores)}
        return {f"{d} perplexity": per.get(d) for d in per} | mean

    @staticmethod
    def perplexities(scores: Any) -> dict[str, float]:
        """Return the perplexity per domain of one model's scores ({} when not scored)."""
        if not isinstance(scores, dict):
            return {}
        return {d: round(s["perplexity"], 3) for d, s in scores.items() if isinstance(s, dict)}

    def headline(self, scores: Any) -> float | None:
        """Return the mean perplexity over the domains (lower is better)."""
        per = self.perplexities(scores)
        return round(sum(per.values()) / len(per), 3) if per else None

    def to_json(self, scores: Any) -> Any:
        """Return the scores as they are (dicts of floats)."""
        return scores

    def alarms(self, scores: dict[str, Any]) -> list[str]:
        """Return why the merge looks collapsed (empty: it does not)."""
        merged = scores.get("merged")
        if not isinstance(merged, dict):
            return []
        parents = [self.perplexities(scores.get(k)) for k in ("a", "b")]
        repeats = [
            scores[k]["repetition"]
            for k in ("a", "b")
            if isinstance(scores.get(k), dict) and "repetition" in scores[k]
        ]
        return collapse_alarm(
            self.perplexities(merged),
            parents,
            merged.get("repetition"),
            parent_repetition=repeats,
        )

    @torch.no_grad()
    def generations(
        self,
        prepared: Prepared,
        result: MergeResult | None,
        pair: Pair,
        prompts: list[str],
        *,
        sample: bool = False,
        seed: int = 0,
        max_new_tokens: int = MAX_NEW_TOKENS,
        progress: Progress | None = None,
    ) -> dict[str, list[str]]:
        """Return the continuations of every prompt by A, B (and the merge), each reading
        the prompt's last ``CONTEXT`` tokens. progress: ("generate", share of the tokens at
        most to generate), after each token.

        Raises:
            ConfigError: no prompt, or more than MAX_PROMPTS.
        """
        prompts = [p for p in prompts if p.strip()]
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise ConfigError(f"type 1 to {MAX_PROMPTS} prompts, one per line (got {len(prompts)})")
        tok, dev = tokenizer_of(pair), prepared.device
        models = {
            "A": network_logits(prepared.net_a.module, last=True),
            "B": network_logits(prepared.net_b.module, last=True),
        }
        if result is not None:
            models["merged"] = merged_logits(result.model, last=True)
        total = max(len(models) * len(prompts) * max_new_tokens, 1)

        def report(tokens: int) -> None:  # of every text's max_new_tokens, in order
            if progress is not None:
                progress("generate", tokens / total)

        texts: dict[str, list[str]] = {name: [] for name in models}
        for name, fn in models.items():
            for p in prompts:
                before = sum(map(len, texts.values())) * max_new_tokens
                texts[name].append(
                    generate(
                        _on(fn, dev),
                        tok,
                        p,
                        max_new_tokens,
                        sample=sample,
                        seed=seed,
                        context=CONTEXT,
                        step=lambda n, before=before: report(before + n),
                    )
                )
                report(before + max_new_tokens)  # a text may stop early
        return texts


LANGUAGE = register(LanguageModeling())
