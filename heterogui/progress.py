"""Progress callbacks: ``progress(stage, fraction)`` as every step of a merge reports it.

A step's own 0..1 maps onto a slice of its caller's bar (``within``), and the workbench's
Cancel takes effect at the next report (``guarded``).
"""

from __future__ import annotations

from collections.abc import Callable

from heterogui.errors import Cancelled

Progress = Callable[[str, float], None]


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
            raise Cancelled(f"cancelled at {stage!r}; {outcome}")
        if progress is not None:
            progress(stage, fraction)

    return report
