"""Tab 6, Compare: two merges of this session side by side, and a 2-D sweep over two knobs.

Compare: pick any two merges of the current pair; the tab shows their settings, sizes and
scores, the merged width at every merge point, where their alignments differ and, for image
classifiers, both merges' predictions on the same samples. The two picked merges stay in
memory (``history.KEEP_RESULTS`` more recent ones too), so their samples can be redrawn.

2-D sweep: re-merge over a grid of rho and a second knob (alpha, beta or the stop point) from
the cached statistics, draw the task's score as a heat map with size contours, and load any
cell's setting into the Zip tab (docs/method.md sec. 7 for the knobs); its views and handlers are
in ``heterogui.ui.compare_grid``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
import torch

from heterogui.errors import ConfigError
from heterogui.export.card import cell_text
from heterogui.resemblance import parent_resemblance
from heterogui.tasks.base import SAMPLES
from heterogui.ui import work
from heterogui.ui.compare_grid import GRID_KNOBS, grid_views, on_grid, on_grid_click, on_grid_load
from heterogui.ui.fig_compare import compare_widths_figure, resemblance_figure
from heterogui.ui.fig_eval import samples_figure
from heterogui.ui.plot_click import click_bridge, wire_click
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session

VIEWS = (
    "compare_left",
    "compare_right",
    "compare_table",
    "compare_widths",
    "compare_alignment",
    "compare_samples",
    "grid_plot",
    "grid_cell",
    "grid_info",
    "resemblance_plot",
    "resemblance_info",
)
SETTING_ROWS = (
    "alignment",
    "matcher",
    "fusion",
    "ridge",
    "renormalize",
    "heads",
    "alpha",
    "beta",
    "rho",
    "stop",
    "overrides",
)
SIZE_ROWS = ("parameters", "stored parameters", "flops")


def build(ui: dict[str, Any], res: Resources) -> None:
    """Create the tab's components and register them in ``ui``."""
    gr.Markdown(
        "Pick two merges of this pair to see them side by side. Every merge is listed; the "
        "two you compare stay in memory so their samples can be redrawn."
    )
    with gr.Row():
        # a merge's name is long ("#1 · Joint % 76.89 · rho 0.5 alpha 0.5 ..."): on a phone
        # the pickers stack
        ui["compare_left"] = gr.Dropdown(
            [], label="First merge", elem_id="compare-left", min_width=240
        )
        ui["compare_right"] = gr.Dropdown(
            [], label="Second merge", elem_id="compare-right", min_width=240
        )
        ui["compare_merges"] = gr.Button("Compare", elem_id="compare-merges")
    ui["compare_table"] = gr.Markdown(elem_id="compare-table")
    # the alignment's sentence above the widths, the plot the page's full width: half of it
    # beside one line of text crowded the merge points' names into each other
    ui["compare_alignment"] = gr.Markdown()
    ui["compare_widths"] = gr.Plot(label="Merged width per merge point", elem_id="compare-widths")
    ui["compare_samples"] = gr.Plot(label="Both merges on the same samples")
    gr.Markdown(
        "### Which parent each merged layer resembles\nCKA of every layer of the last merge "
        "with A's and B's layer at the same depth, on the calibration data: where the merge "
        "follows one parent and where it blends."
    )
    ui["measure_resemblance"] = gr.Button("Measure the last merge", elem_id="measure-resemblance")
    ui["resemblance_info"] = gr.Markdown()
    ui["resemblance_plot"] = gr.Plot(label="CKA with each parent", elem_id="resemblance-plot")
    gr.Markdown(
        "### 2-D sweep\nRe-merges over a grid of rho and a second knob from the cached "
        "statistics, and scores every merge: the colour is the task's score, the contours the "
        "effective size. Click a cell (or pick it below) to load its setting and merge."
    )
    with gr.Row():
        ui["grid_knob"] = gr.Dropdown(
            list(GRID_KNOBS), value="beta", label="Second knob", elem_id="grid-knob"
        )
        ui["run_grid"] = gr.Button("Run 2-D sweep", elem_id="run-grid", scale=2)
        ui["grid_cancel"] = gr.Button("Cancel", variant="stop", elem_id="grid-cancel", scale=1)
    ui["grid_info"] = gr.Markdown()
    ui["grid_plot"] = gr.Plot(label="Score over rho and the second knob", elem_id="grid-plot")
    with gr.Row():
        ui["grid_cell"] = gr.Dropdown([], label="…or pick a cell (best first)", elem_id="grid-cell")
        ui["grid_load"] = gr.Button("Load this setting and merge", elem_id="grid-load")
    # A click on the map: rho (x) and the second knob's value (y) into hidden boxes.
    click_bridge(ui, "grid_plot", "grid_click", "rho", "second knob", None)


