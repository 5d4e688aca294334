"""Figures of the Compare tab: two merges' widths, and the 2-D sweep's score map.

Pure functions: plain numbers in, plotly figures out.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from heterogui.models.graph import space_order
from heterogui.ui.fig_eval import MODEL_COLOURS

MERGE_COLOURS = ("#2ca02c", "#17becf")
# the light part of viridis (from 0.56 on), so that the dark contours and their labels read
# at 5.7:1 or more on every cell (white ones were 1.3:1 on viridis yellow)
_LIGHT_VIRIDIS_STOPS = ("#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725")
LIGHT_VIRIDIS = [[k / 4, c] for k, c in enumerate(_LIGHT_VIRIDIS_STOPS)]
CONTOUR_INK = "#111111"
_Points = dict[tuple[Any, Any], dict[str, Any]]  # the sweep's points by (rho, knob)


def compare_widths_figure(widths: dict[str, dict[str, tuple[int, int, int]]]) -> go.Figure:
    """Return A's and B's widths (lines) and each merge's width (bars) at every merge point.

    widths: merge label -> merge point -> (n_A, n_B, merged width).
    """
    first = next(iter(widths.values()))
    spaces = sorted({s for w in widths.values() for s in w}, key=space_order)
    fig = go.Figure()
    for k, (label, per_space) in enumerate(widths.items()):
        fig.add_trace(
            go.Bar(
                x=spaces,
                y=[per_space[s][2] if s in per_space else None for s in spaces],
                name=f"merge {label}",
                marker_color=MERGE_COLOURS[k % len(MERGE_COLOURS)],
            )
        )
    for idx, name in ((0, "A"), (1, "B")):
        fig.add_trace(
            go.Scatter(
                x=spaces,
                y=[first[s][idx] if s in first else None for s in spaces],
                name=name,
                mode="markers",
                marker={
                    "symbol": "line-ew-open",
                    "size": 34,
                    "color": MODEL_COLOURS[name],
                    "line": {"width": 3, "color": MODEL_COLOURS[name]},
                },
            )
        )
    fig.update_layout(
        barmode="group",
        height=340,
        # the legend above the bars: below them, the merge points' slanted names ran into it;
        # 72 px from the top, below the block's label (at 40 it lay under the label)
        margin={"l": 50, "r": 20, "t": 72, "b": 60},
        legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        yaxis={"title": "width"},
    )
    return fig


def grid_figure(
    points: list[dict[str, Any]],
    knob: str,
    metric: str,
    current: tuple[float, float] | None,
    lower_better: bool = False,
) -> go.Figure:
    """Return the score over rho (x) and ``knob`` (y) as a heat map, with size contours.

    points: the sweep's points ("rho", ``knob``, "score", "parameters"); missing cells (settings
    that could not be merged) stay empty. current: the Zip tab's (rho, knob), marked.
    lower_better: the score is better when smaller (perplexity): the colours run the other way,
    so the best cells are bright either way.
    """
    xs = sorted({p["rho"] for p in points})
    ys = sorted({p[knob] for p in points})
    at = {(p["rho"], p[knob]): p for p in points}
    fig = go.Figure(_score_heatmap(xs, ys, at, knob, metric, lower_better))
    if len(xs) > 1 and len(ys) > 1:
        fig.add_trace(_size_contours(xs, ys, at))
    if current is not None:
        fig.add_trace(_current_marker(current))
    fig.update_layout(
        title={"text": f"{metric} over rho × {knob} (contours: effective parameters)"},
        # a tick at every cell's centre (plotly's own ticks fell between a grid's cells)
        xaxis={"title": "rho (0 = every neuron kept, 1 = full zip)", "tickvals": xs},
        yaxis={"title": knob, "tickvals": ys},
        height=420,
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def _grid_cells(at: _Points, xs: list, ys: list, key: str) -> list[list[Any]]:
    """Return ``key`` of the point at every (x, y), a row per y; None where there is none."""
    return [[at[(x, y)].get(key) if (x, y) in at else None for x in xs] for y in ys]


def _score_heatmap(
    xs: list, ys: list, at: _Points, knob: str, metric: str, lower_better: bool
) -> go.Heatmap:
    """Return the scores as a heat map; the hover adds each cell's parameters."""
    return go.Heatmap(
        x=xs,
        y=ys,
        z=_grid_cells(at, xs, ys, "score"),
        colorscale=LIGHT_VIRIDIS,
        reversescale=lower_better,
        colorbar={"title": {"text": metric}},
        customdata=_grid_cells(at, xs, ys, "parameters"),
        hovertemplate=f"rho %{{x}}<br>{knob} %{{y}}<br>{metric} %{{z}}<br>"
        "parameters %{customdata:,}<extra></extra>",
        name=metric,
    )


def _size_contours(xs: list, ys: list, at: _Points) -> go.Contour:
    """Return labelled dotted contours of the effective parameters over the grid (dark on
    ``LIGHT_VIRIDIS``; the title names them, so no legend entry, whose swatch one theme's
    background would hide)."""
    return go.Contour(
        x=xs,
        y=ys,
        z=_grid_cells(at, xs, ys, "parameters"),
        contours={"coloring": "none", "showlabels": True, "labelfont": {"color": CONTOUR_INK}},
        line={"color": CONTOUR_INK, "width": 1.5, "dash": "dot"},
        showscale=False,
        hoverinfo="skip",
        name="parameters (effective)",
        showlegend=False,
    )


def _current_marker(current: tuple[float, float]) -> go.Scatter:
    """Return the cross that marks the Zip tab's current (rho, knob)."""
    return go.Scatter(
        x=[current[0]],
        y=[current[1]],
        mode="markers",
        marker={"symbol": "x", "size": 14, "color": "#ff4b4b"},
        name="current setting",
        hoverinfo="skip",
    )


def resemblance_figure(found: Any, merge: int) -> go.Figure:
    """Return the CKA of every merged layer with A's and B's layer at its slot, over depth.

    found: a ``heterogui.resemblance.Resemblance``. Identity-padded slots get hollow markers.
    """
    slots = list(range(len(found.to_a)))
    fig = go.Figure()
    for name, values, layers in (
        ("A", found.to_a, found.layers_a),
        ("B", found.to_b, found.layers_b),
    ):
        hollow = [n.startswith("identity") for n in layers]
        fig.add_trace(
            go.Scatter(
                x=slots,
                y=values,
                name=f"CKA with {name}",
                mode="lines+markers",
                line={"color": MODEL_COLOURS[name], "width": 2},
                marker={
                    "size": 10,
                    "color": ["rgba(0,0,0,0)" if h else MODEL_COLOURS[name] for h in hollow],
                    "line": {"width": 2, "color": MODEL_COLOURS[name]},
                },
                customdata=layers,
                hovertemplate="merged layer %{x}: CKA %{y:.3f} with %{customdata}<extra></extra>",
            )
        )
    fig.update_layout(
        title={
            "text": f"Which parent merge #{merge} resembles, layer by layer"
            "<br><sup>hollow: the parent has an identity layer there</sup>"
        },
        xaxis={"title": "merged layer (slot of the merged depth)", "dtick": 1},
        yaxis={"title": "CKA", "range": [min([0.0, *found.to_a, *found.to_b]) - 0.02, 1.02]},
        height=340,
        margin={"l": 60, "r": 20, "t": 70, "b": 50},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig
