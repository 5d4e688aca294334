"""A JSON summary of a session: what is loaded, aligned, merged and exported.

Shown in the page (Session summary) and returned by every API event, so that a gradio_client
script can follow the flow without parsing figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from heterogui.ui.history import knobs_of
from heterogui.ui.labels import merge_alarms
from heterogui.ui.session import Session
from heterogui.ui.work import stop_blocks

SCORE_KEYS = ("Joint", "Avg", "Spearman")
HISTORY_KEYS = (
    "merge",
    "rho",
    "alpha",
    "beta",
    "stop",
    "fusion",
    "renormalize",
    "heads",
    "parameters",
    "stored parameters",
    "Joint",
    "Avg",
    "Spearman",
    "score",
)  # the fields of a history entry the summary shows


def session_summary(session: Session) -> dict[str, Any]:
    """Return the session's state as plain JSON-ready values."""
    out: dict[str, Any] = {
        "session": session.sid,
        "pair": session.demo,
        "model_a": session.a.ref if session.a else None,
        "model_b": session.b.ref if session.b else None,
        # what must be shown with a model (a GGUF file's weights are dequantized)
        "notes": {w: m.note for w, m in (("a", session.a), ("b", session.b)) if m and m.note},
        "task": session.task.kind if session.task else None,
        "calibration": session.calibration.ref.source if session.calibration else None,
        "analysed": session.prepared is not None,
        "merges": session.merge_count,
        "last_export": session.last_export,
    }
    prep = session.prepared
    if prep is not None:
        al = prep.alignment
        out["alignment"] = {
            "mode": al.mode,
            "mapping": al.mapping(),
            "score": al.score,
            "depths": list(al.depths),
        }
        out["device"] = str(prep.device)
        out["blocks"] = stop_blocks(session)  # stop = blocks: a full zip
    s = session.settings
    out["settings"] = {
        **knobs_of(s),
        "ridge": s.ridge,
        "overrides": {k: dict(v) for k, v in s.overrides.items()},
    }
    task = session.task
    columns = task.columns if task is not None else (lambda _m: {})
    out["baseline"] = {k: columns(m) for k, m in session.baseline.items()}
    if session.result is not None:
        out["merged"] = _merged_summary(session, columns)
    out["history"] = [{k: h.get(k) for k in HISTORY_KEYS} for h in session.history]
    return out


def _merged_summary(session: Session, columns: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Return the summary of the session's merged model (its result must be set)."""
    result = session.result
    return {
        "widths": {k: list(v) for k, v in result.widths().items()},
        # as the history and the readout count them: effective, then stored (sizes.py)
        "parameters": session.merged_size["parameters"],
        "stored_parameters": session.merged_size["stored_parameters"],
        "stop": result.spec.stop,
        "metrics": columns(session.merged_metrics),
        "heads": [h.name for heads in result.spec.heads for h in heads],
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
        "alarms": merge_alarms(session),
    }
