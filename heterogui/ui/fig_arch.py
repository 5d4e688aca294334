"""A picture of the merged architecture: A, the merge and B, slot by slot (docs/method.md sec. 4-7).

Three rows over the merged depth: A's layers on top, the merged trunk in the middle, B's layers
below. Each layer is a box whose height follows its output width; an identity layer (the
padding that aligns a shallower model) is drawn hollow. After the stop point the merge runs
each model's own tail, so the middle row ends there. Every task head is marked at the end.
Stage boundaries are dotted lines.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from heterogui.pipeline import Prepared
from heterogui.resemblance import slot_layers
from heterogui.ui.fig_eval import MODEL_COLOURS

ROWS = {"A": 2.0, "merged": 1.0, "B": 0.0}
MAX_HEIGHT = 0.8


def _box(x: float, y: float, height: float, colour: str, hollow: bool) -> dict:
    return {
        "type": "rect",
        "x0": x - 0.38,
        "x1": x + 0.38,
        "y0": y - height / 2,
        "y1": y + height / 2,
        "line": {"color": colour, "width": 2, "dash": "dot" if hollow else "solid"},
        "fillcolor": "rgba(0,0,0,0)" if hollow else colour,
        "opacity": 0.6,
        "layer": "below",
    }


def architecture_figure(
    prepared: Prepared, widths: dict[str, tuple[int, int, int]], stop: int
) -> go.Figure:
    """Return the picture of the merge with these widths (merge point -> (n_A, n_B, merged)).

    stop: the number of merged layers (the merge's stop point).
    """
    pa = prepared.padded_a.graph()
    al = prepared.alignment
    names = {
        "A": slot_layers(prepared.net_a.graph(), al.positions_a, al.depths, "A"),
        "B": slot_layers(prepared.net_b.graph(), al.positions_b, al.depths, "B"),
    }
    slots = len(names["A"])
    own = {"A": pa.widths(), "B": prepared.padded_b.graph().widths()}
    space_of = [pa.block_out[i] for i in range(slots)]
    top = max([max(w) for w in widths.values()] + [1])
    shapes: list[dict] = []
    hover: dict[str, list] = {"x": [], "y": [], "text": [], "label": []}

    def add(row: str, x: float, width: int | None, colour: str, hollow: bool, text: str) -> None:
        height = MAX_HEIGHT * (width or top) / top
        shapes.append(_box(x, ROWS[row], max(height, 0.08), colour, hollow))
        hover["x"].append(x)
        hover["y"].append(ROWS[row])
        hover["text"].append(text)
        hover["label"].append("" if width is None else str(width))

    for i in range(slots):
        space = space_of[i]
        n_a, n_b, merged = widths.get(space, (None, None, None))
        for row, n in (("A", n_a), ("B", n_b)):
            layer = names[row][i]
            hollow = layer.startswith("identity")
            n = n if n is not None else own[row].get(space)
            add(row, i, n, MODEL_COLOURS[row], hollow, f"slot {i}: {layer}, width {n}")
        if i < stop:
            text = f"slot {i}: merged layer, width {merged} ({names['A'][i]} + {names['B'][i]})"
            add("merged", i, merged, MODEL_COLOURS["merged"], False, text)
    head_x = slots + 0.6
    for row, net in (("A", prepared.net_a), ("B", prepared.net_b)):
        for k, head in enumerate(net.task_heads()):
            y = ROWS[row] + (k - (len(net.task_heads()) - 1) / 2) * 0.3
            shapes.append(
                {
                    "type": "rect",
                    "x0": head_x - 0.3,
                    "x1": head_x + 0.3,
                    "y0": y - 0.12,
                    "y1": y + 0.12,
                    "line": {"color": MODEL_COLOURS[row], "width": 2},
                    "fillcolor": "rgba(0,0,0,0)",
                }
            )
            hover["x"].append(head_x)
            hover["y"].append(y)
            hover["text"].append(f"{row}'s head {head.name}: {len(head.classes)} classes")
            hover["label"].append(f"head {len(head.classes)}")
    shapes += _stage_lines(pa, slots)
    if stop < slots:
        shapes.append(_vline(stop - 0.5, "#d62728", "dash"))
    annotations = [
        {"x": -0.9, "y": y, "text": f"<b>{row}</b>", "showarrow": False, "xanchor": "right"}
        for row, y in ROWS.items()
    ]
    if stop < slots:
        annotations.append(
            {
                "x": stop - 0.5,
                "y": 2.65,
                "text": f"stop point: {slots - stop} layer(s) per model run unmerged",
                "showarrow": False,
                "font": {"color": "#d62728", "size": 11},
            }
        )
    fig = go.Figure(
        go.Scatter(
            x=hover["x"],
            y=hover["y"],
            text=hover["label"],
            customdata=hover["text"],
            mode="markers+text",
            textfont={"size": 11, "color": "#111"},
            marker={"size": 18, "opacity": 0},
            hovertemplate="%{customdata}<extra></extra>",
            showlegend=False,
        )
    )
    merged_label = "merged trunk" if stop else "nothing merged (stop point 0)"
    fig.update_layout(
        title={
            "text": f"Architecture: A, the {merged_label} and B over the merged depth"
            "<br><sup>numbers and box heights: output widths · dotted box: identity layer · "
            "dotted lines: stages · right: task heads (classes)</sup>"
        },
        shapes=shapes,
        annotations=annotations,
        xaxis={
            "title": "slot of the merged depth",
            "range": [-1.6, slots + 1.2],
            "tickvals": list(range(slots)),
            "zeroline": False,
        },
        yaxis={"visible": False, "range": [-0.6, 2.85]},
        height=330,
        margin={"l": 20, "r": 20, "t": 70, "b": 50},
    )
    return fig


def _vline(x: float, colour: str, dash: str) -> dict:
    return {
        "type": "line",
        "x0": x,
        "x1": x,
        "y0": -0.5,
        "y1": 2.5,
        "line": {"color": colour, "width": 1.5, "dash": dash},
    }


def _stage_lines(graph: Any, slots: int) -> list[dict]:
    """Return a dotted line before every stage after the first (and after a stem)."""
    starts = [stage[0] for stage in graph.stages if stage]
    return [_vline(s - 0.5, "rgba(128,128,128,0.6)", "dot") for s in starts if 0 < s < slots]
