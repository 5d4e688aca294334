"""Describe an N-way merge (three or more models, docs/method.md sec. 12): its report and
the facts and files of its model card, as ``heterogui.report`` does for a merge of two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from heterogui.align.alignment import Alignment
from heterogui.config import Recipe
from heterogui.distributed import world_size
from heterogui.export.card import bars_svg, model_card
from heterogui.export.job import WeightsDtype
from heterogui.export.rerun import rerun_command, rerun_threads
from heterogui.models.graph import space_order
from heterogui.models.storage import on_meta
from heterogui.nway import GroupMergeResult
from heterogui.report import (
    add_scores,
    alignment_facts,
    batch_norm_note,
    compact_heads,
    head_rows,
    metric_facts,
    model_facts,
    pair_card_notes,
    settings_facts,
    timings_of,
    with_weights_dtype,
)
from heterogui.sizes import STORED_REASON, input_shape, parameters_and_flops, stored_size
from heterogui.sources.base import Pair, model_key
from heterogui.tasks.base import Task


def group_report(
    result: GroupMergeResult,
    recipe: Recipe,
    total_seconds: float,
    task: Task | None = None,
    scores: dict[str, Any] | None = None,
    calibration_count: int | None = None,
) -> dict[str, Any]:
    """Return the JSON-ready report of an N-way merge (three or more models) run from ``recipe``.

    The keys of a two-model report, for every model: "parameters" and "metrics" have one entry
    per model ("a", "b", "c", ...) beside "ensemble" and "merged"; "widths" lists per merge
    point every model's width, then the merged width. "reference" is the model every other one
    is aligned to (the deepest, docs/method.md sec. 12), and "alignment" holds each model's
    alignment to it, its mapping keyed by the two models' keys (the reference's slots, then the
    model's; null for the reference).
    The merged parameters are the stored ones (``sizes.STORED_REASON``); "refit": the weights
    the sequential least-squares refit fitted again (0 with another fusion).
    """
    prep = result.prepared
    keys = [model_key(k) for k in range(len(prep.nets))]
    parameters = {k: net.parameter_count() for k, net in zip(keys, prep.nets, strict=True)}
    parameters["ensemble"] = sum(parameters.values())
    parameters["merged"] = sum(p.numel() for p in result.model.parameters())
    ref = keys[prep.reference]
    alignments = {k: aligned_to(a, ref, k) for k, a in zip(keys, prep.alignments, strict=True)}
    report: dict[str, Any] = {
        "models": [{"model": k, "name": n.label} for k, n in zip(keys, prep.nets, strict=True)],
        "parameters": parameters,
        "widths": {s: list(w) for s, w in result.widths().items()},
        "reference": ref,
        "alignment": {
            "mode": group_mode(result),
            "measure": prep.measure,
            "models": alignments,
        },
        "stop": result.spec.stop,
        "settings": settings_facts(result),
        "heads": head_rows(result),
        "refit": result.refit,
        "timings_seconds": timings_of(prep.timings, result.timings, total_seconds),
        "device": str(prep.device),
        # float sums split by thread, and by torchrun process: a merge repeats bit for bit
        # at the same counts
        "torch_threads": torch.get_num_threads(),
        "processes": world_size(),
    }
    return add_scores(report, task, scores, calibration_count)


def group_mode(result: GroupMergeResult) -> str:
    """Return the alignment mode of an N-way merge (every model's alignment has it)."""
    return next(a.mode for a in result.prepared.alignments if a is not None)


def group_card_facts(
    result: GroupMergeResult, pair: Pair, task: Task, scores: dict[str, Any] | None
) -> dict[str, Any]:
    """Return what the model card of an N-way merge shows (``export.card.model_card``)."""
    prep = result.prepared
    letters = [model_key(k).upper() for k in range(len(pair.models))]
    shape = input_shape(prep)
    sizes = {
        letter: parameters_and_flops(on_meta(lambda n=m.net: n.family.build(n.config)), shape)
        for letter, m in zip(letters, pair.models, strict=True)
    }
    sizes["ensemble"] = {
        k: None if any(v[k] is None for v in sizes.values()) else sum(v[k] for v in sizes.values())
        for k in ("parameters", "flops")
    }
    sizes["merged (stored)"] = stored_size(result.model, prep)
    models = []
    for letter, loaded in zip(letters, pair.models, strict=True):
        f = model_facts(loaded.net)
        models.append([letter, loaded.name, f["family"], f["depths"], f["parameters"]])
    reference = letters[prep.reference]
    slots = ", ".join(
        f"{letter} `{a.mapping()['b']}`"
        for letter, a in zip(letters, prep.alignments, strict=True)
        if a is not None
    )
    names = [m.name for m in pair.models]
    return {
        "title": f"Merge of {', '.join(names[:-1])} and {names[-1]}",
        "models": models,
        "heads": [[r["name"], r["classes"], r["model"]] for r in compact_heads(head_rows(result))],
        "alignment": {
            "text": (
                f"Mode **{group_mode(result)}**: every model is aligned to model {reference} "
                f"(the deepest) and padded to its blocks; per stage, the slots of {reference}'s "
                f"blocks that each model's blocks go to: {slots}."
            )
        },
        "alignment_figure": False,
        "settings": settings_facts(result),
        "width_header": [f"width {letter}" for letter in letters],
        "widths": [[sp, *w] for sp, w in result.widths().items()],
        "sizes": [[n, v["parameters"], v["flops"]] for n, v in sizes.items()],
        **metric_facts(task, scores, (*(k.lower() for k in letters), "ensemble", "merged")),
        "notes": [
            f"An N-way merge of {len(names)} models (docs/method.md sec. 12): one merged trunk, "
            "then one head per model; it is written in the heterogui format only.",
            f"Sizes: the merged model's are what it stores; {STORED_REASON}.",
            *pair_card_notes(pair, task, scores),
            *batch_norm_note(prep, scores, ", ".join(letters)),
        ],
    }


def group_card_files(
    result: GroupMergeResult,
    pair: Pair,
    task: Task,
    scores: dict[str, Any] | None,
    relative: Sequence[str] = (),
    weights: WeightsDtype | None = None,
) -> dict[str, str]:
    """Return the model card (README.md) of an N-way merge and its widths figure (relative,
    weights: as ``card_files``)."""
    facts = group_card_facts(result, pair, task, scores) | {
        "relative_inputs": list(relative),
        "rerun_flags": rerun_threads(result.prepared),
        "rerun_command": rerun_command(),
    }
    with_weights_dtype(facts, weights)
    files = {"README.md": model_card(facts)}
    series: dict[str, list[float]] = {model_key(k).upper(): [] for k in range(len(pair.models))}
    series["merged"] = []
    order = sorted(result.matches, key=space_order)
    for match in (result.matches[s] for s in order):
        for values, width in zip(series.values(), (*match.sizes, match.width), strict=True):
            values.append(width)
    files["widths.svg"] = bars_svg(order, series, "width per merge point")
    return files


def aligned_to(alignment: Alignment | None, reference: str, model: str) -> dict[str, Any] | None:
    """Return an N-way report's account of a model's alignment to the reference, its mapping
    keyed by the two models' keys (None for the reference itself)."""
    if alignment is None:
        return None
    facts = alignment_facts(alignment)
    slots = facts["mapping"]
    facts["mapping"] = {reference: slots["a"], model: slots["b"]}
    return facts
