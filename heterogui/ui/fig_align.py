"""Figures and tables of the layer alignment (docs/method.md sec. 4), from core results.

The CKA heatmap has A's layers on the y axis and B's on the x axis; the alignment path joins the
pairs of layers that share a slot of the merged depth, and a box marks each segment: the deeper
model's layers that the shallower model's layer is merged with (the identity-padded slots).

One numbering everywhere: a layer is named by its model and its index among the model's
non-head layers, all stages together (``A0``, ``A1``, ... ``B0``, ...), as the heatmap's rows
and columns count them; its stage is shown beside the name.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from heterogui.align.alignment import Alignment, end_layers, layer_pairs
from heterogui.align.editing import place_of, stage_of
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
    slot: int = 0  # the shallow layer's slot in its stage (the number the mapping gives it)


def stage_name(stage: int | None) -> str:
    """Return "stage 2", or "stem" for the layers before the first stage."""
    return "stem" if stage is None else f"stage {stage}"


def layer_label(model: str, graph: ModelGraph, layer: int) -> str:
    """Return a layer's name with its stage, e.g. "A3 (stage 1)", "B0 (stem)", "A7 (end)"."""
    return f"{model}{layer} ({place_of(graph, layer)})"


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
                    shallow_pos[k],
                )
            )
    return out


def segment_rows(alignment: Alignment, ga: ModelGraph, gb: ModelGraph) -> list[list[str]]:
    """Return table rows: stage, shallow layer (and its slot), its segment's deep layers, padding.

    The layers are named as the heatmap numbers them (A0, B3, ...).
    """
    rows = []
    for seg in alignment_segments(alignment, ga, gb):
        pad = len(seg.deep_layers) - 1
        rows.append(
            [
                str(seg.stage),
                f"{seg.shallow_model}{seg.shallow_layer} (slot {seg.slot})",
                ", ".join(f"{seg.deep_model}{i}" for i in seg.deep_layers),
                f"{pad} identity layer(s) in {seg.shallow_model}" if pad else "one to one",
            ]
        )
    return rows


def stage_pairs(alignment: Alignment, ga: ModelGraph, gb: ModelGraph) -> list[tuple[str, str]]:
    """Return (stage name, its slots in layer names) for the stem, every stage and the end.

    A slot is "A1↔B2" where both models have a layer, "B2 + identity in A" where only one has.
    """
    out = []
    first_a = ga.stages[0][0] if ga.stages and ga.stages[0] else 0
    first_b = gb.stages[0][0] if gb.stages and gb.stages[0] else 0
    stem = [f"A{i}↔B{i}" for i in range(min(first_a, first_b))]
    if stem:
        out.append(("stem", ", ".join(stem)))
    for s, depth in enumerate(alignment.depths):
        slot_a = {p: ga.stages[s][k] for k, p in enumerate(alignment.positions_a[s])}
        slot_b = {p: gb.stages[s][k] for k, p in enumerate(alignment.positions_b[s])}
        items = []
        for t in range(depth):
            if t in slot_a and t in slot_b:
                items.append(f"A{slot_a[t]}↔B{slot_b[t]}")
            elif t in slot_a:
                items.append(f"A{slot_a[t]} + identity in B")
            else:
                items.append(f"B{slot_b[t]} + identity in A")
        out.append((stage_name(s), ", ".join(items)))
    end = [f"A{i}↔B{j}" for i, j in zip(end_layers(ga), end_layers(gb), strict=False)]
    if end:
        out.append(("end", ", ".join(end)))
    return out


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


def _tick(model: str, graph: ModelGraph, layer: int) -> str:
    """Return a layer's tick, on one line ("B1 s0"): Plotly turns crowded ticks, and turned
    two-line ticks printed on top of each other."""
    place = place_of(graph, layer).replace("stage ", "s")
    return f"{model}{layer} {place}"


def _stage_starts(graph: ModelGraph, layers: int) -> list[float]:
    """Return the boundaries between consecutive stages (and the stem), as axis positions."""
    bounds = [blocks[0] for blocks in graph.stages if blocks]
    bounds += [graph.stages[-1][-1] + 1] if graph.stages and graph.stages[-1] else []
    return [f - 0.5 for f in bounds if 0 < f < layers]


def _hint(ga: ModelGraph, gb: ModelGraph, i: int, j: int) -> str:
    """Return what a click on cell (A i, B j) would do, for the hover text."""
    s = stage_of(ga, i)
    if s is None or s != stage_of(gb, j) or len(ga.stages[s]) == len(gb.stages[s]):
        return ""
    shallow, deep = (
        (f"B{j}", f"A{i}")
        if len(ga.stages[s]) > len(gb.stages[s])
        else (
            f"A{i}",
            f"B{j}",
        )
    )
    return f"<br>click: pair {shallow} with {deep}"


