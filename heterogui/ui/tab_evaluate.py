"""Tab 5, Evaluate: A, B, the merge and the ensemble side by side, with the panels of the pair's
task (``Task.panels``): classifiers get the metrics table, samples and the rho sweep; sentence
embedding models the Spearman table and similarity matrices; language models the perplexity
table (with the collapse alarm), generations and the rho sweep. This session's merges are
always shown.
"""

from __future__ import annotations

import re
from typing import Any

import gradio as gr
import torch

from heterogui import sweep
from heterogui.datasets.refs import parse_lines
from heterogui.errors import ConfigError, excerpt
from heterogui.ready import BN_STAGES
from heterogui.tasks.base import (
    GENERATIONS,
    METRICS,
    PERPLEXITY,
    SAMPLES,
    SIMILARITY,
    SPEARMAN,
    SWEEP,
)
from heterogui.ui import history, labels, tables, work
from heterogui.ui.evaluate_language import (
    build_language_panels,
    generation_views,
    on_generate,
    perplexity_table,
    perplexity_views,
)
from heterogui.ui.fig_eval import history_figure, samples_figure, similarity_figure, sweep_figure
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session

PANELS = (METRICS, SAMPLES, SWEEP, SPEARMAN, SIMILARITY, PERPLEXITY, GENERATIONS)
VIEWS = (
    *(f"panel_{p}" for p in PANELS),
    "metrics",
    "sample_ids",
    "samples_plot",
    "predictions",
    "sweep_plot",
    "history",
    "history_plot",
    "text_scores",
    "sim_plot",
    "lm_alarm",
    "lm_scores",
    "lm_info",
    "gen_view",
    "gen_info",
)
# What a merge's scores change (the scope "scores"); a subset of VIEWS.
SCORE_VIEWS = (
    "metrics",
    "text_scores",
    "lm_scores",
    "lm_alarm",
    "lm_info",
    "history",
    "history_plot",
)
SWEEP_RHOS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
METRICS_LABEL = "Test accuracy: Joint (all classes), per task, Avg; size"
# what the table's A, B and ensemble are when the analysis re-estimated their BatchNorm (the
# models as given may score otherwise: the card and report.json say so too)
RE_ESTIMATED = (
    " · A, B and the ensemble with their BatchNorm statistics re-estimated on the calibration "
    "data, as the merge reads them"
)
MAX_SAMPLES = 8
SPEARMAN_HEADER = ["model", "Spearman", "parameters"]


def build(ui: dict[str, Any], res: Resources) -> None:
    """Create the tab's panels (each shown only for the tasks that have it) and the history."""
    ui["panel_metrics"] = gr.Group(visible=True)
    with ui["panel_metrics"], gr.Row():
        ui["metrics"] = gr.Dataframe(  # a phone stacks the button below, not beside it
            elem_id="metrics", interactive=False, scale=5, min_width=480, label=METRICS_LABEL
        )
        ui["evaluate"] = gr.Button("Refresh evaluation", scale=1)
    ui["panel_samples"] = gr.Group(visible=True)
    with ui["panel_samples"]:
        with gr.Row():
            ui["sample_ids"] = gr.Textbox(
                label="Samples",
                scale=3,
                info=f"Test sample numbers, comma separated (up to {MAX_SAMPLES}); or draw "
                "random ones",
            )
            ui["show_samples"] = gr.Button("Show samples", scale=1)
            ui["random_samples"] = gr.Button("Random samples", scale=1)
        ui["samples_plot"] = gr.Plot(
            elem_id="samples", label="Samples with each model's prediction (confidence)"
        )
        ui["predictions"] = gr.Dataframe(interactive=False, label="Predictions per sample")
    ui["panel_spearman"] = gr.Group(visible=False)
    with ui["panel_spearman"]:
        ui["text_scores"] = gr.Dataframe(
            elem_id="text-scores",
            headers=SPEARMAN_HEADER,
            wrap=True,  # a phone wraps the models' names, and shows their scores beside them
            column_widths=["41%", "27%", "32%"],
            interactive=False,
            label="Spearman of embedding cosines with the graded sentence pairs; the merged "
            "model gives one embedding per head, and the exported folder the mean-pooled trunk",
        )
    ui["panel_similarity"] = gr.Group(visible=False)
    with ui["panel_similarity"]:
        with gr.Row():
            ui["compare_text"] = gr.Textbox(
                lines=3,
                scale=4,
                label="Sentences to compare, one per line (2 to 16)",
                value="A man is playing a guitar.\nSomeone plays music.\nIt is raining today.",
            )
            ui["compare"] = gr.Button("Compare sentences", scale=1)
        ui["sim_plot"] = gr.Plot(label="Cosine similarity per model", elem_id="sim-plot")
    build_language_panels(ui)
    with gr.Row():
        ui["panel_sweep"] = gr.Column(visible=True)
        with ui["panel_sweep"]:
            with gr.Row():
                ui["run_sweep"] = gr.Button("Sweep rho (re-merges at 6 zip ratios)", scale=3)
                ui["sweep_cancel"] = gr.Button("Cancel", variant="stop", scale=1)
            ui["sweep_plot"] = gr.Plot(label="Score and size against rho")
        with gr.Column():
            ui["history_plot"] = gr.Plot(label="This session's merges")
    ui["history"] = gr.Dataframe(
        interactive=False,
        wrap=True,
        label="History of this session's merges (scroll sideways)",
        elem_id="history",
    )


