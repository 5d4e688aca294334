"""Figures and tables of the layer alignment (docs/method.md sec. 4), from core results.

The CKA heatmap has A's layers on the y axis and B's on the x axis; the alignment path joins the
pairs of layers that share a slot of the merged depth, and a box marks each segment: the deeper
model's layers that the shallower model's layer is merged with (the identity-padded slots).
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from heterogui.align.alignment import Alignment, layer_pairs
from heterogui.align.segment import segments
from heterogui.models.graph import ModelGraph


@dataclass(frozen=True)
class Segment:
    """One shallow layer and the deep layers it is aligned with, in one stage."""

    stage: int
    shallow_model: str
    shallow_layer: int
    deep_model: str
    deep_layers: tuple[int, ...]


def alignment_segments(alignment: Alignment, ga: ModelGraph, gb: ModelGraph) -> list[Segment]:
    """Return every stage's segments: which deep layers each shallow layer stands for."""
    out = []
    for s, depth in enumerate(alignment.depths):
        pos_a, pos_b = alignment.positions_a[s], alignment.positions_b[s]
        a_deep = len(pos_a) >= len(pos_b)
        shallow_pos = pos_b if a_deep else pos_a
        shallow_blocks = (gb if a_deep else ga).stages[s]
        deep_blocks = (ga if a_deep else gb).stages[s]
        for k, slots in enumerate(segments(shallow_pos, depth)):
            out.append(
                Segment(
                    s,
                    "B" if a_deep else "A",
                    shallow_blocks[k],
                    "A" if a_deep else "B",
                    tuple(deep_blocks[t] for t in slots),
                )
            )
    return out


def segment_rows(alignment: Alignment, ga: ModelGraph, gb: ModelGraph) -> list[list[str]]:
    """Return table rows: stage, shallow layer, the deep layers of its segment, padding."""
    rows = []
    for seg in alignment_segments(alignment, ga, gb):
        pad = len(seg.deep_layers) - 1
        rows.append(
            [
                str(seg.stage),
                f"{seg.shallow_model}{seg.shallow_layer}",
                ", ".join(f"{seg.deep_model}{i}" for i in seg.deep_layers),
                f"{pad} identity layer(s) in {seg.shallow_model}" if pad else "one to one",
            ]
        )
    return rows


def _stage_of(graph: ModelGraph, layers: int) -> list[str]:
    names = []
    for i in range(layers):
        stage = next((s for s, blocks in enumerate(graph.stages) if i in blocks), None)
        names.append("stem" if stage is None else f"stage {stage}")
    return names


def segment_boxes(alignment: Alignment, ga: ModelGraph, gb: ModelGraph) -> list[dict]:
    """Return the heatmap rectangle (x0, x1, y0, y1) of every segment of two or more layers."""
    boxes = []
    for seg in alignment_segments(alignment, ga, gb):
        if len(seg.deep_layers) < 2:
            continue
        shallow = (seg.shallow_layer - 0.5, seg.shallow_layer + 0.5)
        deep = (min(seg.deep_layers) - 0.5, max(seg.deep_layers) + 0.5)
        (x0, x1), (y0, y1) = (shallow, deep) if seg.deep_model == "A" else (deep, shallow)
        boxes.append({"x0": x0, "x1": x1, "y0": y0, "y1": y1})
    return boxes


def alignment_figure(
    similarity, alignment: Alignment, ga: ModelGraph, gb: ModelGraph, title: str = ""
) -> go.Figure:
    """Return the CKA heatmap (layers of A x layers of B) with the alignment path and segments.

    similarity: (L_A, L_B) CKA over non-head layers (a tensor or array).
    """
    z = [[round(float(v), 4) for v in row] for row in similarity.tolist()]
    values = [v for row in z for v in row] or [0.0]
    la, lb = len(z), len(z[0]) if z else 0
    stages_a, stages_b = _stage_of(ga, la), _stage_of(gb, lb)
    hover = [
        [f"A{i} ({stages_a[i]}) vs B{j} ({stages_b[j]})" for j in range(lb)] for i in range(la)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(lb)),
            y=list(range(la)),
            colorscale="Viridis",
            zmin=min(values),  # the data's own range: a pair of similar models is not one colour
            zmax=max(values),
            colorbar={"title": "CKA"},
            text=hover,
            hovertemplate="%{text}<br>CKA %{z:.3f}<extra></extra>",
        )
    )
    for box in segment_boxes(alignment, ga, gb):
        fig.add_shape(type="rect", **box, line={"color": "white", "width": 2, "dash": "dot"})
    pairs = layer_pairs(alignment, ga, gb)
    fig.add_trace(
        go.Scatter(
            x=[b for _, b in pairs],
            y=[a for a, _ in pairs],
            mode="lines+markers",
            name="alignment path",
            line={"color": "#ff4b4b", "width": 3},
            marker={"size": 10, "symbol": "x", "color": "#ff4b4b"},
            hovertemplate="A%{y} ↔ B%{x}<extra>paired</extra>",
        )
    )
    score = "n/a" if alignment.score is None else f"{alignment.score:.3f}"
    fig.update_layout(
        title=title or f"Layer CKA with the {alignment.mode.upper()} path (score {score})",
        xaxis={"title": "layers of B", "dtick": 1, "constrain": "domain"},
        yaxis={"title": "layers of A", "dtick": 1, "scaleanchor": "x", "autorange": True},
        legend={"orientation": "h", "y": -0.18},
        margin={"l": 60, "r": 20, "t": 60, "b": 60},
        height=460,
    )
    return fig
