"""JSON for people to read: indented, with every list of plain numbers on one line.

A report's merged widths ([512, 768, 1024]) read as one line, and a language model's heads (all
49,152 token ids) take one line each instead of 49,152. The same JSON values either way.
"""

from __future__ import annotations

import json
import re
from typing import Any

_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
# an indented list holding numbers only (strings, lists and objects are never matched)
_NUMBER_LIST = re.compile(rf"\[\s*({_NUMBER}(?:,\s*{_NUMBER})*)\s*\]")


def readable_json(value: Any, sort_keys: bool = False, ascii_only: bool = True) -> str:
    """Return ``value`` as indented JSON with its lists of numbers on one line each.

    ascii_only: other characters as \\u escapes (files: a name with bytes that are not UTF-8
    holds lone surrogates, which no UTF-8 file can store); False for a terminal, which writes
    what it cannot show as escapes itself (cli._print_any_text).
    """
    text = json.dumps(value, indent=2, sort_keys=sort_keys, ensure_ascii=ascii_only)
    return _NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)