def metric_rows(session: Session) -> tuple[list[str], list[list[Any]]]:
    """Return the metrics table's header and rows: A, B, ensemble (and merged), with sizes."""
    task, sizes = session.task, session.reference_sizes or {}
    names = [("A", "a"), ("B", "b"), ("ensemble", "ensemble")]
    rows = []
    for label, key in names:
        size = sizes.get(label, {})
        cols = task.columns(session.baseline.get(key))
        rows.append([label, *cols.values(), size.get("parameters"), size.get("flops")])
    if session.result is not None:
        size = session.merged_size or {}
        cols = task.columns(session.merged_metrics)
        rows.append(["merged", *cols.values(), size.get("parameters"), size.get("flops")])
    names = task.columns(session.baseline.get("ensemble"))  # every task's column
    return ["model", *(f"{c} %" for c in names), "parameters", "FLOPs"], rows


def score_table(session: Session) -> tuple[list[str], list[list[Any]], dict[str, int]] | None:
    """Return the task's scores table (A, B, ensemble, merged): its header, its rows and the
    decimals its score columns show, as the page and the slides' CSV show them (None: the
    task has none)."""
    task = session.task
    if METRICS in task.panels:
        header, rows = metric_rows(session)
        return header, rows, dict.fromkeys(header[1:-2], task.score_digits)
    if SPEARMAN in task.panels:
        return SPEARMAN_HEADER, spearman_rows(session), {"Spearman": task.score_digits}
    if PERPLEXITY in task.panels:
        return perplexity_table(session)
    return None


def spearman_rows(session: Session) -> list[list[Any]]:
    """Return the Spearman table: A, B, ensemble and the merge's three embeddings, with sizes."""
    sizes = session.reference_sizes or {}
    rows = [
        [label, session.baseline.get(key), sizes.get(label.split(" ")[0], {}).get("parameters")]
        for label, key in (("A", "a"), ("B", "b"), ("ensemble (A and B concatenated)", "ensemble"))
    ]
    if session.result is not None:
        scores = session.merged_metrics or {}
        size = (session.merged_size or {}).get("parameters")
        for key, label in (
            ("merged", "merged (exported trunk, mean-pooled)"),
            ("head A", "merged, head A (A's space)"),
            ("head B", "merged, head B (B's space)"),
        ):
            rows.append([label, scores.get(key), size])
    return rows


def parse_samples(text: str | None, count: int) -> list[int]:
    """Return the sample numbers typed by the user.

    Raises:
        ConfigError: no numbers, too many, or out of range.
    """
    tokens = [t for t in re.split(r"[\s,;]+", text or "") if t]
    odd = [t for t in tokens if not re.fullmatch(r"-?\d+", t)]
    if odd:
        raise ConfigError(
            f"{excerpt(repr(odd[0]), 40)} is not a sample number: type whole numbers such as "
            "0, 5, 17"
        )
    ids = [int(t) for t in tokens]
    if not ids:
        raise ConfigError("type sample numbers such as 0, 5, 17")
    if len(ids) > MAX_SAMPLES:
        raise ConfigError(f"{len(ids)} samples asked for; show at most {MAX_SAMPLES} at once")
    bad = [i for i in ids if not 0 <= i < count]
    if bad:
        raise ConfigError(f"samples {bad} do not exist: the test split has 0..{count - 1}")
    return ids


