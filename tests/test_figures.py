"""The workbench figures: what they show on the numbers given (no browser)."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import plotly.io as pio
import pytest
from conftest import drawn
from plotly.subplots import make_subplots

from heterogui.ui.fig_eval import FLOPS_UNCOUNTED, history_figure, sizes_figure, sweep_figure
from heterogui.ui.figstyle import GRID, TEMPLATE, style


def _row(merge: int, pair: str, params: int, score: float) -> dict:
    return {
        "merge": merge,
        "pair": pair,
        "parameters": params,
        "score": score,
        "rho": 1.0,
        "alpha": 0.5,
        "beta": 1.0,
        "stop": None,
    }


def test_history_plots_only_the_current_pair_and_names_the_rest():
    history = [
        _row(1, "digits", 447_465, 91.2),
        _row(2, "minilm", 22_000_000, 0.81),
        _row(3, "digits", 447_466, 93.0),
    ]
    fig = history_figure(history, "Joint %", "digits")
    (trace,) = fig.data
    assert list(trace.x) == [447_465, 447_466] and list(trace.y) == [91.2, 93.0]
    assert list(trace.text) == ["#1", "#3"]
    assert "1 of other pairs" in fig.layout.title.text
    assert fig.layout.xaxis.tickformat == "~s"  # 447k, not 447.4655k
    lo, hi = fig.layout.xaxis.range  # a narrow spread gets room: the ticks are round numbers
    assert lo < 447_465 - 20_000 and hi > 447_466 + 20_000
    lone = history_figure([_row(2, "minilm", 22_000_000, 0.84)], "Spearman", "minilm")
    lo, hi = lone.layout.yaxis.range  # one point: around it, not an axis from 0 to 1.5
    assert 0.8 < lo < 0.84 < hi < 0.88
    many = [_row(k, "digits", 1000 + k, 50.0) for k in range(20)]
    assert history_figure(many, "Joint %", "digits").data[0].mode == "markers"  # no label pile-up
    # a long pair name is shortened, and the note on the other pairs has a line of its own
    long = "all-MiniLM-L6-v2 + paraphrase-MiniLM-L3-v2 + some-uploaded-model-with-a-long-name"
    title = history_figure([*history, _row(4, long, 10, 0.8)], "Joint %", long).layout.title.text
    assert title.startswith("merges of all-MiniLM-L6-v2") and "…<br>" in title
    assert title.endswith("<sup>3 of other pairs: in the table</sup>")
    # no merge of the pair: a sentence, not bare axes
    empty = history_figure([], "Joint %", "digits")
    assert empty.layout.annotations[0].text == "No merge yet: press Merge on the Zip tab"
    assert empty.layout.xaxis.visible is False and not empty.data
    note = history_figure(history, "Joint %", "vit").layout.annotations[0].text
    assert note.startswith("No merge of this pair yet")


def test_the_sweep_s_current_rho_label_stays_clear_of_the_size_axis():
    points = [{"rho": r, "parameters": 1000 - 500 * r, "score": 90 - r} for r in (0.0, 0.5, 1.0)]
    for rho, side in ((1.0, "right"), (0.2, "left")):
        (label,) = sweep_figure(points, rho, "Joint %").layout.annotations
        assert label.text == f"current rho {rho:.2f}" and label.xanchor == side


def test_sizes_without_flops_say_so_under_the_parameters_which_take_the_width():
    # the empty FLOPs panel's title ran into the parameters' on a phone
    sizes = {n: {"parameters": p, "flops": None} for n, p in (("A", 10), ("B", 20), ("merged", 25))}
    fig = sizes_figure(sizes)
    assert len(fig.data) == 1 and list(fig.data[0].y) == [10, 20, 25]
    (title,) = fig.layout.annotations
    assert title.text.startswith("parameters<br>") and FLOPS_UNCOUNTED in title.text
    assert fig.layout.xaxis.domain == (0.0, 1.0) and "xaxis2" not in fig.layout.to_plotly_json()
    sizes["A"]["flops"] = 5
    assert len(sizes_figure(sizes).data) == 2


@pytest.mark.parametrize("flops", [2000, None])
def test_sizes_figure_is_laid_out_as_plotly_subplots_lay_it_out(flops):

    sizes = {n: {"parameters": p, "flops": flops} for n, p in (("A", 10), ("B", 2_000_000))}
    fig = sizes_figure(sizes)
    if flops:
        grid = make_subplots(rows=1, cols=2, subplot_titles=("parameters", "FLOPs per input"))
        axes = ("xaxis", "yaxis", "xaxis2", "yaxis2")
    else:
        title = f"parameters<br><span style='font-size:12px'>{FLOPS_UNCOUNTED}</span>"
        grid = make_subplots(rows=1, cols=1, subplot_titles=(title,))
        axes = ("xaxis", "yaxis")
    for name in axes:
        assert fig.layout[name].domain == grid.layout[name].domain
        assert fig.layout[name].anchor == grid.layout[name].anchor
    assert fig.layout.annotations == grid.layout.annotations
    assert [(t.xaxis, t.yaxis) for t in fig.data] == [("x", "y"), ("x2", "y2")][: len(fig.data)]
    assert list(fig.data[0].text) == ["10", "2,000,000"]
    assert all(fig.layout[axis].tickformat == "~s" for axis in axes if axis[0] == "y")


def test_style_gives_every_axis_the_shared_look_and_keeps_the_figures_own_settings():
    fig = make_subplots(rows=1, cols=2)
    fig.add_trace(go.Scatter(x=[0, 1], y=[1, 2]), row=1, col=1)
    fig.add_trace(go.Bar(x=[0, 1], y=[3, 4]), row=1, col=2)
    fig.update_layout(height=321, xaxis2_showgrid=False)
    before = fig.to_plotly_json()
    assert style(fig) is fig
    assert drawn(fig, "paper_bgcolor") == drawn(fig, "plot_bgcolor") == "rgba(0,0,0,0)"
    for axis in ("xaxis", "yaxis", "xaxis2", "yaxis2"):
        for part in ("gridcolor", "zerolinecolor", "linecolor"):
            assert drawn(fig, axis, part) == GRID
    after = fig.to_plotly_json()  # only the template changed: data and own layout as they were
    assert after["data"] == before["data"]
    assert {k: v for k, v in after["layout"].items() if k != "template"} == {
        k: v for k, v in before["layout"].items() if k != "template"
    }
    assert fig.layout.height == 321 and fig.layout.xaxis2.showgrid is False
    # the browser gets the look in the figure's JSON, and plotly's own template is untouched
    shipped = json.loads(fig.to_json())["layout"]["template"]["layout"]
    assert shipped["paper_bgcolor"] == "rgba(0,0,0,0)" and shipped["xaxis"]["gridcolor"] == GRID
    assert pio.templates["plotly"].layout.paper_bgcolor != "rgba(0,0,0,0)"
    fig.layout.template.layout.title.text = "changed"  # each figure holds its own copy
    assert TEMPLATE.layout.title.text is None
    assert go.Figure().layout.template.layout.title.text is None


def test_the_similarity_maps_share_one_colour_bar_under_them():
    # beside the maps it took a fifth of a phone's width from maps the sentences' labels
    # already narrow (80 px each at 390 px; 154 px under them)
    import torch

    from heterogui.ui.fig_eval import similarity_figure

    eye = torch.eye(3)
    fig = similarity_figure(
        {"A": eye, "B": eye, "merged (head A: A's space)": eye}, ["a", "b", "c"]
    )
    shown = [t for t in fig.data if t.showscale]
    assert len(shown) == 1 and shown[0].colorbar.orientation == "h"
    assert shown[0].colorbar.yref == "container" and shown[0].colorbar.yanchor == "bottom"
    assert fig.layout.margin.b >= 50  # the bar's room under the maps' tick labels
    assert fig.layout.meta == {"panels": 3, "panel_px": 140}
    assert fig.layout.annotations[2].text == "merged<br>(head A: A's space)"
