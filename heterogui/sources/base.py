"""What every model source gives: a loaded model, the header-only facts, and the Source role.

A model reference is the string a recipe records for a model (``zoo:PAIR/a``, ``minilm:NAME``,
a folder, a Hugging Face hub id). One ``Source`` per kind of reference resolves it, describes it
from its headers (config.json, safetensors headers) and loads it; ``heterogui.sources.registry``
picks the Source, so nothing else parses references (docs/architecture.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heterogui.datasets.refs import text_limit
from heterogui.export.job import HETEROGUI_FORMAT
from heterogui.models.family import Network

# Task kinds (heterogui.tasks keys its registry by them).
IMAGE_CLASSIFICATION = "image_classification"
SENTENCE_SIMILARITY = "sentence_similarity"
TEXT_CLASSIFICATION = "text_classification"
LANGUAGE_MODELING = "language_modeling"


@dataclass
class Loaded:
    """A model ready to merge, with what the rest of a merge needs to know about it.

    ref: the reference a recipe records to load it again; source: the kind of source.
    name: a display name (never a long local path); sha256: its weights file's hash.
    task: the task kind it is scored on; tokenizer: a text model's tokenizer (else None).
    folder: the local folder its files are in (None for in-memory models).
    dataset: the built-in dataset it was trained on, when known (zoo models).
    export_format: the output format that fits it (a merge of two such models is written so).
    note: what anyone shown this model must know about its weights (a GGUF file's are
    dequantized), else None.
    labels: a classifier's label names in output order (its config's id2label), else None.
    stored_dtype: the torch dtype its weights are stored in ("float32", "float16", "bfloat16",
    "float64"), which an export of its merges keeps (``run_export.export_dtype``); None:
    quantized or FP8 weights, or not known (an export writes float32).
    """

    net: Network
    ref: str
    source: str
    name: str
    sha256: str | None
    task: str
    tokenizer: Any = None
    folder: Path | None = None
    dataset: str | None = None
    export_format: str = HETEROGUI_FORMAT
    note: str | None = None
    labels: tuple[str, ...] | None = None
    stored_dtype: str | None = "float32"


def fit_tokenizer(loaded: Loaded) -> None:
    """Cap a text model's tokenizer at the tokens its model can read (in place).

    A model with learned positions (BERT, GPT-2) reads at most ``max_positions`` tokens: a
    longer text would index past its position table. Every tokenisation for statistics, scores
    and generations cuts texts at the tokenizer's ``model_max_length``
    (``datasets.refs.text_limit``); the tokenizer files an export copies are left as they are.
    """
    positions = getattr(loaded.net.config, "max_positions", None)
    if loaded.tokenizer is None or not isinstance(positions, int) or positions < 2:
        return
    stated = text_limit(loaded.tokenizer)
    loaded.tokenizer.model_max_length = positions if stated is None else min(stated, positions)


@dataclass(frozen=True)
class Header:
    """What a model's headers say, read without loading weights (the pre-flight's input).

    family: the heterogui family ("resnet", "bert" ...); config: the family config when the
    headers give one (heterogui folders, zoo models); card: the Hugging Face header card
    (``heterogui.sources.preflight.ModelCard``) of Hugging Face folders.
    """

    ref: str
    name: str
    source: str
    family: str
    task: str
    config: Any = None
    card: Any = None
    notes: tuple[str, ...] = field(default_factory=tuple)


class Source(ABC):
    """One kind of model reference: claim, describe (headers only) and load."""

    kind: str = ""

    @abstractmethod
    def claims(self, ref: str) -> bool:
        """Return whether this source reads ``ref`` (cheap: no weights are read)."""

    @abstractmethod
    def describe(self, ref: str) -> Header:
        """Return the header-only facts of ``ref``."""

    @abstractmethod
    def load(self, ref: str, *, pooling: str | None = None, device: str = "cpu") -> Loaded:
        """Load ``ref``; pooling: how a text embedding model pools (None: its default)."""

    def check_recorded(self, ref: str, sha256: str) -> None:
        """Refuse, before ``load``, a model a recipe records by ``sha256`` that loading would
        build over (a source that builds its models); the others load as they are."""
        return None  # loading builds nothing over a recorded model


def model_key(index: int) -> str:
    """Return the key of model ``index`` in scores and reports: "a", "b", "c", ..."""
    return chr(ord("a") + index)


@dataclass
class Pair:
    """Models A and B of a merge, as loaded (the task kind is theirs: they share one).

    more: models C, D, ... of an N-way merge (empty for a merge of two); notes: what the
    merge does other than either model would (``Verdict.cautions``, ``encoding_difference``),
    for its log, report and model card.
    """

    a: Loaded
    b: Loaded
    more: tuple[Loaded, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def models(self) -> tuple[Loaded, ...]:
        """Return every model: A, B, then C, D, ..."""
        return (self.a, self.b, *self.more)

    @property
    def task(self) -> str:
        """Return the task kind the models are scored on."""
        return self.a.task

    @property
    def dataset(self) -> str | None:
        """Return the built-in dataset the models were trained on, if the sources know it."""
        return next((m.dataset for m in self.models if m.dataset), None)
