"""Text that users hand in: files read as UTF-8 within a size limit, YAML without aliases.

Recipes, data files and sentence lists all come through here, so a binary file, an oversized
file or a YAML bomb gets the same one-line error wherever it is given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from heterogui.errors import ConfigError, excerpt


def read_text(path: Path, what: str, limit: int | None = None) -> str:
    """Return a text file's content (UTF-8), refusing binary files and files over ``limit``.

    Raises:
        ConfigError: the file is over the limit, unreadable, or not UTF-8 text.
    """
    size = path.stat().st_size
    if limit is not None and size > limit:
        raise ConfigError(
            f"{what} {str(path)!r} is {size:,} bytes, over the {limit:,} a {what} may have; "
            "pass the right file"
        )
    try:
        data = path.read_bytes()
    except PermissionError:
        raise ConfigError(
            f"cannot read {what} {str(path)!r}: permission denied; make it readable"
        ) from None
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Excel, Notepad) is not text
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {str(path)!r} is not UTF-8 text: byte {exc.start} is not UTF-8 (a Latin-1 "
            "or UTF-16 file, or a binary one?); save it as UTF-8 or pass a UTF-8 text file"
        ) from exc


def text_lines(text: str) -> list[str]:
    """Return the lines of ``text``, ended by a line feed, a CRLF or a lone carriage return
    (classic Mac files, Excel for Mac's tab-delimited text).

    ``str.splitlines`` also splits at characters a sentence may hold (U+2028, form feeds, ...),
    which made one line of a file two sentences, or a row of a .tsv two short rows.
    """
    lines = re.split(r"\r\n|\r|\n", text)
    return lines[:-1] if lines and not lines[-1] else lines


class _NoAliases(yaml.SafeLoader):
    """A safe YAML loader that refuses aliases ("*name" can expand without bound) and keys
    given twice in one mapping (YAML would keep the last one without a word)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, list | dict | set):
                    raise yaml.MarkedYAMLError(
                        problem="a key is a list or a mapping (keys are names)",
                        problem_mark=key_node.start_mark,
                    )
                if isinstance(key, str | int | float | bool) and key in seen:
                    raise yaml.MarkedYAMLError(
                        problem=f"key {excerpt(repr(key), 40)} is given twice",
                        problem_mark=key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                problem=f"alias *{excerpt(event.anchor, 40)} (aliases are refused)",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)


# YAML 1.1 (PyYAML's) reads 1e-3 and 1.0e3 as strings; JSON and YAML 1.2 read them as numbers
_NoAliases.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


# what to do about the YAML parser's most common problems (its words, then the fix)
_YAML_FIXES = (
    ("is given twice", "give each key once"),
    ("'\\t'", "indent with spaces, not tabs"),
    (
        "mapping values are not allowed",
        "check the indentation and the colons: a key's entries go on lines of their own, "
        "indented under it alike, and a value holding ': ' goes in quotes",
    ),
    ("(aliases are refused)", "write each value out in full"),
)


def yaml_fix(problem: str) -> str:
    """Return the fix to say for the YAML parser's ``problem`` (plain YAML or JSON, else)."""
    for words, fix in _YAML_FIXES:
        if words in problem:
            return fix
    return "write plain YAML or JSON"


def load_yaml(text: str, what: str) -> Any:
    """Return the value of YAML (or JSON) ``text`` written by a user, without aliases.

    Raises:
        ConfigError: the text does not parse, nests too deeply, or uses an alias; the message
            quotes at most a short excerpt of the parser's words.
    """
    try:
        return yaml.load(text, Loader=_NoAliases)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(
            f"{what} does not parse{where}: {excerpt(problem, 120)}; {yaml_fix(str(problem))}"
        ) from exc
    except ValueError as exc:  # a number of more than 4,300 digits, a date of month 13
        raise ConfigError(
            f"{what} does not parse: {value_problem(exc)}; write plain YAML or JSON"
        ) from exc
    except RecursionError as exc:  # the parser recurses once per level of nesting
        raise ConfigError(
            f"{what} nests lists or mappings too deeply to read; write plain YAML or JSON of a "
            "few levels"
        ) from exc


def value_problem(exc: ValueError) -> str:
    """Return a parser's ValueError in a user's words (Python's own names a setting of its)."""
    if "integer string conversion" in str(exc):
        return "it holds a number of more than 4,300 digits"
    return excerpt(exc, 120)


def typed_path(text: str | None) -> str:
    """Return a path as typed into a text box: without the whitespace around it and without one
    pair of matching quotes around it (a path copied "as path" from a file manager)."""
    text = (text or "").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1].strip()
    return text
