"""The decoder pair: two small Llama causal LMs trained here, A on prose, B on Python code.

Both share SmolLM2's tokenizer (read from the built-in SmolLM2-135M-Instruct GGUF file, no
conversion needed) and its attention layout (head_dim 64, 3 query heads per key/value head,
rope_theta 100000, vocabulary 49152, silu, no biases), so they merge with each other and with
``smollm2:135m-instruct``. They differ in depth and width (A: 4 layers of width 192, B: 2 layers
of width 384, by default) and in what they know:

- A is trained on ``domain_texts("python-docs", "train")``: English technical prose.
- B is trained on ``domain_texts("python-source", "train")``: Python source code.

Training is from scratch (transformers' initialisation, seeded) with AdamW, a linear warm-up and a
cosine decay, on whole texts cut at ``max_tokens`` tokens (as the language task scores them), in a
seeded order, with deterministic algorithms and a fixed thread count. The output layer of a
49152-token vocabulary is most of the cost of so small a model, so the loss is a *sampled
softmax*: the logits of every token the model's own training texts use, plus ``sampled`` tokens
drawn uniformly from all the others with the usual log(others / sampled) correction (an estimate of
their share of the full softmax). The models are ordinary full-vocabulary causal LMs; every
perplexity reported (the marker's, the language task's) is the full softmax.

``GPT2PairSettings`` builds the same pair as GPT-2 models (learned positions, LayerNorm, GELU,
biases, q/k/v fused in one projection, one key/value head per query head: the ``kv_heads`` of a
shape do not apply), trained the same way into folders of their own (``gpt2-a-python-docs``,
``gpt2-b-python-source``): the GPT-2 family's measured pair (``heterogui bench decoders``).

The results are ``save_pretrained`` folders (weights, tokenizer, generation config) in
``cache_dir("decoders")`` (never in the repository), written atomically, with a marker json (the
settings, the held-out perplexity and bits per byte of each domain, the build seconds); a folder
whose marker records other settings is rebuilt. ``decoder_pair_folders`` returns them, building
what is missing. Built-in references: ``decoder-pair:a`` and ``decoder-pair:b``
(``heterogui.sources.zoo.DecoderPairSource``).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from heterogui.cache import cache_dir
from heterogui.datasets.text_domains import domain_texts
from heterogui.folders import atomic_folder
from heterogui.zoo.train import deterministic_torch

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]

MARKER = "heterogui_decoder_pair.json"
DOMAIN = {"a": "python-docs", "b": "python-source"}  # what each model is trained on
VOCAB_SIZE = 49152
HEAD_DIM = 64
ROPE_THETA = 100000.0
CONTEXT = 2048  # max_position_embeddings (rotary: no table of that size is stored)
EOS_ID = 2  # SmolLM2's <|im_end|>: eos and pad
BOS_ID = 1


@dataclass(frozen=True)
class DecoderShape:
    """One model's shape: layers, width, query and key/value heads (head_dim 64), MLP width."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int

    def __post_init__(self) -> None:
        """Check the shape fits SmolLM2's heads.

        Raises:
            ValueError: hidden is not heads * 64, or heads is not 3 * kv_heads.
        """
        if self.hidden != self.heads * HEAD_DIM or self.heads != 3 * self.kv_heads:
            raise ValueError(
                f"shape {self}: use hidden = heads * {HEAD_DIM} and heads = 3 * kv_heads "
                "(SmolLM2's head size and grouping)"
            )


@dataclass(frozen=True)
class DecoderPairSettings:
    """How the pair is built (all of it is the cache key).

    steps_*: optimizer steps of each model; batch_size: texts per step; sampled: tokens drawn per
    step from those the model's training texts never use (sampled softmax, module docstring);
    threads: torch threads while training (1 is fastest on a busy 2-core machine).
    """

    shape_a: DecoderShape = DecoderShape(4, 192, 3, 1, 512)
    shape_b: DecoderShape = DecoderShape(2, 384, 6, 2, 768)
    steps_a: int = 240
    steps_b: int = 160
    batch_size: int = 8
    max_tokens: int = 128
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.01
    sampled: int = 2048
    tie_embeddings: bool = False
    seed: int = 0
    threads: int = 1
    eval_texts: int = 48
    version: int = 1
    prefix: ClassVar[str] = ""  # of the cache folders' names

    def new_model(self, shape: DecoderShape) -> Any:
        """Return a freshly initialised transformers Llama causal LM of ``shape``."""
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM(hf_config(shape, self))


