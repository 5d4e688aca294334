"""The decoder pair's training: SmolLM2's tokenizer, the training loop, the built folders.

Training (of the models ``heterogui.zoo.decoder_pair`` describes) is from scratch
(transformers' initialisation, seeded) with AdamW, a linear warm-up and a cosine decay, on whole
texts cut at ``max_tokens`` tokens (as the language task scores them), in a seeded order, with
deterministic algorithms and a fixed thread count. The output layer of a 49152-token vocabulary
is most of the cost of so small a model, so the loss is a *sampled softmax*: the logits of every
token the model's own training texts use, plus ``sampled`` tokens drawn uniformly from all the
others with the usual log(others / sampled) correction (an estimate of their share of the full
softmax). The models are ordinary full-vocabulary causal LMs; every perplexity reported (the
marker's, the language task's) is the full softmax.

``build_member`` writes one model's ``save_pretrained`` folder (weights, tokenizer, generation
config) atomically, with its marker json; ``decoder_pair_folders`` returns the pair's folders in
``cache_dir("decoders")``, building what is missing or was built with other settings.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from heterogui.cache import cache_dir, entry_record
from heterogui.datasets.text_domains import domain_texts
from heterogui.folders import atomic_folder, make_readable
from heterogui.progress import Progress
from heterogui.zoo.decoder_pair import (
    BOS_ID,
    CONTEXT,
    EOS_ID,
    MARKER,
    VOCAB_SIZE,
    DecoderPairSettings,
    Member,
    folder_name,
    fresh,
    members,
)
from heterogui.zoo.train import deterministic_torch

log = logging.getLogger(__name__)


def smollm2_tokenizer() -> Any:
    """Return SmolLM2's tokenizer, read from its GGUF file (no model conversion).

    About 6 s; the converted SmolLM2 folder's tokenizer loads in 1.5 s but converting the
    model first takes about 45 s, which a fresh machine would pay only for the tokenizer.

    Raises:
        ModelLoadError: the package that ships the SmolLM2 GGUF file is missing.
    """
    from transformers import AutoTokenizer

    from heterogui.sources.gguf_files import smollm2_gguf

    path = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.model_max_length = CONTEXT
    return tokenizer


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return right-padded (ids, mask) of token id lists."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), EOS_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def _lr_factor(step: int, steps: int, settings: DecoderPairSettings) -> float:
    """Return the learning-rate factor of ``step``: linear warm-up, then cosine to min_lr_ratio."""
    if step < settings.warmup:
        return (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, steps - settings.warmup)
    floor = settings.min_lr_ratio
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def sampled_softmax_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    shortlist: torch.Tensor,
    others: torch.Tensor,
    n_sampled: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Return the mean cross-entropy over the shortlist plus sampled other tokens.

    hidden: (N, H) final hidden states; weight: (V, H) output embeddings; targets: (N,) indices
    into ``shortlist`` (every target is a shortlisted token); shortlist / others: token ids (a
    partition of the vocabulary); n_sampled tokens of ``others`` are drawn uniformly (with
    replacement) and their logits raised by log(len(others) / n_sampled).
    """
    logits = hidden @ weight[shortlist].T
    if n_sampled and len(others):
        drawn = others[torch.randint(len(others), (n_sampled,), generator=generator)]
        extra = hidden @ weight[drawn].T + math.log(len(others) / n_sampled)
        logits = torch.cat([logits, extra], dim=1)
    return torch.nn.functional.cross_entropy(logits, targets)


