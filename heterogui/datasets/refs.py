"""Inputs for calibration and evaluation, as a recipe's DataRef names them (tensors or text).

A DataRef names a built-in image dataset (with a split), a .safetensors file of "inputs" (and
"labels"), built-in calibration sentences ("sentences"), a .txt file of sentences, built-in
scored sentence pairs ("sts") or a .tsv file of them. Drawing is seeded and every draw has a
sha256 that a recipe records and checks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from heterogui.config import DataRef
from heterogui.datasets.images import DATASETS, load_split, refuse_nonfinite_rows
from heterogui.datasets.sentence_pairs import Pair, load_pairs, pair_lines
from heterogui.datasets.text_tasks import calibration_sentences
from heterogui.errors import ConfigError, ModelLoadError, excerpt
from heterogui.models.io import CLASS_ID_LIMIT, load_state, state_sha256
from heterogui.text_input import read_text, text_lines

log = logging.getLogger(__name__)


def load_inputs(ref: DataRef) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (inputs (N, ...), labels (N,) or None) for a DataRef, subsampled as it says.

    Raises:
        ConfigError: unknown dataset, or a file without an "inputs" tensor.
        ModelLoadError: a missing or corrupt file.
    """
    if ref.has_suffix(".safetensors"):
        inputs, labels = _from_file(Path(ref.source))
    else:
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
    """Return the "inputs" (and "labels") tensors of a .safetensors data file, checked.

    Raises:
        ModelLoadError: a missing file (or a folder), or not a safetensors file.
        ConfigError: no "inputs", no rows, inputs that are not numbers of at least 2 dimensions
            or hold NaN / inf, labels that are not one integer per input.
    """
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ModelLoadError(f"data file {str(path)!r} {what}; pass a .safetensors file")
    state = load_state(path)
    if "inputs" not in state:
        found = excerpt(sorted(state), 80)
        raise ConfigError(f"{path} has no 'inputs' tensor (found {found}); save one")
    inputs, labels = state["inputs"], state.get("labels")
    if inputs.dim() < 2 or inputs.dtype == torch.bool or inputs.is_complex():
        raise ConfigError(
            f"'inputs' in {path} has shape {tuple(inputs.shape)} and dtype {inputs.dtype}: "
            "save real numbers with one row per input, (N, C, H, W) or (N, C, L)"
        )
    if inputs.shape[0] == 0:
        raise ConfigError(
            f"'inputs' in {path} hold no inputs (shape {tuple(inputs.shape)}); save at least 4"
        )
    if not inputs.is_floating_point():
        log.warning(
            "'inputs' in %s are %s (%d to %d), read as those numbers, not scaled: if the models "
            "read scaled values (the built-in digits are 0 to 1), save them scaled, as floats",
            path,
            str(inputs.dtype).removeprefix("torch."),
            int(inputs.min()),
            int(inputs.max()),
        )
    inputs = inputs.float()
    refuse_nonfinite_rows(inputs, f"'inputs' in {path}")
    if labels is not None:
        integer = not labels.is_floating_point() and labels.dtype != torch.bool
        if labels.shape != (inputs.shape[0],) or not integer:
            raise ConfigError(
                f"'labels' in {path} has shape {tuple(labels.shape)} and dtype {labels.dtype}: "
                f"save one integer class id per input ({inputs.shape[0]},)"
            )
        if int(labels.min()) < 0:
            raise ConfigError(f"'labels' in {path} hold negative class ids; use ids from 0")
        if int(labels.max()) >= CLASS_ID_LIMIT:
            raise ConfigError(
                f"'labels' in {path} hold class id {int(labels.max())}; use ids from 0 to "
                f"{CLASS_ID_LIMIT - 1:,}"
            )
    return inputs, labels


# the fewest inputs a calibration batch may have (minibatch CKA centres within a batch)
MIN_CALIBRATION_BATCH = 4


def batch_slices(n: int, batch_size: int, fold: bool = True) -> list[slice]:
    """Return consecutive slices of range(n) of ``batch_size`` items; with ``fold``, a last
    one under ``MIN_CALIBRATION_BATCH`` joins the one before (calibration batches)."""
    starts = list(range(0, n, batch_size))
    if fold and len(starts) > 1 and n - starts[-1] < MIN_CALIBRATION_BATCH:
        starts.pop()
    return [slice(s, e) for s, e in zip(starts, [*starts[1:], n], strict=True)]


