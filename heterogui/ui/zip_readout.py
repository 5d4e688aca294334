"""The Zip tab's readout: the parameters and FLOPs of A, B, their ensemble and the merge, with
each model's headline score, and the merge's widths per merge point and stop point (docs/method.md
sec. 7 and 10). Exact after a merge, else estimated from the settings (``heterogui.sizes``); also
the knob values the tab shows for a session.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from heterogui.errors import ConfigError, MatcherError
from heterogui.models.graph import space_order
from heterogui.pipeline import is_merge_of
from heterogui.sizes import STORED_REASON, estimate, merge_size, reference_sizes
from heterogui.ui import history, labels, work
from heterogui.ui.session import Session
from heterogui.zip.plan import stop_point


def knob_values(session: Session) -> dict[str, Any]:
    """Return the knob components' values from the session's settings (after load/import)."""
    return {**history.knobs_of(session.settings), "stop": stop_update(session)}


def stop_update(session: Session) -> Any:
    """Return the stop slider's range and value together: a new pair's range with the last
    pair's value beyond it would make the page refuse every later event ("Value 11 is greater
    than maximum value 7")."""
    n, stop = work.stop_blocks(session), session.settings.stop
    return gr.update(maximum=n, value=n if stop is None else min(stop, n))


def readout(session: Session) -> dict[str, Any]:
    """Return sizes and widths of the current settings: exact after a merge, else estimated."""
    prep = session.prepared
    result = session.result
    sizes = dict(session.reference_sizes or reference_sizes(prep))
    if result is not None and is_merge_of(result, session.settings):
        sizes["merged"] = session.merged_size or merge_size(result)
        widths, exact = result.widths(), True
    else:
        est = estimate(prep, session.settings)
        sizes["merged"] = {
            **est["effective"],
            "stored_parameters": est["parameters"],
            "stored_flops": est["flops"],
        }
        widths, exact = est["widths"], False
    widths = {k: widths[k] for k in sorted(widths, key=space_order)}
    stop = result.spec.stop if exact else stop_point(prep.padded_a.graph(), session.settings)
    return {
        "sizes": sizes,
        "widths": widths,
        "exact": exact,
        "scores": _scores(session, exact),
        "stop": stop,
    }


def _scores(session: Session, exact: bool) -> dict[str, Any]:
    """Return the metric name and each model's headline score (the merge's only when current)."""
    task = session.task
    if task is None or not session.baseline:
        return {}
    models = dict(session.baseline)
    models["merged"] = session.merged_metrics if exact else None
    values = {k: task.headline(v) for k, v in models.items()}
    texts = {k: task.score_text(v) for k, v in values.items()}
    return {"metric": labels.metric_label(task), "values": values, "texts": texts}


def _readout_text(info: dict[str, Any]) -> str:
    sizes = info["sizes"]
    ens = sizes["ensemble"]
    scores = info.get("scores") or {}
    values = scores.get("values", {})
    metric = f" | {scores['metric']}" if scores else ""
    rows = [
        f"| model | parameters | FLOPs per input | vs ensemble{metric} |",
        "|---|---|---|---|" + ("---|" if scores else ""),
    ]
    for name, v in sizes.items():
        share = v["parameters"] / ens["parameters"] if ens["parameters"] else 0
        flops = "—" if v["flops"] is None else f"{v['flops']:,}"
        score = ""
        if scores:
            score = " | " + scores["texts"].get(name.lower(), "—")
        rows.append(f"| {name} | {v['parameters']:,} | {flops} | {share:.0%}{score} |")
    head = (
        "**Merged model (last merge)**"
        if info["exact"]
        else "**Merged model if you merge now** (estimate; press Merge)"
    )
    if scores and values.get("merged") is None:
        head += " · its score shows after the merge is evaluated"
    merged = sizes["merged"]
    stored = (
        f"Sizes are effective: the parameters and FLOPs a model computes with. The merge stores "
        f"{merged['stored_parameters']:,} parameters: {STORED_REASON}."
    )
    return head + "\n\n" + "\n".join(rows) + "\n\n" + stored


def readout_info(session: Session) -> tuple[dict[str, Any] | None, str]:
    """Return the readout's numbers (None without a pair or on an error) and its text."""
    if session.prepared is None:
        return None, "Load and analyse a pair first."
    try:
        info = readout(session)
    except (ConfigError, MatcherError) as exc:  # settings the merge would refuse as well
        return None, f"**Error:** {exc}"
    return info, _readout_text(info)


def render_readout(session: Session) -> str:
    """Return the readout alone (the scope "readout": what a merge's scores change here)."""
    return readout_info(session)[1]
