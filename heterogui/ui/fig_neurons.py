"""Figures of one merge point's neurons (docs/method.md sec. 7): correlations, merged pairs.

The heatmap shows the correlation of all O = n_A + n_B features, reordered so that the members
of each merged group sit next to each other (A's member first); a strip above it marks every
feature as kept alone, merged across models, merged within its model, or dropped. Above
``MAX_FEATURES`` features the matrix is averaged over square blocks (and the title says so), so
large layers stay responsive.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from heterogui.zip.matchers import Match

MAX_FEATURES = 256
KINDS = (
    ("alone", "kept alone", "#9e9e9e"),
    ("cross", "merged across A and B", "#2ca02c"),
    ("within", "merged within one model", "#ff7f0e"),
    ("dropped", "dropped", "#d62728"),
)


def feature_order(match: Match | None, n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (order of the O features for display, kind index per displayed feature).

    Without a match: A's features then B's, all "alone".
    """
    o = n_a + n_b
    if match is None:
        return np.arange(o), np.zeros(o, dtype=int)
    groups = match.groups.numpy()
    kept = np.flatnonzero(groups >= 0)
    order = np.concatenate(
        [kept[np.argsort(groups[kept], kind="stable")], np.flatnonzero(groups < 0)]
    )
    kinds = np.zeros(o, dtype=int)
    for g in range(match.width):
        members = np.flatnonzero(groups == g)
        n_from_a = int((members < n_a).sum())
        if n_from_a and len(members) > n_from_a:
            kinds[members] = 1
        elif len(members) > 1:
            kinds[members] = 2
    kinds[groups < 0] = 3
    return order, kinds[order]


