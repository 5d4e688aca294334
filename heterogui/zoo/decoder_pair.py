"""The decoder pair: two small Llama causal LMs trained here, A on prose, B on Python code.

Both share SmolLM2's tokenizer (read from the built-in SmolLM2-135M-Instruct GGUF file, no
conversion needed) and its attention layout (head_dim 64, 3 query heads per key/value head,
rope_theta 100000, vocabulary 49152, silu, no biases), so they merge with each other and with
``smollm2:135m-instruct``. They differ in depth and width (A: 4 layers of width 192, B: 2 layers
of width 384, by default) and in what they know:

- A is trained on ``domain_texts("python-docs", "train")``: English technical prose.
- B is trained on ``domain_texts("python-source", "train")``: Python source code.

Training (``heterogui.zoo.decoder_training``) is from scratch with AdamW on each model's
domain, with a sampled softmax over the 49152-token vocabulary (that module's docstring); every
perplexity reported is the full softmax.

``GPT2PairSettings`` builds the same pair as GPT-2 models (learned positions, LayerNorm, GELU,
biases, q/k/v fused in one projection, one key/value head per query head: the ``kv_heads`` of a
shape do not apply), trained the same way into folders of their own (``gpt2-a-python-docs``,
``gpt2-b-python-source``): the GPT-2 family's measured pair (``heterogui bench decoders``).

The results are ``save_pretrained`` folders (weights, tokenizer, generation config) in
``cache_dir("decoders")`` (never in the repository), written atomically, with a marker json (the
settings, the held-out perplexity and bits per byte of each domain, the build seconds); a folder
whose marker records other settings is rebuilt. ``decoder_training.decoder_pair_folders`` returns
them, building what is missing. This module holds the pair's settings, shapes and folder records.
Built-in references: ``decoder-pair:a`` and ``decoder-pair:b``
(``heterogui.sources.zoo.DecoderPairSource``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from heterogui.cache import cache_path, entry_intact

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
    step from those the model's training texts never use (sampled softmax: ``decoder_training``);
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
class Member:
    """One model of the pair: "a" or "b", its training domain, shape, steps and seed offset."""

    which: str
    domain: str
    shape: DecoderShape
    steps: int
    seed_offset: int


def members(settings: DecoderPairSettings) -> tuple[Member, Member]:
    """Return what A and B are trained on and their shapes."""
    return (
        Member("a", DOMAIN["a"], settings.shape_a, settings.steps_a, 0),
        Member("b", DOMAIN["b"], settings.shape_b, settings.steps_b, 1),
    )


def folder_name(which: str, settings: DecoderPairSettings = DecoderPairSettings()) -> str:
    """Return the cache folder name of model ``which`` ("a" or "b")."""
    return f"{settings.prefix}{which}-{DOMAIN[which]}"


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


def fresh(folder: Path, settings: DecoderPairSettings) -> bool:
    """Return whether ``folder`` holds a model built with ``settings`` (marker and files)."""
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("settings") == asdict(settings)
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer.json").is_file()
        and entry_intact(folder, record)
    )


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
    root = Path(cache) if cache is not None else cache_path("decoders")  # creates nothing
    out = []
    for member in members(settings):
        folder = root / folder_name(member.which, settings)
        built = fresh(folder, settings)
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