def train_decoder(
    member: Member,
    settings: DecoderPairSettings,
    tokenizer: Any,
    progress: Callable[[float], None] | None = None,
) -> tuple[Any, float]:
    """Train one model of the pair on its domain; return (transformers model, seconds)."""
    texts = domain_texts(member.domain, "train")
    # cut here, not by the tokenizer: its truncation setting would be saved with it
    rows = [r[: settings.max_tokens] for r in tokenizer(texts)["input_ids"]]
    rows = [r for r in rows if len(r) >= 2]
    used = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
    for row in rows:
        used[torch.tensor(row)] = True
    shortlist = used.nonzero().squeeze(1)
    others = (~used).nonzero().squeeze(1)
    position = torch.full((VOCAB_SIZE,), -1, dtype=torch.long)
    position[shortlist] = torch.arange(len(shortlist))
    seed = settings.seed + 1000 * member.seed_offset
    start = time.perf_counter()
    with deterministic_torch(settings.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = settings.new_model(member.shape)
        model.train()
        order_gen = torch.Generator().manual_seed(seed + 1)
        sample_gen = torch.Generator().manual_seed(seed + 2)
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            betas=(0.9, 0.95),
        )
        order: list[int] = []
        for step in range(member.steps):
            if len(order) < settings.batch_size:
                order += torch.randperm(len(rows), generator=order_gen).tolist()
            idx, order = order[: settings.batch_size], order[settings.batch_size :]
            ids, mask = _pad([rows[i] for i in idx])
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * _lr_factor(step, member.steps, settings)
            hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            keep = (mask[:, 1:] & mask[:, :-1]).bool()
            loss = sampled_softmax_loss(
                hidden[:, :-1][keep],
                model.lm_head.weight,
                position[ids[:, 1:][keep]],
                shortlist,
                others,
                settings.sampled,
                sample_gen,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if progress is not None and (step + 1) % 10 == 0:
                progress((step + 1) / member.steps)
        model.eval()
    seconds = time.perf_counter() - start
    return model, seconds


@torch.no_grad()
def held_out_scores(model: Any, tokenizer: Any, n_texts: int) -> dict[str, dict[str, float]]:
    """Return perplexity and bits per byte of ``model`` on each domain's held-out texts.

    The texts are those the language task scores by default (``n_texts`` per domain of the
    test split), so the figures match the workbench's.
    """
    from heterogui.config import DataRef
    from heterogui.tasks.language import ALL_DOMAINS, BATCH, score_domains
    from heterogui.tasks.language import domain_texts as task_texts

    texts = task_texts(DataRef(ALL_DOMAINS, "test", n_texts, BATCH))
    logits = lambda batch: model(**batch).logits  # noqa: E731
    scores = score_domains(logits, tokenizer, texts, torch.device("cpu"))
    return {
        d: {"perplexity": round(s.perplexity, 3), "bits_per_byte": round(s.bits_per_byte, 4)}
        for d, s in scores.items()
    }


def build_member(
    member: Member,
    settings: DecoderPairSettings,
    tokenizer: Any,
    out: Path,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Train one model and write its folder ``out`` atomically; return the marker record."""
    from transformers import GenerationConfig

    start = time.perf_counter()
    model, train_seconds = train_decoder(member, settings, tokenizer, progress)
    scores = held_out_scores(model, tokenizer, settings.eval_texts)
    record = {
        "model": member.which,
        "trained_on": member.domain,
        "settings": asdict(settings),
        "shape": asdict(member.shape),
        "num_params": sum(p.numel() for p in model.parameters()),
        "held_out": scores,
        "train_seconds": round(train_seconds, 2),
        "torch": torch.__version__,
    }
    tmp, commit = atomic_folder(out, overwrite=True)
    try:
        generation = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
        model.generation_config = generation
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        record["build_seconds"] = round(time.perf_counter() - start, 2)
        record |= entry_record(tmp)
        (tmp / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        make_readable(tmp)  # a cache entry others may read, as the other entries
        commit()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "trained decoder %s on %s in %.1f s: held-out perplexity %s",
        member.which,
        member.domain,
        train_seconds,
        {d: s["perplexity"] for d, s in scores.items()},
    )
    return record


def decoder_pair_folders(
    progress: Progress | None = None,
    settings: DecoderPairSettings = DecoderPairSettings(),  # noqa: B008 (frozen, immutable)
    cache: Path | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Return the folders of the decoder pair (A: prose, B: Python code), building them once.

    Building takes a few minutes per model on two CPU cores (the marker records how long).
    progress: called with ("train a" / "train b", fraction) while training. settings:
    ``GPT2PairSettings()`` for the GPT-2 pair. force: train again even when built.

    Raises:
        ModelLoadError: the package that ships SmolLM2's GGUF file (its tokenizer) is missing.
    """
    root = Path(cache) if cache is not None else cache_dir("decoders")
    folders = []
    tokenizer = None
    for member in members(settings):
        folder = root / folder_name(member.which, settings)
        if force or not fresh(folder, settings):
            tokenizer = tokenizer or smollm2_tokenizer()
            stage = f"train {member.which}"
            report = (lambda f, s=stage: progress(s, f)) if progress is not None else None
            build_member(member, settings, tokenizer, folder, report)
        folders.append(folder)
    return folders[0], folders[1]