def _downsample(mat: np.ndarray, kinds: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Average ``mat`` over factor x factor blocks; take the most merged kind per block."""
    o = mat.shape[0]
    bins = math.ceil(o / factor)
    pad = bins * factor - o
    padded = np.pad(mat, ((0, pad), (0, pad)), constant_values=np.nan)
    blocks = padded.reshape(bins, factor, bins, factor)
    small = np.nanmean(blocks, axis=(1, 3))
    kind_blocks = np.pad(kinds, (0, pad), constant_values=0).reshape(bins, factor)
    return small, kind_blocks.max(axis=1)


def neuron_figure(
    corr: np.ndarray,
    n_a: int,
    n_b: int,
    match: Match | None,
    space: str,
    max_features: int = MAX_FEATURES,
) -> go.Figure:
    """Return the reordered correlation heatmap of one merge point with merge marks.

    corr: (O, O) correlation of [f_A ; f_B] (A's features first). Built from plain dicts
    without plotly's per-property validation: this figure is redrawn after every merge.
    """
    order, kinds = feature_order(match, n_a, n_b)
    mat = np.asarray(corr, dtype=np.float64)[np.ix_(order, order)]
    o, factor = mat.shape[0], max(1, math.ceil(mat.shape[0] / max_features))
    note = ""
    if factor > 1:
        mat, kinds = _downsample(mat, kinds, factor)
        note = f" — averaged over {factor}x{factor} blocks ({o} > {max_features} features)"
    idx = np.arange(mat.shape[0]).tolist()
    traces = _strip_traces(kinds)
    traces.append(
        {
            "type": "heatmap",
            "z": np.round(mat, 3).tolist(),
            "x": idx,
            "y": idx,
            "colorscale": "RdBu",
            "zmid": 0,
            "zmin": -1,
            "zmax": 1,
            "xaxis": "x",
            "yaxis": "y2",
            "colorbar": {"title": {"text": "corr"}, "len": 0.8, "y": 0.42},
            "hovertemplate": "%{y} × %{x}: %{z:.3f}<extra></extra>",
        }
    )
    if match is not None and factor == 1:
        traces.append(_group_boxes(match, order))
    layout = {
        "title": {
            "text": f"{space}: neuron correlation, ordered by matching{note}<br><sup>"
            f"{_detail(match, n_a, n_b)}</sup>"
        },
        "height": 560,
        "margin": {"l": 50, "r": 20, "t": 80, "b": 40},
        "legend": {"orientation": "h", "y": -0.08},
        "xaxis": {
            "domain": [0, 1],
            "anchor": "y2",
            "title": {"text": "features (A first in each group)"},
        },
        "yaxis": {"domain": [0.95, 1], "visible": False, "anchor": "x", "range": [-1, 1]},
        "yaxis2": {"domain": [0, 0.93], "autorange": "reversed", "anchor": "x"},
    }
    return go.Figure({"data": traces, "layout": layout}, _validate=False)


def _strip_traces(kinds: np.ndarray) -> list[dict]:
    """Return one marker trace per kind of feature (the strip above the heatmap, with legend)."""
    traces = []
    for k, (_, label, colour) in enumerate(KINDS):
        sel = np.flatnonzero(kinds == k).tolist()
        traces.append(
            {
                "type": "scatter",
                "x": sel,
                "y": [0] * len(sel),
                "mode": "markers",
                "name": label,
                "hoverinfo": "skip",
                "xaxis": "x",
                "yaxis": "y",
                "marker": {"symbol": "square", "size": 7, "color": colour},
            }
        )
    return traces


def _detail(match: Match | None, n_a: int, n_b: int) -> str:
    if match is None:
        return f"A: {n_a}, B: {n_b} features (no matching yet)"
    c = match.counts()
    return (
        f"{c.cross} cross-model groups, {c.within_a} + {c.within_b} within-model merges "
        f"(A + B), width {n_a} + {n_b} → {match.width}"
    )


def _group_boxes(match: Match, order: np.ndarray) -> dict:
    """Return one line trace outlining every group of two or more features on the diagonal."""
    groups = match.groups.numpy()[order]
    xs: list[float | None] = []
    ys: list[float | None] = []
    start = 0
    for pos in range(1, len(groups) + 1):
        if pos < len(groups) and groups[pos] == groups[start] and groups[pos] >= 0:
            continue
        if pos - start > 1:
            lo, hi = start - 0.5, pos - 0.5
            xs += [lo, hi, hi, lo, lo, None]
            ys += [lo, lo, hi, hi, lo, None]
        start = pos
    return {
        "type": "scatter",
        "x": xs,
        "y": ys,
        "mode": "lines",
        "xaxis": "x",
        "yaxis": "y2",
        "line": {"color": "black", "width": 1},
        "name": "merged group",
        "hoverinfo": "skip",
    }


def matched_correlations(corr: np.ndarray, match: Match) -> dict[str, np.ndarray]:
    """Return the correlations of merged feature pairs: "cross" (A-B) and "within" (same model)."""
    groups = match.groups.numpy()
    n_a = match.n_a
    cross, within = [], []
    for g in range(match.width):
        members = np.flatnonzero(groups == g)
        for i_pos, i in enumerate(members):
            for j in members[i_pos + 1 :]:
                target = cross if (i < n_a) != (j < n_a) else within
                target.append(corr[i, j])
    return {"cross": np.array(cross), "within": np.array(within)}


def _binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Return the share of ``values`` in each bin (pre-binned: the page gets 40 numbers)."""
    counts, _ = np.histogram(values, bins=edges)
    return counts / max(int(values.size), 1)


def correlation_histogram(corr: np.ndarray, match: Match | None, n_a: int, space: str) -> go.Figure:
    """Return histograms of the merged pairs' correlations against all A-B correlations."""
    corr = np.asarray(corr, dtype=np.float64)
    edges = np.linspace(-1, 1, 41)
    centres = (edges[:-1] + edges[1:]) / 2
    series = [("all A–B pairs", corr[:n_a, n_a:].reshape(-1), "#9e9e9e")]
    if match is not None:
        matched = matched_correlations(corr, match)
        series += [
            (f"merged across A and B ({matched['cross'].size})", matched["cross"], "#2ca02c"),
            (f"merged within a model ({matched['within'].size})", matched["within"], "#ff7f0e"),
        ]
    fig = go.Figure()
    for name, values, colour in series:
        if values.size:
            fig.add_trace(
                go.Bar(
                    x=centres,
                    y=_binned(values, edges),
                    name=name,
                    width=0.05,
                    marker_color=colour,
                    opacity=0.65,
                )
            )
    fig.update_layout(
        barmode="overlay",
        title=f"{space}: correlation of merged pairs",
        xaxis={"title": "correlation", "range": [-1, 1]},
        yaxis={"title": "share of pairs"},
        height=320,
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig
