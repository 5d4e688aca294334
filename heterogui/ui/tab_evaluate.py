"""Tab 5, Evaluate: A, B, the merge and the ensemble side by side: metrics, predictions on
samples the user picks, accuracy and size against rho, and this session's merge history.
"""

from __future__ import annotations

import re
from typing import Any

import gradio as gr
import torch

from heterogui.errors import ConfigError
from heterogui.ui import evaluation, text, work
from heterogui.ui.fig_eval import history_figure, samples_figure, sweep_figure
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session
from heterogui.ui.sizes import parameters_and_flops, reference_sizes

VIEWS = (
    "metrics",
    "sample_ids",
    "samples_plot",
    "predictions",
    "sweep_plot",
    "history",
    "history_plot",
    "text_scores",
    "sim_plot",
)
METRIC_HEADERS = ["model", "Joint %", "Task A %", "Task B %", "Avg %", "parameters", "FLOPs"]
HISTORY_COLUMNS = [
    "merge",
    "pair",
    "alignment",
    "matcher",
    "alpha",
    "beta",
    "rho",
    "stop",
    "overrides",
    "parameters",
    "Joint",
    "Task A",
    "Task B",
    "Avg",
    "Spearman",
    "seconds",
]
SWEEP_RHOS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MAX_SAMPLES = 8


def build(ui: dict[str, Any], res: Resources) -> None:
    """Create the tab's components and register them in ``ui``."""
    with gr.Accordion("Sentence similarity (transformer pairs)", open=True):
        ui["text_scores"] = gr.Dataframe(
            headers=["model", "Spearman", "parameters"],
            interactive=False,
            label="Spearman of embedding cosines with the graded built-in sentence pairs "
            "(168 pairs); the merged model gives one embedding per head, and the exported "
            "folder gives the mean-pooled trunk",
        )
        with gr.Row():
            ui["compare_text"] = gr.Textbox(
                lines=3,
                scale=4,
                label="Sentences to compare, one per line (2 to 16)",
                value="A man is playing a guitar.\nSomeone plays music.\nIt is raining today.",
            )
            ui["compare"] = gr.Button("Compare sentences", scale=1)
        ui["sim_plot"] = gr.Plot(label="Cosine similarity per model")
    with gr.Row():
        ui["metrics"] = gr.Dataframe(
            elem_id="metrics",
            headers=METRIC_HEADERS,
            interactive=False,
            scale=5,
            label="Test accuracy: Joint (all classes), Task A, Task B, Avg; size",
        )
        ui["evaluate"] = gr.Button("Refresh evaluation", scale=1)
    with gr.Row():
        ui["sample_ids"] = gr.Textbox(
            label="Samples",
            scale=3,
            info=f"Test sample numbers, comma separated (up to {MAX_SAMPLES}); or draw random ones",
        )
        ui["show_samples"] = gr.Button("Show samples", scale=1)
        ui["random_samples"] = gr.Button("Random samples", scale=1)
    ui["samples_plot"] = gr.Plot(
        elem_id="samples", label="Samples with each model's prediction (confidence)"
    )
    ui["predictions"] = gr.Dataframe(interactive=False, label="Predictions per sample")
    with gr.Row():
        with gr.Column():
            ui["run_sweep"] = gr.Button("Sweep rho (re-merges at 6 zip ratios)")
            ui["sweep_plot"] = gr.Plot(label="Accuracy and size against rho")
        with gr.Column():
            ui["history_plot"] = gr.Plot(label="This session's merges")
    ui["history"] = gr.Dataframe(
        headers=HISTORY_COLUMNS, interactive=False, label="History of this session's merges"
    )


def metric_rows(session: Session) -> list[list[Any]]:
    """Return the metrics table: A, B, ensemble, merged with accuracy and size."""
    prep = session.prepared
    sizes = session.reference_sizes or reference_sizes(prep)
    named = [
        ("A", "a", sizes["A"]),
        ("B", "b", sizes["B"]),
        ("ensemble", "ensemble", sizes["ensemble"]),
    ]
    rows = []
    for label, key, size in named:
        cols = evaluation.metric_columns(session.baseline.get(key))
        rows.append([label, *cols.values(), size["parameters"], size["flops"]])
    if session.result is not None:
        size = session.merged_size or parameters_and_flops(session.result.model, prep)
        cols = evaluation.metric_columns(session.merged_metrics)
        rows.append(["merged", *cols.values(), size["parameters"], size["flops"]])
    return rows


def parse_samples(text: str | None, count: int) -> list[int]:
    """Return the sample numbers typed by the user.

    Raises:
        ConfigError: no numbers, too many, or out of range.
    """
    ids = [int(t) for t in re.findall(r"-?\d+", text or "")]
    if not ids:
        raise ConfigError("type sample numbers such as 0, 5, 17")
    if len(ids) > MAX_SAMPLES:
        raise ConfigError(f"{len(ids)} samples asked for; show at most {MAX_SAMPLES} at once")
    bad = [i for i in ids if not 0 <= i < count]
    if bad:
        raise ConfigError(f"samples {bad} do not exist: the test split has 0..{count - 1}")
    return ids


