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

The histogram of the merged pairs' correlations is drawn by ``heterogui.ui.fig_neuron_hist``.
"""

from __future__ import annotations

import math
import re

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


def _labels(view: NeuronView, positions: np.ndarray) -> list[str]:
    """Return "A12" / "B7" (the model and the feature's index in it) for display positions."""
    feats = view.order[positions]
    return [f"A{f}" if f < view.n_a else f"B{f - view.n_a}" for f in feats.tolist()]


def thousands(value: int) -> str:
    """Return ``value`` with thousands separators ("1,536")."""
    return f"{value:,}"


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


def detail_figure(view: NeuronView, space: str, pair: str = "") -> go.Figure:
    """Return the full-resolution heatmap of the view's detail, with kind strip and group boxes.

    pair: the pair's name; a zoom the page keeps belongs to it and to the merge point
    (``ui.plot_zoom``: the figure's uirevision).

    Built from plain dicts without plotly's per-property validation: this figure is redrawn
    after every merge.
    """
    pos = view.detail
    feats = view.order[pos]
    mat = view.corr[np.ix_(feats, feats)]
    labels = _labels(view, pos)
    n = len(labels)
    traces = _strip_traces(view.kinds[pos], labels, size=max(3.0, min(10.0, 520 / max(n, 1))))
    traces.append(_detail_heatmap(mat, labels))
    where = {int(p): k for k, p in enumerate(pos.tolist())}  # display position -> detail index
    shown = view.spans[view.detail_spans].tolist()
    shapes = [_box(where[s] - 0.5, where[s] + e - s - 0.5) for s, e, *_ in shown]
    title, what = _detail_words(view, space, n)
    layout = _detail_layout(wrapped_title(title, what, *_detail(view)), labels, shapes)
    # a zoom stays through re-merges, until another merge point or another pair
    layout["uirevision"] = f"{pair} | {space} {view.n_a}+{view.n_b}"
    return go.Figure({"data": traces, "layout": layout}, _validate=False)


def _detail_heatmap(mat: np.ndarray, labels: list[str]) -> dict:
    """Return the heatmap trace of the detail's correlation ``mat`` (features named ``labels``)."""
    return {
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


def _detail_words(view: NeuronView, space: str, n: int) -> tuple[str, str]:
    """Return the detail's title and what of the layer it shows (``n`` features)."""
    o = view.n_features
    if view.full:
        title = f"{space}: neuron correlation"
        order = "ordered by the matching, groups boxed" if view.merged else "A's, then B's"
        what = f"all {thousands(o)} features at full resolution, {order}"
    elif view.merged and len(view.spans):
        title = f"{space}: strongest merged groups"
        kinds = ", ".join(
            f"{view.shown_count(k)} of {thousands(view.group_count(k))} {name}"
            for k, name in ((CROSS, "cross-model"), (WITHIN, "within-model"))
            if view.group_count(k)
        )
        what = (
            f"{len(view.detail_spans)} of {thousands(len(view.spans))} merged groups, boxed "
            f"({kinds}), {thousands(n)} of {thousands(o)} features"
        )
    else:
        title = f"{space}: first features of A and B"
        what = f"{thousands(n)} of {thousands(o)} features, nothing merged here"
    return title, what


def _detail_layout(title: tuple[str, int], labels: list[str], shapes: list[dict]) -> dict:
    """Return the detail's layout: the kind strip's axes above the heatmap's, over ``labels``.

    title: ``wrapped_title``'s. The legend stands in a column of its own rows above the plot,
    so that a narrow figure does not wrap it over the title.
    """
    text, lines = title
    top = top_margin(lines, legend_rows=len(KINDS))
    return {
        "title": corner_title(text),
        "height": 582 + top,
        "margin": {"l": 60, "r": 20, "t": top, "b": 60},
        "legend": {
            "orientation": "v",
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


# Subtitle characters per line: what a figure half as wide as an 800-pixel page holds (plotly
# never wraps a title, so a longer line ran past the figure's edge: "width 32 + 32 → 3").
TITLE_CHARS = 46
# pixels above the plot: the title's first line and padding, each subtitle line, a legend row
TITLE_TOP, SUBTITLE_LINE, LEGEND_ROW = 42, 21, 19


def wrapped_title(head: str, *lines: str) -> tuple[str, int]:
    """Return a title whose subtitle ``lines`` are wrapped at ``TITLE_CHARS``, and the number
    of subtitle lines it has.

    A line breaks after a comma, semicolon or colon only, so that a number stays with what it
    counts ("303 alone", not "303" over "alone"); a longer phrase keeps a line of its own.
    """
    sub: list[str] = []
    for line in lines:
        current = ""
        for phrase in re.split(r"(?<=[,;:]) ", line):
            if current and len(current) + 1 + len(phrase) > TITLE_CHARS:
                sub.append(current)
                current = phrase
            else:
                current = f"{current} {phrase}" if current else phrase
        sub.append(current)
    return head + (f"<br><sup>{'<br>'.join(sub)}</sup>" if sub else ""), len(sub)


def top_margin(subtitle_lines: int, legend_rows: int = 0) -> int:
    """Return the top margin that holds a title of ``subtitle_lines`` and a legend above the
    plot of ``legend_rows`` rows."""
    return TITLE_TOP + SUBTITLE_LINE * subtitle_lines + LEGEND_ROW * legend_rows


def corner_title(text: str) -> dict:
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


def _detail(view: NeuronView) -> tuple[str, ...]:
    """Return the matching: groups by kind, then the widths (groups, not pairs)."""
    if not view.merged:
        return (f"A: {thousands(view.n_a)}, B: {thousands(view.n_b)} features (not merged)",)
    alone = int((view.kinds == ALONE).sum())
    dropped = int((view.kinds == DROPPED).sum())
    width = len(view.spans) + alone
    tail = f", {thousands(dropped)} dropped" if dropped else ""
    return (
        f"groups: {thousands(view.group_count(CROSS))} cross-model, "
        f"{thousands(view.group_count(WITHIN))} within-model, {thousands(alone)} alone{tail}",
        f"width {thousands(view.n_a)} + {thousands(view.n_b)} → {thousands(width)}",
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
    title, lines = wrapped_title(
        f"Overview: all {thousands(o)} features",
        f"mean correlation per {block}, colours ±{top:.2f}",
        "same order; boxes: the detail's features",
    )
    layout = {
        "title": corner_title(title),
        "height": 305 + top_margin(lines),
        "margin": {"l": 50, "r": 20, "t": top_margin(lines), "b": 45},
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
