"""How a handler becomes a Gradio event: errors as messages, progress, locks, redrawn views.

Every event runs a plain handler ``handler(session, resources, *inputs, progress=...)`` that
changes the session and returns a status message; ``event_function`` turns handler errors into
messages in the page (the session is kept), re-renders the scopes the event touches
(``ui.views.render``) and reports progress in the page's bar.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import gradio as gr

from heterogui.errors import (
    MESSAGE_LIMIT,
    Cancelled,
    HeteroguiError,
    excerpt,
    out_of_memory_line,
)
from heterogui.progress import stage_label
from heterogui.ui.closed_tabs import ClosedTabs
from heterogui.ui.heavy_slots import WAITING, HeavySlots
from heterogui.ui.labels import literal, shown
from heterogui.ui.prefetch import Prefetcher
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session
from heterogui.ui.summary import session_summary
from heterogui.ui.views import render

log = logging.getLogger(__name__)


def progress_adapter(progress: Any) -> Callable[[str, float], None]:
    """Return a core progress callback (stage, fraction) that drives a gr.Progress bar."""

    def report(stage: str, frac: float) -> None:
        if progress is not None:
            progress(min(max(float(frac), 0.0), 1.0), desc=stage_label(stage))

    return report


def event_function(
    handler: Callable[..., Any],
    res: Resources,
    scopes: Sequence[str],
    names: Sequence[str],
    n_inputs: int,
    lock_for: Callable[[Session], Any] | None = None,
    idle: Prefetcher | None = None,
    toast: bool = False,
    tabs: ClosedTabs | None = None,
    slots: HeavySlots | None = None,
    chained: bool = False,
) -> Callable[..., list[Any]]:
    """Wrap a handler as a gradio function: errors become messages, views are re-rendered.

    lock_for: returns the lock that serialises this session's heavy steps (None: no lock).
    idle: the app's background prefetch (it pauses while any event counted in
    ``res.in_flight`` runs); a heavy step that succeeds queues its session there (None: no
    prefetch). toast: show a success's message
    as a toast too (as errors always are), for a button below the fold of the status line.
    tabs: the app's closed-tab releases, told of every event (None: none).
    slots: the app's heavy steps at once (a heavy step waits for one; None: no limit).
    chained: the step follows another of the same trigger (a release's scoring): it is no
    step queued behind a cancelled one, and runs (``run_step``).

    Raises:
        TypeError: at build time, when the handler does not take the event's inputs.
    """
    try:  # a mis-wired event fails when the app is built, not when a user clicks
        inspect.signature(handler).bind(None, None, *[None] * n_inputs, progress=None)
    except TypeError as exc:
        name = getattr(handler, "__name__", handler)
        raise TypeError(f"{name} does not take {n_inputs} input(s) and progress: {exc}") from exc

    def fn(*args: Any) -> list[Any]:
        session = args[0] if isinstance(args[0], Session) else Session()
        res.exports.seen(session)  # an open session: its exports and inputs are kept from others
        released = tabs.seen(session) if tabs is not None else None  # its page is here
        if released:
            gr.Warning(released)
        values, progress = args[1 : 1 + n_inputs], args[1 + n_inputs]
        skip = [gr.skip() for _ in names]
        arrived = time.monotonic()  # before the session's lock: a step queued behind waits
        try:
            with (
                res.in_flight.track(),  # the prefetch counts these too (Prefetcher events)
                lock_for(session) if lock_for else contextlib.nullcontext(),
                step_warnings() as warned,
            ):
                report = progress_adapter(progress)
                out = run_step(
                    session,
                    heavy=lock_for is not None,
                    step=lambda: handler(session, res, *values, progress=report),
                    arrived=arrived,
                    slot=partial(slots.held, session, lambda: report(WAITING, 0.0))
                    if slots is not None
                    else None,
                    chained=chained,
                )
                message, extra = out if isinstance(out, tuple) else (out, {})
                views = {**render(session, res, scopes), **extra}
        except Exception as exc:  # a bug must not take the page down either: report, go on
            return [session, failure_message(exc, handler), session_summary(session), *skip]
        if idle is not None and lock_for is not None:
            idle.schedule(session)
        if toast and message:  # before the warnings join it: they have toasts of their own
            gr.Info(message.replace("**", ""))
        if warned:  # what the CLI prints on the terminal (unscaled data, a short draw)
            for text in warned:
                gr.Warning(text)
            note = " ".join(f"**Warning:** {text}" for text in warned)
            message = note if message is None else f"{message} {note}"
        return [
            session,
            gr.skip() if message is None else message,  # None: nothing to say, keep the line
            session_summary(session),
            *[views.get(n, gr.skip()) for n in names],
        ]

    fn.__signature__ = event_signature(n_inputs)  # gradio finds gr.Progress by its default
    fn.__name__ = getattr(handler, "__name__", "handler")
    return fn


class _StepWarnings(logging.Handler):
    """Collect the warnings heterogui logs on this thread (one step), each once."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            text = shown(excerpt(record.getMessage(), MESSAGE_LIMIT))
            if text not in self.messages:
                self.messages.append(text)


@contextlib.contextmanager
def step_warnings() -> Any:
    """Yield the list of the warnings heterogui logs while a step runs on this thread (other
    sessions' steps and the idle prefetch run on other threads and stay out of it)."""
    handler = _StepWarnings()
    logger = logging.getLogger("heterogui")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def failure_message(exc: Exception, handler: Callable[..., Any]) -> str:
    """Return the status line of an event that raised ``exc`` (and show it as a toast).

    Cancelled: an info; a HeteroguiError: a warning with its one-line message; anything else
    is a bug: logged with its traceback and reported by type, the page keeps running.
    """
    if isinstance(exc, Cancelled):
        text = str(exc)
        text = text[:1].upper() + text[1:]
        gr.Info(text)
        return f"**Cancelled.** {text}"
    if isinstance(exc, HeteroguiError):
        # one line, whatever a library put in it; "<stream end>" is text, not an HTML tag
        message = excerpt(exc, MESSAGE_LIMIT)
        gr.Warning(shown(message))  # a toast shows text as it is
        return f"**Error:** {literal(message)}"
    memory = out_of_memory_line(exc)
    if memory is not None:  # the step's memory is freed as it unwinds: the app goes on
        gr.Warning(memory)
        return f"**Error:** {memory}"
    log.exception("handler %s failed", getattr(handler, "__name__", handler), exc_info=exc)
    gr.Warning(f"unexpected error ({type(exc).__name__}): {excerpt(exc)}")
    return f"**Unexpected error** ({type(exc).__name__}): {excerpt(exc)}"


def event_signature(n_inputs: int) -> inspect.Signature:
    """Return the signature gradio reads off an event function: session, inputs, progress."""
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("session", positional)]
    params += [inspect.Parameter(f"input_{i}", positional) for i in range(n_inputs)]
    params.append(inspect.Parameter("progress", positional, default=gr.Progress()))
    return inspect.Signature(params)


