"""Describe a merge: the report (report.json) and the facts of its model card.

Both are pure functions of a finished merge, so the CLI, the workbench and the benchmarks
describe a merge the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from heterogui.align.alignment import Alignment, layer_pairs
from heterogui.config import SPLIT_HEADS, Recipe
from heterogui.distributed import world_size
from heterogui.errors import ExportError, ModelLoadError
from heterogui.export.card import bars_svg, class_ranges, heatmap_svg, model_card
from heterogui.export.hf_heads import card_use
from heterogui.export.job import (
    HETEROGUI_FORMAT,
    HF_BERT_FORMAT,
    HF_VIT_FORMAT,
    OR_HETEROGUI,
    WeightsDtype,
)
from heterogui.export.registry import exporter
from heterogui.export.rerun import rerun_command, rerun_threads
from heterogui.fusion.bn import has_batch_norm
from heterogui.fusion.merged import network_config
from heterogui.models.family import Network, family_of
from heterogui.models.graph import INPUT, LOGITS
from heterogui.nway import GroupMergeResult
from heterogui.pipeline import MergeResult
from heterogui.ready import BN_STAGES
from heterogui.sizes import (
    STORED_REASON,
    merge_size,
    reference_sizes,
)
from heterogui.sources.base import (
    LANGUAGE_MODELING,
    SENTENCE_SIMILARITY,
    Loaded,
    Pair,
    model_key,
)
from heterogui.sources.folder import text_format
from heterogui.tasks.base import Task
from heterogui.tasks.images import is_classifier


def parameter_counts(result: MergeResult) -> dict[str, int]:
    """Return the parameter counts of A, B, their ensemble and the merged model."""
    prep = result.prepared
    a, b = prep.net_a.parameter_count(), prep.net_b.parameter_count()
    merged = sum(p.numel() for p in result.model.parameters())
    effective = merge_size(result)["parameters"]
    return {"a": a, "b": b, "ensemble": a + b, "merged": merged, "merged_effective": effective}


def head_rows(result: MergeResult | GroupMergeResult) -> list[dict[str, Any]]:
    """Return the merged model's task heads in output order: name, classes and source model."""
    letters = [model_key(m).upper() for m in range(len(result.spec.heads))]
    return [
        {"head": k, "name": h.name, "classes": list(h.classes), "model": model}
        for k, (model, h) in enumerate(
            (model, h)
            for model, heads in zip(letters, result.spec.heads, strict=True)
            for h in heads
        )
    ]


