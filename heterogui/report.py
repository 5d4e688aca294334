"""Describe a merge: the report (report.json) and the facts of its model card.

Both are pure functions of a finished merge, so the CLI, the workbench and the benchmarks
describe a merge the same way.
"""

from __future__ import annotations

from typing import Any

from heterogui.align.alignment import layer_pairs
from heterogui.config import Recipe
from heterogui.export.card import bars_svg, heatmap_svg, model_card
from heterogui.models.family import Network
from heterogui.models.graph import INPUT, LOGITS
from heterogui.pipeline import MergeResult
from heterogui.sizes import STORED_REASON, merge_size, reference_sizes
from heterogui.sources.base import Pair
from heterogui.tasks.base import Task


def parameter_counts(result: MergeResult) -> dict[str, int]:
    """Return the parameter counts of A, B, their ensemble and the merged model."""
    prep = result.prepared
    a, b = prep.net_a.parameter_count(), prep.net_b.parameter_count()
    merged = sum(p.numel() for p in result.model.parameters())
    effective = merge_size(result)["parameters"]
    return {"a": a, "b": b, "ensemble": a + b, "merged": merged, "merged_effective": effective}


def head_rows(result: MergeResult) -> list[dict[str, Any]]:
    """Return the merged model's task heads in output order: name, classes and source model."""
    return [
        {"head": k, "name": h.name, "classes": list(h.classes), "model": model}
        for k, (model, h) in enumerate(
            (model, h) for model, heads in zip("AB", result.spec.heads, strict=True) for h in heads
        )
    ]


def merge_report(
    result: MergeResult,
    recipe: Recipe,
    total_seconds: float,
    task: Task | None = None,
    scores: dict[str, Any] | None = None,
    calibration_count: int | None = None,
) -> dict[str, Any]:
    """Return the JSON-ready report of a merge run from ``recipe``.

    scores: "a", "b", "ensemble" and "merged" scores of ``task`` on the recipe's evaluation
    data (None: not evaluated).
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
        "heads": head_rows(result),
        "timings_seconds": timings,
        "device": str(prep.device),
    }
    if task is not None:
        report["task"] = task.kind
    if calibration_count is not None:
        report["calibration_count"] = calibration_count
    if scores is not None and task is not None:
        report["metrics"] = {k: task.to_json(v) for k, v in scores.items()}
        report["alarms"] = task.alarms(scores)
    return report


def model_facts(net: Network) -> dict[str, Any]:
    """Return what a model card shows of a network: family, depths, widths, parameters, heads."""
    graph = net.graph()
    widths = block_widths(net)
    return {
        "label": net.label,
        "family": net.family.name,
        "input_width": graph.spaces[INPUT].width,
        "depths": [len(w) for w in widths],
        "widths": widths,
        "parameters": net.parameter_count(),
        "classes": list(net.head_classes()),
        "heads": [h.name for h in net.task_heads()],
    }


def block_widths(net: Network) -> list[list[int]]:
    """Return per stage the width of every block (its own inner space, else its output)."""
    graph = net.graph()
    owners = {name: {c.block for c in space.captures} for name, space in graph.spaces.items()}
    out = []
    for stage in graph.stages:
        widths = []
        for block in stage:
            own = [
                graph.spaces[n].width
                for n, blocks in owners.items()
                if blocks == {block} and n not in (INPUT, LOGITS)
            ]
            widths.append(own[0] if own else graph.spaces[graph.block_out[block]].width)
        out.append(widths)
    return out


def card_facts(
    result: MergeResult,
    pair: Pair,
    task: Task,
    scores: dict[str, Any] | None,
) -> dict[str, Any]:
    """Return what the model card of a merge shows (see ``heterogui.export.card.model_card``)."""
    prep = result.prepared
    models = []
    for name, loaded in (("A", pair.a), ("B", pair.b)):
        f = model_facts(loaded.net)
        models.append([name, loaded.name, f["family"], f["depths"], f["parameters"]])
    sizes = dict(reference_sizes(prep))
    size = merge_size(result)
    sizes["merged (effective)"] = size
    sizes["merged (stored)"] = {
        "parameters": size["stored_parameters"],
        "flops": size["stored_flops"],
    }
    metrics, header = [], ["model", *task.columns(None)]
    if scores is not None:
        named = {k: scores.get(k) for k in ("a", "b", "ensemble", "merged")}
        metrics = [[n, *task.columns(v).values()] for n, v in named.items()]
    al = result.alignment
    s = result.settings
    return {
        "title": f"Merge of {pair.a.name} and {pair.b.name}",
        "models": models,
        "heads": [[r["name"], r["classes"], r["model"]] for r in head_rows(result)],
        "alignment": {
            "mode": al.mode,
            "mapping": al.mapping(),
            "score": "n/a" if al.score is None else f"{al.score:.3f}",
        },
        "settings": {
            "matcher": s.matcher,
            "alpha": s.alpha,
            "beta": s.beta,
            "rho": s.rho,
            "stop": result.spec.stop,
            "overrides": dict(s.overrides),
        },
        "widths": [[sp, *w] for sp, w in sorted(result.widths().items())],
        "sizes": [[n, v["parameters"], v["flops"]] for n, v in sizes.items()],
        "metric_header": header,
        "metrics": metrics,
        "notes": [
            f"Sizes: effective sizes count what a model computes with; {STORED_REASON}.",
            *(
                f"Model {n} ({m.name}): {m.note}."
                for n, m in (("A", pair.a), ("B", pair.b))
                if m.note
            ),
            *(f"Collapse alarm: {a}." for a in (task.alarms(scores) if scores else [])),
        ],
    }


def card_files(
    result: MergeResult, pair: Pair, task: Task, scores: dict[str, Any] | None, fmt: str
) -> dict[str, str]:
    """Return the model card (README.md, in output format ``fmt``) and its SVG figures."""
    prep = result.prepared
    files = {"README.md": model_card(card_facts(result, pair, task, scores), fmt)}
    if prep.similarity is not None:
        files["alignment.svg"] = heatmap_svg(
            prep.similarity.tolist(),
            layer_pairs(result.alignment, prep.net_a.graph(), prep.net_b.graph()),
            f"layer CKA, {result.alignment.mode} path",
        )
    widths = result.widths()
    files["widths.svg"] = bars_svg(
        list(widths),
        {k: [w[i] for w in widths.values()] for i, k in enumerate(("A", "B", "merged"))},
        "width per merge point",
    )
    return files