def test_split(session: Session) -> Any:
    """Return the labelled test images of the pair (the evaluation data), or raise.

    Raises:
        ConfigError: the pair's task has no samples, or no evaluation data.
    """
    work.require_prepared(session)
    if SAMPLES not in session.task.panels:
        raise ConfigError(f"{session.task.title} has no image samples to show")
    if session.evaluation is None:
        raise ConfigError(f"no labelled test data to show: {work.unscored(session)}")
    return session.evaluation.data


def sample_views(session: Session) -> dict[str, Any]:
    """Return the samples figure and predictions table for the session's chosen samples."""
    split = session.evaluation.data if session.evaluation is not None else None
    if split is None:
        return {"samples_plot": None, "predictions": None}
    ids = [i for i in session.samples if 0 <= i < len(split)][:MAX_SAMPLES]
    inputs = split.inputs[torch.tensor(ids, dtype=torch.long)]
    labels = [int(split.labels[i]) for i in ids]
    preds = session.task.predictions(session.prepared, session.result, inputs)
    table = []
    for k, i in enumerate(ids):
        row = {"sample": i, "true": labels[k]}
        for name, values in preds.items():
            row[name] = f"{values[k][0]} ({values[k][1]:.0%})"
        table.append(row)
    return {
        "samples_plot": samples_figure(inputs, labels, preds, ids),
        "predictions": gr.update(
            value=[list(r.values()) for r in table], headers=list(table[0]) if table else None
        ),
    }


def render(session: Session, res: Resources) -> dict[str, Any]:
    """Return the tab's view values for ``session``: its task's panels, filled."""
    task = session.task
    if session.prepared is None or task is None:
        empty = {name: None for name in VIEWS if name != "sample_ids"}
        empty["lm_alarm"] = gr.update(value="", visible=False)
        return {**empty, **{f"panel_{p}": gr.update(visible=p == METRICS) for p in PANELS}}
    panels = {f"panel_{p}": gr.update(visible=p in task.panels) for p in PANELS}
    views: dict[str, Any] = {
        "metrics": None,
        "samples_plot": None,
        "predictions": None,
        "sweep_plot": None,
        "text_scores": None,
        "sim_plot": None,
        "lm_alarm": gr.update(value="", visible=False),
        "lm_scores": None,
        "lm_info": "",
        "gen_view": None,
        "gen_info": "",
    }
    if SAMPLES in task.panels:
        views["sample_ids"] = ", ".join(str(i) for i in session.samples)
        views.update(sample_views(session))
    if SWEEP in task.panels and session.sweep:
        rho = session.result.settings.rho if session.result is not None else session.settings.rho
        views["sweep_plot"] = sweep_figure(session.sweep, rho, labels.metric_label(task))
    if GENERATIONS in task.panels:
        views.update(generation_views(session))
    if SIMILARITY in task.panels and session.compare:
        matrices = task.similarity(session.prepared, session.result, session.pair, session.compare)
        views["sim_plot"] = similarity_figure(matrices, session.compare)
    return {**panels, **views, **score_views(session)}


def score_views(session: Session) -> dict[str, Any]:
    """Return the views that a merge's scores change (the scope "scores"; a part of the tab).

    A slider release draws the merge with the whole tab, then only these once it is scored:
    the samples, sweep, similarities and generations stay as drawn.
    """
    task = session.task
    views: dict[str, Any] = {}
    if METRICS in task.panels:
        header, rows, digits = score_table(session)
        re_estimated = bool(set(BN_STAGES) & set(session.prepared.timings))
        views["metrics"] = gr.update(
            value=tables.table(header, rows, digits),
            headers=header,
            label=METRICS_LABEL + (RE_ESTIMATED if re_estimated else ""),
        )
    if SPEARMAN in task.panels:
        views["text_scores"] = tables.table(*score_table(session))
    if PERPLEXITY in task.panels:
        views.update(perplexity_views(session))
    columns, rows = history.history_table(session.history)
    digits = [h.get("score_digits") for h in session.history]
    shown = tables.table(columns, rows, dict.fromkeys(history.score_columns(columns), digits))
    views["history"] = gr.update(value=shown, headers=columns)
    views["history_plot"] = history_figure(
        session.history, labels.metric_label(task), session.pair_name
    )
    return views


