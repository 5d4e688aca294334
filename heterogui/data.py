"""Inputs for calibration and evaluation, as a recipe's DataRef names them (tensors or text)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from heterogui.config import DataRef
from heterogui.errors import ConfigError, ModelLoadError
from heterogui.models.io import load_state, state_sha256

if TYPE_CHECKING:
    from heterogui.evaluate.sentences import Pair


def load_inputs(ref: DataRef) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (inputs (N, ...), labels (N,) or None) for a DataRef, subsampled as it says.

    Raises:
        ConfigError: unknown dataset, or a file without an "inputs" tensor.
        ModelLoadError: a missing or corrupt file.
    """
    if ref.source.endswith(".safetensors"):
        inputs, labels = _from_file(Path(ref.source))
    else:
        from heterogui.zoo.datasets import DATASETS, load_split

        if ref.source not in DATASETS:
            raise ConfigError(
                f"unknown dataset {ref.source!r}; use one of {sorted(DATASETS)} or a "
                ".safetensors file with an 'inputs' tensor"
            )
        split = load_split(ref.source, ref.split, seed=0)
        inputs, labels = split.inputs, split.labels
    if ref.size is not None and ref.size < inputs.shape[0]:
        gen = torch.Generator().manual_seed(ref.seed)
        pick = torch.randperm(inputs.shape[0], generator=gen)[: ref.size].sort().values
        inputs = inputs[pick]
        labels = labels[pick] if labels is not None else None
    digest = tensor_data_sha256(inputs, labels)
    if ref.sha256 and ref.sha256 != digest:
        raise ConfigError(
            f"the inputs drawn from {ref.source} changed: sha256 {digest[:12]}... but the recipe "
            f"records {ref.sha256[:12]}...; restore the data or remove sha256 from the recipe"
        )
    return inputs, labels


def tensor_data_sha256(inputs: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    """Return the sha256 of drawn inputs (N, ...) and labels (N,) (the recipe's data hash)."""
    state = {"inputs": inputs} if labels is None else {"inputs": inputs, "labels": labels}
    return state_sha256(state)


def _from_file(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not path.is_file():
        raise ModelLoadError(f"data file {str(path)!r} does not exist")
    state = load_state(path)
    if "inputs" not in state:
        raise ConfigError(f"{path} has no 'inputs' tensor (found {sorted(state)}); save one")
    return state["inputs"].float(), state.get("labels")


def make_batches(inputs: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split inputs into consecutive batches; a last batch under 4 joins the one before.

    inputs: (N, ...) -> list of (b, ...) tensors.
    """
    batches = list(torch.split(inputs, batch_size))
    if len(batches) > 1 and batches[-1].shape[0] < 4:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


TEXT_SOURCES = ("sentences", "sts")


def is_text(ref: DataRef) -> bool:
    """Return whether a DataRef names text (sentences or scored sentence pairs)."""
    return ref.source in TEXT_SOURCES or ref.source.endswith((".txt", ".tsv"))


def text_sha256(lines: Sequence[str]) -> str:
    """Return the hex sha256 of sentences joined by newlines (the recipe's text hash)."""
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _subsample(items: list, ref: DataRef) -> list:
    """Return ``ref.size`` items drawn with ``ref.seed`` (in their original order), or all."""
    if ref.size is None or ref.size >= len(items):
        return items
    gen = torch.Generator().manual_seed(ref.seed)
    pick = torch.randperm(len(items), generator=gen)[: ref.size].sort().values
    return [items[i] for i in pick.tolist()]


def _check_hash(ref: DataRef, lines: Sequence[str]) -> None:
    digest = text_sha256(lines)
    if ref.sha256 and ref.sha256 != digest:
        raise ConfigError(
            f"the sentences of {ref.source} changed: sha256 {digest[:12]}... but the recipe "
            f"records {ref.sha256[:12]}...; restore them or remove sha256 from the recipe"
        )


def load_sentences(ref: DataRef) -> list[str]:
    """Return calibration sentences: built-in ("sentences") or a .txt file, one per line.

    Raises:
        ConfigError: not a sentence source, an empty file, or sentences that differ from the
            recorded sha256.
        ModelLoadError: a missing file.
    """
    if ref.source == "sentences":
        from heterogui.zoo.text_tasks import calibration_sentences

        lines = calibration_sentences(ref.size or 256, ref.seed)
    elif ref.source.endswith(".txt"):
        path = Path(ref.source).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"sentence file {str(path)!r} does not exist")
        lines = [s.strip() for s in path.read_text("utf-8").splitlines() if s.strip()]
        lines = _subsample(lines, ref)
        if len(lines) < 4:
            raise ConfigError(f"{path} holds {len(lines)} sentences; give at least 4, one a line")
    else:
        raise ConfigError(
            f'calibration source {ref.source!r} is not sentences: use "sentences" (built-in) or '
            'a .txt file with one sentence per line ("sts" pairs are for evaluation only)'
        )
    _check_hash(ref, lines)
    return lines


def load_sentence_pairs(ref: DataRef) -> list[Pair]:
    """Return scored sentence pairs: built-in ("sts") or a .tsv file (score, s1, s2).

    Raises:
        ConfigError: not a pair source, a malformed file, or pairs that differ from the hash.
        ModelLoadError: a missing file.
    """
    from heterogui.evaluate.sentences import load_pairs

    if ref.source == "sts":
        pairs = load_pairs()
    elif ref.source.endswith(".tsv"):
        path = Path(ref.source).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"sentence-pair file {str(path)!r} does not exist")
        pairs = load_pairs(path)
    else:
        raise ConfigError(
            f'evaluation source {ref.source!r} is not scored sentence pairs: use "sts" '
            "(built-in) or a .tsv file with score<TAB>sentence1<TAB>sentence2 lines"
        )
    pairs = _subsample(pairs, ref)
    _check_hash(ref, pair_lines(pairs))
    return pairs


def pair_lines(pairs: Sequence[Pair]) -> list[str]:
    """Return one "score<TAB>sentence1<TAB>sentence2" line per pair (what the hash covers)."""
    return [f"{p.score}\t{p.first}\t{p.second}" for p in pairs]
