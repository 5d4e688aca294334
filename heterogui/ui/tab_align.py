"""Tab 2, Alignment: the CKA heatmap of A's and B's layers with the alignment path, the mode
(SMA, LMA, baselines or a hand-edited mapping) and which deep layers form each segment.

Layers have one name everywhere (heatmap, table, hover, messages): ``A3`` is A's layer 3 among
its non-head layers, all stages together, as the heatmap numbers its rows. The alignment can be
edited two ways: click a heatmap cell (api: /align_click with A's and B's layer numbers) to
move the shallower model's layer onto that deep layer, or edit the exact mapping (per-stage
slots, the form recipes store) and apply it.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from heterogui.align.alignment import MODES, Alignment, align
from heterogui.align.editing import clicked_mapping, mapping_text
from heterogui.align.similarity import MEASURES
from heterogui.models.graph import ModelGraph
from heterogui.ui import work, zip_overrides
from heterogui.ui.fig_align import alignment_figure, segment_rows, stage_pairs
from heterogui.ui.plot_click import click_bridge, wire_click
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session
from heterogui.zip.plan import head_group_firsts

VIEWS = (
    "align_mode",
    "align_measure",
    "mapping",
    "heatmap",
    "align_score",
    "segments",
    "mapping_pairs",
)
MODE_HELP = (
    "sma: best single layer per segment (segment-wise, the paper's default); lma: best "
    "contiguous segments (layer-wise), each layer at its segment's last slot (lma_first: the "
    "first; lma_similar: the most similar by CKA); uniform / head / head_tail: fixed "
    "placements; manual: your mapping below or your clicks on the map"
)
MAPPING_HELP = (
    "Exact form (as recipes store it): per model, one list per stage giving each of its layers' "
    "slot in that stage, counted from 0; slot t is the deeper model's t-th layer of the stage. "
    "The same mapping in layer names is shown below."
)
MEASURE_HELP = (
    "What CKA compares: each layer's output (the paper's) or its update, what the layer adds to "
    "its input. In residual models (decoders) the outputs all look alike and the updates tell "
    "the layers apart; switching computes the new map once and realigns with the mode above"
)
MEASURE_WORDS = {"outputs": "layer outputs", "updates": "layer updates"}
CLICK_HELP = (
    "**Click a cell** of the map to pair the shallower model's layer with that deep layer "
    "(within its stage); the others stay where they are."
)
SEGMENT_HEADERS = ["stage", "shallow layer (slot)", "deep layers of its segment", "padding"]
# The views an alignment switch redraws (a switch drops a merge of the old placement).
SWITCHED_SCOPES = ("align", "neurons", "zip", "evaluate", "compare", "export")


def build(ui: dict[str, Any], res: Resources) -> None:
    """Create the tab's components and register them in ``ui``."""
    with gr.Row():
        with gr.Column(scale=3):
            ui["heatmap"] = gr.Plot(
                label="Layer similarity (CKA) and alignment path", elem_id="cka-heatmap"
            )
            gr.Markdown(CLICK_HELP, elem_id="align-click-help")
        with gr.Column(scale=2):
            ui["align_mode"] = gr.Radio(
                list(MODES), value="sma", label="Alignment mode", info=MODE_HELP
            )
            ui["align_measure"] = gr.Radio(
                list(MEASURES),
                value="outputs",
                label="Similarity measure",
                info=MEASURE_HELP,
                elem_id="align-measure",
            )
            ui["align_score"] = gr.Markdown()
            ui["mapping"] = gr.Textbox(
                elem_id="mapping",
                label="Mapping (edit, then Apply)",
                lines=3,
                info=MAPPING_HELP,
            )
            ui["mapping_pairs"] = gr.Markdown(elem_id="mapping-pairs")
            ui["apply_mapping"] = gr.Button("Apply mapping", elem_id="apply-mapping")
    ui["segments"] = gr.Dataframe(
        headers=SEGMENT_HEADERS,
        label="Segments: the deeper model's layers each shallow layer "
        "is merged with (the others get identity layers)",
        interactive=False,
        wrap=True,
    )
    # A click on the map: B's layer (column, x) and A's layer (row, y) into hidden boxes.
    click_bridge(ui, "heatmap", "align_click", "layer of B (column)", "layer of A (row)", 0)


def pairs_text(alignment: Alignment, ga: ModelGraph, gb: ModelGraph) -> str:
    """Return the mapping in layer names, one stage after another (Markdown)."""
    stages = " · ".join(f"{name}: {items}" for name, items in stage_pairs(alignment, ga, gb))
    return f"**In layer names** (as on the map): {stages}"


def optimum(session: Session) -> float | None:
    """Return the best SMA score of the pair (None without a similarity matrix)."""
    prep = session.prepared
    if prep is None or prep.similarity is None:
        return None
    return align(prep.net_a.graph(), prep.net_b.graph(), prep.similarity, "sma").score


