"""Tab 3, Neurons: at one merge point, the correlation of A's and B's neurons reordered by the
matching (cross-model and within-model merges marked) and the correlations of merged pairs
(docs/method.md sec. 7).

A small layer is shown whole at full resolution. A larger one (a transformer's FFN: 1,536 + 1,536
features) gets a detail, its strongest merged groups at full resolution, and beside it an
overview of all features averaged over blocks (``heterogui.ui.fig_neurons``).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from heterogui.config import SPLIT_HEADS
from heterogui.errors import ConfigError, HeteroguiError
from heterogui.models.graph import INPUT, LOGITS
from heterogui.pipeline import Prepared, ZipSettings, match_spaces, resolved_settings
from heterogui.pipeline import correlation as pipeline_correlation
from heterogui.ui import labels, work
from heterogui.ui.fig_neuron_hist import correlation_histogram
from heterogui.ui.fig_neurons import (
    CROSS,
    WITHIN,
    NeuronView,
    detail_figure,
    neuron_view,
    overview_figure,
)
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session
from heterogui.zip.matchers import Match
from heterogui.zip.plan import head_group

VIEWS = ("space", "neuron_map", "overview_box", "neuron_overview", "neuron_hist", "neuron_info")


def build(ui: dict[str, Any], res: Resources) -> None:
    """Create the tab's components and register them in ``ui``."""
    ui["space"] = gr.Dropdown(
        [],
        label="Merge point",
        info="A feature space both models write (a layer's output, or a residual stream): "
        "its neurons are matched and merged",
        elem_id="neuron-space",
    )
    ui["neuron_info"] = gr.Markdown()
    with gr.Row():
        with gr.Column(scale=3):
            ui["neuron_map"] = gr.Plot(  # the figures carry their own titles: no label badge
                elem_id="neuron-map",
                label="Neuron correlation, reordered by the matching",
                show_label=False,
            )
        with gr.Column(scale=2):
            ui["overview_box"] = gr.Column(visible=False)  # shown for large layers only
            with ui["overview_box"]:
                ui["neuron_overview"] = gr.Plot(
                    elem_id="neuron-overview",
                    label="All features, averaged over blocks",
                    show_label=False,
                )
            ui["neuron_hist"] = gr.Plot(
                elem_id="neuron-hist", label="Correlation of merged pairs", show_label=False
            )


def merge_points(prepared: Prepared) -> list[tuple[str, str]]:
    """Return (label, space) of every merge point of the padded pair, with both widths.

    Inner layers of identity blocks are left out: they keep the other model's neurons as they
    are, and their statistics are not collected. So are spaces with no statistics of their own
    (a decoder's attention output ``layer{i}.o``: its matching is derived, see ``derived``).
    """
    ga, gb = prepared.padded_a.graph(), prepared.padded_b.graph()
    layers = labels.point_layers(prepared)
    out = []
    for name, space in ga.spaces.items():
        if name in (INPUT, LOGITS) or not space.captures:
            continue
        if name in ga.dead or name in gb.dead:  # an identity layer's unused inside: no matching
            continue
        where = f" ({layers[name]})" if name in layers else ""
        out.append((f"{name}{where}: A {space.width} + B {gb.spaces[name].width}", name))
    return out


def derived(prepared: Prepared) -> list[str]:
    """Return the merge points with no statistics of their own (their matching follows others).

    A decoder's attention output ``layer{i}.o`` (what o_proj reads) is one: its heads pair as
    the layer's query heads do and its features follow the value features.
    """
    ga, gb = prepared.padded_a.graph(), prepared.padded_b.graph()
    return [
        name
        for name, space in ga.spaces.items()
        if name not in (INPUT, LOGITS)
        and not space.captures
        and name not in ga.dead
        and name not in gb.dead
    ]


def derived_text(names: list[str]) -> str:
    """Return why the derived merge points are not offered ("" when there are none)."""
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f" Not listed: {shown}: attention outputs have no statistics of their own; their heads "
        "pair as the layer's query heads (.q) do and their features follow the values (.v)."
    )


def space_match(
    prepared: Prepared, settings: ZipSettings, space: str, stop: int, result: Any | None = None
) -> tuple[np.ndarray, Match | None]:
    """Return the correlation (O, O) of ``space`` and its matching (None: not merged).

    The matching is the merged result's when there is one, else what ``zip_prepared`` would
    do with ``settings`` (the core's own ``match_spaces``: the same rules, heads included),
    for this merge point and the attention spaces that share its head pairing only: the
    others' matchings do not change it. A space after the stop point is not merged.

    Raises:
        HeteroguiError: settings the matcher cannot use (without a result).
    """
    corr = correlation(prepared, space, _capture_stop(prepared, space, stop))
    if result is not None:
        return corr, result.matches.get(space)
    matches = match_spaces(prepared, settings, stop, only=paired_points(prepared, space))
    return corr, matches.get(space)


def paired_points(prepared: Prepared, space: str) -> set[str]:
    """Return ``space`` and the merge points matched with it (its attention layer's spaces)."""
    return set(head_group(prepared.padded_a.graph(), space))


def correlation(prepared: Prepared, space: str, capture_stop: int | None) -> np.ndarray:
    """Return the (O, O) correlation of ``space`` (read-only: the core keeps it for re-merges)."""
    corr = pipeline_correlation(prepared, space, capture_stop).cpu().numpy()
    corr.setflags(write=False)
    return corr


def _capture_stop(prepared: Prepared, space: str, stop: int) -> int | None:
    """Return ``stop``, or the full depth when the space has no capture before ``stop``."""
    caps = prepared.padded_a.graph().spaces[space].captures
    return stop if any(c.block < stop for c in caps) else None


