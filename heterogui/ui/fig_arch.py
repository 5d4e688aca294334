"""A picture of the merged architecture: A, the merge and B, slot by slot (docs/method.md sec. 4-7).

Three rows over the merged depth: A's layers on top, the merged trunk in the middle, B's layers
below. Each layer is a box whose height follows its output width; an identity layer (the
padding that aligns a shallower model) is drawn hollow. After the stop point the merge runs
each model's own tail, so the middle row ends there. Every task head is marked at the end.
Stage boundaries are dotted lines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go

from heterogui.models.graph import ModelGraph
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


@dataclass
class _Marks:
    """The figure's shapes, and the hover points (place, text and label) of the marked ones."""

    shapes: list[dict] = field(default_factory=list)
    hover: dict[str, list] = field(
        default_factory=lambda: {"x": [], "y": [], "text": [], "label": []}
    )

    def add(self, shape: dict, x: float, y: float, text: str, label: str) -> None:
        """Append ``shape`` and a hover point at (x, y) with this text and label."""
        self.shapes.append(shape)
        self.hover["x"].append(x)
        self.hover["y"].append(y)
        self.hover["text"].append(text)
        self.hover["label"].append(label)


def architecture_figure(
    prepared: Prepared, widths: dict[str, tuple[int, int, int]], stop: int
) -> go.Figure:
    """Return the picture of the merge with these widths (merge point -> (n_A, n_B, merged)).

    stop: the number of merged layers (the merge's stop point).
    """
    pa = prepared.padded_a.graph()
    marks = _Marks()
    slots = _add_slots(marks, prepared, pa, widths, stop)
    _add_heads(marks, prepared, slots + 0.6)
    shapes = marks.shapes
    shapes += _stage_lines(pa, slots)
    if stop < slots:
        shapes.append(_vline(stop - 0.5, "#d62728", "dash"))
    fig = go.Figure(_hover_trace(marks.hover))
    fig.update_layout(**_layout(slots, stop, shapes, _annotations(slots, stop)))
    return fig


def _add_slots(
    marks: _Marks,
    prepared: Prepared,
    pa: ModelGraph,
    widths: dict[str, tuple[int, int, int]],
    stop: int,
) -> int:
    """Add A's, B's and (before ``stop``) the merged layer's box of every slot; return the slots.

    pa: the graph of the padded A (its widths and the merge point after every slot).
    """
    al = prepared.alignment
    names = {
        "A": slot_layers(prepared.net_a.graph(), al.positions_a, al.depths, "A"),
        "B": slot_layers(prepared.net_b.graph(), al.positions_b, al.depths, "B"),
    }
    slots = len(names["A"])
    own = {"A": pa.widths(), "B": prepared.padded_b.graph().widths()}
    space_of = [pa.block_out[i] for i in range(slots)]
    top = max([max(w) for w in widths.values()] + [1])
    for i in range(slots):
        space = space_of[i]
        n_a, n_b, merged = widths.get(space, (None, None, None))
        for row, n in (("A", n_a), ("B", n_b)):
            layer = names[row][i]
            hollow = layer.startswith("identity")
            n = n if n is not None else own[row].get(space)
            text = f"slot {i}: {layer}, width {n}"
            _add_layer(marks, row, i, n, top, MODEL_COLOURS[row], hollow, text)
        if i < stop:
            text = f"slot {i}: merged layer, width {merged} ({names['A'][i]} + {names['B'][i]})"
            _add_layer(marks, "merged", i, merged, top, MODEL_COLOURS["merged"], False, text)
    return slots


def _add_layer(
    marks: _Marks,
    row: str,
    x: float,
    width: int | None,
    top: int,
    colour: str,
    hollow: bool,
    text: str,
) -> None:
    """Add one layer's box in ``row``, its height following ``width`` (of the widest ``top``)."""
    height = MAX_HEIGHT * (width or top) / top
    shape = _box(x, ROWS[row], max(height, 0.08), colour, hollow)
    marks.add(shape, x, ROWS[row], text, "" if width is None else str(width))


def _add_heads(marks: _Marks, prepared: Prepared, head_x: float) -> None:
    """Add a box for every task head of A and of B, stacked around its row at ``head_x``."""
    for row, net in (("A", prepared.net_a), ("B", prepared.net_b)):
        for k, head in enumerate(net.task_heads()):
            y = ROWS[row] + (k - (len(net.task_heads()) - 1) / 2) * 0.3
            shape = {
                "type": "rect",
                "x0": head_x - 0.3,
                "x1": head_x + 0.3,
                "y0": y - 0.12,
                "y1": y + 0.12,
                "line": {"color": MODEL_COLOURS[row], "width": 2},
                "fillcolor": "rgba(0,0,0,0)",
            }
            text = f"{row}'s head {head.name}: {len(head.classes)} classes"
            # the class count alone ("head 10" overflowed its box at 150% zoom)
            marks.add(shape, head_x, y, text, str(len(head.classes)))


def _annotations(slots: int, stop: int) -> list[dict]:
    """Return the row names and, when layers run unmerged, the stop point's note."""
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
    return annotations


def _hover_trace(hover: dict[str, list]) -> go.Scatter:
    """Return the invisible markers that label the boxes and carry their hover text."""
    return go.Scatter(
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


def _layout(slots: int, stop: int, shapes: list[dict], annotations: list[dict]) -> dict[str, Any]:
    """Return the layout: title, the slot axis, the hidden row axis, shapes and annotations."""
    merged_label = "merged trunk" if stop else "nothing merged (stop point 0)"
    return {
        "title": {
            "text": f"Architecture: A, the {merged_label} and B over the merged depth"
            # two lines: one was cut at the right at 200% zoom
            "<br><sup>numbers and box heights: output widths · dotted box: identity layer</sup>"
            "<br><sup>dotted lines: stages · right: task heads (their classes)</sup>"
        },
        "shapes": shapes,
        "annotations": annotations,
        "xaxis": {
            "title": "slot of the merged depth",
            "range": [-1.6, slots + 1.2],
            "tickvals": list(range(slots)),
            "zeroline": False,
        },
        "yaxis": {"visible": False, "range": [-0.6, 2.85]},
        "height": 340,
        "margin": {"l": 20, "r": 20, "t": 84, "b": 50},
    }


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