def render(session: Session, res: Resources) -> dict[str, Any]:
    """Return the tab's view values for ``session``."""
    prep = session.prepared
    if prep is None:
        return {
            "align_mode": "sma",
            "align_measure": "outputs",
            "mapping": "",
            "mapping_pairs": "",
            "heatmap": None,
            "segments": None,
            "align_score": "Load and analyse a pair to see its alignment.",
        }
    al = prep.alignment
    ga, gb = prep.net_a.graph(), prep.net_b.graph()
    best = optimum(session)
    if al.score is None:
        score = "No similarity score (no CKA matrix)."
    else:
        words = MEASURE_WORDS.get(prep.measure, prep.measure)
        score = (
            f"**Alignment score** (sum of CKA of the {words} on the path, over the blocks the "
            f"alignment places: each stage's first block is fixed and left out): **{al.score:.3f}**"
        )
        if best is not None:
            score += f" — SMA optimum {best:.3f}"
    fig = None
    if prep.similarity is not None:
        fig = alignment_figure(prep.similarity, al, ga, gb, pair=session.pair_name or "")
    return {
        "align_mode": al.mode,
        "align_measure": prep.measure,
        "mapping": mapping_text(al.mapping()),
        "mapping_pairs": pairs_text(al, ga, gb),
        "heatmap": fig,
        "align_score": score,
        "segments": segment_rows(al, ga, gb),
    }


# ---- handlers ----

ALIGNMENT_STATISTICS = {
    "same": "same placement: statistics kept",
    "reused": "statistics of this placement from before, no new pass",
    "recomputed": "statistics recomputed",
}


def on_mode(
    session: Session,
    res: Resources,
    mode: str,
    mapping: str | None,
    progress=None,
    measure: str | None = None,
) -> str:
    """Realign with another mode (api: /align); measure: read that CKA from now on."""
    session.cancel_requested = False
    before = set(session.settings.overrides)
    how = ALIGNMENT_STATISTICS[work.set_alignment(session, mode, mapping, progress, measure)]
    dropped = sorted(before - set(session.settings.overrides))
    al = session.prepared.alignment
    again = "again " if session.merge_count else ""
    mapping = mapping_text(al.mapping())
    note = (
        f" Overrides of {', '.join(dropped)} were removed: only one model uses "
        f"{'that merge point' if len(dropped) == 1 else 'those merge points'} now."
        if dropped
        else ""
    )
    layers = head_group_firsts(session.prepared.padded_a.graph())
    takers = zip_overrides.taking_spaces(session.prepared)
    bare = [n for n in layers if n in takers and not session.settings.override_for(n)]
    if dropped and bare and any(n in layers for n in dropped):
        note += f" Attention layers with no override now: {', '.join(bare)}."
    return f"Alignment {al.mode}: mapping `{mapping}` ({how}). Merge {again}to use it.{note}"


def on_measure(session: Session, res: Resources, measure: str, progress=None) -> str:
    """Read the CKA of another measure and realign with the current mode (api: /align_measure).

    A manual alignment keeps its mapping; only the map and the score change.
    """
    prep = work.require_prepared(session)
    mode = prep.alignment.mode
    mapping = mapping_text(prep.alignment.mapping()) if mode == "manual" else None
    status = on_mode(session, res, mode, mapping, progress, measure)
    return f"Similarity: CKA of the {MEASURE_WORDS[session.prepared.measure]}. {status}"


def on_mapping(session: Session, res: Resources, mapping: str | None, progress=None) -> str:
    """Apply a hand-edited mapping (api: /set_mapping)."""
    return on_mode(session, res, "manual", mapping, progress)


def on_click(session: Session, res: Resources, a: Any, b: Any, progress=None) -> str:
    """Pair the cell (A layer a, B layer b) of the map: move the shallower model's layer there.

    api: /align_click with A's and B's layer numbers (the heatmap's row and column). The
    alignment becomes "manual"; a click that cannot apply changes nothing and says why.
    """
    prep = work.require_prepared(session)
    mapping, what = clicked_mapping(prep.alignment, prep.net_a.graph(), prep.net_b.graph(), a, b)
    return f"{what}. " + on_mode(session, res, "manual", mapping_text(mapping), progress)


def wire(ui: dict[str, Any], on) -> None:
    """Register the tab's events."""
    scopes = SWITCHED_SCOPES
    on(ui["align_mode"].input, on_mode, ["align_mode", "mapping"], scopes, "align", heavy=True)
    on(
        ui["align_measure"].input,
        on_measure,
        ["align_measure"],
        scopes,
        "align_measure",
        heavy=True,
    )
    on(ui["apply_mapping"].click, on_mapping, ["mapping"], scopes, "set_mapping", heavy=True)
    on(
        ui["align_click"].click,
        on_click,
        ["align_click_y", "align_click_x"],
        scopes,
        "align_click",
        heavy=True,
    )
    wire_click(ui, "heatmap", "align_click")
