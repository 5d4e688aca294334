"""Releasing the models, statistics and merges of a tab that was closed.

Gradio keeps a closed tab's state for an hour (``delete_callback`` then removes the session's
files). A session's models, statistics and kept merges can take gigabytes (a SmolLM2 pair's),
and reloading the page starts a new session: a page reloaded twice held three sessions' worth
for an hour. When a tab's connection ends (gradio's ``unload``: the tab closed or reloaded, or
its connection dropped), its session is marked closed, and released ``RELEASE_AFTER_S`` later
(``Session.release``) unless the page showed it is still there.

An open page says so every ``TICK_S`` (a ``gr.Timer``), besides its own events. Gradio's page
does not reopen its connection after a drop, so no later ``unload`` would tell that it closed:
a page that ticked after its connection ended is released once its ticks stop for
``SILENT_S`` (longer than ``RELEASE_AFTER_S``: a browser slows the timers of a hidden tab to
one a minute). Its history, its files and its place among the open sessions' exports stay
until gradio drops it.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from typing import Any

from heterogui.host_memory import release_freed_memory
from heterogui.ui.session import Session

RELEASE_AFTER_S = 120.0
TICK_S = 30.0
SILENT_S = 600.0

RELEASED_NOTE = (
    "This tab was disconnected for a while, so the models, statistics and merges it held were "
    "released to free memory: load the pair again on the Models tab (the history is kept)"
)


class ClosedTabs:
    """Release the sessions of closed tabs once ``after_s`` passed without a sign of them.

    lock_for: the lock of a session's heavy steps (a release waits for a running step);
    forget: called with a released session (the background prefetch drops it);
    silent_s: how long a page whose connection had ended may stop ticking.
    """

    def __init__(
        self,
        lock_for: Callable[[Session], Any],
        forget: Callable[[Session], None] | None = None,
        after_s: float = RELEASE_AFTER_S,
        silent_s: float = SILENT_S,
    ) -> None:
        self._lock_for = lock_for
        self._forget = forget
        self.after_s = after_s
        self.silent_s = silent_s
        self._guard = threading.Lock()
        self._timers: dict[str, threading.Timer] = {}

    def closed(self, session: Session, after_s: float | None = None) -> threading.Timer:
        """Mark ``session``'s tab closed; it is released ``after_s`` (default: ``self.after_s``)
        later unless a sign of it comes first. Return the timer of that release."""
        stamp = time.monotonic()
        session.closed_at = stamp
        wait = self.after_s if after_s is None else after_s
        timer = threading.Timer(wait, self.release_if_still_closed, (session, stamp))
        timer.daemon = True  # a stopping app does not wait for it
        with self._guard:  # one pending release per session: the latest
            earlier = self._timers.pop(session.sid, None)
            self._timers[session.sid] = timer
        if earlier is not None:
            earlier.cancel()
        timer.start()
        return timer

    def alive(self, session: Session) -> None:
        """Count a tick of ``session``'s page. A page whose connection had ended (a closing
        pending, or one seen before) lives on without it: it is released if its ticks stop."""
        if session.closed_at is None and not session.connection_lost:
            return  # the usual case: gradio's unload will say when the tab closes
        session.connection_lost = True
        self.closed(session, self.silent_s)

    def release_if_still_closed(self, session: Session, stamp: float) -> bool:
        """Release ``session`` if no sign of it came since it closed at ``stamp``; True if
        released. Waits for a heavy step of the session that is running."""
        with self._lock_for(session):
            if session.closed_at != stamp:
                return False
            session.release()
        with self._guard:
            self._timers.pop(session.sid, None)
        if self._forget is not None:
            self._forget(session)
        gc.collect()  # the statistics and merges hold reference cycles
        release_freed_memory()  # the C heap's free pages: the process's memory goes down too
        return True

    def seen(self, session: Session) -> str | None:
        """Count an event of ``session``: its page is open. Return the note to show once if
        the session was released while its page was away (None: nothing to say)."""
        if session.closed_at is not None and not session.connection_lost:
            session.connection_lost = True  # the page is here, though its connection ended
            self.closed(session, self.silent_s)  # released if its ticks stop (``alive``)
        if not session.released:
            return None
        session.released = False
        return RELEASED_NOTE


def session_of(demo: Any, state: Any, session_hash: str | None) -> Session | None:
    """Return the Session gradio holds in ``state`` for the tab ``session_hash`` (None: none)."""
    holder = getattr(demo, "state_holder", None)
    data = getattr(holder, "session_data", {}).get(session_hash)
    value = getattr(data, "state_data", {}).get(state._id)
    return value if isinstance(value, Session) else None
