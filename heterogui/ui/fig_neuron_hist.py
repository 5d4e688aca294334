"""The histogram of one merge point's merged pairs by correlation (docs/method.md sec. 7).

``correlation_histogram`` counts the merged pairs by correlation (docs/method.md sec. 7: the
zip merges the most correlated pairs first), against the share of all A-B pairs on a second axis.
A merge point that is not merged gets the counts of all its A-B pairs instead. The neuron maps
of the same merge point are drawn by ``heterogui.ui.fig_neurons``.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from heterogui.ui.fig_neurons import corner_title, thousands, top_margin, wrapped_title
from heterogui.ui.neuron_view import KIND_COLOURS, matched_correlations
from heterogui.zip.matchers import Match

EDGES = np.linspace(-1, 1, 41)  # the histogram's 40 bins of correlation


def _s(value: int) -> str:
    """Return the plural ending for ``value`` things: "" for one, else "s"."""
    return "" if value == 1 else "s"


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
    if match is not None:
        pairs = matched_correlations(corr, match)
        traces = _merged_bars(pairs, centres)
        sub = _merged_text(pairs)
        left, what = "merged pairs", "merged"
        traces.append(_share_line(background, everything.size, centres))
    else:
        traces = [_all_pairs_bar(background, everything.size, centres)]
        sub = f"not merged here: all {thousands(everything.size)} A–B pairs"
        left, what = "A–B pairs", "A–B"
    layout = _histogram_layout(space, what, sub, left, legend_rows=len(traces))
    tallest = np.sum([t["y"] for t in traces if t["type"] == "bar"], axis=0).max()
    if tallest < 8:  # a small layer: whole pairs only, not 0.2 of one
        layout["yaxis"]["dtick"] = 1
    if match is None:
        del layout["yaxis2"]
    return go.Figure({"data": traces, "layout": layout}, _validate=False)


def _merged_bars(pairs: dict[str, np.ndarray], centres: list[float]) -> list[dict]:
    """Return the stacked bars of the merged pairs: across A and B, then within one model."""
    traces = []
    for key, label in (("cross", "across A and B"), ("within", "within one model")):
        colour = KIND_COLOURS[key]
        traces.append(
            {
                "type": "bar",
                "x": centres,
                "y": _counts(pairs[key]).tolist(),
                "width": 0.05,
                "name": f"{label} ({thousands(pairs[key].size)} pair{_s(pairs[key].size)})",
                "marker": {"color": colour},
                "hovertemplate": f"corr %{{x:.3f}}: %{{y}} pairs {label}<extra></extra>",
            }
        )
    return traces


def _merged_text(pairs: dict[str, np.ndarray]) -> str:
    """Return the subtitle of a merged layer: its merged pairs, across and within the models."""
    n_cross, n_within = pairs["cross"].size, pairs["within"].size
    return (
        f"{thousands(n_cross + n_within)} merged pair{_s(n_cross + n_within)}: "
        f"{thousands(n_cross)} across A and B, "
        f"{thousands(n_within)} within one model"
    )


def _all_pairs_bar(background: np.ndarray, total: int, centres: list[float]) -> dict:
    """Return the bars of all ``total`` A-B pairs' counts (a layer that is not merged)."""
    return {
        "type": "bar",
        "x": centres,
        "y": background.tolist(),
        "width": 0.05,
        "name": f"all A–B pairs: {thousands(total)}",
        "marker": {"color": "#9e9e9e"},
        "hovertemplate": "corr %{x:.3f}: %{y} A–B pairs<extra></extra>",
    }


def _share_line(background: np.ndarray, total: int, centres: list[float]) -> dict:
    """Return the dotted line of all A-B pairs' shares per bin, on the right axis."""
    share = background / max(total, 1)
    return {
        "type": "scatter",
        "x": centres,
        "y": share.round(5).tolist(),
        "yaxis": "y2",
        "mode": "lines",
        "line": {"color": "#7f7f7f", "width": 1.5, "dash": "dot", "shape": "hvh"},
        "name": "all A–B pairs (share, right axis)",
        "hovertemplate": "corr %{x:.3f}: %{y:.2%} of all A–B pairs<extra></extra>",
    }


def _histogram_layout(space: str, what: str, sub: str, left: str, legend_rows: int) -> dict:
    """Return the layout: stacked bars, counts (``left``) on the left axis, shares on the right.

    The legend stands in a column of ``legend_rows`` rows above the plot (a narrow figure
    wrapped a row of them over the title).
    """
    title, lines = wrapped_title(f"{space}: correlation of {what} pairs", sub)
    top = top_margin(lines, legend_rows)
    return {
        "barmode": "stack",
        "title": corner_title(title),
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
        "height": 250 + top,
        "margin": {"l": 55, "r": 60, "t": top, "b": 45},
        "legend": {
            "orientation": "v",
            "traceorder": "normal",
            "x": 0,
            "xanchor": "left",
            "y": 1.02,
            "yanchor": "bottom",
            "font": {"size": 11},
        },
    }
