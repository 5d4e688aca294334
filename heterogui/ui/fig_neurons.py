"""Figures of one merge point's neurons (docs/method.md sec. 7): correlations, merged pairs.

The features of a merge point (O = n_A + n_B, A's first) are put in display order by the
matching (``neuron_view``): the merged groups, cross-model groups first, then within-model
groups, each kind by the mean correlation of its members (strongest first, A's member first in
each group), then the features kept alone, then the dropped ones.

- A small layer (at most ``MAX_FEATURES`` features, e.g. the digits zoo) is drawn whole at full
  resolution: the reordered correlation, a strip above it marking every feature as kept alone,
  merged across models, merged within its model or dropped, and a box around every group.
- A larger layer (a transformer's 1,536 + 1,536 FFN features) gets two views. The detail shows
  the strongest merged groups (``DETAIL_GROUPS`` of them, at most ``MAX_FEATURES`` features;
  cross-model first, a quarter kept for within-model groups) at full resolution with their
  boxes; the overview shows all features in the same order, averaged over square blocks, with
  the detail's features outlined. Every title says what it shows.

``correlation_histogram`` counts the merged pairs by correlation (docs/method.md sec. 7: the
zip merges the most correlated pairs first), against the share of all A-B pairs on a second axis.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from heterogui.ui.neuron_view import (
    ALONE,
    CROSS,
    DETAIL_GROUPS,
    DROPPED,
    KINDS,
    MAX_FEATURES,
    WITHIN,
    NeuronView,
    block_means,
    matched_correlations,
    neuron_view,
    runs,
)
from heterogui.zip.matchers import Match

OVERVIEW_BINS = 128  # blocks per side of the overview (at most)
# Diverging, light in the middle: uncorrelated features fade, merged ones stand out.
CORR_COLOURS = [
    [0.0, "#2166ac"],
    [0.25, "#67a9cf"],
    [0.5, "#ececec"],
    [0.75, "#ef8a62"],
    [1.0, "#b2182b"],
]
BOX_COLOUR = "#111111"
EDGES = np.linspace(-1, 1, 41)  # the histogram's 40 bins of correlation


def _labels(view: NeuronView, positions: np.ndarray) -> list[str]:
    """Return "A12" / "B7" (the model and the feature's index in it) for display positions."""
    feats = view.order[positions]
    return [f"A{f}" if f < view.n_a else f"B{f - view.n_a}" for f in feats.tolist()]


def _n(value: int) -> str:
    return f"{value:,}"


def _s(value: int) -> str:
    return "" if value == 1 else "s"


def neuron_figure(
    corr: np.ndarray,
    n_a: int,
    n_b: int,
    match: Match | None,
    space: str,
    max_features: int = MAX_FEATURES,
    detail_groups: int = DETAIL_GROUPS,
) -> go.Figure:
    """Return the neuron map of one merge point: the whole layer, or the strongest groups.

    corr: (O, O) correlation of [f_A ; f_B] (A's features first).
    """
    view = neuron_view(corr, n_a, n_b, match, max_features, detail_groups)
    return detail_figure(view, space)


def detail_figure(view: NeuronView, space: str) -> go.Figure:
    """Return the full-resolution heatmap of the view's detail, with kind strip and group boxes.

    Built from plain dicts without plotly's per-property validation: this figure is redrawn
    after every merge.
    """
    pos = view.detail
    feats = view.order[pos]
    mat = view.corr[np.ix_(feats, feats)]
    labels = _labels(view, pos)
    n = len(labels)
    traces = _strip_traces(view.kinds[pos], labels, size=max(3.0, min(10.0, 520 / max(n, 1))))
    traces.append(
        {
            "type": "heatmap",
            "z": np.asarray(mat, dtype=np.float32),  # sent as binary (base64): compact, fast
            "x": labels,
            "y": labels,
            "colorscale": CORR_COLOURS,
            "zmid": 0,
            "zmin": -1,
            "zmax": 1,
            "xaxis": "x",
            "yaxis": "y2",
            "colorbar": {"title": {"text": "corr"}, "len": 0.75, "y": 0.4, "thickness": 14},
            "hovertemplate": "%{y} × %{x}: %{z:.3f}<extra></extra>",
        }
    )
    where = {int(p): k for k, p in enumerate(pos.tolist())}  # display position -> detail index
    shown = view.spans[view.detail_spans].tolist()
    shapes = [_box(where[s] - 0.5, where[s] + e - s - 0.5) for s, e, *_ in shown]
    o = view.n_features
    if view.full:
        title = f"{space}: neuron correlation"
        order = "ordered by the matching, groups boxed" if view.merged else "A's, then B's"
        what = f"all {_n(o)} features at full resolution, {order}"
    elif view.merged and len(view.spans):
        title = f"{space}: strongest merged groups"
        kinds = ", ".join(
            f"{view.shown_count(k)} of {_n(view.group_count(k))} {name}"
            for k, name in ((CROSS, "cross-model"), (WITHIN, "within-model"))
            if view.group_count(k)
        )
        what = (
            f"{len(view.detail_spans)} of {_n(len(view.spans))} merged groups, boxed "
            f"({kinds}), {_n(n)} of {_n(o)} features"
        )
    else:
        title = f"{space}: first features of A and B"
        what = f"{_n(n)} of {_n(o)} features, nothing merged here"
    layout = {
        "title": _title(f"{title}<br><sup>{what}<br>{_detail(view)}</sup>"),
        "height": 700,
        "margin": {"l": 60, "r": 20, "t": 118, "b": 60},
        "legend": {
            "orientation": "h",
            "x": 0,
            "xanchor": "left",
            "y": 1.01,
            "yanchor": "bottom",
            "font": {"size": 11},
        },
        "shapes": shapes,
        "xaxis": {
            "domain": [0, 1],
            "anchor": "y2",
            "type": "category",
            "categoryorder": "array",
            "categoryarray": labels,
            "tickfont": {"size": 9},
            "title": {"text": "feature (A first in each group)", "standoff": 4},
        },
        "yaxis": {"domain": [0.955, 1], "visible": False, "anchor": "x", "range": [-1, 1]},
        "yaxis2": {
            "domain": [0, 0.94],
            "anchor": "x",
            "type": "category",
            "categoryorder": "array",
            "categoryarray": labels,
            "autorange": "reversed",
            "tickfont": {"size": 9},
        },
    }
    return go.Figure({"data": traces, "layout": layout}, _validate=False)


def _title(text: str) -> dict:
    """Return a title anchored to the figure's top left (multi-line titles stay inside)."""
    return {
        "text": text,
        "x": 0.01,
        "xanchor": "left",
        "yref": "container",
        "y": 1,
        "yanchor": "top",
        "pad": {"t": 20},
    }


def _box(lo: float, hi: float) -> dict:
    """Return a square outline on the heatmap's diagonal from ``lo`` to ``hi`` (positions)."""
    return {
        "type": "rect",
        "xref": "x",
        "yref": "y2",
        "x0": lo,
        "x1": hi,
        "y0": lo,
        "y1": hi,
        "line": {"color": BOX_COLOUR, "width": 2},
        "name": "merged group",
    }


def _strip_traces(
    kinds: np.ndarray, xs: list, size: float, where: str = "%{x}", legend: bool = True
) -> list[dict]:
    """Return one marker trace per kind of feature: the strip above a heatmap (with legend).

    xs: the x of every feature (or block) in ``kinds``; where: how a hover names its place.
    """
    traces = []
    for k, (_, label, colour) in enumerate(KINDS):
        sel = np.flatnonzero(kinds == k)
        traces.append(
            {
                "type": "scatter",
                "x": [xs[i] for i in sel.tolist()],
                "y": [0] * sel.size,
                "mode": "markers",
                "name": label,
                "showlegend": legend,
                "hovertemplate": f"{where}: {label}<extra></extra>",
                "xaxis": "x",
                "yaxis": "y",
                "marker": {"symbol": "square", "size": size, "color": colour},
            }
        )
    return traces


def _detail(view: NeuronView) -> str:
    """Return the matching in one line: groups by kind and the widths (groups, not pairs)."""
    if not view.merged:
        return f"A: {_n(view.n_a)}, B: {_n(view.n_b)} features (not merged)"
    alone = int((view.kinds == ALONE).sum())
    dropped = int((view.kinds == DROPPED).sum())
    width = len(view.spans) + alone
    tail = f", {_n(dropped)} dropped" if dropped else ""
    return (
        f"groups: {_n(view.group_count(CROSS))} cross-model, "
        f"{_n(view.group_count(WITHIN))} within-model, {_n(alone)} alone{tail}; "
        f"width {_n(view.n_a)} + {_n(view.n_b)} → {_n(width)}"
    )


def overview_figure(view: NeuronView, space: str, bins: int = OVERVIEW_BINS) -> go.Figure:
    """Return all features in display order, averaged over square blocks, detail outlined.

    A block's value is the mean correlation of its pairs of distinct features (a feature's
    correlation with itself is left out); the colours span the largest block mean.
    """
    o = view.n_features
    factor = max(1, math.ceil(o / bins))
    means, kinds = block_means(view, factor)
    top = float(np.nanmax(np.abs(means))) if np.isfinite(means).any() else 1.0
    top = max(math.ceil(top * 100) / 100, 0.01)  # the colour range covers every block
    centres = (np.arange(means.shape[0]) * factor + (factor - 1) / 2).tolist()
    traces = _strip_traces(kinds, centres, 4, "features ≈%{x:.0f}", legend=False)
    traces.append(
        {
            "type": "heatmap",
            "z": means.astype(np.float32),
            "x": centres,
            "y": centres,
            "colorscale": CORR_COLOURS,
            "zmid": 0,
            "zmin": -top,
            "zmax": top,
            "xaxis": "x",
            "yaxis": "y2",
            "colorbar": {"title": {"text": "mean"}, "len": 0.75, "y": 0.4, "thickness": 12},
            "hovertemplate": "features ≈%{y:.0f} × ≈%{x:.0f}: mean %{z:.3f}<extra></extra>",
        }
    )
    shapes = []
    for lo, hi in runs(view.detail) if not view.full else []:
        shapes.append(_box(lo - 0.5, hi - 0.5))
    block = f"{factor}×{factor} blocks" if factor > 1 else "full resolution"
    layout = {
        "title": _title(
            f"Overview: all {_n(o)} features<br><sup>mean correlation per {block}, "
            f"colours ±{top:.2f}<br>same order; boxes: the detail's features</sup>"
        ),
        "height": 400,
        "margin": {"l": 50, "r": 20, "t": 95, "b": 45},
        "showlegend": False,
        "shapes": shapes,
        "xaxis": {
            "domain": [0, 1],
            "anchor": "y2",
            "range": [-0.5, o - 0.5],
            "title": {"text": "display position", "standoff": 4},
        },
        "yaxis": {"domain": [0.95, 1], "visible": False, "anchor": "x", "range": [-1, 1]},
        "yaxis2": {"domain": [0, 0.93], "range": [o - 0.5, -0.5], "anchor": "x"},
    }
    return go.Figure({"data": traces, "layout": layout}, _validate=False)


def _counts(values: np.ndarray) -> np.ndarray:
    """Return how many of ``values`` fall in each of the 40 bins over [-1, 1] (clipped to it).

    A bin holds [lower edge, upper edge); 1 goes to the last bin. Integer binning: a few times
    faster than ``np.histogram`` on the millions of A-B pairs of a transformer layer.
    """
    idx = ((np.asarray(values, dtype=np.float64) + 1.0) * (len(EDGES) - 1) / 2).astype(np.int64)
    np.clip(idx, 0, len(EDGES) - 2, out=idx)
    return np.bincount(idx.reshape(-1), minlength=len(EDGES) - 1)


def correlation_histogram(corr: np.ndarray, match: Match | None, n_a: int, space: str) -> go.Figure:
    """Return the number of merged pairs per correlation bin, against all A-B pairs.

    Merged pairs (two features sharing a group, docs/method.md sec. 7) are stacked bars of
    counts; the distribution of all A-B pairs is a line of shares on the right axis (its
    counts are of another order). Pre-binned: the page gets a few dozen numbers per series.
    """
    corr = np.asarray(corr)
    centres = ((EDGES[:-1] + EDGES[1:]) / 2).round(3).tolist()
    everything = corr[:n_a, n_a:]
    background = _counts(everything)
    traces = []
    if match is not None:
        pairs = matched_correlations(corr, match)
        n_cross, n_within = pairs["cross"].size, pairs["within"].size
        for key, label, colour in (
            ("cross", "across A and B", "#2ca02c"),
            ("within", "within one model", "#ff7f0e"),
        ):
            traces.append(
                {
                    "type": "bar",
                    "x": centres,
                    "y": _counts(pairs[key]).tolist(),
                    "width": 0.05,
                    "name": f"{label} ({_n(pairs[key].size)} pair{_s(pairs[key].size)})",
                    "marker": {"color": colour},
                    "hovertemplate": f"corr %{{x:.3f}}: %{{y}} pairs {label}<extra></extra>",
                }
            )
        sub = (
            f"{_n(n_cross + n_within)} merged pair{_s(n_cross + n_within)}: "
            f"{_n(n_cross)} across A and B, "
            f"{_n(n_within)} within one model"
        )
        left, what = "merged pairs", "merged"
    else:
        traces.append(
            {
                "type": "bar",
                "x": centres,
                "y": background.tolist(),
                "width": 0.05,
                "name": f"all A–B pairs: {_n(everything.size)}",
                "marker": {"color": "#9e9e9e"},
                "hovertemplate": "corr %{x:.3f}: %{y} A–B pairs<extra></extra>",
            }
        )
        sub = f"not merged here: all {_n(everything.size)} A–B pairs"
        left, what = "A–B pairs", "A–B"
    if match is not None:
        share = background / max(everything.size, 1)
        traces.append(
            {
                "type": "scatter",
                "x": centres,
                "y": share.round(5).tolist(),
                "yaxis": "y2",
                "mode": "lines",
                "line": {"color": "#7f7f7f", "width": 1.5, "dash": "dot", "shape": "hvh"},
                "name": "all A–B pairs (share, right axis)",
                "hovertemplate": "corr %{x:.3f}: %{y:.2%} of all A–B pairs<extra></extra>",
            }
        )
    layout = {
        "barmode": "stack",
        "title": _title(f"{space}: correlation of {what} pairs<br><sup>{sub}</sup>"),
        "xaxis": {"title": {"text": "correlation"}, "range": [-1, 1]},
        "yaxis": {"title": {"text": left}, "rangemode": "tozero", "tickformat": ",d"},
        "yaxis2": {
            "title": {"text": "share of all A–B pairs"},
            "overlaying": "y",
            "side": "right",
            "rangemode": "tozero",
            "tickformat": ".0%",
            "tickfont": {"color": "#8c8c8c"},  # readable on light and dark pages alike
            "showgrid": False,
        },
        "height": 380,
        "margin": {"l": 55, "r": 60, "t": 130, "b": 45},
        "legend": {
            "orientation": "h",
            "traceorder": "normal",
            "x": 0,
            "xanchor": "left",
            "y": 1.02,
            "yanchor": "bottom",
            "font": {"size": 11},
        },
    }
    tallest = np.sum([t["y"] for t in traces if t["type"] == "bar"], axis=0).max()
    if tallest < 8:  # a small layer: whole pairs only, not 0.2 of one
        layout["yaxis"]["dtick"] = 1
    if match is None:
        del layout["yaxis2"]
    return go.Figure({"data": traces, "layout": layout}, _validate=False)
