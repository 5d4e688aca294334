"""Pick the source of a model reference; load and describe models; the pair pre-flight.

``SOURCES`` is tried in order and the first source that claims a reference reads it. The
pre-flight (``preflight``) says from headers alone whether two references can be merged, so a
merge that cannot work is refused before any weights are read.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from heterogui.errors import ConfigError, ModelLoadError, excerpt, os_error_line
from heterogui.export.hf_heads import head_folders_hint
from heterogui.models.io import read_config
from heterogui.pair_check import pair_reasons
from heterogui.sources.base import Header, Loaded, Source, fit_tokenizer
from heterogui.sources.folder import HeteroguiFolderSource
from heterogui.sources.gguf import GGUFSource
from heterogui.sources.gguf_header import starts_as_gguf
from heterogui.sources.hf import HFSource, MiniLMSource
from heterogui.sources.pair_rules import check_pair as check_hf_pair
from heterogui.sources.preflight import Verdict
from heterogui.sources.vocab import encoding_difference
from heterogui.sources.zoo import DecoderPairSource, ZooSource

SOURCES: tuple[Source, ...] = (
    ZooSource(),
    DecoderPairSource(),
    MiniLMSource(),
    GGUFSource(),
    HeteroguiFolderSource(),
    HFSource(),
)
FORMS = (
    "zoo:PAIR/a or zoo:PAIR/b (zoo:GROUP/c of a group), decoder-pair:a or decoder-pair:b, "
    "minilm:NAME, "
    "smollm2:135m-instruct, a .gguf file, a heterogui "
    "folder (config.json + model.safetensors), a Hugging Face save_pretrained folder, or a "
    "Hugging Face hub id"
)


def find_source(ref: str) -> Source:
    """Return the source that reads ``ref``.

    Raises:
        ModelLoadError: a path that is missing, a file, or a folder that holds no model.
        ConfigError: an empty reference, or one no source reads.
    """
    text = (ref or "").strip()
    if not text:
        raise ConfigError(f"give a model: {FORMS}")
    try:
        return _source_of(text)
    except OSError as exc:  # a name too long for the file system, a folder that cannot be read
        shown = excerpt(repr(text), 80)
        raise ModelLoadError(f"model {shown}: {os_error_line(exc, '')}") from exc


def _source_of(text: str) -> Source:
    """Return the source that reads ``text`` (find_source's checks, below its OSErrors)."""
    shown = excerpt(repr(text), 120)
    for source in SOURCES:
        if source.claims(text):
            return source
    path = Path(text).expanduser()
    if path.is_file() and starts_as_gguf(path):  # an Ollama blob, a renamed download
        raise ModelLoadError(
            f"{shown} is a GGUF file without the .gguf extension; heterogui reads GGUF files "
            f"by that name: link or copy it as one (ln -s {shlex.quote(str(path))} model.gguf)"
        )
    if path.is_file():
        raise ModelLoadError(
            f"{shown} is a file; a model is a folder with config.json and model.safetensors "
            "(pass the folder that holds it)"
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"folder {shown} has no config.json: it is not a model folder; pass a folder "
                "with config.json and model.safetensors"
            )
        read_config(path)  # says what is wrong with a config.json that is no JSON object
        raise ModelLoadError(
            f"config.json in {shown} is neither a heterogui config nor a Hugging Face config "
            "(it has no model_type); pass a folder written by heterogui or save_pretrained"
        )
    if "/" not in text and ":" not in text:  # "gpt2": a hub id without its owner, perhaps
        raise ModelLoadError(
            f"model folder {shown} does not exist, and hub ids name their owner "
            f"(openai-community/gpt2, google-bert/bert-base-uncased); give {FORMS}"
        )
    if path.exists():  # a device or a pipe (/dev/zero): there, but no folder
        raise ModelLoadError(f"{shown} is not a folder; a model is a folder: give {FORMS}")
    raise ModelLoadError(f"model folder {shown} does not exist; give {FORMS}")


def load(ref: str, *, pooling: str | None = None, device: str = "cpu") -> Loaded:
    """Load the model ``ref`` names through its source.

    Raises:
        HeteroguiError: see ``find_source`` and the source's ``load``.
    """
    loaded = find_source(ref).load(ref.strip(), pooling=pooling, device=device)
    fit_tokenizer(loaded)
    return loaded


def check_recorded(ref: str, sha256: str) -> None:
    """Refuse a recorded model (``sha256``) that loading ``ref`` would build over.

    Raises:
        ConfigError: see the source's ``check_recorded``.
    """
    find_source(ref).check_recorded(ref.strip(), sha256)


def describe(ref: str) -> Header:
    """Return the header-only facts of ``ref`` (no weights are read).

    Raises:
        HeteroguiError: see ``find_source`` and the source's ``describe``.
    """
    return find_source(ref).describe(ref.strip())


def _local(ref: str) -> Path | None:
    """Return ``ref`` as a local folder, None when it names none (zoo, hub ids, files)."""
    path = Path(ref).expanduser()
    return path if path.is_dir() else None


def pair_verdict(header_a: Header, header_b: Header) -> Verdict:
    """Return whether two described models can be merged, with the reasons or notes."""
    if header_a.family != header_b.family:
        reason = (
            f"model A ({header_a.name}) is a {header_a.family} and model B ({header_b.name}) a "
            f"{header_b.family}; heterogui merges models of the same family: pick two models of "
            "one family"
        )
        return Verdict(False, (reason,))
    verdict = _shape_verdict(header_a, header_b)
    if header_a.task != header_b.task:  # with the shapes' reasons: every reason at once
        reason = (
            f"model A ({header_a.name}) is scored on {header_a.task.replace('_', ' ')} and model "
            f"B ({header_b.name}) on {header_b.task.replace('_', ' ')}; merge two models of one "
            "kind (two classifiers, or two embedding models)"
            f"{head_folders_hint(_local(header_a.ref))}{head_folders_hint(_local(header_b.ref))}"
        )
        return Verdict(False, (reason, *verdict.reasons), verdict.notes)
    return verdict


def pair_notes(verdict: Verdict, a: Loaded, other: Loaded, letter: str = "B") -> tuple[str, ...]:
    """Return what a merge of model A and model ``letter`` does other than either model would
    (``Pair.notes``): the pre-flight's cautions, and how their tokenizers encode a text
    differently. A third model's are prefixed "model C against model A: "."""
    which = f"model {letter} against model A: " if letter != "B" else ""
    how = encoding_difference(a.tokenizer, other.tokenizer, letter)
    return (*(which + caution for caution in verdict.cautions), *([how] if how else []))


def _shape_verdict(header_a: Header, header_b: Header) -> Verdict:
    """Return the header checks of two models of one family (shapes, vocabularies ...)."""
    if header_a.card is not None and header_b.card is not None:
        return check_hf_pair(header_a.card, header_b.card)
    if header_a.config is not None and header_b.config is not None:
        reasons = pair_reasons(header_a.config, header_b.config)
        return Verdict(not reasons, tuple(reasons))
    return Verdict(True, notes=("header-only checks skipped: one model is not a local folder",))


def preflight(ref_a: str, ref_b: str) -> Verdict:
    """Return the pre-flight verdict of two references (headers only).

    Raises:
        HeteroguiError: a reference no source reads, or unreadable headers.
    """
    return pair_verdict(describe(ref_a), describe(ref_b))
