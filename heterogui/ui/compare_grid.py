"""The Compare tab's 2-D sweep (docs/method.md sec. 7 for the knobs): re-merge over a grid of
rho and a second knob (alpha, beta or the stop point) from the cached statistics, the heat map's
views with the cells best first, and the handlers that run the sweep and load a cell's setting
into the Zip tab.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr

from heterogui import sweep
from heterogui.errors import ConfigError
from heterogui.tasks.base import SWEEP
from heterogui.ui import labels, work
from heterogui.ui.fig_compare import grid_figure
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session

GRID_RHOS = (0.0, 0.25, 0.5, 0.75, 1.0)
GRID_VALUES = {"alpha": (0.1, 0.3, 0.5, 0.7, 0.9), "beta": (0.0, 0.25, 0.5, 0.75, 1.0)}
GRID_KNOBS = ("alpha", "beta", "stop")


def grid_cells(session: Session) -> list[tuple[str, int]]:
    """Return (label, index) of every grid point, best score first."""
    knob, metric = session.grid_knob, session.task.metric
    sign = 1.0 if labels.lower_is_better(session.task) else -1.0

    def rank(k: int) -> float:
        score = session.grid[k].get("score")
        return float("inf") if score is None or score != score else sign * score

    order = sorted(range(len(session.grid)), key=rank)
    out = []
    for k in order:
        p = session.grid[k]
        score = session.task.score_text(p.get("score"))
        label = f"rho {p['rho']:g} · {knob} {p[knob]:g}: {metric} {score}, "
        out.append((label + f"{p['parameters']:,} parameters", k))
    return out


def grid_views(session: Session) -> dict[str, Any]:
    """Return the 2-D sweep's view values for ``session``."""
    if SWEEP not in session.task.panels:
        return {
            "grid_info": f"The 2-D sweep scores 25 merges; for {session.task.title} it is not "
            "offered (move the knobs on the Zip tab instead).",
            "grid_cell": gr.update(choices=[], value=None),
        }
    if not session.grid:
        return {"grid_info": "No 2-D sweep yet.", "grid_cell": gr.update(choices=[], value=None)}
    value = getattr(session.settings, session.grid_knob)
    if session.grid_knob == "stop" and value is None:  # a full zip: the last stop point
        value = work.stop_blocks(session)
    current = (session.settings.rho, value)
    return {
        "grid_plot": grid_figure(
            session.grid,
            session.grid_knob,
            labels.metric_label(session.task),
            current,
            labels.lower_is_better(session.task),
        ),
        "grid_cell": gr.update(choices=grid_cells(session), value=None),
        "grid_info": f"{len(session.grid)} merges over rho × {session.grid_knob}; the other "
        "settings as the Zip tab's when the sweep ran. Scores are on the pair's test data.",
    }


def grid_axes(session: Session, knob: str) -> dict[str, tuple]:
    """Return the grid of a 2-D sweep: rho and ``knob`` (stop: up to 5 spread block indices).

    Raises:
        ConfigError: an unknown knob.
    """
    if knob not in GRID_KNOBS:
        raise ConfigError(f"the second knob must be one of {list(GRID_KNOBS)}, not {knob!r}")
    if knob == "stop":
        n = work.stop_blocks(session)
        values = sorted({round(1 + k * (n - 1) / 4) for k in range(5)})
        return {"rho": GRID_RHOS, "stop": tuple(values)}
    return {"rho": GRID_RHOS, knob: GRID_VALUES[knob]}


def on_grid(session: Session, res: Resources, knob: str, progress=None) -> str:
    """Re-merge over rho × a second knob and score every merge (api: /grid)."""
    prep = work.require_prepared(session)
    if SWEEP not in session.task.panels:
        raise ConfigError(
            f"the 2-D sweep scores 25 merges; for {session.task.title} move the knobs on the "
            "Zip tab instead"
        )
    axes = grid_axes(session, knob)
    report = work.guarded(session, progress)
    # the Zip tab's current settings (an override cleared since the last merge stays cleared)
    points = sweep.sweep_grid(
        session.pair, prep, session.settings, session.evaluation, axes, report
    )
    session.grid, session.grid_knob, session.grid_settings = points, knob, session.settings
    skipped = len(axes["rho"]) * len(axes[knob]) - len(points)
    more = f" ({skipped} settings could not be merged and are left out)" if skipped else ""
    return f"2-D sweep: {len(points)} merges over rho × {knob}{more}. Pick a cell to load it."


def on_grid_click(
    session: Session, res: Resources, rho: float | None, value: float | None, progress=None
) -> str:
    """Load the setting of the clicked cell of the 2-D sweep and merge (api: /grid_click).

    rho, value: the cell's rho and second-knob value (the map's x and y).
    """
    work.require_prepared(session)
    if not session.grid:
        raise ConfigError("run the 2-D sweep first")
    knob = session.grid_knob
    if rho is None or value is None:
        raise ConfigError(f"click a cell of the map: it gives rho and {knob}")
    for k, p in enumerate(session.grid):
        if abs(p["rho"] - rho) < 1e-9 and abs(p[knob] - value) < 1e-9:
            return on_grid_load(session, res, k, progress)
    raise ConfigError(f"no merge of the sweep at rho {rho}, {knob} {value}: click a filled cell")


def on_grid_load(session: Session, res: Resources, cell: int | None, progress=None) -> str:
    """Load a grid cell's setting and merge with it (api: /grid_load).

    The merge runs from the session's cached statistics, on their device, with the settings
    the sweep ran with (the cell's scores are that merge's), as the sweep did.
    """
    work.require_prepared(session)
    if not session.grid:
        raise ConfigError("run the 2-D sweep first")
    if cell is None or not 0 <= int(cell) < len(session.grid):
        raise ConfigError(f"pick a cell of the sweep (0..{len(session.grid) - 1})")
    point = session.grid[int(cell)]
    settings = dataclasses.replace(
        session.grid_settings or session.settings,
        rho=point["rho"],
        **{session.grid_knob: point[session.grid_knob]},
    )
    work.merge(session, res, settings, progress)
    row = session.history[-1]
    return (
        f"Merge #{row['merge']}: rho {point['rho']:g}, {session.grid_knob} "
        f"{point[session.grid_knob]:g} loaded and merged; {session.task.metric} "
        f"{session.task.score_text(row['score'])}."
    )