def render(session: Session, res: Resources) -> dict[str, Any]:
    """Return the tab's view values for ``session``."""
    prep = session.prepared
    if prep is None:
        return {
            "space": gr.update(choices=[], value=None),
            "neuron_map": None,
            "overview_box": gr.update(visible=False),
            "neuron_overview": None,
            "neuron_hist": None,
            "neuron_info": "Load and analyse a pair first.",
        }
    points = merge_points(prep)
    names = [n for _, n in points]
    result = session.result
    settings = result.settings if result is not None else session.settings
    space = session.neuron_space
    if space not in names:
        space = _first_point(prep, settings, names)
    session.neuron_space = space
    n_blocks = work.stop_blocks(session)
    stop = n_blocks if settings.stop is None else settings.stop
    try:
        corr, match = space_match(prep, settings, space, stop, result)
    except HeteroguiError as exc:  # settings a matcher cannot use: show the data anyway
        corr, match = space_match(prep, ZipSettings(), space, n_blocks)
        source = f"default settings (the current ones fail: {exc})"
    else:
        source = "the last merge" if result is not None else "the current Zip settings"
    n_a = prep.padded_a.graph().spaces[space].width
    if match is None:
        source += "; this merge point lies after the stop point and is not merged"
    views = space_views(corr, n_a, match, space, source, session.pair_name or "")
    views["neuron_info"] += split_text(prep, settings, space, match)
    views["neuron_info"] += derived_text(derived(prep))
    return {"space": gr.update(choices=points, value=space)} | views


def _first_point(prep: Prepared, settings: ZipSettings, names: list[str]) -> str:
    """Return the merge point the tab opens on: the first, or the first that is not attention
    when heads are split (every head is kept there: a view where nothing merges)."""
    if resolved_settings(prep.net_a, settings).heads == SPLIT_HEADS:
        spaces = prep.padded_a.graph().spaces
        return next((n for n in names if not spaces[n].head_dim), names[0])
    return names[0]


def split_text(prep: Prepared, settings: ZipSettings, space: str, match: Match | None) -> str:
    """Return what a heads split does to an attention merge point after its matching, or ""."""
    head_dim = prep.padded_a.graph().spaces[space].head_dim
    split = resolved_settings(prep.net_a, settings).heads == SPLIT_HEADS
    if match is None or not head_dim or not split:
        return ""
    return (
        f" **Heads split:** every head of A and B is kept here side by side, then cut from "
        f"{head_dim} to {head_dim // 2} features after fusion (docs/method.md sec. 8): "
        f"{match.width // head_dim * (head_dim // 2):,} features in the merge."
    )


def space_views(
    corr: np.ndarray, n_a: int, match: Match | None, space: str, source: str, pair: str = ""
) -> dict[str, Any]:
    """Return the figures and the text of one merge point (the views but the dropdown).

    pair: the pair's name (a kept zoom belongs to the pair: ``fig_neurons.detail_figure``).

    A small layer is one full-resolution map (the overview panel hidden); a large one a map of
    its strongest merged groups and an overview of all its features (docs/method.md sec. 7).
    """
    view = neuron_view(corr, n_a, corr.shape[0] - n_a, match)
    return {
        "neuron_map": detail_figure(view, space, pair),
        "overview_box": gr.update(visible=not view.full),
        "neuron_overview": None if view.full else overview_figure(view, space),
        "neuron_hist": correlation_histogram(corr, match, n_a, space),
        "neuron_info": f"Matching from **{source}**. {shown_text(view)}",
    }


def shown_text(view: NeuronView) -> str:
    """Return what the neuron map shows, in words (the tab's Markdown under the dropdown)."""
    o, n_a = view.n_features, view.n_a
    sizes = f"{o:,} features ({n_a:,} of A, {o - n_a:,} of B)"
    hover = "Hover a cell for its two features (A12: feature 12 of A)."
    if view.full:
        return (
            f"{sizes}, all shown at full resolution. The strip above the map marks each "
            f"feature's kind; a box outlines each merged group. {hover}"
        )
    if not len(view.detail_spans):
        return (
            f"{sizes}; nothing is merged here. **Map:** the first {view.detail.size:,} "
            "features of A and of B at full resolution. **Overview:** all features, "
            f"averaged over blocks. {hover}"
        )
    kinds = ", ".join(
        f"{view.shown_count(k)} {name}"
        for k, name in ((CROSS, "cross-model"), (WITHIN, "within-model"))
        if view.shown_count(k)
    )
    return (
        f"{sizes}: too many to show one by one. **Map:** the {len(view.detail_spans)} "
        f"strongest merged groups ({kinds}; ranked by the mean correlation of their "
        f"members) at full resolution: {view.detail.size:,} features, each group boxed. "
        "**Overview:** all features in the same order (cross-model groups, within-model "
        "groups, features kept alone, dropped ones), averaged over blocks; its boxes mark "
        f"the map's features. {hover}"
    )


def on_space(session: Session, res: Resources, space: str | None, progress=None) -> str:
    """Show another merge point (api: /neurons)."""
    prep = session.prepared
    if prep is None:
        raise ConfigError("load and analyse a pair first (Models tab)")
    names = [n for _, n in merge_points(prep)]
    if space in derived(prep):
        raise ConfigError(
            f"{space} has no statistics of its own (its matching follows the query heads and "
            f"the values): choose {space.rsplit('.', 1)[0]}.q or .v instead"
        )
    if space not in names:
        raise ConfigError(f"unknown merge point {space!r}; choose one of {names}")
    session.neuron_space = space
    return f"Showing merge point {space}."


def wire(ui: dict[str, Any], on) -> None:
    """Register the tab's events."""
    on(ui["space"].input, on_space, ["space"], ("neurons",), "neurons")
