"""Text as Markdown shows it, character for character (the status line, a model card's tables).

A name or a message may hold characters Markdown reads as markup: "__init__" turned bold, a
label "sport | news" split a table's row, "[x](y)" became a link. ``escape_markdown`` escapes
them; an underscore inside a word ("least_squares") is text to Markdown and stays as it is.
"""

from __future__ import annotations

import re


def escape_markdown(text: str, keep_code: bool = False) -> str:
    """Return ``text`` with the characters Markdown would read as markup escaped.

    keep_code: leave backticks, so that `pip install ...` in a message shows as code.
    """
    marks = r"\\*\[\]#|~" + ("" if keep_code else "`")
    text = re.sub(f"([{marks}])", r"\\\1", text)
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