def on_similarity(session: Session, res: Resources, typed: str | None, progress=None) -> str:
    """Show the cosine similarity of typed sentences per model (api: /similarity)."""
    work.require_prepared(session)
    task = session.task
    if SIMILARITY not in task.panels:
        raise ConfigError(f"sentence similarity needs sentence embedding models, not {task.title}")
    sentences = parse_lines(typed)
    task.similarity(session.prepared, session.result, session.pair, sentences)  # validates
    session.compare = sentences
    merged = (
        " The merged model gives two embeddings: head A (in A's space) and head B (in B's)."
        if session.result is not None
        else " Merge to add the merged model (head A and head B)."
    )
    return f"Similarity of {len(sentences)} sentences per model.{merged}"


def on_samples(session: Session, res: Resources, text: str | None, progress=None) -> str:
    """Show the typed samples (api: /samples)."""
    session.samples = parse_samples(text, len(test_split(session)))
    return f"Showing samples {session.samples}."


def on_random(session: Session, res: Resources, progress=None) -> str:
    """Draw six random test samples (api: /random_samples)."""
    split = test_split(session)
    session.sample_seed += 1
    gen = torch.Generator().manual_seed(session.sample_seed)
    session.samples = sorted(torch.randperm(len(split), generator=gen)[:6].tolist())
    return f"Showing samples {session.samples}."


def on_sweep(session: Session, res: Resources, progress=None) -> str:
    """Re-merge at several zip ratios and plot the task's score and size (api: /sweep)."""
    prep = work.require_prepared(session)
    if SWEEP not in session.task.panels:
        raise ConfigError(
            f"the rho sweep is not offered for {session.task.title}: move rho on the Zip tab "
            "and read the scores"
        )
    settings = session.settings  # the Zip tab's current settings
    report = work.guarded(session, progress)
    points = sweep.sweep(session.pair, prep, settings, session.evaluation, list(SWEEP_RHOS), report)
    session.sweep, session.sweep_key = points, history.sweep_key(settings, prep.alignment)
    return f"Swept rho over {list(SWEEP_RHOS)}."


def on_evaluate(session: Session, res: Resources, progress=None) -> str:
    """Score the last merge if it is not yet, and refresh the tab (api: /evaluate).

    Runs after every slider release, so the merge shows first and its scores right after.
    """
    work.require_prepared(session)
    if session.result is None:
        first = "Nothing merged yet: the table shows A, B and their ensemble. Press Merge."
        said = work.no_merge(session, "score a merge of the current ones", first)
        return said if said == first else f"{said[0].upper()}{said[1:]}."
    if session.evaluation is None:
        return f"Merge #{session.merge_count}: {work.unscored(session)}."
    computed = work.evaluate_pending(session, res, progress)
    task = session.task
    cols = task.columns(session.merged_metrics)
    shown = ", ".join(f"{k} {task.score_text(v)}" for k, v in cols.items() if v is not None)
    shown = shown or "no scores"
    verb = "evaluated" if computed else "evaluation"
    alarm = labels.alarm_line(labels.merge_alarms(session))
    return f"Merge #{session.merge_count} {verb}: {shown} ({task.title})." + (
        f" {alarm}" if alarm else ""
    )


def on_evaluate_pending(session: Session, res: Resources, progress=None) -> str | None:
    """Score a merge made by a slider release (a follow-up step; None: nothing to do)."""
    if session.result is None or session.merged_metrics is not None or not session.evaluation:
        return None
    return on_evaluate(session, res, progress)


def wire(ui: dict[str, Any], on) -> None:
    """Register the tab's events."""
    on(ui["show_samples"].click, on_samples, ["sample_ids"], ("evaluate",), "samples")
    on(ui["random_samples"].click, on_random, [], ("evaluate",), "random_samples")
    on(ui["run_sweep"].click, on_sweep, [], ("evaluate",), "sweep", heavy=True, near=["sweep_plot"])
    # heavy: one scoring at a time per session (a second press waits and reuses the scores)
    on(ui["evaluate"].click, on_evaluate, [], ("evaluate",), "evaluate", heavy=True)
    on(ui["compare"].click, on_similarity, ["compare_text"], ("evaluate",), "similarity")
    on(ui["lm_evaluate"].click, on_evaluate, [], ("evaluate",), None, heavy=True)
    on(
        ui["generate"].click,
        on_generate,
        ["gen_prompts", "gen_mode", "gen_seed"],
        ("evaluate",),
        "generate",
        heavy=True,
    )