def make_batches(inputs: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split inputs into consecutive calibration batches (``batch_slices``).

    inputs: (N, ...) -> list of (b, ...) tensors.
    """
    return [inputs[s] for s in batch_slices(int(inputs.shape[0]), batch_size)]


TEXT_SOURCES = ("sentences", "sts")


def is_text(ref: DataRef) -> bool:
    """Return whether a DataRef names text (sentences or scored sentence pairs)."""
    return ref.source in TEXT_SOURCES or ref.has_suffix(".txt") or ref.has_suffix(".tsv")


def parse_lines(text: str | None) -> list[str]:
    """Return the non-empty lines of ``text``, stripped (one sentence per line)."""
    return [line.strip() for line in text_lines(text or "") if line.strip()]


def text_sha256(lines: Sequence[str]) -> str:
    """Return the hex sha256 of sentences joined by newlines (the recipe's text hash)."""
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def subsample(items: list, ref: DataRef) -> list:
    """Return ``ref.size`` items drawn with ``ref.seed`` (in their original order), or all."""
    if ref.size is None or ref.size >= len(items):
        return items
    gen = torch.Generator().manual_seed(ref.seed)
    pick = torch.randperm(len(items), generator=gen)[: ref.size].sort().values
    return [items[i] for i in pick.tolist()]


# built-in sentence sources whose seeds other than 0 draw otherwise than before 2026-12-07
DRAWN_AFRESH = ("sentences", "text-tasks")


def check_text_hash(ref: DataRef, lines: Sequence[str]) -> None:
    """Raise if text drawn for ``ref`` differs from the sha256 the recipe records.

    Raises:
        ConfigError: naming the source and both hashes.
    """
    digest = text_sha256(lines)
    if not ref.sha256 or ref.sha256 == digest:
        return
    if ref.source in DRAWN_AFRESH and ref.seed:
        raise ConfigError(  # nothing to restore: the draw of the seed changed
            f"the built-in {ref.source} of seed {ref.seed} are not the ones the recipe records "
            f"(sha256 {digest[:12]}... against {ref.sha256[:12]}...): seeds other than 0 draw "
            "from the text tasks' own calibration and test sentences since 2026-12-07 "
            "(before, a draw held training and test sentences of the text-task "
            "pair); remove sha256 from the recipe to run on today's draw, or use seed 0"
        )
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
        lines = calibration_sentences(ref.size or 256, ref.seed)
    elif ref.has_suffix(".txt"):
        path = Path(ref.source).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ModelLoadError(f"sentence file {str(path)!r} {what}; pass a .txt file")
        lines = parse_lines(read_text(path, "sentence file"))
        lines = subsample(lines, ref)
        if len(lines) < 4:
            raise ConfigError(f"{path} holds {len(lines)} sentences; give at least 4, one a line")
    else:
        raise ConfigError(
            f'calibration source {ref.source!r} is not sentences: use "sentences" (built-in) or '
            'a .txt file with one sentence per line ("sts" pairs are for evaluation only)'
        )
    check_text_hash(ref, lines)
    return lines


def load_sentence_pairs(ref: DataRef) -> list[Pair]:
    """Return scored sentence pairs: built-in ("sts") or a .tsv file (score, s1, s2).

    Raises:
        ConfigError: not a pair source, a malformed file, or pairs that differ from the hash.
        ModelLoadError: a missing file.
    """
    if ref.source == "sts":
        pairs = load_pairs()
    elif ref.has_suffix(".tsv"):
        path = Path(ref.source).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"sentence-pair file {str(path)!r} does not exist")
        pairs = load_pairs(path)
    else:
        raise ConfigError(
            f'evaluation source {ref.source!r} is not scored sentence pairs: use "sts" '
            "(built-in) or a .tsv file with score<TAB>sentence1<TAB>sentence2 lines"
        )
    pairs = subsample(pairs, ref)
    name = Path(ref.source).name
    if len(pairs) < 4:
        raise ConfigError(
            f"{name} holds {len(pairs)} scored pair(s); a rank correlation needs at least 4: "
            "give more pairs"
        )
    if len({p.score for p in pairs}) < 2:
        raise ConfigError(
            f"every pair of {name} has the score {pairs[0].score}, so no rank correlation is "
            "defined; give pairs scored from 0 (unrelated) to 5 (same meaning)"
        )
    check_text_hash(ref, pair_lines(pairs))
    return pairs


# transformers' model_max_length of a tokenizer that states no limit (its VERY_LARGE_INTEGER)
NO_TOKEN_LIMIT = 10**9


def text_limit(tokenizer: Any, cap: int | None = None) -> int | None:
    """Return the most tokens a text is given to the models: the tokenizer's
    ``model_max_length`` (which loading caps at a model's position table:
    ``sources.base.fit_tokenizer``) and ``cap``, whichever is smaller; None when neither limits.
    """
    stated = getattr(tokenizer, "model_max_length", None)
    known = stated if isinstance(stated, int) and 0 < stated < NO_TOKEN_LIMIT else None
    return min((n for n in (cap, known) if n is not None), default=None)


def tokenize(
    tokenizer: Any, sentences: Sequence[str], batch_size: int = 32, fold: bool = False
) -> list[dict]:
    """Return padded tokenizer batches (dicts of (B, T) int64 tensors) of the sentences.

    A sentence longer than the models read (``text_limit``) is cut there, as
    sentence-transformers cuts it. fold: calibration batches (``batch_slices``).
    """
    limit = text_limit(tokenizer)
    cut = {"truncation": True, "max_length": limit} if limit is not None else {}
    return [
        dict(tokenizer(list(sentences[s]), padding=True, return_tensors="pt", **cut))
        for s in batch_slices(len(sentences), batch_size, fold)
    ]


__all__ = ["Pair", "load_pairs", "pair_lines", "text_limit", "tokenize"]
