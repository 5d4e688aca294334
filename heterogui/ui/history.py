"""The session's merge history: the current merge, the merges kept in memory, the table rows.

A merge the workbench makes (a slider release, Merge, a 2-D sweep's cell, an imported recipe)
becomes the session's merge through ``commit_merge``: its knobs (``KNOBS``), size and scores
make a row of the history table (``history_table``), and its widths and layer pairs stay for
the Compare tab.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from heterogui.align.alignment import layer_pairs
from heterogui.pipeline import MergeResult, ZipSettings
from heterogui.ui.session import Session

# The Zip tab's knobs: the settings a user sets with one control each, in the order of every
# event's inputs. The fusion, the renormalization, then the heads come last, after the device in
# the merge events, so that API calls written before them still work: a missing last input takes
# the control's default (auto, off, pair).
KNOBS = ("matcher", "alpha", "beta", "rho", "stop", "fusion", "renormalize", "heads")
# The history table: who and what first (scores, sizes), then the settings; scores of every
# task the session met go between (Joint, Task A, ..., Spearman).
HISTORY_FIRST = ["merge", "pair"]
HISTORY_LAST = [
    "parameters",
    "stored parameters",
    "rho",
    "alpha",
    "beta",
    "stop",
    "matcher",
    "fusion",
    "ridge",
    "renormalize",
    "heads",
    "alignment",
    "overrides",
    "seconds",
]
KEEP_RESULTS = 4  # recent merges kept in memory (besides the two the Compare tab shows)


def knobs_of(settings: ZipSettings) -> dict[str, Any]:
    """Return the knob values of ``settings`` (``KNOBS``, in that order)."""
    return {k: getattr(settings, k) for k in KNOBS}


def commit_merge(
    session: Session,
    result: MergeResult,
    metrics: Any,
    size: dict[str, Any],
    seconds: float,
    requested: ZipSettings | None = None,
) -> None:
    """Make ``result`` the session's merge and add it to the history.

    requested: the settings the merge was asked for, which the knobs keep (fusion "auto" stays
    "auto", to be resolved again for another pair); None: the merge's own.
    """
    session.result, session.merged_metrics = result, metrics
    session.settings = requested or result.settings
    session.merged_size = size
    session.merge_count += 1
    if session.sweep_key != sweep_key(session.settings, result.alignment):
        session.sweep = []
    session.history.append(history_row(session, result, metrics, size, seconds))
    keep_result(session, result)


def keep_result(session: Session, result: MergeResult) -> None:
    """Record the merge's widths and layer pairs; keep it (and the pinned ones) in memory.

    Only the ``KEEP_RESULTS`` newest merges and the two the Compare tab shows stay in memory.
    """
    n, prep = session.merge_count, result.prepared
    session.details[n] = {
        "widths": result.widths(),
        "pairs": layer_pairs(result.alignment, prep.net_a.graph(), prep.net_b.graph()),
    }
    session.kept[n] = result
    recent = sorted(session.kept)[-KEEP_RESULTS:]
    for old in [m for m in session.kept if m not in recent and m not in session.pinned]:
        del session.kept[old]


def score_columns(columns: list[str]) -> list[str]:
    """Return the score columns of a ``history_table`` (every task's the session met)."""
    return columns[len(HISTORY_FIRST) : columns.index(HISTORY_LAST[0])]


def sweep_key(settings: ZipSettings, alignment: Any) -> tuple:
    """Return what a rho sweep depends on: every setting but rho, and the alignment."""
    return (dataclasses.replace(settings, rho=0.0), alignment.positions_a, alignment.positions_b)


def history_row(
    session: Session, result: MergeResult, metrics: Any, size: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """Return the history entry of a merge: settings, size and scores."""
    s = result.settings
    row = {
        "merge": session.merge_count,
        "pair": session.pair_name,
        "alignment": result.alignment.mode,
        **knobs_of(s),
        "stop": result.spec.stop,
        "ridge": fusion_ridge(s),
        "overrides": len(s.overrides),
        "parameters": size["parameters"],
        "stored parameters": size["stored_parameters"],
        "flops": size["flops"],
        "seconds": round(seconds, 3),
    }
    row.update(session.task.columns(metrics), score=session.task.headline(metrics))
    row["score_digits"] = session.task.score_digits  # the decimals the table shows its scores with
    return row


def fusion_ridge(settings: ZipSettings) -> float | None:
    """Return the ridge a merge used (None with average fusion, which has none)."""
    return settings.ridge if settings.fusion != "average" else None


def history_table(
    history: list[dict[str, Any]], flops: bool = False
) -> tuple[list[str], list[list[Any]]]:
    """Return the history's columns (who, scores, sizes, settings) and one row per merge.

    flops: also the effective FLOPs column (the page leaves it out for width; files keep it).
    The score columns are those between "pair" and "parameters" (``score_columns``).
    """
    known = {*HISTORY_FIRST, *HISTORY_LAST, "flops", "score", "score_digits"}
    scores = [k for k in dict.fromkeys(k for h in history for k in h) if k not in known]
    last = list(HISTORY_LAST)
    if flops:
        last.insert(last.index("stored parameters") + 1, "flops")
    columns = [*HISTORY_FIRST, *scores, *last]
    return columns, [[h.get(c) for c in columns] for h in history]
