"""Scored sentence pairs for sentence-similarity evaluation (docs/method.md sec. 11).

The built-in pairs live in ``heterogui/data/sts_pairs.tsv``: 168 pairs written for this project
(28 anchor sentences on varied everyday topics, each paired with six sentences graded 5 = same
meaning down to 0 = unrelated). Users may give their own .tsv file of the same form.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from heterogui.errors import ConfigError, excerpt
from heterogui.text_input import read_text, text_lines


@dataclass(frozen=True)
class Pair:
    """Two sentences and their similarity label in [0, 5]."""

    first: str
    second: str
    score: float


def load_pairs(path: str | Path | None = None) -> list[Pair]:
    """Read scored sentence pairs from a TSV (score, sentence1, sentence2; '#' comments).

    path: None for the built-in pairs.

    Raises:
        ConfigError: a malformed line or a score outside [0, 5].
    """
    if path is None:
        text = resources.files("heterogui").joinpath("data/sts_pairs.tsv").read_text("utf-8")
    else:
        text = read_text(Path(path), "sentence-pair file")
    name = "the built-in pairs" if path is None else Path(path).name
    pairs = []
    for number, line in enumerate(text_lines(text), 1):
        if not line.strip() or line.startswith("#") or line.startswith("score\t"):
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise ConfigError(
                f"{name} line {number}: {len(fields)} tab-separated fields, expected 3; write "
                "score<TAB>sentence1<TAB>sentence2 (a tab, not spaces, between them)"
            )
        try:
            score = float(fields[0])
        except ValueError:
            raise ConfigError(
                f"{name} line {number}: the score {excerpt(repr(fields[0]), 40)} is not a number; "
                "write score<TAB>sentence1<TAB>sentence2 with a score from 0 to 5"
            ) from None
        if not 0 <= score <= 5:
            raise ConfigError(
                f"{name} line {number}: score {score} is outside [0, 5]; scale the scores to 0-5"
            )
        pairs.append(Pair(fields[1], fields[2], score))
    return pairs


def pair_lines(pairs: list[Pair]) -> list[str]:
    """Return one "score<TAB>sentence1<TAB>sentence2" line per pair (what the hash covers)."""
    return [f"{p.score}\t{p.first}\t{p.second}" for p in pairs]
