"""Releasing the models, statistics and merges of a tab that was closed.

Gradio keeps a closed tab's state for an hour (``delete_callback`` then removes the session's
files). A session's models, statistics and kept merges can take gigabytes (a SmolLM2 pair's),
and reloading the page starts a new session: a page reloaded twice held three sessions' worth
for an hour. When a tab's
connection ends (gradio's ``unload``: the tab closed or reloaded), its session is marked
closed; if none of its events arrives within ``RELEASE_AFTER_S`` (a dropped connection that
comes back, a laptop waking up), what it holds is released (``Session.release``). Its history,
its files and its place among the open sessions' exports stay until gradio drops it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from heterogui.ui.session import Session

RELEASE_AFTER_S = 120.0

RELEASED_NOTE = (
    "This tab was disconnected for a while, so the models, statistics and merges it held were "
    "released to free memory: load the pair again on the Models tab (the history is kept)"
)


class ClosedTabs:
    """Release the sessions of closed tabs once ``after_s`` passed without an event of theirs.

    lock_for: the lock of a session's heavy steps (a release waits for a running step);
    forget: called with a released session (the background prefetch drops it).
    """

    def __init__(
        self,
        lock_for: Callable[[Session], Any],
        forget: Callable[[Session], None] | None = None,
        after_s: float = RELEASE_AFTER_S,
    ) -> None:
        self._lock_for = lock_for
        self._forget = forget
        self.after_s = after_s

    def closed(self, session: Session) -> threading.Timer:
        """Mark ``session``'s tab closed and start the timer of its release."""
        stamp = time.monotonic()
        session.closed_at = stamp
        timer = threading.Timer(self.after_s, self.release_if_still_closed, (session, stamp))
        timer.daemon = True  # a stopping app does not wait for it
        timer.start()
        return timer

    def release_if_still_closed(self, session: Session, stamp: float) -> bool:
        """Release ``session`` if no event of it arrived since it closed at ``stamp``; True if
        released. Waits for a heavy step of the session that is running."""
        with self._lock_for(session):
            if session.closed_at != stamp:
                return False
            session.release()
        if self._forget is not None:
            self._forget(session)
        return True


def seen(session: Session) -> str | None:
    """Count an event of ``session``: its tab is open. Return the note to show once if the
    session was released while its tab was away (None: nothing to say)."""
    session.closed_at = None
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
