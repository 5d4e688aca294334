"""Progress callbacks: ``progress(stage, fraction)`` as every step of a merge reports it.

A step's own 0..1 maps onto a slice of its caller's bar (``within``), and the workbench's
Cancel takes effect at the next report (``guarded``).
"""

from __future__ import annotations

from collections.abc import Callable

from heterogui.errors import Cancelled

Progress = Callable[[str, float], None]

# what each stage of a step does, in words (the workbench's progress bar, a Cancel's message);
# a stage is named by its last word ("build digits-vgg-depth" excepted)
STAGE_LABELS = {
    "bn_inputs": "re-estimating BatchNorm of A and B",
    "bn_similarity": "re-estimating BatchNorm of A and B, with their layer similarity (one pass)",
    "similarity": "layer similarity (CKA)",
    "probe": "layer similarity (CKA) of the first batch, to place the layers",
    "features": "feature statistics",
    "analysis": "layer similarity and feature statistics (one pass)",
    "match": "matching neurons",
    "search": "searching which attention heads to keep (a merge per flip tried)",
    "bn_merged": "BatchNorm of the merged model",
    "evaluate": "evaluating",
    "sweep": "sweeping rho",
    "generate": "generating continuations",
    "done": "done",
}


def stage_label(stage: str) -> str:
    """Return what ``stage`` does, in words (the stage itself where it has no label)."""
    if stage.startswith("build"):
        return f"building the demo pair ({stage[6:]})"
    return STAGE_LABELS.get(stage.split(" ")[-1], stage)


def within(progress: Progress, lo: float, hi: float) -> Progress:
    """Return a progress callback that maps a step's 0..1 onto ``lo..hi`` of ``progress``."""
    return lambda stage, frac: progress(stage, lo + (hi - lo) * frac)


def guarded(
    progress: Progress | None,
    cancel: Callable[[], bool] | None,
    outcome: str = "nothing was merged or written",
) -> Progress:
    """Return a progress callback that stops the run (Cancelled) once ``cancel()`` is true.

    The engine reports progress at every stage and batch, so a cancel takes effect at the
    next report. ``outcome`` ends the message: what the caller is left with.
    """

    def report(stage: str, fraction: float) -> None:
        if cancel is not None and cancel():
            raise Cancelled(f"stopped during {stage_label(stage)}; {outcome}")
        if progress is not None:
            progress(stage, fraction)

    return report