@dataclass(frozen=True)
class GPT2PairSettings(DecoderPairSettings):
    """The decoder pair as GPT-2 models; positions: the learned position table's size."""

    positions: int = 256
    prefix: ClassVar[str] = "gpt2-"

    def __post_init__(self) -> None:
        """Check the position table holds a training text.

        Raises:
            ValueError: positions under max_tokens.
        """
        if self.positions < self.max_tokens:
            raise ValueError(
                f"positions {self.positions} cannot hold texts of max_tokens {self.max_tokens}: "
                "use positions >= max_tokens"
            )

    def new_model(self, shape: DecoderShape) -> Any:
        """Return a freshly initialised transformers GPT2LMHeadModel of ``shape``."""
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_positions=self.positions,
            n_embd=shape.hidden,
            n_layer=shape.layers,
            n_head=shape.heads,
            n_inner=shape.intermediate,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=EOS_ID,
            tie_word_embeddings=self.tie_embeddings,
            architectures=["GPT2LMHeadModel"],
        )
        return GPT2LMHeadModel(config)


@dataclass(frozen=True)
class _Member:
    which: str
    domain: str
    shape: DecoderShape
    steps: int
    seed_offset: int


def members(settings: DecoderPairSettings) -> tuple[_Member, _Member]:
    """Return what A and B are trained on and their shapes."""
    return (
        _Member("a", DOMAIN["a"], settings.shape_a, settings.steps_a, 0),
        _Member("b", DOMAIN["b"], settings.shape_b, settings.steps_b, 1),
    )


def folder_name(which: str, settings: DecoderPairSettings = DecoderPairSettings()) -> str:
    """Return the cache folder name of model ``which`` ("a" or "b")."""
    return f"{settings.prefix}{which}-{DOMAIN[which]}"


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


def hf_config(shape: DecoderShape, settings: DecoderPairSettings) -> Any:
    """Return the transformers LlamaConfig of a model of ``shape``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=HEAD_DIM,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=ROPE_THETA,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=settings.tie_embeddings,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        architectures=["LlamaForCausalLM"],
    )


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
    member: _Member,
    settings: DecoderPairSettings,
    tokenizer: Any,
    progress: Callable[[float], None] | None = None,
) -> tuple[Any, float]:
    """Train one model of the pair on its domain; return (transformers model, seconds)."""
    texts = domain_texts(member.domain, "train")
    rows = tokenizer(texts, truncation=True, max_length=settings.max_tokens)["input_ids"]
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


def _fresh(folder: Path, settings: DecoderPairSettings) -> bool:
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("settings") == asdict(settings)
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer.json").is_file()
    )


def build_member(
    member: _Member,
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
        (tmp / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
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
    settings: DecoderPairSettings = DecoderPairSettings(),
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
        if force or not _fresh(folder, settings):
            tokenizer = tokenizer or smollm2_tokenizer()
            stage = f"train {member.which}"
            report = (lambda f, s=stage: progress(s, f)) if progress is not None else None
            build_member(member, settings, tokenizer, folder, report)
        folders.append(folder)
    return folders[0], folders[1]


def description(settings: DecoderPairSettings = DecoderPairSettings()) -> str:
    """Return the pair in a line (the workbench's demo pair list)."""
    a, b = settings.shape_a, settings.shape_b
    return (
        f"Llama language models on Python prose (A: {a.layers} layers, width {a.hidden}) and "
        f"Python code (B: {b.layers} layers, width {b.hidden}); the first load trains them, "
        "about 5 minutes on 2 cores"
    )


def pair_status(
    settings: DecoderPairSettings = DecoderPairSettings(), cache: Path | None = None
) -> list[dict[str, Any]]:
    """Return, for A and B, what ``heterogui zoo list`` shows: the domain, the shape, whether
    the folder is built with these settings, and its build record's size and held-out scores."""
    root = Path(cache) if cache is not None else cache_dir("decoders")
    out = []
    for member in members(settings):
        folder = root / folder_name(member.which, settings)
        built = _fresh(folder, settings)
        record = marker(folder) if built else {}
        out.append(
            {
                "which": member.which,
                "trained_on": member.domain,
                "shape": asdict(member.shape),
                "folder": str(folder),
                "built": built,
                "num_params": record.get("num_params"),
                "held_out": record.get("held_out"),
            }
        )
    return out


def marker(folder: Path) -> dict[str, Any]:
    """Return the build record of a pair folder ({} when it has none)."""
    try:
        record = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
