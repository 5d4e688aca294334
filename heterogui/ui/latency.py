"""Slider latency: how long the workbench takes from a slider release to updated results.

A release (``tab_zip.on_release`` with auto re-merge on) runs two steps, timed here without a
server and without gradio, down to the figures' JSON:

1. the merge: re-merge from the cached statistics (``zip_prepared``: match, fuse, BatchNorm)
   and every view the page redraws with it, figures to JSON and tables to their text
   (``views.render`` of ``tab_zip.RELEASED_SCOPES``: the Zip, Neurons, Evaluate and Compare
   tabs: readout, sizes, architecture, widths, neuron maps, ...);
2. its metrics: evaluation on the test split and the views redrawn with them
   (``tab_zip.SCORED_SCOPES``: the Zip tab's readout, the Evaluate tab's scores and history,
   the Compare and Export tabs).

The statistics are prepared once before timing, as the app does when a pair is loaded.

Then, where SMA and LMA place the layers differently, an alignment switch to the other mode
(``tab_align.on_mode`` and the views it redraws): cold, running its feature pass; and after the
app's idle pass collected that placement ahead (``ui.prefetch``, timed as idle_pass_s), with
the merge and metrics that follow it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

import gradio as gr
import plotly.graph_objects as go
import torch
from pandas.io.formats.style import Styler

from heterogui.bench.timing import clock
from heterogui.pipeline import MergeResult, Prepared
from heterogui.ui import history, placements, tab_align, tab_neurons, tab_zip, views, work
from heterogui.ui.prefetch import Prefetcher
from heterogui.ui.resources import Resources, ZooPairs
from heterogui.ui.session import Session
from heterogui.zoo.registry import PAIRS, TINY_PAIRS

# A user dragging rho, then alpha, beta and the stop point: each entry is one release (a move
# may also set "matcher", "fusion", "renormalize" or "heads", as the Zip tab's dropdowns and
# checkbox do).
DEFAULT_MOVES: tuple[dict[str, Any], ...] = (
    {"rho": 0.9},
    {"rho": 0.75},
    {"rho": 0.5},
    {"rho": 0.25},
    {"rho": 1.0},
    {"alpha": 0.3},
    {"beta": 0.5},
    {"stop": -1},
    {"stop": None},
)


_TABLE = gr.Dataframe(interactive=False, render=False)  # postprocesses a table as the page does


def render_step(session: Session, res: Resources, scopes: tuple[str, ...]) -> int:
    """Render the views a step updates, as the app does, down to the figures' JSON and the
    tables' text on screen (gradio makes it from a table's Styler); return the JSON bytes."""
    page = views.render(session, res, scopes)
    for view in page.values():
        shown = view.get("value") if isinstance(view, dict) else view
        if isinstance(shown, Styler):
            _TABLE.postprocess(shown)
    return sum(len(v.to_json()) for v in page.values() if isinstance(v, go.Figure))


def _settings(session: Session, move: dict[str, Any]) -> Any:
    s = session.settings
    knobs = {**history.knobs_of(s), **move}
    n_blocks = work.stop_blocks(session)
    if knobs["stop"] == -1:  # "one block before the head": a partial zip
        knobs["stop"] = max(n_blocks - 1, 0)
    return work.make_settings(
        **knobs,
        overrides=s.overrides,
        n_blocks=n_blocks,
        ridge=s.ridge,
        bn_units=s.bn_units,
        norm_weights=s.norm_weights,
    )


def slider_latency(
    pair_name: str,
    moves: tuple[dict[str, Any], ...] = DEFAULT_MOVES,
    res: Resources | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Return the slider-to-updated-result latency of the workbench for zoo pair ``pair_name``.

    Keys: pair, device, threads, prepare_s (load + statistics, once), moves, figure_bytes (JSON
    per release), and {"median", "max"} over the moves of: zip_s (``zip_prepared`` alone),
    merge_s (step 1: re-merge, sizes and its figures: the merged model on screen), metrics_s
    (step 2: test-split evaluation and its figures), total_s (both); under_1s: step 1 always
    under a second.

    Raises:
        HeteroguiError: unknown pair (or a failing merge).
    """
    if res is None:
        res = Resources(ZooPairs(tiny=pair_name in TINY_PAIRS), device=device)
    session = Session(device=device)
    res.pair(pair_name)  # build (if needed) outside the timed part
    start = time.perf_counter()
    work.open_pair(session, res, pair_name)
    return releases_latency(pair_name, session, res, time.perf_counter() - start, moves)


def minilm_latency(
    moves: tuple[dict[str, Any], ...] = DEFAULT_MOVES, device: str = "auto"
) -> dict[str, Any]:
    """Return ``slider_latency``'s figures for the MiniLM pair (L6 + L3) on its default data.

    The pair is loaded as the Models tab loads two models, then analysed (timed: prepare_s).
    """
    from heterogui import run
    from heterogui.sources import minilm

    pair = run.load_pair(f"minilm:{minilm.L6_NAME}", f"minilm:{minilm.L3_NAME}")
    res = Resources(ZooPairs(), device=device)
    session = Session(device=device)
    work.set_model(session, "a", pair.a)
    work.set_model(session, "b", pair.b)
    start = time.perf_counter()
    work.analyse(session, res, None)
    return releases_latency("minilm L6 + L3", session, res, time.perf_counter() - start, moves)