def sample_views(session: Session, res: Resources) -> dict[str, Any]:
    """Return the samples figure and predictions table for the session's chosen samples."""
    prep = session.prepared
    split = evaluation.test_split(res, session.dataset, prep)
    if split is None:
        return {"samples_plot": None, "predictions": None}
    ids = [i for i in session.samples if 0 <= i < len(split)][:MAX_SAMPLES]
    inputs = split.inputs[torch.tensor(ids, dtype=torch.long)]
    labels = [int(split.labels[i]) for i in ids]
    preds = evaluation.predictions(prep, session.result, inputs)
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
    """Return the tab's view values for ``session``."""
    if session.prepared is None:
        return {name: None for name in VIEWS if name != "sample_ids"}
    if text.is_text(session):
        return text_views(session)
    rho = session.result.settings.rho if session.result is not None else session.settings.rho
    history = [[h.get(c) for c in HISTORY_COLUMNS] for h in session.history]
    return {
        "metrics": metric_rows(session),
        "sample_ids": ", ".join(str(i) for i in session.samples),
        **sample_views(session, res),
        "sweep_plot": sweep_figure(session.sweep, rho) if session.sweep else None,
        "history": history or None,
        "history_plot": history_figure(session.history),
        "text_scores": None,
        "sim_plot": None,
    }


def text_views(session: Session) -> dict[str, Any]:
    """Return the tab's views for a transformer pair: Spearman table, similarity matrices."""
    history = [[h.get(c) for c in HISTORY_COLUMNS] for h in session.history]
    figure = None
    if session.compare:
        figure = text.similarity_figure(text.similarity(session, session.compare), session.compare)
    return {
        "metrics": metric_rows(session),
        "samples_plot": None,
        "predictions": None,
        "sweep_plot": None,
        "history": history or None,
        "history_plot": history_figure(session.history),
        "text_scores": text.score_rows(session),
        "sim_plot": figure,
    }


def on_similarity(session: Session, res: Resources, typed: str | None, progress=None) -> str:
    """Show the cosine similarity of typed sentences per model (api: /similarity)."""
    work.require_prepared(session)
    if not text.is_text(session):
        raise ConfigError("sentence similarity needs a transformer pair (Hugging Face BERTs)")
    sentences = text.parse_sentences(typed)
    text.similarity(session, sentences)  # validates before the session changes
    session.compare = sentences
    merged = (
        " The merged model gives two embeddings: head A (in A's space) and head B (in B's)."
        if session.result is not None
        else " Merge to add the merged model (head A and head B)."
    )
    return f"Similarity of {len(sentences)} sentences per model.{merged}"


def on_samples(session: Session, res: Resources, text: str | None, progress=None) -> str:
    """Show the typed samples (api: /samples)."""
    prep = work.require_prepared(session)
    split = evaluation.test_split(res, session.dataset, prep)
    if split is None:
        raise ConfigError(
            "no labelled test data for this pair (its classes overlap or no dataset is chosen)"
        )
    session.samples = parse_samples(text, len(split))
    return f"Showing samples {session.samples}."


def on_random(session: Session, res: Resources, progress=None) -> str:
    """Draw six random test samples (api: /random_samples)."""
    prep = work.require_prepared(session)
    split = evaluation.test_split(res, session.dataset, prep)
    if split is None:
        raise ConfigError("no labelled test data for this pair")
    session.sample_seed += 1
    gen = torch.Generator().manual_seed(session.sample_seed)
    session.samples = sorted(torch.randperm(len(split), generator=gen)[:6].tolist())
    return f"Showing samples {session.samples}."


def on_sweep(session: Session, res: Resources, progress=None) -> str:
    """Re-merge at several zip ratios and plot accuracy and size (api: /sweep)."""
    session.cancel_requested = False
    prep = work.require_prepared(session)
    if text.is_text(session):
        raise ConfigError(
            "the rho sweep plots test accuracy; for a transformer pair move rho on the Zip tab "
            "and read the Spearman table (a MiniLM re-merge takes about 5 s)"
        )
    settings = session.result.settings if session.result is not None else session.settings
    session.sweep = evaluation.sweep(
        prep, settings, res, session.dataset, list(SWEEP_RHOS), work.guarded(session, progress)
    )
    session.sweep_key = work.sweep_key(settings, prep.alignment)
    return f"Swept rho over {list(SWEEP_RHOS)}."


def on_evaluate(session: Session, res: Resources, progress=None) -> str:
    """Evaluate the last merge if it is not yet, and refresh the tab (api: /evaluate).

    Runs after every slider release, so the merge shows first and its metrics right after.
    """
    work.require_prepared(session)
    if session.result is None:
        return "Nothing merged yet: the table shows A, B and their ensemble. Press Merge."
    computed = work.evaluate_pending(session, res)
    scores = text.scores_of(session)
    if scores is not None:
        shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
        return f"Merge #{session.merge_count}: Spearman {shown} (built-in sentence pairs)."
    cols = evaluation.metric_columns(session.merged_metrics)
    scores = ", ".join(f"{k} {v}%" for k, v in cols.items() if v is not None) or "no metrics"
    verb = "evaluated" if computed else "evaluation"
    return f"Merge #{session.merge_count} {verb}: {scores} (test split)."


def on_evaluate_pending(session: Session, res: Resources, progress=None) -> str | None:
    """Evaluate a merge made by a slider release (a follow-up step; None: nothing to do)."""
    if session.result is None or session.merged_metrics is not None:
        return None
    return on_evaluate(session, res, progress)


def wire(ui: dict[str, Any], on) -> None:
    """Register the tab's events."""
    on(ui["show_samples"].click, on_samples, ["sample_ids"], ("evaluate",), "samples")
    on(ui["random_samples"].click, on_random, [], ("evaluate",), "random_samples")
    on(ui["run_sweep"].click, on_sweep, [], ("evaluate",), "sweep", heavy=True)
    on(ui["evaluate"].click, on_evaluate, [], ("evaluate",), "evaluate", light=True)
    on(ui["compare"].click, on_similarity, ["compare_text"], ("evaluate",), "similarity")
