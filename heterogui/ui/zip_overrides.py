"""The Zip tab's per-merge-point overrides of rho or the width (docs/method.md sec. 7; the
spaces of one attention layer share one override, sec. 8): their controls with the widths table
and plot, the merge points that take one, and the handlers that set and clear them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import gradio as gr

from heterogui.config import SPLIT_HEADS
from heterogui.errors import ConfigError, excerpt
from heterogui.matching import match_spaces
from heterogui.pipeline import resolved_settings
from heterogui.sizes import estimate, estimated_by_matching
from heterogui.ui import work
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session
from heterogui.zip.plan import head_group_firsts, override_spaces

WIDTH_HEADERS = ["merge point", "width A", "width B", "merged width", "override"]
# The override choice that sets one rho at every attention layer (rho 0 keeps all the heads of
# both models: docs/quality.md measures what merging heads costs a transformer).
EVERY_ATTENTION_LAYER = "every attention layer"


def build_overrides(ui: dict[str, Any]) -> None:
    """Create the per-merge-point override controls and the widths table and plot."""
    with gr.Row():
        ui["override_space"] = gr.Dropdown(
            [], label="Merge point", info="Override the global rho at this point"
        )
        # text boxes: a gr.Number shows and sends 0 when empty, and 0 is a rho (and no width)
        ui["override_rho"] = gr.Textbox(
            label="rho here", placeholder="0 to 1", info="Blank: use the global rho"
        )
        ui["override_width"] = gr.Textbox(
            label="width here",
            placeholder="neurons",
            info="Blank: from rho; a number sets the width (leave rho blank then)",
        )
    with gr.Row():
        ui["set_override"] = gr.Button("Set override")
        ui["clear_overrides"] = gr.Button("Clear overrides")
    # one above the other: side by side, a laptop's screen hid the table's last columns
    ui["widths_table"] = gr.Dataframe(
        headers=WIDTH_HEADERS,
        interactive=False,
        elem_id="widths-table",
        label="Widths per merge point (scroll sideways on a narrow screen)",
    )
    ui["widths_plot"] = gr.Plot(label="Widths", elem_id="widths-plot")


def taking_spaces(prep: Any) -> list[str]:
    """Return the merge points of a prepared pair that take an override (both models use them:
    ``zip.plan.override_spaces``)."""
    return override_spaces(prep.padded_a.graph(), [prep.padded_b.graph()])


def override_choices(prep: Any) -> list[tuple[str, str]]:
    """Return (label, space) of the merge points that take an override.

    The spaces of one attention layer share one head pairing: only the group's first space
    takes the override, and it applies to the whole layer.
    """
    graph, takers = prep.padded_a.graph(), taking_spaces(prep)
    layers = [n for n in head_group_firsts(graph) if n in takers]
    out = []
    if layers:  # the layers both models use (one, on a shallow pair: the same as its own entry)
        label = f"{EVERY_ATTENTION_LAYER} ({len(layers)}: {', '.join(layers)}; rho only)"
        out.append((label, EVERY_ATTENTION_LAYER))
    for name in takers:
        group = graph.spaces[name].group
        if graph.spaces[name].head_dim is None:
            out.append((name, name))
        else:
            members = sorted(n for n, s in graph.spaces.items() if s.group == group)
            out.append((f"{name} (attention layer: {', '.join(members)})", name))
    return out


def override_text(knobs: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (knobs or {}).items())


def on_set_override(
    session: Session,
    res: Resources,
    space: str | None,
    rho: float | str | None,
    width: float | str | None,
    progress=None,
) -> str:
    """Set a per-merge-point override of rho or width (api: /set_override).

    rho, width: numbers, or the boxes' text (blank: not given). space
    ``EVERY_ATTENTION_LAYER``: the same rho at every attention layer (widths differ from
    layer to layer, so a width is refused there); no rho removes their overrides.
    """
    rho, width = typed_number(rho, "rho"), typed_number(width, "width")
    prep = work.require_prepared(session)
    graph, takers = prep.padded_a.graph(), taking_spaces(prep)
    layers = [n for n in head_group_firsts(graph) if n in takers]
    every = space == EVERY_ATTENTION_LAYER and bool(layers)
    if not every and (not space or space not in graph.spaces):
        raise ConfigError("choose a merge point for the override")
    if every and width is not None:
        raise ConfigError(
            f"{EVERY_ATTENTION_LAYER} takes a rho, not a width: leave the width blank, or set "
            "a width on one attention layer"
        )
    if width is not None and rho is not None:  # the width would win without a word
        raise ConfigError(
            "give a rho or a width, not both: a width is the merged width itself; rho sets it "
            "from the models' widths (clear one box)"
        )
    knobs: dict[str, Any] = {}
    if width is not None:
        if width < 1 or width != int(width):
            raise ConfigError(f"width {width:g} must be a positive integer (a number of features)")
        knobs["width"] = int(width)
    elif rho is not None:
        if not 0 <= rho <= 1:
            raise ConfigError(f"rho {rho} must lie in [0, 1]")
        knobs["rho"] = float(rho)
    overrides = {k: dict(v) for k, v in session.settings.overrides.items()}
    targets = layers if every else [space]
    for target in targets:
        if knobs:
            overrides[target] = dict(knobs)
        else:
            overrides.pop(target, None)
    trial = dataclasses.replace(session.settings, overrides=overrides)
    planned = estimate(prep, trial)  # raises a clear message before the settings change
    # a width the greedy zip cannot reach under beta is refused here, not at the next merge:
    # zipped now, unless the estimate just zipped every merge point (a small pair)
    widths = planned["widths"]
    single = space in widths and not graph.spaces[space].head_dim
    if "width" in knobs and single and not estimated_by_matching(prep, widths):
        match_spaces(prep, trial, planned["stop"], only={space})
    session.settings = trial
    plural = "s" if len(layers) > 1 else ""
    where = f"{len(layers)} attention layer{plural} ({', '.join(layers)})" if every else space
    note = ""
    split = resolved_settings(prep.net_a, trial).heads == SPLIT_HEADS
    if "rho" in knobs and split and any(t in layers for t in targets):
        note = (
            " Heads split keeps every head of these layers (at half its size), so rho does not "
            "change them; choose Attention heads: pair to zip their heads."
        )
    return f"Override at {where}: {override_text(knobs) or 'removed'}.{note}"


def typed_number(value: float | str | None, what: str) -> float | None:
    """Return the number typed in a box (None when blank).

    Raises:
        ConfigError: text that is not a number.
    """
    if value is None or isinstance(value, int | float):
        return value
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ConfigError(
            f"{what} {excerpt(repr(text), 40)} is not a number; type one or leave it blank"
        )
    return number


def on_clear_overrides(session: Session, res: Resources, progress=None) -> str:
    """Remove every per-merge-point override (api: /clear_overrides)."""
    session.settings = dataclasses.replace(session.settings, overrides={})
    return "Overrides cleared: every merge point uses the global rho."