def compact_heads(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``head_rows`` (or a report's "heads") with the classes as ``class_ranges``."""
    return [{**row, "classes": class_ranges(row["classes"])} for row in rows]


def compact_metrics(metrics: Any, digits: int = 4) -> Any:
    """Return a report's "metrics" as a summary reads them: numbers rounded to ``digits``, and
    a classifier's per-task rows ({name, accuracy, count}) as one mapping name -> accuracy."""
    if isinstance(metrics, float):
        return round(metrics, digits)
    if isinstance(metrics, dict):
        return {k: compact_metrics(v, digits) for k, v in metrics.items()}
    if isinstance(metrics, list) and all(
        isinstance(r, dict) and {"name", "accuracy"} <= set(r) for r in metrics
    ):
        return {r["name"]: compact_metrics(r["accuracy"], digits) for r in metrics}
    if isinstance(metrics, list):
        return [compact_metrics(v, digits) for v in metrics]
    return metrics


def alignment_facts(alignment: Alignment) -> dict[str, Any]:
    """Return a report's account of an alignment: mapping, slots per stage and score."""
    return {
        "mapping": alignment.mapping(),
        "depths": list(alignment.depths),
        "score": alignment.score,
    }


def timings_of(
    prepare: dict[str, float], zipping: dict[str, float], total: float
) -> dict[str, float]:
    """Return a report's timings: the prepare and zip stages (seconds) and the total."""
    timings = {f"prepare.{k}": v for k, v in prepare.items()}
    timings.update({f"zip.{k}": v for k, v in zipping.items()})
    timings["total"] = total
    return timings


def add_scores(
    report: dict[str, Any],
    task: Task | None,
    scores: dict[str, Any] | None,
    calibration_count: int | None,
) -> dict[str, Any]:
    """Add the task, the calibration count and the scores (with their alarms) to ``report``."""
    if task is not None:
        report["task"] = task.kind
    if calibration_count is not None:
        report["calibration_count"] = calibration_count
    if scores is not None and task is not None:
        report["metrics"] = {k: task.to_json(v) for k, v in scores.items()}
        report["alarms"] = task.alarms(scores)
    return report


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
    report: dict[str, Any] = {
        "parameters": parameter_counts(result),
        "widths": {s: list(w) for s, w in result.widths().items()},
        "alignment": {
            "mode": result.alignment.mode,
            "measure": result.prepared.measure,
            **alignment_facts(result.alignment),
        },
        "stop": result.spec.stop,
        "settings": settings_facts(result),
        "heads": head_rows(result),
        "timings_seconds": timings_of(prep.timings, result.timings, total_seconds),
        "device": str(prep.device),
        # float sums split by thread, and by torchrun process: a merge repeats bit for bit
        # at the same counts
        "torch_threads": torch.get_num_threads(),
        "processes": world_size(),
    }
    return add_scores(report, task, scores, calibration_count)


def add_pair_notes(report: dict[str, Any], pair: Pair) -> None:
    """Add what the merge does other than either model would (``Pair.notes``) to a report."""
    if pair.notes:
        report["notes"] = list(pair.notes)


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
    al = result.alignment
    return {
        "title": f"Merge of {pair.a.name} and {pair.b.name}",
        "models": models,
        "heads": named_heads(result, pair),
        "heads_header": heads_header(pair),
        "alignment": {
            "mode": al.mode,
            "mapping": al.mapping(),
            "score": "n/a" if al.score is None else f"{al.score:.3f}",
        },
        "settings": settings_facts(result),
        "widths": [[sp, *w] for sp, w in result.widths().items()],
        "sizes": [[n, v["parameters"], v["flops"]] for n, v in sizes.items()],
        **metric_facts(task, scores, ("a", "b", "ensemble", "merged")),
        "notes": [
            f"Sizes: effective sizes count what a model computes with; {STORED_REASON}.",
            *pair_card_notes(pair, task, scores),
            *_pooling_note(pair, scores),
            *batch_norm_note(prep, scores, "A, B"),
            *split_heads_note(result),
        ],
    }


def split_heads_note(result: MergeResult | GroupMergeResult) -> list[str]:
    """Return, for a merge whose attention heads are split, the card's note on merging it
    again: its heads are half as wide as the models' it came from."""
    attention = getattr(result.spec.trunk_config, "heads", None) is not None
    if result.settings.heads != SPLIT_HEADS or not attention:  # a CNN's split changes nothing
        return []
    return [
        "Attention heads split (`zip.heads: split`): every head of A and of B is kept at half "
        "its dimension, so a next merge takes this model only with a merge made the same way; "
        "to merge it with other models, make it with `zip.heads: pair`."
    ]


def pair_card_notes(pair: Pair, task: Task, scores: dict[str, Any] | None) -> list[str]:
    """Return a card's notes on the models merged: each model's own, the pair's
    (``Pair.notes``) and the collapse alarms of the scores."""
    return [
        *(
            f"Model {model_key(k).upper()} ({m.name}): {m.note}."
            for k, m in enumerate(pair.models)
            if m.note
        ),
        *(f"{note[0].upper()}{note[1:]}." for note in pair.notes),
        *(f"Collapse alarm: {a}." for a in (task.alarms(scores) if scores else [])),
    ]


def named_heads(result: MergeResult, pair: Pair) -> list[list[Any]]:
    """Return the card's head rows (name, classes, model), classes by their label names where
    the models' configs name them (``Loaded.labels``), else as ``class_ranges``."""
    letters = [model_key(k).upper() for k in range(len(pair.models))]
    names = {  # per model: its own labels (two models may give one class id other names)
        letter: dict(zip(m.net.head_classes(), m.labels, strict=True))
        for letter, m in zip(letters, pair.models, strict=True)
        if m.labels is not None
    }
    kinds = {  # per model: what its heads' outputs are when they are no classes
        letter: outputs_kind(pair, m) for letter, m in zip(letters, pair.models, strict=True)
    }
    mixed = len(set(kinds.values())) > 1  # a feature model beside a classifier
    rows = []
    for row in head_rows(result):
        own, what = names.get(row["model"], {}), kinds.get(row["model"])
        named = what is None and all(c in own for c in row["classes"])
        shown = ", ".join(own[c] for c in row["classes"]) if named else None
        shown = shown or class_ranges(row["classes"])
        if what is None and mixed:  # the column says "outputs": a classifier's are classes
            what = "classes"
        rows.append([row["name"], f"{what} {shown}" if what else shown, row["model"]])
    return rows


# what the outputs of a head that is no classifier are, as the card's head table names them
NOT_CLASSES = {SENTENCE_SIMILARITY: "embedding dimensions", LANGUAGE_MODELING: "token ids"}


def outputs_kind(pair: Pair, model: Loaded) -> str | None:
    """Return what the outputs of ``model``'s heads are when they are no classes (None for a
    classifier): ``NOT_CLASSES`` by the pair's task, or "embedding dimensions" for a model
    without a classifier of an image task (a ViTModel folder, such as the folder a ViT merge's
    Hugging Face export writes: its head gives the pooled features), beside a classifier or
    not."""
    what = NOT_CLASSES.get(pair.task)
    if what is None and not is_classifier(model.net):
        return "embedding dimensions"
    return what


def heads_header(pair: Pair) -> str:
    """Return the card's head-table column of a head's outputs: classes for classifiers."""
    return "classes" if all(outputs_kind(pair, m) is None for m in pair.models) else "outputs"


def _pooling_note(pair: Pair, scores: dict[str, Any] | None) -> list[str]:
    """Return, for scored embedding models, how A's and B's embeddings were pooled."""
    pooling = getattr(pair.a.net.config, "pooling", None)
    if not scores or pooling is None or pair.task != SENTENCE_SIMILARITY:
        return []
    return [
        f"Scores: A, B and the ensemble embed with this merge's pooling ({pooling} of the token "
        "states, transformer.pooling), which may differ from a sentence-transformers folder's "
        "own (its 1_Pooling)."
    ]


def settings_facts(result: MergeResult | GroupMergeResult) -> dict[str, Any]:
    """Return the zip settings a model card and report.json list, as the merge ran them
    ("auto" fusion and heads resolved to the family's; heads only for models with attention,
    bn_units for models with BatchNorm, norm_weights for models whose residual stream RMSNorms
    read, the ridge only for least-squares fusions)."""
    s = result.settings
    facts = {
        "matcher": s.matcher,
        "alpha": s.alpha,
        "beta": s.beta,
        "rho": s.rho,
        "stop": result.spec.stop,
        "overrides": dict(sorted(s.overrides.items())),  # as recipe.yaml: a rerun's card alike
        "fusion": s.fusion,
    }
    if s.fusion != "average":
        facts["ridge"] = s.ridge
    prep = result.prepared
    net = prep.net_a if isinstance(result, MergeResult) else prep.nets[0]
    if has_batch_norm(net.module):  # BatchNorm units: a setting of BatchNorm models only
        facts["bn_units"] = s.bn_units
    if net.graph().rms_stream is not None:  # weighted norms: a setting of RMSNorm streams only
        facts["norm_weights"] = s.norm_weights
    facts["renormalize"] = s.renormalize
    if getattr(result.spec.trunk_config, "heads", None) is not None:
        facts["heads"] = s.heads
    return facts


def batch_norm_note(prep: Any, scores: dict[str, Any] | None, names: str) -> list[str]:
    """Return, for scored models whose BatchNorm was re-estimated before merging, the note that
    their scores are those of the re-estimated copies (names: "A, B" ...)."""
    if not scores or not set(BN_STAGES) & set(prep.timings):
        return []
    return [
        f"Scores of {names} and the ensemble: with their BatchNorm statistics re-estimated on "
        "this merge's calibration data, as the merge reads them (the models as given may "
        "score otherwise; reset_input_bn: false keeps their own statistics)."
    ]


def metric_facts(
    task: Task, scores: dict[str, Any] | None, keys: Sequence[str]
) -> dict[str, list[Any]]:
    """Return a model card's score table: "metric_header" and one row per key (none: []).

    The columns are those of the scores (a merge of three tasks has a column per task), each
    score as the workbench shows it (``Task.score_text``: "96.00" beside "97.11", not "96").
    """
    if scores is None:
        return {"metric_header": ["model", *task.columns(None)], "metrics": []}

    def row(label: str, value: Any) -> list[Any]:  # scores with the workbench's decimals
        return [label, *(task.score_text(v) for v in task.columns(value).values())]

    rows = [row(k, scores.get(k)) for k in keys]
    if "merged" in keys:
        rows += [row(label, value) for label, value in task.merge_rows(scores.get("merged"))]
    scored = next((v for v in scores.values() if v is not None), None)
    return {"metric_header": ["model", *task.columns(scored)], "metrics": rows}


def not_one_network(result: MergeResult, fmt: str) -> str | None:
    """Return why a merge written in ``fmt`` loads back only as a merged model, not as one
    network to use or merge again (None: it does, or ``fmt`` is a Hugging Face format)."""
    if fmt != HETEROGUI_FORMAT:
        return None
    family = family_of(result.model.spec.trunk_config).name
    text = text_format(family)
    if text is not None:
        try:  # why the text format does not hold this merge (a partial zip, head counts ...)
            exporter(text).check(result.model)
        except ExportError as exc:
            return (
                f"the heterogui format keeps no tokenizer for {family} text models, and {text} "
                f"cannot hold this merge: {str(exc).replace(OR_HETEROGUI, '').rstrip('.')}"
            )
        return (
            f"the heterogui format keeps no tokenizer for {family} text models; write it with "
            f"--format {text} for a folder that merges again"
        )
    try:
        network_config(result.model.spec)
    except ModelLoadError as exc:
        return str(exc).rstrip(".")
    return None


def card_files(
    result: MergeResult,
    pair: Pair,
    task: Task,
    scores: dict[str, Any] | None,
    fmt: str,
    default_format: bool = True,
    relative: Sequence[str] = (),
    weights: WeightsDtype | None = None,
) -> dict[str, str]:
    """Return the model card (README.md, in output format ``fmt``) and its SVG figures.

    default_format: whether ``fmt`` is the one a merge of these models is written in without
    --format (else the card's rerun command names it). relative: the recipe's relative paths
    (its rerun runs from the folder the merge ran in). weights: the dtype the weights are
    written in (a note, and the rerun command's flag when it was asked for).
    """
    prep = result.prepared
    facts = card_facts(result, pair, task, scores)
    facts["relative_inputs"] = list(relative)
    facts["not_one_network"] = not_one_network(result, fmt)
    facts["rerun_flags"] = ("" if default_format else f" --format {fmt}") + rerun_threads(prep)
    facts["rerun_command"] = rerun_command()
    with_weights_dtype(facts, weights)
    if fmt in (HF_BERT_FORMAT, HF_VIT_FORMAT):
        facts["classify"] = card_use(result.model)
    files = {"README.md": model_card(facts, fmt)}
    if prep.similarity is not None:
        files["alignment.svg"] = heatmap_svg(
            prep.similarity.tolist(),
            layer_pairs(result.alignment, prep.net_a.graph(), prep.net_b.graph()),
            f"layer CKA ({prep.measure}), {result.alignment.mode} path",
        )
    widths = result.widths()
    files["widths.svg"] = bars_svg(
        list(widths),
        {k: [w[i] for w in widths.values()] for i, k in enumerate(("A", "B", "merged"))},
        "width per merge point",
    )
    return files


def with_weights_dtype(facts: dict[str, Any], weights: WeightsDtype | None) -> None:
    """Add the dtype an export writes (``weights``, None: none said) to a card's facts."""
    if weights is not None:
        facts["notes"] = [*facts.get("notes", ()), weights.note]
        facts["rerun_flags"] = facts.get("rerun_flags", "") + weights.flag