def alignment_figure(
    similarity,
    alignment: Alignment,
    ga: ModelGraph,
    gb: ModelGraph,
    title: str = "",
    pair: str = "",
) -> go.Figure:
    """Return the CKA heatmap (layers of A x layers of B) with the alignment path and segments.

    similarity: (L_A, L_B) CKA over non-head layers (a tensor or array). The axes name the
    layers A0.., B0.. with their stage (s0, s1, ...); dotted lines part the stages. pair: the
    pair's name; a zoom the page keeps belongs to it (``ui.plot_zoom``: the uirevision).
    """
    z = [[round(float(v), 4) for v in row] for row in similarity.tolist()]
    la, lb = len(z), len(z[0]) if z else 0
    paired = set(layer_pairs(alignment, ga, gb))
    fig = go.Figure(_cka_heatmap(z, _hover_texts(ga, gb, la, lb, paired)))
    _add_stage_lines(fig, ga, gb, la, lb)
    for box in segment_boxes(alignment, ga, gb):
        # white dots over a dark line: seen on viridis' purple and on its yellow alike (white
        # alone vanished on the yellow-green cells of similar layers)
        fig.add_shape(type="rect", **box, line={"color": "#111111", "width": 3})
        fig.add_shape(type="rect", **box, line={"color": "white", "width": 2, "dash": "dot"})
    fig.add_trace(_path_trace(alignment, ga, gb))
    score = "n/a" if alignment.score is None else f"{alignment.score:.3f}"
    fig.update_layout(
        title=title or f"Layer CKA with the {alignment.mode.upper()} path (score {score})",
        **_layer_axes(ga, gb, la, lb),
        legend={"orientation": "h", "y": -0.22},
        margin={"l": 60, "r": 20, "t": 60, "b": 70},
        height=480,
        clickmode="event",
        # a zoom stays while the map is redrawn for the same layers (a click pairing layers)
        uirevision=f"{pair} | {la}x{lb}",
    )
    return fig


def _hover_texts(
    ga: ModelGraph, gb: ModelGraph, la: int, lb: int, paired: set[tuple[int, int]]
) -> list[list[str]]:
    """Return every cell's hover text: its two layers, whether the path pairs them, and what a
    click on it would do."""
    return [
        [
            f"{layer_label('A', ga, i)} vs {layer_label('B', gb, j)}"
            + ("<br>paired (on the alignment path)" if (i, j) in paired else "")
            + _hint(ga, gb, i, j)
            for j in range(lb)
        ]
        for i in range(la)
    ]


def _cka_heatmap(z: list[list[float]], hover: list[list[str]]) -> go.Heatmap:
    """Return the heatmap of ``z`` (rows: A's layers), its colours spanning the data's range."""
    values = [v for row in z for v in row] or [0.0]
    la, lb = len(z), len(z[0]) if z else 0
    return go.Heatmap(
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


def _add_stage_lines(fig: go.Figure, ga: ModelGraph, gb: ModelGraph, la: int, lb: int) -> None:
    """Add dashed lines between the stages: vertical for B's (x axis), horizontal for A's."""
    line = {"color": "rgba(255, 255, 255, 0.45)", "width": 1, "dash": "dash"}
    for x in _stage_starts(gb, lb):
        fig.add_shape(type="line", x0=x, x1=x, y0=-0.5, y1=la - 0.5, line=line)
    for y in _stage_starts(ga, la):
        fig.add_shape(type="line", x0=-0.5, x1=lb - 0.5, y0=y, y1=y, line=line)


def _path_trace(alignment: Alignment, ga: ModelGraph, gb: ModelGraph) -> go.Scatter:
    """Return the alignment path: a marker on every pair of layers that share a slot."""
    pairs = layer_pairs(alignment, ga, gb)
    return go.Scatter(
        x=[b for _, b in pairs],
        y=[a for a, _ in pairs],
        mode="lines+markers",
        name="alignment path",
        line={"color": "#ff4b4b", "width": 3},
        marker={"size": 10, "symbol": "x", "color": "#ff4b4b"},
        # no hover or click of its own: a tap near a marker took the marker's cell, not the
        # cell under the finger (cells of 14-17 px on a tablet or phone); the cells say "paired"
        hoverinfo="skip",
    )


def _layer_axes(ga: ModelGraph, gb: ModelGraph, la: int, lb: int) -> dict[str, dict]:
    """Return the x axis (B's layers) and the y axis (A's), each tick a layer and its stage.

    The cells fill the plot: square cells left the map a strip between empty axis ranges in a
    narrow frame (a laptop at 150% zoom) and its colour bar far to its right in a wide one.
    """
    return {
        "xaxis": {
            "title": "layers of B (stage)",
            "tickvals": list(range(lb)),
            "ticktext": [_tick("B", gb, j) for j in range(lb)],
        },
        "yaxis": {
            "title": "layers of A (stage)",
            "tickvals": list(range(la)),
            "ticktext": [_tick("A", ga, i) for i in range(la)],
            "autorange": True,
        },
    }
