"""The workbench's tables: numbers stay numbers, shown as the readout shows them.

A table cell holds its value and the text on screen apart (a pandas Styler, whose display
values gradio shows): a column of scores sorts by value (100 above 97.11 above 96), yet shows
each score with its task's decimals ("96.00" beside "97.11"), and counts show thousands
separators ("1,234,567") while sorting as numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

# Decimals per column: one number for every row, or one per row (None: the row's value as is).
Decimals = dict[str, int | Sequence[int | None]]


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], decimals: Decimals | None = None):
    """Return ``rows`` as a table the Dataframe shows (None when there are no rows).

    Whole numbers show with thousands separators, other numbers as Python writes them, and the
    columns named in ``decimals`` with that many decimals; None shows as an empty cell. Column
    names must be unique.
    """
    if not rows:
        return None
    frame = pd.DataFrame({name: _column([row[k] for row in rows]) for k, name in enumerate(header)})
    styler = frame.style.format(_text, na_rep="")
    for name, digits in (decimals or {}).items():
        if name not in frame.columns:
            continue
        per_row = [digits] * len(rows) if isinstance(digits, int) else list(digits)
        for d in {d for d in per_row if d is not None}:
            chosen = [i for i, e in enumerate(per_row) if e == d]
            styler.format(_fixed(d), subset=(chosen, [name]), na_rep="")
    return styler


def _column(cells: list[Any]) -> pd.Series:
    """Return a column that keeps whole numbers whole and other numbers as floats."""
    given = [c for c in cells if c is not None]
    numbers = [c for c in given if isinstance(c, Real) and not isinstance(c, bool)]
    if given and len(numbers) == len(given):
        whole = all(isinstance(c, Integral) for c in numbers)
        return pd.Series(cells, dtype="Int64" if whole else "float64")
    return pd.Series(cells, dtype=object)


def _text(value: Any) -> str:
    """Return a cell's text as the page showed it before: thousands separators for whole
    numbers, other numbers as Python writes them without a trailing ".0" (rho 1, not 1.0),
    true / false (as a recipe writes them), text as it is."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, Integral):
        return f"{value:,}"
    if isinstance(value, float):
        return repr(float(value)).removesuffix(".0")
    return str(value)


def _fixed(digits: int):
    """Return a formatter that writes a number with ``digits`` decimals (text as it is)."""
    return lambda v: f"{v:.{digits}f}" if isinstance(v, Real) else str(v)
