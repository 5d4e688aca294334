"""Tab 4, Zip: the elastic zip's knobs (matcher, fusion, renormalization, alpha, beta, zip
ratio rho with per-merge-point overrides, partial-zip stop point, device), a live readout of
widths, parameters and FLOPs, and the merge itself (staged progress, cancellable, re-merged from
cached statistics).
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from heterogui.config import DEFAULT_FUSION, DEFAULT_HEADS
from heterogui.pipeline import is_merge_of, resolve_device
from heterogui.ui import history, labels, work
from heterogui.ui.fig_arch import architecture_figure
from heterogui.ui.fig_eval import sizes_figure, widths_figure
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session
from heterogui.ui.tab_evaluate import on_evaluate_pending
from heterogui.ui.zip_overrides import (
    build_overrides,
    on_clear_overrides,
    on_set_override,
    override_choices,
    override_text,
)
from heterogui.ui.zip_readout import readout_info, stop_update

VIEWS = (
    "readout",
    "sizes_plot",
    "arch_plot",
    "widths_plot",
    "widths_table",
    "stop",
    "override_space",
)
# The knob components (set from the session after a load, an import or a sweep cell), in the
# order of the events' inputs (``history.KNOBS``); the merge events take the device before the
# knobs that came later.
KNOBS = history.KNOBS
MERGE_INPUTS = (*KNOBS[:5], "device", *KNOBS[5:])
# What a merge redraws. A slider release shows the merge first (RELEASED_SCOPES), then what
# its scores change (SCORED_SCOPES): of the Zip tab only the readout, whose table gives the
# merge's score (its figures hold sizes and widths, which the scores leave as they are); of the
# Evaluate tab its scores and history (its samples, drawn with the merge, stay); the Export tab
# once, with the scores its model card gives.
MERGED_SCOPES = ("zip", "neurons", "evaluate", "compare", "export")
RELEASED_SCOPES = ("zip", "neurons", "evaluate", "compare")
SCORED_SCOPES = ("readout", "scores", "compare", "export")


def build(ui: dict[str, Any], res: Resources) -> None:
    """Create the tab's components and register them in ``ui``."""
    with gr.Row():
        with gr.Column(scale=2):
            _knobs(ui)
            with gr.Row():
                ui["merge"] = gr.Button("Merge", variant="primary", elem_id="merge")
                ui["cancel"] = gr.Button("Cancel", variant="stop")
        with gr.Column(scale=3):
            ui["readout"] = gr.Markdown(elem_id="readout")
            ui["sizes_plot"] = gr.Plot(label="Size of A, B, their ensemble and the merge")
    ui["arch_plot"] = gr.Plot(label="Architecture of the merge", elem_id="arch-plot")
    with gr.Accordion("Widths per merge point and overrides", open=False):
        build_overrides(ui)


def _knobs(ui: dict[str, Any]) -> None:
    """Create the matcher, fusion, heads and renormalize choices, then ``_sliders``."""
    with gr.Row():
        ui["matcher"] = gr.Dropdown(
            ["zip", "permute", "average"],
            value="zip",
            label="Matcher",
            info="zip: any widths; permute / average: equal widths",
            scale=1,
            min_width=120,
        )
        ui["fusion"] = gr.Dropdown(
            labels.FUSION_CHOICES,
            value=DEFAULT_FUSION,
            label="Fusion",
            elem_id="fusion",
            info="How matched weights combine (see below)",
            scale=3,
        )
    # One above the other: side by side, a narrow window clipped the checkbox's label.
    ui["heads"] = gr.Dropdown(
        labels.HEAD_CHOICES,
        value=DEFAULT_HEADS,
        label="Attention heads",
        elem_id="heads",
        info="Transformers only: how the heads of A and B merge (see below)",
    )
    ui["renormalize"] = gr.Checkbox(
        value=False,
        label="Renormalize",
        elem_id="renormalize",
        info="Transformers only: one more pass rescales the merge to the parents' statistics",
    )
    with gr.Accordion("What the matcher, fusion, heads and renormalize do", open=False):
        gr.Markdown(labels.KNOBS_HELP, elem_id="knobs-help")
    _sliders(ui)


def _sliders(ui: dict[str, Any]) -> None:
    """Create the alpha, beta, rho and stop sliders, the device and the auto re-merge switch."""
    ui["alpha"] = gr.Slider(
        0.01,
        1.0,
        value=0.5,
        step=0.01,
        label="alpha",
        info="Damping after a merge: low values stop a group from absorbing more neurons",
    )
    ui["beta"] = gr.Slider(
        0.0,
        1.0,
        value=1.0,
        step=0.05,
        label="beta",
        info="Share of merges allowed within one model (0: only A-B)",
    )
    ui["rho"] = gr.Slider(
        0.0,
        1.0,
        elem_id="rho",
        value=1.0,
        step=0.05,
        label="zip ratio rho",
        info="0 keeps every neuron side by side (the ensemble; in a transformer one LayerNorm "
        "then normalises both models' features), 1 merges down to the wider model's width",
    )
    ui["stop"] = gr.Slider(
        0,
        10,
        value=10,
        step=1,
        label="partial zip: stop point",
        info="Merge the layers before this block; later blocks stay "
        "separate per model (max = full zip)",
    )
    ui["device"] = gr.Dropdown(
        work.device_choices(),
        value=work.device_choices()[0],
        label="Device",
        info="Where statistics and the merge run (changing it recomputes the statistics)",
    )
    ui["auto_merge"] = gr.Checkbox(
        value=True,
        label="Re-merge when a slider is released (from the cached statistics: the "
        "models are not run again)",
    )


