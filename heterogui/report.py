"""The report of a merge: sizes, widths, alignment, timings and (optionally) metrics."""

from __future__ import annotations

from typing import Any

from heterogui.config import Recipe
from heterogui.pipeline import MergeResult


def parameter_counts(result: MergeResult) -> dict[str, int]:
    """Return the parameter counts of A, B, their ensemble and the merged model."""
    prep = result.prepared
    a, b = prep.net_a.parameter_count(), prep.net_b.parameter_count()
    merged = sum(p.numel() for p in result.model.parameters())
    return {"a": a, "b": b, "ensemble": a + b, "merged": merged}


def merge_report(
    result: MergeResult,
    recipe: Recipe,
    total_seconds: float,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the JSON-ready report of a merge run from ``recipe``.

    metrics: figures computed by the caller on ``recipe.evaluation`` (classification rows or
    sentence similarity); None: no metrics.
    """
    prep = result.prepared
    timings = {f"prepare.{k}": v for k, v in prep.timings.items()}
    timings.update({f"zip.{k}": v for k, v in result.timings.items()})
    timings["total"] = total_seconds
    report: dict[str, Any] = {
        "parameters": parameter_counts(result),
        "widths": {s: list(w) for s, w in result.widths().items()},
        "alignment": {
            "mode": result.alignment.mode,
            "mapping": result.alignment.mapping(),
            "depths": list(result.alignment.depths),
            "score": result.alignment.score,
        },
        "stop": result.spec.stop,
        "timings_seconds": timings,
        "device": str(prep.device),
    }
    if metrics is not None:
        report["metrics"] = metrics
    return report