# A Merge click or slider release during a step runs after it (trigger_mode always_last: the
# page sends it as the step's answer arrives): one that starts this soon after a step stopped at
# a Cancel was queued behind it, and goes too. A click after the "Cancelled" answer was read
# comes later (before 2026-12-06 the window was 2 s, and such clicks were dropped).
QUEUED_BEHIND_CANCEL_S = 0.5


def run_step(
    session: Session,
    heavy: bool,
    step: Callable[[], Any],
    arrived: float | None = None,
    slot: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    chained: bool = False,
) -> Any:
    """Run one handler; a heavy step is what Cancel stops (a Cancel pressed before it is void,
    a heavy step queued behind the cancelled one is dropped with it, and one that waits for a
    slot stops waiting).

    arrived: when the step reached the server (``time.monotonic``; None: as it starts): one
    that arrived before the cancelled step stopped waited behind it. slot: holds one of the
    app's heavy slots while the step runs (``HeavySlots.held``). chained: a step that follows
    another of the same trigger (a release's scoring, which has nothing to score after a
    cancelled merge): never dropped as queued, and the drop stays due for what is.
    """
    if not heavy:
        return step()
    if not chained:
        stopped, session.cancelled_at = session.cancelled_at, None
        now = time.monotonic()
        queued = stopped is not None and (
            (arrived is not None and arrived <= stopped) or now - stopped < QUEUED_BEHIND_CANCEL_S
        )
        if queued:
            raise Cancelled("the step queued behind the cancelled one was dropped too")
    session.cancel_requested = False
    try:
        with slot() if slot is not None else contextlib.nullcontext():
            session.running = True
            try:
                return step()
            finally:
                session.running = False
    except Cancelled:
        session.cancelled_at = time.monotonic()
        raise


class SessionLocks:
    """One lock per session, so that one user's heavy steps run one after the other.

    Two users' steps still run side by side (up to the heavy concurrency limit); light steps
    (the size estimate, Cancel) never wait. Owned by one app, never module-level.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def get(self, sid: str) -> threading.Lock:
        """Return the lock of session ``sid``."""
        with self._guard:
            return self._locks.setdefault(sid, threading.Lock())
