"""How many heavy steps (analyses, merges, sweeps, exports) run at once across the app's users.

The others wait here, inside the app, where their user's Cancel reaches them. They used to
wait in Gradio's own queue, which the app cannot see: a user whose step was queued behind two
others' pressed Cancel, was told that nothing ran, and the step ran later all the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from heterogui.errors import Cancelled
from heterogui.ui.session import Session

POLL_S = 0.2  # how often a waiting step looks for its user's Cancel
# steps let past Gradio's queue to wait here, beyond the ones that run (more wait in the queue)
WAITING_ROOM = 6
# what a waiting step's progress bar says
WAITING = "waiting for another user's step to finish (Cancel drops this one)"


class HeavySlots:
    """At most ``limit`` heavy steps at once; a step waiting for a slot stops at a Cancel."""

    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(limit)

    @contextmanager
    def held(self, session: Session, waiting: Callable[[], None]) -> Iterator[None]:
        """Hold a slot while the block runs; ``waiting()`` is called once if the step waits.

        Raises:
            Cancelled: the session's user pressed Cancel while the step waited (nothing ran).
        """
        if not self._slots.acquire(blocking=False):
            waiting()
            session.waiting = True
            try:
                while not self._slots.acquire(timeout=POLL_S):
                    if session.cancel_requested:
                        session.cancel_requested = False
                        raise Cancelled(
                            "dropped before it started (it waited for another user's step); "
                            "the previous result is kept"
                        )
            finally:
                session.waiting = False
        try:
            yield
        finally:
            self._slots.release()