def _label(row: dict[str, Any], metric: str, score_text: Callable[[Any], str]) -> str:
    score = "not scored yet" if row.get("score") is None else f"{metric} {score_text(row['score'])}"
    fusion = {
        "least_squares": " · least squares",
        "least_squares_heads": " · least squares, heads refit",
        "least_squares_sequential": " · sequential",
    }
    fusion = fusion.get(row.get("fusion"), "")
    fusion += " · renormalized" if row.get("renormalize") else ""
    fusion += {
        "select": " · heads selected",
        "search": " · heads searched",
        "split": " · heads split",
    }.get(row.get("heads"), "")
    # the score first: a laptop's dropdown shows the label's start only
    return (
        f"#{row['merge']} · {score} · rho {row['rho']} alpha {row['alpha']} beta {row['beta']} "
        f"stop {row['stop']}{fusion}"
    )


def merge_choices(session: Session) -> list[tuple[str, int]]:
    """Return (label, merge number) of every merge of the current pair, newest first."""
    task = session.task
    metric, score_text = (task.metric, task.score_text) if task else ("", str)
    rows = [h for h in session.history if h.get("pair") == session.pair_name]
    return [(_label(h, metric, score_text), h["merge"]) for h in reversed(rows)]


def _row(session: Session, merge: int) -> dict[str, Any]:
    return next(h for h in session.history if h["merge"] == merge)


def _difference(a: Any, b: Any) -> str:
    if isinstance(a, bool) or isinstance(b, bool):  # a switch: no arithmetic on it
        return "" if a == b else "differs"
    if isinstance(a, int | float) and isinstance(b, int | float):
        d = b - a
        return "" if d == 0 else (f"{d:+,}" if isinstance(d, int) else f"{d:+.4g}")
    return "" if a == b else "differs"


def _cell(v: Any) -> str:
    """Return a table cell: a switch reads on / off (cell_text would print a bool as 1 / 0)."""
    if isinstance(v, bool):
        return "on" if v else "off"
    return cell_text(v)


def compare_table(session: Session, left: int, right: int) -> str:
    """Return a Markdown table of both merges' settings, sizes and scores, with differences."""
    a, b = _row(session, left), _row(session, right)
    # every score column (a language pair's per-domain perplexities are named by its scores)
    task_rows = list(session.task.columns(session.baseline.get("ensemble")))
    lines = [f"| | #{left} | #{right} | #{right} − #{left} |", "|---|---|---|---|"]
    unit = " %" if session.task.metric.endswith("%") else ""
    names = {"flops": "FLOPs (effective)", "parameters": "parameters (effective)"}
    names.update({k: k + unit for k in task_rows})
    for key in (*SETTING_ROWS, *SIZE_ROWS, *task_rows):
        name = names.get(key, key)
        va, vb = a.get(key), b.get(key)
        lines.append(f"| {name} | {_cell(va)} | {_cell(vb)} | {_difference(va, vb)} |")
    return "\n".join(lines)


def alignment_text(session: Session, left: int, right: int) -> str:
    """Return where the two merges' alignments differ (layer pairs only one of them has)."""
    pa, pb = session.details[left]["pairs"], session.details[right]["pairs"]
    only_a = [p for p in pa if p not in pb]
    only_b = [p for p in pb if p not in pa]
    if not only_a and not only_b:
        return f"**Alignment**: the same layer pairs in both ({len(pa)} pairs)."

    def names(pairs: list[tuple[int, int]]) -> str:
        return ", ".join(f"A{i}–B{j}" for i, j in pairs) or "none"

    return (
        f"**Alignment differs.** Only in #{left}: {names(only_a)}. "
        f"Only in #{right}: {names(only_b)}."
    )


def compare_samples(session: Session, left: int, right: int) -> Any:
    """Return both merges' predictions on the chosen samples (None: not an image task)."""
    if SAMPLES not in session.task.panels or session.evaluation is None:
        return None
    kept = [session.kept.get(left), session.kept.get(right)]
    if any(r is None for r in kept):
        return None
    split = session.evaluation.data
    ids = [i for i in session.samples if 0 <= i < len(split)][:6]
    inputs = split.inputs[torch.tensor(ids, dtype=torch.long)]
    labels = [int(split.labels[i]) for i in ids]
    first = session.task.predictions(kept[0].prepared, kept[0], inputs)  # A, B and the first
    second = session.task.predictions(kept[1].prepared, kept[1], inputs)["merged"]
    preds = {"A": first["A"], "B": first["B"], f"#{left}": first["merged"], f"#{right}": second}
    return samples_figure(inputs, labels, preds, ids)


