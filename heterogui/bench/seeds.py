"""Benchmark rows over several calibration draws: means, with the spread beside them.

A table's rows come from ``run(seed)`` once per seed, in the same order with the same labels.
A cell that is the same on every draw stays as it is. A numeric cell that differs becomes the
mean over the seeds, so every reader of the rows (readings, findings) sees plain numbers as
with one draw; its sample standard deviation is kept under ``row[SPREAD][column]`` and ``cell``
prints it as "mean ± std". Any other cell that differs between seeds (the slots an alignment
chose on each draw) becomes a ``PerSeed``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]
SPREAD = "±"  # the key of a row's standard deviations: {column: std}


class PerSeed(list):
    """The values of one cell on each seed, when they differ and are not numbers."""


def over_seeds(
    run: Callable[[int], list[Row]], seeds: Sequence[int], key: str = "model"
) -> list[Row]:
    """Return the rows of ``run(seed)`` over ``seeds``: means, spreads and per-seed values.

    Raises:
        ValueError: no seeds, or two seeds' rows do not have the same labels (``key``).
    """
    if not seeds:
        raise ValueError("give at least one seed")
    runs = [run(seed) for seed in seeds]
    labels = [[row.get(key) for row in rows] for rows in runs]
    if any(other != labels[0] for other in labels[1:]):
        raise ValueError(f"the seeds' rows differ: {labels}")
    return [combine(rows) for rows in zip(*runs, strict=True)]


def combine(rows: Sequence[Row]) -> Row:
    """Return one row from the same row on several seeds (see the module docstring)."""
    out: Row = {}
    spread: dict[str, float] = {}
    for column in dict.fromkeys(k for row in rows for k in row):
        values = [row.get(column) for row in rows]
        if all(v == values[0] for v in values):  # the same on every draw (a parent's score)
            out[column] = values[0]
        elif all(_number(v) for v in values):
            out[column] = statistics.fmean(values)
            spread[column] = statistics.stdev(values)
        else:
            out[column] = PerSeed(values)
    if spread:
        out[SPREAD] = spread
    return out


def _number(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def cell(row: Row, column: str, render: Callable[[Any], str]) -> str:
    """Return ``render`` of the row's cell, with " ± std" after a mean over seeds.

    render: how one value of the column prints (the table's own formatting).
    """
    value = row.get(column)
    if isinstance(value, PerSeed):
        return " / ".join(render(v) for v in value)
    text = render(value)
    std = row.get(SPREAD, {}).get(column)
    return text if std is None else f"{text} ± {render(std)}"


def columns(rows: Sequence[Row]) -> list[str]:
    """Return the rows' columns in first-seen order, without the spreads' key."""
    return [c for c in dict.fromkeys(k for row in rows for k in row) if c != SPREAD]
