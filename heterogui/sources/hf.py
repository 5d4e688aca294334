"""Hugging Face models: save_pretrained folders, hub ids, and the offline MiniLM models.

The family comes from config.json's ``model_type`` (``bert``, ``vit``, and the decoders
``llama``, ``qwen2``, ``mistral``, ``gpt2``); the adapters in ``heterogui.models.hf`` convert the
loaded transformers model into a heterogui network. A BERT classifier is scored on text
classification, a BERT embedding model on sentence similarity, a ViT on image classification, a
decoder on language modelling. Classifiers whose ``id2label`` names are class ids ("3") or the
built-in text tasks' labels ("sports") get those global classes, so two classifiers of disjoint
tasks keep disjoint heads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from heterogui.datasets.text_tasks import label_id
from heterogui.errors import ConfigError, ModelLoadError
from heterogui.export.hf_heads import is_head_folder
from heterogui.export.job import HF_BERT_FORMAT, HF_CAUSAL_LM_FORMAT, HF_VIT_FORMAT
from heterogui.models.headers import majority_dtype
from heterogui.models.hf.bert_io import load_bert
from heterogui.models.hf.common import folder_config
from heterogui.models.hf.decoder_io import load_decoder
from heterogui.models.hf.vit_io import load_vit
from heterogui.models.io import file_sha256
from heterogui.sources import minilm
from heterogui.sources.base import (
    IMAGE_CLASSIFICATION,
    LANGUAGE_MODELING,
    SENTENCE_SIMILARITY,
    TEXT_CLASSIFICATION,
    Header,
    Loaded,
    Source,
)
from heterogui.sources.preflight import index_shards, inspect_model, sizes

MINILM_PREFIX = "minilm:"


# model_type -> (loader, default pooling, export format)
def _load_decoder(path: str, pooling: str | None = None) -> Any:
    return load_decoder(path)  # a language model pools nothing


FAMILIES = {
    "bert": (load_bert, "mean", HF_BERT_FORMAT),
    "vit": (load_vit, "cls", HF_VIT_FORMAT),
    **dict.fromkeys(
        ("llama", "qwen2", "mistral", "gpt2"), (_load_decoder, None, HF_CAUSAL_LM_FORMAT)
    ),
}
DECODER_TYPES = ("llama", "qwen2", "mistral", "gpt2")
# what a text model's folder must hold: one of these tokenizers (vocab.json: a BPE tokenizer's,
# GPT-2's without tokenizer.json, with its merges.txt)
TOKENIZERS = (("tokenizer.json",), ("vocab.txt",), ("vocab.json", "merges.txt"))
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def label_names(id2label: dict[str, Any] | None) -> tuple[str, ...] | None:
    """Return a classifier's label names in output order (config.json's id2label), or None."""
    if not id2label:
        return None
    return tuple(str(id2label[k]) for k in sorted(id2label, key=int))


def fp8_note(dtypes: Iterable[str]) -> str | None:
    """Return, for weights stored in FP8 (safetensors F8_E4M3 / F8_E5M2), that heterogui reads
    them as float32 and writes its merges so; None otherwise."""
    low = sorted(d for d in dtypes if d.startswith("F8"))
    if not low:
        return None
    return (
        f"its weights are stored in FP8 ({', '.join(low)}): heterogui reads their 8-bit values "
        "as float32, and an export of its merges is written in float32"
    )


def untied_note(data: dict[str, Any], net: Any) -> str | None:
    """Return, for a decoder whose folder ties its input embedding and output head, that
    heterogui counts (and merges) them as two matrices; None otherwise.

    data: the folder's config.json (GPT-2 ties when it does not say).
    """
    kind = data.get("model_type")
    if kind not in DECODER_TYPES or not data.get("tie_word_embeddings", kind == "gpt2"):
        return None
    shared = net.config.vocab_size * net.config.hidden
    return (
        "its folder ties the input embedding and the output head (tie_word_embeddings: one "
        f"{net.config.vocab_size:,} x {net.config.hidden:,} matrix); heterogui unties them, so "
        f"its parameters here count that matrix twice ({net.parameter_count() - shared:,} as "
        "its folder stores them)"
    )


def _classes(names: tuple[str, ...], data: dict[str, Any], folder: Path) -> tuple[int, ...]:
    """Return the global class ids of a classifier's label names.

    Raises:
        ModelLoadError: a regression or multi-label head, or a label name given to two
            outputs (its class would be two outputs, and no prediction could say which).
    """
    if data.get("problem_type") == "regression":
        raise ModelLoadError(
            f"{folder} is a regression model (problem_type: regression), not a classifier: "
            "heterogui merges classifiers and feature models"
        )
    if data.get("problem_type") == "multi_label_classification":
        raise ModelLoadError(
            f"{folder} is a multi-label classifier (problem_type: multi_label_classification): "
            "heterogui scores and exports single-label classifiers (one class per input); "
            "merge its encoder as a feature model (AutoModel.save_pretrained) instead"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelLoadError(
            f"{folder}: config.json's id2label names {twice} more than one output; give each "
            "output its own label name"
        )
    return tuple(label_id(n) for n in names)


def model_type(folder: Path) -> str:
    """Return a folder's model_type, refusing those no adapter supports.

    Raises:
        ConfigError: a model type without a heterogui adapter.
    """
    kind = folder_config(folder).get("model_type")
    if kind not in FAMILIES:
        raise ConfigError(
            f"{folder} holds a {kind!r} model; heterogui merges Hugging Face models of "
            f"model_type {' or '.join(sorted(FAMILIES))}"
        )
    return str(kind)


class HFSource(Source):
    """A Hugging Face save_pretrained folder (or a hub id, when the hub may be used)."""

    kind = "hf"

    def folder(self, ref: str) -> Path:
        """Return the local folder of ``ref``."""
        return Path(ref).expanduser()

    def claims(self, ref: str) -> bool:
        """Return whether ``ref`` is a folder with a Hugging Face config.json, or a hub id."""
        folder = Path(ref).expanduser()
        if folder.is_dir():
            data = folder_config(folder)
            return "model_type" in data and "heterogui" not in data
        return not folder.exists() and bool(_HUB_ID.fullmatch(ref))

    def name(self, ref: str) -> str:
        """Return a display name: the folder's name (a classifier folder of a merge's export,
        ``head_a/`` ..., with its export's: "merged/head_a", where "head_a" named no model),
        or the hub id."""
        folder = self.folder(ref)
        if not folder.is_dir():
            return ref
        if is_head_folder(folder):
            return f"{folder.parent.name}/{folder.name}"
        return folder.name

    def describe(self, ref: str) -> Header:
        """Return the header card (config.json and safetensors headers only).

        A hub id has no local headers: its header says so, and it is checked when it loads.
        """
        folder = self.folder(ref)
        if not folder.is_dir():
            _check_hub(ref)
            notes = ("a hub model: header checks run when it loads",)
            return Header(ref, ref, self.kind, "bert", SENTENCE_SIMILARITY, notes=notes)
        card = inspect_model(folder)
        task = _task(card.family, folder_config(folder))
        return Header(ref, self.name(ref), self.kind, card.family, task, card=card)

    def load(self, ref: str, *, pooling: str | None = None, device: str = "cpu") -> Loaded:
        """Load the model with its family's adapter, and its tokenizer (text models).

        Raises:
            ConfigError: an unsupported model type.
            ModelLoadError: missing files or weights, or no tokenizer for a text model.
        """
        folder = self.folder(ref)
        stored, low = "float32", None  # a hub model: as transformers gives it
        if folder.is_dir():
            # headers only, first: a config far larger than its weights (a width of 10^7 in a
            # 5 MB folder) allocated gigabytes
            sized = sizes(folder)
            stored, low = majority_dtype(sized.dtypes), fp8_note(sized.dtypes)
        else:
            _check_hub(ref)
        kind = model_type(folder) if folder.is_dir() else "bert"
        if kind != "vit" and folder.is_dir():
            check_tokenizer(folder)
        loader, default_pooling, export_format = FAMILIES[kind]
        net, tokenizer = loader(
            str(folder) if folder.is_dir() else ref, pooling=pooling or default_pooling
        )
        net = dataclasses.replace(net, label=self.name(ref))
        data = folder_config(folder)
        names = label_names(data.get("id2label"))  # kept when they name every output
        if names is not None and len(names) == getattr(net.config, "num_labels", None):
            net = dataclasses.replace(net, classes=_classes(names, data, folder))
        else:
            names = None
        sha = weights_sha256(folder)
        notes = (low, untied_note(data, net)) if folder.is_dir() else ()
        return Loaded(
            net,
            ref,
            self.kind,
            self.name(ref),
            sha,
            _task(kind, data),
            tokenizer=tokenizer,
            folder=folder if folder.is_dir() else None,
            export_format=export_format,
            labels=names,
            note="; ".join(n for n in notes if n) or None,
            stored_dtype=stored,
        )


def check_tokenizer(folder: Path) -> None:
    """Refuse a text model's folder without a tokenizer heterogui can load (``TOKENIZERS``).

    Raises:
        ModelLoadError: naming the files it looked for and how to save them.
    """
    if any(all((folder / name).is_file() for name in files) for files in TOKENIZERS):
        return
    if (folder / "tokenizer.model").is_file():  # a sentencepiece model alone
        raise ModelLoadError(
            f"{folder} has only tokenizer.model as its tokenizer, which needs sentencepiece (not "
            "installed with heterogui): save the tokenizer as tokenizer.json where it loads "
            "(AutoTokenizer.from_pretrained(folder).save_pretrained(folder))"
        )
    if (folder / "vocab.json").is_file():
        raise ModelLoadError(
            f"{folder} has vocab.json but not the merges.txt its BPE tokenizer needs: save the "
            "tokenizer again beside the model (tokenizer.save_pretrained(folder))"
        )
    raise ModelLoadError(
        f"{folder} has no tokenizer (tokenizer.json, vocab.txt, or vocab.json with merges.txt): "
        "a text model needs its own; save it beside the model (tokenizer.save_pretrained(folder))"
    )


# the files beside the weights that change what a model computes or reads (a recipe records
# their hash: editing them changes the merge as editing the weights does); a model card,
# report or recipe in the folder does not
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)


# what a heterogui folder's config.json records about the run that trained it, not about the
# model: a zoo pair rebuilt here or on another machine has the same weights and config but
# another training time, and its recorded recipes must still repeat
RUN_RECORDS = ("train_seconds",)


def files_sha256(folder: Path, legacy: bool = False) -> str | None:
    """Return the sha256 of one line per ``MODEL_FILES`` file in ``folder`` (its name and
    sha256), None when it has none.

    A heterogui folder's config.json is hashed without its ``RUN_RECORDS`` (as sorted JSON);
    legacy: hash it as stored, as recipes recorded before did.
    """
    lines = "".join(
        f"{name} {_model_file_sha256(folder / name, legacy)}\n"
        for name in MODEL_FILES
        if (folder / name).is_file()
    )
    return hashlib.sha256(lines.encode("utf-8")).hexdigest() if lines else None


def _model_file_sha256(path: Path, legacy: bool) -> str:
    if legacy or path.name != "config.json":
        return file_sha256(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return file_sha256(path)  # the loader names what is wrong with it
    if not isinstance(config, dict) or "heterogui" not in config:
        return file_sha256(path)
    kept = {k: v for k, v in config.items() if k not in RUN_RECORDS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode("utf-8")).hexdigest()


def weights_sha256(folder: Path) -> str | None:
    """Return the sha256 of a folder's weights (None when it has no safetensors weights).

    A single model.safetensors: its own sha256. A sharded folder: the sha256 of one line per
    shard, in the index's sorted order, holding the shard's file name and sha256; so a recipe
    checks a sharded model's weights as it checks a single file's.

    Raises:
        ModelLoadError: the folder's shard index is invalid (``preflight.index_shards``).
    """
    weights = folder / "model.safetensors"
    if weights.is_file():
        return file_sha256(weights)
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return None
    lines = "".join(f"{shard.name} {file_sha256(shard)}\n" for shard in index_shards(index))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _check_hub(ref: str) -> None:
    """Raise when a hub id cannot be fetched (hub downloads off).

    Raises:
        ModelLoadError: HF_HUB_OFFLINE is "1".
    """
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelLoadError(
            f"{ref!r} is not a local folder, and Hugging Face hub downloads are off "
            "(HF_HUB_OFFLINE=1); pass the path of a save_pretrained folder"
        )


def _task(family: str, config: dict[str, Any]) -> str:
    """Return the task kind of a Hugging Face model from its family and architectures."""
    if family == "vit":
        return IMAGE_CLASSIFICATION
    if family in ("decoder", *DECODER_TYPES):
        return LANGUAGE_MODELING
    classifier = any(
        str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or []
    )
    return TEXT_CLASSIFICATION if classifier else SENTENCE_SIMILARITY


class MiniLMSource(HFSource):
    """The offline MiniLM models: ``minilm:`` + all-MiniLM-L6-v2 or paraphrase-MiniLM-L3-v2."""

    kind = "minilm"

    def claims(self, ref: str) -> bool:
        """Return whether ``ref`` starts with ``minilm:``."""
        return ref.startswith(MINILM_PREFIX)

    def folder(self, ref: str) -> Path:
        """Return the model's folder (converting L3 from its ONNX file on first use).

        Raises:
            ConfigError: an unknown MiniLM name.
            ModelLoadError: the package that ships the model is missing.
        """
        name = ref[len(MINILM_PREFIX) :]
        if name == minilm.L6_NAME:
            return minilm.minilm_l6_path()
        if name == minilm.L3_NAME:
            return minilm.minilm_l3_path()
        raise ConfigError(
            f"unknown MiniLM model {ref!r}; use one of "
            + ", ".join(f"{MINILM_PREFIX}{n}" for n in minilm.NAMES)
        )

    def name(self, ref: str) -> str:
        """Return the model's name (not its folder in site-packages or the cache)."""
        return ref[len(MINILM_PREFIX) :]