def render(session: Session, res: Resources) -> dict[str, Any]:
    """Return the tab's view values for ``session``."""
    empty = {name: None for name in VIEWS}
    if session.prepared is None or session.task is None:
        return {
            **empty,
            "compare_left": gr.update(choices=[], value=None),
            "compare_right": gr.update(choices=[], value=None),
            "grid_cell": gr.update(choices=[], value=None),
            "compare_table": "Load and analyse a pair, then merge.",
        }
    choices = merge_choices(session)
    numbers = [n for _, n in choices]
    pinned = [m for m in session.pinned if m in numbers]
    # nothing compared yet: the two latest merges, ready for Compare (older on the left)
    shown = pinned if len(pinned) == 2 else sorted(numbers)[-2:] if len(numbers) > 1 else []
    views = dict(empty)
    views["compare_left"] = gr.update(choices=choices, value=shown[0] if shown else None)
    views["compare_right"] = gr.update(choices=choices, value=shown[1] if shown else None)
    if len(pinned) == 2:
        left, right = pinned
        views["compare_table"] = compare_table(session, left, right)
        widths = {f"#{m}": session.details[m]["widths"] for m in pinned}
        views["compare_widths"] = compare_widths_figure(widths)
        views["compare_alignment"] = alignment_text(session, left, right)
        views["compare_samples"] = compare_samples(session, left, right)
    elif len(numbers) < 2:
        views["compare_table"] = "Merge at least twice to compare two merges."
    else:
        views["compare_table"] = "Pick two merges and press Compare."
    views.update(grid_views(session))
    views.update(_resemblance_views(session))
    return views


def _resemblance_views(session: Session) -> dict[str, Any]:
    measured = session.resemblance
    if measured is None or measured[0] not in session.kept:
        return {"resemblance_info": "Merge, then press Measure (three forward passes)."}
    merge, found = measured
    closer = [
        "A" if a > b else "B" if b > a else "both"
        for a, b in zip(found.to_a, found.to_b, strict=True)
    ]
    text = (
        f"Merge #{merge}: {closer.count('A')} layers are closer to A, {closer.count('B')} "
        f"to B. Mean CKA with A {sum(found.to_a) / len(found.to_a):.3f}, "
        f"with B {sum(found.to_b) / len(found.to_b):.3f}."
        if found.to_a
        else f"Merge #{merge} merges no layer (stop point 0)."
    )
    return {"resemblance_plot": resemblance_figure(found, merge), "resemblance_info": text}


def on_resemblance(session: Session, res: Resources, progress=None) -> str:
    """Measure which parent each layer of the last merge resembles (api: /resemblance)."""
    work.require_prepared(session)
    if session.result is None:
        first = "merge first (Zip tab): there is no merged model to measure"
        raise ConfigError(work.no_merge(session, "measure a merge of the current ones", first))
    found = parent_resemblance(session.result)
    session.resemblance = (session.merge_count, found)
    return f"Measured merge #{session.merge_count} against both parents."


def on_compare(
    session: Session, res: Resources, left: int | None, right: int | None, progress=None
) -> str:
    """Compare two merges of this pair (api: /compare)."""
    work.require_prepared(session)
    numbers = [n for _, n in merge_choices(session)]
    for which, merge in (("first", left), ("second", right)):
        if merge is None:
            raise ConfigError(f"pick the {which} merge to compare (merges: {numbers or 'none'})")
        if int(merge) not in numbers:
            raise ConfigError(f"merge #{merge} is not a merge of this pair; pick one of {numbers}")
    if int(left) == int(right):
        raise ConfigError(f"pick two different merges (both are #{left})")
    session.pinned = [int(left), int(right)]
    missing = [m for m in session.pinned if m not in session.kept]
    note = (
        f" Merges {missing} are no longer in memory: their samples are not drawn."
        if missing and SAMPLES in session.task.panels
        else ""
    )
    return f"Comparing merge #{left} with #{right}.{note}"


def wire(ui: dict[str, Any], on) -> None:
    """Register the tab's events."""
    on(
        ui["compare_merges"].click,
        on_compare,
        ["compare_left", "compare_right"],
        ("compare",),
        "compare",
    )
    on(
        ui["measure_resemblance"].click,
        on_resemblance,
        [],
        ("compare",),
        "resemblance",
        heavy=True,
    )
    on(
        ui["run_grid"].click,
        on_grid,
        ["grid_knob"],
        ("compare",),
        "grid",
        heavy=True,
        near=["grid_plot"],  # its progress where the sweep will show, as well as at the top
    )
    merged = ("knobs", "zip", "neurons", "evaluate", "compare", "export")
    on(
        ui["grid_load"].click,
        on_grid_load,
        ["grid_cell"],
        merged,
        "grid_load",
        heavy=True,
    )
    on(
        ui["grid_click"].click,
        on_grid_click,
        ["grid_click_x", "grid_click_y"],
        merged,
        "grid_click",
        heavy=True,
    )
    wire_click(ui, "grid_plot", "grid_click")