def render(session: Session, res: Resources) -> dict[str, Any]:
    """Return the tab's view values for ``session``."""
    prep = session.prepared
    info, text = readout_info(session)
    if prep is None:
        return {
            "readout": text,
            "sizes_plot": None,
            "arch_plot": None,
            "widths_plot": None,
            "widths_table": None,
            "stop": gr.skip(),
            "override_space": gr.update(choices=[]),
        }
    if info is None:
        return {"readout": text}
    settings = session.settings
    layers = labels.point_layers(prep)  # whose layers (an identity layer's width is A's too)
    table = [
        [f"{s} ({layers[s]})" if s in layers else s, *w, override_text(settings.override_for(s))]
        for s, w in info["widths"].items()
    ]
    return {
        "readout": text,
        "sizes_plot": sizes_figure(info["sizes"]),
        "arch_plot": architecture_figure(prep, info["widths"], info["stop"]),
        "widths_plot": widths_figure(info["widths"]),
        "widths_table": table,
        "stop": stop_update(session),
        "override_space": gr.update(choices=override_choices(prep)),
    }


def settings_from(
    session: Session,
    matcher: str,
    alpha: float,
    beta: float,
    rho: float,
    stop: float | None,
    fusion: str = DEFAULT_FUSION,
    renormalize: bool = False,
    heads: str = DEFAULT_HEADS,
) -> Any:
    """Return ZipSettings from the knob values (keeping the session's overrides, ridge,
    bn_units and norm_weights: recipe settings without a control of their own)."""
    n = work.stop_blocks(session)
    return work.make_settings(
        matcher,
        alpha,
        beta,
        rho,
        None if stop is None else work.whole(stop, "stop"),
        session.settings.overrides,
        n,
        fusion=fusion,
        ridge=session.settings.ridge,
        renormalize=bool(renormalize),
        heads=heads or "pair",
        bn_units=session.settings.bn_units,
        norm_weights=session.settings.norm_weights,
    )


def on_knobs(
    session: Session,
    res: Resources,
    matcher: str,
    alpha: float,
    beta: float,
    rho: float,
    stop: float | None,
    fusion: str = DEFAULT_FUSION,
    renormalize: bool = False,
    heads: str = DEFAULT_HEADS,
    progress=None,
) -> str | None:
    """Take new knob values and update the readout (api: /zip); None (the status line stays)
    when nothing changed: a dropdown left without a choice fires this too."""
    work.require_prepared(session)
    settings = settings_from(session, matcher, alpha, beta, rho, stop, fusion, renormalize, heads)
    if settings == session.settings:
        return None
    session.settings = settings
    return "Settings changed: the readout shows what a merge would give."


def on_merge(
    session: Session,
    res: Resources,
    matcher: str,
    alpha: float,
    beta: float,
    rho: float,
    stop: float | None,
    device: str | None,
    fusion: str = DEFAULT_FUSION,
    renormalize: bool = False,
    heads: str = DEFAULT_HEADS,
    progress=None,
    evaluate: bool = True,
) -> str:
    """Merge from cached statistics with these knobs (api: /merge).

    evaluate: False leaves the test metrics to the Evaluate step that follows a slider release.
    """
    session.cancel_requested = False
    work.require_prepared(session)
    note = ""
    if device and resolve_device(device) != session.prepared.device:
        mode, mapping = session.prepared.alignment.mode, session.prepared.alignment.mapping()
        session.device = device
        work.analyse(session, res, session.data, progress)
        if mode != "sma":
            work.set_alignment(session, "manual", json.dumps(mapping), progress)
        note = f" Statistics recomputed on {device}."
    settings = settings_from(session, matcher, alpha, beta, rho, stop, fusion, renormalize, heads)
    if not note and _merged_already(session, settings):  # a release that moved nothing, say
        session.settings = settings
        if evaluate:
            work.evaluate_pending(session, res, progress)
        # a release queued behind a Merge of the same settings restates that merge's result
        return (
            f"Merge #{session.merge_count} has these settings (nothing to re-merge): "
            f"{_score_text(session, evaluate or session.merged_metrics is not None)}"
        )
    result = work.merge(session, res, settings, progress, evaluate=evaluate)
    row = session.history[-1]
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    if evaluate and session.evaluation is not None:  # the rest: scoring the merge (and sizing)
        stages += f", evaluation {max(row['seconds'] - sum(result.timings.values()), 0.0):.2f}s"
    joint = _score_text(session, evaluate)
    alarm = labels.alarm_line(labels.merge_alarms(session))
    fused = f"fusion: {labels.fusion_text(result.settings)}; " if row["fusion"] != "average" else ""
    if row["renormalize"]:
        fused += f"{labels.renormalize_text(result)}; "
    if row["heads"] != "pair":
        fused += f"{labels.heads_text(result)}; "
    return (
        f"Merge #{row['merge']} done in {row['seconds']:.2f}s ({stages}); {fused}{joint}{note} "
        "See the Evaluate tab." + (f" {alarm}" if alarm else "")
    )


