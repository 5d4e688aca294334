"""A tokenizer's vocabulary read from its files, without loading it: tokens in id order, a short
hash, and how two vocabularies differ (the pre-flight's vocabulary check, docs/method.md sec. 8).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from heterogui.errors import excerpt
from heterogui.text_input import text_lines


def vocab_tokens(path: Path) -> list[str] | None:
    """Return a tokenizer's tokens in id order, added (special) tokens included, or None.

    Reads vocab.txt, else tokenizer.json (its model vocabulary and its added tokens), else
    vocab.json (and added_tokens.json) of a folder; a GGUF file's own token list.
    """
    if path.suffix == ".gguf":
        from heterogui.sources.gguf_header import gguf_header

        return list(gguf_header(path).tokens)
    if (path / "vocab.txt").is_file():
        # one token a line, as transformers reads it: a token may hold U+2028 or a form feed
        return text_lines((path / "vocab.txt").read_text(encoding="utf-8"))
    if (path / "tokenizer.json").is_file():
        return _tokenizer_json_tokens(path / "tokenizer.json")
    if (path / "vocab.json").is_file():  # a BPE tokenizer without tokenizer.json (GPT-2's)
        try:
            by_id = {int(i): t for t, i in _json(path / "vocab.json").items()}
            if (path / "added_tokens.json").is_file():
                by_id.update({int(i): t for t, i in _json(path / "added_tokens.json").items()})
        except (ValueError, TypeError, AttributeError, RecursionError):
            return None
        return _in_id_order(by_id)
    return None


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _in_id_order(by_id: dict[int, str]) -> list[str]:
    return [by_id.get(i, "") for i in range(max(by_id) + 1)] if by_id else []


def _tokenizer_json_tokens(path: Path) -> list[str] | None:
    """Return the tokens of a tokenizer.json: its model's vocabulary and its added tokens."""
    try:
        data = _json(path)
        vocab = data["model"]["vocab"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if isinstance(vocab, dict):
        by_id = {int(i): t for t, i in vocab.items()}
    else:  # Unigram: a list of [token, score]
        by_id = {i: item[0] for i, item in enumerate(vocab)}
    for added in data.get("added_tokens") or []:
        if isinstance(added, dict) and "id" in added and "content" in added:
            by_id[int(added["id"])] = str(added["content"])
    return _in_id_order(by_id)


def tokens_hash(tokens: list[str] | None) -> str | None:
    """Return a short hash of a token list (None stays None)."""
    if tokens is None:
        return None
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()[:16]


def vocab_hash(folder: Path) -> str | None:
    """Hash the tokens in id order (from vocab.txt, else tokenizer.json), or None if neither."""
    return tokens_hash(vocab_tokens(folder))


def token_difference(a: list[str], b: list[str]) -> str:
    """Return how two token lists differ: their sizes and the first differing ids."""
    diffs = [i for i in range(min(len(a), len(b))) if a[i] != b[i]][:3]
    if not diffs and len(a) == len(b):
        return f"the same {len(a)} tokens, so the embedding tables' sizes differ"
    parts = [f"{len(a)} vs {len(b)} tokens"]
    if diffs:
        shown = ", ".join(f"id {i}: {a[i]!r} vs {b[i]!r}" for i in diffs)
        parts.append(f"first differing tokens {shown}")
    else:
        longer = a if len(a) > len(b) else b
        parts.append(
            f"one has extra tokens from id {min(len(a), len(b))}: "
            f"{longer[min(len(a), len(b))]!r} ..."
        )
    return "; ".join(parts)


# what two tokenizers encode to compare how they do: cases, digits, accents (one may strip
# them, or make an accented word unknown)
PROBE_TEXT = "Hello world, 42 times: café crème in São Paulo."


def encoding_difference(tokenizer_a: Any, tokenizer_b: Any, other: str = "B") -> str | None:
    """Return how model A's tokenizer and model ``other``'s encode a text differently (a start
    or end token one adds, another normalizer), or None when alike (or either is None)."""
    if tokenizer_a is None or tokenizer_b is None:
        return None
    try:
        ids_a, ids_b = (list(t(PROBE_TEXT)["input_ids"]) for t in (tokenizer_a, tokenizer_b))
    # the tokenizers library raises bare Exceptions ("WordPiece error: Missing [UNK] token"),
    # and a tokenizer the merge never runs (B's) may fail: said, not a failed merge
    except Exception as exc:
        return (
            f"A's and {other}'s tokenizers could not be compared ({excerpt(exc)}): the merge "
            "calibrates and scores both models on A's tokenization and keeps A's tokenizer"
        )
    if ids_a == ids_b:
        return None
    return (
        f"A and {other} tokenize text differently ({PROBE_TEXT!r}: {ids_a} vs {ids_b}; a start "
        "or end token one of them adds, or another normalizer): both are calibrated and scored "
        "on A's tokenization, and the merge keeps A's tokenizer"
    )
