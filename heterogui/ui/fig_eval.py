"""Figures of the Zip and Evaluate tabs: sizes, widths, samples, the rho sweep, the history.

Pure functions: plain numbers and tensors in, plotly figures out.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from heterogui.errors import excerpt
from heterogui.ui.figstyle import plain

MODEL_COLOURS = {"A": "#1f77b4", "B": "#ff7f0e", "ensemble": "#9467bd", "merged": "#2ca02c"}

# the characters of a pair's name a plot title shows (the history plot is half the page wide)
TITLE_NAME = 48
# the sizes figure's note where no model's FLOPs are counted (transformers)
FLOPS_UNCOUNTED = "FLOPs per input: not counted for these models"
# the characters of a sentence the similarity maps' row labels show
SENTENCE_LABEL = 32


def sizes_figure(sizes: dict[str, dict[str, Any]]) -> go.Figure:
    """Return bars of parameters and FLOPs for A, B, ensemble and merged.

    sizes: model name -> {"parameters": int, "flops": int | None}.

    Built as plotly's ``make_subplots(rows=1, cols=2, subplot_titles=...)`` lays it out (one
    column where no FLOPs are counted), from plain dicts: a slider release redraws it, and the
    subplot grid cost most of its time.
    """
    names = list(sizes)
    counted = any(sizes[n].get("flops") is not None for n in names)
    colours = [MODEL_COLOURS.get(n, "#888") for n in names]
    traces, layout = [], {}
    # uncounted FLOPs leave the parameters the whole width, and say so under their title: the
    # empty panel's title "FLOPs per input: not counted for these models" ran into the
    # parameters' on a phone
    panels = (
        ((1, "parameters", "parameters", [0.0, 0.45]), (2, "flops", "FLOPs per input", [0.55, 1.0]))
        if counted
        else (
            (
                1,
                "parameters",
                f"parameters<br><span style='font-size:12px'>{FLOPS_UNCOUNTED}</span>",
                [0.0, 1.0],
            ),
        )
    )
    for col, key, title, domain in panels:
        x, y = ("x", "y") if col == 1 else (f"x{col}", f"y{col}")
        layout[f"xaxis{col if col > 1 else ''}"] = {"anchor": y, "domain": domain}
        layout[f"yaxis{col if col > 1 else ''}"] = {
            "anchor": x,
            "domain": [0.0, 1.0],
            "tickformat": "~s",
        }
        layout.setdefault("annotations", []).append(
            {
                "font": {"size": 16},
                "showarrow": False,
                "text": title,
                "x": sum(domain) / 2,
                "xanchor": "center",
                "xref": "paper",
                "y": 1.0,
                "yanchor": "bottom",
                "yref": "paper",
            }
        )
        values = [sizes[n].get(key) or 0 for n in names]
        traces.append(
            {
                "type": "bar",
                "x": names,
                "y": values,
                "marker": {"color": colours},
                "text": [f"{v:,}" for v in values],
                "textposition": "auto",
                "showlegend": False,
                "xaxis": x,
                "yaxis": y,
            }
        )
    layout.update(height=320, margin={"l": 50, "r": 20, "t": 64, "b": 40})
    return go.Figure({"data": traces, "layout": layout}, _validate=False)


def widths_figure(widths: dict[str, tuple[int, int, int]]) -> go.Figure:
    """Return grouped bars of A's, B's and the merged width at every merge point."""
    spaces = list(widths)
    fig = go.Figure()
    for k, (name, colour) in enumerate(
        (("A", MODEL_COLOURS["A"]), ("B", MODEL_COLOURS["B"]), ("merged", MODEL_COLOURS["merged"]))
    ):
        fig.add_trace(
            go.Bar(x=spaces, y=[widths[s][k] for s in spaces], name=name, marker_color=colour)
        )
    fig.update_layout(
        barmode="group",
        title="width per merge point",
        height=320,
        # the legend in a row of its own under the title (at y 1.15 it lay on the title in a
        # slide's 1,200-pixel export)
        margin={"l": 50, "r": 20, "t": 62, "b": 60},
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"},
    )
    return fig


def _sample_trace(x: torch.Tensor, axis: int) -> dict:
    """Return a trace drawing one input: an image (C, H, W) or a 1-D signal (C, L)."""
    where = {"xaxis": f"x{axis}", "yaxis": f"y{axis}", "hoverinfo": "skip", "showlegend": False}
    if x.dim() == 3:
        return {
            "type": "heatmap",
            "z": x[0].tolist(),
            "colorscale": "Greys",
            "showscale": False,
            **where,
        }
    return {
        "type": "scatter",
        "y": x.reshape(-1).tolist(),
        "mode": "lines",
        "line": {"color": "#333"},
        **where,
    }


def samples_figure(
    inputs: torch.Tensor,
    labels: list[int],
    preds: dict[str, list[tuple[int, float]]],
    indices: list[int],
) -> go.Figure:
    """Return one panel per sample (image or signal) titled with every model's prediction.

    inputs: (k, C, H, W) images or (k, C, L) signals; preds: model -> (class, confidence) per
    sample; a prediction is marked ✓ when right. Built from plain dicts (redrawn per merge).
    """
    k = max(len(indices), 1)
    layout: dict = {
        "height": 340,
        "margin": {"l": 10, "r": 10, "t": 120, "b": 10},
        "annotations": [],
        "meta": {"panels": len(indices)},  # a phone lays them out in rows (ui.small_screens)
    }
    bare = {"showticklabels": False, "showgrid": False, "zeroline": False}
    traces = []
    for s, index in enumerate(indices):
        lines = [f"<b>#{index}</b> true {labels[s]}"]
        for name, rows in preds.items():
            cls, conf = rows[s]
            lines.append(f"{name}: {cls} {'✓' if cls == labels[s] else '✗'} ({conf:.0%})")
        lo, hi = s / k + 0.01, (s + 1) / k - 0.01
        image = inputs[s].dim() == 3
        layout[f"xaxis{s + 1}"] = {
            "domain": [lo, hi],
            "anchor": f"y{s + 1}",
            **bare,
        }
        layout[f"yaxis{s + 1}"] = {
            "domain": [0, 1],
            "anchor": f"x{s + 1}",
            **bare,
            **({"autorange": "reversed", "scaleanchor": f"x{s + 1}"} if image else {}),
        }
        layout["annotations"].append(
            {
                "text": "<br>".join(lines),
                "x": (lo + hi) / 2,
                "y": 1.0,
                "xref": "paper",
                "yref": "paper",
                # "auto" anchors a title left of x in the left third of the figure and right
                # of it in the right third: titles left their images and ran into each other
                "xanchor": "center",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 10},
            }
        )
        traces.append(_sample_trace(inputs[s].float().cpu(), s + 1))
    return go.Figure({"data": traces, "layout": layout}, _validate=False)


def sweep_figure(points: list[dict[str, Any]], current_rho: float, metric: str) -> go.Figure:
    """Return the task's score (left axis) and parameters (right axis) against rho.

    points: the sweep's points ("rho", "parameters", "score" and, for classifiers, "Avg").
    metric: the score's name ("Joint %", "Spearman").
    """
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    rhos = [p["rho"] for p in points]
    for key, name, dash in (("score", metric, "solid"), ("Avg", "Avg %", "dash")):
        if any(p.get(key) is not None for p in points):
            fig.add_trace(
                go.Scatter(
                    x=rhos,
                    y=[p.get(key) for p in points],
                    name=name,
                    mode="lines+markers",
                    line={"dash": dash},
                ),
                secondary_y=False,
            )
    fig.add_trace(
        go.Scatter(
            x=rhos,
            y=[p["parameters"] for p in points],
            name="parameters",
            mode="lines+markers",
            line={"color": "#7f7f7f"},
        ),
        secondary_y=True,
    )
    fig.add_vline(
        x=current_rho,
        line={"color": "#d62728", "dash": "dot"},
        annotation_text=f"current rho {current_rho:.2f}",
        # inside the plot, on the side away from the right axis's tick labels
        annotation_position="top left" if current_rho > 0.5 else "top right",
    )
    fig.update_layout(
        title=f"{metric} and size against the zip ratio rho",
        height=360,
        margin={"l": 50, "r": 50, "t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.2},
    )
    fig.update_xaxes(title="rho (0 = every neuron kept, 1 = full zip)", range=[-0.05, 1.05])
    fig.update_yaxes(title=metric, secondary_y=False)
    fig.update_yaxes(title="parameters", secondary_y=True)
    return fig


def history_figure(history: list[dict[str, Any]], metric: str, pair: str | None) -> go.Figure:
    """Return the merges of ``pair`` in this session as points: parameters against the score.

    Merges of other pairs stay in the history table; one axis would mix their scales.
    Points are labelled with their merge number while there are few enough to read.
    """
    rows = [h for h in history if pair is None or h.get("pair") == pair]
    fig = go.Figure()
    if rows:
        fig.add_trace(
            go.Scatter(
                x=[h["parameters"] for h in rows],
                y=[h.get("score") for h in rows],
                mode="markers+text" if len(rows) <= 12 else "markers",
                text=[f"#{h['merge']}" for h in rows],
                textposition="top center",
                cliponaxis=False,
                marker={"size": 10, "color": MODEL_COLOURS["merged"]},
                customdata=[[h["merge"], h["rho"], h["alpha"], h["beta"], h["stop"]] for h in rows],
                hovertemplate=f"merge #%{{customdata[0]}}<br>params %{{x:,}}<br>{metric} %{{y}}"
                "<br>rho %{customdata[1]} alpha %{customdata[2]} beta %{customdata[3]} "
                "stop %{customdata[4]}<extra></extra>",
            )
        )
    xaxis: dict[str, Any] = {"title": "parameters (effective)", "tickformat": "~s", "nticks": 6}
    if rows:  # a narrow spread gets room around it, so the ticks are round numbers
        lo, hi = min(h["parameters"] for h in rows), max(h["parameters"] for h in rows)
        if hi - lo < 0.02 * hi:
            xaxis["range"] = [lo - 0.05 * hi, hi + 0.05 * hi]
    yaxis: dict[str, Any] = {"title": metric}
    scores = [h["score"] for h in rows if h.get("score") is not None]
    if scores:  # a lone point or a narrow spread: a range around it, not plotly's wide default
        lo, hi = min(scores), max(scores)
        pad = max(0.1 * (hi - lo), 0.02 * max(abs(lo), abs(hi)), 1e-6)
        yaxis["range"] = [lo - pad, hi + pad]
    if not rows:  # bare axes read as a broken plot
        fig.add_annotation(
            text=f"No merge{' of this pair' if history else ''} yet: press Merge on the Zip tab",
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
        )
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    others = len(history) - len(rows)
    name = excerpt(pair, TITLE_NAME) if pair else pair
    title = f"merges of {name}" if pair else "this session's merges"
    if others:  # on a line of its own: a long pair name would push it out of the frame
        title += f"<br><sup>{others} of other pairs: in the table</sup>"
    fig.update_layout(
        title=title,
        xaxis=xaxis,
        yaxis=yaxis,
        height=320,
        margin={"l": 60, "r": 30, "t": 50, "b": 50},
    )
    return fig


def similarity_figure(matrices: dict[str, torch.Tensor], sentences: list[str]) -> go.Figure:
    """Return one cosine-similarity heatmap per model, side by side."""
    names = list(matrices)
    # "merged (head A: A's space)" on two lines: on one, neighbouring titles ran together
    titles = [name.replace(" (", "<br>(") for name in names]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.04)
    labels = [f"{i}: {plain(excerpt(s, SENTENCE_LABEL))}" for i, s in enumerate(sentences)]
    for k, name in enumerate(names):
        fig.add_trace(
            go.Heatmap(
                z=matrices[name].numpy().round(3),
                x=list(range(len(sentences))),
                y=labels,
                zmin=-1,
                zmax=1,
                colorscale="RdBu",
                reversescale=True,
                showscale=k == 0,
                # under the maps, not beside them: at the side it took a fifth of a phone's
                # width from maps already narrowed by the sentences' labels
                colorbar={
                    "orientation": "h",
                    "x": 0.5,
                    "xanchor": "center",
                    "y": 0,
                    "yref": "container",
                    "yanchor": "bottom",
                    "thickness": 10,
                    "len": 1,  # as wide as the maps' area
                },
            ),
            row=1,
            col=k + 1,
        )
        fig.update_yaxes(autorange="reversed", showticklabels=k == 0, row=1, col=k + 1)
    fig.update_layout(
        height=380,
        margin={"l": 10, "r": 10, "t": 60, "b": 60},
        # a phone lays them out in rows (ui.small_screens), 140 px a map at least: its title
        # "(head A: A's space)" needs 130
        meta={"panels": len(names), "panel_px": 140},
    )
    return fig