def _merged_already(session: Session, settings: Any) -> bool:
    """Return whether the session's merge is of these settings on its current analysis (a
    merge is deterministic: the same settings give the same model)."""
    result = session.result
    return (
        result is not None and result.prepared is session.prepared and is_merge_of(result, settings)
    )


def _score_text(session: Session, scored: bool) -> str:
    """Return the status's score of the current merge ("scoring it…" while it is not yet)."""
    task = session.task
    if session.evaluation is None:
        return f"{work.unscored(session)}."
    if not scored:
        return "scoring it…"
    score = task.score_text(task.headline(session.merged_metrics))
    return f"{labels.metric_label(task)} {score}."


def on_release(
    session: Session,
    res: Resources,
    auto: bool,
    matcher: str,
    alpha: float,
    beta: float,
    rho: float,
    stop: float | None,
    device: str | None,
    fusion: str = DEFAULT_FUSION,
    renormalize: bool = False,
    heads: str = DEFAULT_HEADS,
    progress=None,
) -> str | None:
    """Re-merge on slider release when auto re-merge is on (api: /remerge); None (the status
    line stays) when the merge shown has these settings: a key released at the slider's end,
    or focus leaving its number box, releases it too."""
    if not auto or session.prepared is None:
        return on_knobs(session, res, matcher, alpha, beta, rho, stop, fusion, renormalize, heads)
    settings = settings_from(session, matcher, alpha, beta, rho, stop, fusion, renormalize, heads)
    same_device = not device or resolve_device(device) == session.prepared.device
    if same_device and _merged_already(session, settings):
        session.settings = settings
        return None
    return on_merge(
        session,
        res,
        matcher,
        alpha,
        beta,
        rho,
        stop,
        device,
        fusion,
        renormalize,
        heads,
        progress,
        evaluate=False,
    )


def on_cancel(session: Session, res: Resources, progress=None) -> str:
    """Ask the running step of this session to stop, or the one waiting to start (api: /cancel)."""
    if session.waiting:  # for another user's step: it goes before it starts
        session.cancel_requested = True
        return "Cancelling: your step has not started (it waits for another user's); it is dropped."
    if not session.running:
        return "Nothing is running: there is nothing to cancel."
    if session.cannot_stop:
        return f"{session.cannot_stop}: Cancel cannot stop that; it ends in a moment."
    session.cancel_requested = True
    return "Cancelling: the running step stops at its next stage; earlier results are kept."


def wire(ui: dict[str, Any], on) -> None:
    """Register the tab's events."""
    knobs = list(KNOBS)
    for name in ("alpha", "beta", "rho", "stop"):
        on(ui[name].input, on_knobs, knobs, ("zip",), "zip" if name == "rho" else None, light=True)
        released = on(
            ui[name].release,
            on_release,
            ["auto_merge", *MERGE_INPUTS],
            RELEASED_SCOPES,
            "remerge" if name == "rho" else None,
            heavy=True,
            last=True,  # a release during a merge merges at its value afterwards
        )
        # The merge shows first; its test metrics follow in a second step.
        on(
            released.success,
            on_evaluate_pending,
            [],
            SCORED_SCOPES,
            None,
            heavy=True,
            chained=True,  # after a cancelled merge: nothing to score, the Cancel's line stays
        )
    for name in ("matcher", "fusion", "renormalize", "heads"):  # the readout: a merge is due
        on(ui[name].input, on_knobs, knobs, ("zip",), None, light=True)
    # the Merge button lies below the status line on a laptop screen: its result as a toast too
    on(
        ui["merge"].click,
        on_merge,
        list(MERGE_INPUTS),
        MERGED_SCOPES,
        "merge",
        heavy=True,
        toast=True,
        last=True,  # a click during a merge (settings changed meanwhile) merges afterwards
    )
    on(ui["cancel"].click, on_cancel, [], (), "cancel", light=True)
    # beside the other long steps (analysis, the sweeps, generation): one handler
    for beside in ("analyse_cancel", "sweep_cancel", "grid_cancel", "gen_cancel"):
        on(ui[beside].click, on_cancel, [], (), None, light=True)
    on(
        ui["set_override"].click,
        on_set_override,
        ["override_space", "override_rho", "override_width"],
        ("zip",),
        "set_override",
    )
    on(ui["clear_overrides"].click, on_clear_overrides, [], ("zip",), "clear_overrides")
