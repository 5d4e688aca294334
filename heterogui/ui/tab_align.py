"""Tab 2, Alignment: the CKA heatmap of A's and B's layers with the alignment path, the mode
(SMA, LMA, baselines or a hand-edited mapping) and which deep layers form each segment.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from heterogui.align.alignment import MODES, align
from heterogui.ui import work
from heterogui.ui.fig_align import alignment_figure, segment_rows
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session

VIEWS = ("align_mode", "mapping", "heatmap", "align_score", "segments")
MODE_HELP = (
    "sma: best single layer per segment (segment-wise, the paper's default); lma: best "
    "contiguous segments (layer-wise); uniform / head / head_tail: fixed placements; manual: "
    "your mapping below"
)
SEGMENT_HEADERS = ["stage", "shallow layer", "deep layers of its segment", "padding"]


def build(ui: dict[str, Any], res: Resources) -> None:
    """Create the tab's components and register them in ``ui``."""
    with gr.Row():
        with gr.Column(scale=3):
            ui["heatmap"] = gr.Plot(
                label="Layer similarity (CKA) and alignment path", elem_id="cka-heatmap"
            )
        with gr.Column(scale=2):
            ui["align_mode"] = gr.Radio(
                list(MODES), value="sma", label="Alignment mode", info=MODE_HELP
            )
            ui["align_score"] = gr.Markdown()
            ui["mapping"] = gr.Textbox(
                elem_id="mapping",
                label="Mapping (edit, then Apply)",
                lines=3,
                info="Per model, one list per stage: the slot of each of its layers in the merged "
                "depth. The deeper model keeps every slot; the shallower one's slots must start "
                "at 0 and increase.",
            )
            ui["apply_mapping"] = gr.Button("Apply mapping", elem_id="apply-mapping")
    ui["segments"] = gr.Dataframe(
        headers=SEGMENT_HEADERS,
        label="Segments: the deeper model's layers each shallow layer "
        "is merged with (the others get identity layers)",
        interactive=False,
        wrap=True,
    )


def mapping_text(mapping: dict[str, list[list[int]]]) -> str:
    """Return a mapping as compact JSON text (what the Mapping box shows)."""
    return json.dumps({"a": mapping["a"], "b": mapping["b"]})


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
            "mapping": "",
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
        score = f"**Alignment score** (sum of CKA on the path): **{al.score:.3f}**"
        if best is not None:
            score += f" — SMA optimum {best:.3f}"
    fig = alignment_figure(prep.similarity, al, ga, gb) if prep.similarity is not None else None
    return {
        "align_mode": al.mode,
        "mapping": mapping_text(al.mapping()),
        "heatmap": fig,
        "align_score": score,
        "segments": segment_rows(al, ga, gb),
    }


def on_mode(session: Session, res: Resources, mode: str, mapping: str | None, progress=None) -> str:
    """Realign with another mode (api: /align)."""
    session.cancel_requested = False
    recomputed = work.set_alignment(session, mode, mapping, progress)
    al = session.prepared.alignment
    how = "statistics recomputed" if recomputed else "same placement: statistics kept"
    again = "again " if session.merge_count else ""
    mapping = mapping_text(al.mapping())
    return f"Alignment {al.mode}: mapping `{mapping}` ({how}). Merge {again}to use it."


def on_mapping(session: Session, res: Resources, mapping: str | None, progress=None) -> str:
    """Apply a hand-edited mapping (api: /set_mapping)."""
    return on_mode(session, res, "manual", mapping, progress)


def wire(ui: dict[str, Any], on) -> None:
    """Register the tab's events."""
    scopes = ("align", "neurons", "zip", "evaluate", "export")
    on(ui["align_mode"].input, on_mode, ["align_mode", "mapping"], scopes, "align", heavy=True)
    on(ui["apply_mapping"].click, on_mapping, ["mapping"], scopes, "set_mapping", heavy=True)