def releases_latency(
    label: str,
    session: Session,
    res: Resources,
    prepare_s: float,
    moves: tuple[dict[str, Any], ...] = DEFAULT_MOVES,
) -> dict[str, Any]:
    """Time the slider releases ``moves`` on an analysed session (``slider_latency``'s keys)."""
    _release(session, res, session.settings)  # warm-up: first-call costs are not a slider's
    times: dict[str, list[float]] = {"zip_s": [], "merge_s": [], "metrics_s": [], "total_s": []}
    sizes = []
    for move in moves:
        step = _release(session, res, _settings(session, move))
        sizes.append(step.pop("bytes"))
        for key, value in step.items():
            times[key].append(value)
    return {
        "pair": label,
        "device": str(session.prepared.device),
        "threads": torch.get_num_threads(),
        "prepare_s": prepare_s,
        "moves": len(moves),
        **{key: _stats(values) for key, values in times.items()},
        "figure_bytes": max(sizes),
        "under_1s": max(times["merge_s"]) < 1.0,
        "switch": switch_latency(session, res),
    }


def switch_latency(session: Session, res: Resources) -> dict[str, Any] | None:
    """Time a switch to the placement the app collects while idle, cold and collected ahead.

    Keys: mode (switched to), cold_s (switch with its feature pass, views drawn), idle_pass_s
    (the prefetch's pass, in the background), switch_s (the switch once collected ahead),
    merge_s / total_s (the merge after it, on screen / with its metrics). None when the
    session holds every such placement already (SMA and LMA place the layers alike).
    """
    missing = placements.missing_placement(session)
    if missing is None:
        return None
    mode, back = missing[1], session.prepared.alignment.mode
    cold_s = _switch(session, res, mode)
    _switch(session, res, back)
    session.visited = []  # forget the placement the cold switch collected
    idle = Prefetcher(lambda _s: contextlib.nullcontext(), thread=False)
    idle.schedule(session)
    start = time.perf_counter()
    if not idle.run_once():
        raise RuntimeError(f"the idle pass collected no {mode} placement")
    idle_pass_s = time.perf_counter() - start
    switch_s = _switch(session, res, mode, expect="reused")
    step = _release(session, res, session.settings)
    return {
        "mode": mode,
        "cold_s": cold_s,
        "idle_pass_s": idle_pass_s,
        "switch_s": switch_s,
        "merge_s": step["merge_s"],
        "total_s": step["total_s"],
    }


def _switch(session: Session, res: Resources, mode: str, expect: str | None = None) -> float:
    """Switch the alignment mode as the Alignment tab does; return the seconds, views drawn."""
    start = time.perf_counter()
    status = tab_align.on_mode(session, res, mode, None)
    render_step(session, res, tab_align.SWITCHED_SCOPES)
    seconds = time.perf_counter() - start
    if expect is not None and tab_align.ALIGNMENT_STATISTICS[expect] not in status:
        raise RuntimeError(f"the switch to {mode} ran a pass: {status}")
    return seconds


def _release(session: Session, res: Resources, settings: Any) -> dict[str, float]:
    """Do what one slider release does; return the time of each step (and the JSON bytes)."""
    t0 = time.perf_counter()
    result = work.merge(session, res, settings, evaluate=False)
    size = render_step(session, res, tab_zip.RELEASED_SCOPES)
    t1 = time.perf_counter()
    work.evaluate_pending(session, res)
    size += render_step(session, res, tab_zip.SCORED_SCOPES)
    t2 = time.perf_counter()
    return {
        "zip_s": sum(result.timings.values()),
        "merge_s": t1 - t0,
        "metrics_s": t2 - t1,
        "total_s": t2 - t0,
        "bytes": size,
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "max": max(values)}


def latency_of_every_pair(device: str = "auto", minilm: bool = False) -> list[dict[str, Any]]:
    """Return the slider latency of every demo pair of the zoo (and of the MiniLM pair)."""
    rows = [slider_latency(name, device=device) for name in PAIRS]
    return rows + ([minilm_latency(device=device)] if minilm else [])


def format_latency(rows: list[dict[str, Any]]) -> str:
    """Return slider latencies as readable lines (one per pair; medians, max of the total)."""
    return "\n".join(
        f"{r['pair']:<28} zip {r['zip_s']['median']:.3f}s; merge on screen "
        f"{r['merge_s']['median']:.3f}s; + metrics {r['metrics_s']['median']:.3f}s = "
        f"{r['total_s']['median']:.3f}s (max {r['total_s']['max']:.3f}s) on {r['device']}, "
        f"{r['threads']} thread(s)" + _switch_text(r["switch"])
        for r in rows
    )


def _switch_text(switch: dict[str, Any] | None) -> str:
    if switch is None:
        return ""
    return (
        f"\n{'':<28} switch to {switch['mode']}: cold {switch['cold_s']:.3f}s; collected "
        f"ahead while idle ({switch['idle_pass_s']:.3f}s) {switch['switch_s']:.3f}s, then "
        f"merge on screen {switch['merge_s']:.3f}s, with metrics {switch['total_s']:.3f}s"
    )


def neurons_point_seconds(prep: Prepared, result: MergeResult) -> float:
    """Return the longest time the Neurons tab takes to show another merge point.

    Each point the tab offers is shown once after a merge (``on_space`` then the tab's
    ``render``, figures serialised to JSON as the page receives them); the first is shown
    before timing, as the tab shows it on opening.
    """
    session = Session(device=str(prep.device), prepared=prep, result=result)
    session.settings = result.settings
    points = [name for _, name in tab_neurons.merge_points(prep)]

    def show(space: str) -> None:
        tab_neurons.on_space(session, None, space)
        page = tab_neurons.render(session, None)
        for view in page.values():
            if isinstance(view, go.Figure):
                view.to_json()

    show(points[0])
    return max(clock(lambda s=space: show(s), prep.device) for space in points[1:] or points)
