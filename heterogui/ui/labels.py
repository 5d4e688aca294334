"""The words the workbench shows about a merge: its fusion, heads, renormalization, metric and
collapse alarm (docs/method.md secs. 8, 9 and 11)."""

from __future__ import annotations

from heterogui.config import SPLIT_HEADS
from heterogui.pipeline import MergeResult, ZipSettings
from heterogui.tasks import Task
from heterogui.ui.session import Session
from heterogui.zip.plan import head_group_firsts

# the least-squares fusions by the names the page shows (the Zip tab's dropdown, messages)
FUSION_NAMES = {
    "least_squares": "least squares",
    "least_squares_heads": "least squares, heads refit",
    "least_squares_sequential": "sequential least squares",
}


def fusion_text(settings: ZipSettings) -> str:
    """Return the fusion of ``settings`` for messages ("least squares (ridge 0.01)")."""
    if settings.fusion == "average":
        return "average"
    return f"{FUSION_NAMES[settings.fusion]} (ridge {settings.ridge:g})"


def heads_text(result: MergeResult) -> str:
    """Return what head selection did to a merge, for messages (it was on): how many merged
    head pairs took A's head and how many B's (a split: the size its heads were cut to)."""
    graph = result.prepared.padded_a.graph()
    if result.settings.heads == SPLIT_HEADS:
        if result.split_rank is None:
            return "heads: no attention heads to split"
        d = result.prepared.padded_a.config.head_dim
        return f"heads split: every head of A and B kept, cut from {d} to {result.split_rank}"
    taken = [0, 0]
    for name in head_group_firsts(graph):
        match = result.matches.get(name)
        if match is None or match.weights is None:
            continue
        owners, kept = match.owners(), match.groups >= 0
        chosen = kept & (match.weights == 1)
        chosen[kept] &= match.shared_groups()[match.groups[kept]]
        for model in (0, 1):
            taken[model] += int((chosen & (owners == model)).sum()) // graph.spaces[name].unit
    if not any(taken):
        return "heads: no merged attention heads to select"
    kept = f"{taken[0]} merged head pairs kept A's head, {taken[1]} B's"
    if result.searched is None:
        return f"heads selected: {kept}"
    tried, value = result.searched
    return (
        f"heads searched: {kept} (best of {tried} merges tried, divergence from the parents "
        f"{value:.4g}; {result.timings.get('search', 0.0):.1f}s)"
    )


def renormalize_text(result: MergeResult) -> str:
    """Return what renormalization did to a merge, for messages (it was on)."""
    n = result.renormalized
    if n == 0:
        return (
            "renormalize: no LayerNorm/RMSNorm or value outputs to rescale in these models "
            "(BatchNorm re-estimation does that job)"
        )
    outputs = f"{n} merged output{'s' if n != 1 else ''}"
    return f"renormalized {outputs} to the parents' average statistics"


def lower_is_better(task: Task | None) -> bool:
    """Return whether a smaller headline score is better for ``task`` (perplexity)."""
    if task is None:
        return False
    return task.lower_is_better


def metric_label(task: Task | None) -> str:
    """Return the headline metric's name for axes and tables ("perplexity (lower is better)")."""
    if task is None:
        return "score"
    return f"{task.metric} (lower is better)" if lower_is_better(task) else task.metric


def merge_alarms(session: Session) -> list[str]:
    """Return why the current merge's scores look broken (the task's alarms; none: [])."""
    task = session.task
    if task is None or session.result is None or session.merged_metrics is None:
        return []
    return task.alarms({**session.baseline, "merged": session.merged_metrics})


def alarm_line(reasons: list[str]) -> str:
    """Return the one-line collapse alarm of a merge ("" when there is no reason)."""
    if not reasons:
        return ""
    return (
        "⚠ **Collapse alarm**: the merge completed but looks broken: "
        + "; ".join(reasons)
        + ". Try a lower rho, a later stop point or more calibration texts."
    )
