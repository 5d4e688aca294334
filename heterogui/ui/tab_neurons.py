"""Tab 3, Neurons: at one merge point, the correlation of A's and B's neurons reordered by the
matching (cross-model and within-model merges marked) and the correlations of merged pairs.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from heterogui.errors import ConfigError, HeteroguiError
from heterogui.models.graph import INPUT, LOGITS
from heterogui.pipeline import Prepared, ZipSettings, match_spaces
from heterogui.ui.fig_neurons import MAX_FEATURES, correlation_histogram, neuron_figure
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session
from heterogui.zip.collect import pooled_moments
from heterogui.zip.matchers import Match

VIEWS = ("space", "neuron_map", "neuron_hist", "neuron_info")


def build(ui: dict[str, Any], res: Resources) -> None:
    """Create the tab's components and register them in ``ui``."""
    ui["space"] = gr.Dropdown(
        [],
        label="Merge point",
        info="A feature space both models write (a layer's output, or a residual stream): "
        "its neurons are matched and merged",
    )
    ui["neuron_info"] = gr.Markdown()
    with gr.Row():
        ui["neuron_map"] = gr.Plot(
            elem_id="neuron-map", label="Neuron correlation, reordered by the matching"
        )
        ui["neuron_hist"] = gr.Plot(label="Correlation of merged pairs")


def merge_points(prepared: Prepared) -> list[tuple[str, str]]:
    """Return (label, space) of every merge point of the padded pair, with both widths.

    Inner layers of identity blocks are left out: they keep the other model's neurons as they
    are, and their statistics are not collected.
    """
    ga, gb = prepared.padded_a.graph(), prepared.padded_b.graph()
    out = []
    for name, space in ga.spaces.items():
        if name in (INPUT, LOGITS):
            continue
        if name in ga.dead or name in gb.dead:  # an identity layer's unused inside: no matching
            continue
        out.append((f"{name}: A {space.width} + B {gb.spaces[name].width}", name))
    return out


def space_match(
    prepared: Prepared, settings: ZipSettings, space: str, stop: int, result: Any | None = None
) -> tuple[np.ndarray, Match | None]:
    """Return the correlation (O, O) of ``space`` and its matching (None: not merged).

    The matching is the merged result's when there is one, else what ``zip_prepared`` would
    do with ``settings`` (the core's own ``match_spaces``: the same rules, heads included).
    A space after the stop point is not merged.

    Raises:
        HeteroguiError: settings the matcher cannot use (without a result).
    """
    ga = prepared.padded_a.graph()
    corr = pooled_moments(prepared.stats, ga, space, _capture_stop(prepared, space, stop))
    matches = result.matches if result is not None else match_spaces(prepared, settings, stop)
    return corr.corr().cpu().numpy(), matches.get(space)


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
            "neuron_hist": None,
            "neuron_info": "Load and analyse a pair first.",
        }
    points = merge_points(prep)
    names = [n for _, n in points]
    space = session.neuron_space if session.neuron_space in names else names[0]
    session.neuron_space = space
    result = session.result
    settings = result.settings if result is not None else session.settings
    n_blocks = prep.padded_a.graph().num_blocks - 1
    stop = n_blocks if settings.stop is None else settings.stop
    try:
        corr, match = space_match(prep, settings, space, stop, result)
    except HeteroguiError as exc:  # settings a matcher cannot use: show the data anyway
        corr, match = space_match(prep, ZipSettings(), space, n_blocks)
        source = f"default settings (the current ones fail: {exc})"
    else:
        source = "the last merge" if result is not None else "the current Zip settings"
    n_a = prep.padded_a.graph().spaces[space].width
    o = corr.shape[0]
    if match is None:
        source += "; this merge point lies after the stop point and is not merged"
    info = f"Matching from **{source}**. {o} features ({n_a} of A, {o - n_a} of B)" + (
        f"; shown averaged over blocks (more than {MAX_FEATURES})." if o > MAX_FEATURES else "."
    )
    return {
        "space": gr.update(choices=points, value=space),
        "neuron_map": neuron_figure(corr, n_a, o - n_a, match, space),
        "neuron_hist": correlation_histogram(corr, match, n_a, space),
        "neuron_info": info,
    }


def on_space(session: Session, res: Resources, space: str | None, progress=None) -> str:
    """Show another merge point (api: /neurons)."""
    prep = session.prepared
    if prep is None:
        raise ConfigError("load and analyse a pair first (Models tab)")
    names = [n for _, n in merge_points(prep)]
    if space not in names:
        raise ConfigError(f"unknown merge point {space!r}; choose one of {names}")
    session.neuron_space = space
    return f"Showing merge point {space}."


def wire(ui: dict[str, Any], on) -> None:
    """Register the tab's events."""
    on(ui["space"].input, on_space, ["space"], ("neurons",), "neurons")
