"""What the page shows: the tabs by key, the scopes an event redraws, and their views.

``render`` is the one place a tab's views are built, for the page (``ui.events``), the latency
benchmark (``ui.latency``) and the figure download (``ui.slides``); every figure gets the
page's look (``ui.figstyle``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from heterogui.ui import (
    tab_align,
    tab_compare,
    tab_evaluate,
    tab_export,
    tab_models,
    tab_neurons,
    tab_zip,
    zip_readout,
)
from heterogui.ui.figstyle import style
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session

TABS = {
    "models": tab_models,
    "align": tab_align,
    "neurons": tab_neurons,
    "zip": tab_zip,
    "evaluate": tab_evaluate,
    "compare": tab_compare,
    "export": tab_export,
}


# Also "readout" (the Zip tab's readout alone, a part of "zip") and "scores" (the Evaluate tab's
# views that a merge's scores change, a part of "evaluate").
SCOPES = (*TABS, "knobs")


def views_of(scope: str) -> tuple[str, ...]:
    """Return the names of the components a scope renders."""
    if scope == "readout":
        return ("readout",)
    if scope == "scores":
        return tab_evaluate.SCORE_VIEWS
    return tuple(tab_zip.KNOBS) if scope == "knobs" else TABS[scope].VIEWS


def render(session: Session, res: Resources, scopes: Sequence[str]) -> dict[str, Any]:
    """Return the view values of the given scopes for ``session``."""
    values: dict[str, Any] = {}
    for scope in scopes:
        if scope == "knobs":
            if session.prepared is not None:
                values.update(zip_readout.knob_values(session))
        elif scope == "readout":
            values["readout"] = zip_readout.render_readout(session)
        elif scope == "scores":
            if session.prepared is not None and session.task is not None:
                values.update(tab_evaluate.score_views(session))
        else:
            values.update(TABS[scope].render(session, res))
    return {k: style(v) if isinstance(v, go.Figure) else v for k, v in values.items()}
